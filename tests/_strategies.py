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
