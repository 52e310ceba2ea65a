"""Second derivatives: Hessian-vector products and Hessians agree across engines.

Oracles: the hand-derived Hessian-vector products (mathematics), finite differences of the
loss (no derivation), closed forms of the Hessian from the data, and two properties every
Hessian has: symmetry, and H·v linear in v.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from _helpers import (
    AUTODIFF_ENGINES,
    BUILTIN_ENGINES,
    RequiredMembersOnly,
    examples,
    fewer,
    first_installed,
    require_engine,
)
from _strategies import CASES, NO_HAND_HVP, reals
from hypothesis import given
from hypothesis import strategies as st

import gradlab
from gradlab._derivatives import MAX_HESSIAN_SIZE, hessian_matrix

Case = tuple[Any, Any, Any]


def tangent_like(
    draw: Callable[[st.SearchStrategy[Any]], Any], params: dict[str, Any]
) -> dict[str, Any]:
    return {
        name: draw(hnp.arrays(np.float64, np.shape(value), elements=reals(-2, 2)))
        for name, value in params.items()
    }


def as_float32_point(case: Case) -> Case:
    """Round data and params to float32 first, so that only the arithmetic differs."""
    problem, data, params = case
    rounded = [
        {k: np.asarray(v, np.float32).astype(np.float64) for k, v in arrays.items()}
        for arrays in (data, params)
    ]
    return problem, rounded[0], rounded[1]


def normwise(truth: dict[str, Any], other: dict[str, Any]) -> float:
    """The largest error over every element, relative to the largest element of ``truth``
    (at least 1): the measure of round-off that does not blame one cancelled element."""
    error = max(float(np.max(np.abs(truth[k] - other[k]), initial=0.0)) for k in truth)
    scale = max(float(np.max(np.abs(truth[k]), initial=0.0)) for k in truth)
    return error / max(1.0, scale)


@pytest.mark.parametrize("problem", sorted(CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hvp_agrees_with_the_hand_derivation(problem: str, dtype: str, engine: str) -> None:
    # Without a hand derivation, finite differences of the loss are the truth; for the fd
    # engine itself, autodiff is (fd against fd could not fail).
    truth_engine = "numpy"
    if problem in NO_HAND_HVP:
        if engine == "numpy":
            pytest.skip(f"{problem} has no hand-derived Hessian-vector product")
        truth_engine = "fd" if engine != "fd" else first_installed(AUTODIFF_ENGINES)
    limit = gradlab.tolerance(dtype, against_fd="fd" in (engine, truth_engine))

    @(fewer(problem, engine=engine) if dtype == "float32" else examples(problem, engine=engine))
    @given(CASES[problem], st.data())
    def check(case: Case, draw: st.DataObject) -> None:
        problem_, data, params = as_float32_point(case) if dtype == "float32" else case
        tangent = tangent_like(draw.draw, params)
        if dtype == "float32":
            tangent = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in tangent.items()}
        product = gradlab.hvp(problem_, data, params, tangent, engine=engine, dtype=dtype)
        assert all(value.dtype == np.dtype(dtype) for value in product.values())
        assert all(np.shape(product[k]) == np.shape(v) for k, v in params.items())
        # The truth: the hand derivation (or fd) in float64 at the same point.
        truth = gradlab.hvp(problem_, data, params, tangent, engine=truth_engine)
        if dtype == "float64":
            assert gradlab.max_rho(truth, product) <= limit
        else:
            # float32 round-off scales with the terms summed, not with each element: an
            # element that cancels terms of 10² to 2 keeps their absolute error (a seed
            # found 7e-4 there, rho 1.5e-4). So judge the vector as a whole.
            assert normwise(truth, product) <= limit

    check()


@pytest.mark.parametrize("problem", sorted(CASES))
def test_hand_hvp_agrees_with_finite_differences(problem: str) -> None:
    """The hand derivations themselves, against differences of the loss alone."""
    if problem in NO_HAND_HVP:
        pytest.skip(f"{problem} has no hand-derived Hessian-vector product")

    @examples(problem)
    @given(CASES[problem], st.data())
    def check(case: Case, draw: st.DataObject) -> None:
        problem_, data, params = case
        tangent = tangent_like(draw.draw, params)
        hand = gradlab.hvp(problem_, data, params, tangent, engine="numpy")
        fd = gradlab.hvp(problem_, data, params, tangent, engine="fd")
        assert gradlab.max_rho(hand, fd) <= gradlab.tolerance("float64", against_fd=True)

    check()


@pytest.mark.parametrize("problem", sorted(CASES))
def test_hessian_is_symmetric_and_hvp_is_linear(problem: str, engine: str) -> None:
    if engine == "numpy" and problem in NO_HAND_HVP:
        pytest.skip(f"{problem} has no hand-derived Hessian-vector product")
    limit = gradlab.tolerance("float64", against_fd=engine == "fd")

    @fewer(problem, fd_hessian=engine == "fd", engine=engine)
    @given(CASES[problem], st.data(), reals(-3, 3))
    def check(case: Case, draw: st.DataObject, scale: float) -> None:
        problem_, data, params = case
        blocks = gradlab.hessian(problem_, data, params, engine=engine)
        point = {k: np.asarray(v, np.float64) for k, v in params.items()}
        matrix = hessian_matrix(blocks, point)
        assert float(np.max(gradlab.rho(matrix, matrix.T))) <= limit
        # H·(a·u + v) = a·H·u + H·v, each side from the engine.
        u, v = tangent_like(draw.draw, params), tangent_like(draw.draw, params)
        combined = {k: scale * u[k] + v[k] for k in u}
        left = gradlab.hvp(problem_, data, params, combined, engine=engine)
        hu = gradlab.hvp(problem_, data, params, u, engine=engine)
        hv = gradlab.hvp(problem_, data, params, v, engine=engine)
        right = {k: scale * hu[k] + hv[k] for k in hu}
        assert gradlab.max_rho(left, right) <= max(limit, 1e-9)

    check()


def test_quadratic_hessian_is_its_closed_form(engine: str) -> None:
    """L = ½Σ(w·x² + b − y)² has H = [[Σx⁴, Σx²], [Σx², n]], whatever w, b and y."""
    problem = gradlab.Quadratic()
    data = problem.make_data(37, seed=4)
    x = data["x"]
    expected = np.array([[np.sum(x**4), np.sum(x**2)], [np.sum(x**2), x.size]])
    for point in ({"w": 0.0, "b": 0.0}, {"w": -2.5, "b": 7.0}):
        blocks = gradlab.hessian(problem, data, point, engine=engine)
        got = np.array([[blocks[a][b] for b in "wb"] for a in "wb"])
        limit = gradlab.tolerance("float64", against_fd=engine == "fd")
        assert float(np.max(gradlab.rho(got, expected))) <= limit


def test_linear_regression_hessian_is_design_gram_matrix(engine: str) -> None:
    """½·mean(x·w + b − y)² has H = JᵀJ / n with J = [x, 1]."""
    problem = gradlab.LinearRegression()
    data = problem.make_data(25, d=3, seed=2)
    jacobian = np.column_stack([data["x"], np.ones(25)])
    expected = jacobian.T @ jacobian / 25
    params = {"w": np.array([0.3, -1.0, 2.0]), "b": 0.5}
    blocks = gradlab.hessian(problem, data, params, engine=engine)
    got = hessian_matrix(blocks, {"w": np.asarray(params["w"]), "b": np.asarray(0.5)})
    assert blocks["w"]["w"].shape == (3, 3)
    assert blocks["w"]["b"].shape == (3,)
    assert blocks["b"]["b"].shape == ()
    limit = gradlab.tolerance("float64", against_fd=engine == "fd")
    assert float(np.max(gradlab.rho(got, expected))) <= limit


@pytest.mark.parametrize("engine", ["torch", "jax", "fd"])
def test_a_user_problem_without_hand_derivatives_gets_second_derivatives(engine: str) -> None:
    """exp(a·t) has d²/da² Σ exp(a·t) = Σ t²·exp(a·t): mathematics as the oracle."""
    require_engine(engine)
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(xp.exp(p["a"] * d["t"])), name="exp")
    t = np.linspace(-1, 1, 9)
    blocks = gradlab.hessian(problem, {"t": t}, {"a": 0.7}, engine=engine)
    expected = np.sum(t**2 * np.exp(0.7 * t))
    assert float(gradlab.rho(blocks["a"]["a"], expected)) <= 1e-6


def test_numpy_engine_refuses_a_problem_without_a_hand_hvp() -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p["a"] ** 2 * d["t"]), name="plain")
    with pytest.raises(gradlab.HandGradientMissing, match="Hessian-vector product"):
        gradlab.hvp(problem, {"t": [1.0]}, {"a": 1.0}, {"a": 1.0}, engine="numpy")


def test_a_user_hand_hvp_is_used_and_checked() -> None:
    def hvp(params: Any, tangent: Any, data: Any) -> dict[str, Any]:
        return {"a": 2 * np.sum(data["t"]) * tangent["a"]}

    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p["a"] ** 2 * d["t"]), name="square", hvp=hvp)
    data = {"t": np.array([1.0, 2.0])}
    assert float(gradlab.hvp(problem, data, {"a": 1.0}, {"a": 3.0}, engine="numpy")["a"]) == 18.0
    wrong = gradlab.Problem(
        lambda p, d, xp: xp.sum(p["a"] ** 2), name="wrong", hvp=lambda p, v, d: {"b": 0.0}
    )
    with pytest.raises(gradlab.ProblemError, match=r"hvp on engine 'numpy' returned values for"):
        gradlab.hvp(wrong, data, {"a": 1.0}, {"a": 1.0}, engine="numpy")
    with pytest.raises(gradlab.ArgumentTypeError, match="hvp"):
        gradlab.Problem(lambda p, d, xp: p["a"], hvp=3)  # type: ignore[arg-type]


def test_engines_without_second_derivatives_are_refused_clearly() -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(5)
    with pytest.raises(gradlab.NotSupported, match="required-members-only"):
        gradlab.hvp(
            problem, data, {"w": 1.0, "b": 0.0}, {"w": 1.0, "b": 0.0}, engine=RequiredMembersOnly()
        )


def test_bad_tangents_and_large_hessians_are_refused() -> None:
    problem = gradlab.LinearRegression()
    data = problem.make_data(10, d=2)
    params = {"w": [0.0, 0.0], "b": 0.0}
    with pytest.raises(gradlab.ArgumentError, match=r"tangent\[.w.\]: has shape \(3,\)"):
        gradlab.hvp(problem, data, params, {"w": [1.0, 2.0, 3.0], "b": 0.0}, engine="numpy")
    with pytest.raises(gradlab.ArgumentError, match=r"tangent: lacks key\(s\) \['b'\]"):
        gradlab.hvp(problem, data, params, {"w": [1.0, 2.0]}, engine="numpy")
    with pytest.raises(gradlab.ArgumentError, match="non-finite"):
        gradlab.hvp(problem, data, params, {"w": [np.nan, 2.0], "b": 0.0}, engine="numpy")
    wide = problem.make_data(3, d=MAX_HESSIAN_SIZE)
    with pytest.raises(gradlab.ArgumentError, match=r"use gradlab\.hvp"):
        gradlab.hessian(
            problem,
            wide,
            {"w": np.zeros(MAX_HESSIAN_SIZE), "b": 0.0},
            engine="numpy",
        )


@pytest.mark.parametrize("engine_name", BUILTIN_ENGINES)
def test_hvp_leaves_the_callers_arrays_alone(engine_name: str) -> None:
    require_engine(engine_name)
    problem = gradlab.LinearRegression()
    data = problem.make_data(8, d=2)
    params = {"w": np.array([1.0, -1.0]), "b": np.array(0.5)}
    tangent = {"w": np.array([0.5, 2.0]), "b": np.array(1.0)}
    copies = [{k: v.copy() for k, v in arrays.items()} for arrays in (data, params, tangent)]
    gradlab.hvp(problem, data, params, tangent, engine=engine_name)
    gradlab.hessian(problem, data, params, engine=engine_name)
    for original, copy in zip((data, params, tangent), copies, strict=True):
        for key in original:
            np.testing.assert_array_equal(original[key], copy[key])
