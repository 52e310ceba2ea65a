"""Data-parallel checks that need fresh processes, run by ``tests/engines/test_parallel.py``
(and its cases and measures, by ``tests/engines/_jax_ranks.py``).

``python tests/engines/_parallel_ranks.py torchrun`` is a rank of a launch whose environment
torchrun would set (RANK, ...): it compares data-parallel gradients and fits with the
single-process ones computed in the same process, checks what the ranks refuse, and
prints one JSON line (rank 0): the largest rho of each.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import numpy as np

import gradlab
from gradlab._tree import tree_map
from gradlab.problems._classifier import mlp_classifier


@functools.cache
def cases(rows: int) -> list[tuple[Any, dict[str, np.ndarray], Any]]:
    """Every shipped problem that declares its reduction, with ``rows`` rows of data and a
    random point (not a start where gradients vanish)."""
    rng = np.random.default_rng(rows)
    problems = [
        gradlab.Quadratic(),
        gradlab.LinearRegression(),
        gradlab.LogisticRegression(),
        gradlab.PolynomialRegression(),
        gradlab.SoftmaxRegression(),
        gradlab.MLP(),
        gradlab.LeastSquares(),
        mlp_classifier((2, 4, 3)),
    ]
    out = []
    for problem in problems:
        data = problem.make_data(rows, seed=1)
        start = problem.initial_params(problem.check_data(data), seed=2)
        point = tree_map(
            lambda leaf: np.asarray(leaf) + rng.normal(scale=0.3, size=np.shape(leaf)), start
        )
        out.append((problem, data, point))
    kmeans = gradlab.KMeans(k=3, d=2)
    out.append(
        (kmeans, {"points": rng.normal(size=(rows, 2))}, {"centroids": rng.normal(size=(3, 2))})
    )
    return out


def gradient_rho(engine: Any, single: str, rows: int, first: int | None = None) -> float:
    """The largest rho between ``engine``'s losses and gradients and ``single``'s (on the
    ``first`` problems only, if given)."""
    worst = 0.0
    for problem, data, point in cases(rows)[:first]:
        loss, grads = gradlab.value_and_grad(problem, data, point, engine=engine)
        loss_1, grads_1 = gradlab.value_and_grad(problem, data, point, engine=single)
        worst = max(worst, float(gradlab.rho(loss, loss_1)), gradlab.max_rho(grads, grads_1))
    return worst


def fit_rho(engine: Any, single: str, rank: int | None = None) -> float:
    """The largest rho between the paths of a 100-step Adam fit with mini-batches; with a
    ``rank``, each rank passes only its own rows (rows 0-4 on rank 0, 5-10 on rank 1), and
    the mini-batches are still the ones one process draws from all 11."""
    problem = gradlab.MLP()
    data = problem.make_data(11, seed=3)
    mine = data
    if rank is not None:
        mine = {name: value[:5] if rank == 0 else value[5:] for name, value in data.items()}
    options: dict[str, Any] = dict(
        optimizer=gradlab.adam(0.05),
        steps=100,
        batch_size=5 if rank is None else 4,
        trajectory=True,
        init=problem.initial_params(data, seed=4),
    )
    spread = gradlab.fit(problem, mine, engine=engine, **options)
    alone = gradlab.fit(problem, data, engine=single, **options)
    paths = [gradlab.max_rho(spread.trajectory, alone.trajectory)]
    return max(float(gradlab.rho(spread.losses, alone.losses).max()), *paths)


def local_rho(engine: Any, rank: int) -> float:
    """As ``gradient_rho`` on a sum and a mean, each rank passing only its own rows:
    rows 0-4 on rank 0, 5-6 on rank 1 (unequal, unlike the engine's own split)."""
    worst = 0.0
    for problem, data, point in cases(7)[:2]:
        mine = {name: value[:5] if rank == 0 else value[5:] for name, value in data.items()}
        loss, grads = gradlab.value_and_grad(problem, mine, point, engine=engine)
        loss_1, grads_1 = gradlab.value_and_grad(problem, data, point, engine="torch")
        worst = max(worst, float(gradlab.rho(loss, loss_1)), gradlab.max_rho(grads, grads_1))
    return worst


def refusals(engine: Any, rank: int) -> list[str]:
    """What the ranks refuse when they were not given the same: each case is changed on
    rank 1 only, and every rank must fail, naming the argument."""
    problem, data, point = cases(7)[1]
    other = tree_map(lambda leaf: np.asarray(leaf) + 1.0, point)
    shifted = {name: value + 1.0 for name, value in data.items()}
    fewer = {name: value[:6] for name, value in data.items()}
    named = []
    for params, rows in [(other, data), (point, shifted), (point, fewer)]:
        try:
            gradlab.value_and_grad(
                problem, rows if rank else data, params if rank else point, engine=engine
            )
        except gradlab.ArgumentError as error:
            named.append(f"{error.argument}: {'rank(s) [1]' in str(error)}")
    try:  # a fit: another learning rate on rank 1
        gradlab.fit(
            problem,
            data,
            engine=engine,
            optimizer=gradlab.sgd(0.1 if rank else 0.2),
            steps=3,
            init=point,
        )
    except gradlab.ArgumentError as error:
        named.append(f"{error.argument}: {'rank(s) [1]' in str(error)}")
    return named


def report(**numbers: Any) -> None:
    print(json.dumps(numbers), flush=True)


def main(mode: str) -> None:
    """Run one mode's checks."""
    if mode == "torchrun":
        import torch.distributed

        engine = gradlab.data_parallel("torch", timeout=60)
        numbers = dict(
            ranks=engine.shards,
            gradients=gradient_rho(engine, "torch", 7),
            fit=fit_rho(engine, "torch"),
            local=local_rho(
                gradlab.data_parallel("torch", local_data=True), int(os.environ["RANK"])
            ),
            local_fit=fit_rho(
                gradlab.data_parallel("torch", local_data=True), "torch", int(os.environ["RANK"])
            ),
            refused=refusals(engine, int(os.environ["RANK"])),
        )
        if int(os.environ["RANK"]) == 0:
            report(**numbers)
        torch.distributed.destroy_process_group()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
