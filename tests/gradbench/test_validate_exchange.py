"""The relay of ``benchmarks/gradbench_validate.py``, run without GradBench's code.

A stand-in eval, written here, speaks the eval's side of GradBench's protocol (``start``,
``define``, ``evaluate``, then ``analysis`` of each output, then ``end``) on inputs made by
gradlab's own generators (``EVALS[name].example``), and validates each output against
closed-form mathematics that shares no code with gradlab: log-sum-exp's gradient is the
softmax, a determinant's is its cofactor matrix, det(A)·A⁻ᵀ (Jacobi's formula), both
compared with GradBench's rule |x − y| / max(1, |x| + |y|) ≤ 1e-4. Against it: gradlab's
tool, tools that answer wrongly, never or crash, and gradlab's tool beside another tool as
``--time`` runs them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gradlab.gradbench._evals import EVALS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gradbench_validate.py"


def _load_script() -> Any:
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gradbench_validate", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


validate = _load_script()

STAND_IN_EVAL = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    module, inputs = sys.argv[1], json.load(open(sys.argv[2]))
    ids = iter(range(10**6))

    def send(message):
        message = {"id": next(ids)} | message
        print(json.dumps(message), flush=True)
        if message["kind"] == "end":
            return None
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)  # the tool is gone: the relay says why
        reply = json.loads(line)
        assert reply["id"] == message["id"], (reply, message)
        return reply

    def expected(function, input):
        if module == "lse":
            x = np.array(input["x"])
            e = np.exp(x - x.max())
            if function == "primal":
                return x.max() + np.log(e.sum())
            return e / e.sum()  # the softmax
        a = np.array(input["A"]).reshape(input["ell"], input["ell"])
        if function == "primal":
            return np.linalg.det(a)
        return (np.linalg.det(a) * np.linalg.inv(a).T).ravel()  # Jacobi's formula

    def check(function, input, output):
        want = np.asarray(expected(function, input), dtype=float)
        got = np.asarray(output, dtype=float)
        if want.shape != got.shape:
            return f"shape {got.shape}, expected {want.shape}"
        rho = np.abs(want - got) / np.maximum(1.0, np.abs(want) + np.abs(got))
        worst = float(np.max(rho))
        return None if worst <= 1e-4 else f"Found a mismatch:\\nworst difference {worst:.3g}"

    send({"kind": "start", "eval": module})
    if send({"kind": "define", "module": module})["success"]:
        for description, input in inputs:
            for function in ("primal", "gradient"):
                message = {"kind": "evaluate", "module": module, "function": function}
                message |= {"input": input, "description": description}
                reply = send(message)
                if reply["success"]:
                    error = check(function, input, reply["output"])
                    analysis = {"kind": "analysis", "of": reply["id"], "valid": error is None}
                    send(analysis | ({"error": error} if error else {}))
    send({"kind": "end"})
    """
)

#: A tool that answers ``start`` and ``define``, then does ``BEHAVIOUR`` on ``evaluate``.
STAND_IN_TOOL = textwrap.dedent(
    """
    import json, subprocess, sys, time
    for line in sys.stdin:
        message = json.loads(line)
        reply = {"id": message["id"]}
        if message["kind"] == "end":
            break
        if message["kind"] == "define":
            reply["success"] = True
        if message["kind"] == "evaluate":
            BEHAVIOUR
        print(json.dumps(reply), flush=True)
    """
)

WRONG = """
size = len(message["input"]["x"])
output = 0.5 if message["function"] == "primal" else [0.0] * size
reply |= {"success": True, "output": output}
"""
#: It starts a program of its own first, so that the test sees the whole group killed.
SILENT = """
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""
CRASHING = """
print("boom: the tool fell over", file=sys.stderr, flush=True)
sys.exit(3)
"""


def stand_in_eval(tmp_path: Path, module: str, sizes: list[dict[str, int]]) -> Any:
    """The stand-in eval's command, its inputs from gradlab's generators."""
    inputs = []
    for seed, size in enumerate(sizes):
        input = EVALS[module].example(seed, **size) | {"min_runs": 2, "min_seconds": 0}
        inputs.append((",".join(f"{k}={v}" for k, v in size.items()), input))
    (tmp_path / "inputs.json").write_text(json.dumps(inputs), encoding="utf-8")
    (tmp_path / "eval.py").write_text(STAND_IN_EVAL, encoding="utf-8")
    argv = (sys.executable, str(tmp_path / "eval.py"), module, str(tmp_path / "inputs.json"))
    return validate.Command(argv, tmp_path, validate.python_path())


def stand_in_tool(tmp_path: Path, behaviour: str) -> Any:
    tool = STAND_IN_TOOL.replace("        BEHAVIOUR", textwrap.indent(behaviour.strip(), " " * 8))
    (tmp_path / "tool.py").write_text(tool, encoding="utf-8")
    argv = (sys.executable, str(tmp_path / "tool.py"), str(tmp_path / "grandchild"))
    return validate.Command(argv, tmp_path, validate.python_path())


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie has: only its exit status is left)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """gradlab's numpy tool, through the relay, on lse and det at two small sizes each."""
    cells = []
    for module, sizes in (("lse", [{"n": 7}, {"n": 300}]), ("det", [{"ell": 3}, {"ell": 5}])):
        where = tmp_path_factory.mktemp(module)
        record = validate.exchange(
            stand_in_eval(where, module, sizes),
            validate.gradlab_command("numpy", sys.executable, where),
            timeout=60,
        )
        cells.append(validate.Cell(module, "numpy", record))
    return cells


def test_gradlab_passes_and_the_table_says_so(passing: list[Any], tmp_path: Path) -> None:
    for cell in passing:
        record = cell.exchange
        assert (record.outcome, record.defined, record.tool) == ("completed", True, "gradlab-numpy")
        assert [(e.function, e.description, e.valid) for e in record.evaluations] == [
            (function, description, True)
            for description in (["n=7", "n=300"] if cell.eval == "lse" else ["ell=3", "ell=5"])
            for function in ("primal", "gradient")
        ]
        # Timings as the tool sent them: two evaluate runs, the first call apart.
        timings = record.evaluations[0].answer.timings
        assert timings["evaluate"]["runs"] == 2
        assert timings["warmup"]["runs"] == 1
        assert all(gone(pid) for pid in record.pids)
    report = validate.validation_report(passing, {"timeout": {"": 60.0}})
    assert "| lse | 4/4 |" in report
    assert "| det | 4/4 |" in report
    assert "2 cells: 2 pass" in report
    assert "**0 defects**" in report
    validate.write(tmp_path / "out", report, {"cells": passing, "known": validate.KNOWN})
    written = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert written["cells"][0]["exchange"]["evaluations"][1]["valid"] is True
    assert (tmp_path / "out.md").read_text(encoding="utf-8") == report


def test_wrong_outputs_are_invalid_unless_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = validate.exchange(
        stand_in_eval(tmp_path, "lse", [{"n": 5}]), stand_in_tool(tmp_path, WRONG), timeout=60
    )
    cell = validate.Cell("lse", "wrong", record)
    assert record.outcome == "completed"
    assert record.counts() | {"total": 2} == {
        "total": 2,
        "valid": 0,
        "invalid": 2,
        "failed": 0,
        "timed_out": 0,
        "unchecked": 0,
    }
    assert validate.cell_text(cell) == "0/2 (2 invalid) **defect**"
    report = validate.validation_report([cell], {})
    assert "- `gradient` n=5: invalid: Found a mismatch: worst difference" in report
    # A known limit excuses the kinds of failure it names, and only those.
    known = validate.Known("lse", "wrong", frozenset({"invalid"}), "a limit", "https://x")
    monkeypatch.setattr(validate, "KNOWN", (known,))
    assert (cell.status(), validate.cell_text(cell)) == ("known", "0/2 (2 invalid) known")
    known = validate.Known("lse", "wrong", frozenset({"timed out"}), "a limit", "https://x")
    monkeypatch.setattr(validate, "KNOWN", (known,))
    assert cell.status() == "defect"


def test_a_tool_that_never_answers_times_out_and_nothing_is_left(tmp_path: Path) -> None:
    record = validate.exchange(
        stand_in_eval(tmp_path, "lse", [{"n": 5}]), stand_in_tool(tmp_path, SILENT), timeout=2
    )
    assert record.outcome == "timed out"
    assert "did not answer message 2 (evaluate primal, n=5) within 2 s" in record.detail
    assert record.counts()["timed_out"] == 1
    cell = validate.Cell("lse", "silent", record)
    assert validate.cell_text(cell) == "0/1 (1 timed out) **defect**"
    grandchild = int((tmp_path / "grandchild").read_text())
    assert all(gone(pid) for pid in [*record.pids, grandchild])


def test_a_crashing_tool_is_reported(tmp_path: Path) -> None:
    record = validate.exchange(
        stand_in_eval(tmp_path, "lse", [{"n": 5}]), stand_in_tool(tmp_path, CRASHING), timeout=60
    )
    assert record.outcome == "tool crashed"
    assert "exited (status 3) without answering message 2" in record.detail
    assert "boom: the tool fell over" in record.detail
    cell = validate.Cell("lse", "crashing", record)
    assert validate.cell_text(cell) == "0/1 (tool crashed) **defect**"
    assert "boom: the tool fell over" in validate.validation_report([cell], {})
    assert all(gone(pid) for pid in record.pids)


def test_time_mode_asks_both_tools_in_turn(tmp_path: Path) -> None:
    """gradlab beside a second tool (gradlab again): both answer every message, the first
    to be asked alternates per function, and the outputs agree."""
    sizes = [{"n": 4}, {"n": 6}, {"n": 8}]
    record = validate.exchange(
        stand_in_eval(tmp_path, "lse", sizes),
        validate.gradlab_command("numpy", sys.executable, tmp_path),
        60,
        validate.gradlab_command("numpy", sys.executable, tmp_path),
    )
    assert (record.outcome, record.other_tool, record.other_error) == (
        "completed",
        "gradlab-numpy",
        None,
    )
    firsts = [(e.function, e.first) for e in record.evaluations]
    assert firsts == [
        ("primal", "gradlab"),
        ("gradient", "gradlab"),
        ("primal", "other"),
        ("gradient", "other"),
        ("primal", "gradlab"),
        ("gradient", "gradlab"),
    ]
    assert all(e.valid and e.other.success for e in record.evaluations)
    assert all(e.difference is not None and e.difference < 1e-12 for e in record.evaluations)
    timed = validate.Timed("lse", validate.PAIRS[2], record)
    ours, theirs, count = timed.sums("derivative")
    assert count == 3
    assert ours > 0
    assert theirs > 0
    report = validate.timing_report([timed], {"min_runs": 2})
    assert "| lse | not run | not run | ∂ **" in report


@pytest.mark.parametrize(
    ("expected", "actual", "largest"),
    [
        (1.0, 1.0, 0.0),
        ([1.0, 3.0], [1.0, 2.0], 1 / 5),
        ({"a": [0.5]}, {"a": [0.0]}, 0.5),
        ([1.0], [1.0, 2.0], None),
        ({"a": 1.0}, {"b": 1.0}, None),
    ],
)
def test_largest_difference_is_gradbench_s_rule(
    expected: Any, actual: Any, largest: float | None
) -> None:
    assert validate.largest_difference(expected, actual) == largest


def test_eval_arguments_for_all_or_one_eval() -> None:
    specs = ["--min-seconds 0", "lse=-n 10 20", "det=-l 3"]
    assert validate.eval_arguments(specs, "lse") == ["--min-seconds", "0", "-n", "10", "20"]
    assert validate.eval_arguments(specs, "det") == ["--min-seconds", "0", "-l", "3"]
    assert validate.eval_arguments(specs, "gmm") == ["--min-seconds", "0"]
