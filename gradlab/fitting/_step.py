"""The body of gradlab's one loop: one gradient evaluation and one optimizer update."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gradlab._picklable import unwrapped
from gradlab.engines._protocol import BATCH_ORDER, Data, ValueAndGrad
from gradlab.optimizers import GradientTransformation

_ORDER = BATCH_ORDER


class Carry(NamedTuple):
    """What the loop carries from step to step: a pytree every engine's ``run`` passes
    through (jax's ``lax.scan`` and TensorFlow's ``while_loop`` take named tuples).

    Attributes:
        params: The parameters, engine arrays by path.
        state: The optimizer's state.
        position: With mini-batches, the step's index into the batch order (a Python int,
            then an engine number); ``()`` without (a pytree with no leaves).
    """

    params: dict[str, Any]
    state: Any
    position: Any = ()


@dataclass(frozen=True)
class Step:
    """The body of the loop: one gradient evaluation and one optimizer update.

    Engines run it (``GradientEngine.run``); it never asks which engine it is on. It is a
    hashable value so that engines which compile it (jax) can cache the compiled loop.

    Its outputs per step are laid out by ``outputs`` and read back by ``read``, the one
    place that knows the layout: the loss; with ``check_gradients`` a probe that is NaN when
    a gradient element is not finite; with ``grad_norms`` the gradient's squared global
    norm; then the recorded parameters. With ``batched`` the carry ends with the position
    in the mini-batch order, and the step takes its rows of the data.
    """

    value_and_grad: ValueAndGrad
    optimizer: GradientTransformation
    xp: Any
    check_gradients: bool = False
    #: Parameters to record at every step (before its update), in this order.
    record: tuple[str, ...] = ()
    grad_norms: bool = False
    batched: bool = False
    #: What compiled code of this body is keyed on beyond the body itself: the optimizer's
    #: fingerprint (``gradlab._fingerprint``), taken once when the fit was prepared, so that
    #: an optimizer whose closure changed between fits is never run from the old program.
    key: Hashable = None
    _update: Callable[..., Any] = field(init=False, repr=False, compare=False)
    #: Whether a step's outputs are its loss alone (nothing checked, normed or recorded).
    _plain: bool = field(init=False, repr=False, compare=False)

    def __call__(self, carry: Carry, data: Data) -> tuple[Carry, tuple[Any, ...]]:
        params, state, position = carry
        if self.batched:
            # The order is carried as floats (engines hold float arrays); rows are exact. The
            # indices are int32: every namespace has it (MLX's and TensorFlow's take no
            # Python ``int`` as a dtype; jax's int64 needs its 64-bit mode).
            index = (
                position if isinstance(position, int) else self.xp.astype(position, self.xp.int32)
            )
            rows = self.xp.astype(data[_ORDER][index], self.xp.int32)
            data = {name: value[rows] for name, value in data.items() if name != _ORDER}
        loss, grads = self.value_and_grad(params, data)
        updates, state = self._update(grads, state, params)
        if self.batched:
            position = position + 1
        # ``apply_updates`` without its tree walk: the carry's parameters are a flat dict of
        # arrays by path, always (a fit flattens nests), and eager engines pay for the walk
        # at every step.
        params_next = {name: value + updates[name] for name, value in params.items()}
        outputs = (loss,) if self._plain else self.outputs(loss, grads, params)
        return Carry(params_next, state, position), outputs

    def __post_init__(self) -> None:
        # Called every step: without the pickling wrapper around gradlab's optimizers.
        object.__setattr__(self, "_update", unwrapped(self.optimizer.update))
        plain = not (self.check_gradients or self.grad_norms or self.record)
        object.__setattr__(self, "_plain", plain)

    def __getstate__(self) -> dict[str, Any]:
        # The key stays behind: it names objects of this process (ids), which another
        # process (a data-parallel rank) neither needs nor could compare; a body that
        # travels is compared by what it computes. The unwrapped update is made again.
        made = ("_update", "_plain")
        state = {name: value for name, value in self.__dict__.items() if name not in made}
        return {**state, "key": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def without_record(self) -> Step:
        """This body recording nothing. An engine that would compile a second loop to record
        (jax, for a large body) steps through this one's instead, taking ``recorded(carry)``
        before each step."""
        from dataclasses import replace

        return replace(self, record=())

    def recorded(self, carry: Carry) -> tuple[Any, ...]:
        """What ``record`` adds, last, to the outputs of a step from ``carry``."""
        return tuple(carry.params[name] for name in self.record)

    def outputs(
        self, loss: Any, grads: Mapping[str, Any], params: Mapping[str, Any]
    ) -> tuple[Any, ...]:
        """One step's outputs, in the layout ``read`` takes apart."""
        out: tuple[Any, ...] = (loss,)
        if self.check_gradients:
            # 0 when every gradient element is finite, NaN otherwise (inf·0 and NaN·0 are NaN).
            out += (sum(self.xp.sum(g * 0) for g in grads.values()),)
        if self.grad_norms:
            out += (sum(self.xp.sum(g * g) for g in grads.values()),)
        return out + tuple(params[name] for name in self.record)

    def read(self, outputs: tuple[Any, ...]) -> Outputs:
        """Name the stacked outputs of ``steps`` runs of this body."""
        at = 1
        probes = norms = None
        if self.check_gradients:
            probes, at = outputs[at], at + 1
        if self.grad_norms:
            norms, at = outputs[at], at + 1
        return Outputs(outputs[0], probes, norms, dict(zip(self.record, outputs[at:], strict=True)))


@dataclass(frozen=True)
class Outputs:
    """A stretch's stacked outputs, by name (engine arrays, one row per step)."""

    losses: Any
    probes: Any
    norms: Any
    path: dict[str, Any]
