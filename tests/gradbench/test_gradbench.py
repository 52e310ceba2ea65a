"""gradlab as a GradBench tool, and GradBench's evals as gradlab problems.

Oracles, independent of the code under test: GMM's log posterior written out from the
Gaussian and Wishart densities; NumPy's LU determinant; the ODE's exact solution where
RK4 is exact; ADBench's LSTM transcribed element by element from its C++; k-means' Newton
direction worked out by hand (each centroid minus the mean of its points); the problems'
hand derivatives, the complex step and finite differences for the gradients every engine
sends over the pipe.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import BUILTIN_ENGINES, DEEP, DEEP_PROFILE, require_engine
from hypothesis import given, settings
from hypothesis import strategies as st

import gradlab
from gradlab import LSTM, ODE, Det, GradBenchGMM, KMeans, gradbench
from gradlab.gradbench import _nested, _server, serve
from gradlab.gradbench._evals import EVALS, GRADIENT, JACOBIAN, NESTED, NEWTON, VALUE, VECTOR


def few() -> settings:
    """Each example runs several engines (jax compiles per shape): a few, unless deep."""
    if DEEP_PROFILE:
        return settings()
    return settings(max_examples=2)


# -- the problems against independent oracles ------------------------------------------------


def lower_factor(q: np.ndarray, l: np.ndarray) -> np.ndarray:  # noqa: E741
    """Q = diag(exp q) + L, L's strictly lower entries column by column."""
    d = q.shape[0]
    factor = np.diag(np.exp(q))
    entries = iter(l)
    for column in range(d):
        for row in range(column + 1, d):
            factor[row, column] = next(entries)
    return factor


def naive_log_posterior(
    params: dict[str, np.ndarray], x: np.ndarray, gamma: float, m: int
) -> float:
    """log Πᵢ Σₖ φₖ·N(xᵢ; μₖ, Λₖ⁻¹) + Σₖ log Wishart(Λₖ; I/γ², d + m + 1), Λₖ = QₖᵀQₖ."""
    k, d = params["mu"].shape
    phi = np.exp(params["alpha"]) / np.sum(np.exp(params["alpha"]))
    precisions = [
        lower_factor(params["q"][j], params["l"][j]).T
        @ lower_factor(params["q"][j], params["l"][j])
        for j in range(k)
    ]
    likelihood = 0.0
    for point in x:
        density = 0.0
        for j in range(k):
            gap = point - params["mu"][j]
            density += phi[j] * math.exp(
                -0.5 * d * math.log(2 * math.pi)
                + 0.5 * math.log(np.linalg.det(precisions[j]))
                - 0.5 * gap @ precisions[j] @ gap
            )
        likelihood += math.log(density)
    n_w = d + m + 1
    log_multigamma = d * (d - 1) / 4 * math.log(math.pi) + sum(
        math.lgamma(n_w / 2 + (1 - j) / 2) for j in range(1, d + 1)
    )
    prior = 0.0
    for precision in precisions:
        prior += (
            (n_w - d - 1) / 2 * math.log(np.linalg.det(precision))
            - gamma**2 * np.trace(precision) / 2
            - n_w * d / 2 * math.log(2)
            + n_w * d * math.log(gamma)  # −(n_w/2)·log det(I/γ²)
            - log_multigamma
        )
    return likelihood + prior


@given(
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(0, 2), st.floats(0.5, 2.0)
)
@few()
def test_gradbench_gmm_is_the_log_posterior(k: int, d: int, n: int, m: int, gamma: float) -> None:
    problem = GradBenchGMM(k=k, d=d, gamma=gamma, m=m)
    data = problem.make_data(n, seed=n)
    rng = np.random.default_rng(k * 10 + d)
    params = {
        name: 0.5 * rng.standard_normal(shape) for name, shape in problem.param_shapes(data).items()
    }
    expected = naive_log_posterior(params, data["x"], gamma, m)
    assert float(problem.loss(params, data, np)) == pytest.approx(expected, rel=1e-10, abs=1e-10)


@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**16))
@few()
def test_kmeans_is_the_nearest_squared_distance_and_manuals_newton_step(
    k: int, d: int, n: int, seed: int
) -> None:
    # The oracle is the definition, by brute force over every point-centroid difference,
    # and GradBench's C++ manual's direction: −(mean of a cluster's points − its centroid).
    rng = np.random.default_rng(seed)
    points, centroids = rng.standard_normal((n, d)), rng.standard_normal((k, d))
    problem, data, params = KMeans(k=k, d=d), {"points": points}, {"centroids": centroids}
    squared = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    assert float(problem.loss(params, data, np)) == pytest.approx(squared.min(axis=1).sum())
    nearest = squared.argmin(axis=1)
    value, grads = problem.hand_value_and_grad(params, data)
    assert float(value) == pytest.approx(squared.min(axis=1).sum())
    diagonal = problem.hand_hvp(params, {"centroids": np.ones((k, d))}, data)["centroids"]
    for j in range(k):
        members = points[nearest == j]
        if len(members) == 0:
            assert np.all(grads["centroids"][j] == 0)
            assert np.all(diagonal[j] == 0)
            continue
        newton = grads["centroids"][j] / diagonal[j]
        np.testing.assert_allclose(newton, -(members.mean(axis=0) - centroids[j]), atol=1e-12)


def test_kmeans_hand_derivatives_keep_float32() -> None:
    # bincount sums in float64: the hand gradient casts back, as every engine keeps the dtype.
    rng = np.random.default_rng(2)
    problem = KMeans(k=3, d=2)
    params = {"centroids": rng.standard_normal((3, 2)).astype(np.float32)}
    data = {"points": rng.standard_normal((20, 2)).astype(np.float32)}
    value, grads = problem.hand_value_and_grad(params, data)
    assert value.dtype == np.float32
    assert grads["centroids"].dtype == np.float32
    assert problem.hand_hvp(params, params, data)["centroids"].dtype == np.float32


@pytest.mark.parametrize("engine", ["torch", "jax", "mlx", "tensorflow"])
def test_kmeans_newton_direction_on_every_engine_that_has_second_derivatives(engine: str) -> None:
    # The nearest centroid is a gather by a computed index: MLX refused its second
    # derivative ("Cannot calculate VJP with respect to indices") until its namespace cut the
    # index from differentiation and its HVP fell back to reverse-over-reverse; TensorFlow's
    # forward accumulator returned the product as IndexedSlices.
    require_engine(engine)
    rng = np.random.default_rng(5)
    problem = KMeans(k=4, d=3)
    data, params = (
        {"points": rng.standard_normal((40, 3))},
        {"centroids": rng.standard_normal((4, 3))},
    )
    ones = {"centroids": np.ones((4, 3))}
    expected = problem.hand_hvp(params, ones, data)["centroids"]
    found = gradlab.hvp(problem, data, params, ones, engine=engine)["centroids"]
    np.testing.assert_allclose(np.asarray(found), expected, atol=1e-12)


def test_adbench_and_gradbench_gmm_differ_by_the_prior_sign_only() -> None:
    adbench, gradbench = gradlab.GMM(k=2, d=3, m=1), GradBenchGMM(k=2, d=3, m=1)
    data = adbench.make_data(7)
    rng = np.random.default_rng(3)
    icf = rng.standard_normal((2, 6))
    a = {"alphas": rng.standard_normal(2), "means": rng.standard_normal((2, 3)), "icf": icf}
    b = {"alpha": a["alphas"], "mu": a["means"], "q": icf[:, :3], "l": icf[:, 3:]}
    # Both at zero data points leave only the prior terms: they are each other's negative.
    empty = {"x": data["x"][:0]}
    assert float(adbench.loss(a, empty, np)) == pytest.approx(-float(gradbench.loss(b, empty, np)))
    # With data, the likelihood terms are equal.
    likelihood_a = float(adbench.loss(a, data, np)) - float(adbench.loss(a, empty, np))
    likelihood_b = float(gradbench.loss(b, data, np)) - float(gradbench.loss(b, empty, np))
    assert likelihood_a == pytest.approx(likelihood_b, rel=1e-12)


@given(st.integers(1, 7), st.integers(0, 2**16))
@settings(max_examples=20)
def test_det_is_the_determinant_and_its_gradient_the_cofactors(ell: int, seed: int) -> None:
    matrix = np.random.default_rng(seed).uniform(-1, 1, (ell, ell))
    problem = Det(ell=ell)
    value = float(problem.loss({"A": matrix}, {}, np))
    assert value == pytest.approx(np.linalg.det(matrix), rel=1e-10, abs=1e-12)
    _, grads = problem.hand_value_and_grad({"A": matrix}, {})
    adjugate_t = np.linalg.det(matrix) * np.linalg.inv(matrix).T  # ∂det/∂A = det·A⁻ᵀ
    np.testing.assert_allclose(grads["A"], adjugate_t, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_ode_is_exact_where_rk4_is(steps: int) -> None:
    # x = 1: y_i(t) = t^(i+1)/(i+1)!, polynomials of degree ≤ 4, which RK4 integrates exactly.
    solution = ODE(size=4, steps=steps, last=False).loss({"x": np.ones(4)}, {}, np)
    np.testing.assert_allclose(solution, [2, 2, 4 / 3, 2 / 3], rtol=1e-13)
    assert float(ODE(size=4, steps=steps).loss({"x": np.ones(4)}, {}, np)) == pytest.approx(2 / 3)


@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**16))
@settings(max_examples=25)
def test_ode_hand_gradient_matches_the_complex_step(size: int, steps: int, seed: int) -> None:
    problem = ODE(size=size, steps=steps)
    params = {"x": np.random.default_rng(seed).uniform(size=size)}
    _, hand = problem.hand_value_and_grad(params, {})
    _, reference = gradlab.value_and_grad(problem, {}, params, engine="complex-step")
    np.testing.assert_allclose(hand["x"], reference["x"], rtol=1e-11, atol=1e-14)


def lstm_transcribed(
    main: np.ndarray, extra: np.ndarray, state: np.ndarray, seq: np.ndarray
) -> float:
    """ADBench's C++ objective, element by element (main_params and state flat by rows)."""
    layers, b = main.shape[0] // 2, extra.shape[1]
    main, state = main.ravel(), state.ravel().copy()

    def sigmoid(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    total, count = 0.0, 0
    for t in range(seq.shape[0] - 1):
        out = [seq[t][i] * extra[0][i] for i in range(b)]
        for layer in range(layers):
            w, bias = 8 * b * layer, 8 * b * layer + 4 * b
            hidden, cell = 2 * b * layer, 2 * b * layer + b
            for i in range(b):
                forget = sigmoid(out[i] * main[w + i] + main[bias + i])
                ingate = sigmoid(state[hidden + i] * main[w + b + i] + main[bias + b + i])
                outgate = sigmoid(out[i] * main[w + 2 * b + i] + main[bias + 2 * b + i])
                change = math.tanh(state[hidden + i] * main[w + 3 * b + i] + main[bias + 3 * b + i])
                state[cell + i] = state[cell + i] * forget + ingate * change
                state[hidden + i] = outgate * math.tanh(state[cell + i])
            out = [state[hidden + i] for i in range(b)]
        predicted = [out[i] * extra[1][i] + extra[2][i] for i in range(b)]
        normaliser = math.log(sum(math.exp(value) for value in predicted) + 2)
        total += sum(seq[t + 1][i] * (predicted[i] - normaliser) for i in range(b))
        count += b
    return -total / count


@given(st.integers(1, 3), st.integers(2, 6), st.integers(1, 4), st.integers(0, 2**16))
@settings(max_examples=15)
def test_lstm_is_adbenchs(layers: int, length: int, width: int, seed: int) -> None:
    problem = LSTM(layers=layers, length=length, width=width)
    data = problem.make_data(seed=seed)
    params = problem.initial_params(data, seed=seed)
    expected = lstm_transcribed(
        params["main_params"], params["extra_params"], data["state"], data["sequence"]
    )
    assert float(problem.loss(params, data, np)) == pytest.approx(expected, rel=1e-12)


GRADBENCH_PROBLEMS: dict[str, Any] = {
    "gradbench_gmm": lambda size: GradBenchGMM(k=1 + size % 3, d=1 + size % 4),
    "kmeans": lambda size: KMeans(k=1 + size % 3, d=1 + size % 3),
    "det": lambda size: Det(ell=1 + size % 5),
    "ode": lambda size: ODE(size=size, steps=1 + size % 3),
    "lstm": lambda size: LSTM(layers=1 + size % 2, length=2 + size % 3, width=1 + size % 3),
}


@pytest.mark.parametrize("name", sorted(GRADBENCH_PROBLEMS))
@given(size=st.integers(1, 9), seed=st.integers(0, 2**16))
@few()
def test_engines_agree_on_the_eval_problems(name: str, size: int, seed: int) -> None:
    problem = GRADBENCH_PROBLEMS[name](size)
    data = (
        problem.make_data(max(size, 3) * 4, seed=seed)
        if name in ("gradbench_gmm", "kmeans")
        else problem.make_data(seed=seed)
    )
    try:
        params = problem.initial_params(data, seed=seed)
    except gradlab.NotSupported:
        rng = np.random.default_rng(seed)
        params = {
            key: 0.5 * rng.standard_normal(shape)
            for key, shape in problem.param_shapes(data).items()
        }
    engines = [e for e in BUILTIN_ENGINES if e in gradlab.available_engines()]
    if not problem.has_hand_gradient:
        engines.remove("numpy")
    report = gradlab.compare_gradients(problem, data, params, engines=engines)
    assert report.ok, str(report)


# -- the tool, over a pipe, as GradBench runs it ----------------------------------------------

#: Small sizes for each eval (GradBench's own are the benchmark's).
SMALL: dict[str, list[dict[str, Any]]] = {
    "hello": [{"x": 1.5}],
    "lse": [{"n": 50}],
    "llsq": [{"n": 16, "m": 6}],
    "gmm": [{"d": 3, "k": 2, "n": 20}, {"d": 1, "k": 3, "n": 5}],
    "kmeans": [{"k": 3, "n": 30, "d": 2}],
    "det": [{"ell": 4}],
    "ode": [{"n": 6, "s": 2}],
    "lstm": [{"l": 2, "c": 4, "b": 3}],
    "ba": [{"n": 3, "m": 5, "p": 7}],
    "ht": [{"v": 12, "c": 5, "b": 22, "t": 24}, {"v": 10, "c": 4, "complicated": False}],
    # A nested eval from where GradBench's descent stops at once: the protocol's path,
    # cheaply (the descent is tested below, and in full under GRADLAB_DEEP=1).
    # particle's path is the same; each of its runs costs seconds even there.
    "particle": [],
    "saddle": [{"start": 1e-6}],
}
#: The engines whose framework nests derivatives (particle, saddle).
NESTING = ("torch", "jax")
VARIANTS = ("rr", "ff", "fr", "rf")
# torch's general operators (ops.reverse, ops.forward: the procedures use cheaper pairs,
# tests/gradbench/test_nested.py covers them and the full runs).
NESTED_CASES = (
    [("torch", variant) for variant in VARIANTS] if DEEP else [("torch", "rr"), ("torch", "fr")]
)


def exchange(engine: str, over_a_pipe: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages an eval would send for every implemented eval, and the tool's replies:
    from ``python -m gradlab.gradbench`` over a pipe, or from ``serve`` in this process."""
    messages: list[dict[str, Any]] = [{"id": 0, "kind": "start", "eval": "gradlab"}]
    for name, spec in EVALS.items():
        messages.append({"id": len(messages), "kind": "define", "module": name})
        for sizes in SMALL[name]:
            input = spec.example(7, **sizes)
            if spec.timed:
                input |= {"min_runs": 2, "min_seconds": 0}
            # A nested eval's rr only: jax compiles each variant (seconds), and every
            # variant's run is tested in tests/gradbench/test_nested.py.
            functions = ["rr"] if name in ("particle", "saddle") else list(spec.functions)
            for function in functions:
                messages.append(
                    {"id": len(messages), "kind": "evaluate", "module": name,
                     "function": function, "input": input}
                )  # fmt: skip
                messages.append(
                    {
                        "id": len(messages),
                        "kind": "analysis",
                        "of": len(messages) - 1,
                        "valid": True,
                    }
                )
    text = "".join(json.dumps(message) + "\n" for message in messages)
    text += json.dumps({"id": len(messages), "kind": "end"}) + "\n"
    if not over_a_pipe:  # the same lines through serve(), in this process (no start-up)
        out = io.StringIO()
        assert serve(engine, io.StringIO(text), out) == 0
        return messages, [json.loads(line) for line in out.getvalue().splitlines()]
    done = subprocess.run(
        [sys.executable, "-m", "gradlab.gradbench", "--engine", engine],
        input=text,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return messages, [json.loads(line) for line in done.stdout.splitlines()]


def reference(name: str, function: str, input: Any) -> Any:
    """What the output should be, from NumPy code independent of the engines: the problem's
    value, its hand gradient (the complex step or fd where it has none), and the Newton
    direction and the ODE's primal worked out here."""
    spec = EVALS[name]
    case = spec.read(input)
    kind = spec.functions[function]
    if kind == NESTED:  # the start, where the descent stops at once
        return float(input["w"]) if name == "particle" else [float(v) for v in input["start"] * 2]
    assert case.problem is not None
    if kind == JACOBIAN:
        return spec.write(function, case, dense_reference(name, case))
    if kind == VECTOR:
        assert spec.vector_problem is not None
        return spec.write(
            function, case, spec.vector_problem(case).loss(case.params, case.data, np)
        )
    if kind == VALUE:
        return spec.write(function, case, np.asarray(case.problem.loss(case.params, case.data, np)))
    if kind == NEWTON:  # each centroid less the mean of its nearest points
        points, centroids = case.data["points"], case.params["centroids"]
        nearest = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(axis=2), axis=1)
        means = np.array([points[nearest == j].mean(axis=0) for j in range(len(centroids))])
        return spec.write(function, case, {"centroids": centroids - means})
    assert kind == GRADIENT
    if case.problem.has_hand_gradient:
        grads = case.problem.hand_value_and_grad(case.params, case.data)[1]
    else:
        grads = gradlab.value_and_grad(case.problem, case.data, case.params, engine="complex-step")[
            1
        ]
    return spec.write(function, case, grads)


def dense_reference(name: str, case: Any) -> Any:
    """ba's and ht's Jacobians from fd's dense Jacobian of the whole problem, laid out as
    GradBench's reference does it (ba: ADBench's ``BASparseMat``, entry by entry)."""
    dense = gradlab.jacobian(case.problem, case.data, case.params, engine="fd")
    if name == "ht":
        points = case.data["points"].shape[0]
        columns = [dense["theta"].reshape(3 * points, -1)]
        if "us" in dense:  # each point's own u columns: the diagonal blocks
            own = [dense["us"][i, :, i, :] for i in range(points)]
            columns.insert(0, np.concatenate(own))
        return np.concatenate(columns, axis=1)
    from gradlab.gradbench._ba import Sparse

    problem, obs = case.problem, case.data["obs"].astype(int)
    n, m, p = problem.n, problem.m, problem.p
    rows, cols, vals = [0], [], []
    for j in range(p):  # BASparseMat.insert_reproj_err_block
        for r in range(2):
            rows.append(rows[-1] + 15)
            row = dense["reproj_err"]
            for i in range(11):
                cols.append(11 * obs[j, 0] + i)
                vals.append(row["cams"][j, r, obs[j, 0], i])
            for i in range(3):
                cols.append(11 * n + 3 * obs[j, 1] + i)
                vals.append(row["x"][j, r, obs[j, 1], i])
            cols.append(11 * n + 3 * m + j)
            vals.append(row["w"][j, r, j])
    for j in range(p):  # insert_w_err_block
        rows.append(rows[-1] + 1)
        cols.append(11 * n + 3 * m + j)
        vals.append(dense["w_err"]["w"][j, j])
    return Sparse(np.array(rows), np.array(cols), np.array(vals), (3 * p, 11 * n + 3 * m + p))


def assert_close(got: Any, want: Any, tolerance: float, where: str) -> None:
    """Same JSON shape and types, numbers within ``tolerance`` (relative to max(1, |want|))."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert sorted(got) == sorted(want), where
        for key in want:
            assert_close(got[key], want[key], tolerance, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), where
        assert len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close(a, b, tolerance, f"{where}[{index}]")
    elif isinstance(want, int):  # sizes and indices (ba's sparse rows and columns): exact
        assert type(got) is int, where
        assert got == want, where
    else:
        assert isinstance(got, float), where
        assert isinstance(want, float), where
        assert abs(got - want) <= tolerance * max(1.0, abs(want)), f"{where}: {got} vs {want}"


@pytest.mark.parametrize("engine", BUILTIN_ENGINES)
def test_a_full_exchange_over_a_pipe_validates(engine: str) -> None:
    # One engine over a real pipe (a process of its own: start-up, stdin, stdout); the
    # others through the same serve() in this process, which spares each a cold import.
    require_engine(engine)
    messages, replies = exchange(engine, over_a_pipe=engine == "numpy")
    assert [reply["id"] for reply in replies] == [message["id"] for message in messages]
    assert replies[0]["tool"] == f"gradlab-{engine}"
    module = ""
    for message, reply in zip(messages, replies, strict=True):
        if message["kind"] == "define":
            module = message["module"]
            if engine == "numpy" and module == "lstm":  # no hand derivative: said up front
                assert reply["success"] is False
                assert "hand-derived" in reply["error"]
            elif engine not in NESTING and module in ("particle", "saddle"):
                assert reply["success"] is False
                assert "cannot nest derivatives" in reply["error"]
            else:
                assert reply["success"] is True, reply
        if message["kind"] != "evaluate":
            continue
        function = message["function"]
        if (engine == "numpy" and module == "lstm" and function == "jacobian") or (
            engine not in NESTING and module in ("particle", "saddle")
        ):
            assert reply["success"] is False
            continue
        assert reply["success"] is True, (module, function, reply)
        names = [timing["name"] for timing in reply["timings"]]
        runs = 2 if EVALS[module].timed else 1
        # An eager nested procedure (torch's) has no warmup; jax's compiles in its warmup.
        eager = module in ("particle", "saddle") and engine != "jax"
        warmup = [] if eager else ["warmup"]
        assert names == ["prepare", *warmup] + ["evaluate"] * runs
        assert all(
            isinstance(t["nanoseconds"], int) and t["nanoseconds"] >= 0 for t in reply["timings"]
        )
        tolerance = 1e-5 if engine == "fd" else 1e-9
        want = reference(module, function, message["input"])
        assert_close(reply["output"], want, tolerance, f"{engine} {module}.{function}")


# -- nested derivatives: particle and saddle ------------------------------------------------


def operators(engine: str, variant: str) -> tuple[_nested.Ops, Any, Any]:
    """The engine's nested-derivative operators and the variant's outer and inner one."""
    require_engine(engine)
    ops = _nested.ops_for(gradlab.get_engine(engine))
    outer, inner = (ops.forward if mode == "f" else ops.reverse for mode in variant)
    return ops, outer, inner


@pytest.mark.parametrize(("engine", "variant"), NESTED_CASES)
def test_the_outer_derivative_runs_through_the_inner_descent(engine: str, variant: str) -> None:
    # saddle's best response, max over p₂ of |p₁|² − |p₂|², is |p₁|² less a constant that
    # does not depend on p₁ (the inner descent's end point): its gradient is exactly 2·p₁,
    # whatever the modes, if no derivative leaks between the levels (perturbation confusion).
    ops, outer, inner = operators(engine, variant)
    with ops.scope():
        p1 = ops.lift([0.3, -0.2])
        response = _nested.best_response(inner, ops.lift([1.0, 1.0]), ops)
        gradient = _nested._host(outer(response)(p1))
    np.testing.assert_allclose(gradient, [0.6, -0.4], rtol=1e-12)


# -- hostile messages: answered, never a crash or a hang -------------------------------------


def run(*lines: Any) -> list[dict[str, Any]]:
    """Serve these messages (dicts as JSON, strings as they are) on numpy; the replies."""
    out = io.StringIO()
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    assert serve("numpy", (line + "\n" for line in text), out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def evaluate(module: str, function: str, input: Any, id: int = 1) -> dict[str, Any]:
    return {"id": id, "kind": "evaluate", "module": module, "function": function, "input": input}


GOOD_GMM = EVALS["gmm"].example(0, d=2, k=2, n=4)


class WriteOnly:
    """A sink with write but no flush: not a stream."""

    def write(self, text: str) -> int:
        return len(text)


HOSTILE = [
    ("not json {", "not JSON"),
    ("[" * 100_000, "not JSON"),  # deeper than the parser recurses
    ('{"id": NaN, "kind": "start"}', "NaN is not JSON"),
    ('{"id": Infinity, "kind": "start"}', "Infinity is not JSON"),
    ('{"id": 1e400, "kind": "start"}', "1e400 is not a finite number"),
    ("[1, 2]", "JSON object"),
    ({"id": 1, "kind": "shout"}, "unknown message kind"),
    ({"id": 1, "kind": "define", "module": "fft"}, "does not implement module 'fft'"),
    ({"id": 1, "kind": "define", "module": 3}, "does not implement module 3"),
    (evaluate("det", "hessian", {"A": [1.0], "ell": 1}), "no function 'hessian'"),
    ({"id": 1, "kind": "evaluate", "module": "det", "function": "primal"}, "no 'input'"),
    (evaluate("det", "primal", [1, 2]), "JSON object"),
    (evaluate("det", "primal", {"A": [1.0, 2.0], "ell": 2}), "'A' has shape (2,), expected 4"),
    (evaluate("det", "primal", {"A": [1.0], "ell": 0}), "'ell' must be an integer ≥ 1"),
    (evaluate("det", "primal", {"A": [1.0], "ell": True}), "'ell' must be an integer"),
    (evaluate("det", "primal", {"A": [1.0], "ell": 10**100}), "101 digits, beyond 64 bits"),
    (
        evaluate("det", "primal", {"A": [1.0], "ell": 10**6}),
        "'ell' is 1000000, above gradlab's bound of 16",
    ),
    (evaluate("llsq", "primal", {"x": [1.0], "n": 10**15}), "above gradlab's bound of 33554432"),
    (evaluate("particle", "rr", {"w": "0"}), "'w' must be a number"),
    (evaluate("saddle", "rr", {"start": [1.0]}), "'start' has shape (1,), expected 2"),
    (evaluate("det", "primal", {"A": ["x"], "ell": 1}), "'A' must be a 1-D array of numbers"),
    (evaluate("det", "primal", {"A": [None], "ell": 1}), "'A'"),
    (evaluate("det", "primal", {"A": [float("nan")], "ell": 1}), "NaN is not JSON"),
    (evaluate("lse", "primal", {"x": []}), "'x' has shape (0,)"),
    (evaluate("lse", "primal", {"y": [1.0]}), "no field 'x'"),
    (evaluate("lse", "primal", {"x": [1.0], "min_runs": -1}), "'min_runs'"),
    (evaluate("lse", "primal", {"x": [1.0], "min_runs": "2"}), "'min_runs'"),
    (evaluate("lse", "primal", {"x": [1.0], "min_seconds": -1}), "'min_seconds'"),
    (evaluate("llsq", "primal", {"x": [1.0], "n": 1}), "'n' must be an integer ≥ 2"),
    (evaluate("kmeans", "cost", {"points": [[0.0, 1.0]], "centroids": [[0.0]]}), "'centroids'"),
    (
        evaluate("kmeans", "cost", {"points": [[0.0, 1.0], [2.0]], "centroids": [[0.0, 0.0]]}),
        "rows of equal length",
    ),
    (evaluate("ode", "primal", {"x": [1.0], "s": 0}), "'s' must be an integer ≥ 1"),
    (evaluate("gmm", "objective", GOOD_GMM | {"gamma": -1.0}), "'gamma' must be positive"),
    (evaluate("gmm", "objective", GOOD_GMM | {"d": 3}), "'mu' has shape (2, 2), expected 2×3"),
    (evaluate("gmm", "objective", GOOD_GMM | {"n": 5}), "'x' has shape (4, 2), expected 5×2"),
    (evaluate("lstm", "objective", {"main_params": [[1.0] * 4] * 3}), "2l rows of 4b values"),
    (evaluate("hello", "square", "two"), "must be a number"),
    (
        evaluate("det", "primal", {"A": [1e300, 1e300, -1e300, 1e300], "ell": 2}),
        "not a finite number",
    ),
]


@pytest.mark.parametrize(("line", "complaint"), HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_message_gets_a_failure_and_the_tool_reads_on(line: Any, complaint: str) -> None:
    replies = run(line, evaluate("hello", "square", 3.0, id=9))
    assert replies[0]["success"] is False
    assert complaint in replies[0]["error"], replies[0]["error"]
    assert replies[1] == {"id": 9, "success": True, "output": 9.0, "timings": replies[1]["timings"]}


@pytest.mark.parametrize(
    ("messages", "replies", "argument"),
    [
        ('{"id": 0, "kind": "start"}', None, "messages"),
        (3, None, "messages"),
        ([], "stdout", "replies"),
        ([{"id": 0, "kind": "start"}], None, "messages"),  # parsed, not lines of text
        # One parsed message is not lines either (its keys would be read as lines).
        ({"id": 0, "kind": "start"}, None, "messages"),
        (b'{"id": 0, "kind": "start"}\n', None, "messages"),
        (bytearray(b'{"id": 0, "kind": "start"}\n'), None, "messages"),
        (io.BytesIO(b'{"id": 0, "kind": "start"}\n'), None, "messages"),
        ([b'{"id": 0, "kind": "start"}'], None, "messages"),
        ([None], None, "messages"),
        (['{"id": 0, "kind": "start"}'], io.BytesIO(), "replies"),
        (['{"id": 0, "kind": "start"}'], WriteOnly(), "replies"),
    ],
)
def test_serve_refuses_arguments_of_the_wrong_kind(
    messages: Any, replies: Any, argument: str
) -> None:
    with pytest.raises(gradlab.ArgumentTypeError) as raised:
        serve("numpy", messages, replies)
    assert raised.value.argument == argument


def test_end_stops_the_tool_and_nothing_after_it_is_read() -> None:
    replies = run({"id": 0, "kind": "start"}, {"id": 1, "kind": "end"}, "never read {")
    assert len(replies) == 1
    assert replies[0]["tool"] == "gradlab-numpy"


def test_runs_repeat_until_both_minima_are_met() -> None:
    input = {"x": [0.5, 1.5], "min_runs": 5, "min_seconds": 0.02}
    reply = run(evaluate("lse", "gradient", input))[0]
    times = [t["nanoseconds"] for t in reply["timings"] if t["name"] == "evaluate"]
    assert len(times) >= 5
    assert sum(times) >= 0.02e9


def test_stray_prints_do_not_corrupt_the_protocol(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gradlab.gradbench import _evals as _gradbench_evals

    square = _gradbench_evals._Square.loss

    def chatty(self: Any, params: Any, data: Any, xp: Any) -> Any:
        print("hello from inside the loss")
        return square(self, params, data, xp)

    monkeypatch.setattr(_gradbench_evals._Square, "loss", chatty)
    out = io.StringIO()
    serve("numpy", [json.dumps(evaluate("hello", "square", 2.0)) + "\n"], out)
    assert json.loads(out.getvalue())["output"] == 4.0
    assert "hello from inside the loss" in capsys.readouterr().err


def test_the_command_line_names_the_engine_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from gradlab.cli import main

    assert main(["gradbench", "--engine", "nump"]) == 2
    assert "--engine: unknown engine 'nump'; did you mean 'numpy'?" in capsys.readouterr().err


def test_a_tool_whose_input_closes_exits_at_once() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradlab.gradbench", "--engine", "numpy"],
        input="garbage\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    assert json.loads(done.stdout)["success"] is False


# -- bounds: no message asks for unbounded memory or time -----------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "gradbench.md"
LIMITED = [
    (name, product)
    for name, spec in EVALS.items()
    if spec.limits is not None
    for product in spec.limits.bounds
]
#: Sizes given as fields, far past their bounds (GradBench's largest in the comments).
HUGE = [
    ("llsq", "primal", {"x": [1.0], "n": 2 * 10**9}, "'n'", "n·m"),  # n 16,392
    ("llsq", "gradient", {"x": [1.0] * 128, "n": 10**6}, "'n'", "n·m"),
    ("ode", "primal", {"x": [1.0], "s": 10**9}, "'s'", "s"),  # s 100
    ("ode", "gradient", {"x": [1.0] * 70_000, "s": 1000}, "'s'", "n·s"),  # n·s 10⁷
    ("gmm", "objective", GOOD_GMM | {"n": 10**9}, "'n'", "n·k·d"),  # 1000·100·64
    ("gmm", "jacobian", GOOD_GMM | {"k": 10**9}, "'k'", "n·k·d"),
    ("gmm", "jacobian", GOOD_GMM | {"d": 10**5}, "'d'", "k·d·d"),  # 100·64²
    ("gmm", "objective", GOOD_GMM | {"n": 2**15, "d": 2**10}, "'d'", "n·k·d·d"),
    ("det", "gradient", {"A": [1.0], "ell": 10**6}, "'ell'", "ell"),  # 11
    ("ba", "jacobian", EVALS["ba"].example(0, n=2, m=2, p=10**9), "'p'", "p"),  # 1,255,268
    ("ba", "objective", EVALS["ba"].example(0, n=10**9, m=2, p=2), "'n'", "n"),  # 356
]
#: Counts far past their bounds, on every timed eval's reading.
HUGE_COUNTS = [
    (name, field, value)
    for name in ("lse", "particle", "saddle")
    for field, value in (("min_runs", 10**12), ("min_seconds", 1e12), ("min_seconds", 1e308))
]


def served_within(*lines: Any) -> tuple[list[dict[str, Any]], float, int]:
    """``run``'s replies, the seconds taken and the peak of memory allocated meanwhile
    (NumPy reports its arrays to tracemalloc)."""
    tracemalloc.start()
    begin = time.perf_counter()
    try:
        replies = run(*lines)
        return replies, time.perf_counter() - begin, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("module", "function", "input", "field", "product"), HUGE)
def test_a_huge_size_is_refused_at_once_and_before_anything_is_allocated(
    module: str, function: str, input: dict[str, Any], field: str, product: str
) -> None:
    limits = EVALS[module].limits
    assert limits is not None
    replies, seconds, peak = served_within(
        evaluate(module, function, input | {"min_runs": 1, "min_seconds": 0}),
        evaluate("hello", "square", 3.0, id=9),
    )
    assert replies[0]["success"] is False
    error = replies[0]["error"]
    assert "input too large" in error, error
    assert field in error, error
    assert f"bound of {limits.bounds[product]}" in error, error
    assert replies[1]["output"] == 9.0  # and it reads on
    assert seconds < 5
    assert peak < 32 * 2**20  # the message's own few MB, not the size asked for


@pytest.mark.parametrize(("module", "field", "value"), HUGE_COUNTS)
def test_a_huge_count_of_runs_or_seconds_is_refused_at_once(
    module: str, field: str, value: float
) -> None:
    input = EVALS[module].example(0) | {field: value}
    replies, seconds, _ = served_within(
        evaluate(module, next(iter(EVALS[module].functions)), input)
    )
    assert replies[0]["success"] is False
    bound = gradbench.MAX_RUNS if field == "min_runs" else gradbench.MAX_SECONDS
    assert f"'{field}' must be" in replies[0]["error"]
    assert f"from 0 to {bound}" in replies[0]["error"]
    assert seconds < 5


@pytest.mark.parametrize(("name", "product"), LIMITED)
def test_every_bound_is_checked_as_the_input_is_read(
    name: str, product: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sizes that come from arrays (n = len(x), k = rows of centroids...) as well as from
    # fields: with the bound lowered to just below what a small input gives, it is refused,
    # naming the bound and where each size comes from; at the bound, it is answered.
    spec = EVALS[name]
    limits = spec.limits
    assert limits is not None
    sizes = SMALL[name][0]
    value = math.prod(sizes[letter] for letter in product.split("·"))
    message = evaluate(name, next(iter(spec.functions)), spec.example(7, **sizes))
    monkeypatch.setitem(limits.bounds, product, value - 1)
    reply = run(message)[0]
    assert reply["success"] is False
    assert f"above gradlab's bound of {value - 1}" in reply["error"], reply["error"]
    for letter in product.split("·"):
        assert limits.sizes[letter] in reply["error"]
    monkeypatch.setitem(limits.bounds, product, value)
    assert run(message)[0]["success"] is True


#: GradBench's default sizes (its evals' run.py), independently of EVALS[...].sizes, and
#: ADBench's larger mixtures that GradBench's gmm leaves out (``# misses 128``).
GRADBENCH_LARGEST = {
    "lse": [{"n": 1_280_000}],
    "llsq": [{"n": 16_392, "m": 128}],
    "gmm": [{"n": 1000, "k": 100, "d": 64}, {"n": 1000, "k": 200, "d": 128}],
    "kmeans": [{"n": 100_000, "k": 1000, "d": 16}],
    "det": [{"ell": 11}],
    "ode": [{"n": 100_000, "s": 100}],
    "lstm": [{"l": 4, "c": 4096, "b": 14}],
    # ba14, GradBench's default largest, and ADBench's largest n·m·p (ba20, ba19).
    "ba": [
        {"n": 356, "m": 226_730, "p": 1_255_268},
        {"n": 13_682, "m": 4_456_117, "p": 2_987_644},
        {"n": 4585, "m": 1_324_582, "p": 9_125_125},
    ],
    # ADBench's big hand: 10,000 vertices, 22 bones, 1,084 triangles; 100,000 points.
    "ht": [{"v": 10_000, "b": 22, "t": 1084, "c": 100_000}],
}


@pytest.mark.parametrize("name", sorted(GRADBENCH_LARGEST))
def test_gradbench_runs_pass_the_bounds_with_room(name: str) -> None:
    limits = EVALS[name].limits
    assert limits is not None
    for sizes in [*EVALS[name].sizes, *GRADBENCH_LARGEST[name]]:
        limits.check(**sizes)  # raises if refused
    for product, most in limits.bounds.items():
        largest = math.prod(GRADBENCH_LARGEST[name][0][letter] for letter in product.split("·"))
        if product == "ell":  # det's work is 2^ell minors
            most, largest = 2**most, 2**largest
        assert most >= 2 * largest, (product, most, largest)


def test_the_docs_state_every_bound() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, spec in EVALS.items():
        if spec.limits is None:
            continue
        (row,) = [
            line for line in text.splitlines() if line.startswith(f"| `{name}` |") and "≤" in line
        ]
        for product, most in spec.limits.bounds.items():
            assert f"{product} ≤ " in row, (name, product)
            assert f"{most:,}" in row, (name, product)
    assert gradbench.MAX_LINE == 2**28
    assert "2²⁸ characters (`MAX_LINE`)" in text
    assert f"{gradbench.MAX_RUNS:,} (`MAX_RUNS`)" in text
    assert f"{gradbench.MAX_SECONDS} (`MAX_SECONDS`)" in text
    assert f"{gradbench.BUDGET_SECONDS} s (`BUDGET_SECONDS`)" in text


def evaluate_runs(reply: dict[str, Any]) -> int:
    return [timing["name"] for timing in reply["timings"]].count("evaluate")


def test_runs_stop_at_max_runs_whatever_min_seconds_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A function of microseconds asked for minutes of runs: the timings list stops growing.
    monkeypatch.setattr(_server, "MAX_RUNS", 7)
    begin = time.perf_counter()
    reply = run(evaluate("lse", "primal", {"x": [1.0], "min_runs": 2, "min_seconds": 200}))[0]
    assert time.perf_counter() - begin < 5
    assert reply["success"] is True
    assert evaluate_runs(reply) == 7


def test_runs_stop_at_the_wall_clock_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_server, "BUDGET_SECONDS", 0.1)
    begin = time.perf_counter()
    input = {"x": [0.5] * 1000, "min_runs": gradbench.MAX_RUNS, "min_seconds": 0}
    reply = run(evaluate("lse", "gradient", input))[0]
    assert time.perf_counter() - begin < 2
    assert reply["success"] is True
    assert 1 <= evaluate_runs(reply) < gradbench.MAX_RUNS


def test_one_run_is_made_though_the_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_server, "BUDGET_SECONDS", 0)
    reply = run(evaluate("lse", "primal", {"x": [1.0], "min_runs": 5, "min_seconds": 1}))[0]
    assert reply["success"] is True
    assert evaluate_runs(reply) == 1


def test_a_line_too_long_is_dropped_and_the_tool_reads_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_server, "MAX_LINE", 64)
    monkeypatch.setattr(_server, "_CHUNK", 16)  # the rest of the line read in pieces
    long = json.dumps({"id": 1, "kind": "analysis", "pad": "x" * 1000})
    exact = json.dumps({"id": 2, "kind": "analysis", "pad": ""})
    exact = exact[:-1] + " " * (64 - len(exact)) + "}"  # exactly MAX_LINE characters
    text = f"{long}\n{exact}\n{long}"  # the last without a newline
    for messages in (io.StringIO(text), text.split("\n")):
        out = io.StringIO()
        assert serve("numpy", messages, out) == 0
        replies = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [reply["id"] for reply in replies] == [None, 2, None]
        assert "longer than 64 characters" in replies[0]["error"]
        assert "longer than 64 characters" in replies[2]["error"]


# -- numbers are JSON numbers --------------------------------------------------------------

BAD_NUMBERS: list[Any] = [True, False, "3", None, [3], {"n": 3}]
BAD_ARRAYS: list[Any] = [True, "1.0", None, 3.0, {"a": [1.0]}]


def small_input(name: str) -> Any:
    """A good small input for ``name``, with its timing fields where it has them."""
    spec = EVALS[name]
    input = spec.example(7, **(SMALL[name] or [{}])[0])
    return input | {"min_runs": 1, "min_seconds": 0} if spec.timed else input


def with_first_leaf(value: list[Any], leaf: Any) -> list[Any]:
    """A copy of a nested list with its first number replaced by ``leaf``."""
    if isinstance(value[0], list):
        return [with_first_leaf(value[0], leaf), *value[1:]]
    return [leaf, *value[1:]]


NUMERIC_FIELDS = [
    (name, field) for name in EVALS if EVALS[name].timed for field in small_input(name)
]


@pytest.mark.parametrize(("name", "field"), NUMERIC_FIELDS)
def test_only_json_numbers_are_numbers(name: str, field: str) -> None:
    # NumPy reads true as 1.0, "1.5" as 1.5 and null as NaN; a JSON boolean, string, null,
    # object or misplaced array is refused in every numeric field of every eval, and in
    # any element of its arrays, naming the field.
    good = small_input(name)
    function = next(iter(EVALS[name].functions))
    if isinstance(good[field], list):
        bad = BAD_ARRAYS + [with_first_leaf(good[field], leaf) for leaf in BAD_NUMBERS]
    else:
        bad = BAD_NUMBERS
    lines = [evaluate(name, function, good | {field: value}, id=i) for i, value in enumerate(bad)]
    for value, reply in zip(bad, run(*lines), strict=True):
        assert reply["success"] is False, (field, value)
        assert f"'{field}'" in reply["error"], (field, value, reply["error"])


@pytest.mark.parametrize("value", [True, "2", None, [2.0], {"x": 2.0}])
def test_hello_takes_a_number_only(value: Any) -> None:
    reply = run(evaluate("hello", "square", value))[0]
    assert reply["success"] is False
    assert "must be a number" in reply["error"]


# -- every reply is strict JSON -------------------------------------------------------------


def strict(line: str) -> Any:
    """A reply as a strict reader takes it: no NaN or Infinity, valid Unicode text."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    value = json.loads(line, parse_constant=refuse)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate raises
    return value


def strict_replies(*lines: Any) -> Iterator[dict[str, Any]]:
    out = io.StringIO()
    serve("numpy", [line if isinstance(line, str) else json.dumps(line) for line in lines], out)
    return (strict(line) for line in out.getvalue().splitlines())


@pytest.mark.parametrize(
    "id",
    [
        2**63 - 1,
        -(2**63) + 1,
        1.7976931348623157e308,
        -0.0,
        "é☃\U0001f600",
        {"a": [1, {"b": None}]},
        [],
        True,
    ],
)
def test_any_json_id_comes_back_as_sent(id: Any) -> None:
    replies = list(strict_replies({"id": id, "kind": "analysis"}, {"id": id, "kind": "shout"}))
    assert [reply["id"] for reply in replies] == [id, id]
    assert replies[1]["success"] is False


def test_an_id_that_is_not_unicode_is_answered_with_id_null() -> None:
    (reply,) = strict_replies('{"id": "\\udc80", "kind": "analysis"}')
    assert reply["id"] is None
    assert "lone surrogate" in reply["error"]


OVERFLOWING = [
    evaluate("hello", "square", 1e200),
    evaluate("llsq", "primal", {"x": [1e300] * 3, "n": 16}),
    evaluate("ode", "primal", {"x": [1e200] * 3, "s": 1}),
    evaluate("ode", "gradient", {"x": [1e200] * 3, "s": 1}),
    evaluate("kmeans", "cost", {"points": [[1e200]], "centroids": [[-1e200]]}),
    evaluate("det", "primal", {"A": [1e300, 1e300, -1e300, 1e300], "ell": 2}),
    evaluate("gmm", "objective", GOOD_GMM | {"mu": [[1e200, 1e200]] * 2}),
]


@pytest.mark.parametrize("message", OVERFLOWING, ids=range(len(OVERFLOWING)))
def test_an_output_that_overflows_is_a_failure_in_strict_json(message: dict[str, Any]) -> None:
    # JSON has no infinity: GradBench could not compare one; the reply says what happened.
    (reply,) = strict_replies(message)
    assert reply["success"] is False
    assert "not a finite number" in reply["error"]


@pytest.mark.parametrize(
    ("reply", "id", "complaint"),
    [
        ({"id": 3, "success": True, "output": np.float32(1.0)}, 3, "cannot be written as JSON"),
        ({"id": 3, "success": True, "output": float("inf")}, 3, "not a finite number"),
        ({"id": "\udc80", "success": False, "error": "x"}, None, "lone surrogate"),
        ({"id": 1, "success": False, "error": "bad \udc80"}, 1, "lone surrogate"),
    ],
)
def test_every_reply_line_is_strict_json(reply: dict[str, Any], id: Any, complaint: str) -> None:
    line = _server._reply_line(reply)
    assert "\n" not in line
    written = strict(line)
    assert written["id"] == id
    assert complaint in written["error"]


def test_an_id_too_deep_to_write_back_is_answered_with_id_null() -> None:
    deep: Any = []
    for _ in range(100_000):  # deeper than the encoder recurses
        deep = [deep]
    written = strict(_server._reply_line({"id": deep, "success": True}))
    assert written["id"] is None
    assert "nested too deeply" in written["error"]


def test_standard_input_is_read_as_bytes_a_bounded_line_at_a_time() -> None:
    # Over a real pipe: bytes that are not UTF-8, a line past MAX_LINE (lowered here) and an
    # id that is not Unicode are each answered in strict JSON, and the tool reads on.
    script = (
        "import sys, gradlab.gradbench._server as g; g.MAX_LINE = 200; "
        "sys.exit(g.main(['--engine', 'numpy']))"
    )
    text = (
        b"\xff\xfe{}\n"
        + json.dumps({"id": 1, "kind": "analysis", "pad": "x" * 100_000}).encode()
        + b'\n{"id": "\\udc80", "kind": "analysis"}\n{"id": 4, "kind": "analysis"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=text, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    replies = [strict(line) for line in done.stdout.decode("ascii").splitlines()]
    assert [reply["id"] for reply in replies] == [None, None, None, 4]
    assert "not JSON" in replies[0]["error"]
    assert "longer than 200" in replies[1]["error"]
    assert "lone surrogate" in replies[2]["error"]
