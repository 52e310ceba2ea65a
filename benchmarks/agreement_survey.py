"""Survey how far each engine's gradient strays from the float64 hand gradient.

Draws random problems (n up to 1000, d up to 5, data and parameters in moderate ranges),
evaluates every installed engine in float64 and float32 at the same float32-representable
point, and prints the worst rho seen per problem, engine and dtype, next to gradlab's
tolerance. These are the figures docs/agreement.md quotes.

    python benchmarks/agreement_survey.py [--trials 300] [--seed 0] [--hessians]

With ``--hessians`` it compares full Hessians (gradlab.hessian) with the hand-derived one
instead of gradients.
"""

from __future__ import annotations

import argparse

import numpy as np

import gradlab


def random_case(problem: gradlab.AbstractProblem, rng: np.random.Generator) -> tuple[dict, dict]:
    n = int(rng.choice([1, 3, 10, 64, 200, 1000]))
    d = int(rng.integers(1, 6))
    if isinstance(problem, gradlab.Quadratic):
        data = {"x": rng.uniform(-2, 2, n), "y": rng.uniform(-5, 5, n)}
        params = {"w": rng.uniform(-3, 3), "b": rng.uniform(-3, 3)}
    else:
        if isinstance(problem, gradlab.LogisticRegression):
            y = rng.integers(0, 2, n).astype(float)
        else:
            y = rng.uniform(-5, 5, n)
        data = {"x": rng.uniform(-2, 2, (n, d)), "y": y}
        params = {"w": rng.uniform(-3, 3, d), "b": rng.uniform(-3, 3)}
    # Round to float32 so that float32 and float64 runs see the same numbers.
    data = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in data.items()}
    params = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in params.items()}
    return data, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hessians", action="store_true", help="compare Hessians instead")
    args = parser.parse_args()
    what = "Hessian" if args.hessians else "gradient"

    def derivative(problem: gradlab.AbstractProblem, data: dict, params: dict, **how: str) -> dict:
        if args.hessians:
            blocks = gradlab.hessian(problem, data, params, **how)
            return {f"{a},{b}": block for a, row in blocks.items() for b, block in row.items()}
        return gradlab.value_and_grad(problem, data, params, **how)[1]

    rng = np.random.default_rng(args.seed)
    problems = [gradlab.Quadratic(), gradlab.LinearRegression(), gradlab.LogisticRegression()]
    engines = gradlab.available_engines()
    worst: dict[tuple[str, str, str], float] = {}
    for _ in range(args.trials):
        for problem in problems:
            data, params = random_case(problem, rng)
            truth = derivative(problem, data, params, engine="numpy")
            for engine in engines:
                for dtype in ("float64", "float32"):
                    grads = derivative(problem, data, params, engine=engine, dtype=dtype)
                    key = (problem.name, engine, dtype)
                    worst[key] = max(worst.get(key, 0.0), gradlab.max_rho(truth, grads))
    print(f"worst rho against the float64 hand {what}, {args.trials} random cases each")
    print(f"{'problem':<20} {'engine':<7} {'dtype':<8} {'worst rho':>10} {'tolerance':>10}")
    for (problem, engine, dtype), value in sorted(worst.items()):
        limit = gradlab.tolerance(dtype, against_fd=engine == "fd")
        print(f"{problem:<20} {engine:<7} {dtype:<8} {value:>10.2e} {limit:>10.0e}")


if __name__ == "__main__":
    main()
