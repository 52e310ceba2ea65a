"""Hypothesis strategies: random problems, data and parameters, shared by the property tests."""

from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import strategies as st

import gradlab

SIZES = st.sampled_from([1, 2, 5, 17, 64, 200])
FEATURES = st.sampled_from([1, 2, 3, 5])


def reals(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def quadratic_cases(
    draw: st.DrawFn,
) -> tuple[gradlab.AbstractProblem, dict[str, Any], dict[str, Any]]:
    n = draw(SIZES)
    data = {
        "x": draw(hnp.arrays(np.float64, n, elements=reals(-2, 2))),
        "y": draw(hnp.arrays(np.float64, n, elements=reals(-5, 5))),
    }
    params = {"w": draw(reals(-3, 3)), "b": draw(reals(-3, 3))}
    return gradlab.Quadratic(), data, params


@st.composite
def linear_cases(
    draw: st.DrawFn, problem: gradlab.AbstractProblem
) -> tuple[gradlab.AbstractProblem, dict[str, Any], dict[str, Any]]:
    n, d = draw(SIZES), draw(FEATURES)
    if isinstance(problem, gradlab.LogisticRegression):
        labels = hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 1.0]) | reals(0, 1))
    else:
        labels = hnp.arrays(np.float64, n, elements=reals(-5, 5))
    data = {"x": draw(hnp.arrays(np.float64, (n, d), elements=reals(-2, 2))), "y": draw(labels)}
    params = {
        "w": draw(hnp.arrays(np.float64, d, elements=reals(-3, 3))),
        "b": draw(reals(-3, 3)),
    }
    return problem, data, params


CASES = {
    "quadratic": quadratic_cases(),
    "linear_regression": linear_cases(gradlab.LinearRegression()),
    "logistic_regression": linear_cases(gradlab.LogisticRegression()),
}


def vectors(shape: Any, low: float, high: float) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, shape, elements=reals(low, high))


@st.composite
def polynomial_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    degree, n = draw(st.integers(0, 4)), draw(SIZES)
    data = {"x": draw(vectors(n, -1.5, 1.5)), "y": draw(vectors(n, -5, 5))}
    return gradlab.PolynomialRegression(degree), data, {"c": draw(vectors(degree + 1, -3, 3))}


@st.composite
def least_squares_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    problem = gradlab.LeastSquares(draw(st.integers(1, 6)))
    data = problem.make_data(draw(SIZES))
    return problem, data, {"x": draw(vectors(problem.terms, -3, 3))}


@st.composite
def softmax_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    classes, n, d = draw(st.integers(2, 4)), draw(SIZES), draw(FEATURES)
    # Label rows: one-hot, or any distribution (soft labels), normalised.
    weights = draw(vectors((n, classes), 0, 1)) + draw(st.sampled_from([0.0, 1e-3]))
    rows = weights.sum(axis=1, keepdims=True)
    labels = np.where(rows > 0, weights / np.where(rows > 0, rows, 1), 1.0 / classes)
    data = {"x": draw(vectors((n, d), -2, 2)), "y": labels}
    params = {"W": draw(vectors((d, classes), -3, 3)), "b": draw(vectors(classes, -3, 3))}
    return gradlab.SoftmaxRegression(classes), data, params


@st.composite
def mlp_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    hidden = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    problem = gradlab.MLP(hidden, draw(st.sampled_from(["tanh", "sigmoid"])))
    n, d = draw(SIZES), draw(FEATURES)
    data = {"x": draw(vectors((n, d), -2, 2)), "y": draw(vectors(n, -2, 2))}
    shapes = problem.param_shapes(problem.check_data(data))
    return problem, data, {name: draw(vectors(shape, -1.5, 1.5)) for name, shape in shapes.items()}


@st.composite
def rosenbrock_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    dim = draw(st.integers(2, 8))
    return gradlab.Rosenbrock(dim), {}, {"x": draw(vectors(dim, -2, 2))}


@st.composite
def log_sum_exp_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    size = draw(st.integers(1, 50))
    return gradlab.LogSumExp(size), {}, {"x": draw(vectors(size, -30, 30))}


@st.composite
def gmm_cases(draw: st.DrawFn) -> tuple[gradlab.AbstractProblem, Any, Any]:
    k, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    problem = gradlab.GMM(k, d, gamma=draw(reals(0.5, 2)), m=draw(st.integers(0, 2)))
    n = draw(st.sampled_from([1, 2, 5, 17, 40]))
    data = {"x": draw(vectors((n, d), -3, 3))}
    shapes = problem.param_shapes(data)
    return problem, data, {name: draw(vectors(shape, -1, 1)) for name, shape in shapes.items()}


CASES.update(
    {
        "gmm": gmm_cases(),
        "polynomial_regression": polynomial_cases(),
        "least_squares": least_squares_cases(),
        "softmax_regression": softmax_cases(),
        "mlp": mlp_cases(),
        "rosenbrock": rosenbrock_cases(),
        "log_sum_exp": log_sum_exp_cases(),
    }
)

#: Problems whose Hessian-vector product is not derived by hand (backprop of backprop).
NO_HAND_HVP = {"mlp", "gmm"}
