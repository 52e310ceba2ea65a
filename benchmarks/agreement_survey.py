"""Survey how far each engine's gradient strays from the float64 hand gradient.

Draws random problems (n up to 1000, d up to 5, data and parameters in moderate ranges),
evaluates every installed engine in float64 and float32 at the same float32-representable
point, and prints the worst rho seen per problem, engine and dtype, next to gradlab's
tolerance. These are the figures docs/agreement.md quotes.

    python benchmarks/agreement_survey.py [--trials 300] [--seed 0] [--hessians] [--device gpu]
        [--engines numpy,torch,torch-func,jax,mlx,tensorflow]

With ``--device gpu`` the engines are torch and jax on the GPU (torch-compile too), each
against the float64 hand gradient computed on the CPU.

With ``--hessians`` it compares full Hessians (gradlab.hessian) with the hand-derived one
instead of gradients.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import gradlab


def random_case(name: str, rng: np.random.Generator) -> tuple[gradlab.AbstractProblem, dict, dict]:
    """A random instance of the named problem: hyper-parameters, data and a point."""
    n = int(rng.choice([1, 3, 10, 64, 200, 1000]))
    d = int(rng.integers(1, 6))

    def uniform(low: float, high: float, shape: object = ()) -> np.ndarray:
        return rng.uniform(low, high, shape)

    problem: gradlab.AbstractProblem
    if name == "quadratic":
        problem = gradlab.Quadratic()
        data = {"x": uniform(-2, 2, n), "y": uniform(-5, 5, n)}
    elif name in ("linear_regression", "logistic_regression"):
        problem = (
            gradlab.LinearRegression()
            if name == "linear_regression"
            else (gradlab.LogisticRegression())
        )
        y = rng.integers(0, 2, n).astype(float) if "logistic" in name else uniform(-5, 5, n)
        data = {"x": uniform(-2, 2, (n, d)), "y": y}
    elif name == "polynomial_regression":
        problem = gradlab.PolynomialRegression(int(rng.integers(0, 5)))
        data = {"x": uniform(-1.5, 1.5, n), "y": uniform(-5, 5, n)}
    elif name == "least_squares":
        problem = gradlab.LeastSquares(int(rng.integers(1, 7)))
        data = problem.make_data(n)  # type: ignore[attr-defined]
    elif name == "softmax_regression":
        problem = gradlab.SoftmaxRegression(int(rng.integers(2, 5)))
        labels = rng.integers(0, problem.classes, n)  # type: ignore[attr-defined]
        data = {"x": uniform(-2, 2, (n, d)), "y": np.eye(problem.classes)[labels]}  # type: ignore[attr-defined]
    elif name == "mlp":
        problem = gradlab.MLP((int(rng.integers(1, 9)),), str(rng.choice(["tanh", "sigmoid"])))
        data = problem.make_data(n, d=d, seed=int(rng.integers(1000)))  # type: ignore[attr-defined]
    elif name == "rosenbrock":
        problem, data = gradlab.Rosenbrock(int(rng.integers(2, 9))), {}
    elif name == "log_sum_exp":
        problem, data = gradlab.LogSumExp(int(rng.integers(1, 51))), {}
    else:
        problem = gradlab.GMM(int(rng.integers(1, 5)), min(d, 4))
        data = {"x": uniform(-3, 3, (n, min(d, 4)))}
    shapes = problem.param_shapes(problem.check_data(data)) or {}
    spread = {"log_sum_exp": 30.0, "gmm": 1.0, "mlp": 1.5}.get(name, 3.0)
    params = {key: uniform(-spread, spread, shape) for key, shape in shapes.items()}
    # Round to float32 so that float32 and float64 runs see the same numbers.
    data = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in data.items()}
    params = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in params.items()}
    if name == "softmax_regression":  # one-hot rows survive the rounding exactly
        assert np.all(data["y"].sum(axis=1) == 1)
    return problem, data, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hessians", action="store_true", help="compare Hessians instead")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--engines",
        default=None,
        help="comma-separated engines (default: every installed one but the engines that "
        "compile per shape: torch-compile, tensorflow-xla)",
    )
    args = parser.parse_args()
    what = "Hessian" if args.hessians else "gradient"

    def derivative(problem: gradlab.AbstractProblem, data: dict, params: dict, **how: Any) -> dict:
        if args.hessians:
            blocks = gradlab.hessian(problem, data, params, **how)
            return {f"{a},{b}": block for a, row in blocks.items() for b, block in row.items()}
        return gradlab.value_and_grad(problem, data, params, **how)[1]

    rng = np.random.default_rng(args.seed)
    names = [
        "quadratic",
        "linear_regression",
        "logistic_regression",
        "polynomial_regression",
        "least_squares",
        "softmax_regression",
        "mlp",
        "rosenbrock",
        "log_sum_exp",
        "gmm",
    ]
    # torch-compile and tensorflow-xla would compile afresh for every random shape: they are
    # left out unless named.
    engines: list[Any] = (
        args.engines.split(",")
        if args.engines
        else [
            name
            for name in gradlab.available_engines()
            if name not in ("torch-compile", "tensorflow-xla")
        ]
    )
    if args.device == "gpu":
        engines = [
            gradlab.get_engine("torch", device="cuda"),
            gradlab.get_engine("jax", device="gpu"),
        ]
    worst: dict[tuple[str, str, str], float] = {}
    for _ in range(args.trials):
        for name in names:
            problem, data, params = random_case(name, rng)
            if args.hessians and not problem.has_hand_hvp:
                continue  # no hand-derived Hessian to hold the engines to
            truth = derivative(problem, data, params, engine="numpy")
            for engine in engines:
                for dtype in ("float64", "float32"):
                    try:
                        grads = derivative(problem, data, params, engine=engine, dtype=dtype)
                    except gradlab.NotSupported:  # complex step through a non-analytic loss
                        continue
                    key = (problem.name, _label(engine), dtype)
                    worst[key] = max(worst.get(key, 0.0), gradlab.max_rho(truth, grads))
    print(f"worst rho against the float64 hand {what}, {args.trials} random cases each")
    print(f"{'problem':<20} {'engine':<12} {'dtype':<8} {'worst rho':>10} {'tolerance':>10}")
    for (problem, engine, dtype), value in sorted(worst.items()):
        limit = gradlab.tolerance(dtype, against_fd=engine == "fd")
        print(f"{problem:<20} {engine:<12} {dtype:<8} {value:>10.2e} {limit:>10.0e}")


def _label(engine: Any) -> str:
    """An engine's name, with its device when it is not the CPU."""
    if isinstance(engine, str):
        return engine
    device = str(engine.describe().get("device", "cpu"))
    return engine.name if device.startswith("cpu") else f"{engine.name}:{device.split(':')[0]}"


if __name__ == "__main__":
    main()
