"""What taps cost when nothing watches them, and what ``locate`` costs against a gradient.

1. **Taps, not located.** An MLP's loss and gradient (torch eagerly, jax jitted, NumPy's
   forward) with ``gradlab.tap`` at every layer, against the same code with the taps
   removed, interleaved in one process: the ratio of the minima.
2. **locate.** The planted-fault suite's transformer block in torch and jax: one ``locate``
   against one ``gradlab.value_and_grad`` per engine, each in a fresh process state for the
   engines' compiled code ("cold": jax compiles what it runs) and repeated ("warm").

    python benchmarks/locate_cost.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import gradlab

WIDTH, DEPTH, ROWS = 64, 8, 32


def _identity(name: str, value: Any) -> Any:
    return value


def _mlp(xp: Any, tap: Callable[[str, Any], Any]) -> Callable[..., Any]:
    def loss(params: dict[str, Any], x: Any, y: Any) -> Any:
        h = x
        for i in range(DEPTH):
            h = tap(f"layer{i}", xp.tanh(h @ params[f"w{i}"]))
        return xp.sum((h - y) ** 2)

    return loss


def _best(function: Callable[[], Any], repeats: int, inner: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        times.append((time.perf_counter() - start) / inner)
    return min(times)


def taps(repeats: int) -> list[tuple[str, float, float]]:
    """(framework, µs with taps, µs without), interleaved."""
    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.normal(size=(WIDTH, WIDTH)) / WIDTH**0.5 for i in range(DEPTH)}
    x, y = rng.normal(size=(ROWS, WIDTH)), rng.normal(size=(ROWS, WIDTH))
    rows = []

    tw = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    tx, ty = torch.tensor(x), torch.tensor(y)

    def torch_step(tap: Callable[[str, Any], Any]) -> Callable[[], Any]:
        loss = _mlp(torch, tap)
        return lambda: torch.autograd.grad(loss(tw, tx, ty), list(tw.values()))

    jw = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in weights.items()}
    jx, jy = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

    def jax_step(tap: Callable[[str, Any], Any]) -> Callable[[], Any]:
        grad = jax.jit(jax.grad(_mlp(jnp, tap)))
        return lambda: jax.block_until_ready(grad(jw, jx, jy))

    def numpy_step(tap: Callable[[str, Any], Any]) -> Callable[[], Any]:
        loss = _mlp(np, tap)
        return lambda: loss(weights, x, y)

    for framework, make, inner in (
        ("torch (loss and gradient)", torch_step, 200),
        ("jax (jitted gradient)", jax_step, 500),
        ("numpy (loss)", numpy_step, 500),
    ):
        tapped, plain = make(gradlab.tap), make(_identity)
        tapped(), plain()  # compile, warm up
        best_tapped, best_plain = np.inf, np.inf
        for _ in range(repeats):
            best_tapped = min(best_tapped, _best(tapped, 1, inner))
            best_plain = min(best_plain, _best(plain, 1, inner))
        rows.append((framework, best_tapped * 1e6, best_plain * 1e6))
    return rows


def _gradients(problem: Any, data: Any, params: Any, dtype: str) -> None:
    for engine in ("torch", "jax"):
        gradlab.value_and_grad(problem, data, params, engine=engine, dtype=dtype)


def cost(repeats: int) -> list[tuple[str, float, float]]:
    """(case, seconds for locate, seconds for one value_and_grad per engine)."""
    # The planted-fault suite's transformer block, ported to torch and jax, without a fault.
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests", "comparison"))
    from ports import problem as ported

    problem, data, params = ported("transformer")
    rows = []
    for dtype in ("float64", "float32"):
        start = time.perf_counter()
        gradlab.locate(problem, data, params, dtype=dtype)
        cold_locate = time.perf_counter() - start
        start = time.perf_counter()
        for engine in ("torch", "jax"):
            # A new problem object: jax compiles its gradient afresh, as locate does.
            fresh = gradlab.NativeProblem(name="fresh", **problem.implementations)
            gradlab.value_and_grad(fresh, data, params, engine=engine, dtype=dtype)
        cold_gradients = time.perf_counter() - start
        rows.append((f"{dtype}, cold (jax compiles)", cold_locate, cold_gradients))
        warm_locate = _best(
            functools.partial(gradlab.locate, problem, data, params, dtype=dtype), repeats, 1
        )
        warm_gradients = _best(
            functools.partial(_gradients, problem, data, params, dtype), repeats, 1
        )
        rows.append((f"{dtype}, warm (gradients compiled)", warm_locate, warm_gradients))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"Taps not located: an MLP of {DEPTH} tapped layers, width {WIDTH}, {ROWS} rows")
    print("| framework | with taps µs | without µs | ratio |")
    print("|---|---|---|---|")
    for framework, tapped, plain in taps(args.repeats):
        print(f"| {framework} | {tapped:.1f} | {plain:.1f} | {tapped / plain:.3f} |")
    print("\nlocate against one value_and_grad per engine (torch, jax): a transformer block")
    print("| case | locate s | gradients s | ratio |")
    print("|---|---|---|---|")
    for case, located, gradients in cost(args.repeats):
        print(f"| {case} | {located:.3f} | {gradients:.3f} | {located / gradients:.2f} |")


if __name__ == "__main__":
    main()
