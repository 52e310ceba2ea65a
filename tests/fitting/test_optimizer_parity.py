"""gradlab's optimizers against torch.optim's, as an oracle: the same gradients, the same path.

Both sides take their gradient from the same hand-derived NumPy function at their own
current parameters, for 100 steps in float64; gradlab runs through ``gradlab.fit`` (the
numpy engine) and torch through ``torch.optim`` (with ``torch.optim.lr_scheduler`` for the
schedules). The paths must agree to float64 round-off at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import deep, require_engine

import gradlab
from gradlab import schedules

STEPS = 100
PROBLEM = gradlab.LinearRegression()
DATA = PROBLEM.make_data(50, d=3, seed=11)
INIT = {"w": np.array([0.5, -0.3, 0.2]), "b": np.array(0.1)}


def gradlab_path(optimizer: gradlab.GradientTransformation) -> dict[str, np.ndarray]:
    result = gradlab.fit(
        PROBLEM,
        DATA,
        engine="numpy",
        optimizer=optimizer,
        steps=STEPS,
        init=INIT,
        trajectory=True,
    )
    assert result.trajectory is not None
    trajectory: dict[str, np.ndarray] = result.trajectory
    return trajectory


def torch_path(
    make: Callable[[list[Any]], Any],
    scheduler: Callable[[Any], Any] | None = None,
    clip: float | None = None,
) -> dict[str, np.ndarray]:
    import torch

    params = {name: torch.tensor(value, dtype=torch.float64) for name, value in INIT.items()}
    for tensor in params.values():
        tensor.requires_grad_(True)
    optimizer = make(list(params.values()))
    lr_scheduler = scheduler(optimizer) if scheduler else None
    path: dict[str, list[np.ndarray]] = {name: [] for name in params}
    for _ in range(STEPS):
        for name, tensor in params.items():
            path[name].append(tensor.detach().numpy().copy())
        point = {name: tensor.detach().numpy() for name, tensor in params.items()}
        _, grads = PROBLEM.hand_value_and_grad(point, DATA)
        for name, tensor in params.items():
            tensor.grad = torch.tensor(np.asarray(grads[name]), dtype=torch.float64)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
    for name, tensor in params.items():
        path[name].append(tensor.detach().numpy().copy())
    return {name: np.stack(values) for name, values in path.items()}


def worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(gradlab.rho(a[name], b[name]))) for name in a)


CASES: dict[str, tuple[Any, Any, Any]] = {
    "sgd": (lambda: gradlab.sgd(0.05), lambda p: __import__("torch").optim.SGD(p, lr=0.05), None),
    "momentum": (
        lambda: gradlab.momentum(0.05, 0.9),
        lambda p: __import__("torch").optim.SGD(p, lr=0.05, momentum=0.9),
        None,
    ),
    "nesterov": (
        lambda: gradlab.momentum(0.05, 0.9, nesterov=True),
        lambda p: __import__("torch").optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        None,
    ),
    "adam": (
        lambda: gradlab.adam(0.01),
        lambda p: __import__("torch").optim.Adam(p, lr=0.01),
        None,
    ),
    "adamw": (
        lambda: gradlab.adamw(0.01, weight_decay=0.1),
        lambda p: __import__("torch").optim.AdamW(p, lr=0.01, weight_decay=0.1),
        None,
    ),
    "rmsprop": (
        lambda: gradlab.rmsprop(0.01),
        lambda p: __import__("torch").optim.RMSprop(p, lr=0.01),
        None,
    ),
    "sgd + step decay": (
        lambda: gradlab.sgd(schedules.step_decay(0.05, every=10, factor=0.5)),
        lambda p: __import__("torch").optim.SGD(p, lr=0.05),
        lambda o: __import__("torch").optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
    ),
    "adam + exponential decay": (
        lambda: gradlab.adam(schedules.exponential_decay(0.01, rate=0.97)),
        lambda p: __import__("torch").optim.Adam(p, lr=0.01),
        lambda o: __import__("torch").optim.lr_scheduler.ExponentialLR(o, gamma=0.97),
    ),
    "momentum + cosine": (
        lambda: gradlab.momentum(schedules.cosine_decay(0.05, steps=STEPS, final=0.001)),
        lambda p: __import__("torch").optim.SGD(p, lr=0.05, momentum=0.9),
        lambda o: __import__("torch").optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=STEPS, eta_min=0.001
        ),
    ),
    "adamw + warm-up": (
        lambda: gradlab.adamw(schedules.warmup(0.01, steps=20)),
        lambda p: __import__("torch").optim.AdamW(p, lr=0.01),
        lambda o: __import__("torch").optim.lr_scheduler.LinearLR(
            o, start_factor=1 / 20, end_factor=1.0, total_iters=19
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_follows_torch_optim_to_float64_round_off(case: str) -> None:
    require_engine("torch")
    ours, theirs, scheduler = CASES[case]
    assert worst(gradlab_path(ours()), torch_path(theirs, scheduler)) <= 1e-12


def test_clipping_follows_torch_within_its_epsilon() -> None:
    """torch divides by ‖g‖ + 1e-6 where gradlab (as optax) divides by ‖g‖."""
    require_engine("torch")
    ours = gradlab_path(gradlab.chain(gradlab.clip_by_global_norm(0.5), gradlab.sgd(0.05)))
    theirs = torch_path(lambda p: __import__("torch").optim.SGD(p, lr=0.05), clip=0.5)
    assert worst(ours, theirs) <= 1e-6
    # And clipping did act: unclipped SGD goes elsewhere.
    assert worst(ours, gradlab_path(gradlab.sgd(0.05))) > 1e-3


def test_the_two_momentum_conventions_agree_at_a_constant_rate_only() -> None:
    torch_form = gradlab_path(gradlab.momentum(0.05, 0.9))
    sutskever = gradlab_path(gradlab.momentum(0.05, 0.9, convention="sutskever"))
    assert worst(torch_form, sutskever) <= 1e-12
    decaying = schedules.step_decay(0.05, every=10, factor=0.5)
    torch_form = gradlab_path(gradlab.momentum(decaying, 0.9))
    sutskever = gradlab_path(gradlab.momentum(decaying, 0.9, convention="sutskever"))
    assert worst(torch_form, sutskever) > 1e-6


def test_clip_by_global_norm_is_the_formula() -> None:
    clip = gradlab.clip_by_global_norm(2.0)
    grads = {"a": np.array([3.0, 0.0]), "b": np.array(4.0)}  # ‖g‖ = 5
    clipped, _ = clip.update(grads, clip.init({}), {})
    assert clipped["a"].tolist() == pytest.approx([1.2, 0.0], rel=1e-15)
    assert float(clipped["b"]) == pytest.approx(1.6, rel=1e-15)
    small = {"a": np.array([0.3, 0.0]), "b": np.array(0.4)}  # ‖g‖ = 0.5: untouched
    assert clip.update(small, (), {})[0]["b"] == 0.4
    zero = {"a": np.zeros(2), "b": np.array(0.0)}
    assert np.all(np.isfinite(clip.update(zero, (), {})[0]["a"]))


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: schedules.step_decay(0.1, every=0), "every"),
        (lambda: schedules.step_decay(0.1, every=2, factor=0.0), "factor"),
        (lambda: schedules.step_decay(0.1, every=2, factor=1.5), "factor"),
        (lambda: schedules.exponential_decay(0.1, rate=-0.5), "rate"),
        (lambda: schedules.cosine_decay(0.1, steps=0), "steps"),
        (lambda: schedules.cosine_decay(0.1, steps=10, final=0.2), "final"),
        (lambda: schedules.warmup(0.1, steps=0), "steps"),
        (lambda: schedules.constant(-0.1), "lr"),
        (lambda: gradlab.sgd(lambda t: -1.0), "lr"),
        (lambda: gradlab.sgd(lambda t: "fast"), "lr"),
        (lambda: gradlab.adamw(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: gradlab.rmsprop(0.1, alpha=1.0), "alpha"),
        (lambda: gradlab.momentum(0.1, convention="nesterov"), "convention"),
        (lambda: gradlab.clip_by_global_norm(0.0), "max_norm"),
        (lambda: gradlab.chain(), "transformations"),
        (lambda: gradlab.chain(gradlab.sgd(0.1), "adam"), "transformations"),  # type: ignore[arg-type]
    ],
)
def test_bad_schedule_and_optimizer_parameters_are_refused(make: Any, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError, match=argument) as caught:
        make()
    assert caught.value.argument == argument


@pytest.mark.parametrize("engine_name", ["torch", "jax", *deep("torch-compile")])
def test_schedules_and_chains_run_on_every_engine_to_the_same_path(engine_name: str) -> None:
    """Inside the compiled jax loop the count is traced; on torch it is a tensor when compiled."""
    require_engine(engine_name.split("-")[0])
    optimizer = gradlab.chain(
        gradlab.clip_by_global_norm(1.0),
        gradlab.adamw(schedules.warmup(schedules.cosine_decay(0.02, steps=60), steps=10)),
    )
    hand = gradlab.fit(PROBLEM, DATA, engine="numpy", optimizer=optimizer, steps=60, init=INIT)
    other = gradlab.fit(PROBLEM, DATA, engine=engine_name, optimizer=optimizer, steps=60, init=INIT)
    assert gradlab.max_rho(hand.params, other.params) <= 1e-12
    assert float(np.max(gradlab.rho(hand.losses, other.losses))) <= 1e-12
