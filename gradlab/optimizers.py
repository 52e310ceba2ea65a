"""Optimizers as pure ``(init, update)`` pairs over named parameters, in the style of optax.

An optimizer never mutates anything and never imports a framework: ``init(params)`` returns
a state, ``update(grads, state, params)`` returns ``(updates, new_state)``, and the loop adds
the updates to the parameters (:func:`apply_updates`). Only arithmetic operators touch the
arrays, so the same optimizer runs on NumPy arrays, torch tensors and jax arrays, and is
traced by ``jax.jit``/``lax.scan`` unchanged.

Conventions, where frameworks differ:

- ``momentum`` follows ``torch.optim.SGD`` (dampening 0): v ← β·v + g, p ← p − lr·v; with
  ``nesterov=True``, p ← p − lr·(g + β·v).
- ``adam`` follows Kingma & Ba and ``torch.optim.Adam``/``optax.adam``: ε is added *after*
  the square root of the bias-corrected second moment, p ← p − lr·m̂ / (√v̂ + ε).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from gradlab._checks import check_bool, check_float, check_positive_float

Array = Any
Params = Mapping[str, Array]
Updates = dict[str, Array]
State = Any

__all__ = [
    "AdamState",
    "GradientTransformation",
    "MomentumState",
    "adam",
    "apply_updates",
    "momentum",
    "sgd",
]


class GradientTransformation(NamedTuple):
    """An optimizer: two pure functions.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(grads, state, params) -> (updates, state)``; the new parameters are
            ``params + updates`` (:func:`apply_updates`).
    """

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Updates, State]]


class MomentumState(NamedTuple):
    """The velocity of :func:`momentum`, one array per parameter."""

    velocity: dict[str, Array]


class AdamState(NamedTuple):
    """The step count and moment estimates of :func:`adam`."""

    count: Any
    mu: dict[str, Array]
    nu: dict[str, Array]


def apply_updates(params: Params, updates: Params) -> dict[str, Array]:
    """Return ``params + updates``, name by name.

    Example:
        >>> apply_updates({"w": 1.0}, {"w": -0.25})
        {'w': 0.75}
    """
    return {name: value + updates[name] for name, value in params.items()}


def sgd(lr: float) -> GradientTransformation:
    """Plain gradient descent, p ← p − lr·g, as in the seed tutorial.

    Args:
        lr: The learning rate, a positive finite number.

    Raises:
        ArgumentError: ``lr`` is not a positive finite number.

    Example:
        >>> import numpy as np
        >>> opt = sgd(0.1)
        >>> updates, _ = opt.update({"w": np.array(2.0)}, opt.init({}), {"w": np.array(1.0)})
        >>> float(updates["w"])
        -0.2
    """
    lr = check_positive_float(lr, "lr")

    def init(params: Params) -> tuple[()]:
        return ()

    def update(grads: Params, state: tuple[()], params: Params) -> tuple[Updates, tuple[()]]:
        return {name: -(lr * g) for name, g in grads.items()}, state

    return GradientTransformation(init, update)


def momentum(lr: float, beta: float = 0.9, nesterov: bool = False) -> GradientTransformation:
    """Heavy-ball momentum in torch's convention: v ← β·v + g, p ← p − lr·v.

    Args:
        lr: The learning rate, a positive finite number.
        beta: The momentum coefficient, in [0, 1).
        nesterov: Use Nesterov's look-ahead form, p ← p − lr·(g + β·v).

    Raises:
        ArgumentError: ``lr`` or ``beta`` out of range.
    """
    lr = check_positive_float(lr, "lr")
    beta = check_float(beta, "beta", 0.0, 1.0, high_open=True)
    nesterov = check_bool(nesterov, "nesterov")

    def init(params: Params) -> MomentumState:
        return MomentumState({name: value * 0 for name, value in params.items()})

    def update(
        grads: Params, state: MomentumState, params: Params
    ) -> tuple[Updates, MomentumState]:
        velocity = {name: beta * state.velocity[name] + g for name, g in grads.items()}
        if nesterov:
            step = {name: g + beta * velocity[name] for name, g in grads.items()}
        else:
            step = velocity
        return {name: -(lr * s) for name, s in step.items()}, MomentumState(velocity)

    return GradientTransformation(init, update)


def adam(
    lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015), with ε added after the square root, as torch and optax do.

    m ← b1·m + (1 − b1)·g,  v ← b2·v + (1 − b2)·g²,  t ← t + 1,
    p ← p − lr·(m / (1 − b1ᵗ)) / (√(v / (1 − b2ᵗ)) + ε).

    Args:
        lr: The learning rate, a positive finite number.
        b1: Decay of the first moment, in [0, 1).
        b2: Decay of the second moment, in [0, 1).
        eps: Added to the denominator for numerical stability, ≥ 0.

    Raises:
        ArgumentError: a hyper-parameter out of range.
    """
    lr = check_positive_float(lr, "lr")
    b1 = check_float(b1, "b1", 0.0, 1.0, high_open=True)
    b2 = check_float(b2, "b2", 0.0, 1.0, high_open=True)
    eps = check_float(eps, "eps", 0.0)

    def init(params: Params) -> AdamState:
        zeros = {name: value * 0 for name, value in params.items()}
        return AdamState(0, zeros, dict(zeros))

    def update(grads: Params, state: AdamState, params: Params) -> tuple[Updates, AdamState]:
        count = state.count + 1
        mu = {name: b1 * state.mu[name] + (1 - b1) * g for name, g in grads.items()}
        nu = {name: b2 * state.nu[name] + (1 - b2) * (g * g) for name, g in grads.items()}
        # The count may be a traced integer under jax, so the corrections use ** on it.
        correction1 = 1 - b1**count
        correction2 = 1 - b2**count
        updates = {
            name: -(lr * (mu[name] / correction1) / ((nu[name] / correction2) ** 0.5 + eps))
            for name in grads
        }
        return updates, AdamState(count, mu, nu)

    return GradientTransformation(init, update)
