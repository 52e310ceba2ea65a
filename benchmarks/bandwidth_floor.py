"""Value-and-gradient and a fit's step against the memory-bandwidth floor, and peak memory.

The floor is one read of the data (``numpy.dot(y, x)``: x and y once, nothing written),
which no gradient of the seed's model can beat by much. For each engine, at n = 10⁶ and
10⁷: the value-and-gradient time over the floor and a fit's time per step over the floor
(issue 15's targets: the fastest engine within 1.3× and 1.5×), and with ``--memory`` the
peak memory a float32 fit at n = 10⁷ adds, over the size of its data (target ≤ 2×). One
thread per framework, as in ``expert_baselines.py``; minima of repeated calls.

    python benchmarks/bandwidth_floor.py [--sizes 1000000,10000000] [--memory]
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
    args = parser.parse_args()
    # Before jax is imported: XLA reads its flags once.
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    engines = args.engines.split(",")
    if {"torch", "torch-compile"} & set(engines):
        import torch

        torch.set_num_threads(1)
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
        memory = gradlab.benchmark(
            "quadratic",
            [10_000_000],
            engines=engines,
            dtypes="float32",
            min_time=0.01,
            fit_steps=20,
            memory=True,
        )
        print("\n| engine | data MiB | peak added MiB | peak / data | 4× the steps MiB |")
        print("|---|---|---|---|---|")
        for case in memory.cases:
            if case.peak_memory is None or not case.data_bytes:
                continue
            print(
                f"| {case.engine} | {case.data_bytes / 2**20:.0f} | "
                f"{case.peak_memory / 2**20:.0f} | {case.peak_memory / case.data_bytes:.2f} | "
                f"{(case.peak_memory_4x_steps or 0) / 2**20:.0f} |"
            )


if __name__ == "__main__":
    main()
