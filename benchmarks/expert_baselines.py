"""gradlab.fit against the best loop an expert writes by hand, per framework, side by side.

The seed's loops (``seed_overhead.py``) were written to teach; these are written to be fast,
and share no code with gradlab: x² computed once, buffers preallocated, the loss recorded
at every step as gradlab records it, one thread per framework (``torch.set_num_threads(1)``
and XLA's CPU client on one thread: set before jax is imported). Each pair runs interleaved
in one process after a warm-up; the figure is CPU time per step (``time.process_time``),
the minimum over the repeats, and gradlab's includes everything one ``fit`` call does
(checks, copies, moving data to the engine and back). Both must land on the same
parameters (to 1e-12), or the script stops.

    python benchmarks/expert_baselines.py [--sizes 100,10000,1000000] [--repeats 7]
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gradlab
from gradlab._workload import SGD_STEP


def numpy_expert(x: np.ndarray, y: np.ndarray, w: float, b: float, steps: int) -> Any:
    """In place, x² once, three dot products per step."""
    x2, residual, losses = x * x, np.empty_like(x), np.empty(steps, x.dtype)
    w, b = x.dtype.type(w), x.dtype.type(b)
    for i in range(steps):
        np.multiply(x2, w, out=residual)
        residual += b
        residual -= y
        losses[i] = 0.5 * residual.dot(residual)
        w, b = w - SGD_STEP * residual.dot(x2), b - SGD_STEP * residual.sum()
    return w, b, losses


def torch_expert(x: Any, y: Any, w0: float, b0: float, steps: int) -> Any:
    """Autograd on two leaf scalars, x² once, in-place SGD without a graph."""
    import torch

    x2 = x * x
    w = torch.tensor(w0, dtype=x.dtype, requires_grad=True)
    b = torch.tensor(b0, dtype=x.dtype, requires_grad=True)
    losses = torch.empty(steps, dtype=x.dtype)
    for i in range(steps):
        residual = torch.addcmul(b - y, x2, w)  # w·x² + b − y
        loss = 0.5 * residual.dot(residual)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w.sub_(SGD_STEP * gw)
            b.sub_(SGD_STEP * gb)
            losses[i] = loss
    return w.item(), b.item(), losses.numpy()


def jax_expert(dot: bool) -> Callable[..., Any]:
    """One compiled ``fori_loop`` over ``value_and_grad``, x² once, losses in a buffer; the
    squares summed by a dot product or by ``sum(r * r)`` (XLA's CPU backend is faster with
    one or the other depending on size and dtype: the expert takes the faster)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 where the data is; float32 stays so

    def loss(p: Any, x2: Any, y: Any) -> Any:
        residual = p[0] * x2 + p[1] - y
        return 0.5 * (residual @ residual if dot else jnp.sum(residual * residual))

    grad = jax.value_and_grad(loss)

    @jax.jit(static_argnames="steps")
    def run(x: Any, y: Any, p: Any, steps: int) -> Any:
        x2 = x * x

        def body(i: Any, carry: Any) -> Any:
            p, losses = carry
            value, g = grad(p, x2, y)
            return p - SGD_STEP * g, losses.at[i].set(value)

        return jax.lax.fori_loop(0, steps, body, (p, jnp.empty(steps, x.dtype)))

    def call(x: np.ndarray, y: np.ndarray, w: float, b: float, steps: int) -> Any:
        p, losses = run(x, y, np.array([w, b], x.dtype), steps)
        p = np.asarray(p)
        return float(p[0]), float(p[1]), np.asarray(losses)

    return call


def _pair(
    engine: str, x: np.ndarray, y: np.ndarray, dtype: str, steps: int
) -> tuple[list[Callable[[], Any]], Callable[[], Any]]:
    """The expert loops (the fastest counts) and gradlab's fit for one case, from the same
    start."""
    if engine == "torch":
        import torch

        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def hand() -> Any:
            return torch_expert(tx, ty, 0.1, -0.1, steps)
    elif engine == "jax":
        calls = [jax_expert(dot=True), jax_expert(dot=False)]
        return [functools.partial(call, x, y, 0.1, -0.1, steps) for call in calls], _ours(
            engine, x, y, dtype, steps
        )
    else:

        def hand() -> Any:
            return numpy_expert(x, y, 0.1, -0.1, steps)

    return [hand], _ours(engine, x, y, dtype, steps)


def _ours(engine: str, x: np.ndarray, y: np.ndarray, dtype: str, steps: int) -> Callable[[], Any]:
    """gradlab's fit of the same case: everything one call does, fixed costs included."""
    problem, data = gradlab.Quadratic(), {"x": x, "y": y}

    def ours() -> Any:
        # A new optimizer object per fit, as users write it inline.
        return gradlab.fit(
            problem,
            data,
            engine=engine,
            dtype=dtype,
            steps=steps,
            optimizer=gradlab.sgd(SGD_STEP),
            init={"w": 0.1, "b": -0.1},
        )

    return ours


def _cpu_per_step(function: Callable[[], Any], steps: int) -> float:
    start = time.process_time()
    function()
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--engines", default="numpy,torch,jax")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    engines = args.engines.split(",")
    if "torch" in engines:
        import torch

        torch.set_num_threads(1)
    problem = gradlab.Quadratic()
    rows = []
    for dtype in args.dtypes.split(","):
        for n in map(int, args.sizes.split(",")):
            steps = max(20, min(2000, 2_000_000 // n))
            data = problem.make_data(n, seed=0)
            x, y = data["x"].astype(dtype), data["y"].astype(dtype)
            for engine in engines:
                hands, ours = _pair(engine, x, y, dtype, steps)
                result = ours()
                tol = 1e-12 if dtype == "float64" else 1e-5
                for hand in hands:
                    w, b, _ = hand()
                    final = [result.params["w"], result.params["b"]]
                    assert np.allclose([w, b], final, rtol=tol), (engine, n, dtype, (w, b), final)
                timings: dict[str, list[float]] = {"hand": [], "gradlab": []}
                for _ in range(args.repeats):
                    timings["hand"].append(min(_cpu_per_step(hand, steps) for hand in hands))
                    timings["gradlab"].append(_cpu_per_step(ours, steps))
                best = {name: min(values) for name, values in timings.items()}
                rows.append((engine, dtype, n, steps, best["hand"], best["gradlab"]))
                print(
                    f"{engine:6} {dtype} n={n:>8}: expert {best['hand'] * 1e6:9.2f} µs/step, "
                    f"gradlab {best['gradlab'] * 1e6:9.2f} µs/step, "
                    f"ratio {best['gradlab'] / best['hand']:.2f}",
                    flush=True,
                )
    print("\n| engine | dtype | n | steps | expert µs/step | gradlab µs/step | gradlab / expert |")
    print("|---|---|---|---|---|---|---|")
    for engine, dtype, n, steps, hand_time, ours_time in rows:
        print(
            f"| {engine} | {dtype} | {n:,} | {steps} | {hand_time * 1e6:.2f} | "
            f"{ours_time * 1e6:.2f} | {ours_time / hand_time:.2f} |"
        )


if __name__ == "__main__":
    main()
