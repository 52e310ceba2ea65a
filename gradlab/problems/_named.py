"""The built-in problems by name, for the command line and the benchmark harness."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator

from gradlab._errors import ArgumentError, ArgumentTypeError, first_line
from gradlab.problems._base import AbstractProblem
from gradlab.problems._functions import LogSumExp, Rosenbrock
from gradlab.problems._gmm import GMM
from gradlab.problems._linear import LinearRegression, LogisticRegression
from gradlab.problems._mlp import MLP
from gradlab.problems._polynomial import LeastSquares, PolynomialRegression
from gradlab.problems._quadratic import Quadratic
from gradlab.problems._softmax import SoftmaxRegression

NAMED_PROBLEMS: dict[str, Callable[[], AbstractProblem]] = {
    "quadratic": Quadratic,
    "linear_regression": LinearRegression,
    "logistic_regression": LogisticRegression,
    "polynomial_regression": PolynomialRegression,
    "softmax_regression": SoftmaxRegression,
    "mlp": MLP,
    "rosenbrock": Rosenbrock,
    "log_sum_exp": LogSumExp,
    "least_squares": LeastSquares,
    "gmm": GMM,
}


def problem_named(problem: object, argument: str = "problem") -> AbstractProblem:
    """A problem object as given, a built-in one by name (with a suggestion if misspelt), or
    a user's, ``"package.module:attribute"`` or ``"path/to/file.py:attribute"``."""
    if isinstance(problem, AbstractProblem):
        return problem
    if not isinstance(problem, str):
        raise ArgumentTypeError(
            argument, f"must be a problem name or a gradlab problem, got {type(problem).__name__}"
        )
    if ":" in problem:
        return load_problem(problem, argument)
    if problem not in NAMED_PROBLEMS:
        close = difflib.get_close_matches(problem, NAMED_PROBLEMS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ArgumentError(
            argument,
            f"unknown problem {problem!r}{hint} (known: {', '.join(NAMED_PROBLEMS)}; or "
            "your own, as module:attribute or file.py:attribute)",
        )
    return NAMED_PROBLEMS[problem]()


def at_size(problem: AbstractProblem, n: int) -> AbstractProblem:
    """``problem`` for size n: itself when n counts data points, ``problem.sized(n)`` when the
    problem has no data and n counts its variables (Rosenbrock, LogSumExp)."""
    return problem.sized(n)


def load_problem(spec: str, argument: str = "problem") -> AbstractProblem:
    """The problem ``"module:attribute"`` or ``"file.py:attribute"`` names.

    The module is imported (from the working directory too, as ``python -m`` would), or the
    file loaded by path (its folder searched for what it imports, as ``python file.py``
    would); the attribute (dotted for a nested one) is a problem instance, or
    a function or class called with no arguments that returns one.

    Raises:
        ArgumentError: the module or file cannot be imported (with the error it raised),
            the attribute does not exist, or it is not a problem (naming ``argument``).
    """
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise ArgumentError(
            argument, f"must be module:attribute or file.py:attribute, got {spec!r}"
        )
    module = _import(source, argument)
    value: object = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ArgumentError(argument, f"{source!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not isinstance(value, AbstractProblem) and callable(value):
        try:
            value = value()
        except SystemExit as error:
            raise ArgumentError(
                argument, f"{spec}() called sys.exit({error.code!r}): it must return a problem"
            ) from None
        except Exception as error:
            raise ArgumentError(
                argument, f"{spec}() raised {type(error).__name__}: {first_line(error)}"
            ) from error
    if not isinstance(value, AbstractProblem):
        raise ArgumentError(
            argument,
            f"{spec} is of type {type(value).__name__}, not a gradlab problem (a Problem, a "
            "NativeProblem, an AbstractProblem subclass instance, or a function returning one)",
        )
    return value


def _import(source: str, argument: str) -> types.ModuleType:
    """A module by dotted name (the working directory searched first), or a file by path.

    The folder searched is on ``sys.path`` while the module is imported, and taken off
    again after: loading a problem leaves the interpreter's state as it found it.
    """
    try:
        if source.endswith(".py") or os.sep in source or "/" in source:
            path = os.path.abspath(source)
            if not os.path.isfile(path):
                raise ArgumentError(argument, f"no such file: {source!r}")
            name = f"gradlab_user_{abs(hash(path))}"
            found = importlib.util.spec_from_file_location(name, path)
            if found is None or found.loader is None:
                raise ArgumentError(argument, f"cannot load {source!r} as Python")
            module = importlib.util.module_from_spec(found)
            sys.modules[name] = module  # dataclasses and pickling look modules up here
            try:
                # As `python path/to/file.py` would: the file's folder is searched for the
                # modules it imports (its helpers beside it).
                with _searched(os.path.dirname(path)):
                    found.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]  # no half-made module left behind
                raise
            return module
        with _searched(os.getcwd(), unless=""):
            return importlib.import_module(source)
    except ArgumentError:
        raise
    except SystemExit as error:
        raise ArgumentError(
            argument,
            f"{source!r} called sys.exit({error.code!r}) while it was imported: a problem's "
            "module must not exit then (put a script's own code under "
            '`if __name__ == "__main__":`)',
        ) from None
    except Exception as error:
        raise ArgumentError(
            argument, f"cannot import {source!r}: {type(error).__name__}: {first_line(error)}"
        ) from error


#: The folders problems' modules were imported from (taken off ``sys.path`` after): a
#: spawned data-parallel rank, which imports the problem's module again to unpickle it,
#: searches them.
PROBLEM_FOLDERS: list[str] = []


@contextlib.contextmanager
def _searched(folder: str, unless: str | None = None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` inside the block (unless it, or ``unless``, is
    there already), and taken off after."""
    if folder not in PROBLEM_FOLDERS:
        PROBLEM_FOLDERS.append(folder)
    if folder in sys.path or (unless is not None and unless in sys.path):
        yield
        return
    entry = folder
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        # The module may have changed sys.path itself: take off only the entry put there.
        for index, value in enumerate(sys.path):
            if value is entry:
                del sys.path[index]
                break
