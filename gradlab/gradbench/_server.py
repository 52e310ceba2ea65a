"""The tool's side of GradBench's protocol: messages read, checked, answered (see the
package's docstring)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np

from gradlab._boundary import on_engine, on_engine_together, prepare
from gradlab._errors import ArgumentTypeError, GradlabError, first_line
from gradlab._loss import calling
from gradlab._output import strict_json
from gradlab.engines import GradientEngine, get_engine
from gradlab.engines._protocol import (
    block_of,
    hvp_of,
    objective_of,
    output_of,
    to_numpy_all_of,
    value_and_grad_of,
)
from gradlab.gradbench._evals import (
    EVALS,
    GRADIENT,
    JACOBIAN,
    NESTED,
    NEWTON,
    VECTOR,
    BadInput,
    Case,
    Eval,
    shown,
)
from gradlab.problems._base import AbstractProblem

__all__ = ["EVALS", "main", "serve"]

Message = dict[str, Any]

#: The most timed runs one ``evaluate`` makes, and the largest ``min_runs`` accepted: a
#: reply of 100,000 timings is about 5 MB of JSON.
MAX_RUNS = 100_000
#: The largest ``min_seconds`` accepted (GradBench's evals ask for 1).
MAX_SECONDS = 300
#: Wall-clock seconds from an ``evaluate``'s start after which it starts no further run.
BUDGET_SECONDS = 600
#: The longest line read, in characters (bytes on standard input).
MAX_LINE = 2**28
#: The piece in which the rest of a line too long is read and dropped.
_CHUNK = 2**20


class _Refused(Exception):
    """A message gradlab answers with ``success: false`` and this text."""


def _runs(input: Any, timed: bool) -> tuple[int, float]:
    """The input's ``min_runs`` and ``min_seconds`` (1 and 0 for an eval without them)."""
    if not timed or not isinstance(input, dict):
        return 1, 0.0
    runs, seconds = input.get("min_runs", 1), input.get("min_seconds", 0)
    if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= MAX_RUNS:
        raise BadInput(
            f"input field 'min_runs' must be an integer from 0 to {MAX_RUNS}, got {shown(runs)}"
        )
    # NaN fails both comparisons: refused with the rest.
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 <= seconds <= MAX_SECONDS
    ):
        raise BadInput(
            f"input field 'min_seconds' must be a number from 0 to {MAX_SECONDS}, "
            f"got {shown(seconds)}"
        )
    return max(runs, 1), float(seconds)


class _Computation:
    """One function of one case on one engine: ``call()`` computes (and waits for) it."""

    def __init__(
        self, engine: GradientEngine, spec: Eval, kind: str, case: Case, function: str = ""
    ) -> None:
        self.engine = engine
        self.problem: AbstractProblem | None = None
        self.call: Callable[[], Any]
        # Whether ``call`` returns NumPy already (a nested procedure's floats, a Jacobian
        # assembled on the host): its time includes bringing the result there.
        self.on_host = kind in (NESTED, JACOBIAN)
        # Whether a first, untimed run is worth making: everything but an eager nested
        # procedure (torch's particle and saddle: a minute a run, and nothing to compile).
        self.warms_up = True
        if kind == NESTED:
            self._nested(spec, function, case)
            return
        problem = case.problem
        assert problem is not None
        if kind == JACOBIAN:
            assert spec.jacobian is not None
            self.problem, self.params, self.data = problem, case.params, case.data
            self.call = spec.jacobian(engine, case)
            return
        if kind == VECTOR:
            assert spec.vector_problem is not None
            problem = spec.vector_problem(case)
        prepared = prepare(
            problem,
            case.data,
            case.params,
            engine,
            "float64",
            output="array" if kind == VECTOR else "scalar",
        )
        self.problem, self.params, self.data = prepared.problem, prepared.params, prepared.data
        data, params = on_engine_together(engine, prepared.data, prepared.params, "float64")
        block = block_of(engine)
        if kind == GRADIENT:
            gradient = value_and_grad_of(engine, self.problem)
            self.call = lambda: block(gradient(params, data)[1])
        elif kind == NEWTON:
            gradient, curvature = (
                value_and_grad_of(engine, self.problem),
                hvp_of(engine, self.problem),
            )
            ones = on_engine(
                engine, {name: np.ones_like(v) for name, v in prepared.params.items()}, "float64"
            )

            def newton() -> Any:
                # The Hessian is diagonal: H·1 is its diagonal, and J·H⁻¹ divides by it.
                grads, diagonal = gradient(params, data)[1], curvature(params, ones, data)
                return block({name: grads[name] / diagonal[name] for name in grads})

            self.call = newton
        elif kind == VECTOR:
            vector = output_of(engine, self.problem)
            self.call = lambda: block(vector(params, data))
        else:
            value = objective_of(engine, self.problem)
            self.call = lambda: block(value(params, data))

    def _nested(self, spec: Eval, function: str, case: Case) -> None:
        """particle or saddle: a procedure with the framework's derivatives inside."""
        from gradlab.gradbench import _nested

        ops = _nested.ops_for(self.engine)
        self.warms_up = ops.control.compiles  # jax compiles the whole procedure
        procedure = {"particle": _nested.particle, "saddle": _nested.saddle}[spec.name]
        start = case.params["w"][0] if spec.name == "particle" else tuple(case.params["start"])
        self.call = lambda: procedure(function, start, ops)  # type: ignore[operator]

    def guarded(self) -> contextlib.AbstractContextManager[None]:
        """Errors in the problem's code, as gradlab reports them (naming problem and engine)."""
        if self.problem is None:
            return contextlib.nullcontext()
        return calling(self.problem, self.engine, self.params, self.data)

    def to_numpy(self, result: Any) -> Any:
        """A result (a dict of engine arrays, or one) as NumPy."""
        if self.on_host:
            return result
        if isinstance(result, dict):
            names = list(result)
            return dict(
                zip(names, to_numpy_all_of(self.engine)(list(result.values())), strict=True)
            )
        return np.asarray(self.engine.to_numpy(result))


class Tool:
    """GradBench's tool side for one engine: ``answer(message)`` is the reply (or None)."""

    def __init__(self, engine: GradientEngine) -> None:
        self.engine = engine

    def answer(self, message: Message) -> Message | None:
        """The reply to one message; None for ``end``, which has none."""
        kind = message.get("kind")
        reply: Message = {"id": message.get("id")}
        if kind == "end":
            return None
        try:
            if kind == "start":
                reply |= self.start()
            elif kind == "define":
                reply |= self.define(message)
            elif kind == "evaluate":
                reply |= self.evaluate(message)
            elif kind == "analysis":
                pass  # GradBench's validation of an earlier output: acknowledged
            else:
                raise _Refused(f"unknown message kind {kind!r}")
        except (_Refused, BadInput, GradlabError) as error:
            reply |= {"success": False, "error": str(error)}
        except Exception as error:  # the tool must answer, whatever went wrong
            reply |= {"success": False, "error": f"{type(error).__name__}: {error}"}
        return reply

    def start(self) -> Message:
        from gradlab import __version__

        described = {key: str(value) for key, value in self.engine.describe().items()}
        return {
            "tool": f"gradlab-{self.engine.name}",
            "config": {"gradlab": __version__, "engine": self.engine.name, **described},
        }

    def _eval(self, message: Message) -> Eval:
        module = message.get("module")
        if not isinstance(module, str) or module not in EVALS:
            raise _Refused(
                f"gradlab does not implement module {module!r} (it implements: "
                f"{', '.join(sorted(EVALS))})"
            )
        return EVALS[module]

    def define(self, message: Message) -> Message:
        """Success when gradlab implements the module and this engine can run all of it.

        It runs each of the module's functions once on a small input, so that an engine
        that cannot (the hand-derived ``numpy`` engine without a hand gradient) says so now.
        """
        spec = self._eval(message)
        case = spec.read(spec.example(0, **_smallest(spec)))
        for function, kind in spec.functions.items():
            if kind == NESTED:  # a full run: check only that the framework nests
                from gradlab.gradbench._nested import ops_for

                ops_for(self.engine)
                continue
            computation = _Computation(self.engine, spec, kind, case, function)
            with computation.guarded():
                computation.call()
        return {"success": True}

    def evaluate(self, message: Message) -> Message:
        spec = self._eval(message)
        function = message.get("function")
        if not isinstance(function, str) or function not in spec.functions:
            raise _Refused(
                f"module {spec.name!r} has no function {function!r} "
                f"(it has: {', '.join(spec.functions)})"
            )
        if "input" not in message:
            raise _Refused("the evaluate message has no 'input'")
        runs, seconds = _runs(message["input"], spec.timed)
        clock = time.perf_counter_ns
        begin = clock()
        deadline = begin + BUDGET_SECONDS * 10**9
        case = spec.read(message["input"])
        computation = _Computation(self.engine, spec, spec.functions[function], case, function)
        timings = [{"name": "prepare", "nanoseconds": clock() - begin}]
        # Overflow gives inf, refused below as not finite, on every engine alike.
        with computation.guarded(), np.errstate(all="ignore"):
            result = None
            if computation.warms_up:
                begin = clock()
                result = computation.call()
                timings.append({"name": "warmup", "nanoseconds": clock() - begin})
            total = count = 0
            # Both minima, within the caps: a microsecond function asked for minutes of runs
            # stops at MAX_RUNS, a slow one at the budget (after one run, always).
            while (
                (count < runs or total < seconds * 1e9)
                and count < MAX_RUNS
                and (count == 0 or clock() < deadline)
            ):
                begin = clock()
                result = computation.call()
                elapsed = clock() - begin
                timings.append({"name": "evaluate", "nanoseconds": elapsed})
                total, count = total + elapsed, count + 1
            output = spec.write(function, case, computation.to_numpy(result))
        return {"success": True, "output": output, "timings": timings}


def _smallest(spec: Eval) -> dict[str, Any]:
    """Sizes for ``define``'s trial run: the eval's smallest, shrunk where still large."""
    small = {"n": 16, "m": 4, "d": 2, "k": 2, "ell": 3, "s": 2, "l": 1, "c": 3, "b": 2, "p": 8}
    small |= {"v": 16, "t": 24}
    sizes = dict(spec.sizes[0])
    return {name: small.get(name, value) for name, value in sizes.items()}


def _text_problem(value: Any) -> str | None:
    """Why ``value`` cannot be written as JSON of valid Unicode text, or None if it can.

    Strict readers (GradBench's, in Rust) refuse a string with a lone surrogate, which
    Python's parser lets in (the escape ``"\\udc80"``, or such a code point in UTF-8).
    """
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return "a string holds a lone surrogate, which is not Unicode text"
    except RecursionError:
        return "it is nested too deeply to write back"
    except (TypeError, ValueError) as error:
        return f"it is not JSON data ({type(error).__name__})"
    return None


def _reply_line(reply: Message) -> str:
    """The reply as one line of strict JSON, whatever it holds: an output that is not
    finite, or not JSON, becomes a failure; so does a reply whose text cannot be written
    as Unicode, with the id null if the id is that text."""
    # The output and timings are numbers only (each eval's ``write``); the rest is text.
    problem = _text_problem({k: v for k, v in reply.items() if k not in ("output", "timings")})
    if problem is not None:
        echoed = reply.get("id") if _text_problem(reply.get("id")) is None else None
        reply = {"id": echoed, "success": False, "error": f"the reply cannot be written: {problem}"}
    try:
        return json.dumps(reply, allow_nan=False)
    except ValueError:
        error = "the output has a value that is not a finite number (NaN or infinity)"
    except (TypeError, RecursionError) as failure:
        error = f"the output cannot be written as JSON ({type(failure).__name__})"
    return json.dumps({"id": reply.get("id"), "success": False, "error": error})


def _lines(source: Any) -> Iterator[str | bytes | None]:
    """Each line of ``source``, or None for a line longer than ``MAX_LINE`` (dropped).

    A stream is read a bounded piece at a time, so that a line without end costs no more
    memory than ``MAX_LINE``; standard input comes as bytes, so that text that is not
    UTF-8 is answered as not JSON rather than raised while reading.

    Raises:
        ArgumentTypeError: An iterable gave something other than a line of text.
    """
    if isinstance(source, (io.TextIOBase, io.BufferedIOBase, io.RawIOBase)):
        newline: Any = "\n" if isinstance(source, io.TextIOBase) else b"\n"
        while line := source.readline(MAX_LINE + 1):
            if len(line) - line.endswith(newline) <= MAX_LINE:
                yield line
                continue
            while (rest := source.readline(_CHUNK)) and not rest.endswith(newline):
                pass
            yield None
        return
    for line in source:
        if not isinstance(line, str):
            raise ArgumentTypeError(
                "messages",
                f"must give lines of JSON text, got a {type(line).__name__} "
                "(json.dumps each message)",
            )
        yield line if len(line) - line.endswith("\n") <= MAX_LINE else None


def _reply_to(tool: Tool, line: str | bytes | None) -> Message | None:
    """The reply to one line of a message; None for ``end``, which has none."""
    if line is None:
        error = f"the line is longer than {MAX_LINE} characters: dropped unread"
        return {"id": None, "success": False, "error": error}
    try:
        message = strict_json(line)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        return {"id": None, "success": False, "error": f"not JSON: {first_line(error)}"}
    if not isinstance(message, dict):
        return {"id": None, "success": False, "error": "a message must be a JSON object"}
    return tool.answer(message)


def serve(
    engine: str | GradientEngine,
    messages: Iterable[str] | None = None,
    replies: IO[str] | None = None,
) -> int:
    """Answer GradBench's messages, one JSON line each, until the input ends or ``end``.

    Args:
        engine: The engine that computes: a registry name (``"jax"``) or an engine object.
        messages: Lines of JSON text to read, one message each: a text stream or an
            iterable of strings (standard input by default). Messages already parsed
            (dicts) are refused: the tool reads text, as GradBench sends it, and checks
            that it is strict JSON.
        replies: Where replies go: a text stream (standard output by default). While
            serving, anything else printed to standard output (a framework's chatter) goes
            to standard error, so that the protocol's stream holds nothing but replies.

    Returns:
        0 when the input ended or the eval said ``end``.

    Raises:
        UnknownEngine, EngineUnavailable: before any message is read.
        ArgumentTypeError: ``messages`` is not an iterable of lines of text (a string is
            one text, not lines: wrap it in ``io.StringIO``; a dict is one message, not
            lines: ``json.dumps`` it; a binary stream gives bytes), raised before any line
            is read, or when the iterable gives something other than a string; or
            ``replies`` is not a text stream with ``write`` and ``flush``.
    """
    tool = Tool(get_engine(engine))
    if messages is not None and (
        isinstance(
            messages,
            (str, bytes, bytearray, memoryview, Mapping, io.BufferedIOBase, io.RawIOBase),
        )
        or not isinstance(messages, Iterable)
    ):
        raise ArgumentTypeError(
            "messages",
            "must be lines of JSON text, a text stream or an iterable of strings "
            f"(io.StringIO for a text, json.dumps for a message), got {type(messages).__name__}",
        )
    if replies is not None and (
        isinstance(replies, (io.BufferedIOBase, io.RawIOBase))
        or not callable(getattr(replies, "write", None))
        or not callable(getattr(replies, "flush", None))
    ):
        raise ArgumentTypeError(
            "replies",
            f"must be a text stream with write() and flush(), got {type(replies).__name__}",
        )
    # Standard input as bytes (see _lines); its text wrapper where it has no buffer.
    source = getattr(sys.stdin, "buffer", sys.stdin) if messages is None else messages
    sink = sys.stdout if replies is None else replies
    with contextlib.redirect_stdout(sys.stderr):
        for line in _lines(source):
            if line is not None and not line.strip():
                continue
            reply = _reply_to(tool, line)
            if reply is None:
                return 0
            try:
                sink.write(_reply_line(reply) + "\n")
                sink.flush()
            except BrokenPipeError:  # the eval has gone: nothing left to answer
                return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gradlab.gradbench --engine NAME``: serve on standard input and output."""
    parser = argparse.ArgumentParser(
        prog="python -m gradlab.gradbench",
        description="Run a gradlab engine as a GradBench tool on standard input and output.",
    )
    parser.add_argument("--engine", required=True, help="the gradlab engine that computes")
    args = parser.parse_args(argv)
    try:
        return serve(args.engine)
    except GradlabError as error:
        message = str(error).removeprefix("engine: ")
        print(f"gradlab gradbench: error: --engine: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
