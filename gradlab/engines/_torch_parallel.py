"""torch's data-parallel engine: one process per rank, one reduction per gradient.

Every rank computes the loss and gradient of its rows with the ``torch`` engine, weights
them by its share (``_parallel.share``), and one collective over a single flat buffer
``[loss, gradient..., failed]`` sums the shares.

Two launches share that reduction (``_Rank``):

- ``_Launched``: the processes are the user's (``torchrun``); each runs the same script,
  so each call takes the rank's rows of the data it was given, and an all-reduce gives
  every rank the same numbers, bit for bit, so ranks that apply the same update stay in
  step.
- ``_Spawned``: this process is rank 0 and starts the others (``multiprocessing``'s
  ``spawn``); they follow commands. Why commands travel through the ``TCPStore`` and not
  through a collective: a follower waiting for the next call may wait as long as the user
  likes, while collectives time out after ``timeout`` (which is what turns a dead rank
  into an error instead of a hang). Each gradient call is then one command, one broadcast
  of the parameters and one reduce to rank 0, where the loop runs; a data set is sent to
  the ranks once (its rows only), a mini-batch at each step.

The process group is made from ``ProcessGroupGloo`` directly, not
``init_process_group``: that would set this process's global default group, which
gradlab leaves as it found it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import itertools
import multiprocessing
import os
import pickle
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError, EngineUnavailable, RankFailed
from gradlab.engines._cache import key
from gradlab.engines._parallel import (
    DataParallel,
    reduction_of,
    rows_of,
    shard_bounds,
    share,
)
from gradlab.engines._protocol import Array, Params, ValueAndGrad, value_and_grad_of
from gradlab.engines._torch import TorchEngine
from gradlab.problems._base import AbstractProblem

Local = Callable[[Params, Mapping[str, Array]], "tuple[Array, dict[str, Array]]"]


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
        super().__init__(TorchEngine(device=group.device), group.size, group.launch)
        self._group = group

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """Each rank's share of the loss and gradient, summed by one all-reduce."""
        reduction = reduction_of(problem)
        local = value_and_grad_of(self.base, problem)
        return self._group.function(problem, reduction, local)

    def describe(self) -> dict[str, Any]:
        """The torch engine's facts, the ranks and the backend."""
        facts = super().describe()
        facts["data_parallel"].update(backend=self._group.backend, threads=self._group.threads)
        return facts

    def close(self) -> None:
        """Stop the spawned processes (a torchrun launch's are the launch's to stop)."""
        self._group.close()


class _Rank:
    """What every rank does in a gradient call: its share, then the all-reduce.

    Args:
        torch: The torch module.
        group: The process group (``None`` for one rank).
        rank: This process's rank.
        timeout: Seconds a collective may wait (for messages).
        threads: torch's intra-op threads while this rank computes.
    """

    def __init__(
        self, torch: Any, group: Any, rank: int, timeout: float, threads: int | None
    ) -> None:
        self.torch, self.group, self.rank = torch, group, rank
        self.timeout, self.threads = timeout, threads

    def share(
        self, local: Local, params: Params, rows: Mapping[str, Array], weight: float
    ) -> tuple[Any, BaseException | None]:
        """This rank's weighted loss and gradient as one flat tensor
        ``[loss, gradient..., failed]``, and its error if computing them failed: it then
        adds zeros and a failure, and still takes part in the all-reduce, so that no other
        rank waits for it."""
        torch = self.torch
        error: BaseException | None = None
        pieces: list[Any] = []
        if _rows(rows):
            try:
                with self._threads():
                    loss, grads = local(params, rows)
                pieces = [loss.detach().reshape(1) * weight]
                pieces += [grads[name].detach().reshape(-1) * weight for name in params]
            except Exception as failure:
                error, pieces = failure, []
        first = next(iter(params.values()))
        if not pieces:  # no rows here, or they failed: this rank adds nothing
            size = 1 + sum(value.numel() for value in params.values())
            pieces = [torch.zeros(size, dtype=first.dtype, device=first.device)]
        failed = torch.full((1,), float(error is not None), dtype=first.dtype, device=first.device)
        return torch.cat([*pieces, failed]), error

    def all_reduce(self, flat: Any) -> Any:
        """Sum ``flat`` over the ranks, in place; every rank gets the same numbers."""
        if self.group is not None:
            self.collective(self.group.allreduce, flat)
        return flat

    def reduce(self, flat: Any) -> Any:
        """Sum ``flat`` over the ranks into rank 0's, in place (spawned ranks need no
        result: measured on 2 CPU ranks, gloo's reduce takes a third of its all-reduce)."""
        if self.group is not None:
            self.collective(self.group.reduce, flat, 0)
        return flat

    def collective(self, operation: Callable[..., Any], tensor: Any, *args: Any) -> None:
        """Run one collective and wait for it; a failure (a dead rank, a timeout) as
        ``RankFailed``."""
        try:
            operation(tensor, *args).wait()
        except RuntimeError as error:
            raise RankFailed(
                f"rank {self.rank}: a data-parallel collective failed (a rank died or did "
                f"not answer within {self.timeout:g} s): {_first_line(error)}"
            ) from None

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
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


def _rows(rows: Mapping[str, Array]) -> int:
    """The number of rows of a shard (of checked data: every array has them)."""
    return int(next(iter(rows.values())).shape[0])


def _result(flat: Any, params: Params) -> tuple[Any, dict[str, Any]]:
    """The reduced ``[loss, gradient..., failures]`` as ``(loss, grads)`` like ``params``."""
    loss, at, grads = flat[0], 1, {}
    for name, value in params.items():
        grads[name] = flat[at : at + value.numel()].reshape(value.shape)
        at += value.numel()
    return loss, grads


def _failures(flat: Any) -> int:
    return int(flat[-1].item())


class _Launched:
    """The ranks of a ``torchrun`` launch: every rank runs this same code on the same data."""

    launch = "torchrun"

    def __init__(self, torch: Any, timeout: float, threads: int, local_data: bool) -> None:
        dist = torch.distributed
        self.local_data = local_data
        local = os.environ.get("LOCAL_RANK")
        self.device = f"cuda:{local}" if local is not None and torch.cuda.is_available() else "cpu"
        self.backend = "nccl" if self.device != "cpu" else "gloo"
        if not dist.is_initialized():
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise ArgumentError(
                    "processes",
                    "is needed here: give processes=N to start N local processes, or launch "
                    "with torchrun (no torch.distributed process group, and no RANK or "
                    "WORLD_SIZE in the environment)",
                )
            # The launch asked for a process group; this makes the default one from its
            # environment, as the script itself would.
            dist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=timeout))
        else:
            self.backend = str(dist.get_backend())
        self.size, self.threads = dist.get_world_size(), threads
        self._rank = _Rank(torch, dist.group.WORLD, dist.get_rank(), timeout, threads)

    def function(self, problem: AbstractProblem, reduction: str, local: Local) -> ValueAndGrad:
        rank = self._rank

        def value_and_grad(params: Params, data: Mapping[str, Array]) -> Any:
            total = rows_of(data)
            if self.local_data:
                # This rank's rows are all it has: weight its mean by its rows, add up the
                # ranks' rows beside it, and divide by them after the all-reduce.
                mean = reduction == "mean"
                flat, error = rank.share(local, params, data, total if mean else 1.0)
                flat = rank.torch.cat([flat, flat.new_full((1,), total)])
                rank.all_reduce(flat)
                flat, everyone = flat[:-1], flat[-1]
                if mean:
                    flat[:-1] /= everyone
            else:
                start, stop = shard_bounds(total, self.size)[rank.rank]
                rows = {name: value[start:stop] for name, value in data.items()}
                weight = share(stop - start, total, reduction)
                flat, error = rank.share(local, params, rows, weight)
                rank.all_reduce(flat)
            if error is not None:
                raise error
            if _failures(flat):
                raise RankFailed(
                    f"{_failures(flat)} other rank(s) failed computing their share of the "
                    f"gradient of {problem.name!r}; their own output shows why"
                )
            return _result(flat, params)

        return value_and_grad

    def close(self) -> None:
        """The launch owns its processes."""


class _Job:
    """A problem and a data set as the spawned ranks hold them (sent once)."""

    def __init__(self, ident: Any, problem: AbstractProblem, data: Mapping[str, Any]) -> None:
        self.ident, self.problem, self.data = ident, problem, data  # held: ids stay unique
        self.number = next(_JOB_NUMBERS)


_JOB_NUMBERS = itertools.count()
#: Seconds, beyond ``timeout``, that spawned ranks may take to start (a new Python
#: process importing torch takes seconds, more on a loaded machine).
_START = 120.0
#: The largest pickled problem a command carries: torch's TCPStore takes values of at most
#: 8 MiB; a little is left for the rest of the command.
_LARGEST_PROBLEM = 8 * 2**20 - 2**16


class _Spawned:
    """This process as rank 0 of ``size`` local processes it starts, and commands them."""

    launch = "spawned"
    backend = "gloo"
    device = "cpu"

    def __init__(self, torch: Any, size: int, timeout: float, threads: int) -> None:
        self.torch, self.size, self.timeout, self.threads = torch, size, timeout, threads
        self._rank: _Rank | None = None
        self._store: Any = None
        self.processes: list[Any] = []
        self._job: _Job | None = None
        self._next = [0]  # the next command's number (a box, for the finalizer)
        self._broken: RankFailed | None = None
        self._finalizer: Any = None

    def _start(self) -> _Rank:
        """Start the other ranks and make the group, once (on the first call)."""
        if self._rank is not None:
            return self._rank
        torch = self.torch
        if self.size == 1:
            self._rank = _Rank(torch, None, 0, self.timeout, self.threads)
            return self._rank
        dist = torch.distributed
        wait = datetime.timedelta(seconds=self.timeout)
        # Port 0: the operating system picks a free one.
        self._store = dist.TCPStore("127.0.0.1", 0, self.size, True, wait, wait_for_workers=False)
        spawn = multiprocessing.get_context("spawn")
        args = (self._store.port, self.size, self.timeout, self.threads)
        self.processes = [
            spawn.Process(
                target=follow, args=(rank, *args), daemon=True, name=f"gradlab-rank{rank}"
            )
            for rank in range(1, self.size)
        ]
        for process in self.processes:
            process.start()
        self._finalizer = weakref.finalize(self, _stop, self.processes, self._store, self._next)
        self._wait_until_started()
        try:
            group = dist.ProcessGroupGloo(self._store, 0, self.size, wait)
        except RuntimeError as error:
            raise self._fail("the ranks did not connect", error) from None
        self._rank = _Rank(torch, group, 0, self.timeout, self.threads)
        return self._rank

    def _wait_until_started(self) -> None:
        """Wait for every rank to say it is up (Python started, torch imported: seconds,
        which ``timeout``, for answers, is not meant to cover), or for one to die."""
        deadline = time.monotonic() + _START + self.timeout
        pending = {rank: f"started/{rank}" for rank in range(1, self.size)}
        while pending:
            for rank, name in list(pending.items()):
                if self._store.check([name]):
                    del pending[rank]
                elif not self.processes[rank - 1].is_alive():
                    raise self._fail(f"rank {rank} died while starting")
            if pending and time.monotonic() > deadline:
                raise self._fail(f"ranks {sorted(pending)} did not start")
            time.sleep(0.02)

    def function(self, problem: AbstractProblem, reduction: str, local: Local) -> ValueAndGrad:
        if self.size > 1:
            _sendable(problem)  # refused now, before any rank starts, if it cannot be sent

        def value_and_grad(params: Params, data: Mapping[str, Array]) -> Any:
            if self._broken is not None:
                raise RankFailed(
                    f"this engine lost a rank earlier ({self._broken}); make a new one"
                )
            rank = self._start()
            total = rows_of(data)
            bounds = shard_bounds(total, self.size)
            try:
                self._command(rank, problem, reduction, params, data, bounds)
                flat, error = self._evaluate(rank, local, params, data, bounds, reduction)
            except RankFailed as failure:
                raise self._fail("", failure) from None
            if error is not None:
                raise error
            if _failures(flat):
                raise self._their_error(problem)
            self._finish()
            return _result(flat, params)

        return value_and_grad

    def _evaluate(
        self,
        rank: _Rank,
        local: Local,
        params: Params,
        data: Mapping[str, Array],
        bounds: list[tuple[int, int]],
        reduction: str,
    ) -> tuple[Any, BaseException | None]:
        """Send the parameters, take this rank's share, all-reduce."""
        if rank.group is not None:
            flat = self.torch.cat([value.detach().reshape(-1) for value in params.values()])
            rank.collective(rank.group.broadcast, flat, 0)
        start, stop = bounds[0]
        rows = {name: value[start:stop] for name, value in data.items()}
        flat, error = rank.share(local, params, rows, share(stop - start, bounds[-1][1], reduction))
        return rank.reduce(flat), error

    def _command(
        self,
        rank: _Rank,
        problem: AbstractProblem,
        reduction: str,
        params: Params,
        data: Mapping[str, Array],
        bounds: list[tuple[int, int]],
    ) -> None:
        """Tell the ranks to evaluate; with the problem and their rows if they lack them
        (the rows go by point-to-point sends: the store takes values of at most 8 MiB)."""
        if self._store is None:
            return
        layout = tuple(
            (name, tuple(value.shape), str(value.dtype)) for name, value in params.items()
        )
        # The ranks hold a copy of the problem: keyed on its contents (as compiled code is),
        # so a problem changed between calls is sent again, never answered from the old copy.
        ident = (
            key(problem),
            reduction,
            layout,
            tuple(
                (name, id(value), value._version, tuple(value.shape))
                for name, value in data.items()
            ),
        )
        job, setup = self._job, None
        if job is None or job.ident != ident:
            job = _Job(ident, problem, data)
            dtype = str(next(iter(params.values())).dtype).removeprefix("torch.")
            shapes = [
                {
                    name: (
                        (stop - start, *value.shape[1:]),
                        str(value.dtype).removeprefix("torch."),
                    )
                    for name, value in data.items()
                }
                for start, stop in bounds[1:]
            ]
            setup = (_sendable(problem), reduction, bounds[-1][1], layout, dtype, shapes)
            self._job = job
        self._send(("evaluate", job.number, setup))
        if setup is not None:
            for other, (start, stop) in enumerate(bounds[1:], start=1):
                for value in data.values():
                    rows = value[start:stop].detach().contiguous()
                    rank.collective(rank.group.send, [rows], other, 0)

    def _send(self, command: tuple[Any, ...]) -> None:
        number = self._next[0]
        self._store.set(f"command/{number}", pickle.dumps(command))
        self._next[0] = number + 1

    def _finish(self) -> None:
        """Delete the last command: every rank has read it (they took part in the reduce)."""
        if self._store is not None:
            self._store.delete_key(f"command/{self._next[0] - 1}")

    def _their_error(self, problem: AbstractProblem) -> BaseException:
        """The error a follower sent for the last command (the first rank's)."""
        number = self._next[0] - 1
        for rank in range(1, self.size):
            name = f"error/{number}/{rank}"
            if self._store.check([name]):
                error = pickle.loads(self._store.get(name))
                self._store.delete_key(name)
                self._finish()
                if isinstance(error, BaseException):
                    return error
        return RankFailed(f"a rank failed computing its share of {problem.name!r}")

    def _fail(self, what: str, error: BaseException | None = None) -> RankFailed:
        """Give up on the group: stop every rank, and say which died."""
        dead = [
            f"rank {rank} (pid {process.pid}) exited with code {process.exitcode}"
            for rank, process in enumerate(self.processes, start=1)
            if not process.is_alive()
        ]
        cause = _first_line(error) if error is not None else ""
        message = "; ".join(part for part in (what, cause, *dead) if part)
        self._broken = RankFailed(message)
        for process in self.processes:  # a failed group cannot be used: no grace period
            process.kill()
        self.close()
        return self._broken

    def close(self) -> None:
        """Stop the ranks (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = self._rank = self._store = self._job = None
        self._next, self.processes = [0], []


def _sendable(problem: AbstractProblem) -> bytes:
    """``problem`` pickled for the spawned ranks, or an error naming it."""
    try:
        sent = pickle.dumps(problem)
    except Exception as error:
        raise ArgumentError(
            "problem",
            f"cannot be sent to the spawned processes ({_first_line(error)}): build it from "
            "module-level functions, or launch the ranks with torchrun",
        ) from None
    if len(sent) > _LARGEST_PROBLEM:
        raise ArgumentError(
            "problem",
            f"pickles to {len(sent) / 2**20:.1f} MiB, more than the spawned ranks take "
            f"({_LARGEST_PROBLEM / 2**20:.0f} MiB): pass large arrays as data",
        )
    return sent


def _stop(processes: list[Any], store: Any, next_command: list[int]) -> None:
    """Tell the ranks to stop, wait a moment, and end any that did not."""
    with contextlib.suppress(Exception):
        store.set(f"command/{next_command[0]}", pickle.dumps(("stop",)))
    deadline = time.monotonic() + 5.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


class _Held:
    """What a spawned rank holds of a job: the gradient function, its rows (received from
    rank 0), their share."""

    def __init__(self, engine: TorchEngine, setup: tuple[Any, ...], me: _Rank) -> None:
        problem_bytes, reduction, total, self.layout, dtype, shapes = setup
        torch = engine._torch
        self.dtype = getattr(torch, dtype)
        self.rows = {}
        for name, (shape, kind) in shapes[me.rank - 1].items():
            self.rows[name] = torch.empty(shape, dtype=getattr(torch, kind))
            me.collective(me.group.recv, [self.rows[name]], 0, 0)
        self.weight = share(_rows(self.rows), total, reduction)
        self.local: Local = _refusing(me.rank)  # until the problem is loaded
        try:
            self.local = value_and_grad_of(engine, pickle.loads(problem_bytes))
        except Exception as error:
            # Not here: a problem whose functions live where this process cannot import
            # them. Each call then answers with the reason, as a share that failed.
            self.local = _refusing(me.rank, error)

    def params(self, flat: Any) -> dict[str, Any]:
        """The broadcast parameters, by name."""
        params, at = {}, 0
        for name, shape, _ in self.layout:
            size = int(np.prod(shape))
            params[name] = flat[at : at + size].reshape(shape)
            at += size
        return params


def _refusing(rank: int, error: BaseException | None = None) -> Local:
    """A gradient function that raises why rank ``rank`` could not load the problem."""
    refusal = ArgumentError(
        "problem",
        f"rank {rank} cannot load it ({_first_line(error) if error else 'not sent'}): define "
        "its functions at module level, outside `if __name__ == '__main__':`, or launch the "
        "ranks with torchrun",
    )

    def refuse(params: Params, rows: Mapping[str, Array]) -> Any:
        raise refusal

    return refuse


def follow(rank: int, port: int, size: int, timeout: float, threads: int) -> None:
    """A spawned rank: join the group, then take its share of every call it is sent,
    until told to stop, or rank 0 is gone, or a collective fails."""
    torch = importlib.import_module("torch")
    torch.set_num_threads(threads)
    dist = torch.distributed
    wait = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore("127.0.0.1", port, size, False, wait)
    store.set(f"started/{rank}", b"")
    me = _Rank(torch, dist.ProcessGroupGloo(store, rank, size, wait), rank, timeout, None)
    engine = TorchEngine()
    held: dict[int, _Held] = {}
    for number in itertools.count():
        command = _receive(store, f"command/{number}", timeout)
        if command is None or command[0] == "stop":
            return
        _, job, setup = command
        try:
            if setup is not None:
                held = {job: _Held(engine, setup, me)}
            mine = held[job]
            flat = torch.empty(sum(int(np.prod(s)) for _, s, _ in mine.layout), dtype=mine.dtype)
            me.collective(me.group.broadcast, flat, 0)
            share_, error = me.share(mine.local, mine.params(flat), mine.rows, mine.weight)
            if error is not None:
                store.set(f"error/{number}/{rank}", _pickled(error, rank))
            me.reduce(share_)
        except RankFailed:
            return  # rank 0 gave up, or another rank died: nothing left to follow


def _pickled(error: BaseException, rank: int) -> bytes:
    """``error`` pickled, or, if it cannot be, a ``RankFailed`` that describes it."""
    try:
        return pickle.dumps(error)
    except Exception:
        return pickle.dumps(RankFailed(f"rank {rank}: {type(error).__name__}: {error}"))


def _receive(store: Any, name: str, timeout: float) -> Any:
    """The command stored under ``name``, waiting as long as rank 0 lives; ``None`` once
    it is gone (a wait that fails long before its timeout: the store went with it)."""
    parent = multiprocessing.parent_process()
    wait = datetime.timedelta(seconds=timeout)
    while True:
        began = time.monotonic()
        try:
            store.wait([name], wait)
            return pickle.loads(store.get(name))
        except RuntimeError:
            gone = parent is not None and not parent.is_alive()
            if gone or time.monotonic() - began < timeout / 2:
                return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
