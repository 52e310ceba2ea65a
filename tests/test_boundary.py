"""The boundary between gradlab and user code: what users hand gradlab is checked where it
crosses into an engine, the same way on every engine, and never gives a stale or false result.

Each test here is an example of a class of hostile input; the parametrizations run each class
over every engine that can meet it.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest
from _helpers import BUILTIN_ENGINES, deep, require_engine

import gradlab

COMPILING = ["jax", "torch-compile", "mlx", "tensorflow-xla"]
# torch-compile's every fit compiles for seconds; every engine keys compiled code on the same
# fingerprint (gradlab._fingerprint), which the first test below checks on torch-compile in
# every run. Its other variants run in the thorough one.
COMPILING_AGAIN = ["jax", *deep("torch-compile"), "mlx", "tensorflow-xla"]
AUTODIFF_AND_FD = ["torch", "jax", "fd", "torch-compile"]
LINE = {"x": np.linspace(0.0, 1.0, 8)}
OFFSET = 2.0  # a global the loss below reads


def sgd_fit(problem: Any, engine: str, data: Any = LINE, **kwargs: Any) -> gradlab.FitResult:
    options: dict[str, Any] = {"optimizer": gradlab.sgd(0.2), "steps": 300, "init": {"a": 0.0}}
    options.update(kwargs)
    return gradlab.fit(problem, data, engine=engine, **options)


def compiled_cache(engine: str) -> Any:
    """The cache of compiled functions of a compiling engine's module."""
    from gradlab.engines import _jax, _mlx, _tensorflow, _torch

    module = {"jax": _jax, "torch-compile": _torch, "mlx": _mlx, "tensorflow-xla": _tensorflow}
    return module[engine]._COMPILED


# 1. Never a stale result ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", COMPILING)
def test_a_changed_closure_variable_is_not_answered_from_the_old_program(engine: str) -> None:
    require_engine(engine)
    target = 2.0
    problem = gradlab.Problem(
        lambda q, d, xp: xp.sum((q["a"] * d["x"] - target * d["x"]) ** 2), name="closure"
    )
    assert float(sgd_fit(problem, engine).params["a"]) == pytest.approx(2.0, abs=1e-6)
    target = 5.0
    assert float(sgd_fit(problem, engine).params["a"]) == pytest.approx(5.0, abs=1e-6)
    _, grads = gradlab.value_and_grad(problem, LINE, {"a": 0.0}, engine=engine)
    expected = float(np.sum(2 * (0.0 - 5.0) * LINE["x"] ** 2))  # d/da Σ(a·x − 5x)²
    assert float(grads["a"]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("engine", COMPILING_AGAIN)
def test_a_nested_problem_whose_closure_changed_is_compiled_again(engine: str) -> None:
    # Nests reach engines through a flat view keyed on the problem's fingerprint when the
    # view was made: a changed problem must get a new view, not the old program.
    require_engine(engine)
    target = 2.0
    problem = gradlab.Problem(
        lambda q, d, xp: xp.sum((q["layer"][0]["a"] * d["x"] - target * d["x"]) ** 2),
        name="nested closure",
    )
    init = {"layer": [{"a": 0.0}]}
    first = sgd_fit(problem, engine, init=init).params["layer"][0]["a"]
    assert float(first) == pytest.approx(2.0, abs=1e-6)
    target = 5.0
    second = sgd_fit(problem, engine, init=init).params["layer"][0]["a"]
    assert float(second) == pytest.approx(5.0, abs=1e-6)


@pytest.mark.parametrize("engine", COMPILING_AGAIN)
def test_a_changed_global_is_not_answered_from_the_old_program(engine: str) -> None:
    global OFFSET
    require_engine(engine)
    problem = gradlab.Problem(
        lambda q, d, xp: xp.sum((q["a"] - OFFSET) ** 2 * d["x"]), name="global"
    )
    try:
        assert float(sgd_fit(problem, engine).params["a"]) == pytest.approx(2.0, abs=1e-6)
        OFFSET = -1.0
        assert float(sgd_fit(problem, engine).params["a"]) == pytest.approx(-1.0, abs=1e-6)
    finally:
        OFFSET = 2.0


@dataclasses.dataclass  # a plain dataclass: mutable, and so unhashable
class Shifted(gradlab.AbstractProblem):
    shift: float = 1.0
    scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(1))

    name = "shifted"

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        return xp.sum(float(self.scale[0]) * (params["a"] - self.shift) ** 2 * data["x"])


@pytest.mark.parametrize("engine", COMPILING_AGAIN)
def test_a_changed_attribute_and_an_array_changed_in_place_are_seen(engine: str) -> None:
    require_engine(engine)
    problem = Shifted()
    with pytest.raises(TypeError):
        hash(problem)  # unhashable, and it must still work
    assert float(sgd_fit(problem, engine).params["a"]) == pytest.approx(1.0, abs=1e-6)
    problem.shift = 3.0
    assert float(sgd_fit(problem, engine).params["a"]) == pytest.approx(3.0, abs=1e-6)
    problem.scale[0] = 2.0  # in place: the same array object
    loss, _ = gradlab.value_and_grad(problem, LINE, {"a": 0.0}, engine=engine)
    assert float(loss) == pytest.approx(2.0 * 9.0 * float(np.sum(LINE["x"])), rel=1e-12)


@pytest.mark.parametrize("engine", COMPILING)
def test_an_unchanged_problem_is_compiled_once(engine: str) -> None:
    require_engine(engine)
    from gradlab.engines import _jax

    cache = compiled_cache(engine)
    problem = Shifted(shift=0.5)
    optimizer = gradlab.sgd(0.2)
    sgd_fit(problem, engine, optimizer=optimizer)
    size = len(cache)
    scans = _jax._compiled_scan.cache_info().currsize
    for _ in range(3):
        sgd_fit(problem, engine, optimizer=optimizer)
        gradlab.value_and_grad(problem, LINE, {"a": 0.3}, engine=engine)
    assert len(cache) == size
    assert _jax._compiled_scan.cache_info().currsize == scans


@pytest.mark.parametrize("engine", COMPILING_AGAIN)
def test_an_optimizer_made_afresh_with_the_same_settings_is_compiled_once(engine: str) -> None:
    """``optimizer=gradlab.sgd(0.02)`` written inline for every fit reuses the loop compiled
    for the first (it used to be compiled again, 0.2 s a fit), and one with another learning
    rate is compiled anew and lands where its own path does."""
    require_engine(engine)
    from gradlab.engines import _jax

    cache = compiled_cache(engine)
    problem = Shifted(shift=0.25)
    first = sgd_fit(problem, engine, optimizer=gradlab.sgd(0.02), steps=5)
    size, scans = len(cache), _jax._compiled_scan.cache_info().currsize
    for _ in range(3):
        again = sgd_fit(problem, engine, optimizer=gradlab.sgd(0.02), steps=5)
        assert float(again.params["a"]) == float(first.params["a"])
    assert len(cache) == size
    assert _jax._compiled_scan.cache_info().currsize == scans
    # Another rate: a ≠ its own closed form would mean the old program answered.
    other = sgd_fit(problem, engine, optimizer=gradlab.sgd(0.01), steps=5)
    # a ← a − lr·2·Σx·(a − shift): the distance to the shift shrinks by (1 − 2·lr·Σx) a step.
    factor = 1 - 2 * 0.01 * float(np.sum(LINE["x"]))
    assert float(other.params["a"]) == pytest.approx(0.25 - 0.25 * factor**5, rel=1e-5)


def test_a_custom_optimizer_whose_closure_changed_is_compiled_again() -> None:
    require_engine("jax")
    rate = 0.2

    def update(grads: Any, state: Any, params: Any) -> Any:
        return {k: -rate * g for k, g in grads.items()}, state

    optimizer = gradlab.GradientTransformation(lambda params: (), update)
    problem = Shifted(shift=1.0)
    first = sgd_fit(problem, "jax", optimizer=optimizer, steps=1)
    rate = 0.0
    second = sgd_fit(problem, "jax", optimizer=optimizer, steps=1)
    assert float(first.params["a"]) != 0.0
    assert float(second.params["a"]) == 0.0


# 1. The reference must not cry wolf ------------------------------------------------------------


# 2. One boundary: the loss's output, on every engine -----------------------------------------

BAD_LOSSES = {
    "None": lambda p, d, xp: None,
    "a Python float": lambda p, d, xp: 3.0,
    "a string": lambda p, d, xp: "loss",
    "an integer array": lambda p, d, xp: xp.sum(xp.astype(d["x"] > 0.5, xp.int64)),
    "a vector": lambda p, d, xp: (p["a"] * d["x"]) ** 2,
}


@pytest.mark.parametrize("what", sorted(BAD_LOSSES))
@pytest.mark.parametrize("engine", AUTODIFF_AND_FD)
@pytest.mark.parametrize("declared", [False, True])
def test_a_loss_that_returns_anything_but_a_scalar_is_refused_on_every_engine(
    what: str, engine: str, declared: bool
) -> None:
    require_engine(engine)
    shapes = {"a": ()} if declared else None
    problem = gradlab.Problem(BAD_LOSSES[what], name="bad-loss", params=shapes)
    for call in (
        lambda: sgd_fit(problem, engine, steps=2),
        lambda: gradlab.value_and_grad(problem, LINE, {"a": 1.0}, engine=engine),
    ):
        with pytest.raises(gradlab.ProblemError, match=r"problem 'bad-loss': loss") as caught:
            call()
        assert caught.value.problem == "bad-loss"
        assert caught.value.function == "loss"


@pytest.mark.parametrize("engine", ["torch", "jax", "torch-compile"])
def test_a_loss_written_with_numpy_instead_of_xp_is_named(engine: str) -> None:
    require_engine(engine)
    problem = gradlab.Problem(
        lambda p, d, xp: np.sum(np.exp(p["a"] * d["x"])), name="numpy-loss", params={"a": ()}
    )
    with pytest.raises(gradlab.ProblemError, match=r"problem 'numpy-loss': loss on engine"):
        gradlab.value_and_grad(problem, LINE, {"a": 1.0}, engine=engine)


def test_an_exception_inside_the_loss_names_problem_engine_and_cause() -> None:
    def loss(p: Any, d: Any, xp: Any) -> Any:
        raise ZeroDivisionError("the user's own bug")

    problem = gradlab.Problem(loss, name="buggy", params={"a": ()})
    for engine in ("fd", "torch", "jax"):
        if engine not in gradlab.available_engines():
            continue
        with pytest.raises(
            gradlab.ProblemError, match="ZeroDivisionError: the user's own bug"
        ) as e:
            gradlab.value_and_grad(problem, LINE, {"a": 1.0}, engine=engine)
        assert isinstance(e.value.__cause__, ZeroDivisionError)


# 2. A hand gradient's output -----------------------------------------------------------------

BAD_HANDS: dict[str, Any] = {
    "only the grads": lambda p, d: {"a": 2 * p["a"]},
    "a 3-tuple": lambda p, d: (p["a"] ** 2, {"a": 2 * p["a"]}, None),
    "strings": lambda p, d: ("loss", {"a": "grad"}),
    "a missing gradient": lambda p, d: (p["a"] ** 2, {}),
    "a gradient of the wrong shape": lambda p, d: (p["a"] ** 2, {"a": np.zeros(3)}),
}


@pytest.mark.parametrize("what", sorted(BAD_HANDS))
def test_a_wrong_hand_gradient_names_the_hand_gradient(what: str) -> None:
    problem = gradlab.Problem(lambda p, d, xp: p["a"] ** 2, BAD_HANDS[what], name="hand")
    with pytest.raises(gradlab.ProblemError, match=r"problem 'hand': value_and_grad") as caught:
        sgd_fit(problem, "numpy", data={}, steps=2, init={"a": 1.0})
    assert caught.value.function == "value_and_grad"


def _raises(*args: Any) -> Any:
    raise ValueError("a bug in the derivation")


RAISING_HANDS = gradlab.Problem(
    lambda p, d, xp: xp.sum(p["a"] ** 2) + 0.0,
    value_and_grad=_raises,
    hvp=_raises,
    jacobian=_raises,
    name="hand",
)
ENTRY_POINTS: dict[str, tuple[str, Any]] = {
    "value_and_grad": (
        "value_and_grad",
        lambda: gradlab.value_and_grad(RAISING_HANDS, {}, {"a": [1.0]}, engine="numpy"),
    ),
    "compare_gradients": (
        "value_and_grad",
        lambda: gradlab.compare_gradients(RAISING_HANDS, {}, {"a": [1.0]}, engines="numpy,fd"),
    ),
    "fit": (
        "value_and_grad",
        lambda: sgd_fit(RAISING_HANDS, "numpy", {}, steps=2, init={"a": [1.0]}),
    ),
    "hvp": (
        "hvp",
        lambda: gradlab.hvp(RAISING_HANDS, {}, {"a": [1.0]}, {"a": [1.0]}, engine="numpy"),
    ),
    "jacobian": (
        "jacobian",
        lambda: gradlab.jacobian(RAISING_HANDS, {}, {"a": [1.0]}, engine="numpy"),
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_hand_derivation_that_raises_is_named_not_the_loss(entry: str) -> None:
    """The loss is fine; the hand-written function raised: the error names that function."""
    function, call = ENTRY_POINTS[entry]
    with pytest.raises(
        gradlab.ProblemError,
        match=f"problem 'hand': {function} on engine 'numpy' raised ValueError: a bug",
    ) as caught:
        call()
    assert caught.value.function == function
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_python_float_loss_in_a_float32_run_names_the_hand_gradient() -> None:
    problem = gradlab.Problem(
        lambda p, d, xp: p["a"] ** 2, lambda p, d: (float(p["a"] ** 2), {"a": 2 * p["a"]})
    )
    with pytest.raises(gradlab.ProblemError, match=r"value_and_grad.*float32 was asked for"):
        sgd_fit(problem, "numpy", data={}, steps=2, init={"a": 1.0}, dtype="float32")
    # In float64 a Python float is a float64 number: nothing to refuse.
    assert sgd_fit(problem, "numpy", data={}, steps=2, init={"a": 1.0}).ok


# 2. A user problem without declared shapes -----------------------------------------------------

MATMUL = gradlab.Problem(lambda p, d, xp: xp.sum((d["x"] @ p["w"] + p["b"]) ** 2), name="mm")
MATRIX = {"x": np.ones((5, 3))}


@pytest.mark.parametrize("engine", ["fd", "torch", "jax"])
def test_undeclared_parameters_missing_misshapen_or_extra_are_named(engine: str) -> None:
    require_engine(engine)
    cases = [
        ({"w": np.zeros(3)}, r"init: is missing parameter 'b'"),
        ({"w": np.zeros(4), "b": 0.0}, r"problem 'mm': loss raised ValueError"),
        ({"w": np.zeros(3), "b": 0.0, "c": 1.0}, r"init: has parameter\(s\) 'c' that"),
    ]
    for init, message in cases:
        with pytest.raises(gradlab.GradlabError, match=message):
            sgd_fit(MATMUL, engine, data=MATRIX, init=init, steps=2)


def test_a_data_array_the_loss_reads_but_data_lacks_is_named() -> None:
    with pytest.raises(gradlab.ArgumentError, match=r"data: has no array 'x'") as caught:
        gradlab.value_and_grad(MATMUL, {"z": np.ones(3)}, {"w": np.zeros(3), "b": 0.0}, engine="fd")
    assert caught.value.argument == "data"


# 2. Optimizers, engines, devices -------------------------------------------------------------


@pytest.mark.parametrize(
    "update",
    [
        lambda g, s, p: None,
        lambda g, s, p: ({}, s),
        lambda g, s, p: ({k: v for k, v in g.items() if k != "b"}, s),
        lambda g, s, p: ({k: np.zeros(3) for k in g}, s),
        lambda g, s, p: (g, {"new": 1}),
        lambda g, s, p: 1 / 0,
    ],
)
@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_a_broken_custom_optimizer_is_named(update: Any, engine: str) -> None:
    require_engine(engine)
    optimizer = gradlab.GradientTransformation(lambda params: (), update)
    problem = gradlab.Quadratic()
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.fit(
            problem,
            problem.make_data(10),
            engine=engine,
            optimizer=optimizer,
            steps=2,
            init={"w": 0.0, "b": 0.0},
        )
    assert caught.value.argument == "optimizer"


class Garbage(gradlab.engines.NumpyEngine):
    """Has every member of the protocol; its gradients are garbage."""

    name = "garbage"

    def __init__(self, output: Any) -> None:
        self.output = output

    def value_and_grad(self, problem: Any) -> Any:
        return lambda params, data: self.output


@pytest.mark.parametrize(
    "output",
    [
        None,
        (np.float64(1.0),),
        (np.float64(1.0), {"w": np.float64(0.0)}),
        (np.zeros(3), {"w": np.float64(0.0), "b": np.float64(0.0)}),
        (np.float64(1.0), {"w": np.zeros(2), "b": np.float64(0.0)}),
        (np.float32(1.0), {"w": np.float64(0.0), "b": np.float64(0.0)}),
        (np.float64(1.0), {"w": "x", "b": np.float64(0.0)}),
    ],
)
def test_an_engine_that_returns_garbage_is_named(output: Any) -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(5)
    for call in (
        lambda: gradlab.value_and_grad(problem, data, {"w": 0.0, "b": 0.0}, engine=Garbage(output)),
        lambda: gradlab.fit(
            problem,
            data,
            engine=Garbage(output),
            optimizer=gradlab.sgd(0.1),
            steps=2,
            init={"w": 0.0, "b": 0.0},
        ),
        lambda: gradlab.compare_gradients(
            problem, data, {"w": 0.0, "b": 0.0}, engines=["numpy", Garbage(output)]
        ),
    ):
        with pytest.raises(gradlab.ArgumentError, match="engine 'garbage'") as caught:
            call()
        assert caught.value.argument == "engine"


def test_an_engine_class_or_none_in_a_list_is_named() -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(5)
    with pytest.raises(gradlab.ArgumentTypeError, match=r"engine: is the class NumpyEngine"):
        gradlab.value_and_grad(
            problem,
            data,
            {"w": 0.0, "b": 0.0},
            engine=gradlab.engines.NumpyEngine,  # type: ignore[arg-type]
        )
    for engines in (["numpy", None], [None], [gradlab.engines.NumpyEngine], [], "", " , "):
        with pytest.raises(gradlab.ArgumentError) as caught:
            gradlab.compare_gradients(problem, data, {"w": 0.0, "b": 0.0}, engines=engines)  # type: ignore[arg-type]
        assert caught.value.argument == "engines"
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.benchmark("quadratic", [10], engines=["numpy", None])  # type: ignore[list-item]
    assert caught.value.argument == "engines"


@pytest.mark.parametrize(
    ("engine", "device"),
    [
        ("torch", "cuda"),
        ("torch", "cuda:3"),
        ("torch", "meta"),
        ("torch", "nonsense"),
        ("torch", 0),
        ("jax", 0),
        ("jax", "tpu"),
        ("jax", "nonsense"),
    ],
)
def test_a_device_that_cannot_compute_is_named_at_construction(engine: str, device: Any) -> None:
    require_engine(engine)
    if engine == "torch":
        import torch

        if (
            device in ("cuda", "cuda:3")
            and torch.cuda.is_available()
            and torch.cuda.device_count() > 3
        ):
            pytest.skip("this machine has that device")
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.get_engine(engine, device=device)
    assert caught.value.argument == "device"


# 2. Arrays from frameworks, grad mode ---------------------------------------------------------


def test_torch_tensors_that_require_grad_are_read_through_a_detached_copy() -> None:
    require_engine("torch")
    import torch

    x = torch.linspace(-1, 1, 20, dtype=torch.float64, requires_grad=True)
    y = (3 * x**2 + 2).detach().requires_grad_(True)
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    before = [t.detach().clone() for t in (x, y, w)]
    for engine in ("numpy", "torch", "fd"):
        result = gradlab.fit(
            gradlab.Quadratic(),
            {"x": x, "y": y},
            engine=engine,
            optimizer=gradlab.sgd(0.01),
            steps=5,
            init={"w": w, "b": 0.0},
        )
        assert result.ok
    for tensor, copy in zip((x, y, w), before, strict=True):
        assert torch.equal(tensor.detach(), copy)
        assert tensor.grad is None
    hand = gradlab.value_and_grad(
        gradlab.Quadratic(), {"x": x, "y": y}, {"w": w, "b": 0.0}, engine="numpy"
    )
    plain = gradlab.value_and_grad(
        gradlab.Quadratic(),
        {"x": x.detach().numpy(), "y": y.detach().numpy()},
        {"w": 0.5, "b": 0.0},
        engine="numpy",
    )
    assert gradlab.max_rho(hand[1], plain[1]) == 0.0


def test_masked_arrays_are_refused_rather_than_their_mask_ignored() -> None:
    x = np.ma.masked_array(np.linspace(0, 1, 5), mask=[False, False, True, False, False])
    with pytest.raises(gradlab.ArgumentTypeError, match=r"data\['x'\]: is a masked array"):
        gradlab.value_and_grad(
            gradlab.Quadratic(), {"x": x, "y": np.ones(5)}, {"w": 0.0, "b": 0.0}, engine="numpy"
        )


@pytest.mark.parametrize("engine", ["torch", "torch-compile"])
def test_the_torch_engines_work_inside_inference_mode_and_leave_it_on(engine: str) -> None:
    require_engine(engine)
    import torch

    recipe = gradlab.recipes.seed_numpy()
    outside = recipe.run(engine, steps=20)
    with torch.inference_mode():
        inside = recipe.run(engine, steps=20)
        _, grads = gradlab.value_and_grad(
            recipe.problem, recipe.data, {"w": 1.0, "b": 0.5}, engine=engine
        )
        product = gradlab.hvp(
            recipe.problem, recipe.data, {"w": 1.0, "b": 0.5}, {"w": 1.0, "b": 0.0}, engine=engine
        )
        assert torch.is_inference_mode_enabled()
    assert not torch.is_inference_mode_enabled()
    np.testing.assert_array_equal(inside.losses, outside.losses)
    assert np.isfinite(grads["w"])
    assert np.isfinite(product["w"])


# 2. Names ---------------------------------------------------------------------------------------


def test_an_unknown_reference_names_reference() -> None:
    problem = gradlab.Quadratic()
    with pytest.raises(gradlab.UnknownEngine) as caught:
        gradlab.compare_gradients(
            problem, problem.make_data(5), {"w": 0.0, "b": 0.0}, reference="bogus"
        )
    assert caught.value.argument == "reference"
    assert str(caught.value).startswith("reference: unknown engine 'bogus'")


def test_resuming_another_problem_or_data_width_names_resume() -> None:
    linear = gradlab.LinearRegression()
    first = gradlab.fit(
        linear,
        linear.make_data(20, d=3),
        engine="numpy",
        optimizer=gradlab.sgd(0.1),
        steps=3,
        init={"w": np.zeros(3), "b": 0.0},
    )
    for problem, data in (
        (linear, linear.make_data(20, d=4)),
        (gradlab.Quadratic(), gradlab.Quadratic().make_data(20)),
    ):
        with pytest.raises(gradlab.ArgumentError) as caught:
            gradlab.fit(
                problem, data, engine="numpy", optimizer=gradlab.sgd(0.1), steps=3, resume=first
            )
        assert caught.value.argument == "resume"


def test_seed_and_progress_are_checked_whatever_else_is_given() -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(10)
    with pytest.raises(gradlab.ArgumentError) as caught:
        sgd_fit(problem, "numpy", data=data, init={"w": 0.0, "b": 0.0}, seed=-1)
    assert caught.value.argument == "seed"
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        sgd_fit(problem, "numpy", data=data, init={"w": 0.0, "b": 0.0}, seed=1.5)
    assert caught.value.argument == "seed"
    for call in (
        lambda: gradlab.compare_gradients(problem, data, {"w": 0.0, "b": 0.0}, progress="no"),  # type: ignore[arg-type]
        lambda: gradlab.benchmark("quadratic", [10], engines="numpy", progress="no"),  # type: ignore[arg-type]
    ):
        with pytest.raises(gradlab.ArgumentTypeError) as caught:
            call()
        assert caught.value.argument == "progress"


@pytest.mark.parametrize("answer", [True, np.True_, 1, "stop", np.array([1.0])])
def test_a_callback_stops_the_fit_when_its_answer_is_true(answer: Any) -> None:
    problem = gradlab.Quadratic()
    result = sgd_fit(
        problem,
        "numpy",
        data=problem.make_data(10),
        init={"w": 0.0, "b": 0.0},
        steps=50,
        every=10,
        callback=lambda step, loss, params: answer,
    )
    assert result.status == "stopped"
    assert result.step == 10


@pytest.mark.parametrize("answer", [None, False, np.False_, 0, ""])
def test_a_callback_whose_answer_is_false_lets_the_fit_go_on(answer: Any) -> None:
    problem = gradlab.Quadratic()
    result = sgd_fit(
        problem,
        "numpy",
        data=problem.make_data(10),
        init={"w": 0.0, "b": 0.0},
        steps=50,
        every=10,
        callback=lambda step, loss, params: answer,
    )
    assert result.status == "completed"


def test_a_callback_answer_without_one_truth_value_is_named() -> None:
    problem = gradlab.Quadratic()
    with pytest.raises(gradlab.ArgumentError) as caught:
        sgd_fit(
            problem,
            "numpy",
            data=problem.make_data(10),
            init={"w": 0.0, "b": 0.0},
            steps=20,
            every=10,
            callback=lambda step, loss, params: np.array([1.0, 0.0]),
        )
    assert caught.value.argument == "callback"


@pytest.mark.parametrize("steps", [2**64, 10**12])
@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_steps_whose_history_cannot_exist_are_refused_up_front(steps: int, engine: str) -> None:
    require_engine(engine)
    problem = gradlab.Quadratic()
    with pytest.raises(gradlab.ArgumentError, match="more than this machine's") as caught:
        sgd_fit(problem, engine, data=problem.make_data(10), init={"w": 0.0, "b": 0.0}, steps=steps)
    assert caught.value.argument == "steps"


def test_every_gradlab_error_survives_pickling() -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(5)
    report = gradlab.compare_gradients(problem, data, {"w": 0.0, "b": 0.0}, engines=["numpy", "fd"])
    errors: list[gradlab.GradlabError] = [
        gradlab.GradlabError("plain"),
        gradlab.ArgumentError("lr", "must be positive"),
        gradlab.ArgumentTypeError("init['w']", "must be a number"),
        gradlab.UnknownEngine("nmupy", ("numpy",), "numpy", "reference"),
        gradlab.MissingDependency("plots", "matplotlib", "plot"),
        gradlab.EngineUnavailable("torch", "torch", "torch"),
        gradlab.NotSupported("no hvp"),
        gradlab.HandGradientMissing("no hand gradient"),
        gradlab.ProblemError("p", "loss", "returned None", "jax"),
        gradlab.Disagreement("they disagree", report),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error)
        assert getattr(back, "argument", None) == getattr(error, "argument", None)
    unknown = pickle.loads(pickle.dumps(errors[3]))
    assert (unknown.name, unknown.known, unknown.suggestion) == ("nmupy", ("numpy",), "numpy")


@pytest.mark.parametrize("engine", BUILTIN_ENGINES)
def test_user_data_is_never_written_even_by_a_loss_that_tries(engine: str) -> None:
    require_engine(engine)
    x = np.linspace(0.0, 1.0, 6)
    original = x.copy()

    def loss(p: Any, d: Any, xp: Any) -> Any:
        return xp.sum((p["a"] * d["x"]) ** 2)

    problem = gradlab.Problem(
        loss, lambda p, d: (np.sum((p["a"] * d["x"]) ** 2), {"a": np.sum(2 * p["a"] * d["x"] ** 2)})
    )
    sgd_fit(problem, engine, data={"x": x}, steps=3, init={"a": 1.0})
    np.testing.assert_array_equal(x, original)


@pytest.mark.parametrize("engine", ["numpy", "jax", "torch"])
def test_fits_in_threads_give_what_fits_in_turn_give(engine: str) -> None:
    require_engine(engine)
    import concurrent.futures

    recipe = gradlab.recipes.seed_numpy()
    alone = recipe.run(engine, steps=50)
    problems = [Shifted(shift=float(i)) for i in range(4)]

    def work(i: int) -> tuple[gradlab.FitResult, gradlab.FitResult | None]:
        seed = recipe.run(engine, steps=50)
        own = None if engine == "numpy" else sgd_fit(problems[i], engine, steps=300)
        return seed, own

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for i, (seed, own) in enumerate(results):
        np.testing.assert_array_equal(seed.losses, alone.losses)
        if own is not None:
            assert float(own.params["a"]) == pytest.approx(float(i), abs=1e-6)
