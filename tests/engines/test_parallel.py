"""Data-parallel engines give the single-process numbers, and fail fast when a rank dies.

The oracle is the single-process engine of the same framework, run in the same process on
the same data: a data-parallel gradient equals it to round-off (rho ≤ 1e-12 in float64,
for every shipped problem that declares its reduction, on 1, 2 and 3 shards with unequal
ones, shards of one row and empty ones), and a 100-step fit follows the same path
(rho ≤ 1e-10). Spawning processes costs seconds, so these tests are few, and each
checks much: the checks that need fresh processes (forced host devices, jax.distributed,
a torchrun launch) run ``tests/engines/_parallel_ranks.py``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import free_port, require_engine
from hypothesis import given
from hypothesis import strategies as st

import gradlab
from gradlab.engines.parallel._common import shard_bounds, share

RANKS = Path(__file__).with_name("_parallel_ranks.py")
GRADIENT_RHO, PATH_RHO = 1e-12, 1e-10


class Picky(gradlab.AbstractProblem):
    """A sum of squares that refuses a negative x (module-level: the ranks unpickle it)."""

    name = "picky"
    reduction = "sum"

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        if bool(xp.any(data["x"] < 0)):
            raise ValueError("negative x")
        return xp.sum((params["w"] * data["x"] - 1) ** 2)


class Unloadable(Picky):
    """Pickles here, but cannot be loaded in another process (as a function defined under
    ``if __name__ == "__main__":`` in a script)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_only_in, (os.getpid(),))


class ParentOnly:
    """A function that pickles in this process, and cannot be loaded in another."""

    def __init__(self, function: Any) -> None:
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_parent_only, (os.getpid(), self.function))


def _parent_only(pid: int, function: Any) -> ParentOnly:
    if os.getpid() != pid:
        raise ImportError("not importable in this process")
    return ParentOnly(function)


class Odd(Exception):
    """An error that pickles but cannot be unpickled (its ``__init__`` takes two)."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"{what} at {where}")


class Oddly(Picky):
    """Raises ``Odd`` on a negative x."""

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        if bool(xp.any(data["x"] < 0)):
            raise Odd("negative x", "rank 1")
        return xp.sum(params["w"] * data["x"])


def _load_only_in(pid: int) -> Any:
    if os.getpid() != pid:
        raise ImportError("not importable in this process")
    return Unloadable()


class Scaled(gradlab.AbstractProblem):
    """A sum whose scale a caller may change between calls (module-level: picklable)."""

    name = "scaled"
    reduction = "sum"
    scale = 1.0

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        return self.scale * xp.sum(params["w"] * data["x"])


def nested_loss(params: Any, data: Any, xp: Any) -> Any:
    return xp.mean((params["layers"][0]["w"] * data["x"] - data["y"]) ** 2)


# -- the arithmetic of shards ----------------------------------------------------------------


@given(rows=st.integers(1, 500), shards=st.integers(1, 40))
def test_shards_cover_the_rows_once_and_their_shares_add_up(rows: int, shards: int) -> None:
    bounds = shard_bounds(rows, shards)
    sizes = [stop - start for start, stop in bounds]
    assert len(bounds) == shards
    assert bounds[0][0] == 0
    assert bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)
    assert sum(share(size, rows, "mean") for size in sizes) == pytest.approx(1.0, rel=1e-12)
    assert {share(size, rows, "sum") for size in sizes} == {1.0}


# -- torch: ranks spawned here ---------------------------------------------------------------


def _cases(rows: int) -> list[tuple[Any, dict[str, np.ndarray], Any]]:
    import _parallel_ranks

    return list(_parallel_ranks.cases(rows))


def test_torch_on_three_ranks_gives_one_process_gradients() -> None:
    require_engine("torch")
    with gradlab.data_parallel("torch", processes=3, timeout=60) as engine:
        for rows in (10, 2):  # 4/3/3 rows; then 1/1/0
            for problem, data, point in _cases(rows):
                if problem.name == "mlp_classifier":  # its torch loss closes over a module
                    with pytest.raises(gradlab.ArgumentError, match="torchrun"):
                        gradlab.value_and_grad(problem, data, point, engine=engine)
                    continue
                loss, grads = gradlab.value_and_grad(problem, data, point, engine=engine)
                one_loss, one_grads = gradlab.value_and_grad(problem, data, point, engine="torch")
                assert gradlab.rho(loss, one_loss) <= GRADIENT_RHO, problem.name
                assert gradlab.max_rho(grads, one_grads) <= GRADIENT_RHO, problem.name
        problem, data, point = _cases(10)[1]
        report = gradlab.compare_gradients(
            problem, data, point, engines=["numpy", "torch", engine], reference="torch"
        )
        assert report.ok
        assert report.engines[-1] == "torch-dp3"
        assert report.rho[1, 2] <= GRADIENT_RHO


def test_torch_on_one_rank_is_the_torch_engine_in_float32_and_float64() -> None:
    require_engine("torch")
    problem = gradlab.MLP()
    data = problem.make_data(9, seed=1)
    init = problem.initial_params(data, seed=2)
    with gradlab.data_parallel("torch", processes=1) as engine:
        for dtype, tolerance in (("float64", PATH_RHO), ("float32", 1e-6)):
            options: dict[str, Any] = dict(
                optimizer=gradlab.adam(0.05), steps=20, batch_size=4, init=init, dtype=dtype
            )
            one = gradlab.fit(problem, data, engine=engine, **options)
            alone = gradlab.fit(problem, data, engine="torch", **options)
            assert one.params["W1"].dtype == np.dtype(dtype)
            assert gradlab.max_rho(one.params, alone.params) <= tolerance


def test_torch_fit_on_two_ranks_follows_the_one_process_path() -> None:
    require_engine("torch")
    problem = gradlab.MLP()
    data = problem.make_data(11, seed=3)
    options: dict[str, Any] = dict(
        optimizer=gradlab.adam(0.05),
        batch_size=5,
        trajectory=True,
        init=problem.initial_params(data, seed=4),
    )
    calls: list[tuple[int, float]] = []

    def callback(step: int, loss: float, params: Any) -> None:
        calls.append((step, loss))

    with gradlab.data_parallel("torch", processes=2, timeout=60) as engine:
        spread = gradlab.fit(
            problem, data, engine=engine, steps=50, callback=callback, every=25, **options
        )
        spread = gradlab.fit(
            problem,
            data,
            engine=engine,
            steps=50,
            optimizer=options["optimizer"],
            batch_size=5,
            resume=spread,
        )
        stopped = gradlab.fit(
            problem, data, engine=engine, steps=100, stop=gradlab.Stop(patience=5), **options
        )
        # A rank's own error comes back as it would in one process (the ranks carry on).
        picky = Picky()
        rows = {"x": np.array([1.0, 2.0, -3.0])}  # the negative x is rank 1's
        with pytest.raises(gradlab.ProblemError, match="negative x"):
            gradlab.value_and_grad(picky, rows, {"w": 1.0}, engine=engine)
        assert gradlab.value_and_grad(picky, {"x": np.ones(3)}, {"w": 1.0}, engine=engine)[0] == 0
        # An error that cannot be unpickled still comes back, as text (the ranks carry on).
        with pytest.raises(gradlab.ProblemError, match="Odd: negative x at rank 1"):
            gradlab.value_and_grad(Oddly(), rows, {"w": 1.0}, engine=engine)
        with pytest.raises(gradlab.ArgumentError, match="rank 1 cannot load it"):
            gradlab.value_and_grad(Unloadable(), {"x": np.ones(3)}, {"w": 1.0}, engine=engine)
        # A problem changed between two calls of one gradient function is sent again.
        scaled = Scaled()
        function = engine.value_and_grad(scaled)
        x, w = engine.asarrays([np.arange(5.0), np.array(1.0)], "float64")
        assert float(function({"w": w}, {"x": x})[0]) == 10.0
        scaled.scale = 3.0
        assert float(function({"w": w}, {"x": x})[0]) == 30.0
        # Nested parameters: the ranks get gradlab's flat view of the problem.
        nested = gradlab.Problem(nested_loss, reduction="mean")
        rows = {"x": np.linspace(0, 1, 7), "y": np.linspace(1, 2, 7)}
        point = {"layers": [{"w": 0.5}]}
        spread_nest = gradlab.value_and_grad(nested, rows, point, engine=engine)
    one_nest = gradlab.value_and_grad(nested, rows, point, engine="torch")
    assert gradlab.max_rho(spread_nest[1], one_nest[1]) <= GRADIENT_RHO
    one_calls: list[tuple[int, float]] = []
    alone = gradlab.fit(
        problem,
        data,
        engine="torch",
        steps=100,
        callback=lambda step, loss, params: one_calls.append((step, loss)),
        every=25,
        **options,
    )
    one_stopped = gradlab.fit(
        problem, data, engine="torch", steps=100, stop=gradlab.Stop(patience=5), **options
    )
    assert spread.step == alone.step == 100
    assert [step for step, _ in calls] == [step for step, _ in one_calls[: len(calls)]]
    assert calls  # the callback ran, at the same steps, with the same losses:
    assert (
        gradlab.max_rho([loss for _, loss in calls], [loss for _, loss in one_calls[: len(calls)]])
        <= PATH_RHO
    )
    assert gradlab.rho(spread.losses, alone.losses[50:]).max() <= PATH_RHO
    assert gradlab.max_rho(spread.params, alone.params) <= PATH_RHO
    assert (stopped.stop_reason, stopped.step) == (one_stopped.stop_reason, one_stopped.step)
    assert gradlab.max_rho(stopped.trajectory, one_stopped.trajectory) <= PATH_RHO


class Padded(gradlab.LinearRegression):
    """A linear regression that carries 1.6 MB it never reads: it pickles to more than a
    pipe holds, so sending it to a stopped rank would block without a deadline."""

    pad = np.zeros(200_000)


@pytest.mark.parametrize("how", ["killed", "stopped", "stopped, a large message"])
def test_a_lost_rank_fails_within_the_timeout(how: str) -> None:
    require_engine("torch")
    problem = Padded() if "large" in how else gradlab.LinearRegression()
    data = problem.make_data(10, d=2, seed=0)
    params = problem.initial_params(data)
    timeout = 2.0
    engine = gradlab.data_parallel("torch", processes=2, timeout=timeout)
    try:
        gradlab.value_and_grad(problem, data, params, engine=engine)
        (rank,) = engine._group.processes  # type: ignore[attr-defined]
        os.kill(rank.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(gradlab.RankFailed, match=r"rank|within"):
            gradlab.value_and_grad(problem, data, params, engine=engine)
        assert time.monotonic() - began < timeout + 1.5
        assert not rank.is_alive()  # the engine ended the rank it lost
        with pytest.raises(gradlab.RankFailed, match="make a new one"):
            gradlab.value_and_grad(problem, data, params, engine=engine)
    finally:
        engine.close()


# -- security and cleanup: what listens, what is read, what is left --------------------------


def _sockets(pid: int) -> list[tuple[str, str]]:
    """The TCP sockets process ``pid`` holds: (local address, state), state "LISTEN" or
    another, read from /proc (the address of IPv4 as dotted quad, IPv6 as hex)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                host = fields[1].split(":")[0]
                if table == "tcp":
                    host = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
                found.append((host, "LISTEN" if fields[3] == "0A" else fields[3]))
    return found


class Forged:
    """What an attacker would write to a store: unpickling it creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_spawned_ranks_listen_on_loopback_only_unpickle_nothing_and_close_clean(
    tmp_path: Path,
) -> None:
    require_engine("torch")
    import torch.distributed

    problem = gradlab.LinearRegression()
    data = problem.make_data(20, d=2, seed=0)
    params = problem.initial_params(data)
    marker = tmp_path / "executed"
    before = _sockets(os.getpid())
    with gradlab.data_parallel("torch", processes=2, timeout=30) as engine:
        gradlab.value_and_grad(problem, data, params, engine=engine)
        group = engine._group  # type: ignore[attr-defined]
        pids = [os.getpid(), *(process.pid for process in group.processes)]
        listening = [s for pid in pids for s in _sockets(pid) if s[1] == "LISTEN"]
        assert listening  # gloo's, one per rank ...
        assert {host for host, _ in listening} == {"127.0.0.1"}  # ... on loopback only
        assert len([s for s in _sockets(os.getpid()) if s[1] == "LISTEN"]) == 1  # no store
        # The rendezvous is a file only this user can open; a value forged into it under
        # any name (as the old command keys) is never unpickled.
        assert os.stat(group.directory).st_mode & 0o777 == 0o700
        processes, directory = list(group.processes), group.directory
        store = torch.distributed.FileStore(  # type: ignore[attr-defined]
            os.path.join(group.directory, "store"), -1
        )
        for number in range(64):
            for name in (f"command/{number}", f"error/{number}/1", f"started/{number}"):
                store.set(name, pickle.dumps(Forged(str(marker))))  # type: ignore[arg-type]
        del store
        _, grads = gradlab.value_and_grad(problem, data, params, engine=engine)
        gradlab.fit(problem, data, engine=engine, optimizer=gradlab.sgd(0.1), steps=5, init=params)
    assert not marker.exists()
    one = gradlab.value_and_grad(problem, data, params, engine="torch")
    assert gradlab.max_rho(grads, one[1]) <= GRADIENT_RHO
    # close() (the with block's end) left no process, socket or rendezvous file.
    assert _sockets(os.getpid()) == before
    for process in processes:
        process.join(5)
        assert not process.is_alive()
    assert not os.path.exists(directory)


def test_a_lost_rank_and_collection_leave_no_process_socket_or_file() -> None:
    require_engine("torch")
    problem = gradlab.LinearRegression()
    data = problem.make_data(10, d=2, seed=0)
    params = problem.initial_params(data)
    before = _sockets(os.getpid())

    def started() -> tuple[Any, list[Any], str]:
        engine = gradlab.data_parallel("torch", processes=2, timeout=5)
        gradlab.value_and_grad(problem, data, params, engine=engine)
        group = engine._group  # type: ignore[attr-defined]
        assert len(_sockets(os.getpid())) > len(before)
        return engine, list(group.processes), group.directory

    def gone(processes: list[Any], directory: str) -> None:
        for process in processes:
            process.join(5)
            assert not process.is_alive()
        assert _sockets(os.getpid()) == before
        assert not os.path.exists(directory)

    engine, processes, directory = started()
    os.kill(processes[0].pid, signal.SIGKILL)
    with pytest.raises(gradlab.RankFailed) as failure:
        gradlab.value_and_grad(problem, data, params, engine=engine)
    gone(processes, directory)  # while the error (and the engine) are still held
    del failure
    engine, processes, directory = started()
    del engine
    gc.collect()
    gone(processes, directory)


class Interrupting(gradlab.AbstractProblem):
    """A sum of squares whose loss is interrupted (Ctrl-C) in rank 0, mid-call."""

    name = "interrupting"
    reduction = "sum"

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        interrupted = multiprocessing.parent_process() is None and "torch" in xp.__name__
        if interrupted and bool(xp.any(data["x"] > 100)):
            raise KeyboardInterrupt
        return xp.sum((params["w"] * data["x"] - 1) ** 2)


def test_an_interrupted_call_breaks_the_engine() -> None:
    require_engine("torch")
    with gradlab.data_parallel("torch", processes=2, timeout=30) as engine:
        problem = Interrupting()
        rows = {"x": np.array([1.0, 2.0, 3.0])}
        assert gradlab.value_and_grad(problem, rows, {"w": 1.0}, engine=engine)[0] == 5.0
        processes = list(engine._group.processes)  # type: ignore[attr-defined]
        with pytest.raises(KeyboardInterrupt):
            gradlab.fit(
                problem,
                {"x": np.array([101.0, 2.0, 3.0, 4.0])},
                engine=engine,
                optimizer=gradlab.sgd(1e-6),
                steps=10,
                init={"w": 1.0},
            )
        with pytest.raises(gradlab.RankFailed, match="interrupted"):
            gradlab.value_and_grad(problem, rows, {"w": 1.0}, engine=engine)
        assert not any(process.is_alive() for process in processes)


def test_a_fit_runs_on_every_rank_with_no_command_per_step() -> None:
    """The loop body travels once per stretch (SPMD): the pipes carry a few messages per
    stretch, not one per step; an optimizer that cannot travel (the user's closures) runs
    call by call, with the same numbers."""
    require_engine("torch")
    problem = gradlab.LogisticRegression()
    data = problem.make_data(30, seed=1)
    init = problem.initial_params(data, seed=2)
    told: list[str] = []
    adam = gradlab.adam(0.05)

    def closures() -> gradlab.GradientTransformation:
        return gradlab.GradientTransformation(adam.init, lambda g, s, p: adam.update(g, s, p))

    # Pickles here, but the workers cannot load it (as functions of a script's main block).
    parent_only = gradlab.GradientTransformation(adam.init, ParentOnly(adam.update))

    options: dict[str, Any] = dict(
        steps=100, batch_size=8, init=init, every=50, callback=lambda *_: None
    )
    with gradlab.data_parallel("torch", processes=2, timeout=30) as engine:
        group = engine._group  # type: ignore[attr-defined]
        tell = group._tell

        def counted(message: tuple[Any, ...]) -> None:
            told.append(message[0])
            tell(message)

        group._tell = counted
        spmd = gradlab.fit(problem, data, engine=engine, optimizer=adam, **options)
        assert told.count("run") == 2  # two stretches of 50 steps
        assert len(told) <= 8
        assert "call" not in told[1:]
        told.clear()
        calls = gradlab.fit(problem, data, engine=engine, optimizer=closures(), **options)
        assert told.count("call") >= 100
        told.clear()
        stays = gradlab.fit(problem, data, engine=engine, optimizer=parent_only, **options)
        assert told.count("stay") == 2  # each stretch: tried, then call by call
        assert told.count("call") >= 100
    alone = gradlab.fit(problem, data, engine="torch", optimizer=adam, **options)
    for result in (spmd, calls, stays):
        assert gradlab.rho(result.losses, alone.losses).max() <= PATH_RHO
        assert gradlab.max_rho(result.params, alone.params) <= PATH_RHO


def test_data_changed_in_place_is_never_answered_from_the_ranks_old_copy() -> None:
    require_engine("torch")
    import torch

    x = np.arange(6.0)
    with gradlab.data_parallel("torch", processes=2, timeout=30) as engine:
        function = engine.value_and_grad(Scaled())
        view = torch.from_numpy(x)  # shares memory with x: torch's version counter misses
        w = torch.tensor(1.0, dtype=torch.float64)
        assert float(function({"w": w}, {"x": view})[0]) == 15.0
        x[4:] = 100.0  # rank 1's rows, changed through NumPy
        assert float(function({"w": w}, {"x": view})[0]) == 206.0


def test_the_command_line_compares_a_data_parallel_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_engine("jax")
    from gradlab.cli import main

    assert main(["compare", "--problem", "quadratic", "--engines", "numpy,jax-dp1"]) == 0
    out = capsys.readouterr().out
    assert "jax-dp1" in out
    assert "All 2 engines' gradients agree" in out


def test_data_parallel_refuses_what_it_cannot_spread() -> None:
    require_engine("torch")
    require_engine("jax")
    with pytest.raises(gradlab.ArgumentError) as error:
        gradlab.data_parallel("numpy")
    assert error.value.argument == "engine"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"engine": "torch", "devices": 2}, "devices"),
        ({"engine": "jax", "processes": 2}, "processes"),
        ({"engine": "torch", "processes": 0}, "processes"),
        ({"engine": "jax", "devices": 10**6}, "devices"),
        ({"engine": "torch", "processes": 2, "timeout": 0}, "timeout"),
        ({"engine": "torch", "processes": 2, "threads": 0}, "threads"),
        ({"engine": "torch"}, "processes"),  # not under torchrun
        ({"engine": "torch", "processes": 2, "timeout": 1e15}, "timeout"),
        ({"engine": "torch", "processes": 2, "threads": 10**9}, "threads"),
        ({"engine": "torch", "processes": 10**6}, "processes"),
        ({"engine": gradlab.get_engine("torch"), "processes": 2}, "engine"),
        ({"engine": "torch", "processes": 2, "local_data": True}, "local_data"),
        ({"engine": "jax", "local_data": True}, "local_data"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(gradlab.ArgumentError) as error:
            gradlab.data_parallel(**kwargs)
        assert error.value.argument == argument, kwargs
    engine = gradlab.data_parallel("torch", processes=2)
    gmm = gradlab.GMM()
    gmm_data = gmm.make_data(6)
    with pytest.raises(gradlab.NotSupported, match="reduction") as refused:
        gradlab.value_and_grad(gmm, gmm_data, gmm.initial_params(gmm_data), engine=engine)
    assert refused.value.argument == "problem"
    closure = gradlab.Problem(lambda p, d, xp: xp.sum(p["w"] * d["x"]), reduction="sum")
    with pytest.raises(gradlab.ArgumentError, match="torchrun") as unsendable:
        gradlab.value_and_grad(closure, {"x": np.ones(3)}, {"w": 1.0}, engine=engine)
    assert unsendable.value.argument == "problem"
    assert engine._group.processes == []  # type: ignore[attr-defined]
    with pytest.raises(gradlab.ArgumentError, match="reduction"):
        gradlab.Problem(lambda p, d, xp: 0.0, reduction="median")
    assert gradlab.get_engine("jax-dp1").name == "jax-dp1"
    with pytest.raises(gradlab.UnknownEngine):
        gradlab.get_engine("numpy-dp2")


# -- fresh processes: forced host devices, jax.distributed, a torchrun launch ----------------


def _run(*commands: list[str], env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Run the commands at once; the JSON line the first prints."""
    envs = env or [{}] * len(commands)
    processes = [
        subprocess.Popen(
            [sys.executable, str(RANKS), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **extra},
        )
        for command, extra in zip(commands, envs, strict=True)
    ]
    outputs = [process.communicate(timeout=180) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    lines = [line for line in outputs[0][0].splitlines() if line.startswith("{")]
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def test_torch_under_a_torchrun_launch_gives_one_process_numbers() -> None:
    require_engine("torch")
    launch = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    numbers = _run(
        ["torchrun"],
        ["torchrun"],
        env=[{**launch, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in (0, 1)],
    )
    assert numbers["ranks"] == 2
    assert numbers["local"] <= GRADIENT_RHO  # each rank passed only its own rows
    assert numbers["local_fit"] <= PATH_RHO  # ... and mini-batches are one process's
    # Ranks given other parameters, data, rows or optimizer refuse, naming it and the rank.
    assert numbers["refused"] == ["params: True", "data: True", "data: True", "optimizer: True"]
    assert numbers["gradients"] <= GRADIENT_RHO
    assert numbers["fit"] <= PATH_RHO
