"""``python -m gradlab.gradbench --engine jax``: gradlab as a GradBench tool."""

import sys

from gradlab.gradbench import main

sys.exit(main())
