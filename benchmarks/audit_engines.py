"""gradlab on gradlab: ``gradlab.audit`` of every installed engine on every shipped problem.

Which engines give the same bits on a rerun, with one thread, eager or compiled; how far
accumulated mini-batches and the other precision move them. Writes a table per engine and
variation (``benchmarks/results/audit-cpu.md``) and every report (``audit-cpu.json``).

    python benchmarks/audit_engines.py [--engines numpy,torch] [--problems mlp] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import gradlab
from gradlab.problems._named import NAMED_PROBLEMS

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ("rerun", "threads", "compiled", "accumulation", "precision")


def _cell(reports: list[gradlab.AuditReport], name: str) -> str:
    """One engine's result for one variation over the problems it ran."""
    ran = [r[name] for r in reports if r[name].status in ("bitwise", "differs")]
    failed = sum(r[name].status == "failed" for r in reports)
    if failed:
        return f"failed on {failed}"
    if not ran:
        return "—"
    bitwise = sum(v.status == "bitwise" for v in ran)
    if bitwise == len(ran):
        return f"bitwise ({len(ran)}/{len(ran)})"
    worst = max(ran, key=lambda v: v.max_rho)
    ulps = sorted(v.max_ulps for v in ran)
    unit = " f32" if worst.unit == "float32" else ""
    return (
        f"rho ≤ {worst.max_rho:.1e}, {ulps[len(ulps) // 2]:.3g}{unit} ulps "
        f"({bitwise}/{len(ran)} bitwise)"
    )


def _rate(problem: gradlab.AbstractProblem, data: dict[str, Any], steps: int) -> float:
    """The largest of 1e-3, 1e-4, ... at which a fit on the problem's data descends without
    diverging (torch's, the same on every engine to round-off), so the audited fit is one a
    user would run."""
    for rate in (1e-3, 1e-4, 1e-5, 1e-6):
        result = gradlab.fit(
            problem, data, engine="torch", optimizer=gradlab.sgd(rate), steps=steps
        )
        if result.ok and result.losses[-1] < result.losses[0]:
            return rate
    return 1e-7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(gradlab.available_engines()))
    parser.add_argument("--problems", default=",".join(NAMED_PROBLEMS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=100, help="rows of data (default 100)")
    parser.add_argument("--variations", default=None, help="default: all")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "audit-cpu"))
    args = parser.parse_args()
    records: dict[str, dict[str, Any]] = {}
    reports: dict[str, list[gradlab.AuditReport]] = {}
    refused: dict[str, list[str]] = {}
    rates: dict[str, float] = {}
    started = time.perf_counter()
    for engine in args.engines.split(","):
        records[engine], reports[engine], refused[engine] = {}, [], []
        for name in args.problems.split(","):
            problem = NAMED_PROBLEMS[name]().sized(args.n)
            data = problem.make_data(args.n)
            if name not in rates:
                rates[name] = _rate(problem, data, max(args.steps, 1))
            try:
                report = gradlab.audit(
                    problem,
                    data,
                    engine=engine,
                    variations=args.variations,
                    steps=args.steps,
                    optimizer=gradlab.sgd(rates[name]),
                )
            except gradlab.GradlabError as error:
                refused[engine].append(f"{name}: {str(error).splitlines()[0]}")
                print(f"{engine:15} {name:22} refused: {str(error).splitlines()[0][:80]}")
                continue
            records[engine][name] = report.to_dict()
            reports[engine].append(report)
            verdicts = ", ".join(f"{v.name} {v.status}" for v in report.variations)
            print(f"{engine:15} {name:22} {verdicts}", flush=True)
    elapsed = time.perf_counter() - started
    lines = [
        "# gradlab.audit of every engine on every shipped problem",
        "",
        f"`python benchmarks/audit_engines.py`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU (the `device` variation "
        f"was not run); float64, the gradient at the problem's `initial_params` and a "
        f"{args.steps}-step sgd fit, data `make_data({args.n})`; {elapsed / 60:.0f} min. The "
        "learning rate per problem (the largest power of ten ≤ 1e-3 at which the fit "
        "descends): " + ", ".join(f"{name} {rate:g}" for name, rate in rates.items()) + ".",
        "",
        "Each cell: over the problems the engine runs, bitwise equal on all, or the largest "
        "rho over the problems and quantities, the median over the problems of the largest "
        "difference in float64 ulps (float32 ulps for precision; ulps at each quantity's "
        "largest magnitude), and how many were bitwise. `threads`: one thread in a new "
        "process against this one's "
        f"{os.cpu_count()}. `compiled`: torch ↔ torch-compile, tensorflow ↔ tensorflow-xla, "
        "jax engines under `jax.disable_jit`. `accumulation`: 4 mini-batches.",
        "",
    ]
    columns = [c for c in COLUMNS if args.variations is None or c in args.variations]
    lines += [
        "| engine | problems | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for engine, done in reports.items():
        cells = [_cell(done, column) for column in columns]
        lines.append(f"| {engine} | {len(done)} | " + " | ".join(cells) + " |")
    lines += ["", "Problems an engine does not run (its reason):", ""]
    lines += [f"- {engine}: {why}" for engine, whys in refused.items() for why in whys]
    with open(args.out + ".md", "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    with open(args.out + ".json", "w", encoding="utf-8") as file:
        json.dump(records, file, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
