"""Factories whose results pickle, as the call that made them.

Why: a spawned worker receives its optimizer through a pipe, and ``pickle`` cannot send
the closures gradlab's optimizers and schedules are made of (optax's are closures too).
A factory decorated with ``picklable`` returns the same closures, each wrapped in a
``Remade`` that calls it unchanged and pickles as "call this factory with these
arguments". The factories are pure, so the call rebuilds an object that computes the same
bits, in any process. The arguments are pickled by value: a schedule of the user's (a
closure) among them does not pickle, and neither does an optimizer the user builds of
closures; both work everywhere else.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: A factory call: the factory's module and qualified name (where pickle finds it, whatever
#: decorators wrap it there), and its positional and keyword arguments.
_Call = tuple[str, str, tuple[Any, ...], dict[str, Any]]


class Remade:
    """``function``, which a factory ``call`` made (``field`` of the tuple it returned, or
    the whole result), and which pickles as that call.

    It compares and hashes by identity, as the function it wraps does.
    """

    __slots__ = ("_call", "_field", "_function")
    _function: Callable[..., Any]
    _call: _Call
    _field: str | None

    def __init__(self, function: Callable[..., Any], call: _Call, field: str | None) -> None:
        # A factory calling another (adam calls adamw) wraps the inner function once.
        self._function = function._function if isinstance(function, Remade) else function
        self._call = call
        self._field = field

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _remake, (*self._call, self._field)

    def __repr__(self) -> str:
        module, name, args, kwargs = self._call
        shown = [repr(value) for value in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        made = f"{module}.{name}({', '.join(shown)})"
        return made if self._field is None else f"{made}.{self._field}"


def unwrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function a ``Remade`` calls (``function`` itself if it is none): for hot loops,
    which call it every step and need not pickle it (what holds it pickles as its call)."""
    return function._function if isinstance(function, Remade) else function


def _remake(
    module: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], field: str | None
) -> Any:
    """What unpickling a ``Remade`` calls: the factory again, in this process."""
    made = getattr(importlib.import_module(module), name)(*args, **kwargs)
    return made if field is None else getattr(made, field)


def picklable(factory: Callable[_P, _T]) -> Callable[_P, _T]:
    """``factory``, whose result pickles: a function (a schedule) is wrapped in a ``Remade``,
    and so is each function of a named tuple of them (a ``GradientTransformation``).

    Under a caching decorator (the optimizers' ``_shared``), so that the object cached is
    the one that pickles. The call is recorded by the factory's name, which unpickling
    looks up, so it reaches the cache there too.
    """

    @functools.wraps(factory)
    def make(*args: _P.args, **kwargs: _P.kwargs) -> Any:
        made: Any = factory(*args, **kwargs)
        call = (factory.__module__, factory.__qualname__, args, kwargs)
        if isinstance(made, tuple):
            named: Any = type(made)
            parts = zip(named._fields, made, strict=True)
            return named._make(Remade(part, call, field) for field, part in parts)
        return Remade(made, call, None)

    return make
