"""The ``fd`` engine: central finite differences of the problem's loss, the reference."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradlab._checks import check_positive_float
from gradlab._errors import ArgumentError
from gradlab.engines._protocol import AbstractEngine, Data, Params, ValueAndGrad
from gradlab.problems._base import AbstractProblem

_EPS = float(np.finfo(np.float64).eps)


class FiniteDifferenceEngine(AbstractEngine):
    """Differentiates nothing: evaluates the loss at nearby points, in NumPy float64.

    It needs no derivation and no framework, so it is the reference the other engines are
    checked against (the way ADBench checks its hand-written "Manual" module).

    Every partial derivative is a central difference around each parameter element ``p``
    with step ``h = rel_step · max(1, |p|)``, rounded so that ``p ± h`` is exact:

    - ``order=4`` (default): (8·(f(p+h) − f(p−h)) − (f(p+2h) − f(p−2h))) / 12h. Truncation
      error O(h⁴); the default ``rel_step = eps^(1/5) ≈ 7e-4`` balances it against the
      rounding error eps·|f|/h. It costs 4 loss evaluations per parameter element.
    - ``order=2``: (f(p+h) − f(p−h)) / 2h, truncation O(h²), ``rel_step = eps^(1/3)``.

    The difference is always taken in float64, whatever dtype is asked; results are then cast
    to that dtype. Cost grows with the number of parameter elements, so keep it to problems
    with few parameters.

    Args:
        order: 2 or 4, the order of accuracy of the stencil.
        rel_step: The relative step; the default suits the order (see above).
    """

    name = "fd"
    xp = np

    def __init__(self, *, order: int = 4, rel_step: float | None = None) -> None:
        if order not in (2, 4) or isinstance(order, bool):
            raise ArgumentError("order", f"must be 2 or 4, got {order!r}")
        self.order = order
        default = _EPS ** (1 / 3) if order == 2 else _EPS ** (1 / 5)
        self.rel_step = default if rel_step is None else check_positive_float(rel_step, "rel_step")

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """A fresh NumPy copy in ``dtype``."""
        return np.array(array, dtype=dtype, copy=True)

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """Central differences of ``problem.loss`` evaluated with NumPy."""

        def value_and_grad(params: Params, data: Data) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            dtype = np.result_type(*params.values())
            point = {name: np.asarray(value, np.float64) for name, value in params.items()}
            data64 = {name: np.asarray(value, np.float64) for name, value in data.items()}

            def loss_at(name: str, flat: np.ndarray, i: int, offset: float) -> float:
                moved = flat.copy()
                moved[i] = flat[i] + offset
                shifted = dict(point, **{name: moved.reshape(point[name].shape)})
                return float(problem.loss(shifted, data64, np))

            grads = {}
            for name, value in point.items():
                flat = value.reshape(-1)
                grad = np.empty(flat.shape)
                for i in range(flat.size):
                    h = self.rel_step * max(1.0, abs(flat[i]))
                    h = (flat[i] + h) - flat[i]  # a step that p + h represents exactly
                    near = loss_at(name, flat, i, h) - loss_at(name, flat, i, -h)
                    if self.order == 2:
                        grad[i] = near / (2 * h)
                    else:
                        far = loss_at(name, flat, i, 2 * h) - loss_at(name, flat, i, -2 * h)
                        grad[i] = (8 * near - far) / (12 * h)
                grads[name] = grad.reshape(value.shape).astype(dtype)
            loss = np.asarray(problem.loss(point, data64, np), dtype=dtype)
            return loss, grads

        return value_and_grad

    def describe(self) -> dict[str, Any]:
        """The stencil and step, and that it runs on the host CPU in float64."""
        return {
            "framework": "numpy",
            "numpy": np.__version__,
            "device": "cpu",
            "fd_order": self.order,
            "fd_rel_step": self.rel_step,
            "fd_precision": "float64",
        }
