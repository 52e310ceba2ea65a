"""The exceptions gradlab raises.

Every error gradlab raises on purpose derives from [`GradlabError`][gradlab.GradlabError], and also
from the builtin that fits (``ValueError``, ``TypeError``, ``ImportError``), so callers can catch
either. Argument errors carry the name of the offending argument in ``.argument``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "Disagreement",
    "EngineUnavailable",
    "ForwardModeUnsupported",
    "GradlabError",
    "HandGradientMissing",
    "MissingDependency",
    "NotSupported",
    "ProblemError",
    "RankFailed",
    "Regression",
    "UnknownEngine",
]


def _rebuild(
    cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]
) -> object:
    """Unpickle a gradlab error without calling its ``__init__`` (whose signature varies)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class GradlabError(Exception):
    """Base class of every error gradlab raises on purpose.

    Every gradlab error survives pickling with its type, message and attributes
    (``.argument``, ...), so it can cross a process boundary.

    Attributes:
        argument: The argument to fix, where one is to blame (``"engine"`` for an engine
            that cannot run the problem), else ``None``.
    """

    argument: str | None = None

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ArgumentError(GradlabError, ValueError):
    """An argument has a bad value.

    Args:
        argument: The name of the offending argument, as the caller wrote it (``"init"``,
            ``"data['x']"``, ``"lr"``).
        message: What is wrong with it; the argument's name is prefixed when missing.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        if not message.startswith(argument):
            message = f"{argument}: {message}"
        super().__init__(message)


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument has the wrong type."""


class UnknownEngine(ArgumentError):
    """No engine is registered under the requested name.

    Attributes:
        known: The registered engine names.
        suggestion: The closest known name, or ``None``.
    """

    def __init__(
        self,
        name: str,
        known: tuple[str, ...],
        suggestion: str | None,
        argument: str = "engine",
    ) -> None:
        self.name = name
        self.known = known
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else "."
        super().__init__(
            argument,
            f"{argument}: unknown engine {name!r}{hint} Known engines: {', '.join(known)}",
        )


class MissingDependency(GradlabError, ImportError):
    """An optional feature needs a package that is not installed.

    Attributes:
        missing: The module that is missing.
        extra: The pip extra that installs it, or ``None``.
    """

    def __init__(self, what: str, missing: str, extra: str | None) -> None:
        self.missing = missing
        self.extra = extra
        fix = f"pip install 'gradlab[{extra}]'" if extra else f"install {missing}"
        super().__init__(f"{what} needs {missing}, which is not installed: {fix}")


class EngineUnavailable(MissingDependency):
    """A known engine cannot run because the framework it needs is not installed.

    Attributes:
        engine: The engine's name.
        extra: The pip extra that installs what it needs, or ``None`` for third-party engines.
    """

    def __init__(self, engine: str, missing: str, extra: str | None) -> None:
        self.engine = engine
        super().__init__(f"engine {engine!r}", missing, extra)


class NotSupported(GradlabError, NotImplementedError):
    """An engine was asked for something it does not offer (second derivatives, say)."""


class ForwardModeUnsupported(NotSupported):
    """Forward mode met an operation its framework cannot differentiate in forward mode.

    A [`NotSupported`][gradlab.NotSupported]: a comparison skips an engine of its default
    list that raises it (with the message as the reason), and refuses one the caller named.

    Attributes:
        framework: ``"torch"`` or ``"jax"``.
        operation: What was refused, as the framework names it
            (``"_scaled_dot_product_flash_attention_for_cpu"``, ``"a jax.custom_vjp
            function"``).
        where: Where the user's code called it (``"loss at model.py:12 (`...`)"``), or
            ``None`` where the traceback does not show it.
        advice: What to do about that operation in particular (``""`` when nothing is
            known beyond the message's general advice).
    """

    #: The engine chose forward mode: the argument to change (another engine).
    argument: str | None = "engine"

    def __init__(
        self,
        message: str,
        *,
        framework: str = "",
        operation: str = "",
        where: str | None = None,
        advice: str = "",
    ) -> None:
        super().__init__(message)
        self.framework = framework
        self.operation = operation
        self.where = where
        self.advice = advice


class Disagreement(GradlabError, AssertionError):
    """Engines disagree beyond tolerance (``GradientReport.raise_if_disagree``).

    An ``AssertionError`` too, so that test runners report it as a failed check.

    Attributes:
        report: The report that disagreed.
    """

    def __init__(self, message: str, report: object) -> None:
        self.report = report
        super().__init__(message)


class Regression(GradlabError, AssertionError):
    """A result changed since its baseline (``BaselineComparison.raise_if_changed``).

    An ``AssertionError`` too, so that test runners report it as a failed check.

    Attributes:
        comparison: The [`BaselineComparison`][gradlab.BaselineComparison] that found it.
    """

    def __init__(self, message: str, comparison: object) -> None:
        self.comparison = comparison
        super().__init__(message)


class RankFailed(GradlabError, RuntimeError):
    """A data-parallel run ([`data_parallel`][gradlab.data_parallel]) lost a rank: a
    process died, or did not answer within the engine's ``timeout``. The engine stops its
    other processes and refuses further calls; make a new one."""


class EngineDefinitionError(GradlabError, TypeError):
    """An engine class lacks a member every engine must have (``name``, ``xp``,
    ``value_and_grad``, ...): raised where the class is defined, naming the class and the
    member, rather than as an ``AttributeError`` deep in the first run.

    Attributes:
        engine: The class's qualified name.
        missing: The members it lacks.
    """

    def __init__(self, engine: str, missing: tuple[str, ...], message: str) -> None:
        self.engine, self.missing = engine, missing
        super().__init__(message)


class HandGradientMissing(GradlabError, TypeError):
    """The ``numpy`` engine was asked for a problem that has no hand-derived gradient."""


class ProblemError(GradlabError, ValueError):
    """A problem's own code failed, or returned something gradlab cannot use.

    Raised when the loss (on any engine) or a hand-derived gradient or Hessian-vector
    product raises, or returns something other than what the problem protocol promises:
    the message names the problem, the function and the engine, and the original
    exception is chained (``__cause__``).

    Attributes:
        problem: The problem's name.
        function: ``"loss"``, ``"value_and_grad"`` (the hand-derived gradient) or ``"hvp"``.
        engine: The engine it ran on, or ``None``.
        argument: Always ``"problem"``: the argument to fix.
    """

    def __init__(
        self, problem: str, function: str, message: str, engine: str | None = None
    ) -> None:
        self.problem = problem
        self.function = function
        self.engine = engine
        self.argument = "problem"
        on = f" on engine {engine!r}" if engine is not None else ""
        super().__init__(f"problem {problem!r}: {function}{on} {message}")


@contextlib.contextmanager
def naming(argument: str) -> Iterator[None]:
    """Blame ``argument`` for an engine that cannot do what it is asked (not installed, no
    hand gradient, no implementation for its framework), where the code that found out
    could not know which argument chose that engine."""
    try:
        yield
    except (EngineUnavailable, HandGradientMissing, NotSupported) as error:
        if error.argument is None:
            error.argument = argument
        raise


# Tracebacks and reprs name the public path (gradlab.ArgumentError), where users import them
# from, not this private module.


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name if it has none): what a
    gradlab error quotes of an error from elsewhere."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


for _error in (
    GradlabError,
    ArgumentError,
    ArgumentTypeError,
    UnknownEngine,
    MissingDependency,
    EngineUnavailable,
    NotSupported,
    ForwardModeUnsupported,
    Disagreement,
    Regression,
    HandGradientMissing,
    ProblemError,
    RankFailed,
):
    _error.__module__ = "gradlab"
