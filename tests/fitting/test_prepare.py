"""``prepare_fit``: checked once, run many; ``init`` defaults to the problem's start.

Oracles: fresh one-shot fits (a prepared fit must carry nothing from one run to the next),
the seed's NumPy loop written out here, and mathematics (Quadratic's declared start is zeros).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab

ENGINES = ["numpy", "torch", "jax", "fd"]
QUADRATIC = gradlab.Quadratic()
DATA = QUADRATIC.make_data(50, seed=3)


def seed_loop(data: dict[str, np.ndarray], w: float, b: float, lr: float, steps: int) -> Any:
    """The seed tutorial's hand-derived loop (../shared/seed), written out."""
    x, y = data["x"], data["y"]
    losses = []
    for _ in range(steps):
        residual = w * x**2 + b - y
        losses.append(0.5 * float(residual @ residual))
        w, b = w - lr * float(residual @ x**2), b - lr * float(residual.sum())
    return w, b, np.array(losses)


@pytest.mark.parametrize("engine", ENGINES)
def test_runs_of_a_prepared_fit_match_the_seed_loop_from_each_start(engine: str) -> None:
    require_engine(engine)
    prepared = gradlab.prepare_fit(
        QUADRATIC, DATA, engine=engine, optimizer=gradlab.sgd(1e-4), dtype="float64"
    )
    # Three runs from three starts, in an order where a stale start or state would show.
    for w0, b0 in [(0.0, 0.0), (2.5, -1.0), (0.0, 0.0)]:
        result = prepared.run(init={"w": w0, "b": b0}, steps=60)
        w, b, losses = seed_loop(DATA, w0, b0, 1e-4, 60)
        tolerance = 1e-6 if engine == "fd" else 1e-12
        assert gradlab.max_rho(result.params, {"w": w, "b": b}) <= tolerance
        assert float(np.max(gradlab.rho(result.losses, losses))) <= tolerance
        assert result.step == 60
        assert result.status == "completed"


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_init_defaults_to_the_declared_start_zeros(engine: str) -> None:
    require_engine(engine)
    optimizer = gradlab.sgd(1e-4)
    default = gradlab.fit(QUADRATIC, DATA, engine=engine, optimizer=optimizer, steps=30)
    w, b, losses = seed_loop(DATA, 0.0, 0.0, 1e-4, 30)
    assert gradlab.max_rho(default.params, {"w": w, "b": b}) <= 1e-12
    assert float(np.max(gradlab.rho(default.losses, losses))) <= 1e-12
    prepared = gradlab.prepare_fit(QUADRATIC, DATA, engine=engine, optimizer=optimizer)
    assert np.array_equal(prepared.run(steps=30).losses, default.losses)


def test_the_default_start_of_an_mlp_is_drawn_from_seed() -> None:
    problem = gradlab.MLP(hidden=(4,))
    data = problem.make_data(20, seed=0)
    options: dict[str, Any] = {"engine": "numpy", "optimizer": gradlab.sgd(1e-2), "steps": 3}
    for seed in (0, 1):
        drawn = gradlab.fit(problem, data, seed=seed, **options)
        given = gradlab.fit(problem, data, init=problem.initial_params(data, seed=seed), **options)
        assert np.array_equal(drawn.losses, given.losses)
    assert not np.array_equal(
        gradlab.fit(problem, data, seed=0, **options).losses,
        gradlab.fit(problem, data, seed=1, **options).losses,
    )


def test_a_problem_without_declared_shapes_needs_init_named() -> None:
    def loss(p: Any, d: Any, xp: Any) -> Any:
        return xp.sum((p["w"] * d["x"] - d["y"]) ** 2)

    problem = gradlab.Problem(loss)
    data = {"x": np.arange(4.0), "y": np.ones(4)}
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.fit(problem, data, engine="numpy", optimizer=gradlab.sgd(0.1), steps=2)
    assert caught.value.argument == "init"
    prepared = gradlab.prepare_fit(problem, data, engine="fd", optimizer=gradlab.sgd(0.1))
    with pytest.raises(gradlab.ArgumentError) as caught:
        prepared.run(steps=2)
    assert caught.value.argument == "init"
    # With init, a prepared fit of such a problem runs, and a second start of another shape
    # is prepared afresh (checked in full, as the first).
    prepared = gradlab.prepare_fit(problem, data, engine="fd", optimizer=gradlab.sgd(0.01))
    first = prepared.run(init={"w": 0.5}, steps=5)
    fresh = gradlab.fit(
        problem, data, engine="fd", optimizer=gradlab.sgd(0.01), init={"w": 0.5}, steps=5
    )
    assert np.array_equal(first.losses, fresh.losses)
    with pytest.raises(gradlab.ArgumentError) as caught:
        prepared.run(init={"w": 0.5, "v": 1.0}, steps=5)
    assert caught.value.argument == "init"


def test_a_prepared_fit_holds_its_own_copy_of_the_data() -> None:
    data = {name: value.copy() for name, value in DATA.items()}
    prepared = gradlab.prepare_fit(QUADRATIC, data, engine="numpy", optimizer=gradlab.sgd(1e-4))
    before = prepared.run(steps=10)
    data["x"][:] = 0.0  # the caller changes its arrays: the prepared fit is not stale
    after = prepared.run(steps=10)
    assert np.array_equal(before.losses, after.losses)
    *_, losses = seed_loop(DATA, 0.0, 0.0, 1e-4, 10)
    assert float(np.max(gradlab.rho(after.losses, losses))) <= 1e-12


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_resume_through_a_prepared_fit_ends_where_one_fit_does(engine: str) -> None:
    require_engine(engine)
    prepared = gradlab.prepare_fit(
        QUADRATIC, DATA, engine=engine, optimizer=gradlab.adam(0.05), batch_size=8, seed=2
    )
    whole = prepared.run(steps=40)
    first = prepared.run(steps=15)
    rest = prepared.run(steps=25, resume=first)
    assert rest.step == 40
    assert gradlab.max_rho(rest.params, whole.params) <= 1e-13
    with pytest.raises(gradlab.ArgumentError) as caught:
        prepared.run(init={"w": 0.0, "b": 0.0}, steps=5, resume=first)
    assert caught.value.argument == "init"


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"optimizer": "adam"}, "optimizer"),
        ({"engine": "no-such-engine"}, "engine"),
        ({"dtype": "float16"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 51}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"data": {"x": np.ones(3)}}, "data"),
    ],
)
def test_bad_arguments_are_refused_at_prepare_naming_them(
    options: dict[str, Any], argument: str
) -> None:
    arguments: dict[str, Any] = {
        "engine": "numpy",
        "optimizer": gradlab.sgd(0.1),
        "data": DATA,
        **options,
    }
    data = arguments.pop("data")
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.prepare_fit(QUADRATIC, data, **arguments)
    assert str(caught.value.argument).startswith(argument)


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"steps": 0}, "steps"),
        ({"init": {"w": 1.0}}, "init"),
        ({"init": {"w": 1.0, "b": [1.0, 2.0]}}, "init"),
        ({"every": 0}, "every"),
        ({"trajectory": "yes"}, "trajectory"),
        ({"stop": 3}, "stop"),
        ({"resume": "last"}, "resume"),
    ],
)
def test_bad_run_arguments_are_refused_naming_them(options: dict[str, Any], argument: str) -> None:
    prepared = gradlab.prepare_fit(QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(0.1))
    run: dict[str, Any] = {"steps": 5, **options}
    with pytest.raises(gradlab.ArgumentError) as caught:
        prepared.run(**run)
    assert str(caught.value.argument).startswith(argument)
    assert prepared.run(steps=2).status == "completed"  # still usable after a refusal
