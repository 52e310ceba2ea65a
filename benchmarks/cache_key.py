"""What keying compiled code on the loss's contents costs a second fit of an unchanged problem.

Compiling engines (jax, torch-compile) key their caches on the problem's identity and a
fingerprint of everything its loss reads (``gradlab._fingerprint``), so a changed loss is
traced again. An unchanged problem pays for the fingerprint on every fit; this script
measures that cost beside the second fit it is part of, in one process, interleaved:

    .venv/bin/python benchmarks/cache_key.py [--repeats 200]

For each built-in problem and a user ``Problem`` (a lambda over a closure), it prints the
fingerprint's time (minimum and median over repeats), the whole second jax fit of the seed's
800 steps at n = 100 (compiled loop reused), and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gradlab
from gradlab._fingerprint import key
from gradlab.problems._named import NAMED_PROBLEMS


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return min(seconds), statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    offset = 2.0
    user = gradlab.Problem(
        lambda p, d, xp: xp.sum((p["w"] * d["x"] ** 2 + p["b"] - offset - d["y"]) ** 2),
        name="user lambda",
    )
    problems: dict[str, gradlab.AbstractProblem] = {
        name: factory() for name, factory in NAMED_PROBLEMS.items()
    }
    problems["user lambda"] = user
    print(f"{'problem':24} {'key min':>10} {'key median':>11}")
    for name, problem in problems.items():
        best, typical = timed(lambda problem=problem: key(problem), args.repeats)
        print(f"{name:24} {best * 1e6:8.1f} µs {typical * 1e6:8.1f} µs")

    recipe = gradlab.recipes.seed_numpy()
    if "jax" not in gradlab.available_engines():
        print("\njax is not installed: no fit to compare with")
        return
    recipe.run("jax")  # compile once
    fit_best, fit_typical = timed(lambda: recipe.run("jax"), max(20, args.repeats // 10))
    key_best, _ = timed(lambda: key(recipe.problem), args.repeats)
    print(
        f"\nsecond jax fit of the seed (800 steps, n = 100): min {fit_best * 1e6:.0f} µs, "
        f"median {fit_typical * 1e6:.0f} µs; the fingerprint is "
        f"{key_best / fit_best:.1%} of it (min over min)"
    )
    data = np.asarray(recipe.data["x"])
    print(f"(data: {data.size} points; machine noise: compare only within one run)")


if __name__ == "__main__":
    main()
