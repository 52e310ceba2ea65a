"""The ``jax`` engine: ``jax.value_and_grad`` under ``jax.jit``, the whole loop compiled."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from gradlab._boundary import checked_loss, checked_output
from gradlab._checks import check_positive_int
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._fingerprint import Compiled, fingerprint, key
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
    PerExample,
    Step,
    Tree,
    ValueAndGrad,
)
from gradlab.problems._base import AbstractProblem


class JaxEngine(AbstractEngine):
    """``jax.value_and_grad`` of the problem's loss, jit-compiled; ``run`` is one ``lax.scan``.

    **64-bit mode.** JAX computes in float32 unless its ``jax_enable_x64`` flag is on, even
    when handed float64 arrays. gradlab never flips that flag globally: every call into JAX
    (making arrays, the gradient, the compiled loop) runs inside the scoped context manager
    ``jax.enable_x64(dtype == "float64")``, which is restored on exit. So a float64 request
    really computes in float64, a float32 request computes as default JAX does, and the
    global flag reads the same before and after.

    Compiled functions are cached per problem and per loop body, keyed on everything the
    loss (and the optimizer) can read (see ``gradlab._fingerprint``): a second fit with an
    unchanged problem and the same optimizer does not compile again, and a problem whose
    attributes, closure variables or globals changed is traced again, never answered from
    the old program.

    Args:
        device: A JAX platform (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"tpu"``) or ``None`` for
            JAX's default device.
        unroll: How many loop steps each iteration of the compiled ``lax.scan`` runs. A tiny
            loop body (the seed's model on 100 points) costs less per step when XLA sees
            several steps at once (measured: 8 steps per iteration take about 30 % less
            time than 1); the results are the same step for step, and compiling takes
            slightly longer.
    """

    name = "jax"
    compiled_loop = True

    def __init__(self, *, device: str | None = None, unroll: int = 8) -> None:
        self._jax = importlib.import_module("jax")
        self.xp = importlib.import_module("jax.numpy")
        self.unroll = check_positive_int(unroll, "unroll")
        if device is not None and not isinstance(device, str):
            raise ArgumentTypeError(
                "device", f"must be a JAX platform name such as 'cpu', or None, got {device!r}"
            )
        try:
            self.device = None if device is None else self._jax.devices(device)[0]
        except (RuntimeError, ValueError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ArgumentError("device", f"jax cannot use device {device!r}: {message}") from None

    def _precision(self, dtype: Any) -> Any:
        """The scoped 64-bit mode matching ``dtype``."""
        return self._jax.enable_x64(np.dtype(dtype) == np.float64)

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A jax array of ``dtype`` on the engine's device (a copy)."""
        return self.asarrays([array], dtype)[0]

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """Several arrays as jax arrays of ``dtype`` on the engine's device, in one call.

        Small arrays go through a jitted identity, jit's C++ fast path: one dispatch of a
        few microseconds for all of them, where ``jnp.asarray`` or ``device_put`` take 15
        to 30 per array (a fit moves its data and parameters together). Large ones (over
        ``_LARGE`` elements in all) go by one ``device_put``, which holds one copy of each
        on the device where the identity briefly holds two (measured: peak memory of a
        float32 fit at n = 10⁷, 4.6 → 3.6 times its data). No NumPy copy first: moving
        the array is the copy (on the CPU too), and jax never writes into an array it was
        given, so nothing the caller owns is written even where a jax version shares its
        memory.
        """
        inputs = [np.asarray(array, dtype=dtype) for array in arrays]
        with self._precision(dtype):
            if sum(array.size for array in inputs) > _LARGE:
                return list(self._jax.device_put(inputs, self.device))
            return list(_identity(self.device)(*inputs))

    def to_numpy(self, array: Array) -> np.ndarray:
        """A writable NumPy copy (``numpy.asarray`` would give a read-only view)."""
        return np.array(array)

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """Writable NumPy copies. Off the CPU, brought back by one ``jax.device_get``: one
        wait for all of them instead of one per array. On the CPU, one at a time: there
        ``device_get`` costs more than the copies it would batch (19 against 3 µs)."""
        if self._on_cpu:
            return [np.array(array) for array in arrays]
        return [np.array(array) for array in self._jax.device_get(list(arrays))]

    @functools.cached_property
    def _on_cpu(self) -> bool:
        return bool(self._where().platform == "cpu")

    def _where(self) -> Any:
        """The device computations run on: the engine's, else JAX's default."""
        return self.device if self.device is not None else self._jax.devices()[0]

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``jit(value_and_grad(loss))``, run in the 64-bit mode of its inputs."""
        return _COMPILED.get(("value_and_grad", key(problem)), lambda: _value_and_grad(problem))

    def objective(self, problem: AbstractProblem) -> Objective:
        """``jit(loss)``, in the 64-bit mode of its inputs."""
        return _COMPILED.get(("objective", key(problem)), lambda: _objective(problem))

    def output(self, problem: AbstractProblem) -> Objective:
        """``jit`` of a vector-valued function, in the 64-bit mode of its inputs."""
        return _COMPILED.get(("output", key(problem)), lambda: _objective(problem, vector=True))

    def block(self, tree: Any) -> Any:
        """``jax.block_until_ready``: jax dispatches asynchronously."""
        return self._jax.block_until_ready(tree)

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Forward-over-reverse, ``jit(jvp(grad(loss)))``, in the 64-bit mode of its inputs."""
        return _COMPILED.get(("hvp", key(problem)), lambda: _hvp(problem))

    #: How this engine builds Jacobians and per-example gradients: reverse mode
    #: (``jax-fwd``: forward).
    mode = "reverse"

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """``jit(jacrev(f))`` (``jacfwd`` in ``jax-fwd``), with the value, in the 64-bit mode
        of its inputs."""
        return _COMPILED.get(
            ("jacobian", self.mode, key(problem)), lambda: _jacobian(problem, self.mode)
        )

    def jvp(self, problem: AbstractProblem) -> JVP:
        """``jit(jvp(f))``: forward mode, one pass."""
        return _COMPILED.get(("jvp", key(problem)), lambda: _jvp(problem))

    def vjp(self, problem: AbstractProblem) -> VJP:
        """``jax.vjp`` of the jitted function: reverse mode, one pass."""
        return _COMPILED.get(("vjp", key(problem)), lambda: _vjp(problem))

    def per_example_grads(self, problem: AbstractProblem) -> PerExample:
        """``jit(vmap(grad(loss of one row)))`` (``jacfwd`` in ``jax-fwd``)."""
        return _COMPILED.get(
            ("per_example", self.mode, key(problem)), lambda: _per_example(problem, self.mode)
        )

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The loop body, ``steps`` times, as one compiled ``lax.scan``."""
        with self._precision(_first_float_dtype(carry)):
            # The body compares equal across fits with the same (unchanged) problem and the
            # same optimizer; the optimizer's fingerprint catches one whose closure changed.
            optimizer = fingerprint(getattr(step, "optimizer", None))
            loop = _compiled_scan(step, optimizer, steps, min(self.unroll, steps))
            result: tuple[Carry, tuple[Array, ...]] = loop(carry, data)
        return result

    def describe(self) -> dict[str, Any]:
        """JAX's version, device and the (global, untouched) 64-bit flag."""
        device = self._where()
        return {
            "framework": "jax",
            "jax": self._jax.__version__,
            "device": f"{device.platform}:{device.id}",
            "jax_enable_x64_global": bool(self._jax.config.jax_enable_x64),
            "jax_x64_mode": "scoped per call to match the requested dtype",
        }


class JaxForwardEngine(JaxEngine):
    """The jax engine in forward mode: gradients and Jacobians by ``jax.jacfwd``.

    One forward-mode pass (a JVP) per parameter element, vectorised: cheaper than reverse
    mode when a function has more outputs than inputs, dearer for a scalar loss of many
    parameters. The loop, JVPs, VJPs and Hessian-vector products are the jax engine's.
    Registered as ``"jax-fwd"``; opt-in in comparisons.

    Args:
        device: As for [`JaxEngine`][gradlab.engines.JaxEngine].
        unroll: As for [`JaxEngine`][gradlab.engines.JaxEngine].
    """

    name = "jax-fwd"
    mode = "forward"

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``jit(jacfwd(loss))``: the gradient in forward mode."""
        return _COMPILED.get(
            ("value_and_grad", "forward", key(problem)), lambda: _forward_grad(problem)
        )

    def describe(self) -> dict[str, Any]:
        """As the jax engine, with the mode."""
        return {**super().describe(), "mode": "forward (jax.jacfwd)"}


def _transform(mode: str) -> Callable[..., Any]:
    jax = importlib.import_module("jax")
    return jax.jacrev if mode == "reverse" else jax.jacfwd  # type: ignore[no-any-return]


def _jacobian(problem: AbstractProblem, mode: str) -> Jacobian:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    output = checked_output(problem)

    def with_value(params: Params, data: Data) -> tuple[Tree, Tree]:
        value = output(params, data, jnp)
        return value, value

    compiled = jax.jit(_transform(mode)(with_value, has_aux=True))

    def jacobian(params: Params, data: Data) -> tuple[Tree, Tree]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            full, value = compiled(dict(params), data)
        return value, full

    return jacobian


def _forward_grad(problem: AbstractProblem) -> ValueAndGrad:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    loss = checked_loss(problem)

    def with_value(params: Params, data: Data) -> tuple[Array, Array]:
        value = loss(params, data, jnp)
        return value, value

    compiled = jax.jit(jax.jacfwd(with_value, has_aux=True))

    def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            grads, value = compiled(dict(params), data)
        return value, dict(grads)

    return value_and_grad


def _jvp(problem: AbstractProblem) -> JVP:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    output = checked_output(problem)

    def product(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
        return jax.jvp(lambda p: output(p, data, jnp), (params,), (tangent,))  # type: ignore[no-any-return]

    compiled = jax.jit(product)

    def jvp(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            return compiled(dict(params), dict(tangent), data)  # type: ignore[no-any-return]

    return jvp


def _vjp(problem: AbstractProblem) -> VJP:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    output = checked_output(problem)
    compiled = jax.jit(lambda params, data: output(params, data, jnp))

    def vjp(params: Params, data: Data) -> tuple[Tree, Any]:
        x64 = jax.enable_x64(_first_float_dtype(params) == np.float64)
        with x64:
            value, pull = jax.vjp(lambda p: compiled(p, data), dict(params))

        def pullback(cotangent: Tree) -> dict[str, Array]:
            with x64:
                return dict(pull(cotangent)[0])

        return value, pullback

    return vjp


def _per_example(problem: AbstractProblem, mode: str) -> PerExample:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    loss = checked_loss(problem)

    def row_loss(params: Params, row: Data) -> Array:
        return loss(params, {name: value[None] for name, value in row.items()}, jnp)

    gradient = jax.grad(row_loss) if mode == "reverse" else jax.jacfwd(row_loss)
    compiled = jax.jit(jax.vmap(gradient, in_axes=(None, 0)))

    def per_example(params: Params, data: Data) -> dict[str, Array]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            return dict(compiled(dict(params), dict(data)))

    return per_example


def _first_float_dtype(tree: Any) -> Any:
    """The dtype of the first floating-point leaf: it decides the 64-bit mode of a call."""
    for leaf in _tree_leaves()(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and np.issubdtype(dtype, np.floating):
            return dtype
    return np.float32


# Compiled functions by what they compute and the problem's cache key: the same function
# object for an unchanged problem, so the loop body built around it compares equal from one
# fit to the next and jit's cache of the compiled loop is hit.
_COMPILED: Compiled[Callable[..., Any]] = Compiled()


def _value_and_grad(problem: AbstractProblem) -> ValueAndGrad:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    loss = checked_loss(problem)
    compiled = jax.jit(jax.value_and_grad(lambda params, data: loss(params, data, jnp)))

    def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            loss, grads = compiled(params, data)
        return loss, dict(grads)

    return value_and_grad


def _objective(problem: AbstractProblem, vector: bool = False) -> Objective:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    loss = checked_output(problem) if vector else checked_loss(problem)
    compiled = jax.jit(lambda params, data: loss(params, data, jnp))

    def objective(params: Params, data: Data) -> Array:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            return compiled(params, data)

    return objective


def _hvp(problem: AbstractProblem) -> HVP:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    loss = checked_loss(problem)
    gradient = jax.grad(lambda params, data: loss(params, data, jnp))

    def product(params: Params, tangent: Params, data: Data) -> Any:
        return jax.jvp(lambda p: gradient(p, data), (params,), (tangent,))[1]

    compiled = jax.jit(product)

    def hvp(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            return dict(compiled(dict(params), dict(tangent), data))

    return hvp


@functools.cache
def _tree_leaves() -> Callable[[Any], list[Any]]:
    return importlib.import_module("jax").tree_util.tree_leaves  # type: ignore[no-any-return]


#: Elements above which ``asarrays`` moves arrays by ``device_put`` (see there).
_LARGE = 1 << 16


@functools.cache
def _identity(device: Any) -> Callable[..., tuple[Array, ...]]:
    """A jitted identity whose outputs land on ``device`` (JAX's default device for None)."""
    jax = importlib.import_module("jax")
    if device is None:
        return jax.jit(lambda *arrays: arrays)  # type: ignore[no-any-return]
    placed = jax.sharding.SingleDeviceSharding(device)
    return jax.jit(lambda *arrays: arrays, out_shardings=placed)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def _compiled_scan(
    step: Step, optimizer: Hashable, steps: int, unroll: int
) -> Callable[[Carry, Data], Any]:
    """The loop, compiled once per loop body (and optimizer fingerprint), step count and unroll.

    Cached on the body, a hashable object that compares equal across fits with the same
    problem and optimizer, so a second fit reuses the compiled loop; the jitted function
    then takes arrays only, which jit dispatches fastest. The data is an argument, not a
    captured constant, so it is not baked into the program (large data is not copied in).
    """
    jax = importlib.import_module("jax")

    def scan(carry: Carry, data: Data) -> Any:
        return jax.lax.scan(lambda c, _: step(c, data), carry, None, length=steps, unroll=unroll)

    return jax.jit(scan)  # type: ignore[no-any-return]
