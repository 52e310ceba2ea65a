"""Stopping rules, callbacks, mini-batches and resuming: the one loop, run in stretches.

Oracles: an uninterrupted fit's own path (a rule must stop at the first step of that path
that meets it, with the parameters of that step), and a hand-written NumPy mini-batch loop
that follows the documented batch order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from _helpers import DEEP, deep, require_engine

import gradlab
from gradlab import schedules

PROBLEM = gradlab.LinearRegression()
DATA = PROBLEM.make_data(40, d=3, seed=2)
INIT = {"w": np.zeros(3), "b": np.array(0.0)}
# torch-compile compiles every fit for seconds: its conformance class runs its fits in every
# run, these features on it in the thorough one.
EVERY_RUN = ["numpy", "torch", "jax", "fd"]
ENGINES = [*EVERY_RUN, *deep("torch-compile")]


def run(engine: str, steps: int = 200, **options: Any) -> gradlab.FitResult:
    require_engine(engine.split("-")[0])
    options.setdefault("optimizer", gradlab.sgd(0.1))
    if "resume" not in options:
        options.setdefault("init", INIT)
    return gradlab.fit(PROBLEM, DATA, engine=engine, steps=steps, **options)


def full_path() -> gradlab.FitResult:
    return run("numpy", trajectory=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_loss_rule_stops_at_the_first_step_that_meets_it(engine: str) -> None:
    path = full_path()
    # Between the losses at steps 56 and 57: met first at 57 (the loss only falls), with a
    # margin far above any engine's round-off.
    tolerance = float(path.losses[56] + path.losses[57]) / 2
    assert np.all(path.losses[:57] > tolerance)
    result = run(engine, stop=gradlab.Stop(loss=tolerance, check_every=25))
    assert (result.status, result.stop_reason, result.step) == ("converged", "loss", 57)
    assert len(result.losses) == 58
    assert result.final_loss <= tolerance
    assert path.trajectory is not None
    for name, value in result.params.items():
        assert float(np.max(gradlab.rho(value, path.trajectory[name][57]))) <= 1e-12


@pytest.mark.parametrize("engine", ENGINES)
def test_a_gradient_norm_rule_stops_where_the_hand_gradient_is_that_small(engine: str) -> None:
    path = full_path()
    assert path.trajectory is not None
    norms = [
        np.sqrt(
            sum(
                np.sum(g**2)
                for g in PROBLEM.hand_value_and_grad(
                    {k: v[i] for k, v in path.trajectory.items()}, DATA
                )[1].values()
            )
        )
        for i in range(200)
    ]
    tolerance = 0.5 * (norms[80] + norms[81])
    first = next(i for i, norm in enumerate(norms) if norm <= tolerance)
    result = run(engine, stop=gradlab.Stop(grad_norm=tolerance))
    assert (result.stop_reason, result.step) == ("grad_norm", first)


def test_patience_stops_when_the_loss_stops_improving() -> None:
    path = run("numpy", steps=400)
    patience, delta = 20, 1e-6
    best, best_at, expected = np.inf, 0, None
    for i, loss in enumerate(path.losses):  # the rule, written out independently
        if loss < best - delta:
            best, best_at = loss, i
        elif i - best_at >= patience:
            expected = i
            break
    assert expected is not None
    for engine in EVERY_RUN + ["torch-compile"] * DEEP:
        result = run(engine, steps=400, stop=gradlab.Stop(patience=patience, min_delta=delta))
        assert (result.stop_reason, result.step) == ("patience", expected), engine


@pytest.mark.parametrize("engine", ENGINES)
def test_callbacks_see_every_kth_point_and_can_stop_the_fit(engine: str) -> None:
    path = full_path()
    assert path.trajectory is not None
    seen: list[tuple[int, float, dict[str, np.ndarray]]] = []

    def callback(step: int, loss: float, params: dict[str, np.ndarray]) -> bool:
        seen.append((step, loss, params))
        return step >= 150

    result = run(engine, callback=callback, every=30)
    assert [step for step, _, _ in seen] == [30, 60, 90, 120, 150]
    for step, loss, params in seen:
        assert gradlab.rho(loss, path.losses[step - 1]) <= 1e-12
        assert float(np.max(gradlab.rho(params["w"], path.trajectory["w"][step]))) <= 1e-12
    assert (result.status, result.stop_reason, result.step) == ("stopped", "callback", 150)


def hand_minibatch_sgd(steps: int, batch_size: int, seed: int, lr: float) -> dict[str, Any]:
    """Mini-batch SGD written out: epoch e shuffles rows with default_rng([seed, e])."""
    params = {k: np.array(v, dtype=float) for k, v in INIT.items()}
    n = len(DATA["y"])
    per_epoch = n // batch_size
    for t in range(steps):
        epoch, position = divmod(t, per_epoch)
        rows = np.random.default_rng([seed, epoch]).permutation(n)
        rows = rows[position * batch_size : (position + 1) * batch_size]
        _, grads = PROBLEM.hand_value_and_grad(params, {k: v[rows] for k, v in DATA.items()})
        params = {k: params[k] - lr * grads[k] for k in params}
    return params


@pytest.mark.parametrize("engine", ENGINES)
def test_mini_batches_are_the_same_on_every_engine(engine: str) -> None:
    expected = hand_minibatch_sgd(50, batch_size=7, seed=3, lr=0.1)
    result = run(engine, steps=50, batch_size=7, seed=3)
    assert gradlab.max_rho(result.params, expected) <= 1e-12


@pytest.mark.parametrize("engine", ENGINES)
def test_a_resumed_fit_ends_where_an_uninterrupted_one_does(engine: str) -> None:
    optimizer = gradlab.adam(schedules.cosine_decay(0.05, steps=120))
    options = {"optimizer": optimizer, "batch_size": 8, "seed": 1}
    whole = run(engine, steps=120, **options)
    first = run(engine, steps=45, **options)
    rest = run(engine, steps=75, resume=first, **options)
    assert rest.step == whole.step == 120
    assert gradlab.max_rho(rest.params, whole.params) <= 1e-13
    joined = np.concatenate([first.losses, rest.losses])
    assert float(np.max(gradlab.rho(joined, whole.losses))) <= 1e-13


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 41}, "batch_size"),
        ({"every": 0}, "every"),
        ({"callback": "print"}, "callback"),
        ({"stop": {"loss": 0.1}}, "stop"),
        ({"init": {"w": 0.0}}, "init"),
        ({"seed": -1, "batch_size": 4}, "seed"),
    ],
)
def test_bad_loop_options_are_refused_naming_them(options: dict[str, Any], argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError, match=argument) as caught:
        run("numpy", **options)
    assert caught.value.argument == argument


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: gradlab.Stop(loss=-1.0), "loss"),
        (lambda: gradlab.Stop(grad_norm=float("nan")), "grad_norm"),
        (lambda: gradlab.Stop(patience=0), "patience"),
        (lambda: gradlab.Stop(min_delta=-1.0), "min_delta"),
        (lambda: gradlab.Stop(check_every=0), "check_every"),
    ],
)
def test_bad_stop_rules_are_refused_naming_them(make: Any, argument: str) -> None:
    with pytest.raises(gradlab.GradlabError, match=argument):
        make()


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"step": -5}, "resume.step"),
        ({"step": 2.5}, "resume.step"),
        ({"step": True}, "resume.step"),
        ({"step": "3"}, "resume.step"),
        ({"step": 4}, "resume.state.count"),
        ({"step": 10**30}, "resume.state.count"),
        ({"status": "diverged"}, "resume"),
    ],
    ids=repr,
)
def test_a_result_changed_after_fit_returned_it_is_refused(
    change: dict[str, Any], argument: str
) -> None:
    first = run("numpy", steps=5, optimizer=gradlab.adam(0.1))
    changed = dataclasses.replace(first, **change)
    with pytest.raises(gradlab.GradlabError) as caught:
        run("numpy", steps=3, optimizer=gradlab.adam(0.1), resume=changed)
    assert caught.value.argument == argument


@pytest.mark.parametrize("count", [-3, 100, 2.5, "5"], ids=repr)
def test_a_state_whose_step_count_was_changed_is_refused(count: Any) -> None:
    """Adam's bias correction reads its count: a count that disagrees with the steps taken
    would silently give other updates than the fit it claims to continue."""
    optimizer = gradlab.chain(gradlab.clip_by_global_norm(10.0), gradlab.adam(0.1))
    first = run("numpy", steps=5, optimizer=optimizer)
    clip, adam = first.state
    changed = dataclasses.replace(first, state=(clip, adam._replace(count=np.asarray(count))))
    with pytest.raises(gradlab.ArgumentError) as caught:
        run("numpy", steps=3, optimizer=optimizer, resume=changed)
    assert caught.value.argument == "resume.state[1].count"


def test_resume_checks_what_it_continues() -> None:
    first = run("numpy", steps=10, optimizer=gradlab.adam(0.1))
    with pytest.raises(gradlab.ArgumentError, match="init"):
        run("numpy", steps=10, optimizer=gradlab.adam(0.1), resume=first, init=INIT)
    with pytest.raises(gradlab.ArgumentError, match="resume"):
        run("numpy", steps=10, optimizer=gradlab.sgd(0.1), resume=first)
    with pytest.raises(gradlab.ArgumentTypeError, match="resume"):
        run("numpy", steps=10, resume={"w": 1.0})
    with pytest.raises(gradlab.ArgumentError, match="batch_size"):
        gradlab.fit(
            gradlab.Rosenbrock(2),
            {},
            engine="numpy",
            optimizer=gradlab.sgd(1e-3),
            steps=5,
            init={"x": [0.0, 0.0]},
            batch_size=1,
        )
