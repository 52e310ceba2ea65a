"""``python -m gradlab``: the same command line as the ``gradlab`` script."""

from gradlab.cli import main

raise SystemExit(main())
