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

``--json PATH`` saves the benchmark's full record.
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
