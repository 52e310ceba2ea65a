"""Property tests: every engine's gradient agrees with the hand-derived one and with fd.

Agreement is measured in rho = |a − b| / max(1, |a| + |b|) (ADBench/GradBench). Oracles:
the hand-derived NumPy gradient (mathematics), central finite differences (no derivation at
all), and the engines against each other. The tolerances are gradlab's own table
(``gradlab.tolerance``), justified in docs/agreement.md.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from _helpers import BUILTIN_ENGINES, examples, fewer
from _strategies import CASES
from hypothesis import given

import gradlab


def gradient(engine: str, case: tuple[Any, Any, Any], dtype: str = "float64") -> dict[str, Any]:
    problem, data, params = case
    grads: dict[str, Any]
    _, grads = gradlab.value_and_grad(problem, data, params, engine=engine, dtype=dtype)
    return grads


@pytest.mark.parametrize("problem", sorted(CASES))
def test_engine_agrees_with_hand_gradient_in_float64(problem: str, engine: str) -> None:
    limit = gradlab.tolerance("float64", against_fd=engine == "fd")

    @examples(problem, engine=engine)
    @given(CASES[problem])
    def check(case: tuple[Any, Any, Any]) -> None:
        grads = gradient(engine, case)
        assert all(g.dtype == np.float64 for g in grads.values())
        assert gradlab.max_rho(gradient("numpy", case), grads) <= limit

    check()


@pytest.mark.parametrize("problem", sorted(CASES))
def test_hand_gradient_agrees_with_finite_differences(problem: str) -> None:
    """The hand derivations themselves, checked the way ADBench checks its Manual module."""

    @examples(problem)
    @given(CASES[problem])
    def check(case: tuple[Any, Any, Any]) -> None:
        assert gradlab.max_rho(gradient("fd", case), gradient("numpy", case)) <= 1e-6

    check()


@pytest.mark.parametrize("problem", sorted(CASES))
def test_installed_engines_agree_with_each_other(problem: str) -> None:
    engines = [name for name in BUILTIN_ENGINES if name in gradlab.available_engines()]

    # Each example compiles on jax: as few as there (each engine meets the hand gradient at
    # every draw above, which bounds each pair).
    @examples(problem, engine="jax" if "jax" in engines else "")
    @given(CASES[problem])
    def check(case: tuple[Any, Any, Any]) -> None:
        grads = {name: gradient(name, case) for name in engines}
        for a, b in itertools.combinations(engines, 2):
            limit = gradlab.tolerance("float64", against_fd="fd" in (a, b))
            assert gradlab.max_rho(grads[a], grads[b]) <= limit, (a, b)

    check()


@pytest.mark.parametrize("problem", sorted(CASES))
def test_engine_agrees_in_float32(problem: str, engine: str) -> None:
    """float32 gradients against the float64 hand gradient at the same float32 point."""

    @fewer(problem, engine=engine)
    @given(CASES[problem])
    def check(case: tuple[Any, Any, Any]) -> None:
        problem_, data, params = case
        # Round the inputs to float32 first, so that only the arithmetic differs.
        data = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in data.items()}
        params = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in params.items()}
        grads = gradient(engine, (problem_, data, params), "float32")
        assert all(g.dtype == np.float32 for g in grads.values())
        truth = gradient("numpy", (problem_, data, params), "float64")
        assert gradlab.max_rho(truth, grads) <= gradlab.tolerance("float32")

    check()


def test_losses_agree_across_engines(engine: str) -> None:
    problem = gradlab.LogisticRegression()
    data = problem.make_data(n=300, d=4, seed=3)
    params = {"w": np.array([0.5, -1.0, 2.0, 0.1]), "b": 0.3}
    loss, _ = gradlab.value_and_grad(problem, data, params, engine=engine)
    reference, _ = gradlab.value_and_grad(problem, data, params, engine="numpy")
    assert float(gradlab.rho(loss, reference)) <= 1e-12


@pytest.mark.parametrize("z", [-800.0, -40.0, 0.0, 40.0, 800.0])
def test_logistic_loss_is_stable_in_the_tails(engine: str, z: float) -> None:
    """Mathematics as oracle: the per-sample loss is softplus(z) − y·z, its slope σ(z) − y."""
    problem = gradlab.LogisticRegression()
    data = {"x": np.array([[1.0]]), "y": np.array([1.0])}
    loss, grads = gradlab.value_and_grad(problem, data, {"w": [z], "b": 0.0}, engine=engine)
    expected_loss = np.logaddexp(0.0, z) - z  # softplus(z) − z = softplus(−z)
    # σ(z) − 1 = −σ(−z), evaluated on the side where exp cannot overflow.
    expected_slope = -math.exp(-z) / (1 + math.exp(-z)) if z >= 0 else -1 / (1 + math.exp(z))
    assert np.isfinite(loss)
    assert float(gradlab.rho(loss, expected_loss)) <= 1e-12
    assert float(gradlab.rho(grads["w"][0], expected_slope)) <= 1e-9
