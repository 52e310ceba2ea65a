"""What the jax engine compiles: one loop per body, unrolled as far as the body is small.

Compiling is what a real model's first jax fit pays for (seconds to a minute), so the loop
is compiled once per body and reused: a fit's shorter last stretch, a stop rule's cut and a
trajectory (recorded one step at a time through the plain loop when the body is large) run
the program the first stretch compiled, and land exactly where a fit without them does.
The unroll is chosen from the body's size: 8 for the seed's, 1 for a large body, where
unrolling multiplies the compile time and buys nothing per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import recipes

pytestmark = pytest.mark.filterwarnings("error")

#: Layers of the deep chain below: its loop body (gradient and Adam) has about 180 jaxpr
#: equations, past the size the engine unrolls, and compiles in about a second.
LAYERS = 6
DATA = {"x": np.linspace(-1.0, 1.0, 16), "y": 0.5 * np.linspace(-1.0, 1.0, 16)}
INIT = {"w": np.full(LAYERS, 0.9), "b": np.zeros(LAYERS)}


def _deep(params: Any, data: Any, xp: Any) -> Any:
    h = data["x"]
    for k in range(LAYERS):
        h = xp.tanh(h * params["w"][k] + params["b"][k])
    return xp.mean((h - data["y"]) ** 2)


def large_problem() -> gradlab.Problem:
    """A body too large to unroll (a fresh problem: nothing of it is compiled yet)."""
    return gradlab.Problem(_deep, name="deep")


def small_problem() -> gradlab.Problem:
    """The seed's model as a fresh problem: a body small enough to unroll 8 steps."""
    return gradlab.Problem(
        lambda p, d, xp: 0.5 * xp.sum((p["w"] * d["x"] ** 2 + p["b"] - d["y"]) ** 2),
        name="seed-like",
    )


SMALL_INIT = {"w": np.asarray(0.5), "b": np.asarray(0.1)}


def deep_fit(engine: Any, problem: gradlab.Problem, **options: Any) -> gradlab.FitResult:
    return gradlab.fit(
        problem,
        DATA,
        engine=engine,
        optimizer=gradlab.adam(0.01),
        init=INIT,
        **{"steps": 10, **options},
    )


def small_fit(engine: Any, problem: gradlab.Problem, **options: Any) -> gradlab.FitResult:
    return gradlab.fit(
        problem,
        recipes.seed_numpy().data,
        engine=engine,
        optimizer=gradlab.sgd(1e-3),
        init=SMALL_INIT,
        **{"steps": 10, **options},
    )


@contextlib.contextmanager
def loops_compiled() -> Iterator[list[float]]:
    """The compile times of the loop programs XLA compiles inside the block (jax's
    compile events of the jitted loop, ``jit(loop)``; ``jit(scan)`` before it was one)."""
    import jax

    times: list[float] = []

    def listen(event: str, duration_secs: float, **kwargs: str | int) -> None:
        loop = kwargs.get("fun_name") in ("jit(loop)", "jit(scan)")
        if loop and event == "/jax/core/compile/backend_compile_duration":
            times.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield times
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def same(a: gradlab.FitResult, b: gradlab.FitResult) -> bool:
    """Bit for bit the same losses and parameters."""
    return np.array_equal(a.losses, b.losses) and all(
        np.array_equal(a.params[name], b.params[name]) for name in a.params
    )


@pytest.fixture
def unrolls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The unroll of every loop the jax engine builds while the test runs."""
    require_engine("jax")
    from gradlab.engines import _jax

    seen: list[int] = []
    build = _jax._compiled_scan

    def recording(*args: Any) -> Any:
        seen.append(args[-1])
        return build(*args)

    monkeypatch.setattr(_jax, "_compiled_scan", recording)
    return seen


def test_the_unroll_shrinks_as_the_body_grows() -> None:
    require_engine("jax")
    from gradlab.engines._jax import _Body

    chosen = {size: _Body(size, 8).unroll for size in (1, 25, 32, 33, 64, 65, 128, 129, 1000)}
    assert chosen == {1: 8, 25: 8, 32: 8, 33: 4, 64: 4, 65: 2, 128: 2, 129: 1, 1000: 1}
    assert gradlab.engines.JaxEngine().unroll is None  # chosen per body


def test_the_seed_unrolls_8_steps_and_a_large_body_1(unrolls: list[int]) -> None:
    engine = gradlab.engines.JaxEngine()
    small_fit(engine, small_problem(), steps=800)
    assert unrolls == [8]
    deep_fit(engine, large_problem())
    assert unrolls == [8, 1]
    # An explicit unroll wins.
    small_fit(gradlab.engines.JaxEngine(unroll=2), small_problem(), steps=800)
    assert unrolls == [8, 1, 2]


def test_every_unroll_lands_on_the_seed_s_path_bit_for_bit() -> None:
    require_engine("jax")
    recipe = recipes.seed_numpy()
    for steps in (800, 803):
        chosen = recipe.run(gradlab.engines.JaxEngine(), steps=steps)
        for unroll in (1, 8):
            assert same(recipe.run(gradlab.engines.JaxEngine(unroll=unroll), steps=steps), chosen)
    # A larger body unrolled may be fused differently by XLA: the last bit can move (as it
    # could before the unroll was chosen), never more.
    problem = large_problem()
    chosen = deep_fit(gradlab.engines.JaxEngine(), problem)
    unrolled = deep_fit(gradlab.engines.JaxEngine(unroll=2), problem)
    assert gradlab.max_rho(unrolled.params, chosen.params) <= 1e-15
    assert float(np.max(gradlab.rho(unrolled.losses, chosen.losses))) <= 1e-15


def test_a_trajectory_after_a_fit_compiles_no_second_loop() -> None:
    """compare_fits' order: fits, then the one that records the path."""
    require_engine("jax")
    engine, problem = gradlab.engines.JaxEngine(), large_problem()
    with loops_compiled() as first:
        plain = deep_fit(engine, problem)
    with loops_compiled() as recording:
        path = deep_fit(engine, problem, trajectory=True)
    assert (len(first), len(recording)) == (1, 0)
    assert same(path, plain)
    assert path.trajectory is not None
    # The trajectory at step k is where a fit of k steps ends (fits the loop compiled for
    # 10 steps runs as well).
    with loops_compiled() as shorter:
        for k in (1, 4, 9):
            ended = deep_fit(engine, problem, steps=k).params
            for name in ("w", "b"):
                assert np.array_equal(path.trajectory[name][k], ended[name])
    assert shorter == []
    for name in ("w", "b"):
        assert np.array_equal(path.trajectory[name][0], INIT[name])
        assert np.array_equal(path.trajectory[name][-1], plain.params[name])


def test_a_trajectory_first_compiles_the_loop_a_plain_fit_then_reuses() -> None:
    require_engine("jax")
    engine, problem = gradlab.engines.JaxEngine(), large_problem()
    with loops_compiled() as recording:
        path = deep_fit(engine, problem, trajectory=True)
    with loops_compiled() as plain:
        again = deep_fit(engine, problem)
    assert (len(recording), len(plain)) == (1, 0)
    assert same(path, again)


def test_stretches_and_a_stop_rule_run_the_loop_the_first_stretch_compiled() -> None:
    """A callback every 4 of 10 steps runs stretches of 4, 4 and 2; a stop rule met inside
    a stretch runs its first updates again: one program serves every length up to its own."""
    require_engine("jax")
    engine, problem = gradlab.engines.JaxEngine(), small_problem()
    seen: list[int] = []
    with loops_compiled() as stretches:
        stretched = small_fit(engine, problem, callback=lambda step, *_: seen.append(step), every=4)
    assert seen == [4, 8, 10]
    with loops_compiled() as longer:
        whole = small_fit(engine, problem)
    threshold = float(whole.losses[6])
    with loops_compiled() as shorter:
        stopped = small_fit(engine, problem, stop=gradlab.Stop(loss=threshold, check_every=4))
        cut = small_fit(engine, problem, steps=6)
    assert (len(stretches), len(longer), len(shorter)) == (1, 1, 0)
    assert same(stretched, whole)
    assert stopped.stop_reason == "loss"
    assert stopped.step == 6
    assert all(np.array_equal(stopped.params[name], cut.params[name]) for name in cut.params)


def test_a_gradient_norm_rule_cuts_its_stretch_with_the_loop_that_ran_it() -> None:
    """The body that computes gradient norms is another program than the plain one: the cut
    runs the loop the stretch compiled, not the plain one."""
    require_engine("jax")
    engine, problem = gradlab.engines.JaxEngine(), small_problem()
    # The gradient norm at step 6, from the path by finite differences.
    path = small_fit("fd", problem, trajectory=True).trajectory
    assert path is not None
    at_6 = {name: path[name][6] for name in SMALL_INIT}
    _, grads = gradlab.value_and_grad(problem, recipes.seed_numpy().data, at_6, engine="jax")
    norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in grads.values())))
    with loops_compiled() as compiled:
        stopped = small_fit(
            engine, problem, stop=gradlab.Stop(grad_norm=norm * 1.0001, check_every=4)
        )
    assert (stopped.stop_reason, stopped.step) == ("grad_norm", 6)
    assert len(compiled) == 1


def test_gradlab_s_loop_body_says_what_it_records() -> None:
    """The jax engine steps through a large recording body by what the body declares."""
    require_engine("jax")
    from gradlab.engines._jax import RecordingStep
    from gradlab.fitting._step import Carry, Step

    body = Step(lambda p, d: (0.0, dict(p)), gradlab.sgd(0.1), np, record=("b", "w"))
    assert isinstance(body, RecordingStep)
    plain = body.without_record()
    assert plain.record == ()
    assert dataclasses.replace(plain, record=("b", "w")) == body
    carry = Carry({"w": np.ones(2), "b": np.zeros(1)}, None)
    assert [value.tolist() for value in body.recorded(carry)] == [[0.0], [1.0, 1.0]]
