"""Nested derivatives: GradBench's ``particle`` and ``saddle``, gradient descent with a
derivative inside the function it minimises.

Both are written once here, against an array namespace and two composable gradient
operators (forward and reverse mode) that a framework supplies; the four variants ``ff``,
``fr``, ``rf`` and ``rr`` pick the outer and the inner operator. The descent is GradBench's
(its ``solver``): steps of η·∇f accepted while f falls, η halved on a rise and doubled after
ten accepted steps, stopping when ‖∇f‖ or the step is below 10⁻⁵. Its branches read values,
so the frameworks differentiate eagerly, through Python control flow.

Frameworks: torch (``torch.func``) and jax. A gradlab problem is a loss that engines
differentiate from outside; a derivative *inside* a function needs the framework's own
operators, which is why this is its own small module and not a problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._errors import NotSupported
from gradlab.engines._protocol import GradientEngine

Array = Any
Scalar = Callable[[Array], Array]
Operator = Callable[[Scalar], Scalar]

#: The engines whose framework nests derivatives here, by framework.
_TORCH = {"torch", "torch-func", "torch-fwd"}
_JAX = {"jax", "jax-fwd"}
TOLERANCE = 1e-5
#: Bounds that turn a hostile start (a particle that never lands, a descent that never
#: stops) into an error instead of a hang.
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Ops:
    """What the procedures need of a framework.

    Attributes:
        xp: The array namespace.
        reverse: ``f ↦ ∇f`` by reverse mode, composable with itself and with ``forward``.
        forward: ``f ↦ ∇f`` by forward mode (one JVP per coordinate).
        lift: A NumPy float64 array to the framework's (float64, on the engine's device).
        scope: A context manager the computation runs in (jax: 64-bit mode).
    """

    xp: Any
    reverse: Operator
    forward: Operator
    lift: Callable[[Any], Array]
    scope: Callable[[], contextlib.AbstractContextManager[Any]]


def ops_for(engine: GradientEngine) -> Ops:
    """The nested-derivative operators of ``engine``'s framework.

    Raises:
        NotSupported: the engine is not one of torch's or jax's.
    """

    def lift(values: Any) -> Array:
        return engine.asarray(np.asarray(values, dtype=np.float64), "float64")

    if engine.name in _TORCH:
        import torch.func

        def forward_torch(f: Scalar) -> Scalar:
            def gradient(x: Array) -> Array:
                basis = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
                return torch.stack([torch.func.jvp(f, (x,), (e,))[1] for e in basis])

            return gradient

        # The torch engines' scope for torch.func: gradients recorded, and torch's own
        # deprecation warning from its first forward-mode call silenced.
        scope = getattr(engine, "_transforming", contextlib.nullcontext)
        return Ops(engine.xp, torch.func.grad, forward_torch, lift, scope)
    if engine.name in _JAX:
        import jax
        import jax.numpy as jnp

        def forward_jax(f: Scalar) -> Scalar:
            def gradient(x: Array) -> Array:
                basis = jnp.eye(x.shape[0], dtype=x.dtype)
                return jnp.stack([jax.jvp(f, (x,), (e,))[1] for e in basis])

            return gradient

        return Ops(jnp, jax.grad, forward_jax, lift, lambda: jax.enable_x64(True))
    raise NotSupported(
        f"engine {engine.name!r} cannot nest derivatives (a derivative inside the function "
        f"differentiated); GradBench's particle and saddle run on: "
        f"{', '.join(sorted(_TORCH | _JAX))}"
    )


def _norm(v: Array, xp: Any) -> Array:
    return xp.sqrt(xp.sum(v * v))


def argmin(grad: Operator, f: Scalar, x: Array, xp: Any) -> Array:
    """GradBench's gradient descent from ``x``: the point where it stops."""
    g = grad(f)
    fx, gx, eta, accepted = f(x), g(x), TOLERANCE, 0
    for _ in range(MAX_STEPS):
        size = _norm(gx, xp)
        if not bool(xp.isfinite(size)):
            raise ValueError("the descent met a gradient that is not finite")
        if bool(size <= TOLERANCE):
            break
        if accepted == 10:
            eta, accepted = 2 * eta, 0
            continue
        candidate = x - eta * gx
        if bool(_norm(x - candidate, xp) <= TOLERANCE):
            break
        f_candidate = f(candidate)
        if bool(f_candidate < fx):
            x, fx, gx, accepted = candidate, f_candidate, g(candidate), accepted + 1
        else:
            eta, accepted = eta / 2, 0
    else:
        raise ValueError(f"the descent did not stop within {MAX_STEPS} steps")
    return x


def argmax(grad: Operator, f: Scalar, x: Array, xp: Any) -> Array:
    return argmin(grad, lambda point: -f(point), x, xp)


def _variant(function: str, ops: Ops) -> tuple[Operator, Operator]:
    """The outer and inner operators of ``ff``, ``fr``, ``rf`` or ``rr``."""
    modes = {"f": ops.forward, "r": ops.reverse}
    return modes[function[0]], modes[function[1]]


def landing(inner: Operator, ops: Ops) -> Scalar:
    """w ↦ x₀(t_f)²: where the particle crosses the x-axis, squared (``particle``'s objective).

    A particle starts at (0, 8) with velocity (0.75, 0) in the potential of unit charges at
    (10, 10 − w) and (10, 0); naive Euler steps of 0.1, the force the potential's gradient
    by ``inner``, run until it would cross the axis, where linear interpolation finds the
    crossing.
    """
    xp, lift = ops.xp, ops.lift

    def squared_miss(w: Array) -> Array:
        fixed, moving, up = lift([10.0, 0.0]), lift([10.0, 10.0]), lift([0.0, 1.0])
        charges = [moving - w[0] * up, fixed]

        def potential(x: Array) -> Array:
            return sum(1 / _norm(x - charge, xp) for charge in charges)

        force = inner(potential)
        x, velocity, dt = lift([0.0, 8.0]), lift([0.75, 0.0]), 0.1
        for _ in range(MAX_STEPS):
            acceleration = -force(x)
            moved = x + dt * velocity
            if not bool(moved[1] > 0):
                break
            x, velocity = moved, velocity + dt * acceleration
        else:
            raise ValueError(f"the particle does not reach the x-axis in {MAX_STEPS} Euler steps")
        to_axis = -x[1] / velocity[1]
        return (x + to_axis * velocity)[0] ** 2

    return squared_miss


def particle(function: str, w0: float, ops: Ops) -> float:
    """GradBench's ``particle``: the control w, from ``w0``, that minimises ``landing``."""
    outer, inner = _variant(function, ops)
    with ops.scope():
        return float(argmin(outer, landing(inner, ops), ops.lift([w0]), ops.xp)[0])


def _value(p1: Array, p2: Array, xp: Any) -> Array:
    """``saddle``'s function: |p₁|² − |p₂|²."""
    return xp.sum(p1 * p1) - xp.sum(p2 * p2)


def best_response(inner: Operator, begin: Array, ops: Ops) -> Scalar:
    """p₁ ↦ max over p₂ of the function, the maximum found by descent from ``begin``."""
    xp = ops.xp
    return lambda p1: _value(p1, argmax(inner, lambda p2: _value(p1, p2, xp), begin, xp), xp)


def saddle(function: str, start: tuple[float, float], ops: Ops) -> list[float]:
    """GradBench's ``saddle``: min over p₁ of max over p₂ of (|p₁|² − |p₂|²), both searches
    from ``start``; returns p₁ then p₂ (the inner maximum's argmax at the found p₁)."""
    outer, inner = _variant(function, ops)
    xp = ops.xp
    with ops.scope():
        begin = ops.lift(list(start))
        p1 = argmin(outer, best_response(inner, begin, ops), begin, xp)
        p2 = argmax(outer, lambda q: _value(p1, q, xp), begin, xp)
        return [float(v) for v in np.concatenate([_host(p1), _host(p2)])]


def _host(array: Array) -> np.ndarray:
    """A (possibly device) array as NumPy."""
    detach = getattr(array, "detach", None)
    if detach is not None:
        return np.asarray(detach().cpu())
    return np.asarray(array)
