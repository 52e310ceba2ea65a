"""A GradBench-shaped run: every implemented eval × every engine, through gradlab's tool.

Each case sends the eval's ``evaluate`` messages (inputs made as GradBench's eval makes
them, seed 0) to ``gradlab.gradbench.Tool`` in this one process, engine after engine, and
reads back the tool's own timings: the minimum of the ``"evaluate"`` runs for each function,
the first call (``"warmup"``: tracing and compilation) apart. It reports, as GradBench does,
derivative time / primal time, with both absolute times and the machine.

    python benchmarks/gradbench_run.py [--engines numpy,torch,jax] [--evals gmm,lstm]
        [--min-seconds 0.3] [--out benchmarks/results/gradbench-cpu]

Sizes: GradBench's default sizes where this 2-core, 24 GiB machine runs them in minutes;
the README of benchmarks/ says which were cut and why.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import gradlab
from gradlab.bench._harness import seconds as fmt
from gradlab.gradbench import Tool
from gradlab.gradbench._evals import EVALS, NESTED, VALUE, VECTOR

#: Per eval, the sizes run: a subset of GradBench's defaults (smallest, middle, largest that
#: fits here). LSTM at GradBench's c = 1024 only on eager engines: jax and XLA compile the
#: unrolled Python loop (a loss written once has no scan) for more than 8 minutes.
SIZES: dict[str, list[dict[str, int]]] = {
    "lse": [{"n": 2500}, {"n": 80000}, {"n": 1280000}],
    "llsq": [{"n": 16, "m": 128}, {"n": 1024, "m": 128}, {"n": 16392, "m": 128}],
    "gmm": [
        {"d": 2, "k": 5, "n": 1000},
        {"d": 10, "k": 25, "n": 1000},
        {"d": 20, "k": 50, "n": 1000},
    ],
    "kmeans": [
        {"k": 10, "n": 1000, "d": 8},
        {"k": 100, "n": 10000, "d": 16},
        {"k": 1000, "n": 10000, "d": 16},
    ],
    "det": [{"ell": 5}, {"ell": 8}, {"ell": 11}],
    "ode": [{"n": 1000, "s": 1}, {"n": 10000, "s": 10}, {"n": 100000, "s": 100}],
    "lstm": [{"l": 2, "c": 32, "b": 14}, {"l": 2, "c": 128, "b": 14}, {"l": 2, "c": 1024, "b": 14}],
    "particle": [{"w": 0}],
    "saddle": [{"start": 1}],
}
#: Engines that compile the whole loss: a Python loop in a loss unrolls, and XLA's compile
#: time grows faster than the loop (jax, ode at n = 1000: s = 10 took 2.6 s, s = 30 took
#: 20 s; lstm at c = 128 did not finish in 7 minutes, at c = 1024 in 8). These sizes are
#: left out for them.
COMPILING = {"jax", "tensorflow-xla", "torch-compile", "mlx"}
TOO_LONG_TO_COMPILE = {("ode", "s", 100), ("lstm", "c", 128), ("lstm", "c", 1024)}
NESTED_EVALS = ("particle", "saddle")
#: The nested variants run: rr only by default (torch: particle's ff takes about 7 minutes a
#: run here, 2.7 s for each of its 150-odd evaluations of the landing point).
NESTED_VARIANTS_RUN = {"rr"}


def run_case(
    tool: Tool, eval_name: str, sizes: dict[str, int], min_seconds: float
) -> dict[str, Any]:
    spec = EVALS[eval_name]
    input = spec.example(0, **sizes) | {"min_runs": 3, "min_seconds": min_seconds}
    if eval_name in NESTED_EVALS:  # a run takes seconds to minutes: one will do
        input |= {"min_runs": 1, "min_seconds": 0}
    row: dict[str, Any] = {"eval": eval_name, "sizes": sizes, "engine": tool.engine.name}
    for function, kind in spec.functions.items():
        if kind == NESTED and function not in NESTED_VARIANTS_RUN:
            continue
        reply = tool.answer(
            {"id": 0, "kind": "evaluate", "module": eval_name, "function": function, "input": input}
        )
        # particle and saddle: four variants of one procedure, each timed; no primal.
        role = function if kind == NESTED else "primal" if kind in (VALUE, VECTOR) else "derivative"
        if not reply.get("success"):
            row[role] = {"function": function, "error": reply.get("error", "")[:160]}
            continue
        times = [t["nanoseconds"] for t in reply["timings"] if t["name"] == "evaluate"]
        # The first call, apart (particle and saddle run eagerly and have none).
        first = next((t["nanoseconds"] for t in reply["timings"] if t["name"] == "warmup"), None)
        row[role] = {
            "function": function,
            "min_s": min(times) / 1e9,
            "runs": len(times),
            "first_s": None if first is None else first / 1e9,
        }
    primal, derivative = row.get("primal", {}), row.get("derivative", {})
    if "min_s" in primal and "min_s" in derivative:
        row["ratio"] = derivative["min_s"] / primal["min_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", default="numpy,torch,jax")
    parser.add_argument("--evals", default=",".join(SIZES))
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--nested-engines",
        default="torch",
        help="engines that run particle and saddle (jax's eager nesting takes ~10 min a run)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="a log of an earlier run (its JSON lines): cases already there are kept, not rerun",
    )
    parser.add_argument("--nested-variants", default="rr", help="e.g. rr,ff,fr,rf")
    args = parser.parse_args()
    NESTED_VARIANTS_RUN.clear()
    NESTED_VARIANTS_RUN.update(args.nested_variants.split(","))
    rows = []
    if args.resume:
        with open(args.resume, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.startswith("{")]
    done = {(row["eval"], json.dumps(row["sizes"]), row["engine"]) for row in rows}
    for engine_name in args.engines.split(","):
        tool = Tool(gradlab.get_engine(engine_name))
        for eval_name in args.evals.split(","):
            for sizes in SIZES[eval_name]:
                if eval_name in NESTED_EVALS and engine_name not in args.nested_engines.split(","):
                    continue
                if engine_name in COMPILING and any(
                    (eval_name, key, value) in TOO_LONG_TO_COMPILE for key, value in sizes.items()
                ):
                    continue
                if (eval_name, json.dumps(sizes), engine_name) in done:
                    continue
                begin = time.perf_counter()
                row = run_case(tool, eval_name, sizes, args.min_seconds)
                row["wall_s"] = time.perf_counter() - begin
                rows.append(row)
                print(json.dumps(row), flush=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {platform.system()}, "
        f"Python {platform.python_version()}"
    )
    lines = [
        "# GradBench evals through `gradlab gradbench`",
        "",
        f"Machine: {machine}; engines' versions in the JSON. Minimum of ≥ 3 runs and "
        f"≥ {args.min_seconds} s per function; first call (compilation) apart.",
        "",
        "| eval | sizes | engine | primal | derivative | ratio | first derivative call |",
        "|---|---|---|---|---|---|---|",
    ]
    nested = [row for row in rows if row["eval"] in NESTED_EVALS]
    for row in rows:
        if row in nested:
            continue
        primal, derivative = row.get("primal", {}), row.get("derivative", {})
        sizes = ", ".join(f"{k}={v}" for k, v in row["sizes"].items())
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
        note = derivative.get("error")
        lines.append(
            f"| {row['eval']} | {sizes} | {row['engine']} | {fmt(primal.get('min_s'))} | "
            f"{fmt(derivative.get('min_s')) if not note else 'not run: ' + note.split(';')[0]} | "
            f"{ratio} | {fmt(derivative.get('first_s'))} |"
        )
    if nested:
        lines += [
            "",
            "Nested derivatives (the fastest run of the whole procedure; eager, so no first "
            "call apart):",
            "",
            "| eval | engine | rr | ff | fr | rf | output (rr) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in nested:
            times = [
                fmt(row[v]["min_s"])
                if "min_s" in row.get(v, {})
                else ("failed" if v in row else "not run")
                for v in ("rr", "ff", "fr", "rf")
            ]
            lines.append(
                f"| {row['eval']} | {row['engine']} | {' | '.join(times)} | "
                f"{row.get('rr', {}).get('output', '—')} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        versions = {
            name: Tool(gradlab.get_engine(name)).start()["config"]
            for name in args.engines.split(",")
        }
        with open(f"{args.out}.json", "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "engines": versions, "rows": rows}, handle, indent=1)
        with open(f"{args.out}.md", "w", encoding="utf-8") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
