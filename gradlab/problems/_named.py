"""The built-in problems by name, for the command line and the benchmark harness."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from gradlab._errors import ArgumentError, ArgumentTypeError
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


def at_size(problem: AbstractProblem, n: int) -> AbstractProblem:
    """``problem`` for size n: itself when n counts data points, ``problem.sized(n)`` when the
    problem has no data and n counts its variables (Rosenbrock, LogSumExp)."""
    return problem.sized(n)
