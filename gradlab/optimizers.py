"""Optimizers as pure ``(init, update)`` pairs over parameters (dicts or any nest), as optax.

An optimizer never mutates anything and never imports a framework: ``init(params)`` returns a state,
``update(grads, state, params)`` returns ``(updates, new_state)``, and the loop adds the updates to
the parameters ([`apply_updates`][gradlab.apply_updates]). Only arithmetic operators touch the
arrays, so the same optimizer runs on NumPy arrays, torch tensors and jax arrays, and is traced by
``jax.jit``/``lax.scan`` unchanged. Every ``lr`` may be a number or a schedule
([`gradlab.schedules`][gradlab.schedules]), evaluated at the number of updates already taken, which
each state counts (``state.count``). [`chain`][gradlab.chain] composes transformations;
[`clip_by_global_norm`][gradlab.clip_by_global_norm] is one.

Every optimizer and schedule gradlab makes pickles (as the call that made it), so a spawned
process can receive one; one of the user's own closures works everywhere but does not pickle.

Conventions, where frameworks differ (the parity tests hold each to ``torch.optim``):

- ``momentum`` follows ``torch.optim.SGD`` (dampening 0): v ← β·v + g, p ← p − lr·v; with
  ``nesterov=True``, p ← p − lr·(g + β·v). ``convention="sutskever"`` is Sutskever et al.'s
  form, v ← β·v − lr·g, p ← p + v (optax's ``trace`` with the learning rate inside). The
  two agree step for step at a constant learning rate (v_sutskever = −lr·v_torch) and
  differ when it changes: torch's applies a new rate to the whole velocity at once,
  Sutskever's only to new gradients.
- ``adam`` follows Kingma & Ba and ``torch.optim.Adam``/``optax.adam``: ε is added *after*
  the square root of the bias-corrected second moment, p ← p − lr·m̂ / (√v̂ + ε).
- ``adamw`` is ``torch.optim.AdamW``: decoupled weight decay, p ← p − lr·(m̂ / (√v̂ + ε)
  + wd·p), the decay scaled by the (scheduled) learning rate as torch does (optax's
  ``adamw`` too).
- ``rmsprop`` is ``torch.optim.RMSprop`` (not centred, no momentum): v ← α·v + (1 − α)·g²,
  p ← p − lr·g / (√v + ε), ε *outside* the square root (optax puts it inside).
- ``clip_by_global_norm`` scales all gradients by min(1, max_norm / ‖g‖) as optax does;
  ``torch.nn.utils.clip_grad_norm_`` divides by ‖g‖ + 10⁻⁶, a relative difference of
  10⁻⁶ / ‖g‖ when clipping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, ParamSpec

from gradlab._checks import check_bool, check_float, check_positive_float
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._picklable import picklable
from gradlab._tree import leaves, tree_map
from gradlab.schedules import Schedule, as_schedule

Array = Any
Params = Mapping[str, Array]
Updates = dict[str, Array]
State = Any
LearningRate = float | Schedule
_P = ParamSpec("_P")

__all__ = [
    "AdamState",
    "GradientTransformation",
    "MomentumState",
    "RMSpropState",
    "SGDState",
    "adam",
    "adamw",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "momentum",
    "rmsprop",
    "sgd",
]


class GradientTransformation(NamedTuple):
    """An optimizer: two pure functions.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(grads, state, params) -> (updates, state)``; the new parameters are
            ``params + updates`` ([`apply_updates`][gradlab.apply_updates]).
    """

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Updates, State]]


class SGDState(NamedTuple):
    """The step count of [`sgd`][gradlab.sgd] (for its schedule)."""

    count: Any


class MomentumState(NamedTuple):
    """The step count and velocity of [`momentum`][gradlab.momentum], one array per parameter."""

    count: Any
    velocity: dict[str, Array]


class AdamState(NamedTuple):
    """The step count and moment estimates of [`adam`][gradlab.adam] and
    [`adamw`][gradlab.adamw]."""

    count: Any
    mu: dict[str, Array]
    nu: dict[str, Array]


class RMSpropState(NamedTuple):
    """The step count and mean square of [`rmsprop`][gradlab.rmsprop]."""

    count: Any
    nu: dict[str, Array]


def _shared(
    factory: Callable[_P, GradientTransformation],
) -> Callable[_P, GradientTransformation]:
    """``factory``, returning the same optimizer object for the same (hashable) arguments.

    Why: engines that compile the loop (jax, torch-compile) key it on the optimizer object,
    and ``optimizer=gradlab.sgd(0.01)`` written inline makes a new one for every fit, which
    compiled the loop again (0.2 s a fit of the seed). Optimizers are pure and immutable,
    so one object per setting is the same optimizer. Arguments compare by type too
    (``typed``): ``sgd(1)`` and ``sgd(True)`` are checked apart. An unhashable argument (a
    schedule object that is not hashable) makes a new optimizer, as before.
    """
    cached = functools.lru_cache(maxsize=256, typed=True)(factory)

    @functools.wraps(factory)
    def make(*args: _P.args, **kwargs: _P.kwargs) -> GradientTransformation:
        try:
            hash((args, tuple(kwargs.items())))
        except TypeError:
            return factory(*args, **kwargs)
        made: GradientTransformation = cached(*args, **kwargs)  # type: ignore[arg-type]
        return made

    return make


def _zeros(params: Params) -> Any:
    return tree_map(lambda value: value * 0, params)


def apply_updates(params: Params, updates: Params) -> Any:
    """Return ``params + updates``, leaf by leaf (dicts, or nests of the same structure).

    Examples:
        >>> apply_updates({"w": 1.0}, {"w": -0.25})
        {'w': 0.75}
        >>> apply_updates({"layers": [{"w": 1.0}]}, {"layers": [{"w": 0.5}]})
        {'layers': [{'w': 1.5}]}
    """
    return tree_map(lambda value, update: value + update, params, updates)


@_shared
@picklable
def sgd(lr: LearningRate) -> GradientTransformation:
    """Plain gradient descent, p ← p − lr·g, as in the seed tutorial.

    Args:
        lr: The learning rate, a positive finite number, or a schedule.

    Raises:
        ArgumentError: ``lr`` is not a positive finite number (or a valid schedule).

    Examples:
        >>> import numpy as np
        >>> opt = sgd(0.1)
        >>> updates, _ = opt.update({"w": np.array(2.0)}, opt.init({}), {"w": np.array(1.0)})
        >>> float(updates["w"])
        -0.2
    """
    schedule = as_schedule(lr)

    def init(params: Params) -> SGDState:
        return SGDState(0)

    def update(grads: Params, state: SGDState, params: Params) -> tuple[Updates, SGDState]:
        # (−rate)·g is −(rate·g) to the bit (negation is exact), in one multiplication per
        # leaf instead of two operations: one kernel less per parameter on torch.
        step = -schedule(state.count)
        return tree_map(lambda g: step * g, grads), SGDState(state.count + 1)

    return GradientTransformation(init, update)


@_shared
@picklable
def momentum(
    lr: LearningRate, beta: float = 0.9, nesterov: bool = False, convention: str = "torch"
) -> GradientTransformation:
    """Heavy-ball momentum, in torch's convention by default: v ← β·v + g, p ← p − lr·v.

    Args:
        lr: The learning rate, a positive finite number, or a schedule.
        beta: The momentum coefficient, in [0, 1).
        nesterov: Use Nesterov's look-ahead form, p ← p − lr·(g + β·v) (torch convention).
        convention: ``"torch"`` or ``"sutskever"`` (v ← β·v − lr·g, p ← p + v); see the
            module's notes on where they differ.

    Raises:
        ArgumentError: ``lr``, ``beta`` or ``convention`` out of range.
    """
    schedule = as_schedule(lr)
    beta = check_float(beta, "beta", 0.0, 1.0, high_open=True)
    nesterov = check_bool(nesterov, "nesterov")
    if convention not in ("torch", "sutskever"):
        raise ArgumentError("convention", f"must be 'torch' or 'sutskever', got {convention!r}")
    if nesterov and convention == "sutskever":
        raise ArgumentError("nesterov", "is offered in the torch convention only")

    def init(params: Params) -> MomentumState:
        return MomentumState(0, _zeros(params))

    def update(
        grads: Params, state: MomentumState, params: Params
    ) -> tuple[Updates, MomentumState]:
        rate = schedule(state.count)
        if convention == "sutskever":
            velocity = tree_map(lambda v, g: beta * v - rate * g, state.velocity, grads)
            return velocity, MomentumState(state.count + 1, velocity)
        velocity = tree_map(lambda v, g: beta * v + g, state.velocity, grads)
        step = tree_map(lambda g, v: g + beta * v, grads, velocity) if nesterov else velocity
        negative = -rate  # as in sgd: one multiplication per leaf, the same bits
        updates = tree_map(lambda s: negative * s, step)
        return updates, MomentumState(state.count + 1, velocity)

    return GradientTransformation(init, update)


def _moments(b1: float, b2: float, eps: float) -> tuple[float, float, float]:
    return (
        check_float(b1, "b1", 0.0, 1.0, high_open=True),
        check_float(b2, "b2", 0.0, 1.0, high_open=True),
        check_float(eps, "eps", 0.0),
    )


@_shared
@picklable
def adam(
    lr: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015), with ε added after the square root, as torch and optax do.

    m ← b1·m + (1 − b1)·g,  v ← b2·v + (1 − b2)·g²,  t ← t + 1,
    p ← p − lr·(m / (1 − b1ᵗ)) / (√(v / (1 − b2ᵗ)) + ε).

    Args:
        lr: The learning rate, a positive finite number, or a schedule.
        b1: Decay of the first moment, in [0, 1).
        b2: Decay of the second moment, in [0, 1).
        eps: Added to the denominator for numerical stability, ≥ 0.

    Raises:
        ArgumentError: a hyper-parameter out of range.
    """
    return adamw(lr, b1, b2, eps, weight_decay=0.0)


@_shared
@picklable
def adamw(
    lr: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter; ``torch.optim.AdamW``):
    p ← p − lr·(m̂ / (√v̂ + ε) + wd·p).

    Args:
        lr: The learning rate, a positive finite number, or a schedule.
        b1: Decay of the first moment, in [0, 1).
        b2: Decay of the second moment, in [0, 1).
        eps: Added to the denominator for numerical stability, ≥ 0.
        weight_decay: The decay wd, ≥ 0 (torch's default, 0.01).

    Raises:
        ArgumentError: a hyper-parameter out of range.
    """
    schedule = as_schedule(lr)
    b1, b2, eps = _moments(b1, b2, eps)
    decay = check_float(weight_decay, "weight_decay", 0.0)

    def init(params: Params) -> AdamState:
        return AdamState(0, _zeros(params), _zeros(params))

    def update(grads: Params, state: AdamState, params: Params) -> tuple[Updates, AdamState]:
        rate = schedule(state.count)
        count = state.count + 1
        mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), state.nu, grads)
        # The count may be a traced integer under jax, so the corrections use ** on it.
        correction1 = 1 - b1**count
        correction2 = 1 - b2**count

        def step(m: Array, v: Array, p: Array) -> Array:
            update = -(rate * (m / correction1) / ((v / correction2) ** 0.5 + eps))
            return update - rate * decay * p if decay else update

        return tree_map(step, mu, nu, params), AdamState(count, mu, nu)

    return GradientTransformation(init, update)


@_shared
@picklable
def rmsprop(lr: LearningRate, alpha: float = 0.99, eps: float = 1e-8) -> GradientTransformation:
    """RMSprop as ``torch.optim.RMSprop``: v ← α·v + (1 − α)·g², p ← p − lr·g / (√v + ε).

    Args:
        lr: The learning rate, a positive finite number, or a schedule.
        alpha: Decay of the mean square, in [0, 1).
        eps: Added to the denominator (after the square root), ≥ 0.

    Raises:
        ArgumentError: a hyper-parameter out of range.
    """
    schedule = as_schedule(lr)
    alpha = check_float(alpha, "alpha", 0.0, 1.0, high_open=True)
    eps = check_float(eps, "eps", 0.0)

    def init(params: Params) -> RMSpropState:
        return RMSpropState(0, _zeros(params))

    def update(grads: Params, state: RMSpropState, params: Params) -> tuple[Updates, RMSpropState]:
        rate = schedule(state.count)
        nu = tree_map(lambda v, g: alpha * v + (1 - alpha) * (g * g), state.nu, grads)
        updates = tree_map(lambda g, v: -(rate * g / (v**0.5 + eps)), grads, nu)
        return updates, RMSpropState(state.count + 1, nu)

    return GradientTransformation(init, update)


@_shared
@picklable
def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all gradients together by min(1, max_norm / ‖g‖), ‖g‖ over every element.

    Use it first in a [`chain`][gradlab.chain]: ``chain(clip_by_global_norm(1.0), adam(1e-3))``.

    Args:
        max_norm: The largest global norm let through, a positive number.

    Examples:
        >>> import numpy as np
        >>> clip = clip_by_global_norm(1.0)
        >>> updates, _ = clip.update({"a": np.array([3.0]), "b": np.array(4.0)}, (), {})
        >>> float(updates["a"][0]), float(updates["b"])
        (0.6, 0.8)
    """
    max_norm = check_positive_float(max_norm, "max_norm")

    def init(params: Params) -> tuple[()]:
        return ()

    def update(grads: Params, state: tuple[()], params: Params) -> tuple[Updates, tuple[()]]:
        norm = sum((g * g).sum() for g in leaves(grads)) ** 0.5
        # max_norm / max(‖g‖, max_norm), the max by arithmetic: never a division by zero.
        scale = max_norm / ((norm + max_norm + abs(norm - max_norm)) / 2)
        return tree_map(lambda g: g * scale, grads), state

    return GradientTransformation(init, update)


@_shared
@picklable
def chain(*transformations: GradientTransformation) -> GradientTransformation:
    """Apply transformations in turn, each to the previous one's updates (as optax does).

    Raises:
        ArgumentTypeError: an argument is not a
            [`GradientTransformation`][gradlab.GradientTransformation].
    """
    if not transformations:
        raise ArgumentError("transformations", "chain needs at least one transformation")
    for item in transformations:
        if not isinstance(item, GradientTransformation):
            raise ArgumentTypeError(
                "transformations", f"must be GradientTransformations, got {item!r}"
            )

    def init(params: Params) -> tuple[Any, ...]:
        return tuple(item.init(params) for item in transformations)

    def update(
        grads: Params, state: tuple[Any, ...], params: Params
    ) -> tuple[Updates, tuple[Any, ...]]:
        updates: Any = grads
        states = []
        for item, inner in zip(transformations, state, strict=True):
            updates, inner = item.update(updates, inner, params)
            states.append(inner)
        return updates, tuple(states)

    return GradientTransformation(init, update)
