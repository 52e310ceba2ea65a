"""torch.autograd (the ``torch`` engine) against torch.func (``torch-func``): which is faster, when.

One process, the two engines side by side in ``gradlab.benchmark`` (first call apart, each
call synchronised, minima), on the seed's model, logistic regression and an MLP at several
sizes, float32 and float64; prints each figure and the ratio torch-func / torch.

    python benchmarks/torch_func.py [--device cpu|cuda] [--sizes 100,10000,1000000]
"""

from __future__ import annotations

import argparse

import gradlab


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--min-time", type=float, default=0.2)
    args = parser.parse_args()
    engines = [gradlab.get_engine(name, device=args.device) for name in ("torch", "torch-func")]
    result = gradlab.benchmark(
        ["quadratic", "logistic_regression", "mlp"],
        [int(size) for size in args.sizes.split(",")],
        engines=engines,
        dtypes=("float32", "float64"),
        min_time=args.min_time,
        fit_steps=50,
    )
    rows: dict[tuple[str, int, str], dict[str, gradlab.BenchmarkCase]] = {}
    for case in result.cases:
        rows.setdefault((case.problem, case.n, case.dtype), {})[case.engine] = case
    print(f"device {args.device}; value-and-gradient (min) and fit per step, µs")
    print(
        f"{'problem':<20} {'n':>8} {'dtype':<8} {'torch':>9} {'func':>9} {'ratio':>6}"
        f" {'fit torch':>10} {'fit func':>9} {'ratio':>6} {'1st func':>9}"
    )
    for (problem, n, dtype), cases in rows.items():
        torch, func = cases["torch"], cases["torch-func"]
        if torch.gradient is None or func.gradient is None:
            continue  # skipped: see the case's note
        grad_t, grad_f = torch.gradient.min * 1e6, func.gradient.min * 1e6
        fit_t = torch.fit_per_step.min * 1e6 if torch.fit_per_step else float("nan")
        fit_f = func.fit_per_step.min * 1e6 if func.fit_per_step else float("nan")
        first = func.first_gradient or 0.0
        print(
            f"{problem:<20} {n:>8} {dtype:<8} {grad_t:>9.1f} {grad_f:>9.1f} {grad_f / grad_t:>6.2f}"
            f" {fit_t:>10.1f} {fit_f:>9.1f} {fit_f / fit_t:>6.2f} {first * 1e3:>7.0f}ms"
        )


if __name__ == "__main__":
    main()
