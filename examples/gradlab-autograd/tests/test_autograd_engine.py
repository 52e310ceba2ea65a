"""The plug-in, as a user meets it: found through the entry point, agreeing with gradlab's
hand-derived gradients on every shipped problem, running the one loop, on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import gradlab
from gradlab.problems._named import NAMED_PROBLEMS, at_size
from gradlab.testing import EngineConformance


class TestConformance(EngineConformance):
    """gradlab's conformance suite (agreement, dtypes, the loop, global state, bad input),
    the one every built-in engine passes: one class is the whole hook."""

    engine = "autograd"


def test_the_entry_point_registers_the_engine() -> None:
    assert "autograd" in gradlab.available_engines()
    engine = gradlab.get_engine("autograd")
    assert engine.name == "autograd"
    assert isinstance(engine, gradlab.GradientEngine)
    assert engine.describe()["framework"] == "autograd"


@pytest.mark.parametrize("name", sorted(NAMED_PROBLEMS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_agree_with_the_hand_derivation(name: str, dtype: str) -> None:
    problem = at_size(NAMED_PROBLEMS[name](), 7)
    data = problem.make_data(40, seed=3)  # type: ignore[attr-defined]
    rng = np.random.default_rng(4)
    shapes = problem.param_shapes(problem.check_data(data)) or {}
    params = {key: 0.5 * rng.standard_normal(shape) for key, shape in shapes.items()}
    report = gradlab.compare_gradients(
        problem, data, params, engines="numpy,autograd,fd", dtype=dtype
    )
    assert report.ok, str(report)
    limit = 1e-13 if dtype == "float64" else 1e-5
    assert report.verdicts["autograd"].rho <= limit


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock", "log_sum_exp", "softmax_regression"])
def test_hessian_vector_products_agree_with_the_hand_derivation(name: str) -> None:
    problem = at_size(NAMED_PROBLEMS[name](), 5)
    data = problem.make_data(20, seed=1)  # type: ignore[attr-defined]
    rng = np.random.default_rng(2)
    shapes = problem.param_shapes(problem.check_data(data)) or {}
    params = {key: 0.5 * rng.standard_normal(shape) for key, shape in shapes.items()}
    tangent = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
    hand = gradlab.hvp(problem, data, params, tangent, engine="numpy")
    ours = gradlab.hvp(problem, data, params, tangent, engine="autograd")
    assert gradlab.max_rho(hand, ours) <= 1e-12


def test_the_seed_fit_lands_where_the_seed_does() -> None:
    recipe = gradlab.recipes.seed_numpy()
    hand, ours = recipe.run("numpy"), recipe.run("autograd")
    assert ours.status == "completed"
    assert gradlab.max_rho(hand.params, ours.params) <= 1e-12


def test_gradlab_compare_picks_it_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradlab", "compare", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "autograd" in report["engines"]
    assert report["verdicts"]["autograd"]["agrees"]
