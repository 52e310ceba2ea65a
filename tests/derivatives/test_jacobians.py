"""Jacobians, JVPs, VJPs, per-example gradients and the complex-step engine.

Oracles, independent of the engines under test: Jacobians derived by hand (tanh of a linear
map, in ``tests/_helpers.py``; a nested output, below), the problems' hand gradients applied
row by row (per-example), the definition J·v and vᵀ·J contracted here in NumPy from the fd
Jacobian, and for complex-step, the hand gradients of every problem it supports. Jacobians
compared across engines are tested in ``tests/comparison/test_jacobian_comparison.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _helpers import (
    DEEP_PROFILE,
    TANH,
    examples,
    installed,
    require_engine,
    tanh_case,
    tanh_layer,
    tanh_layer_jacobian,
)
from _strategies import CASES
from hypothesis import given, settings

import gradlab

#: Every engine with Jacobians (the opt-in forward-mode and complex-step ones included).
JACOBIAN_ENGINES = ("numpy", "fd", "complex-step", "torch", "torch-fwd", "jax", "jax-fwd")
#: Problems whose loss is not analytic (a max shift): complex-step refuses them.
NOT_ANALYTIC = {"gmm", "softmax_regression", "log_sum_exp"}
#: Problems with data rows (the others take none).
WITH_ROWS = sorted(set(CASES) - {"rosenbrock", "log_sum_exp"})


def few(problem: str) -> settings:
    """Fewer examples than the agreement tests draw: each one runs every engine, and jax
    compiles anew for each shape (the deep profile draws as many as ever)."""
    base = examples(problem)
    if DEEP_PROFILE:
        return base
    return settings(base, max_examples=min(2, base.max_examples))


@pytest.mark.parametrize("engine", JACOBIAN_ENGINES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("m", "d"), [(7, 3), (2, 9)])
def test_every_engine_gives_the_hand_derived_jacobian(
    engine: str, dtype: str, m: int, d: int
) -> None:
    require_engine(engine)
    data, params = tanh_case(m, d)
    got = gradlab.jacobian(TANH, data, params, engine=engine, dtype=dtype)
    want = tanh_layer_jacobian(params, data)
    limit = gradlab.tolerance(dtype, against_fd=engine == "fd")
    assert got["x"].shape == (m, d)
    assert got["c"].shape == (m,)
    assert got["x"].dtype == np.dtype(dtype)
    assert gradlab.max_rho(got, want) <= limit


@pytest.mark.parametrize("engine", JACOBIAN_ENGINES)
def test_jvp_and_vjp_are_the_jacobian_contracted(engine: str) -> None:
    require_engine(engine)
    data, params = tanh_case(6, 4, seed=3)
    rng = np.random.default_rng(4)
    tangent = {"x": rng.normal(size=4), "c": np.array(-0.7)}
    cotangent = rng.normal(size=6)
    J = tanh_layer_jacobian(params, data)  # the oracle, contracted here
    value, product = gradlab.jvp(TANH, data, params, tangent, engine=engine)
    np.testing.assert_allclose(value, tanh_layer(params, data, np), rtol=1e-12)
    np.testing.assert_allclose(product, J["x"] @ tangent["x"] + J["c"] * tangent["c"], atol=1e-8)
    value, pulled = gradlab.vjp(TANH, data, params, cotangent, engine=engine)
    np.testing.assert_allclose(pulled["x"], cotangent @ J["x"], atol=1e-8)
    np.testing.assert_allclose(pulled["c"], cotangent @ J["c"], atol=1e-8)


def nested_function(params: Any, data: Any, xp: Any) -> Any:
    """Nested parameters in, a nested output out: ({"s": Σw², "v": [w·a, b·w]})."""
    w, b = params["layer"][0], params["layer"][1]["b"]
    return {"s": xp.sum(w**2), "v": [w * data["a"], b * w]}


def test_nested_parameters_and_outputs_keep_their_structure() -> None:
    params = {"layer": [np.array([1.0, 2.0]), {"b": np.array(3.0)}]}
    data = {"a": np.array([0.5, -1.0])}
    for engine in installed(("fd", "complex-step", "torch", "jax", "jax-fwd", "torch-fwd")):
        J = gradlab.jacobian(nested_function, data, params, engine=engine)
        np.testing.assert_allclose(J["s"]["layer"][0], [2.0, 4.0], atol=1e-8)
        np.testing.assert_allclose(J["s"]["layer"][1]["b"], 0.0, atol=1e-8)
        np.testing.assert_allclose(J["v"][0]["layer"][0], np.diag([0.5, -1.0]), atol=1e-8)
        np.testing.assert_allclose(J["v"][1]["layer"][0], 3.0 * np.eye(2), atol=1e-8)
        np.testing.assert_allclose(J["v"][1]["layer"][1]["b"], [1.0, 2.0], atol=1e-8)
        value, pulled = gradlab.vjp(
            nested_function,
            data,
            params,
            {"s": 1.0, "v": [np.ones(2), np.zeros(2)]},
            engine=engine,
        )
        # ∂(Σw² + Σ w·a)/∂w = 2w + a
        np.testing.assert_allclose(pulled["layer"][0], [2.5, 3.0], atol=1e-8)
        assert value["v"][1].tolist() == [3.0, 6.0]


@pytest.mark.parametrize("problem", sorted(CASES))
def test_jacobians_of_shipped_losses_agree_across_engines(problem: str) -> None:
    # A scalar loss's Jacobian is its gradient: numpy runs the hand gradient, the others
    # their Jacobian machinery (jacrev, jacfwd, columns of differences or complex steps).
    engines = installed(JACOBIAN_ENGINES)
    if problem in NOT_ANALYTIC:
        engines.remove("complex-step")

    @few(problem)
    @given(case=CASES[problem])
    def check(case: Any) -> None:
        model, data, params = case
        for dtype in ("float64", "float32"):
            report = gradlab.compare_jacobians(model, data, params, engines=engines, dtype=dtype)
            assert report.ok, report

    check()


@pytest.mark.parametrize("problem", WITH_ROWS)
def test_per_example_gradients_are_each_rows_hand_gradient(problem: str) -> None:
    engines = installed(("numpy", "torch", "torch-fwd", "jax", "jax-fwd"))

    @few(problem)
    @given(case=CASES[problem])
    def check(case: Any) -> None:
        model, data, params = case
        checked = {name: np.asarray(value, np.float64) for name, value in data.items()}
        rows = len(next(iter(checked.values())))
        # The oracle: the hand gradient on each row alone, stacked here.
        by_hand = [
            model.hand_value_and_grad(
                {k: np.asarray(v, np.float64) for k, v in params.items()},
                {name: value[i : i + 1] for name, value in checked.items()},
            )[1]
            for i in range(rows)
        ]
        want = {name: np.stack([g[name] for g in by_hand]) for name in params}
        for engine in engines:
            got = gradlab.per_example_grads(model, data, params, engine=engine)
            assert gradlab.max_rho(got, want) <= 1e-9, engine
        report = gradlab.compare_per_example_grads(
            model, data, params, engines=engines, dtype="float32"
        )
        assert report.ok, report

    check()


def test_per_example_gradients_need_rows() -> None:
    problem = gradlab.Quadratic()
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.per_example_grads(
            problem, {"x": np.ones(3), "y": np.ones(4)}, {"w": 1.0, "b": 0.0}, engine="numpy"
        )
    assert str(caught.value.argument).startswith("data")
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.per_example_grads(gradlab.Rosenbrock(2), {}, {"x": [1.0, 2.0]}, engine="numpy")
    assert caught.value.argument == "data"


@pytest.mark.parametrize(
    "loss",
    [
        lambda p, d, xp: xp.sum(xp.abs(p["x"])),
        lambda p, d, xp: xp.max(p["x"]),
        lambda p, d, xp: xp.sum(xp.maximum(p["x"], 0.0)),
        lambda p, d, xp: xp.sum(p["x"] * (p["x"] > 0)),
        lambda p, d, xp: xp.sum(abs(p["x"])),
        lambda p, d, xp: xp.sum(xp.sign(p["x"]) * p["x"]),
        lambda p, d, xp: xp.sum(p["x"].real),
        lambda p, d, xp: xp.sum(xp.clip(p["x"], -1, 1)),
    ],
)
def test_complex_step_refuses_what_is_not_analytic(loss: Any) -> None:
    problem = gradlab.Problem(loss, name="kinked")
    with pytest.raises(gradlab.NotSupported, match="not analytic"):
        gradlab.value_and_grad(problem, {}, {"x": [1.0, -2.0]}, engine="complex-step")


@pytest.mark.parametrize(
    ("given", "argument"), [("engines", "engines"), ("reference", "reference")]
)
def test_a_comparison_blames_the_argument_that_chose_complex_step(
    given: str, argument: str
) -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.max(p["x"] ** 2), name="kinked")
    engines, reference = ("fd,complex-step", None) if given == "engines" else ("fd", "complex-step")
    with pytest.raises(gradlab.NotSupported, match="not analytic") as raised:
        gradlab.compare_gradients(
            problem, {}, {"x": [1.0, -2.0]}, engines=engines, reference=reference
        )
    assert raised.value.argument == argument


@pytest.mark.parametrize(
    "optimizer",
    [gradlab.sgd(0.01), gradlab.chain(gradlab.clip_by_global_norm(1.0), gradlab.adam(0.05))],
    ids=["sgd", "clip-adam"],
)
@pytest.mark.parametrize("batch_size", [None, 4])
def test_complex_step_fits_as_the_hand_gradient_does(optimizer: Any, batch_size: Any) -> None:
    """gradlab's loop (its buffers, batches and optimizer) runs on NumPy arrays: only the
    loss sees the analytic namespace, so complex-step fits like any engine."""
    problem = gradlab.Quadratic()
    data, init = problem.make_data(12), {"w": 1.0, "b": 0.0}
    runs = {
        engine: gradlab.fit(
            problem,
            data,
            engine=engine,
            optimizer=optimizer,
            steps=6,
            init=init,
            batch_size=batch_size,
            trajectory=True,
        )
        for engine in ("numpy", "complex-step")
    }
    assert runs["complex-step"].status == "completed"
    assert gradlab.max_rho(runs["numpy"].trajectory, runs["complex-step"].trajectory) < 1e-12
    comparison = gradlab.compare_fits(
        problem, data, engines="numpy,complex-step", optimizer=optimizer, steps=6, init=init
    )
    assert comparison.ok


def test_complex_step_is_exact_where_fd_is_not() -> None:
    # exp(x)·sin(3x) at x = 1.3, with a derivative known in closed form: complex-step is
    # exact to round-off; fd, with its best step, is not.
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(xp.exp(p["x"]) * xp.sin(3 * p["x"])))
    x = 1.3
    exact = np.exp(x) * (np.sin(3 * x) + 3 * np.cos(3 * x))
    _, cs = gradlab.value_and_grad(problem, {}, {"x": [x]}, engine="complex-step")
    _, fd = gradlab.value_and_grad(problem, {}, {"x": [x]}, engine="fd")
    assert abs(cs["x"][0] - exact) <= 4 * np.finfo(float).eps * abs(exact)
    assert abs(fd["x"][0] - exact) > abs(cs["x"][0] - exact)


@pytest.mark.parametrize("problem", sorted(set(CASES) - NOT_ANALYTIC))
def test_complex_step_meets_the_exact_tolerance_against_hand_gradients(problem: str) -> None:
    @few(problem)
    @given(case=CASES[problem])
    def check(case: Any) -> None:
        model, data, params = case
        report = gradlab.compare_gradients(model, data, params, engines="numpy,complex-step")
        assert report.verdicts["complex-step"].tolerance == gradlab.tolerance("float64")
        assert report.ok, report

    check()


def test_engines_without_jacobians_are_skipped_with_a_note() -> None:
    class GradientOnly(gradlab.engines.NumpyEngine):
        name = "gradient-only"

        def jacobian(self, problem: Any) -> Any:
            raise gradlab.NotSupported("no Jacobians here")

    data, params = tanh_case(3, 2)
    with pytest.raises(gradlab.NotSupported):
        gradlab.compare_jacobians(TANH, data, params, engines=["fd", GradientOnly()])
    with pytest.raises(gradlab.NotSupported) as caught:
        gradlab.jacobian(TANH, data, params, engine=GradientOnly())
    assert caught.value.argument == "engine"


def test_a_cotangent_of_the_wrong_shape_is_refused_by_name() -> None:
    data, params = tanh_case(3, 2)
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.vjp(TANH, data, params, np.ones(4), engine="fd")
    assert caught.value.argument == "cotangent"
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.jvp(TANH, data, params, {"x": np.ones(3), "c": 0.0}, engine="fd")
    assert str(caught.value.argument).startswith("tangent")
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.jacobian(42, data, params, engine="fd")
    assert caught.value.argument == "function"
