"""The built-in problems by name, for the command line and the benchmark harness."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab.problems._base import AbstractProblem
from gradlab.problems._linear import LinearRegression, LogisticRegression
from gradlab.problems._quadratic import Quadratic

NAMED_PROBLEMS: dict[str, Callable[[], AbstractProblem]] = {
    "quadratic": Quadratic,
    "linear_regression": LinearRegression,
    "logistic_regression": LogisticRegression,
}


def problem_named(problem: object, argument: str = "problem") -> AbstractProblem:
    """A problem object as given, or a built-in one by name (with a suggestion if misspelt)."""
    if isinstance(problem, AbstractProblem):
        return problem
    if not isinstance(problem, str):
        raise ArgumentTypeError(
            argument, f"must be a problem name or a gradlab problem, got {type(problem).__name__}"
        )
    if problem not in NAMED_PROBLEMS:
        close = difflib.get_close_matches(problem, NAMED_PROBLEMS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ArgumentError(
            argument,
            f"unknown problem {problem!r}{hint} (known: {', '.join(NAMED_PROBLEMS)})",
        )
    return NAMED_PROBLEMS[problem]()
