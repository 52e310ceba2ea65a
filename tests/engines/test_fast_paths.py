"""The fast paths change how the loop runs, never what it computes.

jax unrolls its compiled scan, torch can compile the loss, the gradient and the loop body,
and the numpy engine's hand gradients build their temporaries in place. Each is checked
against an independent oracle: the numpy engine (the seed's derivation) or the problem's
loss evaluated in NumPy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import recipes

PROBLEMS = [gradlab.Quadratic(), gradlab.LinearRegression(), gradlab.LogisticRegression()]


def _point(problem: Any, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shapes = problem.param_shapes(problem.check_data(data))
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(shape) for name, shape in shapes.items()}


@pytest.mark.parametrize("steps", [800, 803, 3])
def test_jax_unrolled_loop_lands_where_the_hand_derivation_does(steps: int) -> None:
    require_engine("jax")
    recipe = recipes.seed_numpy()
    hand = recipe.run("numpy", steps=steps)
    for unroll in (1, 8):
        result = recipe.run(gradlab.engines.JaxEngine(unroll=unroll), steps=steps)
        assert len(result.losses) == steps
        assert gradlab.max_rho(result.params, hand.params) <= 1e-12
        assert np.max(gradlab.rho(result.losses, hand.losses)) <= 1e-12


def test_jax_unroll_must_be_a_positive_integer() -> None:
    require_engine("jax")
    with pytest.raises(gradlab.ArgumentError, match="unroll"):
        gradlab.engines.JaxEngine(unroll=0)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_engines_objective_is_the_loss(problem: Any, dtype: str) -> None:
    data = problem.make_data(50, seed=3)
    params = _point(problem, data)
    expected = problem.loss(params, data, np)
    for name in gradlab.available_engines():
        if name == "torch-compile":
            continue  # compiled: checked on its own below
        engine: Any = gradlab.get_engine(name)  # objective and block are optional members
        loss = engine.objective(problem)(
            {k: engine.asarray(v, dtype) for k, v in params.items()},
            {k: engine.asarray(v, dtype) for k, v in data.items()},
        )
        value = engine.to_numpy(engine.block(loss))
        assert value.dtype == np.dtype(dtype), name
        limit = 1e-12 if dtype == "float64" else 1e-5
        if name == "mlx" and dtype == "float64":
            limit = 1e-6  # MLX's float64 exp is a float32 approximation (mlx#3047)
        assert gradlab.rho(value, expected) <= limit, name


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_hand_gradients_never_touch_the_data_or_the_parameters(problem: Any) -> None:
    data = problem.make_data(40, seed=2)
    params = _point(problem, data)
    data_before = {k: v.copy() for k, v in data.items()}
    params_before = {k: v.copy() for k, v in params.items()}
    problem.hand_value_and_grad(params, data)
    for name in data:
        np.testing.assert_array_equal(data[name], data_before[name])
    for name in params:
        np.testing.assert_array_equal(params[name], params_before[name])


@pytest.mark.parametrize("n", [1_000, 150_000], ids=["small", "large"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_seed_hand_gradient_is_the_formula_on_either_side_of_its_size_switch(
    n: int, dtype: str
) -> None:
    """Quadratic's hand gradient takes Σ r·x² one way below 10⁵ points and another above:
    both are ½Σr², Σr·x², Σr with r = w·x² + b − y, here in float64 ``math.fsum``."""
    import math

    problem = gradlab.Quadratic()
    data = {k: v.astype(dtype) for k, v in problem.make_data(n, seed=5).items()}
    params = {"w": np.asarray(0.7, dtype), "b": np.asarray(-0.3, dtype)}
    loss, grads = problem.hand_value_and_grad(params, data)
    x, y = data["x"].astype(np.float64), data["y"].astype(np.float64)
    r = 0.7 * x * x - 0.3 - y
    expected = (0.5 * math.fsum(r * r), math.fsum(r * x * x), math.fsum(r))
    tolerance = 1e-12 if dtype == "float64" else 1e-4
    for value, exact in zip((loss, grads["w"], grads["b"]), expected, strict=True):
        assert np.asarray(value).dtype == np.dtype(dtype)
        assert gradlab.rho(float(value), exact) <= tolerance


def test_logistic_hand_gradient_stays_accurate_in_both_tails() -> None:
    """σ(z) = exp(z − softplus(z)) must not lose the tails: |z| up to 700, against float64 math."""
    problem = gradlab.LogisticRegression()
    z = np.array([-700.0, -40.0, -1.0, 0.0, 1.0, 40.0, 700.0])
    data = {"x": z[:, None], "y": np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])}
    params = {"w": np.ones(1), "b": np.float64(0.0)}
    loss, grads = problem.hand_value_and_grad(params, data)
    sigma = np.where(
        z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z)))
    )
    error = sigma - data["y"]
    assert np.isfinite(loss)
    assert gradlab.rho(grads["w"], np.array([np.mean(error * z)])) <= 1e-14
    assert gradlab.rho(grads["b"], np.mean(error)) <= 1e-14


def test_torch_compile_is_an_opt_in_engine_named_for_what_it_is() -> None:
    require_engine("torch")
    assert "torch-compile" in gradlab.known_engines()
    compiled = gradlab.get_engine("torch-compile")
    assert isinstance(compiled, gradlab.engines.TorchCompileEngine)
    assert isinstance(compiled, gradlab.engines.TorchEngine)  # a variant: a subclass
    assert compiled.name == "torch-compile"
    assert compiled.describe()["torch_compile"] is True
    assert gradlab.get_engine("torch").name == "torch"
    problem = gradlab.Quadratic()
    data = problem.make_data(10)
    report = gradlab.compare_gradients(problem, data, {"w": 1.0, "b": 0.0})
    assert "torch-compile" not in report.engines
    assert "torch" in report.engines
    with pytest.raises(gradlab.ArgumentError, match="compile"):
        gradlab.get_engine("torch", compile="yes")


def test_torch_compile_agrees_with_the_hand_derivation_and_leaves_dynamo_config_alone() -> None:
    require_engine("torch")
    import torch

    limit = torch._dynamo.config.recompile_limit
    engine = gradlab.get_engine("torch-compile")
    problem = gradlab.LogisticRegression()
    data = problem.make_data(64, seed=4)
    report = gradlab.compare_gradients(
        problem, data, _point(problem, data), engines=["numpy", engine]
    )
    assert report.ok, report
    assert report.verdicts["torch-compile"].rho <= 1e-13
    recipe = recipes.seed_numpy()
    compiled = recipe.run(engine, steps=60)
    hand = recipe.run("numpy", steps=60)
    assert gradlab.max_rho(compiled.params, hand.params) <= 1e-12
    assert np.max(gradlab.rho(compiled.losses, hand.losses)) <= 1e-12
    # A second fit, from a new engine object, finds what the first compiled.
    again = recipe.run(gradlab.get_engine("torch-compile"), steps=60)
    np.testing.assert_array_equal(again.losses, compiled.losses)
    assert torch._dynamo.config.recompile_limit == limit


@pytest.mark.parametrize("steps", [21, 5])
def test_torch_compile_unrolled_graphs_land_where_one_step_graphs_and_the_hand_do(
    steps: int,
) -> None:
    """21 steps: two graphs of 8 and a remainder of 5 single steps; 5: single steps only."""
    require_engine("torch")
    recipe = dataclasses.replace(recipes.seed_numpy(), optimizer=gradlab.adam(0.01))
    hand = recipe.run("numpy", steps=steps)
    unrolled = recipe.run(gradlab.engines.TorchCompileEngine(unroll=8), steps=steps)
    single = recipe.run(gradlab.engines.TorchCompileEngine(unroll=1), steps=steps)
    for result in (unrolled, single):
        assert len(result.losses) == steps
        assert gradlab.max_rho(result.params, hand.params) <= 1e-12
        assert np.max(gradlab.rho(result.losses, hand.losses)) <= 1e-12
    assert gradlab.max_rho(unrolled.state, single.state) <= 1e-12  # Adam's moments too


def test_torch_compile_unroll_must_be_a_positive_integer() -> None:
    require_engine("torch")
    bad: list[Any] = [0, -1, 2.5, True]
    for unroll in bad:
        with pytest.raises(gradlab.GradlabError, match="unroll"):
            gradlab.engines.TorchCompileEngine(unroll=unroll)


@pytest.mark.parametrize("device", [None, "cpu"])
@pytest.mark.parametrize("rows", [5, 70_000], ids=["small", "large"])
def test_jax_moves_many_arrays_in_one_call_as_it_moves_each(device: str | None, rows: int) -> None:
    """One transfer for data and parameters (a jitted identity, or ``device_put`` for large
    arrays): the same values and dtypes as one at a time, brought back as writable copies,
    and the caller's arrays never written."""
    require_engine("jax")
    engine = gradlab.engines.JaxEngine(device=device)
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(rows), rng.standard_normal((2, 3)), np.array(0.25)]
    before = [array.copy() for array in arrays]
    for dtype in ("float64", "float32"):
        together = engine.asarrays(arrays, dtype)
        alone = [engine.asarray(array, dtype) for array in arrays]
        back = engine.to_numpy_all(together)
        for array, moved, single, host in zip(arrays, together, alone, back, strict=True):
            assert str(moved.dtype) == dtype
            assert moved.shape == array.shape
            np.testing.assert_array_equal(np.asarray(moved), np.asarray(single))
            np.testing.assert_array_equal(host, array.astype(dtype))
            assert host.flags.writeable
            host[...] = 7.0  # writing the copy leaves the caller's array alone
    for array, kept in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(array, kept)


def test_an_engine_without_the_batched_moves_gets_them_from_its_single_ones() -> None:
    """The optional asarrays / to_numpy_all fall back to asarray / to_numpy, one array at a
    time, for an engine written against the bare protocol."""
    from gradlab.engines._protocol import asarrays_of, to_numpy_all_of

    class Bare:
        name, xp = "bare", np

        def __init__(self) -> None:
            self.moved: list[str] = []

        def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
            self.moved.append("in")
            return np.array(array, dtype=dtype)

        def to_numpy(self, array: np.ndarray) -> np.ndarray:
            self.moved.append("out")
            return np.array(array)

    engine = Bare()
    arrays = [np.arange(3.0), np.ones((2, 2))]
    moved = asarrays_of(engine)(arrays, "float32")  # type: ignore[arg-type]
    assert [array.dtype for array in moved] == [np.float32, np.float32]
    back = to_numpy_all_of(engine)(moved)  # type: ignore[arg-type]
    np.testing.assert_array_equal(back[1], arrays[1])
    assert engine.moved == ["in", "in", "out", "out"]


@pytest.mark.parametrize("member", ["asarrays", "to_numpy_all"])
def test_a_plug_in_whose_batched_move_loses_an_array_is_named(member: str) -> None:
    """A batched move that returns fewer arrays than it was given would misalign data and
    parameters: the fit stops with an error naming the engine."""

    class Lossy(gradlab.engines.NumpyEngine):
        name = "lossy"

        def asarrays(self, arrays: Any, dtype: str) -> list[Any]:
            moved = super().asarrays(arrays, dtype)
            return moved[:-1] if member == "asarrays" else moved

        def to_numpy_all(self, arrays: Any) -> list[Any]:
            back = super().to_numpy_all(arrays)
            return back[:-1] if member == "to_numpy_all" else back

    recipe = recipes.seed_numpy()
    with pytest.raises(gradlab.ArgumentError, match=f"lossy.*{member} returned"):
        recipe.run(Lossy(), steps=3)


def test_torch_compile_compiles_an_adam_loop_once_and_lands_where_numpy_does() -> None:
    """Adam's step count changes every step; compiled code must not be specialised on it."""
    require_engine("torch")
    from gradlab.engines import _torch

    recipe = dataclasses.replace(recipes.seed_numpy(), optimizer=gradlab.adam(0.01))
    before = len(_torch._COMPILED)
    compiled = recipe.run("torch-compile", steps=40)
    # The gradient (checked once before the loop) and the loop body (8 steps per graph,
    # no remainder in 40): each compiled once, not once per step.
    assert len(_torch._COMPILED) - before == 2
    hand = recipe.run("numpy", steps=40)
    assert gradlab.max_rho(compiled.params, hand.params) <= 1e-12
    assert np.max(gradlab.rho(compiled.losses, hand.losses)) <= 1e-12


class _WithoutConstants(gradlab.Quadratic):
    """The seed's problem with the constants hook switched off: x² again at every step."""

    def constants(self, data: Any) -> dict[str, np.ndarray]:
        return {}


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "fd"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_constants_made_once_per_fit_change_nothing_but_the_time(
    engine: str, dtype: str, batch_size: int | None
) -> None:
    """x², made once per fit by ``Quadratic.constants``, gives the same path to the last
    bit as x² computed at every step (the same product, rounded once, in the run's dtype);
    fd in float32 is the one exception, explained below."""
    require_engine(engine)
    data = gradlab.Quadratic().make_data(30, seed=4)
    runs = [
        gradlab.fit(
            problem,
            data,
            engine=engine,
            dtype=dtype,
            optimizer=gradlab.adam(0.05),
            steps=40,
            init={"w": 0.5, "b": -0.5},
            batch_size=batch_size,
            trajectory=True,
        )
        for problem in (gradlab.Quadratic(), _WithoutConstants())
    ]
    if engine == "fd" and dtype == "float32":
        # fd differences in float64: without constants it squares x in float64, with them
        # it reads x² rounded to float32, like every other engine of a float32 run.
        np.testing.assert_allclose(runs[0].losses, runs[1].losses, rtol=1e-6)
        return
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
    for name in ("w", "b"):
        np.testing.assert_array_equal(runs[0].trajectory[name], runs[1].trajectory[name])


@pytest.mark.parametrize(
    ("made", "batch_size", "match"),
    [
        ({"x": np.zeros(30)}, None, "'x', a name the data already uses"),
        ({"c": np.zeros(30, np.float32)}, None, "in float32, not float64"),
        ({"c": np.float64(1.0)}, 5, "mini-batches need one row per data row"),
        ([np.zeros(30)], None, "must return a dict of named arrays"),
    ],
)
def test_bad_constants_are_the_problems_fault(made: Any, batch_size: Any, match: str) -> None:
    class Bad(gradlab.Quadratic):
        def constants(self, data: Any) -> Any:
            return made

    with pytest.raises(gradlab.ProblemError, match=match) as raised:
        gradlab.fit(
            Bad(),
            gradlab.Quadratic().make_data(30),
            engine="numpy",
            optimizer=gradlab.sgd(1e-3),
            steps=3,
            init={"w": 0.0, "b": 0.0},
            batch_size=batch_size,
        )
    assert raised.value.function == "constants"


def test_constants_are_made_once_per_fit() -> None:
    calls = []

    class Counted(gradlab.Quadratic):
        def constants(self, data: Any) -> dict[str, np.ndarray]:
            calls.append(1)
            return super().constants(data)

    gradlab.fit(
        Counted(),
        gradlab.Quadratic().make_data(30),
        engine="numpy",
        optimizer=gradlab.sgd(1e-3),
        steps=50,
        init={"w": 0.0, "b": 0.0},
    )
    assert len(calls) == 1


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_the_optimizer_state_a_fit_returns_is_the_same_however_it_is_brought_back(
    engine: str,
) -> None:
    """The state comes back with the last stretch's results (one transfer), or on its own
    when a rule ended the fit before its last stretch: Adam's moments and count, the same
    either way as in one uninterrupted stretch."""
    require_engine(engine)
    recipe = recipes.seed_numpy()

    def fit(steps: int, **how: Any) -> Any:
        return gradlab.fit(
            recipe.problem,
            recipe.data,
            engine=engine,
            optimizer=gradlab.adam(0.01),
            steps=steps,
            init=recipe.init,
            **how,
        )

    whole = fit(20)
    # A callback cuts the fit into stretches of 7, 7 and 6 steps.
    pieces = fit(20, callback=lambda *_: None, every=7)
    # A callback that stops after the first stretch: no last stretch.
    stopped = fit(20, callback=lambda *_: True, every=7)
    short = fit(7)
    for result, reference in ((pieces, whole), (stopped, short)):
        assert result.state.count == reference.state.count
        for moment in ("mu", "nu"):
            # Equal to round-off: jax compiles a loop per stretch length, which XLA may fuse
            # differently; a misplaced or stale moment would be off by far more.
            got, want = getattr(result.state, moment), getattr(reference.state, moment)
            assert gradlab.max_rho(got, want) <= 1e-12, (moment, got, want)
