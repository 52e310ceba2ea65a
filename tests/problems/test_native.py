"""The same model written natively in several frameworks (NativeProblem), layouts, optax.

The two-framework MLP classifier is checked engine against engine: each engine runs its
own framework's implementation (torch: an ``nn.Module`` through ``functional_call``; jax:
a JAX function; numpy: hand backpropagation; fd: differences of the NumPy forward pass),
so agreement to float64 round-off means the implementations agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import recipes
from gradlab._tree import tree_map


@pytest.fixture(scope="module")
def recipe() -> recipes.Recipe:
    require_engine("torch")
    require_engine("jax")
    return recipes.mlp_frameworks()


#: float64: engines that differentiate exactly agree to round-off; fd to its own accuracy.
ROUND_OFF = 1e-13


def test_mlp_gradients_agree_to_round_off_across_frameworks(recipe: recipes.Recipe) -> None:
    report = gradlab.compare_gradients(
        recipe.problem, recipe.data, recipe.init, engines="numpy,torch,jax,fd,torch-compile"
    )
    assert report.ok, report
    for engine in ("torch", "jax", "torch-compile"):
        assert report.verdicts[engine].rho < ROUND_OFF, report
    assert report.verdicts["fd"].rho < 1e-9
    assert report.verdicts["torch"].worst is None or report.verdicts["torch"].worst.startswith(
        "layers["
    )


def test_mlp_float32_gradients_agree_within_float32(recipe: recipes.Recipe) -> None:
    report = gradlab.compare_gradients(
        recipe.problem, recipe.data, recipe.init, engines="numpy,torch,jax", dtype="float32"
    )
    assert report.ok, report
    assert max(report.rho_float64.values()) < 1e-6


def test_mlp_hvps_agree_across_frameworks(recipe: recipes.Recipe) -> None:
    rng = np.random.default_rng(3)
    tangent = tree_map(lambda value: rng.standard_normal(np.shape(value)), recipe.init)
    report = gradlab.compare_hessians(
        recipe.problem, recipe.data, recipe.init, tangent=tangent, engines="numpy,torch,jax,fd"
    )
    assert report.ok, report
    assert report.reference == "numpy"  # the hand-derived R-operator
    for engine in ("torch", "jax"):
        assert report.verdicts[engine].rho < ROUND_OFF, report
    assert report.rho[1, 2] < ROUND_OFF  # torch against jax
    assert report.verdicts["fd"].rho < 1e-8


def test_the_hand_hessian_of_a_deeper_classifier_matches_both_frameworks() -> None:
    # Three layers: the R-operator's backward recursion runs through a hidden-to-hidden layer.
    from gradlab.problems._classifier import classifier_data, classifier_init, mlp_classifier

    require_engine("torch")
    require_engine("jax")
    sizes = (3, 5, 4, 2)
    problem = mlp_classifier(sizes)
    data, init = classifier_data(30, 2, features=3, seed=1), classifier_init(sizes, seed=2)
    report = gradlab.compare_hessians(problem, data, init, engines="numpy,torch,jax")
    assert report.ok, report
    assert report.values["numpy"]["hessian"].shape == (54, 54)  # 3·5 + 5 + 5·4 + 4 + 4·2 + 2
    assert max(report.verdicts[engine].rho for engine in ("torch", "jax")) < ROUND_OFF


def test_mlp_adam_fits_follow_one_path(recipe: recipes.Recipe) -> None:
    comparison = gradlab.compare_fits(
        recipe.problem,
        recipe.data,
        optimizer=recipe.optimizer,
        steps=recipe.steps,
        init=recipe.init,
        # torch-compile's loop is checked on the other problems (test_fast_paths), its
        # gradient of this model above: compiling its Adam loop here cost 10 s of the suite.
        engines="numpy,torch,jax",
    )
    assert comparison.ok, comparison
    assert comparison.divergence[0].max() < 1e-12, comparison
    # The fit learns: 200 Adam steps take the cross-entropy from over 1 to near 0.
    assert comparison.results["numpy"].losses[0] > 1
    assert comparison.results["jax"].final_loss < 0.05


def test_the_benchmark_times_each_framework_on_its_own_implementation(
    recipe: recipes.Recipe,
) -> None:
    result = gradlab.benchmark(
        recipe.problem, [40], engines="numpy,torch,jax", min_time=0.001, fit_steps=10
    )
    assert [(case.engine, case.status) for case in result.cases] == [
        ("numpy", "measured"),
        ("torch", "measured"),
        ("jax", "measured"),
    ]
    data = recipe.problem.make_data(40, seed=1)
    assert data["x"].shape == (40, 2)
    assert data["y"].sum(axis=1).tolist() == [1.0] * 40  # one-hot labels


def test_the_layout_matches_the_torch_module(recipe: recipes.Recipe) -> None:
    from gradlab.problems._classifier import torch_layout, torch_model

    _, native = gradlab.torch_module(torch_model((2, 16, 3)))
    layout = torch_layout((2, 16, 3), {name: value.shape for name, value in native.items()})
    mapped = layout.to_native(recipe.init, np)
    for name, value in native.items():
        assert mapped[name].shape == value.shape
    np.testing.assert_array_equal(mapped["0.weight"], recipe.init["layers"][0]["kernel"].T)


def test_an_engine_without_an_implementation_is_skipped_or_refused() -> None:
    require_engine("jax")
    problem = gradlab.NativeProblem(name="numpy_only", numpy=lambda p, d: np.sum(p["a"] ** 2))
    report = gradlab.compare_gradients(problem, {}, {"a": np.ones(2)})
    assert "jax" in report.skipped
    assert "no jax implementation" in report.skipped["jax"]
    with pytest.raises(gradlab.NotSupported, match="no jax implementation"):
        gradlab.compare_gradients(problem, {}, {"a": np.ones(2)}, engines="fd,jax")
    with pytest.raises(gradlab.NotSupported, match=r"give jax=\.\.\."):
        gradlab.value_and_grad(problem, {}, {"a": np.ones(2)}, engine="jax")


def test_without_a_numpy_implementation_the_first_engine_that_can_is_the_reference() -> None:
    require_engine("torch")
    require_engine("jax")
    torch = importlib.import_module("torch")
    jnp = importlib.import_module("jax.numpy")
    problem = gradlab.NativeProblem(
        name="cubes",
        torch=lambda p, d: torch.sum(p["a"] ** 3),
        jax=lambda p, d: jnp.sum(p["a"] ** 3),
    )
    point = {"a": np.array([1.0, -2.0])}
    for engines in (None, "jax,torch"):
        report = gradlab.compare_gradients(problem, {}, point, engines=engines)
        assert report.ok, report
        assert report.reference == ("torch" if engines is None else "jax")
        assert "no numpy implementation" in report.skipped["fd"]
        np.testing.assert_allclose(report.values["torch"]["a"], [3.0, 12.0], rtol=1e-15)
    hessians = gradlab.compare_hessians(problem, {}, point, engines="jax,torch")
    assert hessians.reference == "jax"
    np.testing.assert_allclose(hessians.values["torch"]["hessian"], np.diag([6.0, -12.0]))
    # A reference the caller names must run.
    with pytest.raises(gradlab.NotSupported, match="no numpy implementation"):
        gradlab.compare_gradients(problem, {}, point, engines="jax,torch", reference="fd")


def test_a_problem_no_installed_engine_can_run_is_refused_with_every_reason() -> None:
    problem = gradlab.NativeProblem(name="elsewhere", tensorflow=lambda p, d: p["a"])
    point = {"a": np.ones(2)}
    for compare in (
        lambda: gradlab.compare_gradients(problem, {}, point),
        lambda: gradlab.compare_hessians(problem, {}, point),
        lambda: gradlab.compare_fits(problem, {}, optimizer=gradlab.sgd(0.1), steps=2, init=point),
    ):
        with pytest.raises(gradlab.NotSupported, match="no engine can run this") as caught:
            compare()
        assert caught.value.argument == "engines"
        assert "fd: problem 'elsewhere' has no numpy implementation" in str(caught.value)


def test_implementations_that_read_other_structures_are_named() -> None:
    require_engine("torch")
    torch = importlib.import_module("torch")
    problem = gradlab.NativeProblem(
        name="mismatch",
        numpy=lambda p, d: np.sum(p["w"] ** 2),
        torch=lambda p, d: torch.sum(p["W"] ** 2),
    )
    with pytest.raises(gradlab.ProblemError) as caught:
        gradlab.compare_gradients(problem, {}, {"w": np.ones(2)}, engines="fd,torch")
    assert caught.value.engine == "torch"
    assert "KeyError: 'W'" in str(caught.value)
    assert "each reads the structure of init" in str(caught.value)


def test_a_hand_gradient_of_another_structure_is_named() -> None:
    problem = gradlab.NativeProblem(
        name="bad_hand",
        numpy=lambda p, d: np.sum(p["layer"]["w"] ** 2),
        value_and_grad=lambda p, d: (np.sum(p["layer"]["w"] ** 2), {"w": 2 * p["layer"]["w"]}),
    )
    with pytest.raises(gradlab.ProblemError, match="value_and_grad"):
        gradlab.value_and_grad(problem, {}, {"layer": {"w": np.ones(2)}}, engine="numpy")


def test_torch_module_refuses_buffers_integers_and_frozen_parameters() -> None:
    require_engine("torch")
    torch = importlib.import_module("torch")
    with pytest.raises(gradlab.ArgumentError, match="buffers"):
        gradlab.torch_module(torch.nn.BatchNorm1d(3))
    counted = torch.nn.Linear(2, 2)
    counted.steps = torch.nn.Parameter(torch.zeros(1, dtype=torch.int64), requires_grad=False)
    with pytest.raises(gradlab.ArgumentError, match=r"'steps' is torch\.int64"):
        gradlab.torch_module(counted)
    frozen = torch.nn.Linear(2, 2)
    frozen.bias.requires_grad_(False)
    with pytest.raises(gradlab.ArgumentError, match="'bias' does not require grad"):
        gradlab.torch_module(frozen)
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.torch_module(lambda x: x)
    assert caught.value.argument == "module"


def test_layout_errors_name_what_does_not_fit() -> None:
    layout = gradlab.Layout({"fc.weight": ("fc.kernel", (1, 0))}, shapes={"fc.weight": (2, 3)})
    with pytest.raises(gradlab.ArgumentError, match="lacks") as caught:
        layout.check({"other": np.zeros((3, 2))}, "params")
    assert caught.value.argument == "params"
    with pytest.raises(gradlab.ArgumentError, match="has shape"):
        layout.check({"fc.kernel": np.zeros((2, 3))})
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.Layout({"a": ("x", (0, 0))})
    assert caught.value.argument == "mapping['a']"
    with pytest.raises(gradlab.ArgumentError, match="more than once"):
        gradlab.Layout({"a": "x", "b": "x"})
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.NativeProblem(numpy=lambda p, d: p, layouts={"torch": layout})
    assert caught.value.argument == "layouts"


def test_parameters_that_do_not_fit_a_layout_are_refused_by_every_entry_point() -> None:
    require_engine("torch")
    torch = importlib.import_module("torch")
    apply, native = gradlab.torch_module(torch.nn.Linear(3, 2))
    layout = gradlab.Layout(
        {"weight": ("fc.kernel", (1, 0)), "bias": "fc.bias"},
        shapes={name: value.shape for name, value in native.items()},
    )
    problem = gradlab.NativeProblem(
        name="linear",
        torch=lambda p, d: torch.sum(apply(p, d["x"]) ** 2),
        layouts={"torch": layout},
    )
    data = {"x": np.ones((4, 3))}
    _, grads = gradlab.value_and_grad(
        problem, data, {"fc": {"kernel": np.ones((3, 2)), "bias": np.zeros(2)}}, engine="torch"
    )
    np.testing.assert_allclose(grads["fc"]["kernel"], np.full((3, 2), 2 * 4 * 3.0))
    sgd = gradlab.sgd(1.0)

    def fit(p: Any) -> Any:
        return gradlab.fit(problem, data, engine="jax", optimizer=sgd, steps=1, init=p)

    # Refused at the boundary, before any engine runs (even jax, which has no implementation
    # here), naming each entry point's argument
    # (fd has no NumPy implementation here: the layout's error comes first all the same).
    entry_points: list[tuple[str, Any]] = [
        ("params", lambda p: gradlab.value_and_grad(problem, data, p, engine="torch")),
        ("params", lambda p: gradlab.compare_gradients(problem, data, p)),
        (
            "init",
            lambda p: gradlab.fit(problem, data, engine="jax", optimizer=sgd, steps=1, init=p),
        ),
    ]
    for wrong, words in (
        ({"fc": {"kernel": np.ones((3, 2))}}, "lacks ['fc.bias']"),
        ({"fc": {"kernel": np.ones((2, 3)), "bias": np.zeros(2)}}, "has shape (2, 3)"),
    ):
        for argument, call in entry_points:
            with pytest.raises(gradlab.ArgumentError) as caught:
                call(wrong)
            assert caught.value.argument == argument
            assert words in str(caught.value)


OPTAX_PAIRS = [
    ("adam", lambda o: o.adam(0.05), lambda: gradlab.adam(0.05)),
    ("sgd", lambda o: o.sgd(0.1), lambda: gradlab.sgd(0.1)),
    ("momentum", lambda o: o.sgd(0.1, momentum=0.9), lambda: gradlab.momentum(0.1, 0.9)),
    (
        "nesterov",
        lambda o: o.sgd(0.1, momentum=0.9, nesterov=True),
        lambda: gradlab.momentum(0.1, 0.9, nesterov=True),
    ),
]


def on_jax(recipe: recipes.Recipe, optimizer: Any, **kwargs: Any) -> gradlab.FitResult:
    """The recipe's fit on the jax engine with ``optimizer`` (from its start unless told)."""
    kwargs.setdefault("init", recipe.init)
    return gradlab.fit(recipe.problem, recipe.data, engine="jax", optimizer=optimizer, **kwargs)


@pytest.mark.parametrize(("name", "make_optax", "make_gradlab"), OPTAX_PAIRS)
def test_gradlab_optimizers_match_optax_over_100_steps(
    recipe: recipes.Recipe, name: str, make_optax: Any, make_gradlab: Any
) -> None:
    optax = pytest.importorskip("optax")
    runs = [
        on_jax(recipe, optimizer, steps=100, trajectory=True)
        for optimizer in (make_optax(optax), make_gradlab())
    ]
    path = gradlab._agreement.path_rho(runs[0].trajectory, runs[1].trajectory)
    assert path.max() < 1e-12, (name, path.max())


def test_optax_state_and_resume(recipe: recipes.Recipe) -> None:
    optax = pytest.importorskip("optax")
    optimizer = optax.adam(0.05)
    whole = on_jax(recipe, optimizer, steps=60)
    first = on_jax(recipe, optimizer, steps=25)
    rest = on_jax(recipe, optimizer, steps=35, init=None, resume=first)
    assert type(first.state[0]).__name__ == "ScaleByAdamState"
    assert int(first.state[0].count) == 25
    assert first.state[0].mu["layers"][0]["kernel"].shape == (2, 16)
    assert gradlab.max_rho(rest.params, whole.params) < 1e-13
    for dtype in ("float32", "float64"):
        result = on_jax(recipe, optimizer, steps=3, dtype=dtype)
        assert result.state[0].mu["layers"][1]["bias"].dtype == np.dtype(dtype)


def test_optax_elsewhere_is_refused_naming_the_optimizer(recipe: recipes.Recipe) -> None:
    optax = pytest.importorskip("optax")
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.fit(
            recipe.problem,
            recipe.data,
            engine="torch",
            optimizer=optax.adam(0.1),
            steps=2,
            init=recipe.init,
        )
    assert caught.value.argument == "optimizer"
    assert "'jax' engine only" in str(caught.value)
    comparison = gradlab.compare_fits(
        recipe.problem,
        recipe.data,
        optimizer=optax.sgd(0.1),
        steps=5,
        init=recipe.init,
        reference="jax",
    )
    assert comparison.engines == ("jax",)
    assert "torch" in comparison.skipped
    # Without a reference named, the default one (numpy: the hand gradient) cannot run an
    # optax optimizer: it is skipped with its note, and jax is the reference.
    default = gradlab.compare_fits(
        recipe.problem, recipe.data, optimizer=optax.sgd(0.1), steps=5, init=recipe.init
    )
    assert default.reference == "jax"
    assert "'jax' engine only" in default.skipped["numpy"]


def test_an_optax_update_that_fails_is_blamed_on_the_optimizer_not_the_loss() -> None:
    optax = pytest.importorskip("optax")
    require_engine("jax")
    problem = gradlab.Problem(lambda p, d, xp: xp.sum((p["w"] - 1.0) ** 2), name="bowl")
    init = {"w": np.zeros(3)}
    # lbfgs's update needs value, grad and value_fn besides (grads, state, params).
    with pytest.raises(gradlab.ArgumentError, match="value_fn") as caught:
        gradlab.fit(problem, {}, engine="jax", optimizer=optax.lbfgs(), steps=3, init=init)
    assert caught.value.argument == "optimizer"

    def broken(p: Any, d: Any, xp: Any) -> Any:
        raise RuntimeError("the loss's own bug")

    with pytest.raises(gradlab.ProblemError, match="the loss's own bug"):
        gradlab.fit(
            gradlab.Problem(broken, params={"w": (3,)}),
            {},
            engine="jax",
            optimizer=optax.adam(0.1),
            steps=3,
            init=init,
        )


def test_optimizer_must_have_init_and_update() -> None:
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.fit(
            gradlab.Quadratic(),
            {"x": [1.0], "y": [1.0]},
            engine="numpy",
            optimizer=object(),
            steps=1,
            init={"w": 0.0, "b": 0.0},
        )
    assert caught.value.argument == "optimizer"


def _linear_module_problem() -> tuple[Any, dict[str, np.ndarray]]:
    """A torch-only NativeProblem around ``nn.Linear(3, 2)`` (no NumPy implementation: no
    probe runs before the engine), and the module's parameters."""
    torch = pytest.importorskip("torch")
    require_engine("torch")
    apply, native = gradlab.torch_module(torch.nn.Linear(3, 2, dtype=torch.float64))
    problem = gradlab.NativeProblem(
        name="linear_module", torch=lambda p, d: torch.sum(apply(p, d["x"]) ** 2)
    )
    return problem, native


#: Parameters a module's apply must refuse, and what the error must name. ``functional_call``
#: itself runs a left-out parameter on the module's own value (no gradient for it), ignores
#: an unknown name (a zero gradient), and broadcasts a (1,) bias.
WRONG_MODULE_PARAMS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("missing", lambda w, b: {"weight": w}, ("lack 'bias'",)),
    ("extra", lambda w, b: {"weight": w, "bias": b, "scale": np.ones(2)}, ("'scale'",)),
    (
        "missing and extra",
        lambda w, b: {"weight": w, "bais": b},
        ("lack 'bias'", "'bais'", "not have"),
    ),
    ("broadcast shape", lambda w, b: {"weight": w, "bias": np.ones(1)}, ("(1,)", "(2,)")),
    ("transposed", lambda w, b: {"weight": w.T, "bias": b}, ("(3, 2)", "axes (1, 0)")),
    ("nested", lambda w, b: {"fc": {"weight": w, "bias": b}}, ("lack 'weight', 'bias'",)),
]


@pytest.mark.parametrize("entry", ["value_and_grad", "fit", "compare_gradients"])
@pytest.mark.parametrize(
    ("case", "make", "words"), WRONG_MODULE_PARAMS, ids=[c[0] for c in WRONG_MODULE_PARAMS]
)
def test_torch_module_apply_refuses_parameters_that_are_not_the_modules(
    entry: str, case: str, make: Any, words: tuple[str, ...]
) -> None:
    problem, native = _linear_module_problem()
    params = make(native["weight"], native["bias"])
    data = {"x": np.ones((4, 3))}
    calls: dict[str, Callable[[], object]] = {
        "value_and_grad": lambda: gradlab.value_and_grad(problem, data, params, engine="torch"),
        "fit": lambda: gradlab.fit(
            problem, data, engine="torch", optimizer=gradlab.sgd(0.1), steps=2, init=params
        ),
        "compare_gradients": lambda: gradlab.compare_gradients(
            problem, data, params, engines="torch,torch-func"
        ),
    }
    with pytest.raises(gradlab.ArgumentError) as caught:
        calls[entry]()
    message = str(caught.value)
    assert caught.value.argument == "init"
    assert message.startswith("init (or params)")
    for word in words:
        assert word in message


def test_torch_module_apply_takes_exactly_the_modules_parameters_on_every_torch_engine() -> None:
    # The check inside apply does not get in the way of the right parameters: the gradient
    # of sum((x W^T + b)^2) is the hand-derived 2 r^T x and 2 sum(r), r = x W^T + b.
    problem, native = _linear_module_problem()
    x = np.arange(12.0).reshape(4, 3) / 10
    residual = x @ native["weight"].T + native["bias"]
    for engine in ("torch", "torch-func", "torch-fwd"):
        _, grads = gradlab.value_and_grad(problem, {"x": x}, native, engine=engine)
        np.testing.assert_allclose(grads["weight"], 2 * residual.T @ x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads["bias"], 2 * residual.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_torch_module_refuses_a_module_on_the_meta_device() -> None:
    torch = pytest.importorskip("torch")
    half_built = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1, device="meta"))
    for module, name in (
        (torch.nn.Linear(2, 3, device="meta"), "weight"),
        (half_built, "1.weight"),
    ):
        with pytest.raises(gradlab.ArgumentError) as caught:
            gradlab.torch_module(module)
        assert caught.value.argument == "module"
        message = str(caught.value)
        assert f"{name!r}" in message
        assert "meta device" in message
        assert "no values" in message
        assert "to_empty" in message


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_module_copies_its_parameters_as_float64_whatever_their_dtype(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(2, 3, dtype=getattr(torch, dtype))
    # Python floats hold every value of these dtypes exactly: the oracle.
    own = np.array(module.weight.detach().double().tolist())
    _, params = gradlab.torch_module(module)
    assert params["weight"].dtype == np.float64
    np.testing.assert_array_equal(params["weight"], own)
    params["weight"][...] = 7.0  # a copy: the module's own values do not change
    np.testing.assert_array_equal(module.weight.detach().double().tolist(), own)


@pytest.mark.parametrize("where", ["data", "params"])
def test_meta_tensors_in_data_or_parameters_are_refused_naming_them(where: str) -> None:
    torch = pytest.importorskip("torch")
    problem = gradlab.Problem(lambda p, d, xp: xp.sum((d["x"] @ p["w"]) ** 2), params={"w": (3,)})
    data: dict[str, Any] = {"x": np.ones((4, 3))}
    params: dict[str, Any] = {"w": np.ones(3)}
    if where == "data":
        data["x"] = torch.zeros(4, 3, device="meta")
    else:
        params["w"] = torch.zeros(3, device="meta")
    for engine in ("numpy", "fd"):
        with pytest.raises(gradlab.ArgumentError) as caught:
            gradlab.value_and_grad(problem, data, params, engine=engine)
        assert caught.value.argument == ("data['x']" if where == "data" else "params['w']")
        assert "meta device" in str(caught.value)
        assert "no values" in str(caught.value)


#: Layout shapes that are not shapes, with the argument the error must name.
BAD_LAYOUT_SHAPES: list[tuple[object, str]] = [
    ({"w": 3}, "shapes['w']"),
    ({"w": "3"}, "shapes['w']"),
    ({"w": None}, "shapes['w']"),
    ({"w": (2.0, 3)}, "shapes['w']"),
    ({"w": (True, 3)}, "shapes['w']"),
    ({"w": (np.True_, 3)}, "shapes['w']"),
    ({"w": (-1, 3)}, "shapes['w']"),
    ({"w": np.array([2, 3])}, "shapes['w']"),
    ({"fc": {"w": (2, -3)}}, "shapes['fc']['w']"),
    ({"fc": {"w": 3}}, "shapes['fc']['w']"),
    ({"fc": {}}, "shapes['fc']"),
    ({"fc": {1: (2,)}}, "shapes['fc'][1]"),
    ([("w", (2, 3))], "shapes"),
    ((2, 3), "shapes"),
]


@pytest.mark.parametrize(("shapes", "argument"), BAD_LAYOUT_SHAPES)
def test_layout_shapes_must_be_shapes(shapes: object, argument: str) -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.Layout({"w": "w"}, shapes=shapes)  # type: ignore[arg-type]
    assert caught.value.argument == argument


def test_layout_shapes_may_be_numpy_ints_lists_or_nested_by_native_name() -> None:
    numpy_ints = (np.int64(2), np.intp(3))
    declarations: list[Any] = [
        {"fc.w": numpy_ints, "fc.b": [2]},
        {"fc": {"w": (2, 3), "b": (2,)}},
        {"fc": {"w": (2, 3)}, "fc.b": (2,)},
    ]
    for shapes in declarations:
        layout = gradlab.Layout({"fc.w": ("k", (1, 0)), "fc.b": "b"}, shapes=shapes)
        assert layout.shapes == {"fc.w": (2, 3), "fc.b": (2,)}
        assert all(type(size) is int for shape in layout.shapes.values() for size in shape)
        layout.check({"k": np.zeros((3, 2)), "b": np.zeros(2)})
    with pytest.raises(gradlab.ArgumentError, match="second time") as caught:
        gradlab.Layout({"fc.w": "k"}, shapes={"fc.w": (2,), "fc": {"w": (2,)}})
    assert str(caught.value.argument).startswith("shapes")


def test_layout_mapping_is_checked_and_reads_paths_in_any_spelling() -> None:
    # Sources are canonical paths however they are written; a key with a dot in brackets.
    layout = gradlab.Layout(
        {"w": ("fc['kernel']", (np.int64(1), np.int64(0))), "b": "['fc.bias']"},
        shapes={"w": (2, 3), "b": (2,)},
    )
    assert layout.mapping == {"w": ("fc.kernel", (1, 0)), "b": ("['fc.bias']", None)}
    native = layout.to_native({"fc": {"kernel": np.zeros((3, 2))}, "fc.bias": np.ones(2)}, np)
    assert native["w"].shape == (2, 3)
    for mapping, argument in (
        ({"w": ("k", (True, False))}, "mapping['w']"),
        ({"w": "a..b"}, "mapping['w']"),
        ({"w": "a["}, "mapping['w']"),
        ({0: "k"}, "mapping"),
    ):
        with pytest.raises(gradlab.ArgumentError) as caught:
            gradlab.Layout(mapping)  # type: ignore[arg-type]
        assert caught.value.argument == argument
