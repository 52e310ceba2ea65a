"""The loss contract, calling user code, and one marker for hand-written derivatives.

Below the engines and the boundary alike, so that both use it without either climbing up:

- [`checked_loss`][gradlab.engines.checked_loss] is the loss every built-in engine
  differentiates: it refuses, on every engine alike, a loss that returns anything but a 0-d
  floating-point array of the ``xp`` it was given (``None``, a Python number, a string, an
  integer array, a vector, a NumPy value where torch or jax was expected);
  ``checked_output`` does the same for a vector-valued function, leaf by leaf.
- ``calling`` turns an exception raised inside user code, wherever a framework surfaces
  it, into a [`ProblemError`][gradlab.ProblemError] naming the problem, the function and
  the engine.
- ``hand`` marks a function that runs a problem's hand-written derivation (rather than
  differentiating its loss), and ``runs_hand`` is the one place that reads the mark: what
  such a function returns is the problem author's to answer for, and it needs no
  implementation of the loss for the engine's framework.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np

from gradlab._errors import ArgumentError, GradlabError, ProblemError
from gradlab._flat import FlatView
from gradlab._tree import Keys, leaves, subscript
from gradlab.problems._base import AbstractProblem
from gradlab.problems._native import NativeProblem

Loss = Callable[[Any, Any, Any], Any]


class Named(Protocol):
    """What this module needs of an engine: its name, for messages. (Not the engine
    protocol itself, which lives above, in ``gradlab.engines``, and uses this module.)"""

    @property
    def name(self) -> str:
        """The engine's registry name."""
        ...


F = TypeVar("F", bound=Callable[..., Any])

# The mark's attribute, set by ``hand`` and read by ``runs_hand`` only: a name no one writes
# by accident, so that marking goes through ``hand``.
_HAND = "_gradlab_hand"


def hand(function: F) -> F:
    """Mark ``function`` as running a problem's hand-written derivation, and return it.

    What the function returns is then blamed on the problem's author (not on the engine),
    and the problem needs no implementation of its loss for the engine's framework.

    Args:
        function: A function an engine built, which calls a hand derivation.

    Returns:
        ``function`` itself, marked.
    """
    setattr(function, _HAND, True)
    return function


def runs_hand(function: Callable[..., Any], derivation: Callable[..., Any] | None = None) -> bool:
    """Whether an engine's ``function`` runs a problem's hand ``derivation`` rather than
    differentiating its loss.

    Args:
        function: What an engine built (``engine.value_and_grad(problem)``, ...).
        derivation: The problem's hand derivation (``problem.hand_value_and_grad``), if any.

    Returns:
        ``True`` when ``function`` is marked by ``hand`` (gradlab's ``numpy`` engine wraps
        the derivation, to name it when it raises), or is the bound method ``derivation``
        itself (a plug-in engine may return that).
    """
    return bool(getattr(function, _HAND, False)) or (
        derivation is not None and function == derivation
    )


def checked_loss(problem: AbstractProblem) -> Loss:
    """``problem.loss``, refusing any value that is not a 0-d floating-point array of ``xp``.

    Engines differentiate this rather than ``problem.loss`` itself, so a bad loss is
    refused with the same message on every engine. Under a tracing framework (jax, torch
    compiled) the check runs once, while tracing; eagerly it costs about a microsecond.
    """

    passed: list[Any] = [None, None]  # the type and dtype of the last loss that passed

    def loss(params: Any, data: Any, xp: Any) -> Any:
        value = problem.loss(params, data, xp)
        # A loop calls this every step: a value of the type and dtype that passed last time
        # needs only its shape checked (what changes with data, if anything does).
        if type(value) is not passed[0] or value.dtype != passed[1] or value.shape != ():
            _check_array(problem, "loss", value, xp, scalar=True)
            passed[:] = type(value), value.dtype
        return value

    return loss


def checked_output(problem: AbstractProblem) -> Loss:
    """``problem.loss`` as a vector-valued function (for Jacobians): any nest of floating-point
    arrays of ``xp`` (a scalar too), each leaf checked as
    [`checked_loss`][gradlab.engines.checked_loss] checks a loss, whatever its shape."""

    def output(params: Any, data: Any, xp: Any) -> Any:
        value = problem.loss(params, data, xp)
        found = leaves(value)
        if not found:
            raise ProblemError(problem.name, "function", "returned no arrays")
        for leaf in found:
            _check_array(problem, "function", leaf, xp, scalar=False)
        return value

    return output


def _check_array(
    problem: AbstractProblem, function: str, value: Any, xp: Any, scalar: bool
) -> None:
    """A value user code returned must be a floating-point array of ``xp`` (0-d if ``scalar``)."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None or isinstance(value, (str, bytes)):
        what = "a 0-d floating-point array" if scalar else "floating-point arrays"
        raise ProblemError(
            problem.name,
            function,
            f"returned {describe(value)}; it must return {what} of the xp it is given "
            "(xp.sum(...), not float(...))",
        )
    numpy_value = isinstance(value, (np.ndarray, np.generic))
    if xp is not np and numpy_value and not isinstance(value, getattr(xp, "ndarray", ())):
        raise ProblemError(
            problem.name,
            function,
            f"returned a NumPy value where it was given another array namespace: write the "
            f"{function} with xp (xp.sum, xp.exp, ...), not numpy",
        )
    if scalar and tuple(shape) != ():
        raise ProblemError(
            problem.name,
            function,
            f"must return a scalar (a 0-d array), got an array of shape {tuple(shape)}",
        )
    if not xp.isdtype(dtype, "real floating"):
        raise ProblemError(
            problem.name,
            function,
            f"returned an array of dtype {dtype}; it must be floating-point (a {function} of "
            "integers or booleans has no derivative)",
        )


def describe(value: object) -> str:
    """What a value is, in a few words, for a message about what user code returned."""
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float, complex)):
        return f"a Python {type(value).__name__} ({value!r})"
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40]}{'…' if len(text) > 40 else ''})"


class MissingName(KeyError):
    """A name a loss looked up in its parameters or data that is not there (from the probe)."""

    def __init__(self, argument: str, keys: Keys, kind: str) -> None:
        super().__init__(keys[-1])
        self.argument, self.keys, self.kind = argument, keys, kind


@contextlib.contextmanager
def calling(
    problem: AbstractProblem,
    engine: Named | None,
    params: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    params_argument: str = "params",
) -> Iterator[None]:
    """Run user code (a loss, a hand gradient) inside an engine; translate what it raises.

    A gradlab error passes through; ``MemoryError`` and ``KeyboardInterrupt`` too. A name
    the loss looked up and did not find (in the recording views of the NumPy probe, which
    know the argument) names that argument and where in it; so does a ``KeyError`` for a
    name that only one of flat ``params`` and ``data`` lacks. Anything else becomes a
    [`ProblemError`][gradlab.ProblemError] naming the problem and the engine, with the
    original exception chained.
    """
    try:
        yield
    except (GradlabError, MemoryError):
        raise
    except MissingName as error:
        what = "array" if error.kind == "data" else "parameter"
        raise ArgumentError(
            subscript(error.argument, error.keys[:-1]) if len(error.keys) > 1 else error.argument,
            f"{'has no' if error.kind == 'data' else 'is missing'} {what} {error.keys[-1]!r}, "
            f"which problem {problem.name!r}'s loss reads",
        ) from None
    except KeyError as error:
        key = error.args[0] if len(error.args) == 1 else None
        missing = _missing_from(key, params, data)
        if missing == "data":
            raise ArgumentError(
                "data", f"has no array {key!r}, which problem {problem.name!r}'s loss reads"
            ) from None
        if missing == "params":
            raise ArgumentError(
                params_argument,
                f"is missing parameter {key!r}, which problem {problem.name!r}'s loss reads",
            ) from None
        raise _failed(problem, engine, error) from error
    except Exception as error:
        raise _failed(problem, engine, error) from error
    except SystemExit as error:  # the user's code meant to end the program: say where
        raise ProblemError(
            problem.name,
            "loss",
            f"called sys.exit({error.code!r}): a problem's code must return or raise",
            None if engine is None else engine.name,
        ) from None


def _missing_from(
    key: object, params: Mapping[str, Any] | None, data: Mapping[str, Any] | None
) -> str | None:
    """Which of two flat mappings lacks ``key`` while the other has it: "params", "data" or
    None (both or neither: the loss's own lookup failed)."""
    if not isinstance(key, str) or params is None or data is None:
        return None
    if key not in params and key in data:
        return "params"
    if key not in data and key in params:
        return "data"
    return None


def _native(problem: AbstractProblem) -> AbstractProblem:
    """The user's problem behind gradlab's flat view of it."""
    return problem.problem if isinstance(problem, FlatView) else problem


def _failed(problem: AbstractProblem, engine: Named | None, error: Exception) -> Exception:
    """The [`ProblemError`][gradlab.ProblemError] for an exception raised in user code: its
    first line (the original one, under TensorFlow's wrapping), with a hint where the cause
    is a common one."""
    name = None if engine is None else engine.name
    lines = str(error).strip().splitlines() or [""]
    message = lines[0]
    if message == "in user code:":
        # tf.function re-raises an error from traced code with the traceback in its message:
        # the original message is the last line, after the exception's type.
        message = lines[-1].strip().removeprefix(f"{type(error).__name__}: ")
    hint = ""
    if name not in (None, "numpy", "fd") and ("numpy" in message or "__array__" in message):
        hint = " (is the loss written with numpy rather than the xp it is given?)"
    elif isinstance(error, KeyError) and isinstance(_native(problem), NativeProblem):
        # Implementations of one NativeProblem must read one structure: init's, or the
        # native names their Layout gives them.
        hint = (
            " (an implementation reads a name its parameters or data do not have: each reads "
            "the structure of init, or the names its Layout maps)"
        )
    return ProblemError(
        problem.name, "loss", f"raised {type(error).__name__}: {message}{hint}", name
    )
