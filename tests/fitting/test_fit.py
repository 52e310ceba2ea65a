"""The one loop: identical trajectories on every engine, divergence, results, no host syncs."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from _helpers import default_engines

import gradlab
from gradlab.engines import NumpyEngine

OPTIMIZERS = {
    "sgd": lambda: gradlab.sgd(0.05),
    "momentum": lambda: gradlab.momentum(0.05, 0.9),
    "nesterov": lambda: gradlab.momentum(0.05, 0.9, nesterov=True),
    "adam": lambda: gradlab.adam(0.05),
}


def cases() -> dict[str, tuple[gradlab.AbstractProblem, dict[str, Any], dict[str, Any]]]:
    linear, logistic = gradlab.LinearRegression(), gradlab.LogisticRegression()
    return {
        "quadratic": (
            gradlab.Quadratic(),
            gradlab.Quadratic().make_data(40, seed=4),
            {"w": 0.5, "b": -0.5},
        ),
        "linear_regression": (
            linear,
            linear.make_data(60, d=3, seed=5),
            {"w": np.array([0.1, 0.2, -0.3]), "b": 0.0},
        ),
        "logistic_regression": (
            logistic,
            logistic.make_data(60, d=3, seed=6),
            {"w": np.array([0.5, -0.1, 0.2]), "b": 0.1},
        ),
    }


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("problem", sorted(cases()))
def test_trajectories_agree_with_the_hand_gradient_engine(
    problem: str, optimizer: str, engine: str
) -> None:
    """50 steps in float64: every loss along the path, and the iterates at 1, 10 and 50 steps."""
    problem_, data, init = cases()[problem]
    opt = OPTIMIZERS[optimizer]()
    reference = gradlab.fit(problem_, data, engine="numpy", optimizer=opt, steps=50, init=init)
    result = gradlab.fit(problem_, data, engine=engine, optimizer=opt, steps=50, init=init)
    assert result.ok
    assert reference.ok
    assert float(np.max(gradlab.rho(result.losses, reference.losses))) <= 1e-9
    for steps in (1, 10, 50):
        ours = gradlab.fit(problem_, data, engine=engine, optimizer=opt, steps=steps, init=init)
        hand = gradlab.fit(problem_, data, engine="numpy", optimizer=opt, steps=steps, init=init)
        assert gradlab.max_rho(ours.params, hand.params) <= 1e-9


def test_the_first_loss_is_the_loss_at_init_and_params_are_one_update_later(engine: str) -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(30, seed=8)
    init = {"w": 1.0, "b": 1.0}
    result = gradlab.fit(
        problem, data, engine=engine, optimizer=gradlab.sgd(0.01), steps=1, init=init
    )
    loss, grads = gradlab.value_and_grad(problem, data, init, engine="numpy")
    assert float(gradlab.rho(result.losses[0], loss)) <= 1e-12
    expected = {name: init[name] - 0.01 * grads[name] for name in init}
    assert gradlab.max_rho(result.params, expected) <= 1e-12


@pytest.mark.parametrize("callback", [False, True])
def test_results_keep_the_callers_parameter_order(engine: str, callback: bool) -> None:
    # jax returns dicts with sorted keys; "w" before "b" is not sorted, so a regression would
    # show here (the comparison table once printed jax's b under "final w").
    problem = gradlab.Quadratic()
    data = problem.make_data(20, seed=3)
    seen: list[list[str]] = []
    result = gradlab.fit(
        problem,
        data,
        engine=engine,
        optimizer=gradlab.sgd(0.01),
        steps=4,
        init={"w": 1.0, "b": -1.0},
        trajectory=True,
        callback=(lambda step, loss, params: seen.append(list(params))) if callback else None,
        every=2,
    )
    assert list(result.params) == ["w", "b"]
    assert result.trajectory is not None
    assert list(result.trajectory) == ["w", "b"]
    assert all(names == ["w", "b"] for names in seen)
    assert len(seen) == (2 if callback else 0)


def test_fit_comparison_table_shows_each_parameter_under_its_own_name() -> None:
    # Independent of gradlab's table: the final parameters by name from the results.
    problem = gradlab.Quadratic()
    data = problem.make_data(20, seed=3)
    engines = [name for name in default_engines() if name != "fd"]
    comparison = gradlab.compare_fits(
        problem,
        data,
        optimizer=gradlab.sgd(0.01),
        steps=5,
        init={"w": 1.0, "b": -1.0},
        engines=engines,
    )
    lines = str(comparison).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("engine"))
    header, rule = lines[at], lines[at + 1]
    # Column spans from the rule of dashes under the header.
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    titles = [header[a:b].strip() for a, b in spans]
    for name in engines:
        row = next(line for line in lines if line.startswith(name + " "))
        for param in ("w", "b"):
            a, b = spans[titles.index(f"final {param}")]
            shown = float(row[a:b])
            assert shown == pytest.approx(float(comparison.results[name].params[param]), rel=1e-8)


def seed_style_divergence(
    data: dict[str, np.ndarray], w: float, b: float, lr: float, steps: int
) -> int:
    """The seed's own loop, run until its loss or gradient stops being finite."""
    x, y = data["x"], data["y"]
    with np.errstate(all="ignore"):
        for i in range(steps):
            y_pred = np.power(x, 2) * w + b
            loss = 0.5 * np.sum((y_pred - y) ** 2)
            grad_w = np.sum((y_pred - y) * np.power(x, 2))
            grad_b = np.sum(y_pred - y)
            if not np.isfinite([loss, grad_w, grad_b]).all():
                return i
            w -= lr * grad_w
            b -= lr * grad_b
    return steps


def test_a_blown_up_fit_reports_diverged_at_the_right_step(engine: str) -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(100, seed=0)
    expected_step = seed_style_divergence(data, 1.0, 1.0, lr=0.5, steps=2000)
    assert 0 < expected_step < 2000  # the oracle did blow up
    result = gradlab.fit(
        problem,
        data,
        engine=engine,
        optimizer=gradlab.sgd(0.5),
        steps=2000,
        init={"w": 1.0, "b": 1.0},
    )
    assert result.status == "diverged"
    assert not result.ok
    assert result.diverged_at == expected_step
    assert len(result.losses) == expected_step
    assert np.all(np.isfinite(result.losses))
    # The reported params are exactly where an uninterrupted fit stands after that many steps.
    partial = gradlab.fit(
        problem,
        data,
        engine=engine,
        optimizer=gradlab.sgd(0.5),
        steps=expected_step,
        init={"w": 1.0, "b": 1.0},
    )
    assert gradlab.max_rho(result.params, partial.params) == 0.0


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_fit(engine: str) -> None:
    """√a at a = 0: the loss is 0, the slope is infinite (fd sees √(−h) = NaN)."""
    problem = gradlab.Problem(
        lambda p, d, xp: xp.sum(xp.sqrt(p["a"] * d["x"])),
        value_and_grad=lambda p, d: (
            np.sum(np.sqrt(p["a"] * d["x"])),
            {"a": np.sum(0.5 * d["x"] / np.sqrt(p["a"] * d["x"]))},
        ),
        name="sqrt",
    )
    result = gradlab.fit(
        problem,
        {"x": [1.0, 2.0]},
        engine=engine,
        optimizer=gradlab.sgd(0.1),
        steps=20,
        init={"a": 0.0},
    )
    assert result.status == "diverged"
    assert result.diverged_at == 0
    assert len(result.losses) == 0
    assert float(result.params["a"]) == 0.0


class CountingEngine(NumpyEngine):
    """The numpy engine, counting every trip of an array back to the host."""

    name = "counting"

    def __init__(self) -> None:
        self.conversions = 0

    def to_numpy(self, array: Any) -> np.ndarray:
        self.conversions += 1
        return super().to_numpy(array)


def test_the_loop_does_not_bring_values_to_the_host_every_step() -> None:
    engine = CountingEngine()
    result = gradlab.recipes.seed_numpy().run(engine)
    assert result.ok
    assert len(result.losses) == 800
    # The first gradient, checked once before the loop (its loss and two gradients), then the
    # loss history once and each parameter once: nothing per step.
    assert engine.conversions == 3 + 1 + 2


def test_fit_never_modifies_user_arrays(engine: str) -> None:
    problem = gradlab.LinearRegression()
    data = problem.make_data(20, d=2, seed=3)
    data["x"] = data["x"].astype(np.float32)  # a dtype different from the fit's
    init = {"w": np.array([1.0, -1.0]), "b": np.array(0.5)}
    copies = ({k: v.copy() for k, v in data.items()}, {k: v.copy() for k, v in init.items()})
    for array in [*data.values(), *init.values()]:
        array.flags.writeable = False  # any write attempt would raise
    gradlab.fit(problem, data, engine=engine, optimizer=gradlab.adam(0.1), steps=5, init=init)
    gradlab.value_and_grad(problem, data, init, engine=engine)
    for original, copy in zip((data, init), copies, strict=True):
        for name in original:
            np.testing.assert_array_equal(original[name], copy[name])
            assert original[name].dtype == copy[name].dtype


def test_result_carries_provenance(engine: str) -> None:
    result = gradlab.recipes.seed_numpy().run(engine, steps=3)
    facts = result.provenance
    for key in (
        "gradlab",
        "numpy",
        "torch",
        "jax",
        "python",
        "platform",
        "dtype",
        "device",
        "time",
        "cpu_count",
        "threads",
        "thread_env",
        "framework",
    ):
        assert key in facts, key
    assert facts["dtype"] == "float64"
    assert result.engine == engine
    assert result.problem == "quadratic"
    assert result.losses.flags.writeable
    assert all(value.flags.writeable for value in result.params.values())
    assert result.wall_time > 0
    assert result.time_per_step > 0
    assert "completed" in repr(result)
