"""``data_parallel``: the one way to ask for a data-parallel engine, for either framework.

Why here and not beside ``DataParallel`` (``_parallel``): each framework's engine imports
that module's shared pieces, and this one imports the engines (when asked for one).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from gradlab._checks import check_bool, check_float, check_positive_int
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab.engines.parallel._common import DataParallel

#: The longest ``timeout``, in seconds.
_DAY = 86_400.0
#: The engines whose framework can spread rows, by the module that does it.
_BACKENDS = {"torch": "gradlab.engines.parallel._torch", "jax": "gradlab.engines.parallel._jax"}


def data_parallel(
    engine: str = "torch",
    *,
    processes: int | None = None,
    devices: int | None = None,
    timeout: float = 30.0,
    threads: int = 1,
    local_data: bool = False,
) -> DataParallel:
    """An engine that spreads the rows of a problem's data, and reduces the gradient as
    the problem declares (``reduction``): the same loss and gradient as one process, to
    round-off, so every gradlab loop and comparison runs on it unchanged.

    **torch** (``torch.distributed``, gloo on CPUs): one process per rank, every rank
    running the same loop on its own rows, one all-reduce per step (as DDP does).

    - ``processes=N``: gradlab starts N − 1 local processes (``spawn``), and this process is
      rank 0. Each stretch of a fit runs on every rank: the loop body, the starting point
      and each rank's rows travel once, through pipes only these processes hold (gloo's
      sockets listen on loopback; nothing from the network is unpickled). A single
      gradient call broadcasts the parameters. The problem must be picklable (a shipped
      problem, or one built from module-level functions); scripts need the usual
      ``if __name__ == "__main__":`` guard of spawned processes.
    - no ``processes``: the processes are the launch's, ``torchrun`` (on one machine or
      many): every rank runs the same script, and takes its rows. gradlab joins the
      process group the script made, or makes it from torchrun's environment (NCCL on the
      rank's GPU, after ``cuda.set_device(LOCAL_RANK)``, else gloo). Each call and each
      stretch of a fit first checks that the ranks were given the same parameters,
      problem, dtype, optimizer, mini-batch order and data
      ([`ArgumentError`][gradlab.ArgumentError] naming what differs, and where).

    **jax** (``shard_map`` over a ``Mesh`` of devices): ``devices=N`` uses the first N
    devices (all of them by default, across processes after ``jax.distributed.initialize``).
    Each device holds only its own rows of the data, padded to equal blocks (the padding
    masked out); parameters are replicated, and the whole loop still compiles to one
    program. Across processes, each call and fit first checks that every process was
    given the same problem, parameters, dtype and rows
    ([`ArgumentError`][gradlab.ArgumentError] naming what differs), and a process that
    dies fails the call with [`RankFailed`][gradlab.RankFailed].

    Args:
        engine: ``"torch"`` or ``"jax"``.
        processes: torch: how many processes to start here (None: torchrun's).
        devices: jax: how many devices (None: all).
        timeout: torch: seconds a rank may take to answer; past it, the call fails with
            [`RankFailed`][gradlab.RankFailed] instead of hanging (spawned ranks get 120 s
            more to start). JAX's collectives wait as its runtime says (a stopped process
            ends the run after ``jax.distributed.initialize``'s ``heartbeat_timeout_seconds``).
        threads: torch: intra-op threads per rank (rank 0 sets them only while it computes
            its share, and puts yours back).
        local_data: torch under torchrun: each rank passes its own rows (any number, at
            least one; the ranks' parts in rank order make the data set) instead of the
            whole data set; a mean is weighted by the rows of all ranks, and mini-batches
            are the ones one process would draw from all of them.

    Returns:
        An engine named ``"torch-dp2"``, ``"jax-dp4"``, ... (``get_engine`` and the command
        line take these names too). A torch engine with processes holds them until it is
        closed (``close()``, or ``with``) or collected.

    Raises:
        ArgumentError: an engine other than torch or jax (``ArgumentTypeError`` for an
            engine object), a bad count, a timeout past a day, more threads than this
            machine's cores, or more than 4 spawned processes per core.
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
    if not isinstance(engine, str):
        raise ArgumentTypeError(
            "engine",
            f"must be the name 'torch' or 'jax', got {engine!r}: each rank makes its own "
            "engine, so an engine object cannot be spread",
        )
    if engine not in _BACKENDS:
        raise ArgumentError(
            "engine",
            f"data-parallel runs spread rows with torch.distributed or JAX's sharding: "
            f"give 'torch' or 'jax', got {engine!r} (the numpy engine runs in one process)",
        )
    # Finite bounds: a timeout past a day is a hang by another name (and overflows the
    # timedelta torch takes); a rank's threads, or spawned ranks, far beyond this machine's
    # cores only slow it down, and a thousand spawned processes would exhaust its memory.
    timeout = check_float(timeout, "timeout", 0.0, _DAY)
    if timeout <= 0:
        raise ArgumentError("timeout", f"must be positive, got {timeout!r}")
    cores = os.cpu_count() or 1
    threads = check_positive_int(threads, "threads")
    if threads > cores:
        raise ArgumentError("threads", f"is {threads}, more than this machine's {cores} cores")
    if processes is not None and check_positive_int(processes, "processes") > 4 * cores:
        raise ArgumentError(
            "processes",
            f"is {processes}, more than 4 per core of this machine's {cores}: launch ranks "
            "on several machines with torchrun instead",
        )
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
    if check_bool(local_data, "local_data") and (engine != "torch" or count is not None):
        raise ArgumentError(
            "local_data",
            "is for the ranks of a torchrun launch (data_parallel('torch') without "
            "processes=): spawned ranks get their rows from rank 0",
        )
    made: DataParallel = backend.make(
        count, timeout=timeout, threads=threads, **({"local_data": True} if local_data else {})
    )
    return made


def engine_from_name(name: str, **options: Any) -> DataParallel | None:
    """``"torch-dp2"`` as ``data_parallel("torch", processes=2, **options)``, ``"jax-dp4"``
    as ``data_parallel("jax", devices=4, **options)``; ``None`` for any other name."""
    base, separator, count = name.rpartition("-dp")
    if not separator or base not in _BACKENDS or not count.isdigit():
        return None
    option = "processes" if base == "torch" else "devices"
    options[option] = int(count)
    return data_parallel(base, **options)
