"""How sharp a reference is the complex step? Its gradient against the exact engines and fd.

Draws random instances of every shipped problem (as ``agreement_survey.py`` does) and
prints, per problem, the worst rho over the trials between the complex-step gradient and
the hand-derived, torch, jax and fd gradients, all in float64; problems whose loss is not
analytic (a max shift) are listed with complex-step's refusal. These are the figures in
docs/agreement.md.

    python benchmarks/complex_step.py [--trials 50] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
from agreement_survey import random_case

import gradlab

PROBLEMS = (
    "quadratic",
    "linear_regression",
    "logistic_regression",
    "polynomial_regression",
    "least_squares",
    "mlp",
    "rosenbrock",
    "softmax_regression",
    "gmm",
    "log_sum_exp",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    others = [
        name for name in ("numpy", "torch", "jax", "fd") if name in gradlab.available_engines()
    ]
    print(f"| problem | {' | '.join(f'rho vs {name}' for name in others)} |")
    print(f"|---|{'---|' * len(others)}")
    for name in PROBLEMS:
        worst = dict.fromkeys(others, 0.0)
        refusal = None
        for _ in range(args.trials):
            problem, data, params = random_case(name, rng)
            try:
                report = gradlab.compare_gradients(
                    problem, data, params, engines=others, reference="complex-step"
                )
            except gradlab.NotSupported as error:
                refusal = str(error).split(" through ")[-1].split(":")[0]
                break
            for other in others:
                worst[other] = max(worst[other], report.verdicts[other].rho)
        if refusal is not None:
            print(f"| {name} | refused: {refusal} is not analytic |{' |' * (len(others) - 1)}")
        else:
            print(f"| {name} | {' | '.join(f'{worst[o]:.1e}' for o in others)} |")


if __name__ == "__main__":
    main()
