"""Data-parallel engines: a problem's rows spread over processes or devices.

Why an engine, and not an option of ``fit``: a data-parallel gradient is still a
``(params, data) -> (loss, grads)`` function, the same numbers as one process gives, so it
belongs behind the protocol's ``value_and_grad`` (and ``run``, where a framework compiles
the loop). Every loop, comparison and report then takes it unchanged: ``fit`` with its
mini-batches, stop rules, callbacks, resume and trajectories, ``compare_gradients`` beside
single-process engines, ``gradlab compare --engines torch,torch-dp2``.

How the rows reduce is the problem's to say (``AbstractProblem.reduction``): a sum over
rows is summed across shards; a mean is each shard's mean weighted by its share of the
rows, so unequal shards (and shards of one row, or none) give the single-process number.
A problem that declares no reduction is refused, as its loss may not be a sum over rows
(a prior term added once would be added once per shard).

The frameworks do the spreading: ``torch.distributed`` (``_torch_parallel``) and JAX's
sharding (``_jax_parallel``). This module holds what they share.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradlab._checks import check_float, check_positive_int
from gradlab._errors import ArgumentError, NotSupported
from gradlab.engines._protocol import AbstractEngine, Array, Carry, Data, Step
from gradlab.problems._base import REDUCTIONS, AbstractProblem

#: The engines whose framework can spread rows, by the module that does it.
_BACKENDS = {"torch": "gradlab.engines._torch_parallel", "jax": "gradlab.engines._jax_parallel"}


def data_parallel(
    engine: str = "torch",
    *,
    processes: int | None = None,
    devices: int | None = None,
    timeout: float = 30.0,
    threads: int = 1,
) -> DataParallel:
    """An engine that spreads the rows of a problem's data, and reduces the gradient as
    the problem declares (``reduction``): the same loss and gradient as one process, to
    round-off, so every gradlab loop and comparison runs on it unchanged.

    **torch** (``torch.distributed``, gloo on CPUs): one process per rank.

    - ``processes=N``: gradlab starts N − 1 local processes (``spawn``), and this process is
      rank 0: each gradient call sends the parameters, each rank takes its rows, and one
      all-reduce sums the shares. The problem must be picklable (a shipped problem, or
      one built from module-level functions); scripts need the usual
      ``if __name__ == "__main__":`` guard of spawned processes.
    - no ``processes``: the processes are the launch's, ``torchrun`` (on one machine or
      many): every rank runs the same script with the same data, and takes its rows.
      gradlab joins the process group the script made, or makes it from torchrun's
      environment (NCCL when the engine is on a GPU, else gloo).

    **jax** (``shard_map`` over a ``Mesh`` of devices): ``devices=N`` uses the first N
    devices (all of them by default, across processes after ``jax.distributed.initialize``).
    The rows are padded to equal blocks, one per device, and the padding masked out; the
    whole loop still compiles to one program.

    Args:
        engine: ``"torch"`` or ``"jax"``.
        processes: torch: how many processes to start here (None: torchrun's).
        devices: jax: how many devices (None: all).
        timeout: Seconds a rank may take to start or to answer; past it, the call fails
            with [`RankFailed`][gradlab.RankFailed] instead of hanging.
        threads: torch's intra-op threads per rank (during its share of each call).

    Returns:
        An engine named ``"torch-dp2"``, ``"jax-dp4"``, ... (``get_engine`` and the command
        line take these names too). A torch engine with processes holds them until it is
        closed (``close()``, or ``with``) or collected.

    Raises:
        ArgumentError: an engine other than torch or jax, or a bad count or timeout.
        EngineUnavailable: the framework is not installed.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.LinearRegression()
        >>> data = problem.make_data(10, d=3, seed=0)
        >>> params = problem.initial_params(data)
        >>> with gradlab.data_parallel("torch", processes=2) as engine:
        ...     loss, grads = gradlab.value_and_grad(problem, data, params, engine=engine)
        >>> one_loss, one_grads = gradlab.value_and_grad(problem, data, params, engine="torch")
        >>> engine.name, gradlab.max_rho(grads, one_grads) <= 1e-12
        ('torch-dp2', True)
    """
    if not isinstance(engine, str) or engine not in _BACKENDS:
        raise ArgumentError(
            "engine",
            f"data-parallel runs spread rows with torch.distributed or JAX's sharding: "
            f"give 'torch' or 'jax', got {engine!r} (the numpy engine runs in one process)",
        )
    timeout = check_float(timeout, "timeout", 0.0)
    if timeout <= 0:
        raise ArgumentError("timeout", f"must be positive, got {timeout!r}")
    threads = check_positive_int(threads, "threads")
    if engine == "torch" and devices is not None:
        raise ArgumentError("devices", "is for jax; torch spreads over processes=")
    if engine == "jax" and processes is not None:
        raise ArgumentError(
            "processes",
            "is for torch; jax's processes are started by your launch and joined by "
            "jax.distributed.initialize(); give devices=",
        )
    count = processes if engine == "torch" else devices
    if count is not None:
        count = check_positive_int(count, "processes" if engine == "torch" else "devices")
    backend = importlib.import_module(_BACKENDS[engine])
    made: DataParallel = backend.make(count, timeout=timeout, threads=threads)
    return made


def engine_from_name(name: str, **options: Any) -> DataParallel | None:
    """``"torch-dp2"`` as ``data_parallel("torch", processes=2, **options)``, ``"jax-dp4"``
    as ``data_parallel("jax", devices=4, **options)``; ``None`` for any other name."""
    base, separator, count = name.rpartition("-dp")
    if not separator or base not in _BACKENDS or not count.isdigit():
        return None
    option = "processes" if base == "torch" else "devices"
    return data_parallel(base, **{option: int(count)}, **options)


def reduction_of(problem: AbstractProblem) -> str:
    """The problem's declared reduction over rows, or ``NotSupported`` naming it."""
    reduction = getattr(problem, "reduction", None)
    if reduction is None:
        error = NotSupported(
            f"problem {problem.name!r} does not declare how its loss reduces over rows, so it "
            "cannot run data-parallel: set reduction='mean' or 'sum' if its loss is the mean "
            "or the sum over rows of one loss per row"
        )
        error.argument = "problem"
        raise error
    if reduction not in REDUCTIONS:
        raise ArgumentError("problem", f"declares reduction={reduction!r}, not 'mean' or 'sum'")
    return str(reduction)


def rows_of(data: Mapping[str, Any]) -> int:
    """The number of rows every data array has (what is spread), or an error naming
    the array that has none or another number."""
    if not data:
        raise ArgumentError("data", "is empty: a data-parallel run spreads the rows of its data")
    counts = {}
    for name, value in data.items():
        shape = tuple(getattr(value, "shape", np.shape(value)))
        if not shape:
            raise ArgumentError(
                f"data[{name!r}]", "is a scalar: a data-parallel run spreads rows of arrays"
            )
        counts[name] = int(shape[0])
    if len(set(counts.values())) != 1:
        raise ArgumentError(
            "data", f"arrays have different numbers of rows, which cannot be spread: {counts}"
        )
    rows = next(iter(counts.values()))
    if rows == 0:
        raise ArgumentError("data", "has no rows")
    return rows


def shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """Shard ``i``'s rows ``[start, stop)``: contiguous, in order, sizes differing by at
    most one (the first ``rows % shards`` one larger), some empty when rows < shards."""
    edges = [0]
    for shard in range(shards):
        edges.append(edges[-1] + rows // shards + (shard < rows % shards))
    return list(itertools.pairwise(edges))


def share(rows: int, total: int, reduction: str) -> float:
    """The weight of a shard's loss of ``rows`` rows in the loss of all ``total``: its
    share of a mean, all of itself in a sum."""
    return rows / total if reduction == "mean" else 1.0


class DataParallel(AbstractEngine):
    """A data-parallel engine: ``base``'s arrays and loop, with a ``value_and_grad`` that
    spreads rows. Subclasses (one per framework) supply ``value_and_grad``.

    Args:
        base: The single-process engine each rank computes with.
        shards: How many shards the rows are spread over.
        launch: How the shards were made, for ``describe``.
    """

    def __init__(self, base: AbstractEngine, shards: int, launch: str) -> None:
        self.base, self.shards, self.launch = base, shards, launch
        self.name = f"{base.name}-dp{shards}"
        self.xp = base.xp
        self.compiled_loop = base.compiled_loop

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """As the base engine."""
        return self.base.asarray(array, dtype)

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """As the base engine."""
        return self.base.asarrays(arrays, dtype)

    def to_numpy(self, array: Array) -> np.ndarray:
        """As the base engine."""
        return self.base.to_numpy(array)

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """As the base engine."""
        return self.base.to_numpy_all(arrays)

    def block(self, tree: Any) -> Any:
        """As the base engine."""
        return self.base.block(tree)

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The base engine's loop around this engine's gradient."""
        return self.base.run(step, carry, data, steps)

    def describe(self) -> dict[str, Any]:
        """The base engine's facts, and how the rows are spread."""
        return {
            **self.base.describe(),
            "data_parallel": {"shards": self.shards, "launch": self.launch},
        }

    def close(self) -> None:
        """Release the processes or devices (nothing to release by default)."""

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
