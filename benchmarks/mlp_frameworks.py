"""The MLP classifier written in torch, JAX and NumPy: how closely, and how fast, they agree.

``gradlab.recipes.mlp_frameworks()`` is one model implemented three times (a
``torch.nn.Sequential`` through ``functional_call``, a JAX function with Flax-style kernels,
NumPy with hand-written backpropagation and its R-operator). Each engine differentiates its
own framework's implementation. This script prints, per dtype and engine:

- the gradient's largest rho against the hand-derived one, at the recipe's start;
- the Hessian-vector product's largest rho against the hand-derived one, along a seeded
  random tangent;
- the 200-step Adam fit's path rho against the NumPy fit (largest over every step);
- the fit's time per step: the fastest of ``--repeats`` fits after a warm-up, every engine
  in this process, one after another (compilation is in the warm-up, reported apart as
  the first fit's time).

    .venv/bin/python benchmarks/mlp_frameworks.py [--repeats 5] [--engines numpy,torch,...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gradlab
from gradlab import recipes
from gradlab._agreement import path_rho
from gradlab._tree import tree_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", default="numpy,torch,jax,torch-compile,fd")
    args = parser.parse_args()
    engines = [name for name in args.engines.split(",") if name in gradlab.available_engines()]
    recipe = recipes.mlp_frameworks()
    problem, data, init = recipe.problem, recipe.data, recipe.init
    rng = np.random.default_rng(0)
    tangent = tree_map(lambda value: rng.standard_normal(np.shape(value)), init)
    header = (
        f"{'dtype':8} {'engine':14} {'grad rho':>10} {'hvp rho':>10} {'path rho':>10} "
        f"{'µs/step':>10} {'first fit s':>12}"
    )
    print(f"{recipe.name}: {problem!r}, {recipe.steps} Adam steps, n = {len(data['x'])}")
    print(header)
    for dtype in ("float64", "float32"):
        _, hand = gradlab.value_and_grad(problem, data, init, engine="numpy", dtype=dtype)
        hvp_hand = gradlab.hvp(problem, data, init, tangent, engine="numpy", dtype=dtype)
        paths = {}
        for engine in engines:
            _, grads = gradlab.value_and_grad(problem, data, init, engine=engine, dtype=dtype)
            grad_rho = gradlab.max_rho(hand, grads)
            product = gradlab.hvp(problem, data, init, tangent, engine=engine, dtype=dtype)
            hvp_rho = gradlab.max_rho(hvp_hand, product)

            def run(
                trajectory: bool = False, engine: str = engine, dtype: str = dtype
            ) -> gradlab.FitResult:
                return gradlab.fit(
                    problem,
                    data,
                    engine=engine,
                    optimizer=recipe.optimizer,
                    steps=recipe.steps,
                    init=init,
                    dtype=dtype,
                    trajectory=trajectory,
                )

            start = time.perf_counter()
            run()
            first = time.perf_counter() - start
            repeats = 1 if engine == "fd" else args.repeats
            per_step = min(run().time_per_step for _ in range(repeats))
            paths[engine] = run(trajectory=True).trajectory
            path = path_rho(paths["numpy"], paths[engine]).max() if "numpy" in paths else 0.0
            print(
                f"{dtype:8} {engine:14} {grad_rho:10.1e} {hvp_rho:10.1e} {path:10.1e} "
                f"{per_step * 1e6:10.1f} {first:12.3f}"
            )


if __name__ == "__main__":
    main()
