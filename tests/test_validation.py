"""Bad input gets a clear gradlab error that names the argument, before any framework sees it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradlab

GOOD_DATA = {"x": np.linspace(-1, 1, 10), "y": np.linspace(0, 1, 10)}
GOOD_INIT = {"w": 0.0, "b": 0.0}


def fit(**overrides: Any) -> gradlab.FitResult:
    arguments: dict[str, Any] = {
        "problem": gradlab.Quadratic(),
        "data": GOOD_DATA,
        "engine": "numpy",
        "optimizer": gradlab.sgd(0.01),
        "steps": 3,
        "init": GOOD_INIT,
        "dtype": "float64",
    }
    arguments.update(overrides)
    problem, data = arguments.pop("problem"), arguments.pop("data")
    return gradlab.fit(problem, data, **arguments)


BAD = [
    # (what, overrides, the argument named in the error)
    ("x and y of different lengths", {"data": {"x": np.zeros(10), "y": np.zeros(9)}}, "data['y']"),
    ("x with two columns", {"data": {"x": np.zeros((10, 2)), "y": np.zeros(10)}}, "data['x']"),
    ("y as a matrix", {"data": {"x": np.zeros(10), "y": np.zeros((10, 3))}}, "data['y']"),
    ("NaN in x", {"data": {"x": [0.0, np.nan], "y": [1.0, 2.0]}}, "data['x']"),
    ("inf in y", {"data": {"x": [0.0, 1.0], "y": [1.0, np.inf]}}, "data['y']"),
    ("empty data", {"data": {"x": np.zeros(0), "y": np.zeros(0)}}, "data['x']"),
    ("text in x", {"data": {"x": "abc", "y": [1.0]}}, "data['x']"),
    ("complex x", {"data": {"x": [1j, 2.0], "y": [1.0, 2.0]}}, "data['x']"),
    ("ragged x", {"data": {"x": [[1.0], [1.0, 2.0]], "y": [1.0, 2.0]}}, "data['x']"),
    ("a missing data key", {"data": {"x": np.zeros(3)}}, "data"),
    ("data that is not a mapping", {"data": [1.0, 2.0]}, "data"),
    ("init missing a parameter", {"init": {"w": 1.0}}, "init"),
    ("init with an extra parameter", {"init": {"w": 1.0, "b": 0.0, "c": 2.0}}, "init"),
    ("init of the wrong shape", {"init": {"w": np.zeros(2), "b": 0.0}}, "init['w']"),
    ("non-finite init", {"init": {"w": np.nan, "b": 0.0}}, "init['w']"),
    ("init that is not a mapping", {"init": [1.0, 0.0]}, "init"),
    ("zero steps", {"steps": 0}, "steps"),
    ("negative steps", {"steps": -5}, "steps"),
    ("fractional steps", {"steps": 2.5}, "steps"),
    ("steps as text", {"steps": "10"}, "steps"),
    ("steps as a bool", {"steps": True}, "steps"),
    ("an unknown dtype", {"dtype": "float16"}, "dtype"),
    ("an integer dtype", {"dtype": "int32"}, "dtype"),
    ("a nonsense dtype", {"dtype": "double-ish"}, "dtype"),
    ("no dtype", {"dtype": None}, "dtype"),
    ("an unknown engine", {"engine": "jaxx"}, "engine"),
    ("an engine of the wrong type", {"engine": 7}, "engine"),
    ("a problem that is not one", {"problem": "quadratic"}, "problem"),
    ("an optimizer that is not one", {"optimizer": 0.01}, "optimizer"),
]


@pytest.mark.parametrize(("what", "overrides", "argument"), BAD, ids=[case[0] for case in BAD])
def test_bad_fit_arguments_are_refused_by_name(what: str, overrides: Any, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        fit(**overrides)
    error = caught.value
    assert error.argument == argument
    assert argument in str(error)
    assert isinstance(error, (ValueError, TypeError))


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_learning_rates_are_refused(lr: float) -> None:
    with pytest.raises(gradlab.ArgumentError, match="lr"):
        fit(optimizer=gradlab.sgd(lr))


def test_dtype_spellings_numpy_understands_are_accepted() -> None:
    for spelling in ("float32", np.float32, np.dtype("float64"), "f8", float):
        assert fit(dtype=spelling).ok


def test_logistic_labels_outside_zero_one_are_refused() -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.fit(
            gradlab.LogisticRegression(),
            {"x": np.zeros((2, 1)), "y": [0.0, 2.0]},
            engine="numpy",
            optimizer=gradlab.sgd(0.1),
            steps=1,
            init={"w": [0.0], "b": 0.0},
        )
    assert caught.value.argument == "data['y']"


def test_a_loss_that_is_not_a_scalar_is_refused_before_any_engine_runs() -> None:
    vector_loss = gradlab.Problem(lambda p, d, xp: (p["a"] * d["x"]) ** 2, name="vector")
    with pytest.raises(gradlab.GradlabError, match="scalar"):
        gradlab.fit(
            vector_loss,
            {"x": [1.0, 2.0]},
            engine="fd",
            optimizer=gradlab.sgd(0.1),
            steps=1,
            init={"a": 1.0},
        )


def test_problem_construction_is_checked() -> None:
    with pytest.raises(gradlab.ArgumentTypeError, match="loss"):
        gradlab.Problem("not a function")  # type: ignore[arg-type]
    with pytest.raises(gradlab.ArgumentTypeError, match="value_and_grad"):
        gradlab.Problem(lambda p, d, xp: 0.0, value_and_grad=3)  # type: ignore[arg-type]
    with pytest.raises(gradlab.ArgumentError, match="name"):
        gradlab.Problem(lambda p, d, xp: 0.0, name="")
    with pytest.raises(gradlab.ArgumentError, match=r"params\['a'\]"):
        gradlab.Problem(lambda p, d, xp: 0.0, params={"a": 3})  # type: ignore[dict-item]
    with pytest.raises(gradlab.ArgumentTypeError, match="params"):
        gradlab.Problem(lambda p, d, xp: 0.0, params=[(3,)])  # type: ignore[arg-type]


def test_declared_parameter_shapes_are_enforced() -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p["a"] ** 2), name="bowl", params={"a": (3,)})
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.fit(
            problem, {}, engine="fd", optimizer=gradlab.sgd(0.1), steps=1, init={"a": [1.0, 2.0]}
        )
    assert caught.value.argument == "init['a']"


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: gradlab.Quadratic().make_data(0), "n"),
        (lambda: gradlab.LinearRegression().make_data(10, d=0), "d"),
        (lambda: gradlab.Quadratic().make_data(10, noise=-1.0), "noise"),
        (lambda: gradlab.Quadratic().make_data(10, seed=-3), "seed"),
        (lambda: gradlab.LogisticRegression().make_data(10, seed="x"), "seed"),  # type: ignore[arg-type]
        (lambda: gradlab.rho("abc", 1.0), "a"),
        (lambda: gradlab.max_rho({"w": 1.0}, {"w": "x"}), "b['w']"),
        (lambda: gradlab.max_rho({"w": 1.0}, {"v": 1.0}), "b"),
        (lambda: gradlab.tolerance("float16"), "dtype"),
        (
            lambda: gradlab.value_and_grad(
                gradlab.Quadratic(), GOOD_DATA, {"w": 1.0}, engine="numpy"
            ),
            "params",
        ),
    ],
)
def test_other_entry_points_check_their_arguments(call: Any, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        call()
    assert caught.value.argument == argument


@pytest.mark.parametrize(
    "hand",
    [
        lambda p, d: (0.0, {"a": 0.0}),  # a gradient missing
        lambda p, d: (0.0, {"a": 0.0, "b": 0.0, "c": 0.0}),  # one too many
        lambda p, d: (0.0, {"a": np.zeros(2), "b": 0.0}),  # a wrong shape
        lambda p, d: (0.0, [0.0, 0.0]),  # not a mapping
    ],
)
def test_a_wrong_hand_gradient_is_reported_clearly(hand: Any) -> None:
    problem = gradlab.Problem(lambda p, d, xp: p["a"] ** 2 + p["b"] ** 2, hand, name="bowl")
    with pytest.raises(gradlab.GradlabError, match="bowl"):
        gradlab.fit(
            problem,
            {},
            engine="numpy",
            optimizer=gradlab.sgd(0.1),
            steps=2,
            init={"a": 1.0, "b": 1.0},
        )
