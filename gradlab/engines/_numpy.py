"""The ``numpy`` engine: the problem's hand-derived gradient, nothing automatic."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradlab.engines._protocol import HVP, AbstractEngine, ValueAndGrad
from gradlab.problems._base import AbstractProblem, missing_hand_gradient, missing_hand_hvp


class NumpyEngine(AbstractEngine):
    """Runs the gradient a person derived by hand (``problem.hand_value_and_grad``).

    This is the seed tutorial's first run, generalised. A problem without a hand gradient is
    refused with [`HandGradientMissing`][gradlab.HandGradientMissing], never silently differentiated
    some other way.
    """

    name = "numpy"
    xp = np

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """A fresh NumPy copy in ``dtype``."""
        return np.array(array, dtype=dtype, copy=True)

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """The problem's hand-derived ``(loss, grads)``."""
        if not problem.has_hand_gradient:
            raise missing_hand_gradient(problem)
        return problem.hand_value_and_grad

    def hvp(self, problem: AbstractProblem) -> HVP:
        """The problem's hand-derived Hessian-vector product."""
        if not problem.has_hand_hvp:
            raise missing_hand_hvp(problem)
        return problem.hand_hvp

    def describe(self) -> dict[str, Any]:
        """NumPy's version; it runs on the host CPU."""
        return {"framework": "numpy", "numpy": np.__version__, "device": "cpu"}
