"""The benchmark matrix and the speed targets, written to ``benchmarks/results/``.

Runs, in one process:

1. ``gradlab.benchmark`` over engines numpy, torch, jax and torch-compile; problems
   Quadratic, LinearRegression, LogisticRegression; n = 10², …, 10⁶; float32 and float64;
2. peak memory of a fit at n = 10⁶ (float64) per engine, each in a fresh process;
3. the abstraction tax: gradlab.fit on the seed recipe against hand-written loops
   (``seed_overhead.py``), at n = 100 and, for numpy, n = 10⁴;

then states every target of the speed issue with its measured ratio and whether it is met,
and writes ``STEM.json`` (everything) and ``STEM.md`` (the targets, then the full table).

    python benchmarks/run_matrix.py [--out benchmarks/results/cpu] [--min-time 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

import gradlab

sys.path.insert(0, os.path.dirname(__file__))
from seed_overhead import Pair, compare, jax_loop, overhead

PROBLEMS = ["quadratic", "linear_regression", "logistic_regression"]
SIZES = [100, 1_000, 10_000, 100_000, 1_000_000]
AUTODIFF = ["torch", "jax", "torch-compile"]


def targets(
    matrix: gradlab.BenchmarkResult, tax: list[Pair], tax_large: list[Pair]
) -> list[dict[str, Any]]:
    """Each target: what it asks, the measured figure, and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(
        target: str, measured: str, value: float | None, limit: float, lower_is_better: bool = True
    ) -> None:
        met = None if value is None else (value <= limit if lower_is_better else value >= limit)
        rows.append(
            {"target": target, "measured": measured, "value": value, "limit": limit, "met": met}
        )

    by_engine = {pair.engine + "|" + pair.hand: pair for pair in tax}
    for engine, hand, limit in (
        ("numpy", "seed NumPy loop", 1.25),
        ("torch", "seed torch loop", 1.10),
        ("jax", "jit+fori_loop", 1.10),
    ):
        pair = by_engine.get(engine + "|" + hand)
        if pair:
            add(
                f"abstraction tax {engine}, n=100: gradlab/hand ≤ {limit}",
                pair.brief(),
                pair.ratio,
                limit,
            )
    for pair in tax_large:
        if pair.engine == "numpy":
            add("abstraction tax numpy, n=10⁴: gradlab/hand ≤ 1.10", pair.brief(), pair.ratio, 1.10)
    seed_pairs = [pair for pair in tax if pair.hand == "seed NumPy loop"]
    if seed_pairs:
        fastest = min(seed_pairs, key=lambda pair: min(pair.ours))
        speedup = min(fastest.theirs) / min(fastest.ours)
        add(
            "fast path: fastest engine ≥ 10× the seed's NumPy loop (seed recipe)",
            f"{fastest.engine}: {speedup:.1f}× (gradlab {min(fastest.ours) * 1e6:.2f} vs seed "
            f"NumPy loop {min(fastest.theirs) * 1e6:.2f} µs/step)",
            speedup,
            10.0,
            False,
        )
    for problem in PROBLEMS:
        for engine in AUTODIFF:
            cases = matrix.select(problem=problem, engine=engine, n=1_000_000, dtype="float64")
            if cases:
                ratio = cases[0].ratio
                add(
                    f"cheap gradient {engine} {problem}, n=10⁶ float64: grad/obj ≤ 3",
                    f"{ratio:.2f}",
                    ratio,
                    3.0,
                )
    floor = matrix.select(problem="quadratic", n=1_000_000, dtype="float64")
    if floor:
        best = min(floor, key=lambda case: case.floor_ratio or float("inf"))
        add(
            "memory floor: fastest value+grad on quadratic n=10⁶ float64 ≤ 3× np.dot",
            ", ".join(f"{case.engine} {case.floor_ratio:.2f}×" for case in floor),
            best.floor_ratio,
            3.0,
        )
    return rows


def markdown(
    matrix: gradlab.BenchmarkResult,
    memory: gradlab.BenchmarkResult,
    rows: list[dict[str, Any]],
    tax: list[Pair],
    tax_large: list[Pair],
) -> str:
    lines = [
        "# Speed targets, measured side by side",
        "",
        f"Machine: {matrix.machine()}",
        "",
        "Reproduce: `.venv/bin/python benchmarks/run_matrix.py` (in the environment the "
        "README's test command makes).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
        lines.append(f"| {row['target']} | {row['measured']} | {met} |")
    lines += ["", "## Abstraction tax (µs per step, min over interleaved repeats)", "", "```"]
    lines += [pair.line() for pair in tax]
    lines += ["n = 10⁴ (numpy), and jax over 8000 steps:"] + [pair.line() for pair in tax_large]
    lines += ["```", "", "## Peak memory of a fit, n = 10⁶, float64 (fresh process per engine)", ""]
    lines += [
        "Resident memory the fit adds at its peak over what the process held before it; the "
        "same for a fit four times as long in brackets (equal: nothing is kept per step).",
        "",
        "| problem | engine | data MB | peak MB | peak MB, 4× steps |",
        "|---|---|---|---|---|",
    ]
    for case in memory.select():
        if case.peak_memory is not None and case.peak_memory_4x_steps is not None:
            lines.append(
                f"| {case.problem} | {case.engine} | {(case.data_bytes or 0) / 2**20:.1f} | "
                f"{case.peak_memory / 2**20:.1f} | {case.peak_memory_4x_steps / 2**20:.1f} |"
            )
    lines += ["", "## The matrix", "", "![time against n](cpu.png)", ""]
    lines += matrix.to_markdown().split("\n")[4:]  # the table, without the title and machine
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu"))
    parser.add_argument("--min-time", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default=None, help="gpu: run torch and jax on the GPU")
    args = parser.parse_args()
    installed = gradlab.available_engines()
    engines = [name for name in ["numpy", *AUTODIFF] if name in installed]
    if args.device:
        engines = [
            gradlab.get_engine("torch", device="cuda"),
            gradlab.get_engine("torch-compile", device="cuda"),
            gradlab.get_engine("jax", device="gpu"),
        ]
    matrix = gradlab.benchmark(
        PROBLEMS,
        SIZES,
        engines=engines,
        dtypes="float32,float64",
        min_time=args.min_time,
        fit_steps=800,
        progress=True,
    )
    print(matrix, flush=True)
    memory = gradlab.benchmark(
        PROBLEMS,
        [1_000_000],
        engines=engines,
        dtypes="float64",
        min_time=0.01,
        fit_steps=20,
        memory=not args.device,
        progress=True,
    )
    tax = overhead(args.repeats, 100)
    tax_large = [
        pair for pair in overhead(max(3, args.repeats // 3), 10_000) if pair.engine == "numpy"
    ]
    if "jax" in installed:
        # The per-step part of the jax tax: the same pair at 10× the steps, where gradlab's
        # fixed per-call costs (checks, copies, provenance) are spread ten times thinner.
        recipe = gradlab.recipes.seed_numpy()
        hand = jax_loop(1e-3, 8000)
        x, y = recipe.data["x"], recipe.data["y"]
        tax_large.append(
            compare(
                "jax",
                "jit+fori_loop (8000 steps)",
                lambda: recipe.run("jax", steps=8000),
                lambda: hand(x, y, 0.0, 0.0),
                max(3, args.repeats // 3),
                8000,
            )
        )
    for pair in tax + tax_large:
        print(pair.line())
    rows = targets(matrix, tax, tax_large)
    for row in rows:
        print(f"{'met' if row['met'] else 'NOT MET':8} {row['target']}: {row['measured']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as file:
        json.dump(
            gradlab._output.jsonable(
                {
                    "targets": rows,
                    "tax": [
                        {
                            "engine": p.engine,
                            "hand": p.hand,
                            "gradlab": p.ours,
                            "hand_times": p.theirs,
                            "ratio": p.ratio,
                        }
                        for p in tax + tax_large
                    ],
                    "memory": memory.to_dict(),
                    "matrix": matrix.to_dict(),
                }
            ),
            file,
            indent=1,
        )
    with open(args.out + ".md", "w", encoding="utf-8") as file:
        file.write(markdown(matrix, memory, rows, tax, tax_large))
    with contextlib.suppress(gradlab.MissingDependency):  # no matplotlib: no picture
        matrix.plot(args.out + ".png")
    print(f"written {args.out}.json, {args.out}.md and {args.out}.png")


if __name__ == "__main__":
    main()
