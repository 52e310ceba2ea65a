"""The problems people benchmark autodiff on: definitions checked against independent oracles.

Each problem's hand gradient is checked against every engine and finite differences by the
property tests (``tests/derivatives/test_gradients.py``, over ``_strategies.CASES``). Here: the
definitions themselves (the seed's model, GradBench's published formulas, mathematical
identities), fits that agree across engines, and bad hyper-parameters and data refused.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from _helpers import cli_in_process, default_engines

import gradlab


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: gradlab.PolynomialRegression(-1), "degree"),
        (lambda: gradlab.PolynomialRegression(1.5), "degree"),  # type: ignore[arg-type]
        (lambda: gradlab.SoftmaxRegression(1), "classes"),
        (lambda: gradlab.MLP(()), "hidden"),
        (lambda: gradlab.MLP((4, 0)), "hidden"),
        (lambda: gradlab.MLP((4,), activation="relu"), "activation"),
        (lambda: gradlab.Rosenbrock(1), "dim"),
        (lambda: gradlab.LogSumExp(0), "size"),
        (lambda: gradlab.LeastSquares(0), "terms"),
    ],
)
def test_bad_hyper_parameters_are_refused_naming_them(make: Any, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError, match=argument) as caught:
        make()
    assert caught.value.argument == argument


@pytest.mark.parametrize(
    ("problem", "data", "argument"),
    [
        (gradlab.SoftmaxRegression(3), {"x": np.zeros((2, 1)), "y": np.ones((2, 3))}, "y"),
        (gradlab.SoftmaxRegression(3), {"x": np.zeros((2, 1)), "y": np.eye(2)}, "y"),
        (gradlab.Rosenbrock(2), {"x": np.zeros(3)}, "data"),
        (gradlab.LeastSquares(2), {"x": np.zeros(3), "y": np.zeros(3)}, "data"),
        (gradlab.LeastSquares(2), {"t": np.zeros(3), "s": np.zeros(2)}, "s"),
        (gradlab.MLP((2,)), {"x": np.zeros((3, 2)), "y": np.zeros(4)}, "y"),
    ],
)
def test_bad_data_is_refused_naming_it(problem: Any, data: Any, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError, match=argument):
        problem.check_data(data)


def test_polynomial_regression_of_degree_two_is_the_seeds_model() -> None:
    """c = (b, 0, w) is the seed's w·x² + b; the loss is a mean where the seed's is a sum."""
    quadratic, polynomial = gradlab.Quadratic(), gradlab.PolynomialRegression(2)
    data = quadratic.make_data(50, seed=3)
    w, b = 1.7, -0.4
    seed_loss, seed_grads = gradlab.value_and_grad(
        quadratic, data, {"w": w, "b": b}, engine="numpy"
    )
    for engine in default_engines():
        loss, grads = gradlab.value_and_grad(polynomial, data, {"c": [b, 0.0, w]}, engine=engine)
        n = len(data["x"])
        assert float(loss) * n == pytest.approx(float(seed_loss), rel=1e-12), engine
        assert float(grads["c"][0]) * n == pytest.approx(float(seed_grads["b"]), rel=1e-9)
        assert float(grads["c"][2]) * n == pytest.approx(float(seed_grads["w"]), rel=1e-9)


def gradbench_llsq(x: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """GradBench's llsq, transcribed from its C++ reference loop by loop (tools/manual)."""
    m = len(x)
    sums = []
    for i in range(n):
        t = -1 + i * 2 / (n - 1)
        s = (t > 0) - (t < 0)
        inner = s - sum(x[j] * t**j for j in range(m))
        sums.append(inner)
    gradient = np.array(
        [-sum(sums[i] * (-1 + i * 2 / (n - 1)) ** j for i in range(n)) for j in range(m)]
    )
    return 0.5 * sum(r * r for r in sums), gradient


def test_least_squares_is_gradbenchs_llsq(engine: str) -> None:
    problem = gradlab.LeastSquares(terms=5)
    x = np.array([0.3, -1.2, 0.8, 2.0, -0.5])
    expected_loss, expected_grad = gradbench_llsq(x, 41)
    loss, grads = gradlab.value_and_grad(problem, problem.make_data(41), {"x": x}, engine=engine)
    assert gradlab.rho(loss, expected_loss) <= 1e-12
    assert float(np.max(gradlab.rho(grads["x"], expected_grad))) <= 1e-9


def test_log_sum_exp_of_log_probabilities_is_zero_with_those_probabilities_as_gradient(
    engine: str,
) -> None:
    p = np.array([0.5, 0.25, 0.125, 0.125])
    loss, grads = gradlab.value_and_grad(gradlab.LogSumExp(4), {}, {"x": np.log(p)}, engine=engine)
    assert abs(float(loss)) <= 1e-12
    assert float(np.max(gradlab.rho(grads["x"], p))) <= 1e-9
    # Shift invariance: LSE(x + c) = LSE(x) + c, far beyond exp's range.
    shifted, _ = gradlab.value_and_grad(
        gradlab.LogSumExp(4), {}, {"x": np.log(p) + 1000.0}, engine=engine
    )
    assert float(shifted) == pytest.approx(1000.0, rel=1e-15)


def test_rosenbrock_minimum_and_origin(engine: str) -> None:
    problem = gradlab.Rosenbrock(5)
    loss, grads = gradlab.value_and_grad(problem, {}, {"x": np.ones(5)}, engine=engine)
    assert float(loss) == 0.0
    assert float(np.max(np.abs(grads["x"]))) <= 1e-9
    loss, grads = gradlab.value_and_grad(problem, {}, {"x": np.zeros(5)}, engine=engine)
    assert float(loss) == 4.0  # (1 − 0)² for each of the four pairs
    assert float(np.max(gradlab.rho(grads["x"], [-2.0, -2.0, -2.0, -2.0, 0.0]))) <= 1e-9


def test_two_class_softmax_regression_is_logistic_regression() -> None:
    """Class 1 against class 0 with scores (0, z) is logistic regression on z."""
    logistic = gradlab.LogisticRegression()
    data = logistic.make_data(60, d=2, seed=7)
    w, b = np.array([0.7, -1.1]), 0.3
    labels = np.stack([1 - data["y"], data["y"]], axis=1)
    soft_data = {"x": data["x"], "y": labels}
    soft_params = {"W": np.stack([np.zeros(2), w], axis=1), "b": np.array([0.0, b])}
    expected_loss, expected = gradlab.value_and_grad(
        logistic, data, {"w": w, "b": b}, engine="numpy"
    )
    for engine in default_engines():
        loss, grads = gradlab.value_and_grad(
            gradlab.SoftmaxRegression(2), soft_data, soft_params, engine=engine
        )
        assert gradlab.rho(loss, expected_loss) <= 1e-12, engine
        # The score of class 1 moves z; class 0's column gets the opposite gradient.
        assert float(np.max(gradlab.rho(grads["W"][:, 1], expected["w"]))) <= 1e-9
        assert float(np.max(gradlab.rho(grads["W"][:, 0], -expected["w"]))) <= 1e-9


def test_mlp_loss_is_the_mean_squared_error_of_its_predictions() -> None:
    problem = gradlab.MLP((5, 3), activation="sigmoid")
    data = problem.make_data(30, d=3, seed=1)
    params = problem.initial_params(data, seed=2)
    again = problem.initial_params(data, seed=2)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    prediction = problem.predict(params, data["x"])
    expected = 0.5 * np.mean((prediction - data["y"]) ** 2)
    assert float(problem.loss(params, data, np)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize(
    ("problem", "n", "init"),
    [
        (gradlab.PolynomialRegression(3), 40, None),
        (gradlab.LeastSquares(4), 40, None),
        (gradlab.SoftmaxRegression(3), 40, None),
        (gradlab.MLP((3,)), 30, "initial"),
        (gradlab.Rosenbrock(3), 0, {"x": [-1.2, 1.0, 0.5]}),
        (gradlab.LogSumExp(6), 0, {"x": [0.0, 1.0, 2.0, -1.0, 0.5, 3.0]}),
    ],
    ids=lambda value: getattr(value, "name", None),
)
def test_fits_follow_the_same_path_on_every_engine(problem: Any, n: int, init: Any) -> None:
    data = problem.make_data(n, seed=5)
    if init is None:
        shapes = problem.param_shapes(problem.check_data(data))
        init = {name: np.full(shape, 0.1) for name, shape in shapes.items()}
    elif init == "initial":
        init = problem.initial_params(data, seed=0)
    comparison = gradlab.compare_fits(
        problem, data, optimizer=gradlab.adam(0.01), steps=30, init=init
    )
    assert comparison.ok, str(comparison)


def adbench_gmm(
    alphas: np.ndarray, means: np.ndarray, icf: np.ndarray, x: np.ndarray, gamma: float, m: int
) -> float:
    """ADBench's GMM objective, point by point and component by component as in its
    reference implementation (the log-multigamma for d = 2: ½·log π + lgamma(a) +
    lgamma(a − ½))."""
    import math

    n, d = x.shape
    k = len(alphas)
    assert d == 2

    def logsumexp(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    def factor(row: np.ndarray) -> np.ndarray:
        lower = np.zeros((d, d))
        index = d
        for column in range(d):  # column by column, below the diagonal
            for r in range(column + 1, d):
                lower[r, column] = row[index]
                index += 1
        return np.diag(np.exp(row[:d])) + lower

    total = -n * d * 0.5 * math.log(2 * math.pi)
    for i in range(n):
        terms = []
        for c in range(k):
            mahalanobis = factor(icf[c]) @ (x[i] - means[c])
            terms.append(alphas[c] + np.sum(icf[c, :d]) - 0.5 * mahalanobis @ mahalanobis)
        total += logsumexp(terms)
    total -= n * logsumexp(list(alphas))
    n_w = d + m + 1
    for c in range(k):
        frobenius = np.sum(np.exp(icf[c, :d]) ** 2) + np.sum(icf[c, d:] ** 2)
        total += 0.5 * gamma**2 * frobenius - m * np.sum(icf[c, :d])
    a = 0.5 * n_w
    log_multigamma = 0.5 * math.log(math.pi) + math.lgamma(a) + math.lgamma(a - 0.5)
    return float(total - k * (n_w * d * (math.log(gamma) - 0.5 * math.log(2)) - log_multigamma))


def test_gmm_is_adbenchs_objective(engine: str) -> None:
    problem = gradlab.GMM(k=3, d=2, gamma=1.5, m=1)
    data = problem.make_data(25, seed=2)
    rng = np.random.default_rng(3)
    params = {k: 0.6 * rng.standard_normal(s) for k, s in problem.param_shapes(data).items()}
    expected = adbench_gmm(params["alphas"], params["means"], params["icf"], data["x"], 1.5, 1)
    loss, _ = gradlab.value_and_grad(problem, data, params, engine=engine)
    assert gradlab.rho(loss, expected) <= 1e-12


@pytest.mark.skipif(
    np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended-precision long double"
)
def test_gmms_hand_gradient_does_not_lose_digits_as_points_grow() -> None:
    """ADBench's 2.5M-point inputs repeat one point. Summed one after another, n equal terms
    lose digits in proportion to n (rho 1.1e-10 at 2²⁰ points); summed in blocks and pairs,
    the loss grows with log n. Oracle: the same hand gradient in long double (64-bit
    mantissa), whose own error at this n is about 10⁻¹⁴ in rho."""
    problem = gradlab.GMM(2, 2)
    rng = np.random.default_rng(0)
    params = {
        "alphas": rng.standard_normal(2),
        "means": rng.uniform(0, 1, (2, 2)),
        "icf": rng.standard_normal((2, 3)),
    }
    x = np.repeat(rng.standard_normal((1, 2)), 2**20, axis=0)
    _, float64 = problem.hand_value_and_grad(params, {"x": x})
    extended = {k: v.astype(np.longdouble) for k, v in params.items()}
    _, truth = problem.hand_value_and_grad(extended, {"x": x.astype(np.longdouble)})
    worst = max(
        float(np.max(gradlab.rho(float64[k], np.asarray(truth[k], np.float64)))) for k in truth
    )
    assert worst <= 1e-12


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [({"k": 0}, "k"), ({"d": 0}, "d"), ({"gamma": 0.0}, "gamma"), ({"m": -1}, "m")],
)
def test_gmm_hyper_parameters_are_checked(arguments: dict[str, Any], argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError, match=argument):
        gradlab.GMM(**arguments)


@pytest.mark.parametrize(
    "name",
    [
        "polynomial_regression",
        "least_squares",
        "softmax_regression",
        "mlp",
        "rosenbrock",
        "log_sum_exp",
        "gmm",
    ],
)
def test_gradlab_compare_covers_the_problem(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli_in_process(capsys, "compare", "--problem", name, "--n", "12", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["problem"] == name
    assert all(verdict["agrees"] for verdict in report["verdicts"].values())
