"""TensorFlow, MLX and torch.func: what the conformance suite does not cover — the XLA loop
against the eager one, TensorFlow's NumPy-semantics arrays, native TensorFlow code, stale
compilations, and the ``gradlab engines`` listing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import cli
from gradlab.problems._named import NAMED_PROBLEMS, at_size


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["softmax_regression", "mlp"])
def test_the_xla_loop_follows_the_eager_loop(name: str, dtype: str) -> None:
    require_engine("tensorflow")
    problem = at_size(NAMED_PROBLEMS[name](), 3)
    data = problem.make_data(30, seed=1)
    rng = np.random.default_rng(2)
    shapes = problem.param_shapes(problem.check_data(data)) or {}
    init = {key: 0.3 * rng.standard_normal(shape) for key, shape in shapes.items()}
    options: dict[str, Any] = {"steps": 37, "batch_size": 8, "dtype": dtype, "init": init}
    eager = gradlab.fit(problem, data, engine="tensorflow", optimizer=gradlab.adam(0.02), **options)
    xla = gradlab.fit(
        problem, data, engine="tensorflow-xla", optimizer=gradlab.adam(0.02), **options
    )
    hand = gradlab.fit(problem, data, engine="numpy", optimizer=gradlab.adam(0.02), **options)
    limit = 1e-12 if dtype == "float64" else 1e-5
    for result in (eager, xla):
        assert gradlab.max_rho({"l": result.losses}, {"l": hand.losses}) <= limit
        assert gradlab.max_rho(result.params, hand.params) <= limit
    assert gradlab.max_rho({"l": xla.losses}, {"l": eager.losses}) <= limit


def test_tensorflow_arrays_have_numpy_semantics() -> None:
    require_engine("tensorflow")
    engine = gradlab.get_engine("tensorflow")
    xp = engine.xp
    x = engine.asarray(np.arange(6.0).reshape(3, 2), "float32")
    w = engine.asarray(np.array([1.0, -1.0]), "float32")
    assert engine.to_numpy(x @ w).tolist() == [-1.0, -1.0, -1.0]  # matrix @ vector
    assert engine.to_numpy(x.T).shape == (2, 3)
    rows = xp.astype(engine.asarray(np.array([2.0, 0.0]), "float32"), xp.int32)
    assert engine.to_numpy(x[rows]).tolist() == [[4.0, 5.0], [0.0, 1.0]]  # an index array
    assert engine.to_numpy(x[:, None, 1]).shape == (3, 1)
    # A Python number takes the array's dtype (the array API's rule), not float64.
    assert (0.5 * x).dtype == xp.float32
    assert (2**w).dtype == xp.float32
    assert xp.isdtype((x + engine.asarray(np.ones(2), "float64")).dtype, "real floating")
    assert (x + engine.asarray(np.ones(2), "float64")).dtype == xp.float64
    assert engine.to_numpy(xp.sum(x, axis=0)).tolist() == [6.0, 9.0]
    assert engine.to_numpy(xp.permute_dims(x, (1, 0))).shape == (2, 3)
    # The array API's concat, as NumPy 2's (GradBench's ht problem uses it).
    assert engine.to_numpy(xp.concat([w, w], axis=0)).tolist() == [1.0, -1.0, 1.0, -1.0]
    with pytest.raises(TypeError, match="immutable"):
        x[0] = 1.0


def test_tensorflow_arrays_index_by_an_integer_array_along_any_axis_as_numpy_does() -> None:
    # NumPy is the oracle: x[:, i] and x[..., i] (GradBench's ht problem gathers vertices so).
    require_engine("tensorflow")
    engine = gradlab.get_engine("tensorflow")
    cube = np.arange(24.0).reshape(2, 3, 4)
    x = engine.asarray(cube, "float64")
    index = np.array([[3, 0], [1, 1], [2, 3]])
    i = engine.xp.astype(engine.asarray(index, "float64"), engine.xp.int64)
    for key, expected in [
        ((slice(None), i[:, 0] % 3), cube[:, index[:, 0] % 3]),
        ((slice(None), slice(None), i), cube[:, :, index]),
        ((Ellipsis, i), cube[..., index]),
        ((Ellipsis, i[0] % 3, slice(None)), cube[..., index[0] % 3, :]),
        ((slice(None), index[:, 1] % 3), cube[:, index[:, 1] % 3]),  # a NumPy index too
    ]:
        got = engine.to_numpy(x[key])
        assert got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected)
    # Two arrays, or an array beside a partial slice, mean what TensorFlow cannot gather in
    # one call: refused by name, not answered with other elements.
    for key in [(i[0], i[1]), (slice(1, None), i[0] % 3)]:
        with pytest.raises(IndexError, match="one axis with every other axis whole"):
            x[key]


def test_native_tensorflow_code_runs_on_the_tensorflow_engines() -> None:
    require_engine("tensorflow")
    require_engine("torch")
    import tensorflow as tf
    import torch

    def tensorflow_loss(params: Any, data: Any) -> Any:
        # TensorFlow's own ops, on gradlab's arrays: converted where TensorFlow wants tensors.
        z = tf.linalg.matvec(tf.convert_to_tensor(data["x"]), tf.convert_to_tensor(params["w"]))
        return tf.reduce_mean(tf.math.softplus(z) - data["y"] * z)

    def torch_loss(params: Any, data: Any) -> Any:
        z = data["x"] @ params["w"]
        return torch.mean(torch.nn.functional.softplus(z) - data["y"] * z)

    def numpy_loss(params: Any, data: Any) -> Any:
        z = data["x"] @ params["w"]
        return np.mean(np.logaddexp(0, z) - data["y"] * z)

    problem = gradlab.NativeProblem(
        name="logistic", tensorflow=tensorflow_loss, torch=torch_loss, numpy=numpy_loss
    )
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((20, 3)), "y": (rng.random(20) > 0.5).astype(float)}
    report = gradlab.compare_gradients(
        problem,
        data,
        {"w": rng.standard_normal(3)},
        engines="torch,tensorflow,tensorflow-xla,fd",
        reference="torch",
    )
    assert report.ok, str(report)
    assert report.verdicts["tensorflow"].rho <= 1e-12
    assert report.verdicts["tensorflow-xla"].rho <= 1e-12
    # A problem without a TensorFlow implementation is declined, with the reason.
    other = gradlab.NativeProblem(name="torch-only", torch=torch_loss)
    with pytest.raises(gradlab.NotSupported, match="no tensorflow implementation"):
        gradlab.value_and_grad(other, data, {"w": np.ones(3)}, engine="tensorflow")


class Scaled(gradlab.AbstractProblem):
    """A loss that reads an attribute: changing it must change every engine's answer."""

    name = "scaled"

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        return self.scale * xp.sum(params["w"] ** 2)


@pytest.mark.parametrize("engine", ["mlx", "tensorflow-xla", "torch-func"])
def test_a_changed_problem_is_compiled_again_never_answered_from_the_old_program(
    engine: str,
) -> None:
    require_engine(engine)
    problem, params = Scaled(1.0), {"w": np.array([1.0, 2.0])}
    first = gradlab.fit(
        problem, {}, engine=engine, optimizer=gradlab.sgd(0.1), init=params, steps=3
    )
    _, grads = gradlab.value_and_grad(problem, {}, params, engine=engine)
    problem.scale = 3.0
    second = gradlab.fit(
        problem, {}, engine=engine, optimizer=gradlab.sgd(0.1), init=params, steps=3
    )
    _, changed = gradlab.value_and_grad(problem, {}, params, engine=engine)
    np.testing.assert_allclose(grads["w"], [2.0, 4.0])
    np.testing.assert_allclose(changed["w"], [6.0, 12.0])
    # sgd on scale·|w|²: w ← (1 − 2·lr·scale)·w, three times.
    np.testing.assert_allclose(first.params["w"], 0.8**3 * params["w"])
    np.testing.assert_allclose(second.params["w"], 0.4**3 * params["w"])


def test_a_long_mlx_fit_is_evaluated_step_by_step() -> None:
    require_engine("mlx")
    recipe = gradlab.recipes.seed_numpy()
    hand, ours = recipe.run("numpy"), recipe.run("mlx")
    assert len(ours.losses) == 800
    assert gradlab.max_rho(hand.params, ours.params) <= 1e-12


@pytest.mark.parametrize(
    ("engine", "device"), [("tensorflow", "tpu"), ("tensorflow", 3), ("mlx", "cuda"), ("mlx", None)]
)
def test_a_device_the_engine_cannot_use_is_refused_naming_device(engine: str, device: Any) -> None:
    require_engine(engine)
    with pytest.raises(gradlab.GradlabError, match="device"):
        gradlab.get_engine(engine, device=device)


def test_torch_func_works_under_inference_mode_and_leaves_it_on() -> None:
    require_engine("torch-func")
    import torch

    problem = gradlab.LinearRegression()
    data = problem.make_data(10, seed=0)
    params = {"w": np.ones(3), "b": np.array(0.5)}
    expected = gradlab.value_and_grad(problem, data, params, engine="numpy")[1]
    with torch.inference_mode():
        _, grads = gradlab.value_and_grad(problem, data, params, engine="torch-func")
        assert torch.is_inference_mode_enabled()
    assert gradlab.max_rho(grads, expected) <= 1e-12


def test_gradlab_engines_lists_every_engine_with_its_capabilities(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gradlab.register_engine(
        "needs-a-missing-framework", gradlab.engines.NumpyEngine, requires=["no_such_module_x"]
    )
    try:
        assert cli.main(["engines", "--json"]) == 0
        listing = {info["name"]: info for info in json.loads(capsys.readouterr().out)}
        assert cli.main(["engines", "--no-load"]) == 0
        table = capsys.readouterr().out
    finally:
        gradlab.unregister_engine("needs-a-missing-framework")
    assert set(listing) >= {"numpy", "fd", "mlx", "tensorflow", "tensorflow-xla", "torch-func"}
    numpy = listing["numpy"]
    assert (numpy["installed"], numpy["device"], numpy["default"]) == (True, "cpu", True)
    assert numpy["version"] == np.__version__
    assert numpy["capabilities"]["hvp"]
    assert not numpy["capabilities"]["compiled loop"]
    missing = listing["needs-a-missing-framework"]
    assert not missing["installed"]
    assert missing["install"] == "pip install no_such_module_x"
    for name in ("tensorflow", "mlx"):
        info = listing[name]
        if info["installed"]:
            assert info["version"]
            assert not info["default"]
        else:
            assert info["install"] == f"pip install 'gradlab[{name}]'"
        assert info["capabilities"]["gradient"]  # read off the class, installed or not
    if listing["jax"]["installed"]:
        assert listing["jax"]["capabilities"]["compiled loop"]
        assert listing["jax"]["capabilities"]["per-example"]
    assert "needs-a-missing-framework" in table
    assert "pip install no_such_module_x" in table


def test_mlx_compiled_and_eager_follow_the_same_path() -> None:
    require_engine("mlx")
    recipe = gradlab.recipes.seed_numpy()
    compiled = recipe.run(gradlab.get_engine("mlx"))
    eager = recipe.run(gradlab.get_engine("mlx", compile=False))
    assert gradlab.max_rho(compiled.params, eager.params) <= 1e-12
    assert gradlab.get_engine("mlx", compile=False).describe()["compiled"] == "eager"
    with pytest.raises(gradlab.ArgumentTypeError, match="compile"):
        gradlab.get_engine("mlx", compile="yes")


def test_a_loss_using_what_the_tensorflow_namespace_lacks_gets_a_clear_error() -> None:
    require_engine("tensorflow")
    problem = gradlab.Problem(
        lambda p, d, xp: xp.sum(xp.linalg.solve(d["A"], p["x"])), name="solve", params={"x": (2,)}
    )
    with pytest.raises(gradlab.ProblemError, match=r"no 'linalg'.*NativeProblem\(tensorflow"):
        gradlab.value_and_grad(problem, {"A": np.eye(2)}, {"x": np.ones(2)}, engine="tensorflow")


def test_engine_info_refuses_a_load_that_is_not_a_bool() -> None:
    with pytest.raises(gradlab.ArgumentTypeError, match="load"):
        gradlab.engine_info(load="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["tensorflow", "tensorflow-xla"])
def test_locate_reads_the_points_of_tensorflow_code(engine: str) -> None:
    require_engine(engine)
    require_engine("torch")
    import tensorflow as tf
    import torch

    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(6, 3)), "y": rng.normal(size=(6,))}
    params = {"w": rng.normal(size=(3,))}

    def written_once(p: Any, d: Any, xp: Any) -> Any:
        z = gradlab.tap("z", d["x"] @ p["w"])
        return xp.sum(gradlab.tap("soft", xp.tanh(z)) * d["y"])

    value = tf.ones(3)
    assert gradlab.tap("point", value) is value
    report = gradlab.locate(
        gradlab.Problem(written_once, name="once"), data, params, engines=f"torch,{engine}"
    )
    assert report.ok, report
    assert [point.name for point in report.points] == ["z", "soft"]

    def tensorflow_loss(p: Any, d: Any) -> Any:
        z = gradlab.tap(
            "z", tf.linalg.matvec(tf.convert_to_tensor(d["x"]), tf.convert_to_tensor(p["w"]))
        )
        return tf.reduce_sum(gradlab.tap("soft", tf.math.tanh(z) * 1.01) * d["y"])

    def torch_loss(p: Any, d: Any) -> Any:
        z = gradlab.tap("z", d["x"] @ p["w"])
        return torch.sum(gradlab.tap("soft", torch.tanh(z)) * d["y"])

    native = gradlab.NativeProblem(name="ported", torch=torch_loss, tensorflow=tensorflow_loss)
    report = gradlab.locate(native, data, params, engines=f"torch,{engine}")
    assert report.first is not None
    assert (report.first.name, report.first.direction) == ("soft", "forward")
