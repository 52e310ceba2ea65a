"""The JAX data-parallel engine holds each device's rows only, gives the single-process
numbers, refuses processes given different inputs, and names a lost process.

Oracles: the single-process ``jax`` engine, run in the same process on the same data
(rho ≤ 1e-12 for gradients in float64, ≤ 1e-10 along 100-step fits), and arithmetic: on k
devices each holds ⌈n / k⌉ rows of an n-row array, so all of them together hold its bytes
(and the padding), not k copies. Each check needs fresh processes (forced host devices, or
``jax.distributed``), so there are two tests, and each checks much
(``tests/engines/_jax_ranks.py``).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import _jax_ranks as _ranks
from _helpers import free_port, require_engine

RANKS = Path(__file__).with_name("_jax_ranks.py")
GRADIENT_RHO, PATH_RHO = 1e-12, 1e-10


def _run(*commands: list[str]) -> tuple[dict[str, Any], list[int]]:
    """Run the commands at once: the JSON line the first prints, and every exit code."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(RANKS), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    try:
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            process.kill()
    lines = [line for line in outputs[0][0].splitlines() if line.startswith("{")]
    assert lines, outputs[0][1][-3000:]
    return json.loads(lines[-1]), [process.returncode for process in processes]


def test_jax_devices_hold_their_own_rows_and_give_one_device_numbers() -> None:
    require_engine("jax")
    numbers, codes = _run(["devices"])
    assert codes == [0]
    # Every problem on 3 devices; a sum and a mean on 1 and 2, and 2 rows on 3 devices.
    assert set(numbers["gradients"]) == {"1 of 10", "2 of 10", "3 of 10", "3 of 2"}
    assert max(numbers["gradients"].values()) <= GRADIENT_RHO, numbers["gradients"]
    # A fit of 1001 rows on 4 devices: 251 rows on each (the last holds one copy of row
    # 1000 as padding), 1004/1001 of the array's bytes in all, where a replica on each
    # device would be 4 times them.
    placed = numbers["placed"]
    row_bytes = 8 * placed["itemsize"]  # 8 features
    assert placed["rows"] == 1001
    assert placed["device_rows"] == [math.ceil(1001 / 4)] * 4
    assert placed["device_bytes"] == [251 * row_bytes] * 4
    assert sum(placed["device_bytes"]) == 1004 * row_bytes
    assert numbers["full_fit"] <= PATH_RHO
    # Mini-batches gathered from the spread rows, inside the compiled loop.
    assert numbers["batch_fit"] <= PATH_RHO
    # What processes compare is the same in another process (identities, code addresses,
    # set order and the classifier's random torch weights left out).
    assert numbers["digests"] == _ranks.digests()


def test_jax_processes_hold_their_rows_refuse_other_inputs_and_name_a_lost_one() -> None:
    require_engine("jax")
    port = str(free_port())
    numbers, codes = _run(["distributed", "0", port], ["distributed", "1", port])
    assert codes == [0, -signal.SIGKILL]  # process 1 killed itself mid-fit, as planned
    assert numbers["devices"] == 2
    # 7 rows over 2 processes: this process's one device holds 4 of them (row 6 twice).
    placed = numbers["placed"]
    assert placed["rows"] == 7
    assert placed["device_rows"] == [4]
    assert numbers["gradients"] <= GRADIENT_RHO  # a sum and a mean, 4 + 3 rows
    assert numbers["batch_fit"] <= PATH_RHO  # mini-batches of 3 gathered from both
    # Process 1 passed other inputs, one at a time: each is named, with the process.
    for argument, (named, message) in numbers["refusals"].items():
        assert named == argument, message
        assert "process 1" in message, message
        assert "this is process 0" in message, message
    # Process 1 died at step 20 of a fit: process 0's fit fails at once, naming the run's
    # loss, never blaming the problem; and so does every call after it.
    lost = numbers["lost"]
    assert lost["error"] == "RankFailed", lost
    assert "jax.distributed" in lost["message"]
    assert lost["seconds"] < 20
    assert lost["again"] == "RankFailed", lost
    assert "earlier call" in lost["again_message"]
