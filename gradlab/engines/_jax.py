"""The ``jax`` engine: ``jax.value_and_grad`` under ``jax.jit``, the whole loop compiled."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gradlab._checks import check_positive_int
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._fingerprint import Compiled, fingerprint, key
from gradlab._loss import checked_loss, checked_output
from gradlab.engines import _forward
from gradlab.engines._forward import falling_back, raise_if_refused
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
    """``jax.value_and_grad`` of the problem's loss, jit-compiled; ``run`` is one compiled loop.

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
        unroll: How many loop steps each iteration of the compiled loop runs; ``None`` (the
            default) chooses from the size of the loop body. A tiny body (the seed's model
            on 100 points) costs less per step when XLA sees several steps at once (8 steps
            per iteration take 15–30 % less time than 1), and compiling 8 copies of it
            takes a fraction of a second. A large one (a transformer) runs no faster
            unrolled, and compiling 8 copies takes 3.5 to 6 times as long
            (``benchmarks/compile_times.py``), so it gets 1. An explicit ``unroll`` is
            used for every body. The seed's results are the same step for step whatever
            the unroll (XLA may fuse copies of a larger body differently: the last bit can
            move).
    """

    name = "jax"
    xp: Any  # set by __init__, which imports jax
    compiled_loop = True

    def __init__(self, *, device: str | None = None, unroll: int | None = None) -> None:
        self._jax = importlib.import_module("jax")
        self.xp = importlib.import_module("jax.numpy")
        self.unroll = None if unroll is None else check_positive_int(unroll, "unroll")
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
        float32 fit at n = 10⁷, 4.6 → 3.6 times its data). On the CPU, ``device_put``
        keeps a NumPy array 64-byte aligned as the jax array's memory, and copies any
        other (later, holding the host array until then): each goes aligned, as it is or
        copied (cast) so here, one copy where a cast copied again held the data three
        times (a float32 fit of float64 data at n = 10⁷). jax never writes into an array
        it was given, so nothing the caller owns is written where it shares its memory.
        """
        with self._precision(dtype):
            if sum(np.size(array) for array in arrays) > _LARGE:
                place = _aligned if self._on_cpu else np.asarray
                inputs = [place(array, dtype=dtype) for array in arrays]
                return list(self._jax.device_put(inputs, self.device))
            return list(_identity(self.device)(*(np.asarray(a, dtype=dtype) for a in arrays)))

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
        """Forward-over-reverse, ``jit(jvp(grad(loss)))``, in the 64-bit mode of its inputs.

        Where forward mode refuses an operation of the loss (a ``jax.custom_vjp`` function
        whose backward pass calls another), reverse-over-reverse instead,
        ``jit(vjp(grad(loss)))``: the same H·v to round-off, noted in comparison reports
        (``gradlab.engines._forward``).
        """
        return _COMPILED.get(("hvp", key(problem)), lambda: _hvp(problem))

    #: How this engine builds Jacobians and per-example gradients: reverse mode
    #: (``jax-fwd``: forward).
    mode = "reverse"

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """``jit(jacrev(f))`` (``jax-fwd``: ``jacfwd``, in chunks of the basis), with the
        value, in the 64-bit mode of its inputs."""
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
        """The loop body, ``steps`` times, as one compiled loop.

        One program per body runs any number of steps up to the number it was compiled for
        (``_compiled_scan``), so a fit's shorter last stretch and a stop rule's cut reuse the
        loop of its first stretch. A large body that records its parameters (a trajectory)
        is not compiled a second time with the recording inside: its plain loop runs one
        step at a time (``_step_by_step``), where a dispatch costs little beside the step.
        What is decided once per body, step count and unroll (the plan) is cached.
        """
        with self._precision(_first_float_dtype(carry)):
            # The body compares equal across fits with the same (unchanged) problem and the
            # same optimizer; the optimizer's fingerprint catches one whose closure changed.
            # A body from gradlab's loop carries it (taken once per prepared fit); any other
            # body's optimizer is fingerprinted here.
            optimizer = getattr(step, "key", None)
            if optimizer is None:
                optimizer = fingerprint(getattr(step, "optimizer", None))
            plan_key = (step, optimizer, steps, self.unroll)
            plan = _PLANS.get(plan_key)
            if plan is None:
                plan = _PLANS[plan_key] = _plan(step, optimizer, steps, self.unroll, carry, data)
                while len(_PLANS) > _PLANS_KEPT:  # the oldest first (dicts keep their order)
                    _PLANS.pop(next(iter(_PLANS)), None)
            result = plan(carry, data)
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
    parameters. The JVPs run in chunks of the one-hot basis, one chunk after another inside
    the compiled program, so that memory stays bounded whatever the number of parameters
    (``gradlab.engines._forward.chunk_size``). The loop, JVPs, VJPs and Hessian-vector
    products are the jax engine's. Registered as ``"jax-fwd"``; opt-in in comparisons.

    An operation jax has no forward-mode derivative for (a ``jax.custom_vjp`` function) is
    a [`NotSupported`][gradlab.NotSupported] naming it and what to do; the gradient never
    falls back to reverse mode, which would compare the jax engine with itself.

    Args:
        device: As for [`JaxEngine`][gradlab.engines.JaxEngine].
        unroll: As for [`JaxEngine`][gradlab.engines.JaxEngine].
    """

    name = "jax-fwd"
    mode = "forward"

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``jacfwd(loss)`` in chunks of the basis, jitted: the gradient in forward mode."""
        return _COMPILED.get(
            ("value_and_grad", "forward", key(problem)), lambda: _forward_grad(problem)
        )

    def describe(self) -> dict[str, Any]:
        """As the jax engine, with the mode."""
        return {**super().describe(), "mode": "forward (jax.jacfwd)"}


#: What to do where ``jax-fwd``'s forward mode refuses an operation that reverse mode takes.
_REVERSE = "use engine 'jax', which differentiates in reverse mode"


def _jacobian(problem: AbstractProblem, mode: str) -> Jacobian:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    output = checked_output(problem)

    def forward(params: Params, data: Data, budget: int) -> tuple[Tree, Tree]:
        return _jacfwd(lambda p: output(p, data, jnp), params, budget)

    def reverse(params: Params, data: Data, budget: int) -> tuple[Tree, Tree]:
        def with_value(point: Params) -> tuple[Tree, Tree]:
            value = output(point, data, jnp)
            return value, value

        return jax.jacrev(with_value, has_aux=True)(params)  # type: ignore[no-any-return]

    # The chunks' budget is read at each call, a static argument: part of jit's cache key.
    compiled = jax.jit(forward if mode == "forward" else reverse, static_argnums=2)

    def jacobian(params: Params, data: Data) -> tuple[Tree, Tree]:
        try:
            with jax.enable_x64(_first_float_dtype(params) == np.float64):
                full, value = compiled(dict(params), data, _forward.CHUNK_BYTES["jax"])
        except Exception as error:
            if mode == "forward":
                raise_if_refused(error, "jax.jacfwd (forward mode)", _REVERSE)
            raise
        return value, full

    return jacobian


def _forward_grad(problem: AbstractProblem) -> ValueAndGrad:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    loss = checked_loss(problem)

    def gradient(params: Params, data: Data, budget: int) -> tuple[Array, Array]:
        return _jacfwd(lambda p: loss(p, data, jnp), params, budget)

    compiled = jax.jit(gradient, static_argnums=2)

    def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        try:
            with jax.enable_x64(_first_float_dtype(params) == np.float64):
                grads, value = compiled(dict(params), data, _forward.CHUNK_BYTES["jax"])
        except Exception as error:
            raise_if_refused(error, "jax.jacfwd (forward mode)", _REVERSE)
            raise
        return value, dict(grads)

    return value_and_grad


def _jacfwd(function: Callable[[Params], Tree], params: Params, budget: int) -> tuple[Tree, Tree]:
    """``jax.jacfwd(function, has_aux=True)`` with the function's value as the aux, its
    one-hot tangents pushed through in chunks (``_forward.chunk_size``): ``lax.map`` over
    the basis's indices, ``batch_size`` at a time, of the JVP ``jax.linearize`` gives, each
    tangent made from its index inside the map, so that no more than a chunk of the basis
    is ever held (``jacfwd`` vmaps over all of it: n² elements). For use under ``jit``;
    the same layout as ``jacfwd``'s.
    """
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    count = sum(sizes)
    itemsize = max((np.dtype(leaf.dtype).itemsize for leaf in leaves), default=1)
    chunk = _forward.chunk_size(count, itemsize, _intermediate_bytes(function, params), budget)
    offsets = np.cumsum([0, *sizes])
    positions = jnp.arange(count)

    def column(index: Any) -> Tree:
        hot = positions == index
        tangent = [
            hot[start:stop].reshape(leaf.shape).astype(leaf.dtype)
            for leaf, start, stop in zip(leaves, offsets[:-1], offsets[1:], strict=True)
        ]
        return pushforward(treedef.unflatten(tangent))

    try:
        # The primal pass once, its residuals kept: each JVP then runs the tangent's
        # arithmetic alone (jvp in a loop over chunks runs the primal pass again in every
        # iteration: GradBench's gmm took 629 s a gradient that way, 281 s this way).
        value, pushforward = jax.linearize(function, params)
        if chunk >= count:  # one chunk: jacfwd's vmap itself, with no loop around it
            columns = jax.vmap(column)(positions)
        else:
            columns = jax.lax.map(column, positions, batch_size=chunk)
    except Exception:
        # linearize defers a forward-mode refusal to the JVPs, whose traceback then misses
        # the user's call; jacfwd (jvp under vmap) refuses while tracing the function, and so
        # says where (``_forward.refusal``). Traced under jit only: nothing is computed, no
        # basis made. Anything else is re-raised as it was.
        jax.jacfwd(function)(params)
        raise

    def unstacked(stacked: Array) -> Tree:
        """One output's columns (n, *out) as jacfwd lays them out: (*out, *param) per leaf."""
        rows = jnp.moveaxis(stacked, 0, -1)
        parts = jnp.split(rows, offsets[1:-1], axis=-1)
        return treedef.unflatten(
            [
                part.reshape((*rows.shape[:-1], *leaf.shape))
                for part, leaf in zip(parts, leaves, strict=True)
            ]
        )

    return jax.tree_util.tree_map(unstacked, columns), value


def _intermediate_bytes(function: Callable[[Params], Tree], params: Params) -> int:
    """Bytes of every value one pass of ``function`` computes, from its jaxpr (a JVP holds a
    tangent of each one's shape). An upper bound: XLA frees and fuses many of them."""
    jax = importlib.import_module("jax")
    return _values_bytes(jax.make_jaxpr(function)(params).jaxpr)


def _values_bytes(jaxpr: Any) -> int:
    """Bytes of the outputs of ``jaxpr``'s equations, those of the jaxprs it calls included."""
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape, dtype = getattr(var.aval, "shape", None), getattr(var.aval, "dtype", None)
            if shape is not None and dtype is not None:
                total += int(np.prod(shape)) * np.dtype(dtype).itemsize
    return total + sum(_values_bytes(inner) for inner in _called(jaxpr))


def _called(jaxpr: Any) -> Any:
    """The jaxprs ``jaxpr``'s equations call (the bodies of ``jit``, ``custom_jvp``,
    ``cond`` and loops, found in their parameters)."""
    core = importlib.import_module("jax.extend.core")
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for inner in value if isinstance(value, tuple) else (value,):
                if isinstance(inner, core.ClosedJaxpr):
                    inner = inner.jaxpr
                if isinstance(inner, core.Jaxpr):
                    yield inner


def _jvp(problem: AbstractProblem) -> JVP:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    output = checked_output(problem)

    def product(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
        return jax.jvp(lambda p: output(p, data, jnp), (params,), (tangent,))  # type: ignore[no-any-return]

    compiled = jax.jit(product)

    def jvp(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
        try:
            with jax.enable_x64(_first_float_dtype(params) == np.float64):
                return compiled(dict(params), dict(tangent), data)  # type: ignore[no-any-return]
        except Exception as error:
            raise_if_refused(error, "jax.jvp (forward mode)")
            raise

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
        try:
            with jax.enable_x64(_first_float_dtype(params) == np.float64):
                return dict(compiled(dict(params), dict(data)))
        except Exception as error:
            if mode == "forward":
                raise_if_refused(error, "jax.jacfwd (forward mode)", _REVERSE)
            raise

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

    def forward(params: Params, tangent: Params, data: Data) -> Any:
        return jax.jvp(lambda p: gradient(p, data), (params,), (tangent,))[1]

    def reverse(params: Params, tangent: Params, data: Data) -> Any:
        # vᵀH, which is H·v: a Hessian is symmetric.
        return jax.vjp(lambda p: gradient(p, data), params)[1](tangent)[0]

    def compiled(product: Callable[..., Any]) -> HVP:
        jitted = jax.jit(product)

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
            with jax.enable_x64(_first_float_dtype(params) == np.float64):
                return dict(jitted(dict(params), dict(tangent), data))

        return hvp

    return falling_back(
        compiled(forward), compiled(reverse), "jax.jvp of jax.grad", "jax.vjp of jax.grad"
    )


@functools.cache
def _tree_leaves() -> Callable[[Any], list[Any]]:
    return importlib.import_module("jax").tree_util.tree_leaves  # type: ignore[no-any-return]


#: Elements above which ``asarrays`` moves arrays by ``device_put`` (see there).
_LARGE = 1 << 16

#: Bytes to whose multiple an address must be for jax's CPU client to use NumPy's memory.
_ALIGN = 64


def _aligned(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` in ``dtype`` at an address that is a multiple of ``_ALIGN``: the array
    itself where it is one, else a copy (a cast) made there."""
    host = np.asarray(array)
    if host.dtype == np.dtype(dtype) and host.flags.c_contiguous and host.ctypes.data % _ALIGN == 0:
        return host
    size = host.size * np.dtype(dtype).itemsize
    raw = np.empty(size + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    placed = raw[start : start + size].view(dtype).reshape(host.shape)
    placed[...] = host
    return placed


@functools.cache
def _identity(device: Any) -> Callable[..., tuple[Array, ...]]:
    """A jitted identity whose outputs land on ``device`` (JAX's default device for None)."""
    jax = importlib.import_module("jax")
    if device is None:
        return jax.jit(lambda *arrays: arrays)  # type: ignore[no-any-return]
    placed = jax.sharding.SingleDeviceSharding(device)
    return jax.jit(lambda *arrays: arrays, out_shardings=placed)  # type: ignore[no-any-return]


@runtime_checkable
class RecordingStep(Protocol):
    """A loop body that records values at every step which the carry it starts from holds
    (gradlab's ``Step`` with ``record``: the parameters, for a trajectory).

    Its outputs are those of ``without_record()`` followed by ``recorded(carry)``. A large
    one is run one step at a time through the loop compiled for ``without_record()``,
    which a fit without the recording compiles too, instead of compiling a second loop.
    """

    record: tuple[str, ...]

    def __call__(self, carry: Carry, data: Data) -> tuple[Carry, tuple[Array, ...]]: ...

    def without_record(self) -> Step:
        """The same body, recording nothing."""
        ...

    def recorded(self, carry: Carry) -> tuple[Array, ...]:
        """What a step from ``carry`` adds to the outputs of ``without_record()``."""
        ...


#: Jaxpr equations (nested calls counted) that one unrolled loop iteration may hold: a body
#: of up to 32 unrolls 8 steps, up to 64 4, up to 128 2, a larger one 1 (``_Body.unroll``).
#: Compiling grows with the copies of the body XLA sees, and the gain of unrolling shrinks
#: as the step grows. Measured on 2 CPU cores (benchmarks/compile_times.py; µs per step,
#: first fit's seconds): the seed (25 equations) 0.83 → 0.71 µs at 8, first fit 0.50 →
#: 0.66 s; linear and logistic regression and an MLP on 100 points (61, 91, 111) gain
#: 8–12 % at 2 and nothing more at 8, which doubles or triples the first fit; the MLP
#: classifier (135) gains nothing (slower at 8: 26 against 15 µs) and compiles 1.2 s
#: against 4.1 s at 8; a 2-block transformer (989) steps no faster and compiles 3.5 to 6
#: times as long at 8.
_UNROLL_BUDGET = 256
_MAX_UNROLL = 8

#: Spare room (bytes of outputs never written) a compiled loop may carry when it runs
#: fewer steps than it was compiled for; beyond it (and beyond the room used) a loop of
#: the length asked for is compiled instead. Plain bodies' outputs are a few numbers a step.
_SPARE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class _Body:
    """What ``run`` learns of a loop body from tracing it once."""

    #: Equations of one step's jaxpr, those of the jaxprs it calls included.
    size: int
    #: Bytes of one step's outputs (a loop keeps one row of them per step).
    step_bytes: int

    @property
    def unroll(self) -> int:
        """Steps per loop iteration: the most, up to 8, whose equations fit the budget."""
        unroll = _MAX_UNROLL
        while unroll > 1 and unroll * self.size > _UNROLL_BUDGET:
            unroll //= 2
        return unroll

    @property
    def large(self) -> bool:
        """Too large to unroll, and so too large to compile twice."""
        return self.unroll == 1


_BODIES: Compiled[_Body] = Compiled()

#: How many step counts a body was compiled for (per optimizer and unroll asked for).
_CAPACITIES: Compiled[list[int]] = Compiled()

#: ``run``'s plans by body, optimizer, step count and unroll: what to call, decided once.
_PLANS: dict[Hashable, Callable[[Carry, Data], tuple[Carry, tuple[Array, ...]]]] = {}
_PLANS_KEPT = 256


def _plan(
    step: Step, optimizer: Hashable, steps: int, unroll: int | None, carry: Carry, data: Data
) -> Callable[[Carry, Data], tuple[Carry, tuple[Array, ...]]]:
    """How ``run`` runs ``steps`` steps of ``step``: tracing it (once, for the program that
    compiles it), choosing the unroll and the compiled length to reuse."""
    if isinstance(step, RecordingStep) and step.record:
        plain = step.without_record()
        body = _body(plain, optimizer, carry, data)
        if body.large:
            # Any loop of the plain body runs one step: the plain fit's, if it ran first.
            loop, _ = _program(plain, optimizer, steps, unroll or body.unroll, body, need=1)
            return functools.partial(_step_by_step, step, loop, steps)
    body = _body(step, optimizer, carry, data)
    loop, capacity = _program(step, optimizer, steps, unroll or body.unroll, body)
    if capacity == steps:
        return functools.partial(_call, loop, _count(steps))
    return functools.partial(_call_cut, loop, _count(steps), _head(steps))


@functools.lru_cache(maxsize=256)
def _count(steps: int) -> Array:
    """``steps`` as the loop's argument: a jax int32 made once (a Python int would be
    converted at every call, and would be another signature in 64-bit mode)."""
    return importlib.import_module("jax.numpy").asarray(steps, dtype="int32")


def _call(
    loop: Callable[..., Any], count: Array, carry: Carry, data: Data
) -> tuple[Carry, tuple[Array, ...]]:
    return loop(carry, data, count)  # type: ignore[no-any-return]


def _call_cut(
    loop: Callable[..., Any],
    count: Array,
    head: Callable[[Any], tuple[Array, ...]],
    carry: Carry,
    data: Data,
) -> tuple[Carry, tuple[Array, ...]]:
    end, rows = loop(carry, data, count)
    return end, head(rows)


def _body(step: Step, optimizer: Hashable, carry: Carry, data: Data) -> _Body:
    """Trace ``step`` once, by the jitted function the loop calls: the loop's own trace then
    finds it in jit's cache (a body is traced once, whatever the unroll)."""

    def trace() -> _Body:
        jax = importlib.import_module("jax")
        stepped = _jitted_step(step, optimizer)
        size = _size(stepped.trace(carry, data).jaxpr.jaxpr)
        _, outputs = jax.eval_shape(stepped, carry, data)  # from the trace just made
        step_bytes = sum(
            int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
            for leaf in _tree_leaves()(outputs)
        )
        return _Body(size, step_bytes)

    return _BODIES.get((step, optimizer), trace)


def _size(jaxpr: Any) -> int:
    """Equations of ``jaxpr``, those of the jaxprs its equations call included (the bodies
    of ``jit``, ``custom_jvp``, ``cond`` and loops, found in their parameters)."""
    return len(jaxpr.eqns) + sum(_size(inner) for inner in _called(jaxpr))


def _program(
    step: Step, optimizer: Hashable, steps: int, unroll: int, body: _Body, need: int | None = None
) -> tuple[Callable[..., Any], int]:
    """A compiled loop of ``step`` that runs ``need`` steps (``steps`` unless given), and the
    number of steps it was compiled for: one compiled already when its spare room is small,
    else one compiled for ``steps``."""
    need = steps if need is None else need
    lengths = _CAPACITIES.get((step, optimizer, unroll), list)
    spare = max(need * body.step_bytes, _SPARE_BYTES)
    usable = [n for n in lengths if n >= need and (n - need) * body.step_bytes <= spare]
    capacity = min(usable) if usable else steps
    if capacity not in lengths:
        lengths.append(capacity)
    return _compiled_scan(step, optimizer, capacity, min(unroll, capacity)), capacity


@functools.lru_cache(maxsize=256)
def _jitted_step(step: Step, optimizer: Hashable) -> Any:
    """``jit`` of one step, the function every loop of this body calls, so that the body is
    traced once. A closure of its own per body and optimizer fingerprint: jit's cache keys
    on the function, and two bodies that compare equal may hold an optimizer whose closure
    changed in between."""
    jax = importlib.import_module("jax")

    def one_step(carry: Carry, data: Data) -> tuple[Carry, tuple[Array, ...]]:
        return step(carry, data)

    return jax.jit(one_step)


@functools.lru_cache(maxsize=256)
def _compiled_scan(
    step: Step, optimizer: Hashable, capacity: int, unroll: int
) -> Callable[[Carry, Data, Array], Any]:
    """The loop, compiled once per body (and optimizer fingerprint), length and unroll:
    ``loop(carry, data, n)`` runs ``n`` ≤ ``capacity`` steps and returns the last carry and
    each output stacked in ``capacity`` rows (those past ``n`` zero).

    ``n`` (an int32 array) is an argument, not part of the program, so one program serves a
    fit's stretches of any length up to ``capacity``. It is ``lax.scan`` written out: a
    ``while_loop`` of ``unroll`` steps per iteration while that many remain, then one of
    single steps (the same arithmetic as ``scan``, step for step; 1 % slower per step than
    ``scan`` on the seed, whose steps take 0.7 µs, where the count is in the program). Cached
    on the body, a hashable object that compares equal across fits with the same problem
    and optimizer, so a second fit reuses the compiled loop; the jitted function then takes
    arrays only, which jit dispatches fastest. The data is an argument, not a captured
    constant, so it is not baked into the program (large data is not copied in).
    """
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    lax = jax.lax
    stepped = _jitted_step(step, optimizer)

    def loop(carry: Carry, data: Data, n: Any) -> Any:
        _, shapes = jax.eval_shape(stepped, carry, data)
        rows = jax.tree_util.tree_map(lambda s: _zero_rows(capacity, s, s.sharding), shapes)

        def advance(i: Any, carry: Carry, rows: Any) -> tuple[Carry, Any]:
            carry, out = stepped(carry, data)
            rows = jax.tree_util.tree_map(
                lambda row, value: lax.dynamic_update_index_in_dim(row, value, i, 0), rows, out
            )
            return carry, rows

        def several(state: Any) -> Any:
            # Written as one block of rows, as ``scan`` does: a row at a time costs 5 % more
            # per step on the seed.
            i, carry, rows = state
            outs = []
            for _ in range(unroll):
                carry, out = stepped(carry, data)
                outs.append(out)
            block = jax.tree_util.tree_map(lambda *values: jnp.stack(values), *outs)
            rows = jax.tree_util.tree_map(
                lambda row, values: lax.dynamic_update_slice_in_dim(row, values, i, 0), rows, block
            )
            return i + unroll, carry, rows

        def one(state: Any) -> Any:
            i, carry, rows = state
            return (i + 1, *advance(i, carry, rows))

        state = (jnp.int32(0), carry, rows)
        if unroll > 1:
            state = lax.while_loop(lambda s: s[0] + unroll <= n, several, state)
        _, carry, rows = lax.while_loop(lambda s: s[0] < n, one, state)
        return carry, rows

    return jax.jit(loop)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def sharded_scan(
    step: Step, optimizer: Hashable, steps: int, unroll: int
) -> Callable[[Carry, Data], Any]:
    """The loop of a body whose arrays are sharded over devices: one ``lax.scan`` of a fixed
    ``steps`` (compiled once per length).

    Why not ``_compiled_scan``'s loop with the count passed at run time: its two
    ``while_loop``s around the body's collectives deadlock XLA's CPU client now and then
    (its in-process all-gather waits for 4 device threads that a busy 2-core pool does not
    run: 1 in 3 runs of the forced-host-device tests under load, 0 in 3 with this scan).
    """
    jax = importlib.import_module("jax")

    def scan(carry: Carry, data: Data) -> Any:
        return jax.lax.scan(lambda c, _: step(c, data), carry, None, length=steps, unroll=unroll)

    return jax.jit(scan)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _head(steps: int) -> Callable[[Any], tuple[Array, ...]]:
    """The first ``steps`` rows of each output of a loop compiled for more."""
    jax = importlib.import_module("jax")
    return jax.jit(lambda rows: tuple(row[:steps] for row in rows))  # type: ignore[no-any-return]


def _step_by_step(
    step: RecordingStep, loop: Callable[..., Any], steps: int, carry: Carry, data: Data
) -> tuple[Carry, tuple[Array, ...]]:
    """``steps`` steps of a recording body, one call of the plain body's loop each, the
    outputs (and what the body records, from the carry before each step) written into
    buffers on the device: what the recording loop would return, without compiling it."""
    buffers = None
    for i in range(steps):
        recorded = step.recorded(carry)
        carry, rows = loop(carry, data, _count(1))
        if buffers is None:
            buffers = _buffers(steps)(rows, recorded)
        else:
            buffers = _write()(buffers, rows, recorded, i)
    return carry, tuple(buffers or ())


@functools.lru_cache(maxsize=64)
def _buffers(steps: int) -> Callable[..., list[Array]]:
    """Buffers for ``steps`` rows of a step's outputs (the first rows of a loop's) and of
    what it records, holding the first step's."""
    jax = importlib.import_module("jax")

    def first(rows: tuple[Array, ...], recorded: tuple[Array, ...]) -> list[Array]:
        values = [row[0] for row in rows] + list(recorded)
        return [_zero_rows(steps, v, jax.typeof(v).sharding).at[0].set(v) for v in values]

    return jax.jit(first)  # type: ignore[no-any-return]


def _zero_rows(length: int, like: Any, sharding: Any) -> Array:
    """Zeros for ``length`` rows of values shaped like ``like``, each row laid out as they
    are (``sharding``: theirs on the data-parallel engine's mesh, or ``None``), as
    ``lax.scan`` lays out its stacked outputs."""
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    if sharding is not None:
        sharding = sharding.update(spec=jax.sharding.PartitionSpec(None, *sharding.spec))
    return jnp.zeros((length, *like.shape), like.dtype, out_sharding=sharding)


@functools.cache
def _write() -> Callable[..., list[Array]]:
    """Write one step's outputs (row 0 of a loop's) and recordings into row ``i`` of the
    buffers, in place (the buffers are donated)."""
    jax = importlib.import_module("jax")

    def write(
        buffers: list[Array], rows: tuple[Array, ...], recorded: tuple[Array, ...], i: Any
    ) -> list[Array]:
        values = [row[0] for row in rows] + list(recorded)
        return [
            jax.lax.dynamic_update_index_in_dim(buffer, value, i, 0)
            for buffer, value in zip(buffers, values, strict=True)
        ]

    return jax.jit(write, donate_argnums=0)  # type: ignore[no-any-return]
