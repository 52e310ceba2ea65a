"""What one benchmark case runs: its starting point and its optimizer step.

Shared by the benchmark (``gradlab.bench._harness``) and the fresh process that measures a
case's memory (``gradlab.bench._memory``), so that both run the same fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradlab._tree import flatten
from gradlab.problems._base import AbstractProblem

#: The benchmark's fits take SGD steps this small: time per step does not depend on the
#: values as long as they stay finite, and this keeps every shipped problem finite at every
#: size (the quadratic's loss is a sum, so its curvature grows with n).
SGD_STEP = 1e-7


def point(problem: AbstractProblem, data: dict[str, np.ndarray], seed: int) -> Any:
    """A small random point (seeded) where gradients are taken and fits start, in the
    structure of the problem's ``initial_params`` (zeros of its declared shapes by default).

    Raises:
        NotSupported: the problem neither declares shapes nor has ``initial_params``.
    """
    start, layout = flatten(problem.initial_params(data, seed=seed))
    rng = np.random.default_rng(seed)
    return layout.unflatten(
        {name: 0.1 * rng.standard_normal(np.shape(value)) for name, value in start.items()}
    )
