"""jax's data-parallel engine: the rows sharded over a ``Mesh`` of devices by ``shard_map``.

**Where the data lives.** ``asinputs`` places each data array on the mesh sharded by rows
(``NamedSharding(mesh, PartitionSpec("rows"))``): each of k devices holds its own block of
⌈n / k⌉ rows, not a copy of the whole. JAX shards only an axis the devices divide, so the
rows are padded to k equal blocks with copies of the last row (a zero row could make a loss
non-finite, and a NaN masked out of the value still poisons the gradient of ``where``), and
a data array is a ``Rows``: the blocks, and how many rows are real. Parameters and
optimizer state are replicated.

**How the loss is summed.** Each device evaluates the loss of each row of its block alone
(``vmap``; ``reduction`` says that is what the loss adds up), masks the padding, and
``psum`` adds the blocks. A mini-batch the loop gathers (``data[name][rows]``) is gathered
straight into padded blocks on the devices, so it takes the same path; so does an array
placed whole on every device (``asarrays``), each device gathering its own rows.

Why the gradient is taken *outside* the ``shard_map``: the parameters enter it
replicated, and JAX's transpose of that replication is itself a ``psum`` over devices.
``value_and_grad`` of the whole sharded loss is therefore already reduced; a gradient
taken inside each block and ``psum``-ed again would count each device's share k times.
The loop is one compiled ``lax.scan`` around the sharded gradient (``_jax.sharded_scan``).

**Across processes** (``jax.distributed.initialize``) every process passes the same data
and keeps only its own devices' rows of it. At the start of each call and fit the
processes compare what they were given (problem, parameters, dtype, rows) and refuse, with
[`ArgumentError`][gradlab.ArgumentError] naming it and the process, what differs: they
would otherwise compute together with different numbers, and agree on a wrong result. A
collective that fails because a process died comes back as
[`RankFailed`][gradlab.RankFailed], not as an error of the problem.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np

from gradlab._errors import ArgumentError, GradlabError, RankFailed
from gradlab._fingerprint import Compiled, digest, fingerprint, key
from gradlab._loss import checked_loss
from gradlab._output import digest as arrays_digest
from gradlab.engines._jax import JaxEngine, _first_float_dtype, sharded_scan
from gradlab.engines._protocol import (
    Array,
    Carry,
    Data,
    Objective,
    Params,
    Step,
    ValueAndGrad,
)
from gradlab.engines.parallel._common import DataParallel, reduction_of, rows_of, share
from gradlab.problems._base import AbstractProblem

#: The mesh axis the rows are spread over.
_AXIS = "rows"
#: The status codes with which JAX's runtime reports a collective that could not complete
#: (gloo on CPUs: ``UNKNOWN: Gloo all-reduce failed: ... Connection closed by peer``).
#: Not ``RESOURCE_EXHAUSTED`` (this process ran out of memory) nor ``INVALID_ARGUMENT``.
_LOST = re.compile(
    r"(UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED|CANCELLED|DATA_LOSS"
    r"|FAILED_PRECONDITION): "
)
#: The failure that broke this process's ``jax.distributed`` run, once one did: the runtime
#: is the process's, so every engine in it is broken alike.
_BROKEN: list[RankFailed] = []


def make(devices: int | None, *, timeout: float, threads: int) -> JaxDataParallel:
    """The engine ``data_parallel("jax", ...)`` returns (``timeout`` and ``threads`` are
    torch's: JAX's collectives and threads are its runtime's)."""
    jax = importlib.import_module("jax")
    available = len(jax.devices())
    if devices is not None and devices > available:
        raise ArgumentError(
            "devices",
            f"asks for {devices} devices, but jax has {available} (on CPUs, set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices} before jax is imported)",
        )
    return JaxDataParallel(available if devices is None else devices)


class Rows:
    """A data array spread by rows over a mesh: ``blocks``, its rows padded with copies of
    the last to one equal block per device and sharded so, and ``count``, how many are real.

    A JAX pytree (``count`` and the sharding are static), so it enters compiled code as the
    arrays do. Indexing it with a 1-d array of row numbers, each below ``count`` (what the
    loop does to take a mini-batch), gives those rows as ``Rows`` again, gathered straight
    into blocks on the devices.
    """

    def __init__(self, blocks: Array, count: int, sharding: Any) -> None:
        self.blocks, self.count, self.sharding = blocks, count, sharding

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the real rows."""
        return (self.count, *self.blocks.shape[1:])

    @property
    def dtype(self) -> Any:
        """The arrays' dtype."""
        return self.blocks.dtype

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.shape)

    def __getitem__(self, rows: Array) -> Rows:
        return spread(self.blocks, rows, self.sharding)

    def __repr__(self) -> str:
        return f"Rows({self.count} of {self.blocks.shape[0]} rows, {self.dtype})"


def spread(array: Array, rows: Array, sharding: Any) -> Rows:
    """The rows of ``array`` numbered ``rows`` (a 1-d array), padded with copies of the last
    to equal blocks and gathered by the devices of ``sharding``, each its own block."""
    jnp = importlib.import_module("jax.numpy")
    count, devices = int(rows.shape[0]), sharding.mesh.size
    padded = jnp.asarray(rows)[np.minimum(np.arange(-(-count // devices) * devices), count - 1)]
    return Rows(array.at[padded].get(out_sharding=sharding), count, sharding)


@functools.cache
def _register_rows() -> None:
    """Make ``Rows`` a JAX pytree (once; here rather than at import: jax loads on first use)."""
    importlib.import_module("jax").tree_util.register_pytree_node(
        Rows,
        lambda rows: ((rows.blocks,), (rows.count, rows.sharding)),
        lambda static, blocks: Rows(blocks[0], *static),
    )


class JaxDataParallel(DataParallel):
    """The ``jax`` engine with its rows spread over ``devices`` devices (``data_parallel``)."""

    def __init__(self, devices: int) -> None:
        base = JaxEngine()
        jax = base._jax
        self._processes = jax.process_count()
        super().__init__(base, devices, "jax.distributed" if self._processes > 1 else "devices")
        self._jax, self._precision = jax, base._precision
        self.mesh = jax.make_mesh((devices,), (_AXIS,), devices=jax.devices()[:devices])
        sharding, spec = jax.sharding.NamedSharding, jax.sharding.PartitionSpec
        self._replicated = sharding(self.mesh, spec())
        self._by_rows = sharding(self.mesh, spec(_AXIS))
        _register_rows()

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A jax array of ``dtype``, replicated on the mesh (a copy)."""
        return self.asarrays([array], dtype)[0]

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """Several arrays, replicated on the mesh, in one transfer."""
        inputs = [np.asarray(array, dtype=dtype) for array in arrays]
        with _collective(), self._precision(dtype):
            return list(self._jax.device_put(inputs, self._replicated))

    def asinputs(
        self, data: Sequence[np.ndarray], params: Sequence[np.ndarray], dtype: str
    ) -> tuple[list[Array], list[Array]]:
        """The data spread by rows (each a ``Rows``), the parameters replicated; across
        processes, once the processes have found that they were given the same.

        A scalar or empty data array is replicated as it is, for ``value_and_grad`` to
        refuse by name.
        """
        arrays = [np.asarray(array) for array in data]
        with _collective():
            if self._processes > 1:
                point = [np.asarray(value, dtype=dtype) for value in params]
                rows = [np.shape(array)[:1] for array in arrays]
                self._agree(
                    dtype=dtype.encode(),
                    data=repr(rows).encode(),
                    params=arrays_digest(
                        {str(at): value for at, value in enumerate(point)}
                    ).encode(),
                )
            spread_data = [self._spread(array, dtype) for array in arrays]
            return spread_data, self.asarrays(params, dtype)

    def _spread(self, array: np.ndarray, dtype: str) -> Array:
        """``array`` as a ``Rows``: each device is handed its own block, padded where the
        rows run out, converted to ``dtype`` block by block (no copy of the whole)."""
        if array.ndim == 0 or array.shape[0] == 0:
            return self.asarray(array, dtype)
        count = array.shape[0]
        size = -(-count // self.shards) * self.shards

        def block(index: tuple[slice, ...]) -> np.ndarray:
            start, stop, _ = index[0].indices(size)
            if stop <= count:
                return np.asarray(array[start:stop], dtype=dtype)
            return np.asarray(array[np.minimum(np.arange(start, stop), count - 1)], dtype=dtype)

        with self._precision(dtype):
            blocks = self._jax.make_array_from_callback(
                (size, *array.shape[1:]), self._by_rows, block
            )
        return Rows(blocks, count, self._by_rows)

    def to_numpy(self, array: Array) -> np.ndarray:
        """A writable NumPy copy of a replicated array: this process's copy of it (across
        processes, the array spans devices this process cannot read)."""
        with _collective():
            if isinstance(array, self._jax.Array) and not array.is_fully_addressable:
                return np.array(array.addressable_data(0))
            return np.array(array)

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """``to_numpy`` on each."""
        return [self.to_numpy(array) for array in arrays]

    def block(self, tree: Any) -> Any:
        """As the base engine (where a failed collective may surface)."""
        with _collective():
            return self.base.block(tree)

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``jit(value_and_grad)`` of the loss summed over rows by ``shard_map``; across
        processes, once the processes have found that they were given the same problem."""
        return self._compiled("value_and_grad", problem)  # type: ignore[no-any-return]

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, summed over rows as the gradient sums it (the base engine's loss
        cannot read ``Rows``)."""
        return self._compiled("objective", problem)  # type: ignore[no-any-return]

    def _compiled(self, kind: str, problem: AbstractProblem) -> Any:
        if self._processes > 1:  # first: a process that raised before it would hang the rest
            with _collective():
                self._agree(problem=digest(problem, torch_tensors=False))
        reduction = reduction_of(problem)
        return _COMPILED.get(
            (kind, key(problem), reduction, self.mesh),
            lambda: _sharded(kind, problem, reduction, self.mesh),
        )

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """One compiled ``lax.scan`` around this engine's gradient (``sharded_scan``), one
        step per iteration unless the base engine was given ``unroll``."""
        base = cast(JaxEngine, self.base)  # made in __init__: a jax engine
        with _collective(), base._precision(_first_float_dtype(carry)):
            optimizer = getattr(step, "key", None)
            if optimizer is None:
                optimizer = fingerprint(getattr(step, "optimizer", None))
            loop = sharded_scan(step, optimizer, steps, min(base.unroll or 1, steps))
            result: tuple[Carry, tuple[Array, ...]] = loop(carry, data)
        return result

    def _agree(self, **pieces: bytes) -> None:
        """Refuse, naming it and the processes, a piece (``params=...``) that this run's
        processes were not all given alike: one all-gather of a digest of each."""
        multihost = importlib.import_module("jax.experimental.multihost_utils")
        mine = np.stack(
            [
                np.frombuffer(hashlib.blake2b(piece, digest_size=16).digest(), np.uint32)
                for piece in pieces.values()
            ]
        )
        every = np.asarray(multihost.process_allgather(mine))
        me = self._jax.process_index()
        for at, argument in enumerate(pieces):
            others = [
                p for p in range(len(every)) if not np.array_equal(every[p, at], every[0, at])
            ]
            if others:
                raise ArgumentError(
                    argument,
                    f"differs between the processes of this jax.distributed run: process "
                    f"{', '.join(map(str, others))} {_GIVEN[argument]} than process 0 (this "
                    f"is process {me}); every process must pass the same",
                )

    def describe(self) -> dict[str, Any]:
        """The jax engine's facts, and the mesh's devices."""
        facts = super().describe()
        devices = self.mesh.devices.flat
        facts["data_parallel"].update(
            backend="shard_map",
            processes=self._processes,
            devices=[f"{device.platform}:{device.id}" for device in devices],
            data="sharded by rows",
        )
        return facts


#: What each piece ``_agree`` compares is, in its message.
_GIVEN = {
    "problem": "has another problem (its attributes, its code or values its loss reads)",
    "params": "has other parameters",
    "dtype": "asks for another dtype",
    "data": "has another number of data rows",
}


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    """Run something that may wait on other processes: a failed collective of a
    ``jax.distributed`` run becomes ``RankFailed``, and so does every call after it."""
    if _BROKEN:
        raise RankFailed(
            f"{_BROKEN[0]} (an earlier call); this process's jax.distributed run cannot go on"
        )
    try:
        yield
    except GradlabError:
        raise
    except Exception as error:
        if not _lost(error):
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        failure = RankFailed(
            f"a process of this jax.distributed run failed or stopped answering: {first}. "
            "The run cannot go on: restart every process, and save what you need now (unless "
            "jax_enable_recoverability is on, JAX's runtime ends the processes left once "
            "the lost one's heartbeat times out)"
        )
        _BROKEN.append(failure)
        raise failure from error


def _lost(error: BaseException) -> bool:
    """Whether ``error`` is JAX's runtime reporting, in a run of several processes, a
    collective that could not complete: the runtime's error type (``JaxRuntimeError``; jax
    0.10 raises gloo's failure as a plain ``ValueError``) carrying the status the runtime
    prefixes to its messages, one of ``_LOST``'s codes. What a user's loss raises, while
    it is traced, carries no such status."""
    jax = importlib.import_module("jax")
    runtime = (jax.errors.JaxRuntimeError, ValueError, RuntimeError)
    return (
        isinstance(error, runtime)
        and _LOST.match(str(error)) is not None
        and jax.process_count() > 1
    )


_COMPILED: Compiled[Any] = Compiled()


def _sharded(kind: str, problem: AbstractProblem, reduction: str, mesh: Any) -> Any:
    """The loss summed over rows across ``mesh`` (``kind="objective"``), or its
    ``value_and_grad``, compiled and run in the 64-bit mode of the parameters."""
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    spec = jax.sharding.PartitionSpec
    by_rows = jax.sharding.NamedSharding(mesh, spec(_AXIS))
    loss = checked_loss(problem)

    def row_loss(params: Params, row: Data) -> Array:
        return loss(params, {name: value[None] for name, value in row.items()}, jnp)

    def total(params: Params, data: Data) -> Array:
        rows = rows_of(data)
        blocks = {
            name: (value if isinstance(value, Rows) else spread(value, np.arange(rows), by_rows))
            for name, value in data.items()
        }

        def block_sum(params: Params, block: Data) -> Array:
            size = next(iter(block.values())).shape[0]
            real = jax.lax.axis_index(_AXIS) * size + jnp.arange(size) < rows
            losses = jax.vmap(row_loss, in_axes=(None, 0))(params, block)
            return jax.lax.psum(jnp.sum(jnp.where(real, losses, 0)), _AXIS)

        summed = jax.shard_map(
            block_sum, mesh=mesh, in_specs=(spec(), spec(_AXIS)), out_specs=spec()
        )(params, {name: value.blocks for name, value in blocks.items()})
        return summed * share(1, rows, reduction)

    if kind == "objective":
        compiled_loss = jax.jit(total)

        def objective(params: Params, data: Data) -> Array:
            with _collective(), jax.enable_x64(_first_float_dtype(params) == np.float64):
                return compiled_loss(dict(params), dict(data))

        return objective

    compiled = jax.jit(jax.value_and_grad(total))

    def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        with _collective(), jax.enable_x64(_first_float_dtype(params) == np.float64):
            value, grads = compiled(dict(params), dict(data))
        return value, dict(grads)

    return value_and_grad
