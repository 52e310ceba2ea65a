"""The ``tensorflow`` engines: ``tf.GradientTape``, eager or under ``tf.function`` with XLA."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._fingerprint import Compiled, fingerprint, key
from gradlab._loss import checked_loss, checked_output
from gradlab._tree import leaves, tree_map
from gradlab.engines._protocol import (
    HVP,
    JVP,
    VJP,
    AbstractEngine,
    Array,
    Carry,
    Data,
    Jacobian,
    Objective,
    Params,
    Step,
    Tree,
    ValueAndGrad,
    float_dtype,
    numbers_as_arrays,
)
from gradlab.problems._base import AbstractProblem

# Compiled functions for the life of the process, keyed as the other compiling engines key
# theirs (see ``gradlab._fingerprint``): a changed problem is traced again.
_COMPILED: Compiled[Callable[..., Any]] = Compiled()


class TensorFlowEngine(AbstractEngine):
    """Reverse-mode autodiff with ``tf.GradientTape``, eagerly, as a TensorFlow user writes it.

    Problems see TensorFlow through ``gradlab.engines._tf_numpy``: ``tf.experimental.numpy``
    with NumPy's operators on thin wrappers of ``tf.Tensor`` (TensorFlow's own operators
    differ from NumPy's, and making them follow NumPy is a process-wide switch that gradlab
    does not flip). Each call watches fresh parameter tensors on a new tape and asks it for
    the gradient; a parameter the loss ignores gets zeros. float32 and float64 are both
    real.

    Global state: gradlab sets no TensorFlow option, thread pool, logging level or memory
    growth. TensorFlow prints its own start-up messages to stderr on import
    (``TF_CPP_MIN_LOG_LEVEL=2`` in the environment silences them).

    Args:
        device: Where tensors live: ``"cpu"`` (default), ``"gpu"``, or a TensorFlow device
            name (``"/GPU:1"``); checked when the engine is made.
    """

    name = "tensorflow"
    xp: Any  # set by __init__, which imports TensorFlow

    def __init__(self, *, device: str = "cpu") -> None:
        self._tf = importlib.import_module("tensorflow")
        self.xp = importlib.import_module("gradlab.engines._tf_numpy")
        self.device = _checked_device(self._tf, device)

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A tensor of ``dtype`` on the device (a copy of the caller's array)."""
        copy = np.array(array, dtype=dtype)  # TensorFlow may share a NumPy array's memory
        with self._tf.device(self.device):
            return self.xp.Array(self._tf.constant(copy))

    def to_numpy(self, array: Array) -> np.ndarray:
        """A NumPy copy."""
        return np.array(self.xp.unwrap(array))

    def block(self, tree: Any) -> Any:
        """Wait for the device (TensorFlow runs GPU kernels asynchronously)."""
        if "GPU" in self.device.upper():
            self._tf.test.experimental.sync_devices()
        return tree

    def _tensors(self, tree: Any) -> Any:
        return tree_map(self.xp.unwrap, tree)

    def _arrays(self, tree: Any) -> Any:
        tf, wrap = self._tf, self.xp.Array
        return tree_map(lambda leaf: wrap(leaf) if isinstance(leaf, tf.Tensor) else leaf, tree)

    def _gradient(self, problem: AbstractProblem) -> Callable[..., Any]:
        """``(tensors, data tensors) -> (loss, grads)`` over plain tensors, by a tape."""
        tf, xp, loss_of, arrays = self._tf, self.xp, checked_loss(problem), self._arrays
        zero = tf.UnconnectedGradients.ZERO

        def gradient(params: dict[str, Any], data: dict[str, Any]) -> Any:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                for tensor in params.values():
                    tape.watch(tensor)
                loss = xp.unwrap(loss_of(arrays(params), arrays(data), xp))
            grads = tape.gradient(loss, list(params.values()), unconnected_gradients=zero)
            # An index into the data (a mini-batch) gives IndexedSlices: made dense here.
            dense = [tf.convert_to_tensor(grad) for grad in grads]
            return loss, dict(zip(params, dense, strict=True))

        return gradient

    def _compiled(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` as this engine runs it: eagerly here (``tf.function`` in XLA)."""
        return function

    def _on_device(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` of tensors as a function of engine arrays, run on the device."""
        tf, device, tensors, arrays = self._tf, self.device, self._tensors, self._arrays

        def on_device(*args: Any) -> Any:
            with tf.device(device):
                return arrays(function(*(tensors(dict(arg)) for arg in args)))

        return on_device

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``tf.GradientTape`` of the loss with respect to the parameters."""
        return self._cached("value_and_grad", problem, lambda: self._gradient(problem))

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, without a tape."""
        xp, loss, arrays = self.xp, checked_loss(problem), self._arrays

        def make() -> Callable[..., Any]:
            return lambda params, data: xp.unwrap(loss(arrays(params), arrays(data), xp))

        return self._cached("objective", problem, make)

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Forward-over-reverse: a ``tf.autodiff.ForwardAccumulator`` around a tape."""
        tf = self._tf

        def make() -> Callable[..., Any]:
            gradient = self._gradient(problem)

            def hvp(params: dict[str, Any], tangent: dict[str, Any], data: Any) -> Any:
                names = list(params)
                with tf.autodiff.ForwardAccumulator(
                    [params[name] for name in names], [tangent[name] for name in names]
                ) as accumulator:
                    _, grads = gradient(params, data)
                products = accumulator.jvp(
                    [grads[name] for name in names],
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                # The tangent of a gradient made dense from IndexedSlices (a gather's, as in
                # k-means' nearest centroid) comes back as IndexedSlices too: dense here.
                dense = [tf.convert_to_tensor(product) for product in products]
                return dict(zip(names, dense, strict=True))

            return hvp

        return self._cached("hvp", problem, make)

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """``tf.GradientTape.jacobian`` of each output with respect to each parameter."""
        tf, xp, output, arrays = self._tf, self.xp, checked_output(problem), self._arrays
        zero = tf.UnconnectedGradients.ZERO

        def make() -> Callable[..., Any]:
            def jacobian(params: dict[str, Any], data: Any) -> Any:
                with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                    for tensor in params.values():
                        tape.watch(tensor)
                    value = tree_map(xp.unwrap, output(arrays(params), arrays(data), xp))
                blocks = tree_map(
                    lambda leaf: {
                        name: tape.jacobian(leaf, tensor, unconnected_gradients=zero)
                        for name, tensor in params.items()
                    },
                    value,
                )
                return value, blocks

            return jacobian

        return self._cached("jacobian", problem, make)

    def jvp(self, problem: AbstractProblem) -> JVP:
        """``tf.autodiff.ForwardAccumulator``: forward mode, one pass."""
        tf, xp, output, arrays = self._tf, self.xp, checked_output(problem), self._arrays

        def make() -> Callable[..., Any]:
            def jvp(params: dict[str, Any], tangent: dict[str, Any], data: Any) -> Any:
                names = list(params)
                with tf.autodiff.ForwardAccumulator(
                    [params[name] for name in names], [tangent[name] for name in names]
                ) as accumulator:
                    value = tree_map(xp.unwrap, output(arrays(params), arrays(data), xp))
                zero = tf.UnconnectedGradients.ZERO
                return value, tree_map(
                    lambda leaf: accumulator.jvp(leaf, unconnected_gradients=zero), value
                )

            return jvp

        return self._cached("jvp", problem, make)

    def vjp(self, problem: AbstractProblem) -> VJP:
        """A persistent tape, pulled back with ``output_gradients``: reverse mode, one pass."""
        tf, xp, output, arrays = self._tf, self.xp, checked_output(problem), self._arrays
        tensors, device = self._tensors, self.device
        zero = tf.UnconnectedGradients.ZERO

        def vjp(params: Params, data: Data) -> tuple[Tree, Any]:
            watched = tensors(dict(params))
            tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
            with tf.device(device), tape:
                for tensor in watched.values():
                    tape.watch(tensor)
                value = tree_map(xp.unwrap, output(arrays(watched), data, xp))
            flat_value = leaves(value)

            def pullback(cotangent: Tree) -> dict[str, Array]:
                with tf.device(device):
                    grads = tape.gradient(
                        flat_value,
                        list(watched.values()),
                        output_gradients=leaves(tensors(cotangent)),
                        unconnected_gradients=zero,
                    )
                dense = [tf.convert_to_tensor(grad) for grad in grads]
                return dict(arrays(dict(zip(watched, dense, strict=True))))

            return arrays(value), pullback

        return vjp

    def _cached(
        self, what: str, problem: AbstractProblem, make: Callable[[], Callable[..., Any]]
    ) -> Callable[..., Any]:
        """The engine's ``what`` for ``problem``: made and compiled once per problem state.

        The same function object for an unchanged problem (the device wrapper included), so
        that the loop body built around it compares equal from one fit to the next and the
        compiled loop is found again.
        """
        return _COMPILED.get(
            (self.name, what, self.device, self._options(), key(problem)),
            lambda: self._on_device(self._compiled(make())),
        )

    def _options(self) -> tuple[Any, ...]:
        return ()

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The plain Python loop; each output is stacked once at the end (tensors are
        immutable, so there are no buffers to write into)."""
        if steps == 0:
            return carry, ()
        outputs = []
        with self._tf.device(self.device):
            for _ in range(steps):
                carry, out = step(carry, data)
                outputs.append(self._tensors(out))
            stacked = tuple(
                self.xp.Array(self._tf.stack(column)) for column in zip(*outputs, strict=True)
            )
        return carry, stacked

    def describe(self) -> dict[str, Any]:
        """TensorFlow's version, device, thread pools (as TensorFlow has them) and mode."""
        threading = self._tf.config.threading
        return {
            "framework": "tensorflow",
            "tensorflow": self._tf.__version__,
            "device": self.device,
            "intra_op_threads": threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": threading.get_inter_op_parallelism_threads(),
            "mode": "eager (tf.GradientTape)",
        }


class TensorFlowXlaEngine(TensorFlowEngine):
    """The tensorflow engine under ``tf.function(jit_compile=True)``: XLA, the loop included.

    The gradient, the loss alone and the derivatives are each one ``tf.function`` compiled
    by XLA, traced once per shape and dtype; ``run`` compiles the whole loop, ``steps``
    iterations of the loop body, into one XLA program (a ``tf.while_loop``), as the jax
    engine compiles one ``lax.scan``. The results equal the eager engine's to round-off.
    Registered as ``"tensorflow-xla"``; opt-in in comparisons.

    Why a separate engine rather than an option of ``tensorflow``: eager TensorFlow and XLA
    are what users compare (a Keras model runs either way), and a comparison lists them side
    by side as it lists ``torch`` and ``torch-compile``.

    Args:
        device: As for [`TensorFlowEngine`][gradlab.engines.TensorFlowEngine].
        jit_compile: ``True`` (default) for XLA; ``False`` for plain ``tf.function`` graphs
            (TensorFlow's own graph executor), for comparison.
    """

    name = "tensorflow-xla"
    compiled_loop = True

    def __init__(self, *, device: str = "cpu", jit_compile: bool = True) -> None:
        super().__init__(device=device)
        if not isinstance(jit_compile, bool):
            raise ArgumentTypeError("jit_compile", f"must be True or False, got {jit_compile!r}")
        self.jit_compile = jit_compile

    def _options(self) -> tuple[Any, ...]:
        return (self.jit_compile,)

    def _compiled(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` under ``tf.function``, with XLA unless ``jit_compile`` is off."""
        return self._tf.function(function, jit_compile=self.jit_compile)  # type: ignore[no-any-return]

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The loop as one compiled ``tf.while_loop``, compiled once per loop body,
        optimizer, step count and shapes.

        Python numbers in the carry (Adam's step count) become 0-d tensors of the
        parameters' dtype first: a loop carries tensors only.
        """
        if steps == 0:
            return carry, ()
        tf = self._tf
        dtype = float_dtype(carry, self.xp, tf.float32)
        carry = numbers_as_arrays(carry, lambda number: self.xp.Array(tf.constant(number, dtype)))
        optimizer = fingerprint(getattr(step, "optimizer", None))
        loop = _COMPILED.get(
            ("loop", self.device, self.jit_compile, step, optimizer, steps),
            lambda: self._loop(step, steps),
        )
        with tf.device(self.device):
            last, stacked = loop(self._tensors(carry), self._tensors(dict(data)))
        return self._arrays(last), tuple(self._arrays(list(stacked)))

    def _loop(self, step: Step, steps: int) -> Callable[..., Any]:
        tf, tensors, arrays = self._tf, self._tensors, self._arrays

        def loop(carry: Any, data: Any) -> Any:
            # The first step outside the loop: it tells the outputs' dtypes and shapes.
            carry, out = step(arrays(carry), arrays(data))
            carry, out = tensors(carry), tensors(tuple(out))
            buffers = tuple(
                tf.TensorArray(value.dtype, size=steps, element_shape=value.shape).write(0, value)
                for value in out
            )

            def body(i: Any, carry: Any, buffers: Any) -> Any:
                carry, out = step(arrays(carry), arrays(data))
                written = tuple(
                    buffer.write(i, value)
                    for buffer, value in zip(buffers, tensors(tuple(out)), strict=True)
                )
                return i + 1, tensors(carry), written

            _, carry, buffers = tf.while_loop(
                lambda i, *_: i < steps, body, (tf.constant(1), carry, buffers)
            )
            return carry, tuple(buffer.stack() for buffer in buffers)

        return tf.function(loop, jit_compile=self.jit_compile)  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        """As the tensorflow engine, with the compilation."""
        mode = "tf.function with XLA (jit_compile=True)" if self.jit_compile else "tf.function"
        return {**super().describe(), "mode": mode}


def _checked_device(tf: Any, device: object) -> str:
    """``device`` as a TensorFlow device name this process has, or an error naming it."""
    if not isinstance(device, str) or not device:
        raise ArgumentTypeError("device", f"must be a device name such as 'cpu', got {device!r}")
    name = device if device.startswith("/") else f"/{device.upper()}:0"
    if ":" not in name:
        name += ":0"
    have = [logical.name.split("device:")[-1] for logical in tf.config.list_logical_devices()]
    wanted = name.removeprefix("/").upper()
    if not any(wanted == found.upper() for found in have):
        raise ArgumentError(
            "device", f"TensorFlow cannot use device {device!r} (it has: {', '.join(have)})"
        )
    return name
