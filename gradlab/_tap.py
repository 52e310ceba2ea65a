"""``tap``: a named point inside a loss, where two implementations can be compared.

Outside [`locate`][gradlab.locate], ``tap(name, x)`` returns ``x`` itself: one context-variable
read, nothing the framework sees. While ``locate`` evaluates a loss it opens a ``Session``,
and each tap then does up to three things, in every framework alike:

- it notes the point (its name, shape and dtype), in the order the loss reaches it;
- with a *probe* for it (a zero array the engine differentiates as a parameter), it returns
  ``x + probe``: the gradient with respect to the probe is d loss / d x, the cotangent
  that the backward pass carries through that point;
- with a *reader* for it (another zero array, also a parameter), it adds ``sum(x · reader)``
  to the loss: the gradient with respect to the reader is ``x`` itself, the forward value.
  ``x``'s non-finite elements (a causal mask's ``-inf``) go through a second reader, a
  *flag*, as codes (+1 for +inf, −1 for −inf, 2 for NaN), with zeros in their place in the
  first: ``inf · 0`` would make the loss NaN.

Why through gradients: they are the one output every engine already returns, computed and
brought back by its own machinery, whether it traces (jax, TensorFlow, MLX, torch.compile)
or runs eagerly. Both additions are exact zeros, so neither the loss nor any parameter's
gradient changes by a bit (``x + 0 == x``; a term ``x · 0`` adds 0, and non-finite elements
are read apart), and the function the engine differentiates is the user's own.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gradlab._errors import ArgumentError, ArgumentTypeError

T = TypeVar("T")

_SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "gradlab_tap_session", default=None
)


def tap(name: str, value: T) -> T:
    """Mark ``value`` as the point ``name`` of this implementation, for [`locate`][gradlab.locate].

    An identity everywhere else: it returns ``value`` itself, whatever the framework (torch,
    jax, NumPy, TensorFlow, MLX), and costs one context-variable read. Give the same name
    to the same point in each implementation; a name reached twice in one evaluation (a
    layer applied twice) counts its occurrences: ``"block"``, ``"block#2"``.

    Args:
        name: The point's name, a non-empty string (``"block0.attn"``).
        value: An array of the implementation's framework, or a tuple, list or dict of them
            (each leaf is a point: ``"lstm[0]"``, ``"lstm[1]"``); ``None`` leaves pass.

    Returns:
        ``value``; while ``locate`` watches, the same values, through which it reads the
        forward value and the backward cotangent.

    Raises:
        ArgumentTypeError: ``name`` is not a string; ``value`` is not an array (when
            watched).
        ArgumentError: ``name`` is empty.

    Examples:
        >>> import numpy as np, gradlab
        >>> x = np.ones(3)
        >>> gradlab.tap("hidden", x) is x
        True
    """
    if type(name) is not str:
        raise ArgumentTypeError("name", f"must be a string, got {name!r}")
    if not name:
        raise ArgumentError("name", "must be a non-empty string")
    session = _SESSION.get()
    if session is None:
        return value
    tapped: T = session.tap(name, value)
    return tapped


def tapping() -> bool:
    """Whether a ``locate`` session watches taps now (adapters add their own taps then)."""
    return _SESSION.get() is not None


@dataclass(frozen=True)
class Point:
    """A point a loss reached: its name (with ``#k`` from the second occurrence), shape,
    dtype (the framework's name for it), whether it is floating-point (only those have
    cotangents) and whether its elements were all finite."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    floating: bool
    #: Whether every element was finite, where the value was concrete (an eager engine);
    #: ``None`` under tracing. Points known finite are read without the flags.
    finite: bool | None = None


class Session:
    """One evaluation of a loss with its taps watched.

    The probes, readers and flags are each one flat vector for all points (one parameter
    each, however many points: an engine moves and checks three arrays, not three per
    point); ``slots`` says which elements are which point's, and its shape.

    Args:
        xp: The namespace of the evaluation's arrays.
        probes: Zeros added to the points (their gradients are the cotangents).
        readers: Zeros whose inner product with the points is added to the loss (their
            gradients are the forward values, non-finite elements zeroed).
        flags: Zeros read the same way for the codes of the non-finite elements.
        slots: Each point's ``(start, stop, shape)`` in those vectors.
        finite: Points known to hold finite values only: read without the flags.
        keep: Keep each tap's value itself (an eager evaluation: NumPy).
    """

    def __init__(
        self,
        xp: Any = None,
        probes: Any = None,
        readers: Any = None,
        flags: Any = None,
        slots: Mapping[str, tuple[int, int, tuple[int, ...]]] | None = None,
        finite: frozenset[str] = frozenset(),
        keep: bool = False,
    ) -> None:
        self.xp = xp
        self.probes, self.readers, self.flags = probes, readers, flags
        self.slots = dict(slots or {})
        self.finite = finite
        self.keep = keep
        self.points: dict[str, Point] = {}
        self.values: dict[str, Any] = {}
        #: The readers' terms, added to the loss by whoever opened the session.
        self.terms: list[Any] = []
        self._count: dict[str, int] = {}

    def tap(self, name: str, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            parts = [self.tap(f"{name}[{i}]", item) for i, item in enumerate(value)]
            return type(value)(parts) if type(value) in (tuple, list) else type(value)(*parts)
        if isinstance(value, dict):
            return {key: self.tap(f"{name}[{key!r}]", item) for key, item in value.items()}
        if value is None:
            return None
        count = self._count[name] = self._count.get(name, 0) + 1
        unique = name if count == 1 else f"{name}#{count}"
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if shape is None or dtype is None:
            raise ArgumentTypeError(
                "value", f"tap {name!r}: must be an array, got {type(value).__name__}"
            )
        floating = _floating(dtype)
        slot = self.slots.get(unique)
        known = _all_finite(self.xp, value) if floating and slot is None else None
        self.points[unique] = Point(
            unique, tuple(int(size) for size in shape), str(dtype), floating, known
        )
        if self.keep:
            self.values[unique] = value
        if not floating or slot is None:
            return value
        xp = self.xp
        if self.readers is not None and unique in self.finite:
            self.terms.append(xp.sum(value * self._piece(self.readers, slot, value)))
        elif self.readers is not None:
            finite = xp.isfinite(value)
            zero = xp.zeros_like(value)
            reader = self._piece(self.readers, slot, value)
            self.terms.append(xp.sum(xp.where(finite, value, zero) * reader))
            if self.flags is not None:
                code = xp.where(xp.isnan(value), zero + 2, xp.where(value > 0, zero + 1, zero - 1))
                code = xp.where(finite, zero, code)
                self.terms.append(xp.sum(code * self._piece(self.flags, slot, value)))
        if self.probes is not None:
            value = value + self._piece(self.probes, slot, value)
        return value

    def _piece(self, vector: Any, slot: tuple[int, int, tuple[int, ...]], like: Any) -> Any:
        """A point's elements of one of the flat vectors, shaped and typed as its value."""
        start, stop, shape = slot
        return _like(self.xp, self.xp.reshape(vector[start:stop], shape), like)


@contextlib.contextmanager
def watching(session: Session) -> Iterator[Session]:
    """Taps report to ``session`` inside this block (and in nothing it does not call)."""
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def _all_finite(xp: Any, value: Any) -> bool | None:
    """Whether every element of a concrete value is finite; ``None`` for a traced one
    (its truth is not known while tracing) or a namespace that cannot say."""
    if _compiling():
        # Under torch.compile a truth value would break the graph (Dynamo logs each break):
        # unknown, as for any traced value.
        return None
    try:
        return bool(xp.all(xp.isfinite(value)))
    except Exception:  # a tracer has no truth value; whatever else fails, unknown it is
        return None


def _compiling() -> bool:
    """Whether torch.compile is tracing (without importing torch where it is not loaded)."""
    torch = sys.modules.get("torch")
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _floating(dtype: Any) -> bool:
    """Whether a dtype of any framework is a real floating-point one (bfloat16 included)."""
    text = str(dtype).lower()
    return "float" in text and "complex" not in text


def _like(xp: Any, probe: Any, value: Any) -> Any:
    """``probe`` in ``value``'s dtype: a tap of a float32 intermediate in a float64 run stays
    float32 (a probe of the run's dtype would promote it, and change the computation)."""
    if probe.dtype == value.dtype:
        return probe
    astype = getattr(xp, "astype", None)
    return astype(probe, value.dtype) if astype is not None else probe.astype(value.dtype)
