"""Where a fit's fixed cost goes: per-fit time of short fits, and a profile of many.

A fit of one step is nearly all fixed cost (checks, copies, moving data to the engine and
back, provenance); the difference between a long and a short fit, per step, is the step.

    python benchmarks/fit_profile.py [--engine jax] [--device gpu] [--n 100] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import numpy as np

import gradlab
from gradlab.bench._workload import SGD_STEP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="jax")
    parser.add_argument("--device", default=None, help="the engine's device, e.g. gpu or cuda")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--fits", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    engine = gradlab.get_engine(args.engine, **({"device": args.device} if args.device else {}))
    problem = gradlab.Quadratic()
    data = problem.make_data(args.n, seed=0)

    def fit(steps: int) -> Any:
        return gradlab.fit(
            problem,
            data,
            engine=engine,
            steps=steps,
            optimizer=gradlab.sgd(SGD_STEP),
            init={"w": 0.1, "b": -0.1},
        )

    per_fit = {}
    for steps in (1, 64):
        fit(steps)  # compiles what is compiled
        times = []
        for _ in range(args.fits):
            start = time.perf_counter()
            fit(steps)
            times.append(time.perf_counter() - start)
        per_fit[steps] = float(np.min(times))
    step = (per_fit[64] - per_fit[1]) / 63
    print(
        f"{engine.name} on {engine.describe().get('device')}, n = {args.n}: a 1-step fit "
        f"{per_fit[1] * 1e6:.1f} µs, a 64-step fit {per_fit[64] * 1e6:.1f} µs "
        f"(minima of {args.fits}); a step ≈ {step * 1e6:.2f} µs, fixed ≈ "
        f"{(per_fit[1] - step) * 1e6:.1f} µs"
    )
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.fits):
        fit(1)
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
