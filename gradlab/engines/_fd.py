"""The ``fd`` engine: central finite differences of the problem's loss, the reference."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._checks import check_positive_float
from gradlab._errors import ArgumentError
from gradlab.engines._protocol import HVP, AbstractEngine, Data, Params, ValueAndGrad
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
    #: Its derivatives are approximations: comparisons judge it with gradlab's fd tolerances.
    approximate = True

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
            point, data64 = _float64(params), _float64(data)
            grads = self._gradient(problem, point, data64)
            loss = np.asarray(problem.loss(point, data64, np), dtype=dtype)
            return loss, {name: grad.astype(dtype) for name, grad in grads.items()}

        return value_and_grad

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Central differences of this engine's own gradient along the tangent, extrapolated.

        H·v is the derivative of the gradient in the direction v, so it is differenced with
        the same stencil over the steps h and 2h, ``h = rel_step · max(1, max|p|) / max|v|``,
        and the two are combined by Richardson extrapolation, (2ᵏ·D(h) − D(2h)) / (2ᵏ − 1)
        for a stencil of order k, which cancels the leading truncation term. Why: a nested
        difference has truncation error ~(h·s)ᵏ·f⁽ᵏ⁺²⁾ for data of scale s; on a tanh network
        with inputs of 2 that reached 2·10⁻⁶, over the fd tolerance, and 3·10⁻⁸ extrapolated.
        Steps h and 2h, not h/2, keep the rounding error (~u·|f|/h²) where it was. Nothing but
        the loss is evaluated: it stays independent of every derivation.
        """

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, np.ndarray]:
            dtype = np.result_type(*params.values())
            point, direction, data64 = _float64(params), _float64(tangent), _float64(data)
            size = max(float(np.max(np.abs(v), initial=0.0)) for v in direction.values())
            if size == 0.0:
                return {name: np.zeros(np.shape(value), dtype) for name, value in point.items()}
            scale = max([1.0] + [float(np.max(np.abs(v), initial=0.0)) for v in point.values()])
            h = self.rel_step * scale / size

            def gradient_at(offset: float) -> dict[str, np.ndarray]:
                moved = {name: point[name] + offset * direction[name] for name in point}
                return self._gradient(problem, moved, data64)

            coarse = self._difference(gradient_at, 2 * h)
            fine = self._difference(gradient_at, h)
            gain = 2.0**self.order
            return {
                name: ((gain * fine[name] - coarse[name]) / (gain - 1)).astype(dtype)
                for name in coarse
            }

        return hvp

    def _gradient(
        self, problem: AbstractProblem, point: dict[str, np.ndarray], data: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The float64 gradient at ``point``, one parameter element at a time."""
        grads = {}
        for name, value in point.items():
            flat = value.reshape(-1)
            grad = np.empty(flat.shape)
            for i in range(flat.size):
                h = self.rel_step * max(1.0, abs(flat[i]))
                h = (flat[i] + h) - flat[i]  # a step that p + h represents exactly
                moved = functools.partial(_loss_moved, problem, point, data, name, i)
                grad[i] = self._difference(moved, h)[""]
            grads[name] = grad.reshape(value.shape)
        return grads

    def _difference(
        self, at: Callable[[float], dict[str, np.ndarray]], h: float
    ) -> dict[str, np.ndarray]:
        """The derivative at offset 0 of ``at(offset)`` (a dict of arrays), by the stencil."""
        plus, minus = at(h), at(-h)
        near = {name: plus[name] - minus[name] for name in plus}
        if self.order == 2:
            return {name: value / (2 * h) for name, value in near.items()}
        plus2, minus2 = at(2 * h), at(-2 * h)
        return {name: (8 * near[name] - (plus2[name] - minus2[name])) / (12 * h) for name in near}

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


def _loss_moved(
    problem: AbstractProblem,
    point: dict[str, np.ndarray],
    data: dict[str, np.ndarray],
    name: str,
    i: int,
    offset: float,
) -> dict[str, np.ndarray]:
    """The loss with element i of parameter ``name`` moved by ``offset`` (keyed "")."""
    moved = point[name].reshape(-1).copy()
    moved[i] += offset
    shifted = dict(point, **{name: moved.reshape(point[name].shape)})
    return {"": np.asarray(problem.loss(shifted, data, np), np.float64)}


def _float64(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, np.float64) for name, value in arrays.items()}
