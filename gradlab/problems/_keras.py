"""Keras 3 models as pure functions of their trainable variables, on any of Keras' backends.

Keras 3 runs one model definition on jax, torch or tensorflow, and users ask whether the
three give the same gradients. [`keras_model`][gradlab.keras_model] turns a model into
``(apply, params)`` for the [`NativeProblem`][gradlab.NativeProblem] implementation of its
backend's framework; [`keras_problem`][gradlab.keras_problem] builds one model on every
backend present and returns the ``NativeProblem`` that compares them.

**One process, several backends.** Keras chooses its backend once, when it is imported
(``KERAS_BACKEND``), and ``keras.config.set_backend`` re-imports it, after which every
model made before is unusable (Keras' own warning). So gradlab never switches the user's
Keras: for each model it builds, it imports a Keras of its own with the backend asked
for, sets that copy's ``floatx``, and takes the copy out of ``sys.modules`` again; the
user's ``keras``, ``KERAS_BACKEND`` and ``floatx`` are as they were. A copy alone is not
enough: Keras imports some of its modules inside functions, at call time
(``StatelessScope`` runs ``from keras.src import backend``), and would find whichever
Keras ``sys.modules`` holds then, another backend's (the model fails, or worse). So every
call of a model runs with its own copy in ``sys.modules``, and what was there is put
back after (a lock serialises the swaps; another thread importing ``keras`` during a
call would see the model's copy).

**Two dtypes.** A Keras model's dtype is fixed when it is made, and ``stateless_call``
casts what it is given to it. So a build function is built twice, with ``floatx``
float32 and float64, and each call runs the model of its parameters' dtype: every engine
computes in the dtype it is asked for, as with any problem.

**What Keras computes.** In float64, Keras 3 (3.15) computes some operations in float32
on the jax and torch backends (its ``result_type`` maps float64 to float32 except on
tensorflow: ``Dense``'s matmul on torch, ``tanh`` on jax, ``ops.mean``; keras#23223,
keras#23704). gradlab runs the model as Keras does, and reports what comes out.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError, MissingDependency, NotSupported
from gradlab._tree import flatten
from gradlab.problems._native import Implementation, NativeProblem, framework_of

__all__ = ["keras_model", "keras_problem"]

#: Floating-point dtypes gradlab computes in (a model's trainable variables must be one).
DTYPES = ("float32", "float64")

Build = Callable[[Any], Any]


@dataclass(frozen=True)
class _Keras:
    """One import of Keras: its modules (``sys.modules``' entries ``keras``, ``keras.*``) and
    its backend. Submodules imported while the copy is installed are added to it."""

    backend: str
    modules: dict[str, ModuleType] = field(default_factory=dict)

    @property
    def keras(self) -> Any:
        """The copy's ``keras`` module."""
        return self.modules["keras"]


# Swaps of sys.modules, one at a time (re-entrant: a loss calls a model's apply inside
# its own swap).
_LOCK = threading.RLock()


def _keras_modules() -> dict[str, ModuleType]:
    """The Keras that ``sys.modules`` holds now (never ``keras_hub`` and the like)."""
    return {
        name: module
        for name, module in list(sys.modules.items())
        if name == "keras" or name.startswith("keras.")
    }


@contextlib.contextmanager
def _installed(copy: _Keras) -> Iterator[None]:
    """``copy``'s modules in ``sys.modules`` for the length of the block; whatever Keras was
    there before (or none) is put back after. An empty copy imports Keras afresh."""
    with _LOCK:
        own = copy.modules.get("keras")
        if own is not None and sys.modules.get("keras") is own:
            yield
            return
        found = _keras_modules()
        for name in found:
            del sys.modules[name]
        sys.modules.update(copy.modules)
        try:
            yield
        finally:
            mine = _keras_modules()
            copy.modules.update(mine)
            for name in mine:
                del sys.modules[name]
            sys.modules.update(found)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set for the length of the block, then restored (or unset)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _to_numpy_jax(value: Any) -> np.ndarray:
    return np.array(value, dtype=np.float64)


def _to_numpy_torch(value: Any) -> np.ndarray:
    torch = importlib.import_module("torch")
    # Through torch: Tensor.__array__ predates NumPy 2's copy keyword (a DeprecationWarning).
    copy: np.ndarray = value.detach().to("cpu", torch.float64, copy=True).numpy()
    return copy


def _to_numpy_tensorflow(value: Any) -> np.ndarray:
    # Through .numpy(): np.array(tf.Variable) warns as torch's does.
    return np.array(value.numpy(), dtype=np.float64)


def _creating_jax(dtype: str) -> contextlib.AbstractContextManager[Any]:
    # JAX creates float32 (with a warning) when asked for float64 outside 64-bit mode;
    # the mode is scoped, as gradlab's jax engine scopes it.
    jax = importlib.import_module("jax")
    mode: contextlib.AbstractContextManager[Any] = jax.enable_x64(dtype == "float64")
    return mode


def _creating_anywhere(dtype: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def _rng_torch() -> tuple[bytes, ...]:
    # Keras' torch backend runs an unseeded Dropout on torch's global generator, not on a
    # Keras seed variable: a forward pass that draws from it is random.
    torch = importlib.import_module("torch")
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.extend(torch.cuda.get_rng_state_all())
    # Through tolist: inside torch.func's transforms the state has no NumPy view.
    return tuple(bytes(state.tolist()) for state in states)


def _same(value: Any) -> Any:
    return value


def _tensor_tensorflow(value: Any) -> Any:
    # The tensorflow engines hand arrays wrapped for NumPy's operators, which give their
    # tensor through TensorFlow's conversion protocol (the tape sees through it); Keras'
    # ops take tensors. Called directly, not through tf.convert_to_tensor: this runs
    # inside tf.function, where AutoGraph would try to convert an import_module call.
    if hasattr(type(value), "__tf_tensor__"):
        return value.__tf_tensor__()
    return value


def _to_xp_tensorflow(value: Any, xp: Any) -> Any:
    # Back into the engine's wrapped arrays, for a loss written against xp.
    return xp.asarray(value)


def _to_xp_same(value: Any, xp: Any) -> Any:
    # Already xp's arrays (array_api_compat.torch's are torch tensors; jax.numpy's jax's).
    return value


def _same_object(old: Any, new: Any) -> bool:
    return new is old


def _same_torch(old: Any, new: Any) -> bool:
    # Inside torch.func's transforms and forward-mode AD, a tensor that passes through
    # unchanged comes back wrapped: a new object with the same values.
    if new is old:
        return True
    equal: bool = importlib.import_module("torch").equal(new, old)
    return equal


def _rng_none() -> tuple[bytes, ...]:
    # jax and tensorflow draw every random number from a Keras seed variable, whose update
    # the state check sees.
    return ()


class _Backend(NamedTuple):
    """What gradlab needs to know of one Keras backend."""

    #: A variable's value as a float64 NumPy copy.
    to_numpy: Callable[[Any], np.ndarray]
    #: The framework's scope for creating variables of a dtype.
    creating: Callable[[str], contextlib.AbstractContextManager[Any]]
    #: The state of random generators outside Keras that a forward pass may draw from.
    rng_state: Callable[[], tuple[bytes, ...]]
    #: An engine's array as the framework's tensor, which Keras' ops take.
    tensor: Callable[[Any], Any]
    #: A model's output as an array of the engine's namespace ``xp``.
    to_xp: Callable[[Any, Any], Any]
    #: Whether a non-trainable variable's value after a call is the one it entered with.
    same: Callable[[Any, Any], bool]


#: The Keras backends gradlab runs, each named as its framework is (the framework's engines
#: run it, ``NativeProblem`` takes it under that keyword, and the gradlab extra installs it).
BACKENDS: dict[str, _Backend] = {
    "jax": _Backend(_to_numpy_jax, _creating_jax, _rng_none, _same, _to_xp_same, _same_object),
    "torch": _Backend(
        _to_numpy_torch, _creating_anywhere, _rng_torch, _same, _to_xp_same, _same_torch
    ),
    "tensorflow": _Backend(
        _to_numpy_tensorflow,
        _creating_anywhere,
        _rng_none,
        _tensor_tensorflow,
        _to_xp_tensorflow,
        _same_object,
    ),
}

#: Backends Keras has that gradlab refuses, and why.
UNSUPPORTED = {
    "numpy": (
        "Keras' numpy backend cannot differentiate, and computes float64 in float32 "
        "(keras#23223), so finite differences of it are noise; write the NumPy forward by hand"
    ),
    "openvino": "Keras' openvino backend runs inference only: it has no gradients",
}


def _require_keras(what: str) -> None:
    """Refuse, before importing anything, an environment without Keras 3."""
    if importlib.util.find_spec("keras") is None:
        raise MissingDependency(what, "keras", "keras")
    version = importlib.metadata.version("keras")
    if int(version.split(".")[0]) < 3:
        raise MissingDependency(f"{what} (Keras 3; keras {version} is installed)", "keras", "keras")


def _check_backend(backend: object, argument: str = "backend") -> str:
    """A backend gradlab runs whose framework is installed, or an error naming ``argument``."""
    if backend in UNSUPPORTED:
        raise NotSupported(f"{argument}={backend!r}: {UNSUPPORTED[str(backend)]}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ArgumentError(argument, f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if importlib.util.find_spec(backend) is None:
        raise MissingDependency(f"Keras' {backend} backend", backend, backend)
    return backend


def _fresh_keras(backend: str) -> _Keras:
    """A Keras of gradlab's own, imported with ``backend``; ``sys.modules`` and the
    environment are left as found."""
    copy = _Keras(backend)
    # The torch backend puts its tensors on the GPU when there is one; gradlab's torch
    # engines compute on the CPU unless told (a user's KERAS_TORCH_DEVICE is kept).
    device = {"KERAS_TORCH_DEVICE": os.environ.get("KERAS_TORCH_DEVICE", "cpu")}
    with _LOCK, _environ({"KERAS_BACKEND": backend, **device}), _installed(copy):
        importlib.import_module("keras")
    return copy


def _layer_class(model: object) -> type | None:
    """The Keras 3 ``Layer`` class ``model`` derives from, found without importing Keras."""
    for cls in type(model).__mro__:
        if cls.__name__ == "Layer" and cls.__module__ == "keras.src.layers.layer":
            return cls
    return None


def _is_keras2(model: object) -> bool:
    """Whether ``model`` is a Keras 2 layer (``keras`` 2, ``tf_keras``, TF's own copy)."""
    return any(
        cls.__name__ == "Layer" and cls.__module__.endswith("engine.base_layer")
        for cls in type(model).__mro__
    )


def _refuse_keras2(model: object, argument: str) -> None:
    if _is_keras2(model):
        raise ArgumentTypeError(
            argument,
            f"is a Keras 2 model ({type(model).__module__}): gradlab takes Keras 3 models, "
            "whose stateless_call runs them as functions of their variables; make it with "
            'Keras 3 (pip install "gradlab[keras]")',
        )


class _Model(NamedTuple):
    """A model, the Keras it was made with, and its trainable variables as ``apply`` takes
    them (paths in the model's order, shapes by path, their one dtype)."""

    copy: _Keras
    model: Any
    paths: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    dtype: str


def _checked(copy: _Keras, model: Any, argument: str) -> _Model:
    """Refuse a model gradlab cannot run as a function of its trainable variables."""
    if not model.built:
        raise ArgumentError(
            argument,
            "has no variables yet (it is not built): give it an input shape (keras.Input(shape) "
            "first in a Sequential, or model.build(input_shape)), or call it once on a batch",
        )
    variable = copy.modules["keras.src.backend.common.variables"].Variable
    foreign = [v.path for v in model.variables if not isinstance(v, variable)]
    if foreign:
        raise ArgumentError(
            argument,
            f"has variables {foreign} made by another Keras than the model's: make every "
            "layer with the keras module build(keras) receives",
        )
    trainable = list(model.trainable_variables)
    if not trainable:
        raise ArgumentError(argument, "has no trainable variables: nothing to differentiate")
    paths = tuple(v.path for v in trainable)
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise ArgumentError(
            argument, f"has several trainable variables named {repeated}: name its layers apart"
        )
    dtypes = {v.path: str(v.dtype) for v in trainable}
    odd = {path: dtype for path, dtype in dtypes.items() if dtype not in DTYPES}
    if odd:
        raise ArgumentError(
            argument,
            f"has trainable variables {odd}: gradlab differentiates float32 and float64 "
            "variables only (make an integer variable non-trainable: trainable=False)",
        )
    if len(set(dtypes.values())) > 1:
        raise ArgumentError(
            argument,
            f"mixes trainable variable dtypes {dtypes}: gradlab computes in one; leave "
            "each layer's dtype to floatx",
        )
    shapes = {v.path: tuple(int(size) for size in v.shape) for v in trainable}
    return _Model(copy, model, paths, shapes, str(trainable[0].dtype))


def _built(build: Build, backend: str, dtype: str, argument: str) -> _Model:
    """``build(keras)`` under a fresh Keras of ``backend`` whose ``floatx`` is ``dtype``."""
    copy = _fresh_keras(backend)
    with _installed(copy), BACKENDS[backend].creating(dtype):
        # The copy is gradlab's own, for this model alone: its floatx stays dtype, which
        # Keras also reads when the model runs (Python numbers become floatx tensors).
        copy.keras.config.set_floatx(dtype)
        model = build(copy.keras)
    if not isinstance(model, copy.modules["keras.src.layers.layer"].Layer):
        _refuse_keras2(model, argument)
        made = "a model of another Keras" if _layer_class(model) else type(model).__name__
        raise ArgumentTypeError(
            argument,
            f"build(keras) returned {made}, not a model of the Keras it was given: make the "
            "model, and any layer class, with the keras module build receives (def "
            "build(keras): return keras.Sequential([...])); a keras imported elsewhere runs "
            "on your own backend",
        )
    checked = _checked(copy, model, argument)
    if checked.dtype != dtype:
        raise ArgumentError(
            argument,
            f"build(keras) made {checked.dtype} variables under floatx {dtype}: leave each "
            "layer's dtype to floatx, so that gradlab can build the model in float32 and float64",
        )
    return checked


def _twins(build: Build, backend: str, argument: str) -> dict[str, _Model]:
    """The model built in each dtype gradlab computes in: a Keras model's dtype is fixed
    when it is made (``stateless_call`` casts what it is given to it), so each engine's
    dtype runs the twin made in it. Their non-trainable variables must agree."""
    twins = {dtype: _built(build, backend, dtype, argument) for dtype in DTYPES}
    _check_constants(("float64", twins["float64"]), ("float32", twins["float32"]), argument)
    return twins


def _own(model: Any, backend: object, argument: str) -> dict[str, _Model]:
    """A model given made: it runs with the Keras ``sys.modules`` holds, in its own dtype."""
    layer = _layer_class(model)
    if layer is None:
        raise ArgumentTypeError(
            argument,
            "must be a Keras 3 model (or layer), or a function build(keras) that returns one, "
            f"got {type(model).__name__}",
        )
    with _LOCK:
        current = sys.modules.get("keras.src.layers.layer")
        if getattr(current, "Layer", None) is not layer:
            raise ArgumentError(
                argument,
                "was made by a Keras that is no longer imported (keras.config.set_backend "
                "re-imports Keras, after which Keras' models made before cannot run): make it "
                "again, or give keras_model a function build(keras) and a backend",
            )
        copy = _Keras(sys.modules["keras"].backend.backend(), _keras_modules())
    if backend is not None and backend != copy.backend:
        raise ArgumentError(
            "backend",
            f"is {backend!r}, but the model was made on Keras' {copy.backend} backend: to run "
            "it on another, give keras_model a function build(keras) that makes it",
        )
    _check_backend(copy.backend, argument)
    checked = _checked(copy, model, argument)
    return {checked.dtype: checked}


def _constants(twin: _Model) -> dict[str, np.ndarray]:
    """A model's floating-point non-trainable variables (BatchNormalization's statistics),
    as float64 NumPy copies by path: the constants its output depends on."""
    to_numpy = BACKENDS[twin.copy.backend].to_numpy
    return {
        v.path: to_numpy(v.value)
        for v in twin.model.non_trainable_variables
        if str(v.dtype) in DTYPES
    }


def _check_constants(first: tuple[str, _Model], other: tuple[str, _Model], argument: str) -> None:
    """Refuse two builds whose constants differ: parameters are given, but constants are
    each model's own, so two builds of one model must make the same ones (the second
    rounded to its dtype)."""
    (a, left), (b, right) = first, other
    mine, theirs = _constants(left), _constants(right)
    dtype = np.dtype(right.dtype)
    differ = sorted(
        set(mine) ^ set(theirs)
        | {
            path
            for path in set(mine) & set(theirs)
            if mine[path].shape != theirs[path].shape
            or not np.array_equal(mine[path].astype(dtype), theirs[path].astype(dtype))
        }
    )
    if differ:
        raise ArgumentError(
            argument,
            f"makes different non-trainable variables {differ} on {a} and {b}: they enter "
            "the model as constants, so build must set them the same way every time (from "
            "NumPy arrays, say, not at random)",
        )


def _calls_with_training(model: Any) -> bool:
    """Whether ``model.call`` takes ``training`` (a layer's call need not)."""
    parameters = inspect.signature(model.call).parameters.values()
    return any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)


def _chosen(
    params: object, models: Mapping[str, _Model], argument: str
) -> tuple[_Model, list[Any]]:
    """The model of ``params``' dtype, and its trainable variables' values from ``params``
    as the framework's tensors, in the model's order.

    ``stateless_call`` itself would cast another dtype to the variables' silently (float64
    parameters into a float32 model lose their precision) and tell a missing variable only
    by a count.
    """
    some = next(iter(models.values()))
    backend = BACKENDS[some.copy.backend]
    own = ", ".join(map(repr, some.paths))
    fix = f"the model's trainable variables are {own}: give init (or params) exactly these"
    if not isinstance(params, Mapping):
        raise ArgumentTypeError(
            "init", f"init (or params): apply got {type(params).__name__}, not a dict; {fix}"
        )
    missing = [path for path in some.paths if path not in params]
    extra = [name for name in params if name not in some.shapes]
    if missing or extra:
        parts = [
            f"lack {', '.join(map(repr, missing))}" if missing else "",
            f"include {', '.join(map(repr, extra))}, which the model does not have"
            if extra
            else "",
        ]
        raise ArgumentError(
            "init",
            f"init (or params): the parameters given to the model's apply "
            f"{' and '.join(p for p in parts if p)}; {fix}",
        )
    keras = some.copy.keras
    values = [backend.tensor(params[path]) for path in some.paths]
    for path, value in zip(some.paths, values, strict=True):
        if not keras.ops.is_tensor(value):
            raise ArgumentTypeError(
                "init",
                f"init (or params): apply got {path!r} as {type(value).__name__}, not a "
                f"{some.copy.backend} tensor (the model runs on Keras' {some.copy.backend} "
                "backend)",
            )
        shape = tuple(value.shape)
        if shape != some.shapes[path]:
            raise ArgumentError(
                "init",
                f"init (or params): apply got {path!r} of shape {shape}; the model's "
                f"{path!r} has shape {some.shapes[path]}",
            )
    dtypes = {
        path: keras.backend.standardize_dtype(v.dtype)
        for path, v in zip(some.paths, values, strict=True)
    }
    if len(set(dtypes.values())) > 1:
        raise ArgumentError(
            "init", f"init (or params): apply got parameters of several dtypes {dtypes}"
        )
    dtype = dtypes[some.paths[0]]
    if dtype not in models:
        raise ArgumentError(
            argument,
            f"computes in {some.dtype} only (Keras fixes a model's dtype when it is made, and "
            f"would cast {dtype} parameters silently), but apply got {dtype} ones; gradlab's "
            "float32 comparisons also evaluate their reference in float64: give keras_model a "
            "function build(keras), which gradlab builds in float32 and in float64 (or, for a "
            f"model made in {some.dtype}, compare with dtype={some.dtype!r} and a reference "
            "engine of another framework, reference='torch' say, which computes in that dtype "
            "alone)",
        )
    return models[dtype], values


def _each(value: Any, function: Callable[[Any], Any]) -> Any:
    """``function`` of each array in an input: an array, or a list, tuple or dict of them
    (a model of several inputs takes them so)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_each(item, function) for item in value)
    if isinstance(value, dict):
        return {key: _each(item, function) for key, item in value.items()}
    return function(value)


def _apply(models: Mapping[str, _Model], argument: str) -> Callable[..., Any]:
    """``apply(params, *inputs)``: the output, in inference mode, of the model (of the
    parameters' dtype) at ``params``."""

    some = next(iter(models.values()))
    training = {dtype: _calls_with_training(m.model) for dtype, m in models.items()}

    def apply(params: Mapping[str, Any], *inputs: Any) -> Any:
        with _installed(some.copy):
            chosen, values = _chosen(params, models, argument)
        copy, model = chosen.copy, chosen.model
        backend = BACKENDS[copy.backend]
        call = {"training": False} if training[chosen.dtype] else {}
        with _installed(copy):
            tensors = [_each(value, backend.tensor) for value in inputs]
            # Non-trainable variables (BatchNormalization's moving statistics, seed states)
            # enter as constants at their current values: in inference mode nothing
            # updates them, which is checked below, so the output is a function of params.
            constants = [v.value for v in model.non_trainable_variables]
            generators = backend.rng_state()
            outputs, after = model.stateless_call(values, constants, *tensors, **call)
            drew = generators != backend.rng_state()
        changed = [
            v.path
            for v, old, new in zip(model.non_trainable_variables, constants, after, strict=True)
            if not backend.same(old, new)
        ]
        if changed or drew:
            what = (
                f"changed its non-trainable variables {changed}"
                if changed
                else f"drew from {copy.backend}'s random number generator"
            )
            raise ArgumentError(
                argument,
                f"running the model in inference mode (training=False) {what}: a layer left "
                "in training mode (dropout or noise drawing random numbers, BatchNormalization "
                "updating its statistics, e.g. training=True passed inside a call), so the "
                "loss would not be a function of the parameters alone; leave training to "
                "the call, or remove the layer",
            )
        return outputs

    return apply


def _models(model: Any, backend: object, argument: str) -> dict[str, _Model]:
    """The model by dtype: a build function's twins, or a model given made."""
    _require_keras("keras_model")
    if _layer_class(model) is None and not _is_keras2(model) and callable(model):
        chosen = _check_backend(_default_backend() if backend is None else backend)
        return _twins(model, chosen, argument)
    _refuse_keras2(model, argument)
    return _own(model, backend, argument)


def _default_backend() -> str:
    """The backend of the user's Keras: the one imported, else ``KERAS_BACKEND``."""
    with _LOCK:
        keras = sys.modules.get("keras")
    if keras is not None:
        return str(keras.backend.backend())
    configured = os.environ.get("KERAS_BACKEND")
    if not configured:
        raise ArgumentError(
            "backend",
            f"name one of {', '.join(BACKENDS)}: Keras is not imported and KERAS_BACKEND "
            "is not set, so there is no backend of yours to follow",
        )
    return configured


def _params(models: Mapping[str, _Model]) -> dict[str, np.ndarray]:
    """The trainable variables of the model (the float64 twin, where built) as float64
    NumPy copies, by path."""
    chosen = models.get("float64") or next(iter(models.values()))
    to_numpy = BACKENDS[chosen.copy.backend].to_numpy
    trainable = {v.path: v for v in chosen.model.trainable_variables}
    return {path: to_numpy(trainable[path].value) for path in chosen.paths}


def keras_model(
    model: Any, *, backend: str | None = None
) -> tuple[Callable[..., Any], dict[str, np.ndarray]]:
    """A Keras 3 model as a pure function of its trainable variables, on one backend.

    Returns ``(apply, params)``, as [`torch_module`][gradlab.torch_module] does:
    ``apply(params, *inputs)`` runs ``model.stateless_call`` in inference mode
    (``training=False``) on the trainable variables' values it is given (the model's own
    are neither read nor changed), and ``params`` is a float64 NumPy copy of them by path
    (``variable.path``: ``{"sequential/dense/kernel": ...}``). ``apply`` takes tensors of
    the backend's framework: it is that framework's implementation in a
    [`NativeProblem`][gradlab.NativeProblem] (``"jax"``: the jax engines run it,
    ``"torch"`` the torch engines, ``"tensorflow"`` the tensorflow ones).

    ``model`` is either a function ``build(keras) -> model`` or a model already made.
    gradlab calls ``build`` with a Keras of its own, imported with ``backend``, twice: with
    ``floatx`` float32 and float64, since a Keras model's dtype is fixed when it is made;
    ``apply`` runs the one of its parameters' dtype, so every engine computes in the dtype
    it is asked for. Models of every backend live side by side in one process, and the
    user's ``keras``, ``KERAS_BACKEND`` and ``floatx`` are left as found. ``build`` must
    make the model, and any layer class, with the ``keras`` it is given, and the same model
    every time. A model already made runs on the backend and in the dtype it was made in.

    Non-trainable variables are constants at their current values:
    ``BatchNormalization`` normalises with its moving statistics, as in inference mode, and
    ``Dropout`` is off. A model that changes them or draws random numbers all the same (a
    layer called with ``training=True`` inside a call) is refused when ``apply`` runs.

    ``apply`` refuses (an ``ArgumentError`` naming ``init``) parameters that are not
    exactly the model's trainable variables, by path and shape, and (naming ``model``)
    parameters of a dtype the model was not made in: ``stateless_call`` alone would cast
    float64 parameters into a float32 model silently.

    Args:
        model: A function ``build(keras)`` returning a Keras 3 model with its input shape,
            or a built Keras 3 model or layer.
        backend: For ``build``: ``"jax"``, ``"torch"`` or ``"tensorflow"`` (default: the
            backend of the user's Keras). For a model: its own, or ``None``.

    Returns:
        ``(apply, params)``.

    Raises:
        MissingDependency: Keras 3, or the backend's framework, is not installed
            (``pip install "gradlab[keras]"``).
        NotSupported: Keras' numpy or openvino backend (no gradients).
        ArgumentTypeError: ``model`` is not a Keras 3 model or a function (a Keras 2 or
            ``tf_keras`` model is named as such), or ``build`` returned something else.
        ArgumentError: a model that is not built (no variables yet), has no trainable
            variables, has integer or mixed-dtype ones, was made by a Keras no longer
            imported or on another backend than ``backend``; a ``build`` whose float32 and
            float64 models have different non-trainable variables.

    Examples:
        >>> import torch
        >>> import gradlab
        >>> def build(keras):
        ...     return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> apply, params = gradlab.keras_model(build, backend="torch")
        >>> {path: value.shape for path, value in params.items()}
        {'sequential/dense/kernel': (3, 2), 'sequential/dense/bias': (2,)}
        >>> output = apply({k: torch.tensor(v) for k, v in params.items()}, torch.ones(4, 3))
        >>> output.shape, output.dtype
        (torch.Size([4, 2]), torch.float64)
    """
    models = _models(model, backend, "model")
    return _apply(models, "model"), _params(models)


def _backends(backends: object) -> tuple[str, ...]:
    """The backends to build on: those named, or every one whose framework is installed."""
    if backends is None:
        present = tuple(b for b in BACKENDS if importlib.util.find_spec(b) is not None)
        if not present:
            raise MissingDependency("keras_problem", "jax, torch or tensorflow", "jax")
        return present
    names = [n.strip() for n in backends.split(",")] if isinstance(backends, str) else backends
    if not isinstance(names, Sequence) or not names:
        raise ArgumentTypeError(
            "backends", f"must be backend names ('jax,torch' or a list), got {backends!r}"
        )
    chosen = tuple(_check_backend(name, "backends") for name in names)
    if len(set(chosen)) != len(chosen):
        raise ArgumentError("backends", f"names a backend twice: {list(chosen)}")
    return chosen


def _inputs(inputs: object) -> str | tuple[str, ...]:
    """A data key, or several (a list of them for a model of several inputs)."""
    if isinstance(inputs, str):
        return inputs
    if (
        not isinstance(inputs, (list, tuple))
        or not inputs
        or not all(isinstance(key, str) for key in inputs)
    ):
        raise ArgumentTypeError("inputs", f"must be a data key or a list of them, got {inputs!r}")
    return tuple(inputs)


Forward = Callable[[Any, Any], Any]


def _forward(apply: Callable[..., Any], inputs: str | tuple[str, ...]) -> Forward:
    """``(params, data) -> apply(params, data[inputs])``: the model's output on the data;
    several keys give the model a list of arrays, as Keras' functional models take them."""
    keys = (inputs,) if isinstance(inputs, str) else inputs

    def forward(params: Any, data: Any) -> Any:
        missing = [key for key in keys if key not in data]
        if missing:
            raise ArgumentError("data", f"has no {missing}: the model's inputs (inputs={inputs!r})")
        if isinstance(inputs, str):
            return apply(params, data[inputs])
        return apply(params, [data[key] for key in keys])

    return forward


class _KerasProblem(NativeProblem):
    """A ``NativeProblem`` whose Keras backends share one loss written against ``xp``.

    ``implementations`` holds each backend's forward, ``(params, data) -> outputs``, and
    ``loss`` composes it with the shared
    ``objective(outputs, data, xp)``, ``xp`` being the engine's namespace (a framework
    has one: the forward's outputs are its arrays). A NumPy implementation, where given,
    is a whole loss, as in any ``NativeProblem``.
    """

    def __init__(
        self,
        *,
        forwards: Mapping[str, Forward],
        objective: Callable[[Any, Any, Any], Any],
        name: str,
        params: Mapping[str, tuple[int, ...]],
        reduction: str | None,
        numpy: Implementation | None,
    ) -> None:
        # Any: NativeProblem's other keywords are typed, and mypy cannot tell these apart.
        implementations: dict[str, Any] = dict(forwards)
        if numpy is not None:
            implementations["numpy"] = numpy
        super().__init__(name=name, params=params, reduction=reduction, **implementations)
        self.forwards = dict(forwards)
        self.objective = objective

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        """The shared loss of the model of ``xp``'s framework, or the NumPy implementation."""
        framework = framework_of(xp)
        forward = self.forwards.get(framework)
        if forward is None:
            return super().loss(params, data, xp)
        outputs = BACKENDS[framework].to_xp(forward(params, data), xp)
        return self.objective(outputs, data, xp)


def keras_problem(
    build: Build,
    loss: Callable[[Any, Any, Any], Any],
    *,
    backends: str | Sequence[str] | None = None,
    inputs: str | list[str] | tuple[str, ...] = "x",
    name: str = "keras",
    numpy: Implementation | None = None,
    reduction: str | None = None,
) -> tuple[NativeProblem, dict[str, np.ndarray]]:
    """One Keras 3 model built on several backends, as a ``NativeProblem`` that compares them.

    ``build(keras)`` makes the model on each backend (see
    [`keras_model`][gradlab.keras_model], which it calls once per backend), and each
    backend's implementation is ``loss(model(data[inputs]), data, xp)``: the loss is
    written once against the array namespace ``xp`` the engine passes, as a
    [`Problem`][gradlab.Problem]'s is (``xp.mean``, ``xp.sum``, operators), so that only
    the model differs between backends. Each engine runs its own framework's model:
    [`compare_gradients`][gradlab.compare_gradients] says whether the backends agree.

    Args:
        build: ``build(keras) -> model``: a Keras 3 model with its input shape, made with
            the ``keras`` it is given.
        loss: ``loss(outputs, data, xp) -> scalar``, written against ``xp``.
        backends: ``"jax"``, ``"torch"``, ``"tensorflow"``, or several (``"jax,torch"`` or
            a list). Default: every one whose framework is installed.
        inputs: The data key fed to the model, or a list of keys: the model is given a
            list of those arrays, as Keras' functional models of several inputs take them.
        name: The problem's name.
        numpy: Optionally, the whole function written in NumPy, ``(params, data) -> loss``
            with params by path: what the ``fd`` engine differentiates, an oracle
            independent of Keras.
        reduction: As for [`NativeProblem`][gradlab.NativeProblem].

    Returns:
        ``(problem, params)``: the problem, and the first backend's model's trainable
        variables (float64 NumPy, by path), a starting point for every engine.

    Raises:
        ArgumentTypeError: ``loss`` is not callable, or ``inputs`` not data keys.
        ArgumentError: as [`keras_model`][gradlab.keras_model] does (naming ``build``), a
            backend named twice, and two backends' models with different trainable
            variables or shapes.

    Examples:
        >>> import numpy as np
        >>> import gradlab
        >>> def build(keras):
        ...     return keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> def loss(outputs, data, xp):
        ...     return xp.mean((outputs[:, 0] - data["y"]) ** 2)
        >>> problem, params = gradlab.keras_problem(build, loss, backends="jax,torch")
        >>> data = {"x": np.ones((4, 3)), "y": np.zeros(4)}
        >>> report = gradlab.compare_gradients(
        ...     problem, data, params, engines="jax,torch", dtype="float32"
        ... )
        >>> report.ok, report.dtype
        (True, 'float32')
    """
    if not callable(loss):
        raise ArgumentTypeError("loss", f"must be callable (outputs, data, xp), got {loss!r}")
    keys = _inputs(inputs)
    _require_keras("keras_problem")
    chosen = _backends(backends)
    forwards: dict[str, Forward] = {}
    first: tuple[str, dict[str, _Model]] | None = None
    for backend in chosen:
        models = _models(build, backend, "build")
        if first is None:
            first = (backend, models)
        else:
            _check_same(first, (backend, models))
        forwards[backend] = _forward(_apply(models, "build"), keys)
    assert first is not None  # _backends gives one at least
    params = _params(first[1])
    shapes = {path: value.shape for path, value in flatten(params)[0].items()}
    problem = _KerasProblem(
        forwards=forwards,
        objective=loss,
        name=name,
        params=shapes,
        reduction=reduction,
        numpy=numpy,
    )
    return problem, params


def _check_same(
    first: tuple[str, Mapping[str, _Model]], other: tuple[str, Mapping[str, _Model]]
) -> None:
    """Refuse builds whose trainable variables, or constants, differ between backends."""
    (a, left), (b, right) = first, other
    mine, theirs = left["float64"].shapes, right["float64"].shapes
    if mine != theirs:
        raise ArgumentError(
            "build",
            f"makes different models on {a} and {b}: trainable variables {mine} on {a}, "
            f"{theirs} on {b}; build the same layers whatever keras.backend.backend() is",
        )
    _check_constants((a, left["float64"]), (b, right["float64"]), "build")
