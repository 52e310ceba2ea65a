"""The abstraction tax: gradlab.fit on the seed recipe against hand-written loops, side by side.

Each pair runs interleaved in one process (three gradlab fits, three hand-written loops,
and again) after a warm-up, and the script prints min and median time per step and the
ratio gradlab/hand of the minima. Ratios, not absolute times, are what carry across
machines.

The hand-written loops do the work gradlab.fit does: the seed's NumPy loop and the seed's
torch loop (typos fixed) compute the loss at every step as the seed does, and the jax loop
(``jit`` + ``fori_loop`` over ``jax.value_and_grad``) records the loss of every step, as
gradlab does. gradlab's figures include everything ``fit`` does per call: argument checks
and copies, one NumPy evaluation of the loss to check it is a scalar, moving data to the
engine and the results back.

    python benchmarks/seed_overhead.py [--repeats 15] [--n 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gradlab
from gradlab import recipes


def seed_numpy_loop(
    x: np.ndarray, y: np.ndarray, w1: float, b1: float, lr: float = 0.001, steps: int = 800
) -> tuple[float, float]:
    """The seed's NumPy loop (800 steps, lr 0.001), on (n, 1) columns as in the seed."""
    for _ in range(steps):
        y_pred = np.power(x, 2) * w1 + b1
        loss = 0.5 * np.sum((y_pred - y) ** 2)  # noqa: F841 - the seed computes it every step
        grad_w = np.sum((y_pred - y) * np.power(x, 2))
        grad_b = np.sum(y_pred - y)
        w1 -= lr * grad_w
        b1 -= lr * grad_b
    return w1, b1


def seed_torch_loop(x, y, w0, lr=0.001, steps=800):  # type: ignore[no-untyped-def]
    """The seed's torch loop, typos fixed."""
    import torch as t

    w = w0.clone().requires_grad_(True)
    b = t.zeros(1, 1, requires_grad=True)
    for _ in range(steps):
        y_pred = x.pow(2).mm(w) + b
        loss = 0.5 * (y_pred - y).pow(2).sum()
        loss.backward()
        with t.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
            w.grad.zero_()
            b.grad.zero_()
    return w, b


def jax_loop(lr: float, steps: int, record: bool = True) -> Callable[..., Any]:
    """A hand-written jax loop: ``jit`` + ``fori_loop`` over ``value_and_grad``, in float64.

    With ``record``, every step's loss is kept (as gradlab.fit keeps it); without, XLA
    removes the loss from the loop altogether, which is less work than gradlab does.
    """
    import jax
    import jax.numpy as jnp

    def loss(w: Any, b: Any, x: Any, y: Any) -> Any:
        return 0.5 * jnp.sum((w * x**2 + b - y) ** 2)

    gradient = jax.value_and_grad(loss, argnums=(0, 1))

    @jax.jit
    def loop(x: Any, y: Any, w: Any, b: Any) -> Any:
        def body(i: Any, carry: Any) -> Any:
            w, b, losses = carry
            value, (grad_w, grad_b) = gradient(w, b, x, y)
            losses = losses.at[i].set(value) if record else losses
            return w - lr * grad_w, b - lr * grad_b, losses

        return jax.lax.fori_loop(0, steps, body, (w, b, jnp.zeros(steps if record else 1)))

    def run(x: np.ndarray, y: np.ndarray, w: float, b: float) -> Any:
        with jax.enable_x64(True):
            out = loop(x, y, np.float64(w), np.float64(b))
            return [np.asarray(value) for value in out]  # results on the host, as gradlab's

    return run


BLOCK = 3


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@dataclasses.dataclass
class Pair:
    """gradlab and hand-written times per step (seconds), and the ratio of the minima."""

    engine: str
    hand: str
    ours: list[float]
    theirs: list[float]

    @property
    def ratio(self) -> float:
        return min(self.ours) / min(self.theirs)

    def brief(self) -> str:
        us = 1e6
        return (
            f"{self.ratio:.2f} (gradlab {min(self.ours) * us:.2f} vs {self.hand} "
            f"{min(self.theirs) * us:.2f} µs/step)"
        )

    def line(self) -> str:
        us = 1e6
        return (
            f"{self.engine:<7} gradlab min {min(self.ours) * us:8.2f} µs/step "
            f"(median {statistics.median(self.ours) * us:8.2f})   "
            f"{self.hand} min {min(self.theirs) * us:8.2f} µs/step "
            f"(median {statistics.median(self.theirs) * us:8.2f})   ratio {self.ratio:5.2f}"
        )


def compare(
    engine: str,
    hand: str,
    ours: Callable[[], object],
    theirs: Callable[[], object],
    repeats: int,
    steps: int,
) -> Pair:
    ours(), theirs()  # warm-up: imports, allocations, compilation
    mine, others = [], []
    # Interleaved in blocks of BLOCK calls: each side runs back to back within a block, as a
    # user's repeated fits do, and drift in the machine's speed hits both sides alike.
    for _ in range(repeats):
        mine.extend(timed(ours) / steps for _ in range(BLOCK))
        others.extend(timed(theirs) / steps for _ in range(BLOCK))
    return Pair(engine, hand, mine, others)


def seed_recipe(n: int) -> recipes.Recipe:
    """The seed's recipe; for n ≠ 100, the seed's data drawn at n points, lr scaled by 100/n.

    The seed's loss is a sum, so its curvature grows with n: lr 0.001·100/n keeps the
    seed's step relative to the curvature.
    """
    recipe = recipes.seed_numpy()
    if n == 100:
        return recipe
    data = gradlab.Quadratic().make_data(n, seed=0)
    return dataclasses.replace(recipe, data=data, optimizer=gradlab.sgd(0.1 / n))


def overhead(repeats: int, n: int = 100) -> list[Pair]:
    """Every installed engine's gradlab.fit against its hand-written loop, at n points."""
    engines = gradlab.available_engines()
    recipe = seed_recipe(n)
    lr, steps = 0.1 / n, recipe.steps
    x, y = recipe.data["x"].reshape(n, 1), recipe.data["y"].reshape(n, 1)
    w, b = float(recipe.init["w"]), float(recipe.init["b"])

    def hand_numpy() -> object:
        return seed_numpy_loop(x, y, w, b, lr, steps)

    pairs = [
        compare("numpy", "seed NumPy loop", lambda: recipe.run("numpy"), hand_numpy, repeats, steps)
    ]
    if "torch" in engines:
        import torch

        torch_recipe = (
            dataclasses.replace(
                recipe,
                data={k: v.astype(np.float32) for k, v in recipe.data.items()},
                dtype="float32",
            )
            if n != 100
            else recipes.seed_torch()
        )
        tx = torch.tensor(torch_recipe.data["x"], dtype=torch.float32).reshape(n, 1)
        ty = torch.tensor(torch_recipe.data["y"], dtype=torch.float32).reshape(n, 1)
        tw = torch.tensor(np.asarray(torch_recipe.init["w"]), dtype=torch.float32).reshape(1, 1)
        pairs.append(
            compare(
                "torch",
                "seed torch loop",
                lambda: torch_recipe.run("torch"),
                lambda: seed_torch_loop(tx, ty, tw, lr, steps),
                repeats,
                steps,
            )
        )
    if "jax" in engines:
        hand = jax_loop(lr, steps)
        flat_x, flat_y = recipe.data["x"], recipe.data["y"]
        pairs.append(
            compare(
                "jax",
                "jit+fori_loop",
                lambda: recipe.run("jax"),
                lambda: hand(flat_x, flat_y, w, b),
                repeats,
                steps,
            )
        )
    for engine in ("jax", "torch-compile", "fd"):
        if engine in engines and (engine != "fd" or n <= 1000):
            pairs.append(
                compare(
                    engine,
                    "seed NumPy loop",
                    lambda engine=engine: recipe.run(engine),
                    hand_numpy,
                    repeats,
                    steps,
                )
            )
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    for pair in overhead(args.repeats, args.n):
        print(pair.line())


if __name__ == "__main__":
    main()
