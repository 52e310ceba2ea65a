"""The ``numpy`` engine: the problem's hand-derived gradient, nothing automatic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradlab._checks import read_only
from gradlab._errors import GradlabError, ProblemError, first_line
from gradlab._loss import checked_output, hand
from gradlab.engines._derive import jvp_from_jacobian, vjp_from_jacobian
from gradlab.engines._protocol import (
    HVP,
    JVP,
    VJP,
    AbstractEngine,
    Data,
    Jacobian,
    Params,
    Tree,
    ValueAndGrad,
)
from gradlab.problems._base import (
    AbstractProblem,
    missing_hand_gradient,
    missing_hand_hvp,
    missing_hand_jacobian,
)


def _hand(problem: AbstractProblem, name: str, function: Callable[..., Any]) -> Any:
    """``function``, a hand derivation, marked ``hand`` and naming itself when it raises: a
    hand gradient that fails is its author's to fix, not the loss's."""

    def derivation(*args: Any) -> Any:
        try:
            return function(*args)
        except (GradlabError, MemoryError):
            raise
        except Exception as error:
            raise ProblemError(
                problem.name, name, f"raised {type(error).__name__}: {first_line(error)}", "numpy"
            ) from error

    return hand(derivation)


class NumpyEngine(AbstractEngine):
    """Runs the gradient a person derived by hand (``problem.hand_value_and_grad``).

    This is the seed tutorial's first run, generalised. A problem without a hand gradient is
    refused with [`HandGradientMissing`][gradlab.HandGradientMissing], never silently differentiated
    some other way.
    """

    name = "numpy"
    xp = np
    #: It runs a problem's hand derivation, not its loss: a report counts it as that code.
    runs_hand = True

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """``array`` in ``dtype``: a read-only view where it already is, else a read-only copy."""
        return read_only(array, dtype)

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """The problem's hand-derived ``(loss, grads)``."""
        if not problem.has_hand_gradient:
            raise missing_hand_gradient(problem)
        function: ValueAndGrad = _hand(problem, "value_and_grad", problem.hand_value_and_grad)
        return function

    def hvp(self, problem: AbstractProblem) -> HVP:
        """The problem's hand-derived Hessian-vector product."""
        if not problem.has_hand_hvp:
            raise missing_hand_hvp(problem)
        function: HVP = _hand(problem, "hvp", problem.hand_hvp)
        return function

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """The problem's hand-derived Jacobian, beside its value in NumPy; for a scalar loss
        without one, its hand-derived gradient (the Jacobian of a scalar)."""
        if problem.has_hand_jacobian:
            output = checked_output(problem)
            hand_jacobian = _hand(problem, "jacobian", problem.hand_jacobian)

            def jacobian(params: Params, data: Data) -> tuple[Tree, Tree]:
                return output(params, data, np), hand_jacobian(params, data)

        elif problem.has_hand_gradient:
            jacobian = _hand(problem, "value_and_grad", problem.hand_value_and_grad)

        else:
            raise missing_hand_jacobian(problem)
        return hand(jacobian)

    def jvp(self, problem: AbstractProblem) -> JVP:
        """The hand-derived Jacobian, contracted with the tangent."""
        return jvp_from_jacobian(self.jacobian(problem))

    def vjp(self, problem: AbstractProblem) -> VJP:
        """The hand-derived Jacobian, contracted with the cotangent."""
        return vjp_from_jacobian(self.jacobian(problem))

    def describe(self) -> dict[str, Any]:
        """NumPy's version; it runs on the host CPU."""
        return {"framework": "numpy", "numpy": np.__version__, "device": "cpu"}
