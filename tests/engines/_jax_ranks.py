"""JAX data-parallel checks that need fresh processes, run by
``tests/engines/test_parallel_jax.py``.

``python tests/engines/_jax_ranks.py MODE ...`` measures where the engine puts the data and compares
its gradients and fits with the single-process ``jax`` engine's, computed in the same
process; it prints one JSON line (process 0). Modes:

- ``devices``: 4 forced host devices (``XLA_FLAGS`` set before jax is imported).
- ``distributed PROCESS PORT``: two processes joined by ``jax.distributed.initialize``, one
  device each; process 1 is given other inputs on purpose, then kills itself mid-fit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _parallel_ranks import cases, gradient_rho  # beside this file

import gradlab
from gradlab._boundary import prepare
from gradlab._fingerprint import digest


def placed_by(engine: Any) -> list[Any]:
    """Record the data that ``engine.asinputs`` places (what fits and calls move in)."""
    placed: list[Any] = []
    original = engine.asinputs

    def recording(data: Any, params: Any, dtype: str) -> Any:
        moved = original(data, params, dtype)
        placed.append(moved[0])
        return moved

    engine.asinputs = recording
    return placed


def shards(array: Any) -> dict[str, Any]:
    """This process's blocks of a placed data array: rows and bytes on each device."""
    blocks = array.blocks.addressable_shards
    return {
        "rows": array.shape[0],
        "itemsize": array.dtype.itemsize,
        "device_rows": [block.data.shape[0] for block in blocks],
        "device_bytes": [block.data.nbytes for block in blocks],
    }


def placed_fit(engine: Any, rows: int, batch_size: int | None) -> tuple[float, dict[str, Any]]:
    """A 100-step Adam fit of a linear regression to ``rows`` rows (in mini-batches of
    ``batch_size``, if given): the largest rho of its path against the single-process one,
    and where the engine put its ``x``."""
    problem = gradlab.LinearRegression()
    data = problem.make_data(rows, d=8, seed=5)
    options: dict[str, Any] = dict(
        optimizer=gradlab.adam(0.05),
        steps=100,
        trajectory=True,
        init=problem.initial_params(data),
        batch_size=batch_size,
    )
    placed = placed_by(engine)
    spread = gradlab.fit(problem, data, engine=engine, **options)
    alone = gradlab.fit(problem, data, engine="jax", **options)
    rho = max(
        float(gradlab.rho(spread.losses, alone.losses).max()),
        gradlab.max_rho(spread.trajectory, alone.trajectory),
    )
    return rho, shards(placed[0][0])


def refusals(engine: Any, process: int) -> dict[str, list[str]]:
    """Process 1 passes other parameters, problem, dtype and rows, one at a time: each
    process's error, as ``[argument, message]``."""
    problem = gradlab.LinearRegression()
    data = problem.make_data(7, d=2, seed=0)
    params = problem.initial_params(data)
    other = process == 1
    attempts: dict[str, dict[str, Any]] = {
        "params": dict(params={"w": params["w"] + other, "b": params["b"]}),
        "problem": dict(
            problem=gradlab.PolynomialRegression(degree=2 + other),
            data={"x": data["x"][:, 0], "y": data["y"]},
            params={"c": np.zeros(3 + other)},
        ),
        "dtype": dict(dtype="float32" if other else "float64"),
        "data": dict(data={name: value[: 7 - other] for name, value in data.items()}),
    }
    found = {}
    for name, change in attempts.items():
        call: dict[str, Any] = dict(problem=problem, data=data, params=params) | change
        try:
            gradlab.value_and_grad(engine=engine, **call)
        except gradlab.ArgumentError as error:
            found[name] = [str(error.argument), str(error)]
        else:
            found[name] = ["", "no error"]
    return found


def lost(engine: Any, process: int) -> dict[str, Any]:
    """Process 1 kills itself in a fit's callback at step 20; process 0's fit fails."""
    problem = gradlab.LinearRegression()
    data = problem.make_data(7, d=2, seed=0)
    seen: dict[str, float] = {}

    def callback(step: int, loss: float, params: Any) -> None:
        seen["at"] = time.monotonic()
        if step == 20 and process == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    options: dict[str, Any] = dict(
        optimizer=gradlab.sgd(0.01), init=problem.initial_params(data), callback=callback
    )
    outcome: dict[str, Any] = {}
    try:
        gradlab.fit(problem, data, engine=engine, steps=100, every=10, **options)
    except Exception as error:
        outcome.update(
            error=type(error).__name__, message=str(error), seconds=time.monotonic() - seen["at"]
        )
    try:
        gradlab.value_and_grad(problem, data, options["init"], engine=engine)
    except Exception as error:
        outcome.update(again=type(error).__name__, again_message=str(error))
    return outcome


def digests() -> dict[str, str]:
    """The digest a jax run compares across processes, of each case's problem as engines
    get it (the same in every process that runs the same code)."""
    return {
        problem.name: digest(
            prepare(problem, data, point, "jax", "float64").problem, torch_tensors=False
        ).hex()
        for problem, data, point in cases(7)
    }


def report(**numbers: Any) -> None:
    print(json.dumps(numbers), flush=True)


def main(mode: str) -> None:
    """Run one mode's checks."""
    if mode == "devices":
        # Before jax is imported (gradlab imports it on first use).
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        # Every problem on 3 devices (10 rows: 4, 4 and 2, padded to 4 each); a sum and a
        # mean on 1 and 2 devices, and on 2 rows over 3 (one row each on two devices, the
        # third all padding). Each problem compiles anew per mesh: the rest are the same
        # code on other counts.
        grads = {
            f"{count} of {rows}": gradient_rho(
                gradlab.data_parallel("jax", devices=count), "jax", rows, first
            )
            for count, rows, first in [(3, 10, None), (1, 10, 2), (2, 10, 2), (3, 2, 2)]
        }
        # Fits on 4 devices (251 rows each, one of them padding): on all rows, and in
        # mini-batches of 101 gathered from the spread rows.
        four = gradlab.data_parallel("jax", devices=4)
        rho, placed = placed_fit(four, 1001, None)
        report(
            gradients=grads,
            full_fit=rho,
            placed=placed,
            batch_fit=placed_fit(four, 1001, 101)[0],
            digests=digests(),
        )
    elif mode == "distributed":
        import jax

        process = int(sys.argv[2])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # type: ignore[no-untyped-call]
        jax.distributed.initialize(
            f"127.0.0.1:{sys.argv[3]}",
            num_processes=2,
            process_id=process,
            initialization_timeout=60,
        )
        engine = gradlab.data_parallel("jax")
        began = time.perf_counter()
        # Mini-batches of 3 gathered from the rows the two processes hold.
        rho, placed = placed_fit(engine, 7, 3)
        numbers = dict(devices=engine.shards, batch_fit=rho, placed=placed)
        seconds = {"batch_fit": time.perf_counter() - began}
        checks: list[tuple[str, Callable[[], Any]]] = [
            ("gradients", lambda: gradient_rho(engine, "jax", 7, first=2)),
            ("refusals", lambda: refusals(engine, process)),
            ("lost", lambda: lost(engine, process)),
        ]
        for name, check in checks:
            began = time.perf_counter()
            numbers[name] = check()
            seconds[name] = time.perf_counter() - began
        report(**numbers, seconds=seconds)
        # Past the lost process, JAX's runtime would abort this one at exit (its shutdown
        # waits for every process): leave without it.
        os._exit(0)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
