"""The ``fd`` engine: central finite differences of the problem's loss, the reference."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._boundary import checked_loss
from gradlab._checks import check_positive_float
from gradlab._errors import ArgumentError
from gradlab.engines._protocol import HVP, AbstractEngine, Data, Params, ValueAndGrad
from gradlab.problems._base import AbstractProblem

_EPS = float(np.finfo(np.float64).eps)


#: A difference is accepted once its estimated error is at most this, relative to
#: max(1, |derivative|) (rho's scale): three orders of magnitude inside fd's tolerance.
TARGET = 1e-9
#: Most halvings of a step while looking for one whose error estimate meets ``TARGET``.
MAX_HALVINGS = 16


class FiniteDifferenceEngine(AbstractEngine):
    """Differentiates nothing: evaluates the loss at nearby points, in NumPy float64.

    It needs no derivation and no framework, so it is the reference the other engines are
    checked against (the way ADBench checks its hand-written "Manual" module).

    Every partial derivative is a central difference of the loss around each parameter
    element ``p``, with a step chosen for that element from an estimate of its own error:

    - ``order=4`` (default): D(h) = (8·(f(p+h) − f(p−h)) − (f(p+2h) − f(p−2h))) / 12h,
      truncation error O(h⁴); ``order=2``: D(h) = (f(p+h) − f(p−h)) / 2h, O(h²).
    - The step starts at ``h = rel_step · max(1, |p|)`` (``rel_step = eps^(1/5) ≈ 7e-4``
      for order 4, ``eps^(1/3)`` for order 2; on later elements of the same array, at most
      4× the step the previous element settled on) and is halved while the estimated
      error ``|D(h) − D(h/2)| / (2ᵏ − 1)`` is above ``TARGET · max(1, |D|)``, at most
      ``MAX_HALVINGS`` times, and never past the point where the estimate stops falling
      (rounding, eps·|f|/h, has taken over from truncation). The result is the Richardson
      extrapolation (2ᵏ·D(h/2) − D(h)) / (2ᵏ − 1) at the best pair.

    Why adaptive: no step proportional to |p| suits every loss. A shift-invariant loss
    (log-sum-exp at x ≈ 1000) curves on a scale of 1 wherever x is, so h ∝ |x| is far too
    coarse (rho 1.7e-4); GMM's exp(icf) curves faster the larger icf is (rho 1.8e-4 on
    ADBench-distributed inputs). The error estimate finds the scale the loss has. Each
    element costs 4 + 2·(halvings + 1) loss evaluations for order 4 (6 when the first step
    is already good), 2·(halvings + 2) for order 2; evaluations are shared between levels.
    Steps are rounded so that ``p ± h`` is exact.

    The difference is always taken in float64, whatever dtype is asked; results are then cast
    to that dtype. Cost grows with the number of parameter elements, so keep it to problems
    with few parameters.

    Args:
        order: 2 or 4, the order of accuracy of the stencil.
        rel_step: The relative starting step; the default suits the order (see above).
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
            grads, _ = self._gradient(problem, point, data64)
            loss = np.asarray(checked_loss(problem)(point, data64, np), dtype=dtype)
            return loss, {name: grad.astype(dtype) for name, grad in grads.items()}

        return value_and_grad

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Central differences of this engine's own gradient along the tangent, extrapolated.

        H·v is the derivative of the gradient in the direction v. The error model of this
        nested difference has three parts, and each is met separately:

        - the inner gradient's truncation, which grows with the scale of the data (tanh
          layers on inputs of 2; GMM's exp(icf)): the inner steps are the adaptive ones
          found at ``params`` (see the class), so it is as small as for a gradient;
        - the inner gradient's step must not change between the points ``params ± t·v``
          (a step that jumped would put its own error into the difference): those steps
          are frozen, and reused by every product at the same ``params`` (a Hessian);
        - the outer difference's truncation and rounding: the stencil over the steps h and
          2h, ``h = rel_step · max(1, max|p|) / max|v|``, combined by Richardson
          extrapolation, (2ᵏ·D(h) − D(2h)) / (2ᵏ − 1), which cancels the leading
          truncation term without a smaller step (the rounding error, ~eps·|f|/(h·hᵢ),
          would grow with each halving).

        Nothing but the loss is evaluated: it stays independent of every derivation.
        """
        frozen: dict[bytes, dict[str, np.ndarray]] = {}

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, np.ndarray]:
            dtype = np.result_type(*params.values())
            point, direction, data64 = _float64(params), _float64(tangent), _float64(data)
            size = max(float(np.max(np.abs(v), initial=0.0)) for v in direction.values())
            if size == 0.0:
                return {name: np.zeros(np.shape(value), dtype) for name, value in point.items()}
            where = b"".join(np.ascontiguousarray(v).tobytes() for v in (*point.values(), *data64.values()))
            if where not in frozen:
                frozen.clear()  # one point at a time: a Hessian's products share it
                frozen[where] = self._gradient(problem, point, data64)[1]
            steps = frozen[where]
            scale = max([1.0] + [float(np.max(np.abs(v), initial=0.0)) for v in point.values()])
            h = self.rel_step * scale / size

            def gradient_at(offset: float) -> dict[str, np.ndarray]:
                moved = {name: point[name] + offset * direction[name] for name in point}
                return self._gradient(problem, moved, data64, steps)[0]

            at = _memo(gradient_at)
            coarse, fine = self._stencil(at, 2 * h), self._stencil(at, h)
            gain = 2.0**self.order
            return {
                name: ((gain * fine[name] - coarse[name]) / (gain - 1)).astype(dtype)
                for name in fine
            }

        return hvp

    def _gradient(
        self,
        problem: AbstractProblem,
        point: dict[str, np.ndarray],
        data: dict[str, np.ndarray],
        steps: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The float64 gradient at ``point``, one parameter element at a time, and the steps.

        With ``steps`` (from an earlier call), the plain stencil at exactly those steps:
        no search, and a smooth function of ``point``.
        """
        loss = checked_loss(problem)
        grads, used = {}, {}
        for name, value in point.items():
            flat = value.reshape(-1)
            grad, chosen = np.empty(flat.shape), np.empty(flat.shape)
            previous = np.inf
            for i in range(flat.size):
                moved = functools.partial(_loss_moved, loss, point, data, name, i)
                if steps is not None:
                    h = float(steps[name].reshape(-1)[i])
                    grad[i] = self._stencil(_memo(moved), h)[""]
                    continue
                h = min(self.rel_step * max(1.0, abs(flat[i])), 4 * previous)
                h = (flat[i] + h) - flat[i]  # a step that p + h represents exactly
                estimate, previous = self._derivative(moved, h)
                grad[i], chosen[i] = estimate[""], previous
            grads[name] = grad.reshape(value.shape)
            used[name] = chosen.reshape(value.shape)
        return grads, used

    def _derivative(
        self, at: Callable[[float], dict[str, np.ndarray]], h: float
    ) -> tuple[dict[str, np.ndarray], float]:
        """The derivative at offset 0 of ``at(offset)`` (a dict of arrays), and its step.

        Halves ``h`` while the error estimate falls and is above ``TARGET`` (see the
        class's docstring); returns the Richardson-extrapolated estimate at the best pair.
        """
        at = _memo(at)
        gain = 2.0**self.order
        coarse = self._stencil(at, h)
        best, best_error, best_step = coarse, np.inf, h
        for _ in range(MAX_HALVINGS):
            fine = self._stencil(at, h / 2)
            error, size = 0.0, 1.0
            for name in fine:
                change = np.abs(fine[name] - coarse[name]) / (gain - 1)
                if change.size:
                    error = max(error, float(np.max(change)))
                    size = max(size, float(np.max(np.abs(fine[name]))))
            if not np.isfinite(error) or error >= best_error:
                break  # rounding has taken over: the previous pair was the best
            best = {name: fine[name] + (fine[name] - coarse[name]) / (gain - 1) for name in fine}
            best_error, best_step = error, h / 2
            if error <= TARGET * size:
                break
            coarse, h = fine, h / 2
        return best, best_step

    def _stencil(
        self, at: Callable[[float], dict[str, np.ndarray]], h: float
    ) -> dict[str, np.ndarray]:
        """D(h): the derivative at offset 0 of ``at(offset)`` by this engine's stencil."""
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
            "fd_steps": f"adaptive: halved until the error estimate is at most {TARGET:g}",
            "fd_precision": "float64",
        }


def _memo(at: Callable[[float], dict[str, np.ndarray]]) -> Callable[[float], dict[str, np.ndarray]]:
    """``at``, evaluated once per offset: stencils at h and h/2 share points."""
    values: dict[float, dict[str, np.ndarray]] = {}

    def memoised(offset: float) -> dict[str, np.ndarray]:
        if offset not in values:
            values[offset] = at(offset)
        return values[offset]

    return memoised


def _loss_moved(
    loss: Callable[[Any, Any, Any], Any],
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
    return {"": np.asarray(loss(shifted, data, np), np.float64)}


def _float64(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, np.float64) for name, value in arrays.items()}
