"""Data-parallel scaling: time per step against the number of ranks or devices.

One process, side by side in ``gradlab.benchmark`` (first call apart, each call
synchronised, minima): the single-process engine with its default threads, and the
data-parallel engine on 1, 2, ... ranks (torch: spawned processes, one thread each) or
devices (jax: forced host devices, which share the machine's cores), at several data sizes.
Also the cost of one data-parallel call whose computation is negligible (2 rows) against
the number of parameters: what a step pays for its command, the parameters' broadcast
and the all-reduce.

    python benchmarks/scaling.py --framework torch [--counts 1,2] [--sizes 1000,100000,1000000]
    python benchmarks/scaling.py --framework jax --counts 1,2,4
    python benchmarks/scaling.py --framework torch --overhead 10,1000,100000,1000000
    python benchmarks/scaling.py --targets

``--json PATH`` saves the benchmark's full record. ``--targets`` measures the three targets
of spawned torch ranks (issue 28), each as a ratio side by side in one process, start-up
apart (every figure is the best of three fits run after a first one): a 64-row mini-batch
Adam step on 2 ranks against one process; the communication of a full-batch step on 2
ranks (its time less the 1-rank engine's, which runs the same code without peers) against
a bare gloo all-reduce of the same bytes between two processes; and a full-batch fit at
n = 10⁷ on 2 ranks against 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--counts", default="1,2")
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--problems", default="linear_regression,mlp")
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--overhead", default="", help="parameter counts for the overhead run")
    parser.add_argument("--json", default="")
    parser.add_argument("--targets", action="store_true", help="issue 28's three targets")
    args = parser.parse_args()
    if args.targets:
        targets()
        return
    counts = [int(count) for count in args.counts.split(",")]
    if args.framework == "jax":
        # Before jax is imported: the forced host devices share this machine's cores.
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(counts)}"
    import gradlab

    option = "processes" if args.framework == "torch" else "devices"
    base = gradlab.get_engine(args.framework)
    spread = [gradlab.data_parallel(args.framework, **{option: count}) for count in counts]
    print(f"{sys.platform}, {os.cpu_count()} cores; {args.framework}: {base.describe()}")
    if args.overhead:
        overhead(base, spread, [int(p) for p in args.overhead.split(",")])
        return
    result = gradlab.benchmark(
        args.problems.split(","),
        [int(size) for size in args.sizes.split(",")],
        engines=[base, *spread],
        min_time=args.min_time,
        fit_steps=50,
    )
    if args.json:
        result.save(args.json)
    rows: dict[tuple[str, int], dict[str, gradlab.BenchmarkCase]] = {}
    for case in result.cases:
        rows.setdefault((case.problem, case.n), {})[case.engine] = case
    names = [base.name, *(engine.name for engine in spread)]
    print("value-and-gradient, min ms (ratio to the single-process engine)")
    print(f"{'problem':<18} {'n':>8} " + " ".join(f"{name:>18}" for name in names))
    for (problem, n), cases in rows.items():
        reference = cases[base.name].gradient
        cells = []
        for name in names:
            timing = cases[name].gradient
            if timing is None or reference is None:
                cells.append(f"{'-':>18}")
                continue
            cells.append(f"{timing.min * 1e3:>10.3f} ({timing.min / reference.min:>4.2f}x)")
        print(f"{problem:<18} {n:>8} " + " ".join(cells))
    print("fit, ms per step; first call (compilation, start-up) apart")
    for (problem, n), cases in rows.items():
        cells = []
        for name in names:
            case = cases[name]
            step = case.fit_per_step.min * 1e3 if case.fit_per_step else float("nan")
            cells.append(f"{step:>10.3f} {(case.first_gradient or 0) * 1e3:>6.0f}ms")
        print(f"{problem:<18} {n:>8} " + " ".join(cells))
    for engine in spread:
        engine.close()


def overhead(base: Any, spread: list[Any], sizes: list[int]) -> None:
    """Per-call time of a 2-row linear model with p parameters: communication alone."""
    import gradlab

    problem = gradlab.LinearRegression()
    print(f"{'params':>9} " + " ".join(f"{engine.name:>12}" for engine in [base, *spread]))
    for p in sizes:
        data = {"x": np.ones((2, p - 1)), "y": np.ones(2)}
        params = {"w": np.zeros(p - 1), "b": np.array(0.0)}
        cells = []
        for engine in [base, *spread]:
            function = engine.value_and_grad(problem)
            arrays = engine.asarrays([data["x"], data["y"], params["w"], params["b"]], "float64")
            batch, point = {"x": arrays[0], "y": arrays[1]}, {"w": arrays[2], "b": arrays[3]}
            engine.block(function(point, batch))
            best = np.inf
            for _ in range(5):
                began, calls = time.perf_counter(), 0
                while time.perf_counter() - began < 0.1:
                    engine.block(function(point, batch))
                    calls += 1
                best = min(best, (time.perf_counter() - began) / calls)
            cells.append(f"{best * 1e6:>10.0f}µs")
        print(f"{p:>9} " + " ".join(cells))


def _per_step(engine: Any, problem: Any, data: Any, steps: int, **options: Any) -> float:
    """Seconds per step of an Adam fit: the best of three, after one that pays start-up."""
    import gradlab

    init = problem.initial_params(problem.check_data(data), seed=1)
    best = np.inf
    for run in range(4):
        result = gradlab.fit(
            problem,
            data,
            engine=engine,
            optimizer=gradlab.adam(1e-3),
            steps=steps,
            init=init,
            **options,
        )
        if run:
            best = min(best, result.time_per_step)
    return float(best)


def _bare(directory: str, rank: int, size: int, reps: int, answer: Any = None) -> float:
    """Seconds per gloo all-reduce of ``size`` float64s between two processes (rank 1
    spawned), on the loopback interface as the engine's group."""
    import torch

    from gradlab.engines.parallel._torch import _gloo

    torch.set_num_threads(1)
    group = _gloo(torch, directory, rank, 2, 60.0)
    flat = torch.ones(size, dtype=torch.float64)
    for _ in range(20):
        group.allreduce([flat]).wait()
    best = np.inf
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(reps):
            group.allreduce([flat]).wait()
        best = min(best, (time.perf_counter() - began) / reps)
    return float(best)


def bare_all_reduce(size: int, reps: int) -> float:
    import multiprocessing
    import tempfile

    directory = tempfile.mkdtemp()
    other = multiprocessing.get_context("spawn").Process(
        target=_bare, args=(directory, 1, size, reps)
    )
    other.start()
    try:
        return _bare(directory, 0, size, reps)
    finally:
        other.join()


def targets() -> None:
    """Issue 28's three targets for spawned torch ranks, printed as a table."""
    import gradlab
    from gradlab.engines.parallel import _torch as _torch_parallel

    print(f"{sys.platform}, {os.cpu_count()} cores; torch {gradlab.get_engine('torch').describe()}")
    one, two = (gradlab.data_parallel("torch", processes=count) for count in (1, 2))
    mlp, logistic, linear = gradlab.MLP(), gradlab.LogisticRegression(), gradlab.LinearRegression()
    print("1. mini-batch step, n = 10^5, Adam, ms: one process | 2 ranks | ratio")
    for problem in (mlp, logistic):
        data = problem.make_data(100_000, seed=0)
        for batch in (64, 1024, 8192):
            alone = _per_step("torch", problem, data, 300, batch_size=batch)
            spread = _per_step(two, problem, data, 300, batch_size=batch)
            print(
                f"   {problem.name:<20} batch {batch:>5} {alone * 1e3:8.3f} {spread * 1e3:8.3f} "
                f"{spread / alone:6.2f}x"
            )
    # Rank 0's time inside the collective, step by step: the communication itself (it
    # includes waiting for the other rank to arrive).
    inside = [0.0, 0.0]  # seconds in all-reduces, and their number
    collective = _torch_parallel._Rank.collective

    def timed(self: Any, operation: str, *args: Any) -> None:
        began = time.perf_counter()
        collective(self, operation, *args)
        if operation == "allreduce":
            inside[0] += time.perf_counter() - began
            inside[1] += 1

    _torch_parallel._Rank.collective = timed  # type: ignore[method-assign]
    print(
        "2. full-batch step on 2 rows, ms: bare all-reduce of the same bytes | rank 0 inside "
        "the all-reduce (ratio) | 2 ranks less 1 rank (ratio)"
    )
    for features in (64, 10_000, 1_000_000):
        data = linear.make_data(2, d=features, seed=0)
        steps = 1000 if features < 10**5 else 30
        alone = _per_step(one, linear, data, steps)
        inside[:] = [0.0, 0.0]
        spread = _per_step(two, linear, data, steps)
        within = inside[0] / inside[1]
        bare = bare_all_reduce(features + 3, steps)
        print(
            f"   P = {features + 1:>8} {bare * 1e3:8.3f} "
            f"{within * 1e3:8.3f} ({within / bare:4.2f}x) "
            f"{(spread - alone) * 1e3:8.3f} ({(spread - alone) / bare:4.2f}x)"
        )
    _torch_parallel._Rank.collective = collective  # type: ignore[method-assign]
    print(
        "3. full-batch fit at n = 10^7 (linear regression, d = 3), ms per step: "
        "1 rank | 2 ranks | one process, 2 threads"
    )
    data = linear.make_data(10_000_000, d=3, seed=0)
    per = [_per_step(engine, linear, data, 10) for engine in (one, two, "torch")]
    print(
        f"   {per[0] * 1e3:8.1f} {per[1] * 1e3:8.1f} {per[2] * 1e3:8.1f}  "
        f"(2 ranks / 1 rank: {per[1] / per[0]:.2f}x)"
    )
    one.close()
    two.close()


if __name__ == "__main__":
    main()
