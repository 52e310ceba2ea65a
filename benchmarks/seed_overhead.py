"""gradlab.fit on the seed recipe against the seed's own hand-written loops, side by side.

Each pair runs interleaved in one process (gradlab, hand, gradlab, hand, ...) after a
warm-up, and the script prints min and median time per step and the ratio gradlab/hand of
the minima. Ratios, not absolute times, are what carry across machines.

    python benchmarks/seed_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import gradlab
from gradlab import recipes


def seed_numpy_loop(x: np.ndarray, y: np.ndarray, w1: float, b1: float) -> tuple[float, float]:
    """The seed's NumPy loop (800 steps, lr 0.001), on (100, 1) columns as in the seed."""
    lr = 0.001
    for _ in range(800):
        y_pred = np.power(x, 2) * w1 + b1
        loss = 0.5 * np.sum((y_pred - y) ** 2)  # noqa: F841 - the seed computes it every step
        grad_w = np.sum((y_pred - y) * np.power(x, 2))
        grad_b = np.sum(y_pred - y)
        w1 -= lr * grad_w
        b1 -= lr * grad_b
    return w1, b1


def seed_torch_loop(x, y, w0):  # type: ignore[no-untyped-def]
    """The seed's torch loop, typos fixed."""
    import torch as t

    w = w0.clone().requires_grad_(True)
    b = t.zeros(1, 1, requires_grad=True)
    lr = 0.001
    for _ in range(800):
        y_pred = x.pow(2).mm(w) + b
        loss = 0.5 * (y_pred - y).pow(2).sum()
        loss.backward()
        with t.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
            w.grad.zero_()
            b.grad.zero_()
    return w, b


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def compare(
    name: str, ours: Callable[[], object], hand: Callable[[], object], repeats: int
) -> None:
    ours(), hand()  # warm-up: imports, allocations, compilation
    mine, theirs = [], []
    for _ in range(repeats):
        mine.append(timed(ours))
        theirs.append(timed(hand))
    per_step = 1e6 / 800
    print(
        f"{name:<7} gradlab min {min(mine) * per_step:8.1f} µs/step "
        f"(median {statistics.median(mine) * per_step:8.1f})   "
        f"seed loop min {min(theirs) * per_step:8.1f} µs/step "
        f"(median {statistics.median(theirs) * per_step:8.1f})   "
        f"ratio {min(mine) / min(theirs):5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    engines = gradlab.available_engines()
    recipe = recipes.seed_numpy()
    x, y = recipe.data["x"].reshape(100, 1), recipe.data["y"].reshape(100, 1)
    w, b = float(recipe.init["w"]), float(recipe.init["b"])
    hand_numpy = lambda: seed_numpy_loop(x, y, w, b)  # noqa: E731
    compare("numpy", lambda: recipe.run("numpy"), hand_numpy, args.repeats)
    if "torch" in engines:
        import torch

        torch_recipe = recipes.seed_torch()
        tx = torch.tensor(torch_recipe.data["x"]).reshape(100, 1)
        ty = torch.tensor(torch_recipe.data["y"]).reshape(100, 1)
        tw = torch.tensor(torch_recipe.init["w"]).reshape(1, 1)
        compare(
            "torch",
            lambda: torch_recipe.run("torch"),
            lambda: seed_torch_loop(tx, ty, tw),
            args.repeats,
        )
    for engine in ("jax", "fd"):
        if engine in engines:
            compare(engine, lambda engine=engine: recipe.run(engine), hand_numpy, args.repeats)
    print("(jax and fd are compared with the seed's NumPy loop, torch with its own loop)")


if __name__ == "__main__":
    main()
