"""jax's data-parallel engine: the rows sharded over a ``Mesh`` of devices by ``shard_map``.

Why two blocks and a mask: a ``shard_map`` block has one shape on every device, and JAX
refuses to shard an axis the devices do not divide. So the first n − n mod k rows go as k
equal blocks, each device slicing its own from the data it holds (no copy of the whole
data, as padding it would make at every step), and the n mod k rows left go one per
device, padded to k with copies of the last row (a zero row could make a loss
non-finite, and a NaN masked out of the value still poisons the gradient of ``where``)
and masked. Each device evaluates the loss of each of its rows alone (``vmap``;
``reduction`` says that is what the loss adds up), and ``psum`` adds the blocks.

Why the gradient is taken *outside* the ``shard_map``: the parameters enter it
replicated, and JAX's transpose of that replication is itself a ``psum`` over devices.
``value_and_grad`` of the whole sharded loss is therefore already reduced; a gradient
taken inside each block and ``psum``-ed again would count each device's share k times.

Everything the engine makes lives on the mesh, replicated (parameters, optimizer state,
data: each device slices its own rows of the data it holds); so the loop is the jax
engine's own, one compiled ``lax.scan`` around the sharded gradient. Across processes
(``jax.distributed.initialize``) every process passes the same data and gets the same
replicated results.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradlab._boundary import checked_loss
from gradlab._errors import ArgumentError
from gradlab.engines._cache import Compiled, key
from gradlab.engines._jax import JaxEngine, _first_float_dtype
from gradlab.engines._parallel import DataParallel, reduction_of, rows_of, share
from gradlab.engines._protocol import Array, Data, Params, ValueAndGrad
from gradlab.problems._base import AbstractProblem

#: The mesh axis the rows are spread over.
_AXIS = "rows"


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


class JaxDataParallel(DataParallel):
    """The ``jax`` engine with its rows spread over ``devices`` devices (``data_parallel``)."""

    def __init__(self, devices: int) -> None:
        base = JaxEngine()
        jax = base._jax
        launch = "jax.distributed" if jax.process_count() > 1 else "devices"
        super().__init__(base, devices, launch)
        self._jax, self._precision = jax, base._precision
        self.mesh = jax.make_mesh((devices,), (_AXIS,), devices=jax.devices()[:devices])
        sharding = jax.sharding
        self._replicated = sharding.NamedSharding(self.mesh, sharding.PartitionSpec())

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A jax array of ``dtype``, replicated on the mesh (a copy)."""
        return self.asarrays([array], dtype)[0]

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """Several arrays, replicated on the mesh, in one transfer."""
        inputs = [np.asarray(array, dtype=dtype) for array in arrays]
        with self._precision(dtype):
            return list(self._jax.device_put(inputs, self._replicated))

    def to_numpy(self, array: Array) -> np.ndarray:
        """A writable NumPy copy of a replicated array: this process's copy of it (across
        processes, the array spans devices this process cannot read)."""
        if isinstance(array, self._jax.Array) and not array.is_fully_addressable:
            return np.array(array.addressable_data(0))
        return np.array(array)

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """``to_numpy`` on each."""
        return [self.to_numpy(array) for array in arrays]

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``jit(value_and_grad)`` of the loss summed over rows by ``shard_map``."""
        reduction = reduction_of(problem)
        return _COMPILED.get(
            (key(problem), reduction, self.mesh), lambda: _sharded(problem, reduction, self.mesh)
        )

    def describe(self) -> dict[str, Any]:
        """The jax engine's facts, and the mesh's devices."""
        facts = super().describe()
        devices = self.mesh.devices.flat
        facts["data_parallel"].update(
            backend="shard_map",
            processes=self._jax.process_count(),
            devices=[f"{device.platform}:{device.id}" for device in devices],
        )
        return facts


_COMPILED: Compiled[ValueAndGrad] = Compiled()


def _sharded(problem: AbstractProblem, reduction: str, mesh: Any) -> ValueAndGrad:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    spec = jax.sharding.PartitionSpec
    by_rows = jax.sharding.NamedSharding(mesh, spec(_AXIS))
    loss = checked_loss(problem)
    shards = mesh.size

    def row_loss(params: Params, row: Data) -> Array:
        return loss(params, {name: value[None] for name, value in row.items()}, jnp)

    def block_sum(params: Params, block: Data, mask: Array | None = None) -> Array:
        losses = jax.vmap(row_loss, in_axes=(None, 0))(params, block)
        if mask is not None:
            losses = jnp.where(mask, losses, 0)
        return jax.lax.psum(jnp.sum(losses), _AXIS)

    whole = jax.shard_map(block_sum, mesh=mesh, in_specs=(spec(), spec(_AXIS)), out_specs=spec())
    masked = jax.shard_map(
        block_sum, mesh=mesh, in_specs=(spec(), spec(_AXIS), spec(_AXIS)), out_specs=spec()
    )

    def total(params: Params, data: Data) -> Array:
        rows = rows_of(data)
        even, rest = rows - rows % shards, rows % shards
        summed = 0.0
        if even:  # equal blocks of the data as it is: each device slices its own
            blocks = jax.reshard({name: value[:even] for name, value in data.items()}, by_rows)
            summed = whole(params, blocks)
        if rest:  # the last rows, one per device, padded with the last row and masked
            index = np.minimum(np.arange(shards), rest - 1) + even
            tail = jax.reshard({name: value[index] for name, value in data.items()}, by_rows)
            mask = jax.reshard(jnp.asarray(np.arange(shards) < rest), by_rows)
            summed = summed + masked(params, tail, mask)
        return summed * share(1, rows, reduction)

    compiled = jax.jit(jax.value_and_grad(total))

    def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        with jax.enable_x64(_first_float_dtype(params) == np.float64):
            value, grads = compiled(dict(params), dict(data))
        return value, dict(grads)

    return value_and_grad
