"""Optimizers: mathematics and torch.optim as oracles, purity, and argument checks."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import optimizers, schedules
from gradlab.optimizers import apply_updates


def run(
    optimizer: gradlab.GradientTransformation, grads_of: Any, params: dict[str, Any], steps: int
) -> dict[str, Any]:
    state = optimizer.init(params)
    for _ in range(steps):
        updates, state = optimizer.update(grads_of(params), state, params)
        params = apply_updates(params, updates)
    return params


def test_sgd_on_a_quadratic_bowl_follows_the_closed_form() -> None:
    """For f(p) = ½·a·p², gradient descent gives p_k = (1 − lr·a)^k · p_0."""
    a, lr, p0 = 3.0, 0.1, np.array([2.0, -1.0])
    final = run(gradlab.sgd(lr), lambda p: {"p": a * p["p"]}, {"p": p0}, steps=25)
    np.testing.assert_allclose(final["p"], (1 - lr * a) ** 25 * p0, rtol=1e-13)


def test_momentum_on_a_quadratic_bowl_follows_its_recurrence_in_closed_form() -> None:
    """Heavy ball on f = ½·a·p² is linear in (p, v).

    v' = β·v + a·p and p' = p − lr·v', so [p, v]' = M·[p, v] with M = [[1 − lr·a, −lr·β], [a, β]].
    """
    a, lr, beta, p0 = 2.0, 0.05, 0.9, 1.5
    final = run(gradlab.momentum(lr, beta), lambda p: {"p": a * p["p"]}, {"p": np.array(p0)}, 30)
    matrix = np.array([[1 - lr * a, -lr * beta], [a, beta]])
    expected = np.linalg.matrix_power(matrix, 30) @ np.array([p0, 0.0])
    assert abs(float(final["p"]) - expected[0]) <= 1e-12


def test_optimizers_never_modify_their_inputs() -> None:
    params = {"w": np.array([1.0, 2.0])}
    grads = {"w": np.array([0.5, -0.5])}
    for optimizer in (gradlab.sgd(0.1), gradlab.momentum(0.1), gradlab.adam(0.1)):
        state = optimizer.init(params)
        optimizer.update(grads, state, params)
        np.testing.assert_array_equal(params["w"], [1.0, 2.0])
        np.testing.assert_array_equal(grads["w"], [0.5, -0.5])


TORCH_PAIRS = [
    ("sgd", lambda: gradlab.sgd(0.05), lambda opt, p: opt.SGD(p, lr=0.05)),
    (
        "momentum",
        lambda: gradlab.momentum(0.05, 0.8),
        lambda opt, p: opt.SGD(p, lr=0.05, momentum=0.8),
    ),
    (
        "nesterov",
        lambda: gradlab.momentum(0.05, 0.8, nesterov=True),
        lambda opt, p: opt.SGD(p, lr=0.05, momentum=0.8, nesterov=True),
    ),
    (
        "adam",
        lambda: gradlab.adam(0.01, 0.9, 0.99, 1e-8),
        lambda opt, p: opt.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8),
    ),
]


@pytest.mark.parametrize(("name", "ours", "theirs"), TORCH_PAIRS, ids=[p[0] for p in TORCH_PAIRS])
def test_optimizers_follow_torch_optim_on_the_same_gradients(
    name: str, ours: Any, theirs: Any
) -> None:
    """torch.optim as the oracle, in float64, over 100 steps of a non-quadratic loss."""
    require_engine("torch")
    import torch

    def grad_of(w: np.ndarray) -> np.ndarray:  # f(w) = Σ (w⁴/4 − w), a nonlinear gradient
        return w**3 - 1.0

    start = np.array([0.3, -1.2, 2.0])
    tensor = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = theirs(torch.optim, [tensor])
    for _ in range(100):
        optimizer.zero_grad()
        tensor.grad = torch.tensor(grad_of(tensor.detach().numpy()))
        optimizer.step()
    final = run(ours(), lambda p: {"w": grad_of(p["w"])}, {"w": start}, steps=100)
    assert gradlab.max_rho(final, {"w": tensor.detach().numpy()}) <= 1e-12


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: gradlab.sgd(0.0), "lr"),
        (lambda: gradlab.sgd(-1e-3), "lr"),
        (lambda: gradlab.sgd(float("nan")), "lr"),
        (lambda: gradlab.sgd(float("inf")), "lr"),
        (lambda: gradlab.sgd("0.1"), "lr"),  # type: ignore[arg-type]
        (lambda: gradlab.sgd(True), "lr"),
        (lambda: gradlab.momentum(0.1, beta=1.0), "beta"),
        (lambda: gradlab.momentum(0.1, beta=-0.1), "beta"),
        (lambda: gradlab.momentum(0.1, nesterov=1), "nesterov"),  # type: ignore[arg-type]
        (lambda: gradlab.adam(0.1, b1=1.0), "b1"),
        (lambda: gradlab.adam(0.1, b2=1.5), "b2"),
        (lambda: gradlab.adam(0.1, eps=-1e-8), "eps"),
        (lambda: gradlab.adam(-0.1), "lr"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(make: Any, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        make()
    assert caught.value.argument == argument
    assert argument in str(caught.value)


def test_optimizers_trace_under_jax_jit() -> None:
    require_engine("jax")
    import jax
    import jax.numpy as jnp

    optimizer = gradlab.adam(0.1)
    params = {"w": jnp.ones(3)}

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        updates, state = optimizer.update({"w": 2 * params["w"]}, state, params)
        return apply_updates(params, updates), state

    new_params, state = step(params, optimizer.init(params))
    assert new_params["w"].shape == (3,)
    assert int(state.count) == 1


def test_the_same_settings_give_the_same_optimizer_object() -> None:
    """Compiling engines key their loop on the optimizer object: ``sgd(0.1)`` written inline
    for each fit must not compile again, so equal settings share one (pure, immutable) object."""
    assert gradlab.sgd(0.1) is gradlab.sgd(0.1)
    assert gradlab.adam(0.01, b1=0.8) is gradlab.adam(0.01, b1=0.8)
    assert gradlab.sgd(0.1) is not gradlab.sgd(0.2)
    assert gradlab.adam(0.01) is not gradlab.adamw(0.01)
    assert gradlab.chain(gradlab.clip_by_global_norm(1.0), gradlab.sgd(0.1)) is gradlab.chain(
        gradlab.clip_by_global_norm(1.0), gradlab.sgd(0.1)
    )
    # Checked by type as well as value: a bool is refused, not answered from sgd(1).
    gradlab.sgd(1)
    with pytest.raises(gradlab.ArgumentError):
        gradlab.sgd(True)
    # A schedule is shared by identity; an unhashable one still makes an optimizer.
    schedule = gradlab.schedules.constant(0.1)
    assert gradlab.sgd(schedule) is gradlab.sgd(schedule)

    class Rate:  # a callable schedule that cannot be hashed
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, count: Any) -> float:
            return 0.1

    rate = Rate()
    first, second = gradlab.sgd(rate), gradlab.sgd(rate)
    assert first is not second
    updates, _ = first.update({"w": np.array(2.0)}, first.init({}), {"w": np.array(1.0)})
    assert float(updates["w"]) == pytest.approx(-0.2)


#: Every optimizer and schedule gradlab ships, with schedules as learning rates too, keyed
#: "factory" or "factory-variant": what a spawned worker must receive through a pipe.
SHIPPED_OPTIMIZERS: dict[str, Callable[[], gradlab.GradientTransformation]] = {
    "sgd": lambda: gradlab.sgd(0.05),
    "momentum": lambda: gradlab.momentum(0.05, 0.8),
    "momentum-nesterov": lambda: gradlab.momentum(0.05, 0.8, nesterov=True),
    "momentum-sutskever": lambda: gradlab.momentum(0.05, convention="sutskever"),
    "adam": lambda: gradlab.adam(0.01, b2=0.99),
    "adamw": lambda: gradlab.adamw(0.01, weight_decay=0.1),
    "rmsprop": lambda: gradlab.rmsprop(0.01),
    "clip_by_global_norm": lambda: gradlab.clip_by_global_norm(1.0),
    "chain": lambda: gradlab.chain(gradlab.clip_by_global_norm(1.0), gradlab.adam(0.01)),
    "sgd-step_decay": lambda: gradlab.sgd(schedules.step_decay(0.05, every=2, factor=0.5)),
    "momentum-exponential_decay": lambda: gradlab.momentum(schedules.exponential_decay(0.05, 0.9)),
    "adam-cosine_decay": lambda: gradlab.adam(schedules.cosine_decay(0.01, steps=4)),
    "adamw-warmup": lambda: gradlab.adamw(
        schedules.warmup(schedules.cosine_decay(0.01, steps=4), steps=3)
    ),
    "rmsprop-constant": lambda: gradlab.rmsprop(schedules.constant(0.01)),
}
SHIPPED_SCHEDULES: dict[str, Callable[[], schedules.Schedule]] = {
    "constant": lambda: schedules.constant(0.1),
    "step_decay": lambda: schedules.step_decay(0.1, every=3, factor=0.5),
    "exponential_decay": lambda: schedules.exponential_decay(0.1, rate=0.9),
    "cosine_decay": lambda: schedules.cosine_decay(0.1, steps=8, final=0.01),
    "warmup": lambda: schedules.warmup(schedules.cosine_decay(0.1, steps=8), steps=4),
    "warmup-constant": lambda: schedules.warmup(0.1, steps=4),
}


def computed(made: Any) -> np.ndarray:
    """What ``made`` computes: an optimizer's first five updates on float64 NumPy parameters
    (a nonlinear gradient, so that its state matters), or a schedule's first twelve rates."""
    if not isinstance(made, gradlab.GradientTransformation):
        return np.array([made(count) for count in range(12)], dtype=np.float64)
    params = {"w": np.array([0.3, -1.2, 2.0]), "b": np.array(0.5)}
    state, steps = made.init(params), []
    for _ in range(5):
        grads = {name: value**3 - 1.0 for name, value in params.items()}
        updates, state = made.update(grads, state, params)
        params = apply_updates(params, updates)
        steps.append(np.concatenate([np.ravel(updates[name]) for name in sorted(updates)]))
    return np.array(steps)


def assert_same_bits(ours: np.ndarray, oracle: np.ndarray) -> None:
    assert ours.dtype == oracle.dtype
    np.testing.assert_array_equal(ours, oracle)
    assert ours.tobytes() == oracle.tobytes()  # bit for bit, the signs of zeros too


def computed_after_unpickling(sent: bytes) -> list[np.ndarray]:
    """Run in a fresh process: what each pickled optimizer and schedule computes there."""
    return [computed(made) for made in pickle.loads(sent)]


def test_the_pickling_cases_cover_every_shipped_factory() -> None:
    cases = {name.partition("-")[0] for name in (*SHIPPED_OPTIMIZERS, *SHIPPED_SCHEDULES)}
    factories = {
        name
        for module in (optimizers, schedules)
        for name in module.__all__
        if name.islower() and name not in ("apply_updates", "as_schedule")
    }
    assert factories <= cases


@pytest.mark.parametrize(
    "make",
    [*SHIPPED_OPTIMIZERS.values(), *SHIPPED_SCHEDULES.values()],
    ids=[*SHIPPED_OPTIMIZERS, *SHIPPED_SCHEDULES],
)
def test_shipped_optimizers_and_schedules_pickle_to_the_same_computation(make: Any) -> None:
    """The original object is the oracle: its unpickled copy computes the same bits."""
    original = make()
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is type(original)  # a GradientTransformation stays one
    assert_same_bits(computed(copy), computed(original))


def test_an_optimizer_of_the_users_closures_is_accepted_but_does_not_pickle() -> None:
    def init(params: Any) -> tuple[()]:
        return ()

    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        return {name: -0.1 * g for name, g in grads.items()}, state

    mine = gradlab.GradientTransformation(init, update)
    chained = gradlab.chain(mine, gradlab.sgd(1.0))
    assert computed(chained).shape == (5, 4)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(chained)


def test_shipped_optimizers_and_schedules_unpickle_in_a_spawned_process() -> None:
    """What a spawned worker of the data-parallel engine does: one fresh process (no state
    of this one: no factory caches, no closures) rebuilds every case from its bytes."""
    made = [make() for make in (*SHIPPED_OPTIMIZERS.values(), *SHIPPED_SCHEDULES.values())]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(computed_after_unpickling, (pickle.dumps(made),))
    assert len(there) == len(made)
    for theirs, original in zip(there, made, strict=True):
        assert_same_bits(theirs, computed(original))
