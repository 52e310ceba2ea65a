"""gradlab.fit against the best loop an expert writes by hand, per framework, side by side.

The seed's loops (``seed_overhead.py``) were written to teach; these are written to be fast,
and share no code with gradlab: x² computed once, buffers preallocated, the loss recorded
at every step as gradlab records it. Both start from the same NumPy arrays, so moving the
data to the device is in both. Each pair runs interleaved in one process after a warm-up
(which compiles what is compiled); the figures are CPU time (``time.process_time``) and
wall time per step, each the minimum over the repeats, and gradlab's includes everything
one ``fit`` call does (checks, copies, moving data to the engine and back). Both must land
on the same parameters (to 1e-12 in float64), or the script stops.

``--threads one`` (the default) runs one thread per framework (``torch.set_num_threads(1)``
and XLA's CPU client on one thread, set before jax is imported); ``--threads default``
leaves each framework's own defaults. ``--device gpu`` runs torch, torch-compile and jax on
the GPU, where wall time is the figure that counts.

    python benchmarks/expert_baselines.py [--sizes 100,10000,1000000] [--repeats 7]
        [--engines numpy,torch,jax,torch-compile] [--threads one|default] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gradlab
from gradlab.bench._workload import SGD_STEP

# Steps per compiled graph (torch-compile) or per loop iteration (jax) in the expert's
# unrolled variants: as many as gradlab's engines unroll.
UNROLL = 8


def numpy_expert(x: np.ndarray, y: np.ndarray) -> Callable[..., Any]:
    """Prepared: x² once. Each run: in place, three dot products per step."""
    x2 = x * x
    return functools.partial(_numpy_run, x2, y)


def _numpy_run(x2: np.ndarray, y: np.ndarray, w: float, b: float, steps: int) -> Any:
    residual, losses = np.empty_like(x2), np.empty(steps, x2.dtype)
    w, b = x2.dtype.type(w), x2.dtype.type(b)
    for i in range(steps):
        np.multiply(x2, w, out=residual)
        residual += b
        residual -= y
        losses[i] = 0.5 * residual.dot(residual)
        w, b = w - SGD_STEP * residual.dot(x2), b - SGD_STEP * residual.sum()
    return w, b, losses


def torch_expert(x: np.ndarray, y: np.ndarray, device: str) -> Callable[..., Any]:
    """Prepared: the data on the device, x² once. Each run: autograd on two leaf scalars,
    in-place SGD without a graph."""
    import torch

    tx, ty = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    return functools.partial(_torch_run, tx * tx, ty, device)


def _torch_run(x2: Any, ty: Any, device: str, w0: float, b0: float, steps: int) -> Any:
    import torch

    w = torch.tensor(w0, dtype=x2.dtype, device=device, requires_grad=True)
    b = torch.tensor(b0, dtype=x2.dtype, device=device, requires_grad=True)
    losses = torch.empty(steps, dtype=x2.dtype, device=device)
    for i in range(steps):
        residual = torch.addcmul(b - ty, x2, w)  # w·x² + b − y
        loss = 0.5 * residual.dot(residual)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w.sub_(SGD_STEP * gw)
            b.sub_(SGD_STEP * gb)
            losses[i] = loss
    return w.item(), b.item(), losses.cpu().numpy()


def torch_compile_expert(per_graph: int, device: str) -> Callable[..., Any]:
    """``per_graph`` steps of ``torch.func.grad_and_value`` and SGD, unrolled into one
    ``torch.compile`` graph (inductor, static shapes); one compiled step for the remainder.
    With ``per_graph=1`` this is one compiled step per call, as a loop body is usually
    compiled."""
    import torch

    def loss(p: Any, x2: Any, y: Any) -> Any:
        residual = p[0] * x2 + p[1] - y
        return 0.5 * residual.dot(residual)

    gradient = torch.func.grad_and_value(loss)

    def unrolled(count: int) -> Callable[..., Any]:
        def steps(p: Any, x2: Any, y: Any) -> Any:
            values = []
            for _ in range(count):
                g, value = gradient(p, x2, y)
                p = p - SGD_STEP * g
                values.append(value)
            return p, torch.stack(values)

        return torch.compile(steps, dynamic=False)

    # torch.compile caches compiled code on the Python function's code object, shared by
    # every case of this run: allow a recompilation per case (size, dtype, unroll).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    many, one = unrolled(per_graph), unrolled(1)

    def prepare(x: np.ndarray, y: np.ndarray) -> Callable[..., Any]:
        tx, ty = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
        return functools.partial(call, tx * tx, ty)

    def call(x2: Any, ty: Any, w: float, b: float, steps: int) -> Any:
        p = torch.tensor([w, b], dtype=x2.dtype, device=device)
        losses = torch.empty(steps, dtype=x2.dtype, device=device)
        done = 0
        while done < steps:
            count = per_graph if steps - done >= per_graph else 1
            p, losses[done : done + count] = (many if count == per_graph else one)(p, x2, ty)
            done += count
        p = p.cpu()
        return float(p[0]), float(p[1]), losses.cpu().numpy()

    return prepare


def jax_expert(dot: bool, unroll: int) -> Callable[..., Any]:
    """One compiled ``fori_loop`` over ``value_and_grad``, x² once, losses in a buffer; the
    squares summed by a dot product or by ``sum(r * r)``, ``unroll`` steps per iteration
    (XLA is faster with one or the other depending on size, dtype and device: the expert
    takes the fastest)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 where the data is; float32 stays so

    def loss(p: Any, x2: Any, y: Any) -> Any:
        residual = p[0] * x2 + p[1] - y
        return 0.5 * (residual @ residual if dot else jnp.sum(residual * residual))

    grad = jax.value_and_grad(loss)

    @jax.jit(static_argnames="steps")
    def run(x2: Any, y: Any, p: Any, steps: int) -> Any:
        def body(i: Any, carry: Any) -> Any:
            p, losses = carry
            value, g = grad(p, x2, y)
            return p - SGD_STEP * g, losses.at[i].set(value)

        return jax.lax.fori_loop(0, steps, body, (p, jnp.empty(steps, x2.dtype)), unroll=unroll)

    def prepare(x: np.ndarray, y: np.ndarray) -> Callable[..., Any]:
        device_x, device_y = jax.device_put(x), jax.device_put(y)
        return functools.partial(call, device_x * device_x, device_y)

    def call(x2: Any, y: Any, w: float, b: float, steps: int) -> Any:
        p, losses = run(x2, y, np.array([w, b], x2.dtype), steps)
        p, losses = jax.device_get((p, losses))
        return float(p[0]), float(p[1]), losses

    return prepare


def _experts(engine: str, device: str) -> dict[str, Callable[..., Any]]:
    """The expert's loops by name (the fastest counts), each ``prepare(x, y)`` returning
    ``run(w, b, steps)``."""
    on = "cuda" if device == "gpu" else "cpu"
    if engine == "torch":
        return {"autograd": functools.partial(torch_expert, device=on)}
    if engine == "torch-compile":
        return {
            "one compiled step": torch_compile_expert(1, on),
            f"{UNROLL} steps per graph": torch_compile_expert(UNROLL, on),
        }
    if engine == "jax":
        return {
            f"fori_loop, {'dot' if dot else 'sum'}, unroll {unroll}": jax_expert(dot, unroll)
            for dot in (True, False)
            for unroll in (1, UNROLL)
        }
    return {"in place": numpy_expert}


def _cases(
    engine: str, x: np.ndarray, y: np.ndarray, dtype: str, steps: int, device: str, mode: str
) -> tuple[dict[str, Callable[[], Any]], Callable[[], Any]]:
    """The expert's calls and gradlab's for one case, from the same start.

    ``one-shot``: each call does everything from the NumPy arrays (the expert moves the
    data and squares x; gradlab's ``fit`` checks, prepares and runs). ``prepared``: both
    did that once, outside the timed call (the expert's data on the device and x² made;
    gradlab's ``prepare_fit``): each call runs the loop from a start and brings the results
    back.
    """
    kwargs = {"device": "gpu" if engine == "jax" else ("cuda" if device == "gpu" else "cpu")}
    gradlab_engine = gradlab.get_engine(engine, **(kwargs if device == "gpu" else {}))
    problem, data = gradlab.Quadratic(), {"x": x, "y": y}
    start = {"w": 0.1, "b": -0.1}
    calls: dict[str, Callable[[], Any]] = {}
    for name, prepare in _experts(engine, device).items():
        if mode == "prepared":
            calls[name] = functools.partial(prepare(x, y), 0.1, -0.1, steps)
        else:
            calls[name] = functools.partial(
                lambda prepare: prepare(x, y)(0.1, -0.1, steps), prepare
            )
    if mode == "prepared":
        prepared = gradlab.prepare_fit(
            problem, data, engine=gradlab_engine, dtype=dtype, optimizer=gradlab.sgd(SGD_STEP)
        )
        return calls, functools.partial(prepared.run, start, steps=steps)

    def ours() -> Any:
        # A new optimizer object per fit, as users write it inline.
        return gradlab.fit(
            problem,
            data,
            engine=gradlab_engine,
            dtype=dtype,
            steps=steps,
            optimizer=gradlab.sgd(SGD_STEP),
            init=start,
        )

    return calls, ours


def _per_step(function: Callable[[], Any], steps: int) -> tuple[float, float]:
    """CPU and wall seconds per step of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    function()
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--engines", default=None, help="default: every framework the device has")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", choices=["one", "default"], default="one")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--modes", default="prepared,one-shot")
    args = parser.parse_args()
    default = "torch,torch-compile,jax" if args.device == "gpu" else "numpy,torch,torch-compile,jax"
    engines = (args.engines or default).split(",")
    if args.threads == "one":
        # Before jax is imported: XLA reads its flags once.
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    if {"torch", "torch-compile"} & set(engines) and args.threads == "one":
        import torch

        torch.set_num_threads(1)
    print(f"{args.device}, threads: {args.threads}; {_machine(args.device)}", flush=True)
    problem = gradlab.Quadratic()
    rows = []
    for mode in args.modes.split(","):
        for dtype in args.dtypes.split(","):
            for n in map(int, args.sizes.split(",")):
                steps = max(20, min(2000, 2_000_000 // n))
                data = problem.make_data(n, seed=0)
                x, y = data["x"].astype(dtype), data["y"].astype(dtype)
                for engine in engines:
                    rows.append(_measure(engine, mode, x, y, dtype, steps, args))
                    print(_row(*rows[-1]), flush=True)
    print(
        "\n| mode | engine | dtype | n | steps | fastest expert (wall) | expert CPU µs "
        "| gradlab CPU µs | CPU ratio | expert wall µs | gradlab wall µs | wall ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(*row))


def _measure(
    engine: str,
    mode: str,
    x: np.ndarray,
    y: np.ndarray,
    dtype: str,
    steps: int,
    args: argparse.Namespace,
) -> tuple[Any, ...]:
    """One row: the expert's loops and gradlab's, interleaved, minima per step."""
    hands, ours = _cases(engine, x, y, dtype, steps, args.device, mode)
    result = ours()  # the warm-up: compiles what is compiled
    tol = 1e-12 if dtype == "float64" else 1e-5
    for name, hand in hands.items():
        w, b, _ = hand()
        final = [result.params["w"], result.params["b"]]
        assert np.allclose([w, b], final, rtol=tol), (engine, name, x.size, dtype, final)
    times: dict[str, list[tuple[float, float]]] = {"hand": [], "gradlab": []}
    best_hand: dict[str, float] = dict.fromkeys(hands, np.inf)
    for _ in range(args.repeats):
        for name, hand in hands.items():
            cpu, wall = _per_step(hand, steps)
            times["hand"].append((cpu, wall))
            best_hand[name] = min(best_hand[name], wall)
        times["gradlab"].append(_per_step(ours, steps))
    best = {
        who: (min(t[0] for t in pairs), min(t[1] for t in pairs)) for who, pairs in times.items()
    }
    fastest = min(best_hand, key=best_hand.__getitem__)
    return (mode, engine, dtype, x.size, steps, fastest, best["hand"], best["gradlab"])


def _row(
    mode: str,
    engine: str,
    dtype: str,
    n: int,
    steps: int,
    fastest: str,
    hand: tuple[float, float],
    ours: tuple[float, float],
) -> str:
    """One row of the table: per-step times in µs and gradlab / expert, CPU and wall."""
    return (
        f"| {mode} | {engine} | {dtype} | {n:,} | {steps} | {fastest} | {hand[0] * 1e6:.2f} | "
        f"{ours[0] * 1e6:.2f} | {ours[0] / hand[0]:.2f} | {hand[1] * 1e6:.2f} | "
        f"{ours[1] * 1e6:.2f} | {ours[1] / hand[1]:.2f} |"
    )


def _machine(device: str) -> str:
    """What ran it: the GPU's name, or the CPU count."""
    if device == "gpu":
        import torch

        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
