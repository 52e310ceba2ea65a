"""Keras 3 models through ``keras_model`` and ``keras_problem``, on every backend present.

Oracles: NumPy forwards written here by hand from Keras' documented layouts (a Dense
kernel is (in, out), a Conv1D kernel (width, in, out), BatchNormalization in inference
mode normalises with its moving statistics and ``epsilon=1e-3``), finite differences of
them, and the other backends. A test that names a backend is parametrized over it, with
the backend in its id: CI's TensorFlow step selects the tensorflow ones with
``-k tensorflow``.

Models here use ``EinsumDense`` rather than ``Dense`` and no ``tanh`` where float64 is
compared to 1e-12: Keras 3.15 computes ``Dense``'s matmul in float32 on torch, and ``tanh``
in float32 on jax, even in float64 (keras#23704, keras#23223).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gradlab
from gradlab.problems._keras import keras_model, keras_problem

# Not pytest.importorskip("keras"): importing Keras here would import the backend of the
# machine's configuration (tensorflow, where none is set) into the test process, and skip
# the whole file where that backend is not installed.
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)

BACKENDS = ("jax", "torch", "tensorflow")
#: The engines that run each backend's model, opt-in ones included.
ENGINES = {
    "jax": ("jax", "jax-fwd"),
    "torch": ("torch", "torch-func", "torch-fwd"),
    "tensorflow": ("tensorflow", "tensorflow-xla"),
}
SEQ = "sequential"


def require(*backends: str) -> None:
    """Skip the test when a backend's framework is not installed."""
    for backend in backends:
        if importlib.util.find_spec(backend) is None:
            pytest.skip(f"{backend} is not installed")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each Keras backend, skipping those whose framework is not installed."""
    name: str = request.param
    require(name)
    return name


def engines_of(*backends: str) -> list[str]:
    """The installed engines that run these backends' models."""
    installed = gradlab.available_engines()
    return [engine for b in backends for engine in ENGINES[b] if engine in installed]


def tensors(backend: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Arrays as the framework's tensors, as its engines hand them to a model."""
    if backend == "torch":
        torch = importlib.import_module("torch")
        return {name: torch.tensor(value) for name, value in arrays.items()}
    if backend == "jax":
        jnp = importlib.import_module("jax.numpy")
        return {name: jnp.asarray(value) for name, value in arrays.items()}
    tf = importlib.import_module("tensorflow")
    return {name: tf.constant(value) for name, value in arrays.items()}


def computing(backend: str, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """JAX's 64-bit mode for float64 on jax (as gradlab's jax engine scopes it)."""
    if backend != "jax":
        return contextlib.nullcontext()
    mode: contextlib.AbstractContextManager[Any] = importlib.import_module("jax").enable_x64(
        dtype == "float64"
    )
    return mode


def as_numpy(value: Any) -> np.ndarray:
    """A tensor's values, in its dtype."""
    if hasattr(value, "detach"):  # torch: through torch, as Tensor.__array__ warns
        return np.asarray(value.detach().numpy())
    if hasattr(value, "numpy"):  # tensorflow
        return np.asarray(value.numpy())
    return np.asarray(value)


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 / (1 + np.exp(-z))
    return out


# --- Models, and their forwards written by hand in NumPy --------------------------------


def mlp(keras: Any) -> Any:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((3,)),
            layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c", activation="sigmoid"),
            layers.EinsumDense("ab,bc->ac", output_shape=1, bias_axes="c"),
        ]
    )


def mlp_numpy(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    hidden = sigmoid(x @ p[f"{SEQ}/einsum_dense/kernel"] + p[f"{SEQ}/einsum_dense/bias"])
    out: np.ndarray = hidden @ p[f"{SEQ}/einsum_dense_1/kernel"] + p[f"{SEQ}/einsum_dense_1/bias"]
    return out


def conv(keras: Any) -> Any:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((6, 2)),
            layers.Conv1D(3, 3, activation="softplus"),
            layers.Flatten(),
            layers.EinsumDense("ab,bc->ac", output_shape=1, bias_axes="c"),
        ]
    )


def conv_numpy(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    kernel = p[f"{SEQ}/conv1d/kernel"]  # (width, in, out): Keras' layout, channels last
    width, steps = kernel.shape[0], x.shape[1] - kernel.shape[0] + 1
    z = sum(x[:, j : j + steps, :] @ kernel[j] for j in range(width)) + p[f"{SEQ}/conv1d/bias"]
    flat = np.log1p(np.exp(z)).reshape(len(x), -1)  # Flatten: (steps, channels) row-major
    out: np.ndarray = flat @ p[f"{SEQ}/einsum_dense/kernel"] + p[f"{SEQ}/einsum_dense/bias"]
    return out


MEAN, VARIANCE = np.array([0.5, -1.0, 2.0]), np.array([4.0, 0.25, 1.0])


def normalised(keras: Any) -> Any:
    """BatchNormalization with set moving statistics, then Dropout, both in inference mode."""
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.EinsumDense("ab,bc->ac", output_shape=1, bias_axes="c"),
        ]
    )
    model.layers[0].moving_mean.assign(MEAN)
    model.layers[0].moving_variance.assign(VARIANCE)
    return model


def normalised_numpy(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    bn = f"{SEQ}/batch_normalization"
    scaled = (x - MEAN) / np.sqrt(VARIANCE + 1e-3) * p[f"{bn}/gamma"] + p[f"{bn}/beta"]
    out: np.ndarray = scaled @ p[f"{SEQ}/einsum_dense/kernel"] + p[f"{SEQ}/einsum_dense/bias"]
    return out


#: Models Keras computes in float64 on every backend when asked to, their hand-written
#: forwards, and their inputs' shapes.
MODELS: dict[str, tuple[Callable[[Any], Any], Callable[..., np.ndarray], tuple[int, ...]]] = {
    "mlp": (mlp, mlp_numpy, (3,)),
    "conv": (conv, conv_numpy, (6, 2)),
}


def squared_error(outputs: Any, data: Any, xp: Any) -> Any:
    return xp.mean((outputs[:, 0] - data["y"]) ** 2)


def squared_error_numpy(forward: Callable[..., np.ndarray]) -> Callable[..., Any]:
    return lambda p, d: np.mean((forward(p, d["x"])[:, 0] - d["y"]) ** 2)


def data_for(shape: tuple[int, ...], rows: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(rows, *shape)), "y": rng.normal(size=rows)}


def spread(params: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """Parameters away from Keras' initial values (biases are zero there)."""
    rng = np.random.default_rng(seed)
    return {name: value + 0.3 * rng.normal(size=value.shape) for name, value in params.items()}


FORWARDS: dict[Callable[[Any], Any], Callable[..., np.ndarray]] = {
    mlp: mlp_numpy,
    conv: conv_numpy,
    normalised: normalised_numpy,
}


@functools.cache
def model_of(build: Callable[[Any], Any], backend: str) -> tuple[Callable[..., Any], Any]:
    """``keras_model(build, backend=backend)``, built once for the whole file (a model's
    apply is a pure function: tests share it, and engines their compilations of it)."""
    return keras_model(build, backend=backend)


@functools.cache
def problem_of(build: Callable[[Any], Any], *backends: str) -> tuple[Any, dict[str, np.ndarray]]:
    """``keras_problem`` of ``build`` with the squared error (and the hand-written NumPy
    function, where there is one), built once for the whole file; never modify params."""
    forward = FORWARDS.get(build)
    numpy = None if forward is None else squared_error_numpy(forward)
    return keras_problem(build, squared_error, backends=list(backends), numpy=numpy)


# --- The model as a function, against the hand-written forward -----------------------------


@pytest.mark.parametrize("model", MODELS)
def test_apply_is_the_hand_written_forward_in_float64(backend: str, model: str) -> None:
    build, forward, shape = MODELS[model]
    apply, params = model_of(build, backend)
    assert all(value.dtype == np.float64 for value in params.values())
    point, x = spread(params), data_for(shape)["x"]
    with computing(backend, "float64"):
        output = apply(tensors(backend, point), tensors(backend, {"x": x})["x"])
    assert as_numpy(output).dtype == np.float64
    np.testing.assert_allclose(as_numpy(output), forward(point, x), rtol=1e-12, atol=1e-13)


def test_float32_parameters_run_the_float32_twin(backend: str) -> None:
    apply, params = model_of(mlp, backend)
    point = {name: value.astype(np.float32) for name, value in spread(params).items()}
    x = data_for((3,))["x"].astype(np.float32)
    with computing(backend, "float32"):
        output = apply(tensors(backend, point), tensors(backend, {"x": x})["x"])
    assert as_numpy(output).dtype == np.float32
    np.testing.assert_allclose(as_numpy(output), mlp_numpy(point, x), rtol=1e-5, atol=1e-6)


# --- Gradients: every engine of every backend, against finite differences -----------------


@pytest.mark.parametrize("model", MODELS)
def test_gradients_agree_with_finite_differences_on_every_engine(backend: str, model: str) -> None:
    build, _, shape = MODELS[model]
    problem, params = problem_of(build, backend)
    report = gradlab.compare_gradients(
        problem, data_for(shape), spread(params), engines=["fd", *engines_of(backend)]
    )
    assert report.reference == "fd"
    assert report.ok, str(report)
    assert set(report.verdicts) == {"fd", *engines_of(backend)}


def two_inputs(keras: Any) -> Any:
    first, second = keras.Input((2,)), keras.Input((3,))
    joined = keras.layers.Concatenate()([first, second])
    layer = keras.layers.EinsumDense("ab,bc->ac", output_shape=1, bias_axes="c")
    return keras.Model([first, second], layer(joined))


def test_a_functional_model_of_two_inputs_takes_them_as_a_list(backend: str) -> None:
    def by_hand(p: dict[str, np.ndarray], d: dict[str, np.ndarray]) -> Any:
        joined = np.concatenate([d["a"], d["b"]], axis=1)
        outputs = joined @ p["einsum_dense/kernel"] + p["einsum_dense/bias"]
        return np.mean((outputs[:, 0] - d["y"]) ** 2)

    problem, params = keras_problem(
        two_inputs, squared_error, backends=[backend], inputs=["a", "b"], numpy=by_hand
    )
    rng = np.random.default_rng(2)
    data = {"a": rng.normal(size=(5, 2)), "b": rng.normal(size=(5, 3)), "y": rng.normal(size=5)}
    report = gradlab.compare_gradients(
        problem, data, spread(params), engines=["fd", engines_of(backend)[0]]
    )
    assert report.ok, str(report)


def test_batchnorm_and_dropout_in_inference_mode_are_the_hand_written_function(
    backend: str,
) -> None:
    # In float32: Keras computes BatchNormalization in float32 on jax and torch even in
    # float64 (its compute dtype is result_type(inputs.dtype, "float32")).
    apply, params = model_of(normalised, backend)
    point = {name: value.astype(np.float32) for name, value in spread(params).items()}
    x = data_for((3,))["x"].astype(np.float32)
    with computing(backend, "float32"):
        output = apply(tensors(backend, point), tensors(backend, {"x": x})["x"])
    np.testing.assert_allclose(as_numpy(output), normalised_numpy(point, x), rtol=1e-5, atol=1e-5)
    problem, start = problem_of(normalised, backend)
    engines = ["fd", engines_of(backend)[0]]
    report = gradlab.compare_gradients(
        problem, data_for((3,)), spread(start), engines=engines, dtype="float32"
    )
    assert report.ok, str(report)


@pytest.mark.parametrize("pair", [("jax", "torch"), ("torch", "tensorflow")], ids="-".join)
def test_two_backends_give_one_loss_to_1e12_and_one_gradient(pair: tuple[str, str]) -> None:
    require(*pair)
    problem, params = problem_of(conv, *pair)
    point, data = spread(params), data_for((6, 2))
    truth = squared_error_numpy(conv_numpy)(point, data)
    results = [
        gradlab.value_and_grad(problem, data, point, engine=ENGINES[backend][0]) for backend in pair
    ]
    for backend, (loss, _) in zip(pair, results, strict=True):
        assert abs(loss - truth) <= 1e-12 * max(1.0, abs(truth)), backend
    assert gradlab.max_rho(results[0][1], results[1][1]) < 1e-14


def test_a_float32_comparison_runs_each_backends_float32_model() -> None:
    require("jax", "torch")
    problem, params = problem_of(mlp, "jax", "torch")
    report = gradlab.compare_gradients(
        problem, data_for((3,)), spread(params), engines="jax,torch", dtype="float32"
    )
    assert report.dtype == "float32"
    assert report.ok, str(report)
    assert all(value.dtype == np.float32 for value in report.values["torch"].values())


def test_fits_on_two_backends_follow_one_path() -> None:
    require("jax", "torch")
    problem, params = problem_of(mlp, "jax", "torch")
    data, start = data_for((3,)), spread(params)
    runs = [
        gradlab.fit(problem, data, engine=engine, optimizer=gradlab.adam(0.05), steps=8, init=start)
        for engine in ("jax", "torch")
    ]
    assert all(run.status == "completed" for run in runs)
    assert gradlab.max_rho(runs[0].params, runs[1].params) < 1e-12


def test_builds_that_differ_between_backends_are_caught() -> None:
    require("jax", "torch")

    def activation_by_backend(keras: Any) -> Any:
        # The bug a port makes: one backend's model is not the other's.
        act = "sigmoid" if keras.backend.backend() == "jax" else "softplus"
        return keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.EinsumDense("ab,bc->ac", output_shape=2, activation=act),
                keras.layers.EinsumDense("ab,bc->ac", output_shape=1),
            ]
        )

    problem, params = keras_problem(
        activation_by_backend, squared_error, backends="jax,torch", name="ported"
    )
    report = gradlab.compare_gradients(problem, data_for((3,)), spread(params), engines="jax,torch")
    assert not report.ok
    assert report.verdicts["torch"].rho > 1e-3

    def units_by_backend(keras: Any) -> Any:
        units = 2 if keras.backend.backend() == "jax" else 3
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])

    with pytest.raises(gradlab.ArgumentError, match="different models on jax and torch") as caught:
        keras_problem(units_by_backend, squared_error, backends="jax,torch")
    assert caught.value.argument == "build"


def test_constants_that_differ_between_builds_are_refused() -> None:
    require("jax")
    draws = iter(np.random.default_rng(0).normal(size=(4, 3)))

    def random_statistics(keras: Any) -> Any:
        model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
        model.layers[0].moving_mean.assign(next(draws))
        return model

    with pytest.raises(gradlab.ArgumentError, match="moving_mean") as caught:
        keras_model(random_statistics, backend="jax")
    assert caught.value.argument == "model"
    assert "the same way every time" in str(caught.value)


# --- What it refuses ------------------------------------------------------------------------


def always_dropout(keras: Any) -> Any:
    class AlwaysDropout(keras.layers.Layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dropout = keras.layers.Dropout(0.5)

        def call(self, x: Any, training: Any = None) -> Any:
            return self.dropout(x, training=True)

    return keras.Sequential([keras.Input((3,)), AlwaysDropout(), keras.layers.Dense(1)])


def always_training(keras: Any) -> Any:
    class AlwaysTraining(keras.layers.Layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.norm = keras.layers.BatchNormalization()

        def build(self, shape: Any) -> None:
            self.norm.build(shape)

        def call(self, x: Any, training: Any = None) -> Any:
            return self.norm(x, training=True)

    return keras.Sequential([keras.Input((3,)), AlwaysTraining(), keras.layers.Dense(1)])


@pytest.mark.parametrize(
    ("build", "words"),
    [(always_dropout, ("dropout",)), (always_training, ("moving_mean", "BatchNormalization"))],
    ids=["dropout", "batchnorm"],
)
def test_layers_left_in_training_mode_are_refused_when_the_model_runs(
    backend: str, build: Callable[[Any], Any], words: tuple[str, ...]
) -> None:
    problem, params = problem_of(build, backend)
    engine = engines_of(backend)[0]
    with pytest.raises(gradlab.ArgumentError, match="inference mode") as caught:
        gradlab.value_and_grad(problem, data_for((3,)), params, engine=engine)
    assert caught.value.argument == "build"
    for word in words:
        assert word in str(caught.value)


def _not_built(keras: Any) -> Any:
    return keras.Sequential([keras.layers.Dense(2)])


def _no_trainable(keras: Any) -> Any:
    return keras.Sequential([keras.Input((3,)), keras.layers.Activation("relu")])


def _mixed_dtypes(keras: Any) -> Any:
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1, dtype="float32")]
    )


def _integer_variable(keras: Any) -> Any:
    class Counter(keras.layers.Layer):  # type: ignore[misc]
        def build(self, shape: Any) -> None:
            self.count = self.add_weight(shape=(), dtype="int32", initializer="zeros")

        def call(self, x: Any) -> Any:
            return x

    return keras.Sequential([keras.Input((3,)), Counter(), keras.layers.Dense(1)])


def _nothing(keras: Any) -> Any:
    return np.zeros(3)


BAD_BUILDS: list[tuple[str, Callable[[Any], Any], type[Exception], tuple[str, ...]]] = [
    ("not built", _not_built, gradlab.ArgumentError, ("not built", "keras.Input")),
    ("no trainable", _no_trainable, gradlab.ArgumentError, ("no trainable variables",)),
    ("mixed dtypes", _mixed_dtypes, gradlab.ArgumentError, ("float32",)),
    ("integer variable", _integer_variable, gradlab.ArgumentError, ("int32", "trainable=False")),
    ("not a model", _nothing, gradlab.ArgumentTypeError, ("ndarray",)),
]


@pytest.mark.parametrize(
    ("case", "build", "error", "words"), BAD_BUILDS, ids=[c[0] for c in BAD_BUILDS]
)
def test_builds_gradlab_cannot_run_are_refused_naming_the_argument(
    case: str, build: Callable[[Any], Any], error: type[Exception], words: tuple[str, ...]
) -> None:
    require("jax")
    with pytest.raises(error) as caught:
        keras_model(build, backend="jax")
    assert getattr(caught.value, "argument", None) == "model"
    for word in words:
        assert word in str(caught.value)
    with pytest.raises(error) as caught:
        keras_problem(build, squared_error, backends="jax")
    assert getattr(caught.value, "argument", None) == "build"


def test_a_model_of_another_keras_is_refused() -> None:
    require("jax")
    made: list[Any] = []

    def keep(keras: Any) -> Any:
        made.append(mlp(keras))
        return made[-1]

    keras_model(keep, backend="jax")
    # Returned by a later build: made with an earlier build's Keras, not the one it is given.
    with pytest.raises(gradlab.ArgumentTypeError, match="another Keras") as caught:
        keras_model(lambda keras: made[0], backend="jax")
    assert caught.value.argument == "model"
    # Given made: its Keras is gradlab's, taken out of sys.modules after the build.
    with pytest.raises(gradlab.ArgumentError, match="no longer imported") as stale:
        keras_model(made[0])
    assert stale.value.argument == "model"


def test_a_keras2_model_is_named_as_such() -> None:
    # What tf_keras (Keras 2) layers derive from, without installing it.
    layer = type("Layer", (), {"__module__": "tf_keras.src.engine.base_layer"})
    model = type("Sequential", (layer,), {"__module__": "tf_keras.src.engine.sequential"})()
    with pytest.raises(gradlab.ArgumentTypeError, match="Keras 2 model") as caught:
        keras_model(model)
    assert caught.value.argument == "model"
    with pytest.raises(gradlab.ArgumentTypeError, match="Keras 3 model") as caught:
        keras_model(3)
    assert caught.value.argument == "model"


def test_backends_and_missing_frameworks_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(gradlab.NotSupported, match="cannot differentiate"):
        keras_model(mlp, backend="numpy")
    with pytest.raises(gradlab.ArgumentError) as caught:
        keras_model(mlp, backend="caffe")
    assert caught.value.argument == "backend"
    with pytest.raises(gradlab.ArgumentError, match="twice") as caught:
        keras_problem(mlp, squared_error, backends="jax,jax")
    assert caught.value.argument == "backends"
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        keras_problem(mlp, "mse", backends="jax")  # type: ignore[arg-type]
    assert caught.value.argument == "loss"

    find_spec = importlib.util.find_spec
    missing = {"keras", "tensorflow"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name)
    )
    with pytest.raises(gradlab.MissingDependency, match=r"gradlab\[keras\]"):
        keras_model(mlp, backend="jax")
    missing.discard("keras")
    with pytest.raises(gradlab.MissingDependency, match=r"gradlab\[tensorflow\]"):
        keras_model(mlp, backend="tensorflow")


#: Each framework's sum of a tensor (a NativeProblem's implementations get no ``xp``).
SUMS: dict[str, Callable[[Any], Any]] = {
    "jax": lambda value: value.sum(),
    "torch": lambda value: value.sum(),
    "tensorflow": lambda value: importlib.import_module("tensorflow").reduce_sum(value),
}

#: Parameters the model's apply must refuse, and what the error must say.
WRONG_PARAMS: list[tuple[str, Callable[[dict[str, Any]], Any], tuple[str, ...]]] = [
    ("missing", lambda p: {k: v for k, v in p.items() if not k.endswith("1/bias")}, ("lack",)),
    ("extra", lambda p: {**p, "scale": np.ones(2)}, ("'scale'",)),
    (
        "wrong shape",
        lambda p: {**p, f"{SEQ}/einsum_dense/bias": np.ones(5)},
        ("(5,)", "(4,)"),
    ),
    ("nested", lambda p: {"model": p}, ("lack",)),
]


@pytest.mark.parametrize(("case", "make", "words"), WRONG_PARAMS, ids=[c[0] for c in WRONG_PARAMS])
def test_apply_refuses_parameters_that_are_not_the_models(
    backend: str, case: str, make: Callable[[dict[str, Any]], Any], words: tuple[str, ...]
) -> None:
    apply, params = model_of(mlp, backend)
    total = SUMS[backend]
    implementation: dict[str, Any] = {backend: lambda p, d: total(apply(p, d["x"]))}
    problem = gradlab.NativeProblem(name="mlp", **implementation)
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.value_and_grad(problem, data_for((3,)), make(params), engine=ENGINES[backend][0])
    assert caught.value.argument == "init"
    for word in words:
        assert word in str(caught.value)


def test_apply_refuses_arrays_that_are_not_the_backends_tensors() -> None:
    require("torch")
    apply, params = model_of(mlp, "torch")
    with pytest.raises(gradlab.ArgumentTypeError, match="not a torch tensor") as caught:
        apply(params, np.ones((2, 3)))
    assert caught.value.argument == "init"


def test_missing_inputs_are_named() -> None:
    require("jax")
    problem, params = keras_problem(mlp, squared_error, backends="jax", inputs="features")
    with pytest.raises(gradlab.ArgumentError, match="features") as caught:
        gradlab.value_and_grad(problem, data_for((3,)), params, engine="jax")
    assert caught.value.argument == "data"
    with pytest.raises(gradlab.ArgumentTypeError) as wrong:
        keras_problem(mlp, squared_error, backends="jax", inputs=["x", 3])  # type: ignore[list-item]
    assert wrong.value.argument == "inputs"


# --- A user's own Keras, left as found -------------------------------------------------------


USER_SESSION = """
import os, sys, warnings
warnings.simplefilter("error")
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np
import gradlab
from gradlab.problems._keras import keras_model
imported = {"keras", "torch", "jax", "tensorflow"} & set(sys.modules)
assert not imported, f"importing gradlab's keras adapter imported {imported}"

import keras
keras.config.set_floatx("float64")
# EinsumDense: Keras computes a float64 Dense's matmul in float32 on torch (keras#23704).
dense = keras.layers.EinsumDense("ab,bc->ac", 1, bias_axes="c")
mine = keras.Sequential([keras.Input((2,)), dense])
before = (sys.modules["keras"], keras.backend.backend(), keras.config.floatx())

def build(keras):
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

apply_other, params = keras_model(build, backend="torch")
after = (sys.modules["keras"], keras.backend.backend(), keras.config.floatx())
assert after == before, (after, before)
assert os.environ["KERAS_BACKEND"] == "torch"

# Without backend=, a build follows the user's backend.
apply_default, _ = keras_model(build)
import torch
weights = {k: torch.tensor(v) for k, v in params.items()}
assert apply_default(weights, torch.ones(3, 2)).shape == (3, 1)

# The user's own float64 model, on the user's backend, in its own dtype only.
apply_mine, own = keras_model(mine)
x = torch.ones(3, 2, dtype=torch.float64)
w = {k: torch.tensor(v) for k, v in own.items()}
layer = "sequential/einsum_dense"
expected = np.ones((3, 2)) @ own[f"{layer}/kernel"] + own[f"{layer}/bias"]
np.testing.assert_allclose(apply_mine(w, x).detach().numpy(), expected, rtol=1e-12)
try:
    apply_mine({k: v.float() for k, v in w.items()}, x.float())
except gradlab.ArgumentError as error:
    assert error.argument == "model" and "float64 only" in str(error), error
else:
    raise AssertionError("float32 parameters into a float64 model were taken")

# After set_backend, a model made before cannot be given anew; the apply made before
# still runs, on the Keras it was made with.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # set_backend's own "is dangerous"
    keras.config.set_backend("torch")
try:
    keras_model(mine)
except gradlab.ArgumentError as error:
    assert "no longer imported" in str(error), error
else:
    raise AssertionError("a model of a Keras no longer imported was taken")
np.testing.assert_allclose(apply_mine(w, x).detach().numpy(), expected, rtol=1e-12)
# gradlab's own model too, on a Keras neither the old nor the new one.
assert apply_other(weights, torch.ones(3, 2, dtype=torch.float64)).shape == (3, 1)
print("ok")
"""


def test_a_users_keras_backend_and_floatx_are_left_as_found() -> None:
    require("torch")
    environment = {**os.environ}
    environment.pop("KERAS_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(USER_SESSION)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_backends_default_to_every_one_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    require("jax")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("torch", "tensorflow") else find_spec(name),
    )
    problem, _ = keras_problem(mlp, squared_error)
    assert set(problem.implementations) == {"jax"}


def test_keras_leaves_this_process_as_found() -> None:
    require("jax")
    before = (sys.modules.get("keras"), os.environ.get("KERAS_BACKEND"))
    keras_model(mlp, backend="jax")
    assert (sys.modules.get("keras"), os.environ.get("KERAS_BACKEND")) == before
