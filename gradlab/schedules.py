"""Learning-rate schedules: functions of the step count, usable by every optimizer.

A schedule maps the number of updates already taken, t = 0, 1, 2, …, to the learning rate
of the next one; pass it wherever an optimizer takes ``lr`` (``gradlab.adam(cosine(1e-2,
1000))``). The count may be a Python int, a NumPy integer, a torch tensor or a traced jax
integer, so schedules use arithmetic, and the array's own namespace for ``cos`` and
``floor``; they run inside the compiled jax loop.

Conventions follow ``torch.optim.lr_scheduler`` (the parity tests hold them to it), except
where noted:

- [`step_decay`][gradlab.schedules.step_decay] is ``StepLR``: lr·factorᵗ ᐟᐟ ᵉᵛᵉʳʸ.
- [`exponential_decay`][gradlab.schedules.exponential_decay] is ``ExponentialLR``: lr·rateᵗ.
- [`cosine_decay`][gradlab.schedules.cosine_decay] is ``CosineAnnealingLR`` up to t = steps, then
  stays at ``final`` (torch's keeps oscillating; optax's stays, as here).
- [`warmup`][gradlab.schedules.warmup] multiplies a schedule by min(1, (t + 1) / steps): the first
  update already moves (torch's ``LinearLR`` needs a start factor > 0 for the same reason).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gradlab._checks import check_float, check_int, check_positive_float
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._picklable import picklable, unwrapped

Schedule = Callable[[Any], Any]

__all__ = [
    "Schedule",
    "as_schedule",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "step_decay",
    "warmup",
]


def _namespace(value: Any) -> Any:
    """The array namespace of a count, found without importing a framework that is absent."""
    module = type(value).__module__
    if module.startswith("torch"):
        return importlib.import_module("torch")
    if module.startswith("jax"):
        return importlib.import_module("jax.numpy")
    return np


def _smaller(a: Any, b: Any) -> Any:
    """min(a, b) by arithmetic alone, for Python numbers and any kind of array."""
    return (a + b - abs(a - b)) / 2


@picklable
def constant(lr: float) -> Schedule:
    """The same learning rate at every step.

    Examples:
        >>> from gradlab.schedules import constant
        >>> constant(0.1)(0), constant(0.1)(1000)
        (0.1, 0.1)
    """
    lr = check_positive_float(lr, "lr")

    def schedule(count: Any) -> Any:
        return lr + 0 * count

    return schedule


@picklable
def step_decay(lr: float, every: int, factor: float = 0.1) -> Schedule:
    """lr·factorᵏ with k = ⌊t / every⌋ (torch's ``StepLR``).

    Examples:
        >>> from gradlab.schedules import step_decay
        >>> [round(float(step_decay(1.0, every=2, factor=0.5)(t)), 3) for t in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    lr = check_positive_float(lr, "lr")
    every = check_int(every, "every", 1)
    factor = check_float(factor, "factor", 0.0, 1.0)
    if factor == 0.0:
        raise ArgumentError("factor", "must be in (0, 1], got 0")

    def schedule(count: Any) -> Any:
        return lr * factor ** (count // every)

    return schedule


@picklable
def exponential_decay(lr: float, rate: float) -> Schedule:
    """lr·rateᵗ (torch's ``ExponentialLR`` with gamma = rate).

    Examples:
        >>> from gradlab.schedules import exponential_decay
        >>> float(exponential_decay(1.0, rate=0.5)(3))
        0.125
    """
    lr = check_positive_float(lr, "lr")
    rate = check_float(rate, "rate", 0.0, 1.0)
    if rate == 0.0:
        raise ArgumentError("rate", "must be in (0, 1], got 0")

    def schedule(count: Any) -> Any:
        return lr * rate**count

    return schedule


@picklable
def cosine_decay(lr: float, steps: int, final: float = 0.0) -> Schedule:
    """final + (lr − final)·(1 + cos(π·min(t, steps)/steps))/2 (torch's ``CosineAnnealingLR``
    with T_max = steps and eta_min = final, held at ``final`` after ``steps``).

    Examples:
        >>> from gradlab.schedules import cosine_decay
        >>> [round(float(cosine_decay(1.0, steps=4)(t)), 4) for t in (0, 2, 4, 9)]
        [1.0, 0.5, 0.0, 0.0]
    """
    lr = check_positive_float(lr, "lr")
    steps = check_int(steps, "steps", 1)
    final = check_float(final, "final", 0.0)
    if final > lr:
        raise ArgumentError("final", f"must be at most lr ({lr}), got {final}")

    def schedule(count: Any) -> Any:
        progress = _smaller(count, steps) / steps
        cos = _namespace(progress).cos(math.pi * progress)
        return final + (lr - final) * (1 + cos) / 2

    return schedule


@picklable
def warmup(schedule: Schedule | float, steps: int) -> Schedule:
    """``schedule`` (or a constant learning rate) times min(1, (t + 1) / steps): a linear
    warm-up over the first ``steps`` updates.

    Examples:
        >>> from gradlab.schedules import warmup
        >>> [float(warmup(1.0, steps=4)(t)) for t in range(6)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    inner = as_schedule(schedule, "schedule")
    steps = check_int(steps, "steps", 1)

    def warmed(count: Any) -> Any:
        return inner(count) * _smaller((count + 1) / steps, 1.0)

    return warmed


def as_schedule(lr: Schedule | float, argument: str = "lr") -> Schedule:
    """A schedule from a learning rate (constant) or a schedule, checked at t = 0 and 1."""
    # Unwrapped (``_picklable.unwrapped``): an optimizer calls its schedule every step, and
    # pickles as the call that made it, with ``lr`` as given.
    if not callable(lr):
        return unwrapped(constant(check_positive_float(lr, argument)))
    for count in (0, 1):
        try:
            value = float(lr(count))
        except (TypeError, ValueError) as error:
            raise ArgumentTypeError(
                argument, f"a schedule must map a step count to a number ({error})"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ArgumentError(
                argument, f"the schedule gives {value} at step {count}; it must be ≥ 0 and finite"
            )
    return unwrapped(lr)
