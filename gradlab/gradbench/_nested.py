"""Nested derivatives: GradBench's ``particle`` and ``saddle``, gradient descent with a
derivative inside the function it minimises.

Both are written once here, against an array namespace, two composable gradient operators
(forward and reverse mode) and a ``Control``: how a loop and a branch run. The four variants
``ff``, ``fr``, ``rf`` and ``rr`` pick the outer and the inner operator. The descent is
GradBench's (its ``solver``): steps of η·∇f accepted while f falls, η halved on a rise and
doubled after ten accepted steps, stopping when ‖∇f‖ or the step is below 10⁻⁵.

The frameworks run the one definition differently:

- torch runs it eagerly: ``Control``'s loop and branch are Python's, the branches read
  values, and the derivatives follow the path taken. Each variant takes the cheapest pair
  of operators that nest (``Ops.pairs``): reverse mode is ``torch.autograd.grad``
  (``create_graph`` where an outer derivative differentiates the inner one), forward mode
  ``torch.autograd.forward_ad``, one pass per coordinate; ``ff`` is ``torch.func.jvp``
  (vmapped over the basis) twice, since a forward_ad level cannot hold another.
- jax compiles the whole procedure once (``jax.jit``, on the first run; kept for the
  process): the branches are ``lax.cond``, the derivatives ``jax.grad`` and a vmapped
  ``jax.jvp``, the descent's own loop a ``lax.while_loop``. A loop that a derivative goes
  through (the inner descent, the particle's flight) is a scan instead, since reverse mode
  cannot go through a while_loop: nested scans of ``jax.checkpoint``-ed chunks of
  ``lax.cond``-guarded steps, where a chunk the loop has left costs one skipped ``cond``.

A failure inside a derivative (a flight that never lands) cannot raise from compiled code:
it travels as NaN to the top-level descent, which stops on it and says so.

A gradlab problem is a loss that engines differentiate from outside; a derivative *inside*
a function needs the framework's own operators, which is why this is its own small module
and not a problem.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from gradlab._errors import NotSupported
from gradlab.engines._protocol import GradientEngine

Array = Any
Scalar = Callable[[Array], Array]
Operator = Callable[[Scalar], Scalar]
State = TypeVar("State")

#: The engines whose framework nests derivatives here, by framework.
_TORCH = {"torch", "torch-func", "torch-fwd"}
_JAX = {"jax", "jax-fwd"}
TOLERANCE = 1e-5
#: Bounds that turn a hostile start (a particle that never lands, a descent that never
#: stops) into an error instead of a hang: the most steps of one descent, and of one flight.
MAX_STEPS = 100_000
#: A descent's status: still going (at its end: it ran out of steps), stopped where
#: GradBench's stops, or stopped on a value or gradient that is not finite.
RUNNING, CONVERGED, NOT_FINITE = 0, 1, 2


class Loop(Protocol):
    """``body`` applied to ``state`` while ``cond`` holds, at most ``bound`` times;
    ``differentiated``: whether a derivative may be taken through the loop."""

    def __call__(
        self,
        cond: Callable[[State], Any],
        body: Callable[[State], State],
        state: State,
        bound: int,
        differentiated: bool,
    ) -> State: ...


class Branch(Protocol):
    """``then(state)`` if ``predicate`` holds, else ``otherwise(state)``: one is run."""

    def __call__(
        self,
        predicate: Any,
        then: Callable[[State], State],
        otherwise: Callable[[State], State],
        state: State,
    ) -> State: ...


class Compile(Protocol):
    """The procedure ``build()`` makes, compiled once for ``key`` and kept."""

    def __call__(
        self, key: Hashable, build: Callable[[], Callable[..., Any]]
    ) -> Callable[..., Any]: ...


@dataclass(frozen=True)
class Control:
    """How the procedures' control flow runs.

    Attributes:
        loop: A bounded while loop (``Loop``).
        branch: A two-way branch that runs one side (``Branch``).
        select: ``select(predicate, a, b)``: ``a`` or ``b``, both already computed.
        compile: How a whole procedure is made ready to run (``Compile``).
        compiles: Whether ``compile`` compiles, on a procedure's first run (a warm-up
            worth reporting apart), or runs it as it is.
    """

    loop: Loop
    branch: Branch
    select: Callable[[Any, Any, Any], Any]
    compile: Compile
    compiles: bool


def _python_loop(
    cond: Callable[[State], Any],
    body: Callable[[State], State],
    state: State,
    bound: int,
    differentiated: bool,
) -> State:
    for _ in range(bound):
        if not bool(cond(state)):
            break
        state = body(state)
    return state


def _python_branch(
    predicate: Any,
    then: Callable[[State], State],
    otherwise: Callable[[State], State],
    state: State,
) -> State:
    return then(state) if bool(predicate) else otherwise(state)


#: Python's own control flow: the branches read values (a device array is read back).
EAGER = Control(
    loop=_python_loop,
    branch=_python_branch,
    select=lambda predicate, a, b: a if bool(predicate) else b,
    compile=lambda key, build: build(),
    compiles=False,
)


@dataclass(frozen=True)
class Ops:
    """What the procedures need of a framework.

    Attributes:
        xp: The array namespace.
        reverse: ``f ↦ ∇f`` by reverse mode, composable with itself and with ``forward``.
        forward: ``f ↦ ∇f`` by forward mode, composable with itself and with ``reverse``.
        lift: A NumPy float64 array to the framework's (float64, on the engine's device).
        scope: A context manager the computation runs in (jax: 64-bit mode).
        control: How loops and branches run (``EAGER``: Python's).
        pairs: Each variant's outer and inner operator, where a framework has faster
            ones for a position than ``reverse`` and ``forward`` (which nest anywhere).
    """

    xp: Any
    reverse: Operator
    forward: Operator
    lift: Callable[[Any], Array]
    scope: Callable[[], contextlib.AbstractContextManager[Any]]
    control: Control = EAGER
    pairs: Mapping[str, tuple[Operator, Operator]] | None = None


def ops_for(engine: GradientEngine) -> Ops:
    """The nested-derivative operators of ``engine``'s framework.

    Raises:
        NotSupported: the engine is not one of torch's or jax's.
    """
    if engine.name in _TORCH:
        return _torch_ops(engine)
    if engine.name in _JAX:
        return _jax_ops(engine)
    raise NotSupported(
        f"engine {engine.name!r} cannot nest derivatives (a derivative inside the function "
        f"differentiated); GradBench's particle and saddle run on: "
        f"{', '.join(sorted(_TORCH | _JAX))}"
    )


def _torch_ops(engine: GradientEngine) -> Ops:
    import torch
    import torch.autograd.forward_ad
    import torch.func

    fwad: Any = torch.autograd.forward_ad  # its functions carry no annotations

    # How many of these operators run around the current call, and how many of them are
    # torch.func's: an inner gradient needs a graph (create_graph) for the outer one to
    # differentiate, and inside torch.func's jvp only torch.func.grad sees its levels.
    enclosing = {"any": 0, "func": 0}

    @contextlib.contextmanager
    def inside(*kinds: str) -> Iterator[None]:
        for kind in kinds:
            enclosing[kind] += 1
        try:
            yield
        finally:
            for kind in kinds:
                enclosing[kind] -= 1

    def basis(x: Array) -> Array:
        return torch.eye(x.shape[0], dtype=x.dtype, device=x.device)

    def reverse(f: Scalar) -> Scalar:
        """torch.autograd.grad: a third of torch.func.grad's cost on these small functions."""

        def gradient(x: Array) -> Array:
            if enclosing["func"]:
                with inside("any", "func"):
                    return torch.func.grad(f)(x)
            nested = enclosing["any"] > 0
            # A fresh node for x, so that the gradient is f's in x alone, not through what
            # x was computed from; inside a forward_ad derivative it keeps x's tangent.
            primal, tangent = fwad.unpack_dual(x)
            wrt = primal.view_as(primal) if primal.requires_grad else primal.detach()
            wrt.requires_grad_(True)
            leaf = wrt if tangent is None else fwad.make_dual(wrt, tangent)
            with inside("any"):
                (grad,) = torch.autograd.grad(
                    f(leaf), wrt, create_graph=nested, allow_unused=True, materialize_grads=True
                )
            return grad

        return gradient

    def dual_forward(f: Scalar) -> Scalar:
        """forward_ad, one pass per coordinate: a dual level cannot hold another."""

        def gradient(x: Array) -> Array:
            nested, tangents = enclosing["any"] > 0, []
            with inside("any"):
                for direction in basis(x):
                    with fwad.dual_level():
                        tangent = fwad.unpack_dual(f(fwad.make_dual(x, direction))).tangent
                    tangents.append(torch.zeros_like(x[0]) if tangent is None else tangent)
            found = torch.stack(tangents)
            return found if nested else found.detach()

        return gradient

    def func_forward(f: Scalar) -> Scalar:
        """torch.func's jvp, vmapped over the basis: it nests in itself (ff)."""

        def gradient(x: Array) -> Array:
            with inside("any", "func"):
                return torch.func.vmap(lambda e: torch.func.jvp(f, (x,), (e,))[1])(basis(x))

        return gradient

    pairs = {
        "rr": (reverse, reverse),
        "rf": (reverse, dual_forward),
        "fr": (dual_forward, reverse),
        "ff": (func_forward, func_forward),
    }

    def lift(values: Any) -> Array:
        return engine.asarray(np.asarray(values, dtype=np.float64), "float64")

    # The torch engines' scope for torch.func: gradients recorded, and torch's own
    # deprecation warning from its first forward-mode call silenced.
    scope = getattr(engine, "_transforming", contextlib.nullcontext)
    return Ops(torch, reverse, func_forward, lift, scope, pairs=pairs)


#: jax's compiled procedures, by (device, procedure, variant): compiled on the first run.
_COMPILED: dict[Hashable, Callable[..., Any]] = {}
#: How deep jax's differentiable loop nests its scans: 4 of 18 steps each cover
#: ``MAX_STEPS``. Shallower nests leave more skipped steps past the loop's end in the
#: chunks it ran (2 of 317: a reverse gradient of the flight 3 to 10 times slower); deeper
#: ones compile a little longer.
_SCAN_LEVELS = 4


def _jax_ops(engine: GradientEngine) -> Ops:
    import jax
    import jax.numpy as jnp

    device = getattr(engine, "device", None)

    def like(new: Any, old: Any) -> Any:
        """``new`` with ``old``'s dtypes: a branch or a step keeps its state's types."""
        return jax.tree.map(lambda n, o: jnp.asarray(n, dtype=o.dtype), new, old)

    def strong(state: Any) -> Any:
        """The state as arrays of fixed (not weak) types, as a loop carries it."""
        return jax.tree.map(lambda v: jnp.asarray(v, dtype=jnp.asarray(v).dtype), state)

    def branch(predicate: Any, then: Any, otherwise: Any, state: Any) -> Any:
        state = strong(state)
        return jax.lax.cond(
            predicate, lambda s: like(then(s), s), lambda s: like(otherwise(s), s), state
        )

    def loop(cond: Any, body: Any, state: Any, bound: int, differentiated: bool) -> Any:
        # Reverse mode goes through a scan, not a while_loop: a loop that may be
        # differentiated is scans of scans of steps (``_SCAN_LEVELS`` deep, each ``width``
        # long), each step and each chunk skipped (one cond) once the loop is done. Each
        # chunk is checkpointed: reverse mode keeps its carry and recomputes the chunks the
        # loop ran in, instead of keeping (zeros for) every step's residuals up to ``bound``.
        width = 2
        while width**_SCAN_LEVELS < bound:
            width += 1

        def going(carry: Any) -> Any:
            return cond(carry[0]) & (carry[1] < bound)

        run: Any = lambda c: (like(body(c[0]), c[0]), c[1] + 1)  # noqa: E731
        start = (strong(state), jnp.asarray(0, dtype=jnp.int64))
        if not differentiated:
            return jax.lax.while_loop(going, run, start)[0]

        def guarded(run: Any) -> Any:
            return lambda carry, _: (jax.lax.cond(going(carry), run, lambda c: c, carry), None)

        def scanned(run: Any) -> Any:
            return jax.checkpoint(lambda carry: jax.lax.scan(guarded(run), carry, None, width)[0])

        for _ in range(_SCAN_LEVELS):
            run = scanned(run)
        return run(start)[0]

    def compile(key: Hashable, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        full = (device, key)
        if full not in _COMPILED:
            _COMPILED[full] = jax.jit(build())
        return _COMPILED[full]

    def forward(f: Scalar) -> Scalar:
        def gradient(x: Array) -> Array:
            basis = jnp.eye(x.shape[0], dtype=x.dtype)
            return jax.vmap(lambda e: jax.jvp(f, (x,), (e,))[1])(basis)

        return gradient

    def lift(values: Any) -> Array:
        return jax.device_put(np.asarray(values, dtype=np.float64), device)

    control = Control(loop, branch, jnp.where, compile, compiles=True)
    return Ops(jnp, jax.grad, forward, lift, lambda: jax.enable_x64(True), control)


def _norm(v: Array, xp: Any) -> Array:
    return xp.sqrt(xp.sum(v * v))


class _Descent(NamedTuple):
    x: Array
    fx: Array
    gx: Array
    eta: Any
    accepted: Any
    status: Any


def descend(
    grad: Operator,
    f: Scalar,
    x: Array,
    xp: Any,
    control: Control = EAGER,
    differentiated: bool = True,
) -> tuple[Array, Any]:
    """GradBench's gradient descent from ``x``: where it stops, and its status there
    (``CONVERGED``; ``NOT_FINITE``; ``RUNNING``: it ran ``MAX_STEPS`` steps).

    A candidate whose value is not finite stops it, where GradBench's would count a rise:
    that is how a failure inside ``f`` arrives (a flight that never lands: NaN).
    ``differentiated``: whether a derivative may be taken through it (an inner descent).
    """
    g = grad(f)
    branch = control.branch

    def step(s: _Descent) -> _Descent:
        size = _norm(s.gx, xp)
        status = control.select(
            xp.isfinite(size), control.select(size <= TOLERANCE, CONVERGED, RUNNING), NOT_FINITE
        )
        return branch(status == RUNNING, advance, lambda s: s._replace(status=status), s)

    def advance(s: _Descent) -> _Descent:
        return branch(s.accepted == 10, lambda s: s._replace(eta=2 * s.eta, accepted=0), move, s)

    def move(s: _Descent) -> _Descent:
        candidate = s.x - s.eta * s.gx

        def attempt(s: _Descent) -> _Descent:
            f_candidate = f(candidate)

            def compare(s: _Descent) -> _Descent:
                return branch(
                    f_candidate < s.fx,
                    lambda s: _Descent(
                        candidate, f_candidate, g(candidate), s.eta, s.accepted + 1, s.status
                    ),
                    lambda s: s._replace(eta=s.eta / 2, accepted=0),
                    s,
                )

            return branch(
                xp.isfinite(f_candidate),
                compare,
                lambda s: s._replace(status=NOT_FINITE),
                s,
            )

        return branch(
            _norm(s.x - candidate, xp) <= TOLERANCE,
            lambda s: s._replace(status=CONVERGED),
            attempt,
            s,
        )

    fx = f(x)
    # No gradient where the value already failed (a particle that never lands): the
    # descent stops on it at its first step.
    gx = branch(xp.isfinite(fx), g, lambda x: x * math.nan, x)
    start = _Descent(x, fx, gx, TOLERANCE, 0, RUNNING)
    end = control.loop(lambda s: s.status == RUNNING, step, start, MAX_STEPS, differentiated)
    return end.x, end.status


def _poisoned(value: Array, failed: Any, control: Control) -> Array:
    """NaN if ``failed``, else ``value``: a compiled procedure cannot raise from inside a
    derivative, so a failure travels as NaN (its derivative NaN too) to the outer descent,
    which stops on it as not finite."""
    return control.branch(failed, lambda v: v * math.nan, lambda v: v, value)


def argmin(grad: Operator, f: Scalar, x: Array, xp: Any, control: Control = EAGER) -> Array:
    """GradBench's gradient descent from ``x``: the point where it stops (NaN where it
    stops on a value that is not finite, or does not stop)."""
    found, status = descend(grad, f, x, xp, control)
    return _poisoned(found, status != CONVERGED, control)


def argmax(grad: Operator, f: Scalar, x: Array, xp: Any, control: Control = EAGER) -> Array:
    return argmin(grad, lambda point: -f(point), x, xp, control)


def _checked(status: Any, what: str) -> None:
    """Raise unless a top-level descent stopped where GradBench's does."""
    status = int(status)
    if status == NOT_FINITE:
        raise ValueError(f"{what}'s descent met a value or gradient that is not finite")
    if status == RUNNING:
        raise ValueError(f"{what}'s descent did not stop within {MAX_STEPS} steps")


def _variant(function: str, ops: Ops) -> tuple[Operator, Operator]:
    """The outer and inner operators of ``ff``, ``fr``, ``rf`` or ``rr``."""
    if ops.pairs is not None:
        return ops.pairs[function]
    modes = {"f": ops.forward, "r": ops.reverse}
    return modes[function[0]], modes[function[1]]


class _Flight(NamedTuple):
    x: Array
    velocity: Array
    flying: Any


def landing(inner: Operator, ops: Ops) -> Scalar:
    """w ↦ x₀(t_f)²: where the particle crosses the x-axis, squared (``particle``'s objective).

    A particle starts at (0, 8) with velocity (0.75, 0) in the potential of unit charges at
    (10, 10 − w) and (10, 0); naive Euler steps of 0.1, the force the potential's gradient
    by ``inner``, run until it would cross the axis, where linear interpolation finds the
    crossing. NaN if it has not within ``MAX_STEPS`` steps.
    """
    xp, lift, control = ops.xp, ops.lift, ops.control

    def squared_miss(w: Array) -> Array:
        fixed, moving, up = lift([10.0, 0.0]), lift([10.0, 10.0]), lift([0.0, 1.0])
        charges = xp.stack([moving - w[0] * up, fixed])

        def potential(x: Array) -> Array:
            # Both charges at once, and reciprocal, not 1 / ...: torch's forward mode runs
            # each binary operation with an operand it does not differentiate (a constant
            # here) through Python, at 25 to 100 times an operation's cost.
            gaps = x - charges
            return xp.sum(xp.reciprocal(xp.sqrt(xp.sum(gaps * gaps, axis=1))))

        force, dt = inner(potential), 0.1

        def step(s: _Flight) -> _Flight:
            moved = s.x + dt * s.velocity

            def fly(s: _Flight) -> _Flight:
                acceleration = -force(s.x)
                return _Flight(moved, s.velocity + dt * acceleration, s.flying)

            return control.branch(moved[1] > 0, fly, lambda s: s._replace(flying=False), s)

        start = _Flight(lift([0.0, 8.0]), lift([0.75, 0.0]), True)
        end = control.loop(lambda s: s.flying, step, start, MAX_STEPS, True)
        to_axis = -end.x[1] / end.velocity[1]
        miss = (end.x + to_axis * end.velocity)[0] ** 2
        return _poisoned(miss, end.flying, control)

    return squared_miss


def particle(function: str, w0: float, ops: Ops) -> float:
    """GradBench's ``particle``: the control w, from ``w0``, that minimises ``landing``."""
    outer, inner = _variant(function, ops)

    def build() -> Callable[[Array], tuple[Array, Any]]:
        return lambda w: descend(outer, landing(inner, ops), w, ops.xp, ops.control, False)

    with ops.scope():
        run = ops.control.compile(("particle", function), build)
        w, status = run(ops.lift([w0]))
        _checked(status, "particle")
        return float(_host(w)[0])


def _value(p1: Array, p2: Array, xp: Any) -> Array:
    """``saddle``'s function: |p₁|² − |p₂|²."""
    return xp.sum(p1 * p1) - xp.sum(p2 * p2)


def best_response(inner: Operator, begin: Array, ops: Ops) -> Scalar:
    """p₁ ↦ max over p₂ of the function, the maximum found by descent from ``begin``."""
    xp, control = ops.xp, ops.control

    def response(p1: Array) -> Array:
        p2 = argmax(inner, lambda p2: _value(p1, p2, xp), begin, xp, control)
        return _value(p1, p2, xp)

    return response


def saddle(function: str, start: tuple[float, float], ops: Ops) -> list[float]:
    """GradBench's ``saddle``: min over p₁ of max over p₂ of (|p₁|² − |p₂|²), both searches
    from ``start``; returns p₁ then p₂ (the inner maximum's argmax at the found p₁)."""
    outer, inner = _variant(function, ops)
    xp, control = ops.xp, ops.control

    def build() -> Callable[[Array], tuple[Array, Array, Any]]:
        def run(begin: Array) -> tuple[Array, Array, Any]:
            response = best_response(inner, begin, ops)
            p1, first = descend(outer, response, begin, xp, control, False)
            p2, second = descend(outer, lambda q: -_value(p1, q, xp), begin, xp, control, False)
            return p1, p2, control.select(first == CONVERGED, second, first)

        return run

    with ops.scope():
        run = control.compile(("saddle", function), build)
        p1, p2, status = run(ops.lift(list(start)))
        _checked(status, "saddle")
        return [float(v) for v in np.concatenate([_host(p1), _host(p2)])]


def _host(array: Array) -> np.ndarray:
    """A (possibly device) array as NumPy."""
    detach = getattr(array, "detach", None)
    if detach is not None:
        return np.asarray(detach().cpu())
    return np.asarray(array)
