"""gradlab's GradBench tool checked by GradBench's own evals, and timed beside GradBench's
own tools.

A GradBench *eval* is a Python program that sends messages (JSON lines) to a *tool* and
checks every output it gets back against GradBench's golden C++ implementation (the
``manual`` tool), telling the tool what it found in an ``analysis`` message. GradBench's
driver, a Rust program, relays between the two and enforces a timeout; this script is that
relay, in Python. For each eval × engine it starts the eval's ``run.py`` at its default
sizes (no arguments) and ``python -m gradlab.gradbench --engine ENGINE``, relays their
messages line by line both ways, and records per ``evaluate`` message: the function, the
eval's description of the input, whether the tool succeeded (its error if not), the eval's
analysis (valid or not, and the first line of its error) and the tool's timings.

    python benchmarks/gradbench_validate.py --gradbench PATH [--deps DIR]
        [--engines numpy,torch,jax] [--evals lse,gmm,...] [--eval-args "lse=-n 2500 5000"]
        [--timeout SECONDS] [--timeout ENGINE=SECONDS] [--skip EVAL:ENGINE]
        [--out benchmarks/results/gradbench-validate]

writes ``OUT.md`` (a table eval × engine of valid/total, with the counts of invalid,
failed and timed-out messages, and each failure's first line) and ``OUT.json`` (every
message's record, the tools' configurations, the machine). A tool that does not answer a
message within ``--timeout`` seconds (600 by default; ``ENGINE=SECONDS`` for one engine) is
recorded as timed out and both programs are killed (the eval too: it waits on the tool).
GradBench's own outcome names are kept: an engine that refuses an eval at ``define`` is
*undefined* there, not failing (gradlab's ``numpy`` engine has no hand derivative for
``lstm``). ``KNOWN`` below lists the failures that come from an engine's documented limit,
with the upstream issue; the table marks those, and every other failure is a defect (the
script then exits with status 1).

``--time`` times gradlab beside GradBench's own tool for the same framework, in one run:
gradlab ``jax`` beside GradBench's ``jax`` tool, gradlab ``torch`` beside ``pytorch``, and
gradlab ``numpy`` (hand-derived derivatives) beside the C++ ``manual`` tool, on every eval
both implement (the tool's ``tools/<tool>/evals.txt``). One eval program, at its default
sizes with ``--min-runs`` and ``--min-seconds`` for timing, drives gradlab's tool, whose
replies it validates; each ``evaluate`` message also goes to GradBench's tool, one tool
after the other, alternating which goes first (per function, from one size to the next),
and the two outputs are compared with GradBench's rule. Time per message is GradBench's:
the minimum of the tool's ``"evaluate"`` timings. gradlab reports its first call apart
(``"warmup"``) and GradBench's Python tools do not (their first ``"evaluate"`` run
includes compiling): with at least two runs the minimum leaves both first calls out, so the
minima compare steady states; gradlab's warmup and the other tool's first run are in the
JSON. Per eval, the ratio gradlab / GradBench of the per-size minima summed over the sizes
both tools answered, for the derivative function and for the primal apart. By default both
tools run on one CPU, as GradBench runs its tools (``--threads one``: this process pins
itself and its children inherit it; GradBench's jax tool pins itself to CPU 0 and its C++
tools build without OpenMP); ``--threads all`` lets both use every CPU. GradBench's jax
tool does not wait for jax's result inside its timed region, and jax dispatches
asynchronously on the CPU too, so as it is it times the dispatch; the script runs it with
each timed call waiting (``JAX_WAITING``: its own code, with ``jax.block_until_ready``
around each timed call, as gradlab's tool does, and in jax's 64-bit mode, which its ``ode``
module alone does not turn on, so computing in float32), or as it is with ``--jax-as-is``.

    python benchmarks/gradbench_validate.py --gradbench PATH --deps DIR --time
        [--engines numpy,torch,jax] [--min-runs 5] [--min-seconds 0] [--threads one|all]
        [--jax-as-is] [--out benchmarks/results/gradbench-vs-tools]

Getting GradBench's code (the script fetches nothing when it runs):

    git clone https://github.com/gradbench/gradbench /path/to/gradbench
    git -C /path/to/gradbench checkout f26651a7bcc120654fa895adecaf371b8cc059c5
    pip install --target /path/to/gbdeps pydantic dataclasses-json   # what the evals import
    apt-get install g++ make nlohmann-json3-dev   # the C++ tool's compiler and JSON header

(``make -C /path/to/gradbench/cpp`` downloads the JSON header into the checkout instead of
the Debian package.) The evals and GradBench's Python tools run on ``--python`` (this
interpreter by default), which needs NumPy and SciPy (``gmm``), and jax and torch for
GradBench's tools of those names. The checkout is only read: the script runs everything in
a work directory (``--work``) that mirrors it with symbolic links, where ``make`` builds
the ``manual`` tool (``tools/manual/bin/<eval>``) that the evals validate against.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: The GradBench commit these results were made with (its evals change between commits).
GRADBENCH_COMMIT = "f26651a7bcc120654fa895adecaf371b8cc059c5"
#: GradBench's tolerance for the difference between two outputs (``comparison.py``).
TOLERANCE = 1e-4
#: Seconds the eval may take between two messages (starting; validating an output against
#: GradBench's C++, which parses megabytes of JSON at the largest sizes).
EVAL_TIMEOUT = 600.0
#: The functions that compute the primal; every other function is a derivative.
PRIMAL_FUNCTIONS = frozenset({"primal", "objective", "cost", "square"})


@dataclass(frozen=True)
class Known:
    """Failures that come from an engine's documented limit, not from gradlab: only the
    kinds named (``"invalid"``, ``"failed"``, ``"timed out"``) are excused, so that any
    other failure of the same cell is still a defect."""

    eval: str
    engine: str
    failures: frozenset[str]
    why: str
    url: str


#: Failures of (eval, engine) explained upstream: the table marks them as known.
KNOWN: tuple[Known, ...] = (
    Known(
        "gmm",
        "mlx",
        frozenset({"invalid"}),
        "MLX computes float64 `exp` on the CPU with its float32 approximation "
        "(relative error 3.5e-7, docs/engines.md)",
        "https://github.com/ml-explore/mlx/issues/3047",
    ),
    Known(
        "ode",
        "torch-compile",
        frozenset({"timed out"}),
        "torch.compile's Dynamo unrolls Python loops: the gradient through s = 100 RK4 steps "
        "did not compile in 300 s (jax runs them in a `lax.fori_loop`; torch has no "
        "counterpart that torch.compile differentiates)",
        "https://github.com/pytorch/pytorch/issues/111441",
    ),
    # Forward mode takes one JVP per input (``jacfwd``, in chunks): a gradient of n inputs
    # is n passes of the function, O(n²) where a pass is O(n). GradBench's larger inputs
    # then take longer than any timeout; these are the cells where that was measured
    # (``ode`` on jax-fwd is not among them: there the primal's compile times out, as jax's).
    *(
        Known(
            eval_name,
            engine,
            frozenset({"timed out"}),
            f"forward mode ({engine}) takes one JVP per input: {what}",
            "docs/jacobians.md",
        )
        for eval_name, engine, what in (
            ("lse", "torch-fwd", "n = 20,000 took 40 s a gradient, n = 40,000 timed out"),
            ("lse", "jax-fwd", "n = 80,000 timed out"),
            ("kmeans", "torch-fwd", "k·d = 800 inputs over n = 10,000 points timed out"),
            ("kmeans", "jax-fwd", "k·d = 16,000 inputs over n = 1000 points timed out"),
            ("ode", "torch-fwd", "n = 1000 inputs through s = 100 steps timed out"),
            ("gmm", "torch-fwd", "d = 10, k = 10 took 31 s; d = 20, k = 5 (1155 inputs) timed out"),
            ("gmm", "jax-fwd", "d = 10, k = 25 took 11 s; d = 32, k = 10 (5610 inputs) timed out"),
        )
    ),
)


#: How ``--time`` starts GradBench's jax tool unless ``--jax-as-is``: its own ``run.py``,
#: with each timed call waiting for jax's result (``jax.block_until_ready``), as gradlab's
#: does. GradBench's tool does not wait, and jax dispatches asynchronously on the CPU too,
#: so its ``"evaluate"`` timings measure the dispatch: its gradient of log-sum-exp at
#: n = 1,280,000 returns in 0.2 ms and is ready 25-70 ms later (jax 0.10, this machine).
#: It also runs in jax's 64-bit mode throughout: GradBench's jax modules each turn it on,
#: but for ``ode``, which so computes in float32 (its outputs 3·10⁻⁷ from float64's, and
#: 3 to 6 times faster) where every other tool, gradlab's included, computes in float64.
JAX_WAITING = """
import os, runpy, sys
import jax
from gradbench import wrap

jax.config.update("jax_enable_x64", True)

def waiting(decorator):
    def made(**options):
        decorate = decorator(**options)
        return lambda function: decorate(lambda input: jax.block_until_ready(function(input)))
    return made

wrap.function, wrap.multiple_runs = waiting(wrap.function), waiting(wrap.multiple_runs)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class GradBenchTool:
    """One of GradBench's own tools, timed beside a gradlab engine in ``--time``."""

    engine: str  # gradlab's engine for the same framework
    name: str  # the tool's directory under ``tools/``
    script: str  # what runs it, relative to the checkout (its arguments after)
    arguments: tuple[str, ...] = ()
    multithreaded: tuple[str, ...] = ("--multithreaded",)
    waiting: str | None = None  # Python that runs ``script`` waiting for each result


#: gradlab's engine beside GradBench's tool for the same framework.
PAIRS: tuple[GradBenchTool, ...] = (
    GradBenchTool("jax", "jax", "python/gradbench/gradbench/tools/jax/run.py", waiting=JAX_WAITING),
    GradBenchTool("torch", "pytorch", "python/gradbench/gradbench/tools/pytorch/run.py"),
    GradBenchTool("numpy", "manual", "python/gradbench/gradbench/cpp.py", ("manual",)),
)


# -- the programs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A program to start: its arguments, working directory and environment."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]


class Child:
    """A program in a process group of its own, its output read line by line in a thread.

    ``close`` kills the whole group (what the program started too: an eval's C++ runs),
    waits for it, and closes every pipe and file, whatever state the program is in.
    """

    def __init__(self, role: str, command: Command) -> None:
        self.role = role
        self._closed = False
        # Held open while the program runs (it writes there); ``close`` closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                command.argv,
                cwd=command.cwd,
                env=dict(command.env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,  # its own group: killed whole, Ctrl-C not sent to it
            )
        except BaseException:
            self._stderr.close()
            raise
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            for line in stdout:
                self._lines.put(line)
        except (OSError, ValueError):  # the pipe was closed under us: the end
            pass
        finally:
            self._lines.put(None)

    def send(self, line: bytes) -> bool:
        """Write one line; False when the program no longer reads."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(line if line.endswith(b"\n") else line + b"\n")
            stdin.flush()
        except (OSError, ValueError):  # BrokenPipeError, or stdin already closed
            return False
        return True

    def receive(self, timeout: float) -> bytes | None:
        """The next line, or None when the program has closed its output.

        Raises:
            TimeoutError: Nothing came within ``timeout`` seconds.
        """
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            self._lines.put(None)  # stays at its end
        return line

    def finish(self, timeout: float) -> int | None:
        """Close its input and wait up to ``timeout`` seconds for it to exit: its status."""
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def status(self) -> int | None:
        return self.process.poll()

    def stderr_tail(self, lines: int = 3) -> str:
        """The last lines the program wrote to standard error, joined on one line."""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.flush()
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - 8192))
            text = self._stderr.read().decode("utf-8", errors="replace")
            kept = [line.strip() for line in text.splitlines() if line.strip()]
            return " | ".join(kept[-lines:])
        return ""

    def close(self) -> None:
        """Kill the program's group, reap it and release its pipes and files (once)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.process.wait(30)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._reader.join(5)
        self._stderr.close()


# -- what an exchange records ----------------------------------------------------------------


def timing_summary(timings: Any) -> dict[str, dict[str, int]]:
    """A tool's timings by name: how many, the minimum, the first and the sum (ns)."""
    summary: dict[str, dict[str, int]] = {}
    if not isinstance(timings, list):
        return summary
    for timing in timings:
        if not isinstance(timing, dict):
            continue
        name, nanoseconds = timing.get("name"), timing.get("nanoseconds")
        if not isinstance(name, str) or not isinstance(nanoseconds, int):
            continue
        entry = summary.setdefault(
            name, {"runs": 0, "min_ns": nanoseconds, "first_ns": nanoseconds, "total_ns": 0}
        )
        entry["runs"] += 1
        entry["min_ns"] = min(entry["min_ns"], nanoseconds)
        entry["total_ns"] += nanoseconds
    return summary


def headline(text: Any) -> str | None:
    """What an error says, on one line: a traceback's last line, or the first line (and the
    next, when the first only announces it, as GradBench's "Found 3 mismatches, ...:")."""
    if not isinstance(text, str) or not text.strip():
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines[0].startswith("Traceback"):
        shown = lines[-1]
    elif lines[0].endswith(":") and len(lines) > 1:
        shown = f"{lines[0]} {lines[1]}"
    else:
        shown = lines[0]
    return shown if len(shown) <= 300 else shown[:297] + "..."


def difference(x: float, y: float) -> float:
    """GradBench's (and ADBench's) difference: |x − y| / max(1, |x| + |y|)."""
    return abs(x - y) / max(1.0, abs(x) + abs(y))


def largest_difference(expected: Any, actual: Any) -> float | None:
    """The largest ``difference`` between two outputs of the same shape; None where their
    shapes or keys differ (GradBench counts that as a mismatch)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return 0.0 if expected == actual else None
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return difference(float(expected), float(actual))
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return None
        worst = 0.0
        for x, y in zip(expected, actual, strict=True):
            found = largest_difference(x, y)
            if found is None:
                return None
            worst = max(worst, found)
        return worst
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return None
        return largest_difference(
            [expected[key] for key in sorted(expected)], [actual[key] for key in sorted(actual)]
        )
    return 0.0 if expected == actual else None


@dataclass
class Answer:
    """One tool's answer to one ``evaluate`` message."""

    success: bool | None = None  # None: no answer (timed out, crashed)
    error: str | None = None
    timings: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float | None = None  # wall time from sending the message to the reply
    timed_out: bool = False

    def minimum(self) -> int | None:
        """GradBench's time for the message: the fastest ``"evaluate"`` run, in ns."""
        runs = self.timings.get("evaluate")
        return None if runs is None else runs["min_ns"]


@dataclass
class Evaluation:
    """One ``evaluate`` message, gradlab's answer, the eval's analysis of it, and (when
    timing) GradBench's tool's answer to the same message."""

    id: Any
    function: str
    description: str | None
    answer: Answer = field(default_factory=Answer)
    valid: bool | None = None  # the eval's analysis; None when it sent none
    analysis_error: str | None = None
    other: Answer | None = None
    first: str | None = None  # which tool got the message first, when timing
    difference: float | None = None  # the largest between the two tools' outputs


@dataclass
class Exchange:
    """Everything one eval × tool run records."""

    outcome: str = "not started"  # completed, timed out, tool crashed, eval crashed, ...
    detail: str | None = None
    tool: str | None = None
    config: Any = None
    defined: bool | None = None
    define_error: str | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    seconds: float = 0.0
    pids: list[int] = field(default_factory=list)
    other_tool: str | None = None
    other_defined: bool | None = None
    other_error: str | None = None

    def counts(self) -> dict[str, int]:
        """How many evaluate messages there were, and how each ended."""
        evaluations = self.evaluations
        return {
            "total": len(evaluations),
            "valid": sum(e.valid is True for e in evaluations),
            "invalid": sum(e.valid is False for e in evaluations),
            "failed": sum(e.answer.success is False for e in evaluations),
            "timed_out": sum(e.answer.timed_out for e in evaluations),
            "unchecked": sum(e.answer.success is True and e.valid is None for e in evaluations),
        }

    def failures(self) -> set[str]:
        """How the exchange failed, if it did: ``invalid``, ``failed``, ``timed out``,
        ``not analysed``, or how it ended (``tool crashed``, ``eval crashed``, ...)."""
        counts = self.counts()
        kinds = {
            kind
            for kind, key in (
                ("invalid", "invalid"),
                ("failed", "failed"),
                ("timed out", "timed_out"),
                ("not analysed", "unchecked"),
            )
            if counts[key]
        }
        if self.outcome != "completed":
            kinds.add(self.outcome)
        if self.outcome == "completed" and self.defined is True and counts["total"] == 0:
            kinds.add("no evaluate message")
        return kinds

    def passed(self) -> bool:
        counts = self.counts()
        return (
            self.outcome == "completed"
            and self.defined is True
            and counts["total"] > 0
            and counts["valid"] == counts["total"]
        )


class _Stop(Exception):
    """The exchange ends here: ``outcome`` and ``detail`` say why."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _parse(line: bytes, who: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        shown = line[:120].decode("utf-8", errors="replace")
        raise _Stop("protocol error", f"{who} wrote a line that is not JSON: {shown!r}") from None
    if not isinstance(message, dict):
        raise _Stop("protocol error", f"{who} wrote JSON that is not an object")
    return message


def _ask(
    tool: Child, line: bytes, message: dict[str, Any], timeout: float
) -> tuple[bytes, dict[str, Any]]:
    """Send one message to a tool and read its reply (the line and the parsed reply).

    Raises:
        _Stop: The tool did not answer in time, exited, or answered out of protocol.
    """
    what = f"message {message.get('id')!r} ({message.get('kind')}"
    if message.get("kind") == "evaluate":
        what += f" {message.get('function')}, {message.get('description') or 'no description'}"
    what += ")"
    if not tool.send(line):
        raise _Stop("tool crashed", f"the {tool.role} stopped reading before {what}")
    try:
        reply = tool.receive(timeout)
    except TimeoutError:
        raise _Stop(
            "timed out", f"the {tool.role} did not answer {what} within {timeout:g} s"
        ) from None
    if reply is None:
        status = tool.finish(5)
        tail = tool.stderr_tail()
        raise _Stop(
            "tool crashed",
            f"the {tool.role} exited (status {status}) without answering {what}"
            + (f": {tail}" if tail else ""),
        )
    parsed = _parse(reply, f"the {tool.role}")
    if parsed.get("id") != message.get("id"):
        raise _Stop(
            "protocol error",
            f"the {tool.role} answered {what} with id {parsed.get('id')!r}",
        )
    if message.get("kind") in ("define", "evaluate") and not isinstance(
        parsed.get("success"), bool
    ):
        raise _Stop("protocol error", f"the {tool.role}'s reply to {what} has no 'success'")
    return reply, parsed


def _answer(reply: dict[str, Any], seconds: float) -> Answer:
    error = reply.get("error")
    return Answer(
        success=bool(reply["success"]),
        error=error[:1000] if isinstance(error, str) else None,
        timings=timing_summary(reply.get("timings")),
        seconds=seconds,
    )


def exchange(
    eval_command: Command,
    tool_command: Command,
    timeout: float,
    other_command: Command | None = None,
    progress: IO[str] | None = None,
    eval_timeout: float = EVAL_TIMEOUT,
) -> Exchange:
    """Run one eval against one tool, relaying their messages; what happened.

    ``timeout`` bounds each of the tool's replies, as GradBench's driver does;
    ``eval_timeout`` the eval's own work between two messages (it starts, and validates
    outputs against GradBench's C++), which GradBench does not bound at all.

    With ``other_command``, each ``start``, ``define`` and ``evaluate`` message also goes
    to that second tool (timed beside the first; its replies are recorded, not relayed).

    Every program started is killed and reaped before this returns. Ctrl-C ends the
    exchange with the outcome ``"interrupted"``: the caller stops there.
    """
    record = Exchange()
    begin = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            evaluator = Child("eval", eval_command)
            stack.callback(evaluator.close)
            tool = Child("tool", tool_command)
            stack.callback(tool.close)
            record.pids = [evaluator.process.pid, tool.process.pid]
            other = None
            if other_command is not None:
                other = Child("other tool", other_command)
                stack.callback(other.close)
                record.pids.append(other.process.pid)
        except OSError as error:
            record.outcome, record.detail = "could not start", str(error)
            return record
        try:
            _relay(evaluator, tool, other, (timeout, eval_timeout), record, progress)
        except _Stop as stop:
            record.outcome, record.detail = stop.outcome, stop.detail
        except KeyboardInterrupt:
            record.outcome, record.detail = "interrupted", "stopped by Ctrl-C or SIGTERM"
        finally:
            record.seconds = time.perf_counter() - begin
    return record


def _relay(
    evaluator: Child,
    tool: Child,
    other: Child | None,
    timeouts: tuple[float, float],
    record: Exchange,
    progress: IO[str] | None,
) -> None:
    """Relay until the eval ends; raises ``_Stop`` when the exchange ends otherwise."""
    timeout, eval_timeout = timeouts
    by_id: dict[str, Evaluation] = {}
    turns: dict[str, int] = {}  # per function: how many messages, so whose turn is first
    while True:
        try:
            line = evaluator.receive(eval_timeout)
        except TimeoutError:
            raise _Stop("timed out", f"the eval sent nothing for {eval_timeout:g} s") from None
        if line is None:
            status = evaluator.finish(eval_timeout)
            if status != 0:
                tail = evaluator.stderr_tail()
                raise _Stop("eval crashed", f"the eval exited with status {status}: {tail}")
            tool_status = tool.finish(10)
            record.outcome = "completed"
            if tool_status not in (0, None):
                record.detail = f"the tool exited with status {tool_status} at the end"
            return
        if not line.strip():
            continue
        message = _parse(line, "the eval")
        kind = message.get("kind")
        if kind == "end":  # no reply: the tools exit
            for each in (tool, other):
                if each is not None:
                    each.send(line)
            continue
        if kind == "analysis":  # about gradlab's output: gradlab's tool alone is told
            target = by_id.get(json.dumps(message.get("of")))
            if target is not None:
                target.valid = message.get("valid") is True
                target.analysis_error = headline(message.get("error"))
                if progress is not None:
                    _show(progress, target)
            reply_line, _ = _ask(tool, line, message, timeout)
            evaluator.send(reply_line)
            continue
        evaluation = None
        if kind == "evaluate":
            description = message.get("description")
            evaluation = Evaluation(
                message.get("id"),
                str(message.get("function")),
                description if isinstance(description, str) else None,
            )
            record.evaluations.append(evaluation)
            by_id[json.dumps(message.get("id"))] = evaluation
        try:
            reply_line = _ask_both(tool, other, line, message, timeout, record, evaluation, turns)
        except _Stop:
            if evaluation is not None and progress is not None:
                _show(progress, evaluation)
            raise
        if evaluation is not None and evaluation.answer.success is False and progress is not None:
            _show(progress, evaluation)
        evaluator.send(reply_line)


def _ask_both(
    tool: Child,
    other: Child | None,
    line: bytes,
    message: dict[str, Any],
    timeout: float,
    record: Exchange,
    evaluation: Evaluation | None,
    turns: dict[str, int],
) -> bytes:
    """gradlab's reply to one message (for the eval), the other tool asked too when timing:
    for ``evaluate`` messages, first in every other message of the same function."""
    kind = message.get("kind")
    asking_other = other is not None and record.other_error is None and kind != "analysis"
    other_first = False
    if asking_other and evaluation is not None:
        count = turns.get(evaluation.function, 0)
        turns[evaluation.function] = count + 1
        other_first = count % 2 == 1
    other_reply = None
    if asking_other and other_first:
        assert other is not None
        other_reply = _ask_other(other, line, message, timeout, record, evaluation)
    sent = time.perf_counter()
    try:
        reply_line, reply = _ask(tool, line, message, timeout)
    except _Stop as stop:
        if evaluation is not None:
            evaluation.answer.timed_out = stop.outcome == "timed out"
            evaluation.answer.error = stop.detail
        raise
    seconds = time.perf_counter() - sent
    if asking_other and not other_first:
        assert other is not None
        other_reply = _ask_other(other, line, message, timeout, record, evaluation)
    if kind == "start":
        record.tool, record.config = reply.get("tool"), reply.get("config")
    elif kind == "define":
        record.defined = bool(reply["success"])
        error = reply.get("error")
        record.define_error = error[:1000] if isinstance(error, str) else None
    elif evaluation is not None:
        evaluation.answer = _answer(reply, seconds)
        if asking_other:
            evaluation.first = "other" if other_first else "gradlab"
        if other_reply is not None and reply["success"] and other_reply.get("success"):
            evaluation.difference = largest_difference(
                other_reply.get("output"), reply.get("output")
            )
    return reply_line


def _ask_other(
    other: Child,
    line: bytes,
    message: dict[str, Any],
    timeout: float,
    record: Exchange,
    evaluation: Evaluation | None,
) -> dict[str, Any] | None:
    """The other tool's reply, recorded; None once it has failed (it is then asked no more:
    a tool that timed out or crashed is killed, one that refused ``define`` is done)."""
    sent = time.perf_counter()
    try:
        _, reply = _ask(other, line, message, timeout)
    except _Stop as stop:
        record.other_error = stop.detail
        if evaluation is not None:
            evaluation.other = Answer(timed_out=stop.outcome == "timed out", error=stop.detail)
        other.close()
        return None
    seconds = time.perf_counter() - sent
    kind = message.get("kind")
    if kind == "start":
        record.other_tool = reply.get("tool")
    elif kind == "define":
        record.other_defined = bool(reply["success"])
        if not reply["success"]:
            record.other_error = f"undefined: {headline(reply.get('error'))}"
    elif evaluation is not None:
        evaluation.other = _answer(reply, seconds)
    return reply


def _show(progress: IO[str], evaluation: Evaluation) -> None:
    """One line of progress for a message: how it ended and gradlab's time."""
    answer = evaluation.answer
    if answer.timed_out:
        status = "timed out"
    elif answer.success is False:
        status = f"failed: {headline(answer.error)}"
    elif evaluation.valid is False:
        status = f"invalid: {evaluation.analysis_error}"
    elif evaluation.valid is True:
        status = "valid"
    else:
        status = "no answer" if answer.success is None else "not analysed"
    fastest = answer.minimum()
    took = f" ({seconds_text(fastest / 1e9)})" if fastest is not None else ""
    progress.write(
        f"    [{evaluation.id}] {evaluation.function} {evaluation.description or ''}: "
        f"{status}{took}\n"
    )
    progress.flush()


def seconds_text(seconds: float | None) -> str:
    """A duration to three significant digits, in the unit that reads best."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# -- GradBench's checkout, mirrored --------------------------------------------------------


def _link(target: Path, at: Path) -> None:
    if at.is_symlink() or at.is_file():
        at.unlink()
    if not at.exists():
        at.symlink_to(target)


def _own_directory(at: Path) -> Path:
    if at.is_symlink():
        at.unlink()
    at.mkdir(parents=True, exist_ok=True)
    return at


#: Where the JSON header the C++ tools include is found when the checkout has none.
JSON_HEADERS = (
    Path("/usr/include/nlohmann/json.hpp"),
    Path("/usr/local/include/nlohmann/json.hpp"),
)


def mirror(checkout: Path, work: Path) -> Path:
    """A directory that reads as the checkout, through symbolic links, but whose
    ``tools/manual/bin`` (what ``make`` builds) and ``cpp/json.hpp`` are its own, so that
    the checkout is never written to.

    Raises:
        SystemExit: The checkout is not GradBench's, or no JSON header for its C++ is found.
    """
    for needed in ("python/gradbench/gradbench/eval.py", "tools/manual/Makefile", "cpp"):
        if not (checkout / needed).exists():
            raise SystemExit(
                f"--gradbench: {checkout} has no {needed}: not a checkout of GradBench "
                f"(git clone https://github.com/gradbench/gradbench; commit {GRADBENCH_COMMIT})"
            )
    work = _own_directory(work)
    own = {"tools", "cpp", ".git"}
    for entry in checkout.iterdir():
        if entry.name not in own:
            _link(entry, work / entry.name)
    tools = _own_directory(work / "tools")
    for entry in (checkout / "tools").iterdir():
        if entry.name != "manual":
            _link(entry, tools / entry.name)
    manual = _own_directory(tools / "manual")
    for entry in (checkout / "tools" / "manual").iterdir():
        if entry.name != "bin":
            _link(entry, manual / entry.name)
    cpp = _own_directory(work / "cpp")
    for entry in (checkout / "cpp").iterdir():
        _link(entry, cpp / entry.name)
    if not (cpp / "json.hpp").exists():
        header = next((path for path in JSON_HEADERS if path.exists()), None)
        if header is None:
            raise SystemExit(
                "GradBench's C++ includes json.hpp (nlohmann/json), found neither in "
                f"{checkout}/cpp nor in {', '.join(map(str, JSON_HEADERS))}: "
                "apt-get install nlohmann-json3-dev (or make -C <checkout>/cpp, which downloads it)"
            )
        _link(header, cpp / "json.hpp")
    return work


def build_manual(work: Path, eval_name: str) -> str | None:
    """Build GradBench's golden C++ for an eval, as its eval images do: why not, or None."""
    if not (work / "tools" / "manual" / f"{eval_name}.cpp").exists():
        return None  # an eval without C++ to validate against (particle, saddle)
    done = subprocess.run(
        ["make", "-C", str(work / "tools" / "manual"), f"bin/{eval_name}", "NATIVE=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    return f"make bin/{eval_name} failed: {headline(done.stderr or done.stdout)}"


def gradbench_commit(checkout: Path) -> str | None:
    """The checkout's commit, read with git; None where it is not a git checkout."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def eval_names(checkout: Path) -> list[str]:
    """Every eval in the checkout."""
    root = checkout / "python" / "gradbench" / "gradbench" / "evals"
    return sorted(path.parent.name for path in root.glob("*/run.py"))


def tool_evals(checkout: Path, tool: str) -> list[str]:
    """The evals a GradBench tool implements: ``tools/<tool>/evals.txt``, without those it
    lists with an outcome (``ba error``, ``ht timeout``)."""
    listed = (checkout / "tools" / tool / "evals.txt").read_text(encoding="utf-8").splitlines()
    return [line.split()[0] for line in listed if len(line.split()) == 1]


def python_path(*paths: str | Path) -> dict[str, str]:
    """This environment with ``paths`` first on PYTHONPATH."""
    kept = [str(path) for path in paths]
    if os.environ.get("PYTHONPATH"):
        kept.append(os.environ["PYTHONPATH"])
    return dict(os.environ) | {"PYTHONPATH": os.pathsep.join(kept)}


def eval_command(
    work: Path, eval_name: str, python: str, deps: Sequence[Path], args: Sequence[str]
) -> Command:
    """GradBench's eval, as its image runs it: ``run.py`` by path, from the checkout."""
    script = work / "python" / "gradbench" / "gradbench" / "evals" / eval_name / "run.py"
    env = python_path(work / "python" / "gradbench", *deps)
    return Command((python, str(script), *args), work, env)


def gradlab_command(engine: str, python: str, cwd: Path) -> Command:
    """gradlab's GradBench tool for one engine."""
    return Command((python, "-m", "gradlab.gradbench", "--engine", engine), cwd, dict(os.environ))


def gradbench_tool_command(
    pair: GradBenchTool,
    work: Path,
    python: str,
    deps: Sequence[Path],
    threads: str,
    as_is: bool = False,
) -> Command:
    """One of GradBench's own tools, as its image runs it (waiting for each result, where
    the tool does not, unless ``as_is``)."""
    extra = pair.multithreaded if threads == "all" else ()
    launcher = ("-c", pair.waiting) if pair.waiting and not as_is else ()
    argv = (python, *launcher, str(work / pair.script), *pair.arguments, *extra)
    return Command(argv, work, python_path(work / "python" / "gradbench", *deps))


def eval_arguments(specs: Sequence[str], eval_name: str) -> list[str]:
    """The arguments for one eval out of ``--eval-args`` (``"ARGS"`` for every eval,
    ``"EVAL=ARGS"`` for one)."""
    arguments: list[str] = []
    for spec in specs:
        matched = re.fullmatch(r"([a-z][a-z0-9_]*)=(.*)", spec, flags=re.DOTALL)
        if matched is None:
            arguments += shlex.split(spec)
        elif matched.group(1) == eval_name:
            arguments += shlex.split(matched.group(2))
    return arguments


# -- the runs --------------------------------------------------------------------------------


@dataclass
class Cell:
    """One eval × engine: the exchange, or why there was none."""

    eval: str
    engine: str
    exchange: Exchange | None = None
    skipped: str | None = None

    def status(self) -> str:
        """pass, known, undefined, skipped, interrupted, or defect."""
        if self.skipped is not None:
            return "skipped"
        assert self.exchange is not None
        if self.exchange.outcome == "interrupted":
            return "interrupted"
        if self.exchange.passed():
            return "pass"
        if self.exchange.outcome == "completed" and self.exchange.defined is False:
            return "undefined"
        entry = known(self.eval, self.engine)
        if entry is not None and self.exchange.failures() <= entry.failures:
            return "known"
        return "defect"


def known(eval_name: str, engine: str) -> Known | None:
    """The ``KNOWN`` entry of a cell, if there is one."""
    return next((k for k in KNOWN if (k.eval, k.engine) == (eval_name, engine)), None)


def validate(
    checkout: Path,
    work: Path,
    evals: Sequence[str],
    engines: Sequence[str],
    *,
    python: str,
    deps: Sequence[Path],
    eval_args: Sequence[str],
    timeouts: Mapping[str, float],
    skip: set[tuple[str, str]],
    progress: IO[str],
    cells: list[Cell],
    saved: Callable[[], object] = lambda: None,
) -> None:
    """Every eval × engine into ``cells``, each eval's C++ built first (its cells are
    skipped if that fails); ``saved`` is called after each cell (the reports so far).

    Raises:
        KeyboardInterrupt: Ctrl-C; ``cells`` has every cell done, the one interrupted too.
    """
    for eval_name in evals:
        failed = build_manual(work, eval_name)
        for engine in engines:
            cell = Cell(eval_name, engine)
            cells.append(cell)
            if failed is not None:
                cell.skipped = failed
                continue
            if (eval_name, engine) in skip:
                cell.skipped = "--skip"
                continue
            progress.write(f"{eval_name} × {engine}\n")
            progress.flush()
            args = eval_arguments(eval_args, eval_name)
            cell.exchange = exchange(
                eval_command(work, eval_name, python, deps, args),
                gradlab_command(engine, python, work),
                timeouts.get(engine, timeouts[""]),
                progress=progress,
            )
            progress.write(f"  -> {cell_text(cell)} in {seconds_text(cell.exchange.seconds)}\n")
            progress.flush()
            saved()
            if cell.exchange.outcome == "interrupted":
                raise KeyboardInterrupt


@dataclass
class Timed:
    """One eval timed on gradlab's engine beside GradBench's tool."""

    eval: str
    pair: GradBenchTool
    exchange: Exchange | None = None
    skipped: str | None = None

    def sums(self, role: str) -> tuple[float, float, int] | None:
        """gradlab's and the other tool's summed minima (s) for the primal or the
        derivative functions, over the messages both answered, and how many there were."""
        assert self.exchange is not None
        ours = theirs = 0
        count = 0
        for evaluation in self.exchange.evaluations:
            is_primal = evaluation.function in PRIMAL_FUNCTIONS
            if is_primal != (role == "primal") or evaluation.other is None:
                continue
            mine, other = evaluation.answer.minimum(), evaluation.other.minimum()
            answered = evaluation.answer.success and evaluation.other.success
            if mine is None or other is None or not answered:
                continue
            ours, theirs, count = ours + mine, theirs + other, count + 1
        return (ours / 1e9, theirs / 1e9, count) if count else None


@contextlib.contextmanager
def pinned(threads: str) -> Iterator[list[int] | None]:
    """With ``threads == "one"``, this process (and so every child) on one CPU: CPU 0,
    where GradBench's jax tool pins itself. Restored after."""
    if threads != "one" or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = 0 if 0 in before else min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield [cpu]
    finally:
        os.sched_setaffinity(0, before)


def time_tools(
    checkout: Path,
    work: Path,
    evals: Sequence[str],
    engines: Sequence[str],
    *,
    python: str,
    deps: Sequence[Path],
    eval_args: Sequence[str],
    timeouts: Mapping[str, float],
    skip: set[tuple[str, str]],
    min_runs: int,
    min_seconds: float,
    threads: str,
    jax_as_is: bool,
    progress: IO[str],
    runs: list[Timed],
    saved: Callable[[], object] = lambda: None,
) -> None:
    """Each eval both tools implement into ``runs``, gradlab's engine beside GradBench's
    tool; ``saved`` is called after each (the reports so far).

    Raises:
        KeyboardInterrupt: Ctrl-C; ``runs`` has every run done, the one interrupted too.
    """
    from gradlab.gradbench._evals import EVALS

    for pair in PAIRS:
        if pair.engine not in engines:
            continue
        theirs = tool_evals(checkout, pair.name)
        for eval_name in evals:
            if eval_name not in theirs or eval_name not in EVALS:
                continue
            timed = Timed(eval_name, pair)
            runs.append(timed)
            failed = build_manual(work, eval_name)
            if failed is not None or (eval_name, pair.engine) in skip:
                timed.skipped = failed or "--skip"
                continue
            script = work / "python" / "gradbench" / "gradbench" / "evals" / eval_name / "run.py"
            args = eval_arguments(eval_args, eval_name)
            if "--min-runs" in script.read_text(encoding="utf-8"):
                args = ["--min-runs", str(min_runs), "--min-seconds", str(min_seconds), *args]
            progress.write(f"{eval_name}: gradlab {pair.engine} beside GradBench {pair.name}\n")
            progress.flush()
            timed.exchange = exchange(
                eval_command(work, eval_name, python, deps, args),
                gradlab_command(pair.engine, python, work),
                timeouts.get(pair.engine, timeouts[""]),
                gradbench_tool_command(pair, work, python, deps, threads, jax_as_is),
                progress=progress,
            )
            progress.write(f"  -> {timed_text(timed)}\n")
            progress.flush()
            saved()
            if timed.exchange.outcome == "interrupted":
                raise KeyboardInterrupt


# -- the reports -----------------------------------------------------------------------------


def cell_text(cell: Cell) -> str:
    """A table cell: valid/total and how the rest ended, or why nothing ran."""
    if cell.skipped is not None:
        return f"skipped ({cell.skipped})" if cell.skipped == "--skip" else "skipped"
    record = cell.exchange
    assert record is not None
    if record.outcome == "completed" and record.defined is False:
        return "undefined"
    counts = record.counts()
    text = f"{counts['valid']}/{counts['total']}"
    notes = [
        f"{counts[key]} {label}"
        for key, label in (
            ("invalid", "invalid"),
            ("failed", "failed"),
            ("timed_out", "timed out"),
            ("unchecked", "not analysed"),
        )
        if counts[key]
    ]
    if record.outcome not in ("completed", "timed out"):
        notes.append(record.outcome)
    if notes:
        text += " (" + ", ".join(notes) + ")"
    if cell.status() == "known":
        text += " known"
    elif cell.status() == "defect":
        text += " **defect**"
    return text


def validation_report(cells: Sequence[Cell], meta: Mapping[str, Any]) -> str:
    """The markdown report: the table eval × engine, then what went wrong where."""
    evals = list(dict.fromkeys(cell.eval for cell in cells))
    engines = list(dict.fromkeys(cell.engine for cell in cells))
    by = {(cell.eval, cell.engine): cell for cell in cells}
    statuses = [cell.status() for cell in cells]
    lines = [
        "# gradlab's GradBench tool, checked by GradBench's own evals",
        "",
        f"GradBench {meta.get('gradbench_commit') or '(commit unknown)'}; gradlab "
        f"{meta.get('gradlab_commit') or ''}; {meta.get('machine', '')}; started "
        f"{meta.get('started', '?')}. Each eval at its "
        "default sizes unless said below, validated by the eval against GradBench's C++ "
        f"`manual` tool; timeout {_timeouts_text(meta.get('timeout'))} per message. "
        "Cells: messages the eval found valid / evaluate messages sent.",
        "",
    ]
    if meta.get("eval_args"):
        lines += [f"Eval arguments: `{' ; '.join(meta['eval_args'])}`.", ""]
    lines += [
        "| eval | " + " | ".join(engines) + " |",
        "|---|" + "---|" * len(engines),
    ]
    for eval_name in evals:
        row = [cell_text(by[eval_name, e]) if (eval_name, e) in by else "" for e in engines]
        lines.append(f"| {eval_name} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"{len(cells)} cells: {statuses.count('pass')} pass, {statuses.count('known')} known, "
        f"{statuses.count('undefined')} undefined (refused at `define`), "
        f"{statuses.count('skipped')} skipped, **{statuses.count('defect')} defects**"
        + (
            f", {statuses.count('interrupted')} interrupted (the run was stopped)."
            if "interrupted" in statuses
            else "."
        ),
    ]
    details = [cell for cell in cells if cell.status() not in ("pass",)]
    if details:
        lines += ["", "## What did not pass", ""]
    for cell in details:
        lines.append(f"- **{cell.eval} × {cell.engine}** ({cell.status()}): " + _why(cell))
        record = cell.exchange
        shown = 0
        for evaluation in record.evaluations if record else []:
            if evaluation.valid is True:
                continue
            if shown == 5:
                lines.append("  - ...")
                break
            shown += 1
            what = (
                "timed out"
                if evaluation.answer.timed_out
                else f"failed: {headline(evaluation.answer.error)}"
                if evaluation.answer.success is False
                else f"invalid: {evaluation.analysis_error}"
                if evaluation.valid is False
                else "not analysed"
            )
            lines.append(
                f"  - `{evaluation.function}` {evaluation.description or ''}: {_escape(what)}"
            )
    used = [k for k in KNOWN if any(c.eval == k.eval and c.engine == k.engine for c in cells)]
    if used:
        lines += ["", "## Known limits", ""]
        for entry in used:
            happened = by[entry.eval, entry.engine].status()
            lines.append(
                f"- {entry.eval} × {entry.engine}: {entry.why} ({entry.url})"
                + ("; it passed in this run" if happened == "pass" else "")
            )
    return "\n".join(lines) + "\n"


def _timeouts_text(timeouts: Any) -> str:
    if not isinstance(timeouts, Mapping):
        return f"{timeouts} s"
    default = timeouts.get("", 600)
    others = [f"{engine} {seconds:g} s" for engine, seconds in timeouts.items() if engine]
    return f"{default:g} s" + (f" ({', '.join(others)})" if others else "")


def _why(cell: Cell) -> str:
    if cell.skipped is not None:
        return _escape(cell.skipped)
    record = cell.exchange
    assert record is not None
    parts = []
    if record.defined is False:
        parts.append(f"define refused: {headline(record.define_error)}")
    if record.outcome != "completed" or record.detail:
        parts.append(f"{record.outcome}: {record.detail}")
    entry = known(cell.eval, cell.engine)
    if entry is not None and cell.status() == "known":
        parts.append(f"known: {entry.why} ({entry.url})")
    return _escape("; ".join(parts) or "see below")


def _escape(text: str) -> str:
    """Text for a markdown line: no table pipes, no line breaks."""
    return text.replace("|", "\\|").replace("\n", " ")


def timed_text(timed: Timed) -> str:
    """A cell of the timing table: derivative and primal ratios gradlab / GradBench."""
    if timed.skipped is not None:
        return f"skipped ({timed.skipped})"
    record = timed.exchange
    assert record is not None
    parts = []
    for role, label in (("derivative", "∂"), ("primal", "primal")):
        sums = timed.sums(role)
        if sums is not None:
            ours, theirs, count = sums
            parts.append(
                f"{label} **{_ratio(ours / theirs)}** ({seconds_text(ours)} / "
                f"{seconds_text(theirs)}, {count})"
            )
    text = "; ".join(parts) or "no time"
    problems = []
    if record.outcome != "completed":
        problems.append(f"gradlab {record.outcome}")
    elif record.defined is False:
        problems.append("gradlab undefined")
    counts = record.counts()
    if counts["valid"] != counts["total"]:
        problems.append(f"gradlab {counts['valid']}/{counts['total']} valid")
    if record.other_error:
        problems.append(f"GradBench's tool: {headline(record.other_error)}")
    both = [e for e in record.evaluations if e.answer.success and e.other and e.other.success]
    disagree = [e for e in both if e.difference is None or e.difference > TOLERANCE]
    if disagree:
        problems.append(f"outputs differ on {len(disagree)}")
    single = any(
        e.other is not None and e.other.timings.get("evaluate", {}).get("runs") == 1
        for e in record.evaluations
    )
    if single:  # hello takes no min_runs: one run, GradBench's compiling in it
        problems.append("1 run a message: GradBench's includes its first call")
    if problems:
        text += " — " + _escape("; ".join(problems))
    return text


def _ratio(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _eval_order(names: Sequence[str], meta: Mapping[str, Any]) -> list[str]:
    """``names`` once each, in the order the run was asked for (``meta["evals"]``)."""
    asked = list(meta.get("evals") or [])
    unique = list(dict.fromkeys(names))
    return sorted(unique, key=lambda name: asked.index(name) if name in asked else len(asked))


def timing_report(runs: Sequence[Timed], meta: Mapping[str, Any]) -> str:
    """The markdown report of ``--time``: per eval, gradlab / GradBench per framework."""
    lines = [
        "# gradlab's GradBench tool beside GradBench's own tools",
        "",
        f"GradBench {meta.get('gradbench_commit') or '(commit unknown)'}; gradlab "
        f"{meta.get('gradlab_commit') or ''}; {meta.get('machine', '')}; started "
        f"{meta.get('started', '?')}; CPUs: {meta.get('cpus')}. Each eval at its default "
        "sizes with "
        f"`--min-runs {meta.get('min_runs')} --min-seconds {meta.get('min_seconds')}`; the "
        "same messages to both tools, one after the other, alternating which goes first. "
        "Per message, the fastest `evaluate` run (gradlab's first call, reported apart as "
        "`warmup`, is not among them; neither is GradBench's first run, the slowest, with "
        "at least 2 runs). Cells: gradlab / GradBench of those minima summed over the sizes "
        "both answered, for the derivative (∂) and the primal, with the two sums and the "
        "count of sizes. Below 1: gradlab is faster. "
        + (
            "GradBench's jax tool is run with each timed call waiting for its result "
            "(`jax.block_until_ready`, as gradlab's does; `JAX_WAITING` in the script): "
            "as it is, it times jax's asynchronous dispatch."
            + (
                " It runs in jax's 64-bit mode throughout: as it is, its `ode` module computes "
                "in float32 (every other module turns the mode on)."
                if meta.get("jax_x64", False)
                else ""
            )
            if meta.get("jax_waited_for", True)
            else "GradBench's jax tool as it is: its timings are jax's asynchronous dispatch, "
            "gradlab's the finished computation."
        ),
        "",
        "| eval | " + " | ".join(f"gradlab {p.engine} / GradBench {p.name}" for p in PAIRS) + " |",
        "|---|" + "---|" * len(PAIRS),
    ]
    by = {(timed.eval, timed.pair.name): timed for timed in runs}
    ran = {timed.pair.name for timed in runs}
    order = _eval_order([timed.eval for timed in runs], meta)
    for eval_name in order:
        row = [
            timed_text(by[eval_name, p.name])
            if (eval_name, p.name) in by
            else "—"
            if p.name in ran
            else "not run"
            for p in PAIRS
        ]
        lines.append(f"| {eval_name} | " + " | ".join(row) + " |")
    lines += [
        "",
        "— : the GradBench tool does not implement the eval (its `evals.txt`).",
        "",
        "The largest difference between the two tools' outputs, message by message "
        f"(GradBench's rule; it fails an output above {TOLERANCE:g}):",
        "",
        "| eval | " + " | ".join(f"{p.engine} vs {p.name}" for p in PAIRS) + " |",
        "|---|" + "---|" * len(PAIRS),
    ]
    for eval_name in order:
        row = []
        for p in PAIRS:
            timed = by.get((eval_name, p.name))
            found = [
                e.difference
                for e in (timed.exchange.evaluations if timed and timed.exchange else [])
                if e.difference is not None
            ]
            row.append(f"{max(found):.1e}" if found else "—")
        lines.append(f"| {eval_name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def jsonable(value: Any) -> Any:
    """Dataclasses as dicts, paths as strings, for ``json.dump``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(item) for item in value)
    if isinstance(value, Path):
        return str(value)
    return value


def machine() -> str:
    """This machine, in one line."""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def gradlab_commit() -> str | None:
    """gradlab's commit (``+`` when the work tree has changes), read with git."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def write(out: Path, markdown: str, data: Any) -> None:
    """``OUT.md`` and ``OUT.json``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".md").write_text(markdown, encoding="utf-8")
    with out.with_name(out.name + ".json").open("w", encoding="utf-8") as handle:
        json.dump(jsonable(data), handle, indent=1)
        handle.write("\n")


# -- the command line ------------------------------------------------------------------------


def _names(text: str, argument: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise SystemExit(f"{argument}: expected a comma-separated list, got {text!r}")
    return names


def _answer_from(raw: Any) -> Answer | None:
    return None if raw is None else Answer(**raw)


def _exchange_from(raw: Any) -> Exchange | None:
    """An ``Exchange`` as ``jsonable`` wrote it, read back."""
    if raw is None:
        return None
    evaluations = [
        Evaluation(**(e | {"answer": _answer_from(e["answer"]), "other": _answer_from(e["other"])}))
        for e in raw["evaluations"]
    ]
    return Exchange(**(raw | {"evaluations": evaluations}))


def render(saved: Path, out: Path | None) -> int:
    """Write the reports of an earlier run again from its JSON, with today's ``KNOWN``
    (to ``out``, or over the run's own files)."""
    data = json.loads(saved.read_text(encoding="utf-8"))
    target = out or saved.with_suffix("")
    target = target.with_suffix("") if target.suffix in (".md", ".json") else target
    if "runs" in data:
        runs = [
            Timed(
                run["eval"],
                next(pair for pair in PAIRS if pair.name == run["pair"]["name"]),
                _exchange_from(run["exchange"]),
                run["skipped"],
            )
            for run in data["runs"]
        ]
        markdown = timing_report(runs, data["meta"])
        write(target, markdown, data | {"runs": runs})
    else:
        cells = [
            Cell(cell["eval"], cell["engine"], _exchange_from(cell["exchange"]), cell["skipped"])
            for cell in data["cells"]
        ]
        markdown = validation_report(cells, data["meta"])
        statuses = {f"{cell.eval}:{cell.engine}": cell.status() for cell in cells}
        write(target, markdown, data | {"known": KNOWN, "statuses": statuses, "cells": cells})
    print(markdown)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; 0, 1 when a validation found a defect, 130 when interrupted."""
    # A run stopped with SIGTERM ends as with Ctrl-C: its programs killed, what it has kept.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        description="gradlab's GradBench tool checked by GradBench's own evals (or, with "
        "--time, timed beside GradBench's own tools).",
    )
    parser.add_argument("--gradbench", type=Path, help="a GradBench checkout")
    parser.add_argument("--engines", default="numpy,torch,jax", help="gradlab engines")
    parser.add_argument("--evals", default=None, help="evals (default: every eval there)")
    parser.add_argument(
        "--eval-args",
        action="append",
        default=[],
        help='arguments for every eval ("ARGS") or one ("EVAL=ARGS"); repeatable',
    )
    parser.add_argument(
        "--timeout",
        action="append",
        default=[],
        help="seconds per message (600), or ENGINE=SECONDS for one engine; repeatable",
    )
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.md and OUT.json")
    parser.add_argument(
        "--deps",
        type=Path,
        action="append",
        default=[],
        help="a directory with pydantic and dataclasses-json (pip install --target DIR)",
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter for all")
    parser.add_argument("--work", type=Path, default=None, help="the mirror of the checkout")
    parser.add_argument(
        "--skip", action="append", default=[], help="EVAL:ENGINE not to run; repeatable"
    )
    parser.add_argument("--time", action="store_true", help="time beside GradBench's tools")
    parser.add_argument("--min-runs", type=int, default=5, help="with --time")
    parser.add_argument("--min-seconds", type=float, default=0.0, help="with --time")
    parser.add_argument("--threads", choices=("one", "all"), default="one", help="with --time")
    parser.add_argument(
        "--jax-as-is",
        action="store_true",
        help="with --time: GradBench's jax tool not waiting for its results (its own timing)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="rewrite the reports of an earlier run from its JSON (after editing KNOWN)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out)
    if args.gradbench is None:
        parser.error("--gradbench is required (a GradBench checkout)")
    checkout = args.gradbench.resolve()
    if not checkout.is_dir():
        parser.error(f"--gradbench: {checkout} is not a directory")
    timeouts = {"": 600.0}
    for spec in args.timeout:
        engine, _, seconds = spec.rpartition("=")
        try:
            timeouts[engine] = float(seconds)
        except ValueError:
            parser.error(f"--timeout: expected SECONDS or ENGINE=SECONDS, got {spec!r}")
        if not 0 < timeouts[engine] < math.inf:
            parser.error(f"--timeout: must be a positive number of seconds, got {spec!r}")
    if args.min_runs < 1 or args.min_seconds < 0:
        parser.error("--min-runs must be ≥ 1 and --min-seconds ≥ 0")
    skip = set()
    for spec in args.skip:
        eval_name, sep, engine = spec.partition(":")
        if not sep:
            parser.error(f"--skip: expected EVAL:ENGINE, got {spec!r}")
        skip.add((eval_name, engine))
    available = eval_names(checkout)
    evals = available if args.evals is None else _names(args.evals, "--evals")
    unknown = [name for name in evals if name not in available]
    if unknown:
        parser.error(f"--evals: {checkout} has no eval {', '.join(unknown)}")
    engines = _names(args.engines, "--engines")
    digest = hashlib.sha1(str(checkout).encode()).hexdigest()[:10]
    # --time's own work directory: GradBench's C++ tool rebuilds its binaries (make -B),
    # which must not pull one from under a validation running at the same time.
    default_work = Path(tempfile.gettempdir()) / (
        f"gradlab-gradbench-{digest}" + ("-time" if args.time else "")
    )
    work = mirror(checkout, (args.work or default_work).resolve())
    kind = "gradbench-vs-tools" if args.time else "gradbench-validate"
    out = args.out or Path(__file__).resolve().parent / "results" / kind
    out = out.with_suffix("") if out.suffix in (".md", ".json") else out
    meta: dict[str, Any] = {
        "gradbench": str(checkout),
        "gradbench_commit": gradbench_commit(checkout),
        "gradlab_commit": gradlab_commit(),
        "machine": machine(),
        "python": args.python,
        "timeout": timeouts,
        "eval_args": args.eval_args,
        "skip": sorted(f"{e}:{g}" for e, g in skip),
        "evals": evals,
        "engines": engines,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    common: dict[str, Any] = {
        "python": args.python,
        "deps": [path.resolve() for path in args.deps],
        "eval_args": args.eval_args,
        "timeouts": timeouts,
        "skip": skip,
        "progress": sys.stderr,
    }
    interrupted = False
    runs: list[Timed] = []
    cells: list[Cell] = []

    def save_timing() -> str:
        markdown = timing_report(runs, meta)
        write(out, markdown, {"meta": meta, "runs": runs})
        return markdown

    def save_validation() -> str:
        markdown = validation_report(cells, meta)
        statuses = {f"{cell.eval}:{cell.engine}": cell.status() for cell in cells}
        write(out, markdown, {"meta": meta, "known": KNOWN, "statuses": statuses, "cells": cells})
        return markdown

    if args.time:
        with pinned(args.threads) as cpus:
            meta |= {
                "min_runs": args.min_runs,
                "min_seconds": args.min_seconds,
                "threads": args.threads,
                "jax_waited_for": not args.jax_as_is,
                "jax_x64": not args.jax_as_is,
                "cpus": cpus or "all",
            }
            try:
                time_tools(
                    checkout,
                    work,
                    evals,
                    engines,
                    min_runs=args.min_runs,
                    min_seconds=args.min_seconds,
                    threads=args.threads,
                    jax_as_is=args.jax_as_is,
                    runs=runs,
                    saved=save_timing,
                    **common,
                )
            except KeyboardInterrupt:
                interrupted = True
        print(save_timing())
        return 130 if interrupted else 0
    try:
        validate(checkout, work, evals, engines, cells=cells, saved=save_validation, **common)
    except KeyboardInterrupt:
        interrupted = True
    print(save_validation())
    if interrupted:
        return 130
    return 1 if any(cell.status() == "defect" for cell in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
