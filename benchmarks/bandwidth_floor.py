"""Value-and-gradient and a fit's step against the memory-bandwidth floor, and peak memory.

The floor is one read of the data (``numpy.dot(y, x)``: x and y once, nothing written),
which no gradient of the seed's model can beat by much. For each engine, at n = 10⁶ and
10⁷: the value-and-gradient time over the floor and a fit's time per step over the floor
(issue 15's targets: the fastest engine within 1.3× and 1.5×), and with ``--memory`` the
peak memory a float32 fit at n = 10⁷ adds, over the size of its data in float32 (issue 30's
target ≤ 2×), for a fit of 20 steps and one of 80, each engine in a fresh process
(``gradlab.bench._memory``): with the data given in float32, and given in float64 (as
``make_data`` makes it, which the fit must first cast: one more copy of the data). One
thread per framework, as in ``expert_baselines.py``; minima of repeated calls.

    python benchmarks/bandwidth_floor.py [--sizes 1000000,10000000] [--memory | --memory-only]
"""

from __future__ import annotations

import argparse
import os

import gradlab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--engines", default="numpy,jax,torch,torch-compile")
    parser.add_argument("--memory", action="store_true", help="peak memory at n = 10⁷ float32")
    parser.add_argument("--memory-only", action="store_true", help="--memory without the times")
    args = parser.parse_args()
    # Before jax is imported: XLA reads its flags once.
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    engines = args.engines.split(",")
    if {"torch", "torch-compile"} & set(engines):
        import torch

        torch.set_num_threads(1)
    if args.memory_only:
        _memory(engines)
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    result = gradlab.benchmark(
        "quadratic", sizes, engines=engines, dtypes="float64,float32", min_time=0.3, fit_steps=50
    )
    print("| engine | dtype | n | floor ms | value-and-gradient / floor | fit step / floor |")
    print("|---|---|---|---|---|---|")
    for case in result.cases:
        if case.status != "measured" or case.floor is None or case.fit_per_step is None:
            continue
        print(
            f"| {case.engine} | {case.dtype} | {case.n:,} | {case.floor.min * 1e3:.2f} | "
            f"{case.floor_ratio:.2f} | {case.fit_per_step.min / case.floor.min:.2f} |",
            flush=True,
        )
    if args.memory:
        print()
        _memory(engines)


def _memory(engines: list[str], n: int = 10_000_000, steps: int = 20) -> None:
    """The peak memory table: each engine's float32 fit, its data given in both dtypes."""
    from gradlab.bench._memory import measure

    print(
        "| engine | data given as | data MiB | peak added MiB | peak / data "
        f"| {4 * steps} steps MiB | {4 * steps} steps / data |"
    )
    print("|---|---|---|---|---|---|---|")
    for engine in engines:
        for given in ("float32", "float64"):
            figures = measure("quadratic", n, "float32", engine, steps, data_dtype=given)
            if figures is None:
                print(f"| {engine} | {given} | not measured (not installed, or not Linux) |")
                continue
            data, peak, longer = figures["data_bytes"], figures["peak"], figures["peak_4x_steps"]
            print(
                f"| {engine} | {given} | {data / 2**20:.0f} | {peak / 2**20:.0f} | "
                f"{peak / data:.2f} | {longer / 2**20:.0f} | {longer / data:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
