"""The planted-fault table of ``locate``: every fault of the tests' ports, and false alarms.

The ports (``tests/comparison/ports.py``): an MLP, a small CNN, a pre-layernorm transformer
block and an LSTM, each written in torch and in jax with the same points tapped, and 65
single faults planted in one port at a time (forward faults; wrong custom backward passes,
``torch.autograd.Function`` and ``jax.custom_vjp``; loss reductions). For each fault: the
point and direction expected, those ``locate`` names first, the rank of the expected point
among the points beyond their bounds in its direction's order, rho and the bound there. Then
the fault-free ports over seeds in float64 and float32: how many reports flag anything, the
largest rho / bound seen, and the time of one ``locate``.

    python benchmarks/locate_faults.py [--seeds 10] [--models mlp,cnn,transformer,lstm]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import gradlab

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests", "comparison"))
import ports


def _flagged(report: gradlab.DivergenceReport, direction: str) -> list[str]:
    """The points (or parameters) beyond their bounds in ``direction``, in its order."""
    if direction == "gradient":
        return [
            path
            for path, (rhos, bound) in report.gradients.items()
            if any(value > bound for value in rhos.values())
        ]
    points = list(report.points)[:: -1 if direction == "backward" else 1]
    return [
        point.name
        for point in points
        if point.bound(direction) is not None and point.rho(direction) > point.bound(direction)
    ]


def faults(models: list[str]) -> int:
    """Print the fault table; return how many faults were not named first."""
    print("| model | fault | port | expected | named first | rank | rho | bound |")
    print("|---|---|---|---|---|---|---|---|")
    missed = 0
    for fault in ports.FAULTS:
        if fault.model not in models:
            continue
        problem, data, params = ports.problem(fault.model, fault.name, seed=0)
        report = gradlab.locate(problem, data, params, dtype="float64")
        first = report.first
        named = (first.name, first.direction) if first else (None, None)
        expected = (fault.expected_point, fault.expected_direction)
        flagged = _flagged(report, fault.expected_direction)
        rank = flagged.index(fault.expected_point) + 1 if fault.expected_point in flagged else "—"
        missed += named != expected
        print(
            f"| {fault.model} | {fault.name} | {fault.port} | {expected[0]} {expected[1]} | "
            f"{named[0]} {named[1]} | {rank} | {first.rho if first else float('nan'):.1e} | "
            f"{first.bound if first else float('nan'):.1e} |",
            flush=True,
        )
    return missed


def clean(models: list[str], seeds: int) -> int:
    """Print the fault-free ports' false alarms and timings; return the false alarms."""
    print("\n| model | dtype | runs | false alarms | largest rho / bound | median s |")
    print("|---|---|---|---|---|---|")
    alarms = 0
    for model in models:
        for dtype in ("float64", "float32"):
            flagged, worst, times = 0, 0.0, []
            for seed in range(seeds):
                problem, data, params = ports.problem(model, None, seed=seed)
                start = time.perf_counter()
                report = gradlab.locate(problem, data, params, dtype=dtype, seed=seed)
                times.append(time.perf_counter() - start)
                flagged += not report.ok
                for point in report.points:
                    for direction in ("forward", "backward"):
                        bound = point.bound(direction)
                        if bound:
                            worst = max(worst, point.rho(direction) / bound)
                for rhos, bound in report.gradients.values():
                    worst = max(worst, max(rhos.values(), default=0.0) / bound)
            alarms += flagged
            print(
                f"| {model} | {dtype} | {seeds} | {flagged} | {worst:.3f} | "
                f"{np.median(times):.2f} |",
                flush=True,
            )
    return alarms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--models", default=",".join(ports.MODELS))
    args = parser.parse_args()
    models = args.models.split(",")
    missed = faults(models)
    alarms = clean(models, args.seeds)
    total = sum(fault.model in models for fault in ports.FAULTS)
    print(f"\nnamed first: {total - missed} of {total} faults; false alarms: {alarms}")


if __name__ == "__main__":
    main()
