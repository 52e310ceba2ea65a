"""The seed tutorial's two runs, reproduced: the seed's own code is the oracle.

The functions ``seed_numpy_run`` and ``seed_torch_run`` below are the tutorial's code
(``../shared/seed/``), with its typos fixed (``3*.x`` → ``3*x``, ``torch.`` → ``t.``) and
wrapped in functions that return the final parameters and losses. Nothing here is copied
from gradlab's output.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import relative_error, require_engine

from gradlab import recipes


def seed_numpy_run() -> tuple[float, float, float]:
    """The seed's NumPy run, verbatim but for the return; restores the global RNG after."""
    saved = np.random.get_state()
    try:
        np.random.seed(100)
        x = np.linspace(-1, 1, 100).reshape(100, 1)
        y = 3 * np.power(x, 2) + 2 + 0.2 * np.random.rand(x.size).reshape(100, 1)
        w1 = np.random.rand(1, 1)
        b1 = np.random.rand(1, 1)

        # The seed rebinds w1 and b1 from (1, 1) arrays to floats.
        w1 = np.random.randn()  # type: ignore[assignment]
        b1 = np.random.randn()  # type: ignore[assignment]
        lr = 0.001

        for i in range(800):
            y_pred = np.power(x, 2) * w1 + b1
            loss = 0.5 * np.sum((y_pred - y) ** 2)
            grad_w = np.sum((y_pred - y) * np.power(x, 2))
            grad_b = np.sum(y_pred - y)
            w1 -= lr * grad_w
            b1 -= lr * grad_b
        return float(w1), float(b1), float(loss)
    finally:
        np.random.set_state(saved)


def seed_torch_run() -> tuple[float, float, float]:
    """The seed's torch run, typos fixed; restores torch's global RNG after."""
    t = pytest.importorskip("torch")
    saved = t.random.get_rng_state()
    try:
        t.manual_seed(100)
        dtype = t.float
        x = t.unsqueeze(t.linspace(-1, 1, 100), dim=1)
        y = 3 * x.pow(2) + 2 + 0.2 * t.rand(x.size())
        w = t.randn(1, 1, dtype=dtype, requires_grad=True)
        b = t.zeros(1, 1, dtype=dtype, requires_grad=True)
        lr = 0.001
        for ii in range(800):
            y_pred = x.pow(2).mm(w) + b
            loss = 0.5 * (y_pred - y).pow(2).sum()
            loss.backward()
            with t.no_grad():
                w -= lr * w.grad
                b -= lr * b.grad
                w.grad.zero_()
                b.grad.zero_()
        return w.item(), b.item(), loss.item()
    finally:
        t.random.set_rng_state(saved)


def test_numpy_recipe_on_numpy_engine_matches_the_seed() -> None:
    w, b, last_loss = seed_numpy_run()
    result = recipes.seed_numpy().run("numpy")
    assert result.status == "completed"
    assert relative_error(result.params["w"], w) <= 1e-12
    assert relative_error(result.params["b"], b) <= 1e-12
    # The seed's `loss` after the loop is the loss of its last step, before the last update.
    assert relative_error(result.final_loss, last_loss) <= 1e-12


def test_torch_recipe_on_torch_engine_matches_the_seed() -> None:
    require_engine("torch")
    w, b, last_loss = seed_torch_run()
    result = recipes.seed_torch().run("torch")
    assert result.status == "completed"
    assert result.dtype == "float32"
    assert result.params["w"].dtype == np.float32
    assert relative_error(result.params["w"], w) <= 1e-6
    assert relative_error(result.params["b"], b) <= 1e-6
    assert relative_error(result.final_loss, last_loss) <= 1e-6


def test_recipes_replay_the_seed_data_and_start() -> None:
    """The recipe's data and init are the seed's, draw for draw (no global RNG touched)."""
    saved = np.random.get_state()
    np.random.seed(100)
    x = np.linspace(-1, 1, 100).reshape(100, 1)
    y = 3 * np.power(x, 2) + 2 + 0.2 * np.random.rand(x.size).reshape(100, 1)
    np.random.rand(1, 1)
    np.random.rand(1, 1)
    w, b = np.random.randn(), np.random.randn()
    np.random.set_state(saved)
    before = np.random.get_state(legacy=False)["state"]["key"].copy()
    recipe = recipes.seed_numpy()
    assert np.array_equal(np.random.get_state(legacy=False)["state"]["key"], before)
    np.testing.assert_array_equal(recipe.data["x"], x[:, 0])
    np.testing.assert_array_equal(recipe.data["y"], y[:, 0])
    assert float(recipe.init["w"]) == w
    assert float(recipe.init["b"]) == b
    assert (recipe.steps, recipe.dtype) == (800, "float64")
    assert not recipe.data["x"].flags.writeable


RECIPES = {"seed_numpy": recipes.seed_numpy, "seed_torch": recipes.seed_torch}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_on_every_engine_in_float64_ends_at_the_same_place(
    name: str, engine: str
) -> None:
    if name == "seed_torch":
        require_engine("torch")
    recipe = RECIPES[name]()
    reference = recipe.run("numpy", dtype="float64")
    result = recipe.run(engine, dtype="float64")
    assert result.status == "completed"
    assert result.params["w"].dtype == np.float64
    for param in ("w", "b"):
        assert relative_error(result.params[param], reference.params[param]) <= 1e-9


def test_seed_torch_recipe_leaves_torch_global_rng_alone() -> None:
    require_engine("torch")
    import torch

    before = torch.random.get_rng_state()
    recipe = recipes.seed_torch()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert (recipe.steps, recipe.dtype) == (800, "float32")
    assert recipe.data["x"].dtype == np.float32
