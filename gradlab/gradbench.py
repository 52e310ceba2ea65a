"""gradlab as a GradBench tool: any gradlab engine answers GradBench's evals.

GradBench (github.com/gradbench/gradbench) runs an *eval* and a *tool* as two programs that
exchange JSON lines: the eval sends ``start``, ``define``, ``evaluate`` and ``analysis``
messages; the tool answers each with the message's ``id``. This module is the tool's side,
for every gradlab engine at once::

    gradlab gradbench --engine jax
    python -m gradlab.gradbench --engine torch

so that GradBench's own command line can run it (``--tool 'gradlab gradbench --engine
jax'``) and validate its outputs. The evals gradlab implements are in
``gradlab._gradbench_evals`` (``EVALS``); each is a gradlab problem that every engine
differentiates.

Timing: each ``evaluate`` runs its function once first (that call, with any tracing or
compilation, reported as ``"warmup"``; not for ``particle`` and ``saddle``, which run
eagerly and take seconds a run), then at least ``min_runs`` times and
until ``min_seconds`` have accumulated, one ``"evaluate"`` timing per run, each waited for
(asynchronous engines are synchronised inside the timed region). Reading the input into
engine arrays is reported apart, as ``"prepare"``.

Nothing a message holds crashes the tool or leaves it hanging: a malformed line, an unknown
module, function or message kind, an input of the wrong shape or a failing computation is
answered ``{"success": false, "error": ...}``, and the tool reads on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import numpy as np

from gradlab._boundary import calling, on_engine, on_engine_together, prepare
from gradlab._errors import ArgumentTypeError, GradlabError, first_line
from gradlab._gradbench_evals import EVALS, GRADIENT, NESTED, NEWTON, VECTOR, BadInput, Case, Eval
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
from gradlab.problems._base import AbstractProblem

__all__ = ["EVALS", "main", "serve"]

Message = dict[str, Any]


class _Refused(Exception):
    """A message gradlab answers with ``success: false`` and this text."""


def _runs(input: Any, timed: bool) -> tuple[int, float]:
    """The input's ``min_runs`` and ``min_seconds`` (1 and 0 for an eval without them)."""
    if not timed or not isinstance(input, dict):
        return 1, 0.0
    runs, seconds = input.get("min_runs", 1), input.get("min_seconds", 0)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise BadInput(f"input field 'min_runs' must be an integer ≥ 0, got {runs!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise BadInput(f"input field 'min_seconds' must be a number ≥ 0, got {seconds!r}")
    return max(runs, 1), float(seconds)


class _Computation:
    """One function of one case on one engine: ``call()`` computes (and waits for) it."""

    def __init__(
        self, engine: GradientEngine, spec: Eval, kind: str, case: Case, function: str = ""
    ) -> None:
        self.engine = engine
        self.problem: AbstractProblem | None = None
        self.call: Callable[[], Any]
        if kind == NESTED:
            self._nested(spec, function, case)
            return
        problem = case.problem
        assert problem is not None
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
        from gradlab import _nested

        ops = _nested.ops_for(self.engine)
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
        if isinstance(result, (float, list)):  # a nested procedure's, already on the host
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
                from gradlab._nested import ops_for

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
        case = spec.read(message["input"])
        computation = _Computation(self.engine, spec, spec.functions[function], case, function)
        timings = [{"name": "prepare", "nanoseconds": clock() - begin}]
        # Overflow gives inf, refused below as not finite, on every engine alike.
        with computation.guarded(), np.errstate(all="ignore"):
            result = None
            if spec.functions[function] != NESTED:  # eager procedures compile nothing
                begin = clock()
                result = computation.call()
                timings.append({"name": "warmup", "nanoseconds": clock() - begin})
            total = count = 0
            while count < runs or total < seconds * 1e9:
                begin = clock()
                result = computation.call()
                elapsed = clock() - begin
                timings.append({"name": "evaluate", "nanoseconds": elapsed})
                total, count = total + elapsed, count + 1
            output = spec.write(function, case, computation.to_numpy(result))
        return {"success": True, "output": output, "timings": timings}


def _smallest(spec: Eval) -> dict[str, Any]:
    """Sizes for ``define``'s trial run: the eval's smallest, shrunk where still large."""
    small = {"n": 16, "m": 4, "d": 2, "k": 2, "ell": 3, "s": 2, "l": 1, "c": 3, "b": 2}
    sizes = dict(spec.sizes[0])
    return {name: small.get(name, value) for name, value in sizes.items()}


def _reply_line(reply: Message) -> str:
    """The reply as one JSON line; a result that is not finite becomes a failure."""
    try:
        return json.dumps(reply, allow_nan=False)
    except ValueError:
        return json.dumps(
            {
                "id": reply.get("id"),
                "success": False,
                "error": "the output has a value that is not a finite number (NaN or infinity)",
            }
        )


def serve(
    engine: str | GradientEngine,
    messages: Iterable[str] | None = None,
    replies: IO[str] | None = None,
) -> int:
    """Answer GradBench's messages, one JSON line each, until the input ends or ``end``.

    Args:
        engine: The engine that computes: a registry name (``"jax"``) or an engine object.
        messages: Lines to read (standard input by default).
        replies: Where replies go (standard output by default). While serving, anything
            else printed to standard output (a framework's chatter) goes to standard error,
            so that the protocol's stream holds nothing but replies.

    Returns:
        0 when the input ended or the eval said ``end``.

    Raises:
        UnknownEngine, EngineUnavailable: before any message is read.
        ArgumentTypeError: ``messages`` is not an iterable of lines (a string is one text,
            not lines: wrap it in ``io.StringIO``), or ``replies`` has no ``write``.
    """
    tool = Tool(get_engine(engine))
    if messages is not None and (
        isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable)
    ):
        raise ArgumentTypeError(
            "messages",
            f"must be an iterable of lines (io.StringIO for a text), got {type(messages).__name__}",
        )
    if replies is not None and not callable(getattr(replies, "write", None)):
        raise ArgumentTypeError(
            "replies", f"must be a text stream with write(), got {type(replies).__name__}"
        )
    source = sys.stdin if messages is None else messages
    sink = sys.stdout if replies is None else replies
    with contextlib.redirect_stdout(sys.stderr):
        for line in source:
            if not isinstance(line, str):
                raise ArgumentTypeError(
                    "messages",
                    f"must give lines of JSON text, got a {type(line).__name__} "
                    "(json.dumps each message)",
                )
            if not line.strip():
                continue
            try:
                message = strict_json(line)
            except (ValueError, RecursionError) as error:
                message = None
                reply: Message = {
                    "id": None,
                    "success": False,
                    "error": f"not JSON: {first_line(error)}",
                }
            if message is not None:
                if not isinstance(message, dict):
                    reply = {
                        "id": None,
                        "success": False,
                        "error": "a message must be a JSON object",
                    }
                else:
                    answer = tool.answer(message)
                    if answer is None:
                        return 0
                    reply = answer
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


if __name__ == "__main__":
    sys.exit(main())
