"""Peak memory of one fit, measured in a fresh process.

Run as ``python -m gradlab.bench._memory PROBLEM N DTYPE ENGINE STEPS SEED [DATA_DTYPE]``;
prints one JSON object: the resident bytes the fit added at its peak over what the process
held before it, and the same for a fit four times longer (a run that kept per-step copies of
anything would grow with the steps). The data is the problem's ``make_data`` (float64), or
that cast to ``DATA_DTYPE`` before anything is measured (a float32 fit of float32 data).

Why a fresh process: glibc's allocator keeps memory freed by earlier work, so an
in-process figure depends on what ran before. The child runs with the allocator's default
settings, as users do: a fixed mmap threshold would unmap every large temporary when freed
and hide exactly the heap growth a long fit can cause. What an earlier fit left for the
garbage collector is collected before each measurement (jax frees arrays a fit dropped only
then): counted as held before, its release during the next fit hid that fit's own peak (a
jax fit four times as long measured 0.13 times its data). Linux only: the peak is
``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from typing import Any


def measure(
    problem: str,
    n: int,
    dtype: str,
    engine: str,
    steps: int,
    seed: int = 0,
    data_dtype: str | None = None,
) -> dict[str, Any] | None:
    """Run the child; return its figures, or ``None`` where they cannot be measured.
    ``data_dtype``: the data given in that dtype (``None``: as ``make_data`` makes it)."""
    if not sys.platform.startswith("linux"):
        return None
    command = [sys.executable, "-m", "gradlab.bench._memory", problem, str(n), dtype, engine]
    given = [] if data_dtype is None else [data_dtype]
    done = subprocess.run(
        [*command, str(steps), str(seed), *given], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _peak_of(run: Any) -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status_kib("VmRSS")
    run()
    return max(0, _status_kib("VmHWM") - before) * 1024


def _main(arguments: list[str]) -> None:
    import numpy as np

    import gradlab
    from gradlab.bench._workload import SGD_STEP, point
    from gradlab.problems._named import at_size, problem_named

    name, n, dtype, engine_name, steps, seed, *given = arguments
    problem = at_size(problem_named(name), int(n))
    data = problem.make_data(int(n), seed=int(seed))
    if given:
        data = {key: np.asarray(value, dtype=given[0]) for key, value in data.items()}
    start = point(problem, data, int(seed))
    engine = gradlab.get_engine(engine_name)
    optimizer = gradlab.sgd(SGD_STEP)

    def fit(count: int) -> Any:
        return gradlab.fit(
            problem,
            data,
            engine=engine,
            optimizer=optimizer,
            steps=count,
            init=start,
            dtype=dtype,
        )

    count = int(steps)
    fit(count), fit(4 * count)  # warm-up: imports, compilation, first-touch of the code
    peak, longer = _peak_of(lambda: fit(count)), _peak_of(lambda: fit(4 * count))
    data_bytes = sum(np.asarray(array).size * np.dtype(dtype).itemsize for array in data.values())
    print(json.dumps({"peak": peak, "peak_4x_steps": longer, "data_bytes": int(data_bytes)}))


if __name__ == "__main__":
    _main(sys.argv[1:])
