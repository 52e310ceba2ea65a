"""torch's data-parallel engine: ranks that run the same loop, one all-reduce per step.

Every rank computes the loss and gradient of *its* rows with the ``torch`` engine, and one
all-reduce over a single flat buffer ``[loss, gradient..., failed, rows]`` sums the ranks'
shares. A mean is each rank's mean weighted by its rows, divided after the sum by the rows
of all ranks, so no rank needs to know the others' rows beforehand (unequal shards, shards
of one row or none, and ranks that load only their own rows all give one process's
numbers). Every rank gets the same numbers, bit for bit, so ranks that apply the same
update stay in step: that is SPMD, as DDP does it, with no parameter server.

Two launches share it (``_Rank``):

- ``_Launched``: the processes are the user's (``torchrun``). Each runs the same script;
  with ``local_data`` each passes only its own rows, and mini-batches are still the ones
  one process draws, because fit numbers rows globally (``total_rows``) and each rank picks
  the rows of a batch that are its own (``_Shard``). Before each call or stretch of a fit,
  the ranks compare a fingerprint of what must agree (``_fingerprint``).
- ``_Spawned``: this process is rank 0 and starts the others (``spawn``). A stretch of a
  fit runs on every rank: the loop body (problem and optimizer), the carry and the rows
  travel once, through each worker's own pipe, and each step is one all-reduce. A
  single gradient call (``compare_gradients``) is a command, a broadcast of the parameters
  and the all-reduce.

What crosses the network, and what is trusted (``docs/scaling.md``): only tensors, through
gloo on the loopback interface. The rendezvous is a ``FileStore`` in a private temporary
directory (no listening store), and nothing read from a socket or store is ever unpickled:
commands, problems and errors travel through ``multiprocessing`` pipes that only this
process and its children hold.

The process group is made from ``ProcessGroupGloo`` directly, not ``init_process_group``:
that would set this process's global default group, which gradlab leaves as it found it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import io
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from gradlab._errors import (
    ArgumentError,
    ArgumentTypeError,
    EngineUnavailable,
    NotSupported,
    RankFailed,
    first_line,
)
from gradlab._fingerprint import digest as problem_digest
from gradlab._tree import tree_map
from gradlab.engines._protocol import (
    BATCH_ORDER,
    Array,
    Carry,
    Data,
    Params,
    Step,
    ValueAndGrad,
    value_and_grad_of,
)
from gradlab.engines._torch import TorchEngine
from gradlab.engines.parallel._common import (
    DataParallel,
    reduction_of,
    rows_of,
    shard_bounds,
    share,
)
from gradlab.problems._base import AbstractProblem
from gradlab.problems._named import PROBLEM_FOLDERS

Local = Callable[[Params, Mapping[str, Array]], "tuple[Array, dict[str, Array]]"]

#: Seconds, beyond ``timeout``, that spawned ranks may take to start (a new Python
#: process importing torch takes seconds, more on a loaded machine).
_START = 120.0
#: Why a data-parallel engine cannot start inside a rank that is itself being spawned.
_UNGUARDED = (
    "a data-parallel engine was started while this process was being spawned as a rank: "
    "spawned ranks import the main script again, and this one starts the engine at import. "
    'Put the code that makes and uses the engine under `if __name__ == "__main__":`'
)
#: What to check when a rank dies before it has started.
_STARTING = (
    "if this runs from a script, its code that starts the engine must be under "
    '`if __name__ == "__main__":`, since every spawned rank imports the script again; '
    "the rank's own error is printed above"
)


def make(
    processes: int | None, *, timeout: float, threads: int, local_data: bool = False
) -> TorchDataParallel:
    """The engine ``data_parallel("torch", ...)`` returns."""
    torch = importlib.import_module("torch")
    if not torch.distributed.is_available():
        raise EngineUnavailable("torch-dp", "torch.distributed", "torch")
    if processes is None:
        return TorchDataParallel(_Launched(torch, timeout, threads, local_data))
    return TorchDataParallel(_Spawned(torch, processes, timeout, threads))


class TorchDataParallel(DataParallel):
    """The ``torch`` engine with its rows spread over processes (see ``data_parallel``)."""

    def __init__(self, group: _Launched | _Spawned) -> None:
        self._torch = TorchEngine(device=group.device)
        super().__init__(self._torch, group.size, group.launch)
        self._group = group

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """Each rank's share of the loss and gradient, summed by one all-reduce."""
        reduction = reduction_of(problem)
        local = value_and_grad_of(self.base, problem)
        return _Gradient(self._group, problem, reduction, local)

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The torch engine's loop on every rank, each step one all-reduce."""
        return self._group.run(self._torch, step, carry, data, steps)

    def total_rows(self, rows: int) -> int:
        """The rows of all ranks' data (each rank's own, under ``local_data``)."""
        return self._group.total_rows(rows)

    def describe(self) -> dict[str, Any]:
        """The torch engine's facts, the ranks and the backend."""
        facts = super().describe()
        facts["data_parallel"].update(backend=self._group.backend, threads=self._group.threads)
        return facts

    def close(self) -> None:
        """Stop the spawned processes and release their sockets (a torchrun launch's
        processes are the launch's)."""
        self._group.close()


class _Gradient:
    """The engine's ``(params, data) -> (loss, grads)``: a value the spawned workers can be
    sent inside a loop body (as a reference to the problem, ``_Pickler``)."""

    def __init__(
        self,
        group: _Launched | _Spawned | _Worker,
        problem: AbstractProblem,
        reduction: str,
        local: Local,
    ) -> None:
        self.group, self.problem, self.reduction, self.local = group, problem, reduction, local

    def __call__(self, params: Params, data: Data) -> tuple[Any, dict[str, Any]]:
        return self.group.call(self, params, data)


# -- what every rank does --------------------------------------------------------------------


class _Shard:
    """One data array as the loop body sees it on a rank that holds rows ``[start, start +
    len(rows))`` of ``total``: indexed by a mini-batch's global row numbers, it gives the
    rows of the batch that are this rank's (``_Picked``)."""

    def __init__(self, rows: Any, start: int, total: int, picks: list[Any]) -> None:
        self.rows, self.start, self.total, self.picks = rows, start, total, picks

    def __getitem__(self, index: Any) -> _Picked:
        # Every array of a step is indexed by the same row numbers: which are this rank's
        # is worked out once per step (``picks``, shared by a data set's arrays).
        if not self.picks or self.picks[0] is not index:
            local = index.long() - self.start
            self.picks[:] = [index, local.masked_select((local >= 0) & (local < len(self.rows)))]
        return _Picked(self.rows.index_select(0, self.picks[1]), int(index.shape[0]))


class _Picked:
    """This rank's rows of a mini-batch of ``total`` rows."""

    def __init__(self, rows: Any, total: int) -> None:
        self.rows, self.total = rows, total


def _my_rows(data: Data, rank: int, size: int, whole: bool) -> tuple[dict[str, Any], int | None]:
    """This rank's rows of ``data``, and how many rows all ranks have (``None`` when no
    rank knows: each passed its own, ``local_data``): the rows a ``_Shard`` or ``_Picked``
    holds; of plain arrays, its slice when every rank has them all (``whole``)."""
    values = list(data.values())
    if values and isinstance(values[0], (_Shard, _Picked)):
        return {name: value.rows for name, value in data.items()}, values[0].total
    if not whole:
        return dict(data), None
    total = rows_of(data)
    start, stop = shard_bounds(total, size)[rank]
    return {name: value[start:stop] for name, value in data.items()}, total


class _Rank:
    """What every rank does in a gradient call: its share, then the all-reduce.

    Args:
        torch: The torch module.
        group: The process group (``None`` for one rank).
        rank: This process's rank.
        timeout: Seconds a collective may wait.
        threads: torch's intra-op threads while this rank computes (``None``: as set).
    """

    def __init__(
        self, torch: Any, group: Any, rank: int, timeout: float, threads: int | None
    ) -> None:
        self.torch, self.group, self.rank = torch, group, rank
        self.timeout, self.threads = timeout, threads

    def gradient(
        self,
        local: Local,
        params: Params,
        mine: tuple[Mapping[str, Any], int | None],
        reduction: str,
        sync: bool = True,
    ) -> tuple[Any, dict[str, Any]]:
        """The loss and gradient of all ranks' rows: this rank's share of ``mine`` (its
        rows, and all ranks' row count), one all-reduce. ``sync``: on a GPU, read whether
        another rank failed (a step of a fit does not wait for the device)."""
        rows, total = mine
        count = int(next(iter(rows.values())).shape[0]) if rows else 0
        # A mean: each rank's mean weighted by its share of the rows; where no rank knows
        # the rows of all, by its rows, and divided by their sum after the all-reduce.
        divide = reduction == "mean" and total is None
        weight = float(count) if divide else share(count, total or 1, reduction)
        flat, error = self.share(local, params, rows, count, weight)
        self.all_reduce(flat)
        if error is not None:
            raise error
        return self.result(flat, params, divide, sync)

    def share(
        self, local: Local, params: Params, rows: Mapping[str, Any], count: int, weight: float
    ) -> tuple[Any, BaseException | None]:
        """This rank's loss and gradient of its ``count`` rows, times ``weight``, as one
        flat tensor ``[loss, gradient..., failed, rows]``, and its error if computing them
        failed: it then adds zeros and a failure, and still takes part in the all-reduce,
        so that no other rank waits for it."""
        torch = self.torch
        error: BaseException | None = None
        pieces: list[Any] = []
        if count:
            try:
                with self.computing():
                    loss, grads = local(params, rows)
                pieces = [loss.detach().reshape(1)]
                pieces += [grads[name].detach().reshape(-1) for name in params]
            except Exception as failure:
                error, pieces = failure, []
        first = next(iter(params.values()))
        if not pieces:  # no rows here, or they failed: this rank adds nothing
            size = 1 + sum(value.numel() for value in params.values())
            pieces = [torch.zeros(size, dtype=first.dtype, device=first.device)]
        flat = torch.cat([*pieces, torch.empty(2, dtype=first.dtype, device=first.device)])
        flat = flat.to(first.dtype)  # a loss in a wider dtype: one buffer on every rank
        if weight != 1.0:
            flat[:-2] *= weight
        # Filled from host numbers: no copy to a GPU, so no wait for it.
        flat[-2], flat[-1] = float(error is not None), float(count)
        return flat, error

    def result(
        self, flat: Any, params: Params, divide: bool, sync: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        """The reduced ``[loss, gradient..., failed, rows]`` as ``(loss, grads)``, divided
        by every rank's rows if ``divide``; ``_Elsewhere`` if another rank failed."""
        values = flat[:-2]
        if flat.device.type == "cpu" or sync:
            failures = int(flat[-2].item())
            if failures:
                raise _Elsewhere(failures)
        else:
            # No host sync per step of a fit on a GPU: a failure elsewhere poisons the
            # step's numbers (the failing rank raises its own error, and the next
            # collective fails).
            values = values + self.torch.where(flat[-2] > 0, float("nan"), 0.0)
        if divide:
            values = values / flat[-1]
        loss, at, grads = values[0], 1, {}
        for name, value in params.items():
            grads[name] = values[at : at + value.numel()].reshape(value.shape)
            at += value.numel()
        return loss, grads

    def all_reduce(self, flat: Any) -> Any:
        """Sum ``flat`` over the ranks, in place; every rank gets the same numbers."""
        if self.group is not None:
            self.collective("allreduce", [flat])
        return flat

    def collective(self, operation: str, *args: Any) -> None:
        """Run the group's collective ``operation`` and wait for it; a failure (a dead
        rank, a timeout) as ``RankFailed``, raised outside the handler so that the error
        holds neither the group nor the runtime's error (a held group keeps its sockets)."""
        try:
            getattr(self.group, operation)(*args).wait()
            return
        except RuntimeError as error:
            cause = first_line(error)
        raise RankFailed(
            f"rank {self.rank}: a data-parallel collective failed (a rank died or did "
            f"not answer within {self.timeout:g} s): {cause}"
        )

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """torch's thread count set to this rank's while it computes, then put back."""
        before = self.torch.get_num_threads()
        if self.threads is None or before == self.threads:
            yield
            return
        self.torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self.torch.set_num_threads(before)


class _Quiet(Exception):
    """A loop body another rank could not load: not run, and nothing to answer."""


class _Elsewhere(Exception):
    """Another rank failed computing its share (it raises its own error)."""

    def __init__(self, failures: int) -> None:
        super().__init__(f"{failures} other rank(s) failed computing their share")


# -- a torchrun launch ------------------------------------------------------------------------


class _Launched:
    """The ranks of a ``torchrun`` launch: every rank runs this same code."""

    launch = "torchrun"

    def __init__(self, torch: Any, timeout: float, threads: int, local_data: bool) -> None:
        dist = torch.distributed
        self.torch, self.local_data = torch, local_data
        if not dist.is_initialized():
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise ArgumentError(
                    "processes",
                    "is needed here: give processes=N to start N local processes, or launch "
                    "with torchrun (no torch.distributed process group, and no RANK or "
                    "WORLD_SIZE in the environment)",
                )
            local = os.environ.get("LOCAL_RANK")
            gpu = local is not None and torch.cuda.is_available()
            self.backend = "nccl" if gpu else "gloo"
            # The launch asked for a process group; this makes the default one from its
            # environment, as the script itself would. On a GPU the rank's device is set
            # first and named to the group, so NCCL binds each rank to its own GPU.
            options: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout)}
            if gpu:
                torch.cuda.set_device(int(local or 0))
                options["device_id"] = torch.device(f"cuda:{local}")
            try:
                dist.init_process_group(self.backend, **options)
            except (RuntimeError, ValueError) as error:
                raise RankFailed(
                    f"the ranks of the launch did not meet: {first_line(error)}"
                ) from None
        else:
            self.backend = str(dist.get_backend())
        # The device follows the group: NCCL's tensors live on this rank's GPU.
        self.device = f"cuda:{torch.cuda.current_device()}" if self.backend == "nccl" else "cpu"
        self.size, self.threads = dist.get_world_size(), threads
        self._rank = _Rank(torch, dist.group.WORLD, dist.get_rank(), timeout, threads)
        self._running = False
        self._broken: str | None = None
        self._digests: dict[str, Any] = {}

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[_Rank]:
        """The group for one call or stretch; a lost rank or an interruption (which leaves
        the ranks out of step) breaks this rank's engine."""
        if self._broken is not None:
            raise RankFailed(f"this engine lost a rank earlier ({self._broken}); make a new one")
        try:
            yield self._rank
        except RankFailed as failure:
            self._broken = str(failure)
            raise
        except Exception:
            raise
        except BaseException:
            self._broken = "interrupted during a data-parallel call"
            raise

    def call(self, gradient: _Gradient, params: Params, data: Data) -> tuple[Any, dict[str, Any]]:
        if self._running:  # a step of a stretch: the all-reduce alone
            return self._step(gradient, params, data)
        with self._guarded():
            self._agree(gradient.problem, gradient.reduction, params, data)
            if self.local_data:
                rows_of(data)  # this rank's rows: checked as a whole data set would be
            return self._step(gradient, params, data, sync=True)

    def _step(
        self, gradient: _Gradient, params: Params, data: Data, sync: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        rank = self._rank
        mine = _my_rows(data, rank.rank, self.size, whole=not self.local_data)
        try:
            return rank.gradient(gradient.local, params, mine, gradient.reduction, sync)
        except _Elsewhere as elsewhere:
            raise RankFailed(
                f"{elsewhere} of the gradient of {gradient.problem.name!r}; their own output "
                "shows why"
            ) from None

    def run(
        self, base: TorchEngine, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, Any]:
        rank = self._rank
        gradient = _gradient_in(step)
        if gradient is None:
            with rank.computing():
                return base.run(step, carry, data, steps)
        with self._guarded():
            self._agree(gradient.problem, gradient.reduction, carry[0], data, step)
            if self.local_data:
                # Mini-batches are numbered over all ranks' rows (``total_rows``): each
                # rank picks the rows of a batch that are its own.
                counts = self._gather(np.array([rows_of(_rows_only(data))], dtype=np.int64))
                start = int(counts[: rank.rank, 0].sum())
                data = _sharded(data, start, int(counts[:, 0].sum()))
            self._running = True
            try:
                with rank.computing():
                    return base.run(step, carry, data, steps)
            finally:
                self._running = False

    def total_rows(self, rows: int) -> int:
        if not self.local_data:
            return rows
        with self._guarded():
            return int(self._gather(np.array([rows], dtype=np.int64)).sum())

    def _gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's ``values`` (int64), stacked by rank."""
        torch, rank = self.torch, self._rank
        mine = torch.as_tensor(values).to(self.device)
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        rank.collective("allgather", [everyone], [mine])
        return np.stack([value.cpu().numpy() for value in everyone])

    def _agree(
        self,
        problem: AbstractProblem,
        reduction: str,
        params: Params,
        data: Data,
        step: Step | None = None,
    ) -> None:
        """Fail, naming what differs and on which rank, unless every rank has the same
        parameters, problem, dtype, optimizer, mini-batch order and (when every rank holds
        the whole data) data."""
        whole = not self.local_data
        mine = _fingerprint(problem, reduction, params, data, step, whole, self._digests)
        names = list(mine)
        # The first column says which digests follow: ranks at different calls (a fit
        # against a gradient call, mini-batches against none) are told apart by it.
        kinds = hashlib.blake2b(" ".join(names).encode(), digest_size=8).hexdigest()
        digests = np.array(
            [int(kinds, 16) >> 1, *(int(mine[name], 16) >> 1 for name in names)],
            dtype=np.int64,
        )
        everyone = self._gather(
            np.resize(digests, _COLUMNS) if len(digests) < _COLUMNS else digests
        )
        for column, name in enumerate(["call", *names]):
            differ = [r for r in range(self.size) if everyone[r, column] != everyone[0, column]]
            if differ:
                raise ArgumentError(
                    name,
                    f"differs between the ranks: rank(s) {differ} have other {name} than "
                    f"rank 0 (this is rank {self._rank.rank}); every rank must start from the "
                    "same",
                )

    def close(self) -> None:
        """The launch owns its processes."""


#: The digests ranks exchange, padded to one length (what a mismatch names is the first).
_COLUMNS = 8


def _fingerprint(
    problem: AbstractProblem,
    reduction: str,
    params: Params,
    data: Data,
    step: Step | None,
    whole: bool,
    cache: dict[str, Any],
) -> dict[str, str]:
    """Short digests of what every rank must agree on, by the argument's name (``dtype``
    before ``params``, whose digest covers their dtype too). The data's is kept in
    ``cache`` for the same tensors, unwritten: a fit checks them each stretch."""

    def digest(*parts: Any) -> str:
        hasher = hashlib.blake2b(digest_size=8)
        for part in parts:
            if hasattr(part, "detach"):
                part = part.detach().cpu().contiguous().numpy()
            if isinstance(part, np.ndarray):
                hasher.update(f"{part.dtype}{part.shape}".encode())
                part = part.tobytes()
            hasher.update(part if isinstance(part, bytes) else repr(part).encode())
        return hasher.hexdigest()

    def named(arrays: Mapping[str, Any]) -> list[Any]:
        return [part for name, value in arrays.items() for part in (name, value)]

    rows = _rows_only(data)
    facts = {
        "dtype": digest(*[str(value.dtype) for value in params.values()]),
        "params": digest(*named(params)),
        "problem": digest(problem.name, reduction, problem_digest(problem, torch_tensors=False)),
    }
    if step is not None:
        # The loop body as it travels: its optimizer and settings, the gradient by name.
        facts["optimizer"] = digest(_bytes(step))
        facts["mini-batch order"] = digest(data.get(BATCH_ORDER))
    if whole:
        # The same tensor objects (held weakly: an id alone may be reused), unwritten.
        same = [(name, value._version) for name, value in rows.items()]
        held = cache.get("tensors", ())
        if cache.get("same") != same or any(
            ref() is not value for ref, value in zip(held, rows.values(), strict=True)
        ):
            cache.update(same=same, tensors=[weakref.ref(v) for v in rows.values()])
            cache["digest"] = digest(*named(rows))
        facts["data"] = cache["digest"]
    return facts


def _bytes(value: Any) -> bytes:
    """``value`` pickled (its functions by name), or ``b""`` if it cannot be (its digest
    then says nothing of it)."""
    try:
        return _dumps(value)
    except Exception:
        return b""


# -- ranks spawned here -----------------------------------------------------------------------


class _Spawned:
    """This process as rank 0 of ``size`` local processes it starts."""

    launch = "spawned"
    backend = "gloo"
    device = "cpu"

    def __init__(self, torch: Any, size: int, timeout: float, threads: int) -> None:
        self.torch, self.size, self.timeout, self.threads = torch, size, timeout, threads
        self._rank: _Rank | None = None
        self._held: dict[str, Any] = {}  # rank 0's copy of what the workers hold
        self._broken: str | None = None
        self._running = False
        self._links: list[Any] = []
        self.processes: list[Any] = []
        self._finalizer: Any = None
        self.directory: str | None = None

    def total_rows(self, rows: int) -> int:
        return rows

    # -- starting and stopping

    def _start(self) -> _Rank:
        """Start the other ranks and make the group, once (on the first call)."""
        if self._broken is not None:
            raise RankFailed(f"this engine lost a rank earlier ({self._broken}); make a new one")
        if self._rank is not None:
            return self._rank
        if self.size == 1:
            self._rank = _Rank(self.torch, None, 0, self.timeout, self.threads)
            return self._rank
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # multiprocessing's own check would say this in its words, blamed on the loss.
            raise NotSupported(_UNGUARDED)
        # The rendezvous is a file in a directory only this user can read: no listening
        # store. Gloo itself listens on the loopback interface only.
        self.directory = directory = tempfile.mkdtemp(prefix="gradlab-ranks-")
        holder: list[Any] = []
        self._finalizer = weakref.finalize(
            self, _stop, self.processes, self._links, holder, directory
        )
        spawn = multiprocessing.get_context("spawn")
        for rank in range(1, self.size):
            mine, theirs = spawn.Pipe()
            self._links.append(mine)
            self.processes.append(
                spawn.Process(
                    target=follow,
                    args=(
                        rank,
                        self.size,
                        directory,
                        self.timeout,
                        self.threads,
                        theirs,
                        list(PROBLEM_FOLDERS),
                    ),
                    daemon=True,
                    name=f"gradlab-rank{rank}",
                )
            )
            self.processes[-1].start()
            theirs.close()  # the child's end lives on in the child
        try:
            self._replies(_START + self.timeout, "did not start")
        except RankFailed as failure:
            raise RankFailed(f"{failure} while starting ({_STARTING})") from None
        try:
            holder.append(_gloo(self.torch, directory, 0, self.size, self.timeout))
        except RuntimeError as error:
            raise RankFailed(f"the ranks did not connect: {first_line(error)}") from None
        self._rank = _Rank(self.torch, holder[0], 0, self.timeout, self.threads)
        return self._rank

    def _fail(self, what: str) -> RankFailed:
        """Give up on the group: stop every rank, and say which died."""
        dead = [
            f"rank {rank} (pid {process.pid}) exited with code {process.exitcode}"
            for rank, process in enumerate(self.processes, start=1)
            if not process.is_alive() and process.exitcode is not None
        ]
        self._broken = "; ".join(part for part in (what, *dead) if part)
        for process in self.processes:  # a failed group cannot be used: no grace period
            if process.pid is not None:
                process.kill()
        self.close()
        return RankFailed(self._broken)

    def close(self) -> None:
        """Stop the ranks and release the group's sockets (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        if self._rank is not None:
            self._rank.group = None
        self._finalizer = self._rank = None
        self._links, self.processes, self._held = [], [], {}

    # -- talking to the workers

    def _tell(self, message: tuple[Any, ...]) -> None:
        """Send every worker ``message`` through its pipe, within ``timeout``: a large one
        goes from a thread, since a stopped worker's full pipe would block the write."""
        sent = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        lost: list[int] = []

        def send() -> None:
            for rank, link in enumerate(self._links, start=1):
                try:
                    link.send_bytes(sent)
                except OSError:
                    lost.append(rank)
                    return

        if len(sent) < _SMALL:
            send()
        else:
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            sender.join(self.timeout)
            if sender.is_alive():
                raise RankFailed(f"a rank did not take a message within {self.timeout:g} s")
        if lost:
            raise RankFailed(f"rank {lost[0]} died")

    def _replies(self, within: float, what: str = "did not answer") -> Any:
        """Each worker's answer to the last message (``None``, a marker, or the error its
        own share raised), all read; the first that is not ``None``. A worker that dies, or
        does not answer ``within`` seconds, fails the engine."""
        deadline = time.monotonic() + within
        first: Any = None
        for rank, (link, process) in enumerate(zip(self._links, self.processes, strict=True), 1):
            while not link.poll(0.02):
                if not process.is_alive():
                    raise RankFailed(f"rank {rank} died")
                if time.monotonic() > deadline:
                    raise RankFailed(f"rank {rank} {what} within {within:g} s")
            try:
                answer = link.recv_bytes()
            except (EOFError, OSError):
                raise RankFailed(f"rank {rank} died") from None
            try:
                answer = pickle.loads(answer)
            except Exception as error:  # an error that pickles but does not unpickle
                answer = RuntimeError(f"rank {rank}: an error that cannot be read: {error}")
            if first is None:
                first = answer
        return first

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[_Rank]:
        """The group for one call or stretch (started on the first); a lost rank, or an
        interruption (which leaves the ranks mid-collective or mid-start), breaks the
        engine. An error of the problem's own leaves it usable."""
        try:
            yield self._start()
        except RankFailed as failure:
            raise self._fail(str(failure)) from None
        except Exception:
            raise
        except BaseException:
            self._fail("interrupted during a data-parallel call")
            raise

    @contextlib.contextmanager
    def _answered(self, problem: AbstractProblem) -> Iterator[None]:
        """Around what follows a command: every worker's answer is read on every path (so
        rank 0 and the workers never fall out of step), and the error a worker's own
        share raised comes back as one process would raise it."""
        try:
            yield
        except _Elsewhere:
            theirs = self._replies(self.timeout)
            raise theirs or RankFailed(
                f"a rank failed computing its share of {problem.name!r}"
            ) from None
        except RankFailed:
            raise
        except Exception:
            self._replies(self.timeout)
            raise
        self._replies(self.timeout)

    def _send_rows(self, rank: _Rank, data: Data) -> None:
        """Give each worker its rows of ``data`` (and the mini-batch order), unless it
        holds them already: compared by content, so data changed in place (through a
        NumPy view, say) is sent again, never answered from the old copy."""
        torch = self.torch
        if self._held.keys() == data.keys() and all(
            held.shape == data[name].shape
            and held.dtype == data[name].dtype
            and torch.equal(held, data[name])
            for name, held in self._held.items()
        ):
            return
        self._held = {}
        bounds = shard_bounds(rows_of(_rows_only(data)), self.size)
        layout = {
            name: (tuple(value.shape), str(value.dtype).removeprefix("torch."))
            for name, value in data.items()
        }
        self._tell(("rows", layout))
        for name, value in data.items():
            for other, (start, stop) in enumerate(bounds[1:], start=1):
                part = value if name == BATCH_ORDER else value[start:stop]
                rank.collective("send", [part.detach().contiguous()], other, 0)
        self._held = {name: value.detach().clone() for name, value in data.items()}

    # -- a gradient call, a stretch of a fit

    def call(self, gradient: _Gradient, params: Params, data: Data) -> tuple[Any, dict[str, Any]]:
        if self._running:  # a step of a stretch every rank runs: the all-reduce alone
            assert self._rank is not None
            mine = _my_rows(data, 0, self.size, whole=True)
            return self._rank.gradient(gradient.local, params, mine, gradient.reduction)
        _tensors(self.torch, params, "params")
        _tensors(self.torch, data, "data")
        sent = _sendable(gradient.problem) if self.size > 1 else b""
        with self._guarded() as rank:
            mine = _my_rows(data, 0, self.size, whole=True)
            if rank.group is None:
                return rank.gradient(gradient.local, params, mine, gradient.reduction)
            # Everything that could fail is ready before the first word to the workers.
            flat = self.torch.cat([value.detach().reshape(-1) for value in params.values()])
            layout = [(name, tuple(value.shape)) for name, value in params.items()]
            dtype = str(flat.dtype).removeprefix("torch.")
            self._send_rows(rank, data)
            self._tell(("call", sent, gradient.reduction, layout, dtype))
            with self._answered(gradient.problem):
                rank.collective("broadcast", flat, 0)
                return rank.gradient(gradient.local, params, mine, gradient.reduction)

    def run(
        self, base: TorchEngine, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, Any]:
        gradient = _gradient_in(step)
        travel = None if gradient is None or self.size == 1 else _travelling(step, carry)
        if gradient is None or travel is None:  # one rank, or a loop body that cannot travel
            with contextlib.ExitStack() as stack:
                if self._rank is not None:
                    stack.enter_context(self._rank.computing())
                return base.run(step, carry, data, steps)
        with self._guarded() as rank:
            sent, skeleton, tensors = travel
            problem = _sendable(gradient.problem)
            total = rows_of(_rows_only(data))
            stop = shard_bounds(total, self.size)[0][1]
            mine = _sharded(
                {k: v if k == BATCH_ORDER else v[:stop] for k, v in data.items()}, 0, total
            )
            self._send_rows(rank, data)
            self._tell(("run", problem, sent, skeleton, steps))
            stays = self._replies(self.timeout)  # each worker loaded the loop body, or why not
            self._tell(("stay",) if stays is not None else ("go",))
            if isinstance(stays, _Stays):  # it cannot travel after all: call by call
                with rank.computing():
                    return base.run(step, carry, data, steps)
            if stays is not None:
                raise stays
            with self._answered(gradient.problem):
                for tensor in tensors:  # the carry, by gloo (the pipes carry no arrays)
                    rank.collective("broadcast", tensor.detach().contiguous(), 0)
                self._running = True
                try:
                    with rank.computing():
                        return base.run(step, carry, mine, steps)
                finally:
                    self._running = False


#: Messages below this many bytes go to the workers' pipes directly (a pipe holds more).
_SMALL = 2**16


class _Stays:
    """A worker's answer: it loaded the problem but not the loop body (an optimizer of the
    user's own functions), so the stretch runs call by call."""


class _Slot:
    """Where a tensor of the carry goes; the tensor itself travels by gloo."""

    def __init__(self, shape: tuple[int, ...], dtype: str) -> None:
        self.shape, self.dtype = shape, dtype


def _travelling(step: Step, carry: Carry) -> tuple[bytes, bytes, list[Any]] | None:
    """The loop body and the carry's skeleton as the workers load them, and the carry's
    tensors, or ``None`` if they cannot travel (the stretch then runs call by call)."""
    tensors: list[Any] = []

    def slot(leaf: Any) -> Any:
        if hasattr(leaf, "detach"):
            tensors.append(leaf)
            return _Slot(tuple(leaf.shape), str(leaf.dtype).removeprefix("torch."))
        return leaf

    try:
        return _dumps(step), pickle.dumps(tree_map(slot, carry)), tensors
    except Exception:
        return None


def _tensors(torch: Any, arrays: Mapping[str, Any], argument: str) -> None:
    """Refuse, naming the argument, anything but torch tensors (the engine's arrays)."""
    for name, value in arrays.items():
        if not isinstance(value, torch.Tensor):
            raise ArgumentTypeError(
                f"{argument}[{name!r}]",
                f"must be a torch tensor (the engine's asarray makes one), got "
                f"{type(value).__name__}",
            )


def _sharded(data: Data, start: int, total: int) -> dict[str, Any]:
    """``data`` as the loop body sees it on a rank holding rows ``[start, ...)`` of
    ``total``."""
    picks: list[Any] = []
    return {
        name: value if name == BATCH_ORDER else _Shard(value, start, total, picks)
        for name, value in data.items()
    }


def _rows_only(data: Data) -> dict[str, Any]:
    """``data`` without the mini-batch order: the arrays whose rows are spread."""
    return {name: value for name, value in data.items() if name != BATCH_ORDER}


def _gradient_in(step: Step) -> _Gradient | None:
    """The data-parallel gradient a loop body calls, if it is one of these engines'."""
    found = getattr(step, "value_and_grad", None)
    return found if isinstance(found, _Gradient) else None


def _gloo(torch: Any, directory: str, rank: int, size: int, timeout: float) -> Any:
    """A gloo group of ``size`` local ranks, meeting through a file in ``directory``, its
    sockets on the loopback interface."""
    dist = torch.distributed
    store = dist.FileStore(os.path.join(directory, "store"), size)
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = datetime.timedelta(seconds=timeout)
    return dist.ProcessGroupGloo(store, rank, size, options)


def _stop(processes: list[Any], links: list[Any], holder: list[Any], directory: str) -> None:
    """Tell the ranks to stop, wait a moment, end any that did not, and release the
    group's sockets and the rendezvous directory."""
    for link in links:
        with contextlib.suppress(Exception):
            link.send_bytes(pickle.dumps(("stop",)))
    deadline = time.monotonic() + 5.0
    for process in processes:
        if process.pid is None:
            continue
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    for link in links:
        link.close()
    holder.clear()  # the group's last reference: its sockets close with it
    shutil.rmtree(directory, ignore_errors=True)


# -- what travels through the pipes -----------------------------------------------------------


class _Pickler(pickle.Pickler):
    """Pickles a loop body for the workers: the data-parallel gradient it calls by its
    reduction alone (each worker makes its own, for the problem sent beside it), modules
    (an array namespace) by name."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Gradient):
            return ("gradient", obj.reduction)
        if type(obj).__name__ == "module":
            return ("module", obj.__name__)
        return None


class _Unpickler(pickle.Unpickler):
    """The workers' side of ``_Pickler``: a gradient becomes this rank's own."""

    def __init__(self, file: io.BytesIO, gradient: Callable[[str], _Gradient]) -> None:
        super().__init__(file)
        self.gradient = gradient

    def persistent_load(self, pid: Any) -> Any:
        kind, name = pid
        if kind == "gradient":
            return self.gradient(name)
        return importlib.import_module(name)


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer).dump(value)
    return buffer.getvalue()


def _sendable(problem: AbstractProblem) -> bytes:
    """``problem`` pickled for the spawned ranks, or an error naming it."""
    try:
        return _dumps(problem)
    except Exception as error:
        raise ArgumentError(
            "problem",
            f"cannot be sent to the spawned processes ({first_line(error)}): build it from "
            "module-level functions, or launch the ranks with torchrun",
        ) from None


# -- a spawned worker -------------------------------------------------------------------------


def follow(
    rank: int,
    size: int,
    directory: str,
    timeout: float,
    threads: int,
    link: Any,
    folders: Sequence[str] = (),
) -> None:
    """A spawned rank: join the group, then answer every message from rank 0's pipe
    until told to stop or rank 0 is gone (its pipe closes with it). ``folders``: where
    rank 0 found the problems it loaded by name, searched here to import them again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    sys.path.extend(folder for folder in folders if folder not in sys.path)
    torch = importlib.import_module("torch")
    torch.set_num_threads(threads)
    link.send_bytes(pickle.dumps(None))  # started
    me = _Rank(torch, _gloo(torch, directory, rank, size, timeout), rank, timeout, None)
    worker = _Worker(torch, me, size, link)
    while True:
        try:
            message = pickle.loads(link.recv_bytes())
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] in ("go", "stay"):
            continue  # for the ranks that loaded a loop body; this one did not
        try:
            answer = worker.handle(message)
        except _Quiet:
            continue
        except _Elsewhere:
            answer = None  # another rank failed: it answers why
        except RankFailed:
            return  # rank 0 gave up, or another rank died: nothing left to follow
        if message[0] != "rows":
            worker.answer(answer)


class _Worker:
    """What a spawned rank holds: its rows, the engine, the problem it was sent last."""

    def __init__(self, torch: Any, me: _Rank, size: int, link: Any) -> None:
        self.torch, self.me, self.size, self.link = torch, me, size, link
        self.engine = TorchEngine()
        self.rows: dict[str, Any] = {}
        self.start = self.total = 0
        self.problems: dict[bytes, tuple[Any, Local]] = {}

    def handle(self, message: tuple[Any, ...]) -> Any:
        """Do what ``message`` says; the error this rank's own share raised, if any."""
        kind = message[0]
        if kind == "rows":
            self.receive(message[1])
            return None
        try:
            if kind == "call":
                _, problem, reduction, layout, dtype = message
                gradient = self.gradient(problem, reduction)
                size = sum(int(np.prod(shape)) for _, shape in layout)
                flat = self.torch.empty(size, dtype=getattr(self.torch, dtype))
                self.me.collective("broadcast", flat, 0)
                params, at = {}, 0
                for name, shape in layout:
                    count = int(np.prod(shape))
                    params[name] = flat[at : at + count].reshape(shape)
                    at += count
                gradient(params, _sharded(_rows_only(self.rows), self.start, self.total))
            else:
                self.stretch(*message[1:])
        except (_Elsewhere, RankFailed, _Quiet):
            raise
        except Exception as error:
            return error
        return None

    def stretch(self, problem: bytes, sent: bytes, skeleton: bytes, steps: int) -> None:
        """Run a stretch of a fit: the loop body sent, from the carry broadcast."""
        loaded, local = self.problem(problem)
        if local is None:
            self.answer(loaded)  # why the problem cannot be loaded here
            raise _Quiet
        try:
            step = _Unpickler(
                io.BytesIO(sent), lambda reduction: _Gradient(self, loaded, reduction, local)
            ).load()
            carry = pickle.loads(skeleton)
        except Exception:
            self.answer(_Stays())
            raise _Quiet from None
        # Every rank loaded it, or none runs it (rank 0 says which).
        self.answer(None)
        if pickle.loads(self.link.recv_bytes()) != ("go",):
            raise _Quiet

        def fill(leaf: Any) -> Any:
            if isinstance(leaf, _Slot):
                tensor = self.torch.empty(leaf.shape, dtype=getattr(self.torch, leaf.dtype))
                self.me.collective("broadcast", tensor, 0)
                return tensor
            return leaf

        carry = tree_map(fill, carry)
        self.engine.run(step, carry, _sharded(self.rows, self.start, self.total), steps)

    def problem(self, sent: bytes) -> tuple[Any, Local | None]:
        """The problem sent as bytes and its gradient (loaded once), or why it cannot be
        loaded here and ``None``."""
        if sent not in self.problems:
            try:
                loaded = _Unpickler(io.BytesIO(sent), _no_gradient).load()
            except Exception as error:
                # Not here: a problem whose functions live where this process cannot
                # import them (under ``if __name__ == "__main__":``).
                return _refusal(self.me.rank, error), None
            self.problems = {sent: (loaded, value_and_grad_of(self.engine, loaded))}
        return self.problems[sent]

    def gradient(self, problem: bytes, reduction: str) -> _Gradient:
        """This rank's gradient function for a problem sent by a call. One this rank
        cannot load still takes part in the collectives, as a share that fails with the
        reason."""
        loaded, local = self.problem(problem)
        if local is None:
            return _Gradient(self, _UNLOADED, reduction, _refusing(loaded))
        return _Gradient(self, loaded, reduction, local)

    def answer(self, answer: Any) -> None:
        """Tell rank 0 this rank is done (or ready), or the error its own share raised."""
        self.link.send_bytes(_pickled(answer, self.me.rank))

    def call(self, gradient: _Gradient, params: Params, data: Data) -> tuple[Any, dict[str, Any]]:
        """A step on this rank: its share, the all-reduce (``_Gradient`` calls this)."""
        mine = _my_rows(data, 0, 1, whole=False)
        return self.me.gradient(gradient.local, params, mine, gradient.reduction)

    def receive(self, layout: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
        """This rank's rows, sent by rank 0 (point to point: arrays only)."""
        torch, me = self.torch, self.me
        names = [name for name in layout if name != BATCH_ORDER]
        self.total = layout[names[0]][0][0] if names else 0
        self.start, stop = shard_bounds(self.total, self.size)[me.rank]
        self.rows = {}
        for name, (shape, kind) in layout.items():
            if name != BATCH_ORDER:
                shape = (stop - self.start, *shape[1:])
            self.rows[name] = torch.empty(shape, dtype=getattr(torch, kind))
            me.collective("recv", [self.rows[name]], 0, 0)


def _no_gradient(reduction: str) -> _Gradient:
    raise pickle.UnpicklingError("a problem holds no data-parallel gradient")


def _refusal(rank: int, error: BaseException) -> ArgumentError:
    """Why rank ``rank`` cannot load the problem it was sent."""
    return ArgumentError(
        "problem",
        f"rank {rank} cannot load it ({first_line(error)}): define its functions at module "
        "level, outside `if __name__ == '__main__':`, or launch the ranks with torchrun",
    )


def _refusing(refusal: BaseException) -> Local:
    """A gradient function that raises why this rank could not load the problem."""

    def refuse(params: Params, rows: Mapping[str, Array]) -> Any:
        raise refusal

    return refuse


class _Unloaded(AbstractProblem):
    """Stands for a problem a worker could not load (its gradient refuses)."""

    name = "unloaded"

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        raise NotImplementedError


_UNLOADED = _Unloaded()


def _pickled(answer: Any, rank: int) -> bytes:
    """``answer`` pickled, or, if it cannot be pickled and read back, an error that says
    what it was (never ``RankFailed``: the rank is well)."""
    try:
        sent = pickle.dumps(answer)
        pickle.loads(sent)
        return sent
    except Exception:
        return pickle.dumps(RuntimeError(f"rank {rank}: {type(answer).__name__}: {answer}"))
