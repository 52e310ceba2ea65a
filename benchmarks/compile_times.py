"""What compiling the jax loop costs: a 2-block transformer, an MLP and the seed's quadratic.

On jax a fit is one compiled ``lax.scan`` (``gradlab.engines.JaxEngine``), and its first fit
pays for compiling it. This script times, each case in a fresh subprocess (empty compile
caches; jax's persistent cache off), the first fit (≈ tracing + compiling), a second fit of
the same problem (the compiled loop reused; the fastest of a few), a fit with
``trajectory=True`` after them (as
``compare_fits`` and ``gradlab demo --plot`` do), the same trajectory fit in a process of
its own, and a fit cut into stretches by a callback whose ``every`` does not divide
``steps`` (a remainder stretch). For each it counts the loops XLA compiled (jax's
``/jax/core/compile/backend_compile_duration`` events of the loop's program) and their
compile time.

    .venv/bin/python benchmarks/compile_times.py [--cases transformer,classifier,seed]
        [--unrolls 1,8,default] [--steps 20] [--json results/compile-times.json]

``default`` is ``JaxEngine()``'s own choice of ``unroll``. The transformer is pre-layernorm,
2 blocks, d_model 128, 4 heads, sequences of 64, a batch of 8 (≈ 400k parameters, float32,
Adam, ``--steps`` steps), written as a jax-native loss (``gradlab.NativeProblem``); the
classifier is ``recipes.mlp_frameworks()`` (an MLP on 120 points, Adam, 200 steps) and the
seed ``recipes.seed_numpy()`` (w·x² + b on 100 points, SGD, 800 steps), both in float64.
Each row names the loop body's size in jaxpr equations and the unroll used, where the
engine reports them.

Compile times of tens of seconds are robust to the noise of a shared machine; fits of
milliseconds are not (compare those only within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

D_MODEL, HEADS, SEQ, BATCH, BLOCKS, D_IN = 128, 4, 64, 8, 2, 16
#: The names jax gives the loop's compiled program (the jitted function's name).
LOOP_NAMES = ("jit(scan)", "jit(loop)")


def transformer_loss(params: Any, data: Any) -> Any:
    """Mean squared error of a pre-layernorm causal transformer over a batch of sequences."""
    import jax
    import jax.numpy as jnp

    def norm(x: Any, p: Any) -> Any:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]

    x = data["x"] @ params["embed"] + params["position"]
    batch, seq, width = x.shape
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    for block in params["blocks"]:
        h = norm(x, block["norm1"])
        q, k, v = jnp.split(h @ block["qkv"], 3, axis=-1)

        def heads(t: Any) -> Any:
            return t.reshape(batch, seq, HEADS, width // HEADS).transpose(0, 2, 1, 3)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(width // HEADS).astype(x.dtype)
        scores = jnp.where(causal, scores, jnp.asarray(-1e9, x.dtype))
        attended = jax.nn.softmax(scores, axis=-1) @ v
        x = x + attended.transpose(0, 2, 1, 3).reshape(batch, seq, width) @ block["out"]
        h = norm(x, block["norm2"])
        x = x + jax.nn.gelu(h @ block["up"] + block["up_bias"]) @ block["down"] + block["down_bias"]
    prediction = norm(x, params["final"]) @ params["head"]
    return jnp.mean((prediction - data["y"]) ** 2)


def transformer_case() -> tuple[Any, dict[str, np.ndarray], Any, Any, str]:
    import gradlab

    rng = np.random.default_rng(0)

    def dense(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, rows**-0.5, size=(rows, cols))

    def norm() -> dict[str, np.ndarray]:
        return {"scale": np.ones(D_MODEL), "bias": np.zeros(D_MODEL)}

    init = {
        "embed": dense(D_IN, D_MODEL),
        "position": rng.normal(0.0, 0.02, size=(SEQ, D_MODEL)),
        "blocks": [
            {
                "norm1": norm(),
                "qkv": dense(D_MODEL, 3 * D_MODEL),
                "out": dense(D_MODEL, D_MODEL),
                "norm2": norm(),
                "up": dense(D_MODEL, 4 * D_MODEL),
                "up_bias": np.zeros(4 * D_MODEL),
                "down": dense(4 * D_MODEL, D_MODEL),
                "down_bias": np.zeros(D_MODEL),
            }
            for _ in range(BLOCKS)
        ],
        "final": norm(),
        "head": dense(D_MODEL, 1),
    }
    x = rng.normal(size=(BATCH, SEQ, D_IN))
    y = np.cumsum(x[..., :1], axis=1) / np.sqrt(np.arange(1, SEQ + 1))[:, None]
    problem = gradlab.NativeProblem(name="transformer", jax=transformer_loss)
    return problem, {"x": x, "y": y}, init, gradlab.adam(1e-3), "float32"


def seed_case() -> tuple[Any, dict[str, np.ndarray], Any, Any, str]:
    import gradlab

    recipe = gradlab.recipes.seed_numpy()
    return recipe.problem, dict(recipe.data), recipe.init, recipe.optimizer, "float64"


def classifier_case() -> tuple[Any, dict[str, np.ndarray], Any, Any, str]:
    import gradlab

    recipe = gradlab.recipes.mlp_frameworks()
    return recipe.problem, dict(recipe.data), recipe.init, recipe.optimizer, "float64"


CASES: dict[str, Callable[[], tuple[Any, dict[str, np.ndarray], Any, Any, str]]] = {
    "transformer": transformer_case,
    "classifier": classifier_case,
    "seed": seed_case,
}
#: Steps per fit: the transformer's is --steps; the others are their recipes'.
STEPS = {"classifier": 200, "seed": 800}


def child(case: str, unroll: str, steps: int, scenario: str) -> dict[str, Any]:
    """One scenario in this (fresh) process: the fits it makes, each timed, with the loops
    compiled during it."""
    import jax

    import gradlab

    compiles: list[tuple[str, float]] = []

    def listen(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append((str(kwargs.get("fun_name", "")), duration_secs))

    jax.monitoring.register_event_duration_secs_listener(listen)
    problem, data, init, optimizer, dtype = CASES[case]()
    engine = gradlab.engines.JaxEngine() if unroll == "default" else None
    if engine is None:
        engine = gradlab.engines.JaxEngine(unroll=int(unroll))

    def fit(**options: Any) -> dict[str, Any]:
        compiles.clear()
        began = time.perf_counter()
        result = gradlab.fit(
            problem,
            data,
            engine=engine,
            optimizer=optimizer,
            steps=options.pop("steps", steps),
            init=init,
            dtype=dtype,
            **options,
        )
        wall = time.perf_counter() - began
        loops = [seconds for name, seconds in compiles if name in LOOP_NAMES]
        return {
            "wall_s": wall,
            "loops_compiled": len(loops),
            "loop_compile_s": sum(loops),
            "all_compiles": len(compiles),
            "final_loss": float(result.losses[-1]),
        }

    fits: dict[str, Any] = {}
    if scenario == "plain":
        fits["first fit"] = fit()
        # The fastest of a few: a fit of milliseconds is noise on a shared machine.
        again = [fit() for _ in range(3 if case == "transformer" else 20)]
        fits["second fit"] = min(again, key=lambda row: row["wall_s"])
        fits["trajectory after"] = fit(trajectory=True)
        fits["trajectory again"] = fit(trajectory=True)
    elif scenario == "trajectory":
        fits["trajectory first"] = fit(trajectory=True)
    elif scenario == "stretches":
        # Stretches of `every` steps and a shorter last one: 2.5 stretches.
        every = max(1, steps * 2 // 5)
        fits["callback, remainder"] = fit(callback=lambda *_: None, every=every)
    info = {
        "unroll_used": engine.unroll,
        "body_equations": None,
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }
    # What the engine learnt of the loop body (where it keeps that): the largest body.
    bodies = getattr(getattr(gradlab.engines._jax, "_BODIES", None), "_items", {})
    if bodies:
        largest = max(bodies.values(), key=lambda body: body.size)
        info["body_equations"] = largest.size
        if info["unroll_used"] is None:
            info["unroll_used"] = largest.unroll
    return {"case": case, "unroll": unroll, "steps": steps, "scenario": scenario, **info, **fits}


def run_child(case: str, unroll: str, steps: int, scenario: str) -> dict[str, Any]:
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, __file__, "--child", case, unroll, str(steps), scenario]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def machine() -> str:
    import jax

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="transformer,classifier,seed")
    parser.add_argument("--unrolls", default="1,8,default")
    parser.add_argument("--steps", type=int, default=20, help="transformer steps per fit")
    parser.add_argument("--scenarios", default="plain,trajectory,stretches")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, unroll, steps, scenario = args.child
        print(json.dumps(child(case, unroll, int(steps), scenario)))
        return

    print(f"machine: {machine()}")
    rows = []
    header = (
        f"{'case':12} {'eqns':>5} {'unroll':>7} {'used':>5} {'fit':20} {'wall s':>8} "
        f"{'loops':>6} {'loop compile s':>15}"
    )
    print(header)
    for case in args.cases.split(","):
        steps = STEPS.get(case, args.steps)
        for unroll in args.unrolls.split(","):
            for scenario in args.scenarios.split(","):
                row = run_child(case, unroll, steps, scenario)
                rows.append(row)
                for name, value in row.items():
                    if isinstance(value, dict):
                        print(
                            f"{case:12} {row['body_equations']!s:>5} {unroll:>7} "
                            f"{row['unroll_used']!s:>5} {name:20} "
                            f"{value['wall_s']:8.3f} {value['loops_compiled']:6d} "
                            f"{value['loop_compile_s']:15.2f}",
                            flush=True,
                        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
