"""The ``fd`` engine: central finite differences of the problem's loss, the reference."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._checks import check_positive_float, read_only
from gradlab._errors import ArgumentError
from gradlab._loss import checked_loss, checked_output
from gradlab._tree import structure
from gradlab.engines._derive import jacobian_from_jvp, vjp_from_jacobian
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
from gradlab.problems._base import AbstractProblem

_EPS = float(np.finfo(np.float64).eps)


#: A difference is accepted once its estimated error is at most this, relative to
#: max(1, |derivative|) (rho's scale): three orders of magnitude inside fd's tolerance.
TARGET = 1e-9
#: Most halvings of a step while looking for one whose error estimate meets ``TARGET``.
MAX_HALVINGS = 16
#: Most doublings, where rounding dominates (a small derivative beside a large loss).
MAX_DOUBLINGS = 8
#: The rounding error of a difference at step h is taken as ROUNDING·eps·max|f|/h: the
#: stencil's weights sum to 1.5/h, and a loss summed over many terms carries a few eps of
#: its largest partial sums.
ROUNDING = 4.0


class FiniteDifferenceEngine(AbstractEngine):
    """Differentiates nothing: evaluates the loss at nearby points, in NumPy float64.

    It needs no derivation and no framework, so it is the reference the other engines are
    checked against (the way ADBench checks its hand-written "Manual" module).

    Every partial derivative is a central difference of the loss around each parameter
    element ``p``, with a step chosen for that element from an estimate of its own error:

    - ``order=4`` (default): D(h) = (8·(f(p+h) − f(p−h)) − (f(p+2h) − f(p−2h))) / 12h,
      truncation error O(h⁴); ``order=2``: D(h) = (f(p+h) − f(p−h)) / 2h, O(h²).
    - The step starts at ``h = rel_step · max(1, |p|)`` (``rel_step = eps^(1/5) ≈ 7e-4``
      for order 4, ``eps^(1/3)`` for order 2), or, on later elements of the same array, at
      the step the previous element settled on. The error of D(h/2) is estimated as
      ``|D(h) − D(h/2)| / (2ᵏ − 1)``; unless it is at most ``TARGET · max(1, |D|)``, the
      step walks the way the estimate falls, halving where truncation dominates (at most
      ``MAX_HALVINGS`` times), doubling where rounding (eps·|f|/h) does (at most
      ``MAX_DOUBLINGS``), and stops where the estimate stops falling. The result is the
      Richardson extrapolation (2ᵏ·D(h/2) − D(h)) / (2ᵏ − 1) at the best pair.

    Why adaptive: no step proportional to |p| suits every loss. A shift-invariant loss
    (log-sum-exp at x ≈ 1000) curves on a scale of 1 wherever x is, so h ∝ |x| is far too
    coarse (rho 1.7e-4); GMM's exp(icf) curves faster the larger icf is (rho 1.8e-4 on
    ADBench-distributed inputs); a small derivative beside a large loss (GMM's alphas on
    data of scale 10³) needs a larger step than 7e-4, or rounding swamps it. The error
    estimate finds the scale the loss has. Each element costs 6 loss evaluations for order
    4 when the first pair is already good, 2 more for each further step tried;
    evaluations are shared between pairs.
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
        """``array`` in ``dtype``: a read-only view where it already is, else a read-only copy."""
        return read_only(array, dtype)

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
          2h, combined by Richardson extrapolation, (2ᵏ·D(h) − D(2h)) / (2ᵏ − 1), which
          cancels the leading truncation term. That makes it sixth-order (order 4), so for
          a loss of unit scale the step that balances its truncation (~h⁶) against the
          nested rounding (~eps·|f|/(h·hᵢ)) is eps^(1/7) ≈ 5.8e-3, 7.8 times the
          gradient's eps^(1/5). The inner search has measured the scale the loss has along
          each coordinate, so ``h = 7.8 · min(hᵢ) / max|v|``: eight times less rounding
          than the gradient's step where the loss is tame (Rosenbrock's Hessian to 2e-11),
          and a step that shrinks where it curves fast (GMM's exp(icf)).

        Nothing but the loss is evaluated: it stays independent of every derivation.
        """
        frozen: dict[bytes, dict[str, np.ndarray]] = {}

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, np.ndarray]:
            dtype = np.result_type(*params.values())
            point, direction, data64 = _float64(params), _float64(tangent), _float64(data)
            size = max(float(np.max(np.abs(v), initial=0.0)) for v in direction.values())
            if size == 0.0:
                return {name: np.zeros(np.shape(value), dtype) for name, value in point.items()}
            where = b"".join(
                np.ascontiguousarray(v).tobytes() for v in (*point.values(), *data64.values())
            )
            if where not in frozen:
                frozen.clear()  # one point at a time: a Hessian's products share it
                frozen[where] = self._gradient(problem, point, data64)[1]
            steps = frozen[where]
            scale = max([1.0] + [float(np.max(np.abs(v), initial=0.0)) for v in point.values()])
            # The outer difference is searched like a partial derivative (see _derivative),
            # from 7.8 (= eps^(1/7) / eps^(1/5)) times the smallest inner step along v: the
            # inner search measured the scale the loss has along each coordinate. Its values
            # are differences themselves, so their rounding is judged as eps·|f|·4/hᵢ, not
            # by their own size; and it walks up at most twice (each step costs two
            # gradients).
            inner = min(float(np.min(step, initial=np.inf)) for step in steps.values())
            if not np.isfinite(inner):
                inner = self.rel_step * scale
            loss = abs(float(np.asarray(checked_loss(problem)(point, data64, np))))
            noise = ROUNDING * max(loss, 1.0) / inner
            h = _EPS ** (1 / 7) / _EPS ** (1 / 5) * inner / size

            def gradient_at(offset: float) -> dict[str, np.ndarray]:
                moved = {name: point[name] + offset * direction[name] for name in point}
                return self._gradient(problem, moved, data64, steps)[0]

            product, _ = self._derivative(gradient_at, h, noise=noise, doublings=2)
            return {name: value.astype(dtype) for name, value in product.items()}

        return hvp

    def jvp(self, problem: AbstractProblem) -> JVP:
        """J·v as the derivative of the function along v, by the same adaptive, extrapolated
        differences as a partial derivative (all outputs at once)."""
        output = checked_output(problem)

        def jvp(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
            dtype = np.result_type(*params.values())
            point, direction, data64 = _float64(params), _float64(tangent), _float64(data)
            value = output(point, data64, np)
            out = structure(value)
            size = max(float(np.max(np.abs(v), initial=0.0)) for v in direction.values())
            if size == 0.0:
                zeros = {
                    path: np.zeros(np.shape(leaf), dtype)
                    for path, leaf in out.flatten(value).items()
                }
                return _cast(value, dtype), out.unflatten(zeros)

            def at(offset: float) -> dict[str, np.ndarray]:
                moved = {name: point[name] + offset * direction[name] for name in point}
                return _float64(out.flatten(output(moved, data64, np)))

            scale = max([1.0] + [float(np.max(np.abs(v), initial=0.0)) for v in point.values()])
            product, _ = self._derivative(at, self.rel_step * scale / size)
            return _cast(value, dtype), out.unflatten(
                {path: np.asarray(value, dtype) for path, value in product.items()}
            )

        return jvp

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """Column by column: one directional difference per parameter element."""
        return jacobian_from_jvp(self.jvp(problem))

    def vjp(self, problem: AbstractProblem) -> VJP:
        """The differenced Jacobian, contracted with the cotangent (no reverse mode here)."""
        return vjp_from_jacobian(self.jacobian(problem))

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
                    grad[i] = self._stencil(_Memo(moved), h)[""]
                    continue
                # The step the previous element of this array settled on is a good start: the
                # elements of one parameter tend to share a scale.
                if not np.isfinite(flat[i]):  # a diverged point: no derivative to find
                    grad[i], chosen[i] = np.nan, np.nan
                    continue
                h = previous if np.isfinite(previous) else self.rel_step * max(1.0, abs(flat[i]))
                h = (flat[i] + h) - flat[i]  # a step that p + h represents exactly
                estimate, fine = self._derivative(moved, h)
                # The accepted pair's coarser step: where the next element starts (a start
                # at the finer one would drift down element by element), and the step a
                # Hessian-vector product freezes (its truncation is within 2ᵏ times the
                # accepted estimate, and the nested difference's rounding, ~1/(step·h),
                # calls for the larger of the two).
                grad[i], chosen[i] = estimate[""], 2 * fine
                previous = chosen[i]
            grads[name] = grad.reshape(value.shape)
            used[name] = chosen.reshape(value.shape)
        return grads, used

    def _derivative(
        self,
        at: Callable[[float], dict[str, np.ndarray]],
        h: float,
        noise: float | None = None,
        doublings: int = 8,
    ) -> tuple[dict[str, np.ndarray], float]:
        """The derivative at offset 0 of ``at(offset)`` (a dict of arrays), and its step.

        A pair of steps (2s, s) is judged by its error estimate: the truncation estimate
        ``|D(2s) − D(s)| / (2ᵏ − 1)`` plus the rounding bound ``ROUNDING · eps · max|f| / s``
        (max|f| over the values evaluated so far). The pair (h, h/2) is accepted if that
        meets ``TARGET``; else the walk goes down (halving) when truncation dominates and up
        (doubling) when rounding does, while the estimate keeps falling. Returns the
        Richardson-extrapolated estimate of the best pair, and its finer step.

        ``noise`` replaces max|f| in the rounding bound where the values differenced carry
        more rounding than their own size says (a gradient taken by differences);
        ``doublings`` caps the walk up.
        """
        memo = _Memo(at)
        gain = 2.0**self.order
        stencils: dict[float, dict[str, np.ndarray]] = {}

        def judged(fine: float) -> tuple[float, float, float, dict[str, np.ndarray]]:
            """The pair (2·fine, fine): truncation and rounding estimates, scale, estimate."""
            small, large = (
                stencils.get(step) or stencils.setdefault(step, self._stencil(memo, step))
                for step in (fine, 2 * fine)
            )
            truncation, size = 0.0, 1.0
            for name in small:
                change = np.abs(small[name] - large[name]) / (gain - 1)
                if change.size:
                    truncation = max(truncation, float(np.max(change)))
                    size = max(size, float(np.max(np.abs(small[name]))))
            rounding = ROUNDING * _EPS * (memo.largest if noise is None else noise) / fine
            if not (np.isfinite(truncation) and np.isfinite(rounding)):
                truncation = np.inf
            extrapolated = {
                name: small[name] + (small[name] - large[name]) / (gain - 1) for name in small
            }
            return truncation, rounding, size, extrapolated

        step = h / 2
        truncation, rounding, size, best = judged(step)
        error = truncation + rounding
        if error <= TARGET * size:
            return best, step
        factor = 2.0 if rounding > truncation else 0.5
        limit = MAX_HALVINGS if factor < 1 else min(doublings, MAX_DOUBLINGS)
        candidate_step = step
        for _ in range(limit):
            candidate_step *= factor
            truncation, rounding, candidate_size, candidate = judged(candidate_step)
            if not truncation + rounding < error:
                break  # the estimate stopped falling: the previous pair was the best
            step, error, size, best = (
                candidate_step,
                truncation + rounding,
                candidate_size,
                candidate,
            )
            if error <= TARGET * size:
                break
        return best, step

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


class _Memo:
    """``at``, evaluated once per offset (stencils at h and h/2 share points), remembering
    the largest magnitude it returned: the scale of its rounding error."""

    def __init__(self, at: Callable[[float], dict[str, np.ndarray]]) -> None:
        self.at = at
        self.values: dict[float, dict[str, np.ndarray]] = {}
        self.largest = 0.0

    def __call__(self, offset: float) -> dict[str, np.ndarray]:
        value = self.values.get(offset)  # a NaN offset (a diverged point) is never found
        if value is None:
            value = self.values[offset] = self.at(offset)
            for array in value.values():
                if np.size(array):
                    self.largest = max(self.largest, float(np.max(np.abs(array))))
        return value


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


def _cast(tree: Any, dtype: Any) -> Any:
    """A nest of arrays in ``dtype``."""
    from gradlab._tree import tree_map

    return tree_map(lambda leaf: np.asarray(leaf, dtype), tree)


def _float64(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, np.float64) for name, value in arrays.items()}
