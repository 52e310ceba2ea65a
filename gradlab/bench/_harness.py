"""How fast is each engine? Compile time apart, synchronised clocks, ratios side by side.

ADBench and GradBench report the gradient-time / objective-time ratio per tool: the right
headline figure, since the cheap-gradient principle says reverse mode costs a small constant
times the function. [`benchmark`][gradlab.benchmark] measures it in-process, and honestly:

- the **first call** (tracing, compilation, caches filling) is timed and reported apart;
  the steady state starts after it;
- every call is **synchronised** before the clock is read (``engine.block``: jax's
  ``block_until_ready``, ``torch.cuda.synchronize`` on a GPU), so an asynchronous framework
  is timed for its work, not for its dispatch;
- each figure is **repeated** until a minimum measuring time, and reported as minimum (the
  best estimate of the cost on a noisy machine) and median (the typical one);
- versions, threads, dtype and device are recorded beside every figure.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradlab import _output
from gradlab._boundary import (
    check_value_and_grad,
    crosses,
    on_engine_together,
    prepare,
)
from gradlab._checks import (
    check_bool,
    check_dtype,
    check_mapping,
    check_positive_float,
    check_positive_int,
)
from gradlab._errors import ArgumentError, GradlabError, HandGradientMissing, NotSupported
from gradlab._loss import calling
from gradlab._output import Record, table
from gradlab._progress import progress_bar
from gradlab._provenance import common_provenance
from gradlab.bench._workload import SGD_STEP, point
from gradlab.engines._protocol import GradientEngine, block_of, objective_of, value_and_grad_of
from gradlab.engines._registry import engine_list, get_engine
from gradlab.fitting._fit import fit
from gradlab.optimizers import GradientTransformation, sgd
from gradlab.problems._base import AbstractProblem
from gradlab.problems._named import at_size, problem_named

#: Fewest timed calls behind any figure, however slow the call.
MIN_SAMPLES = 5
#: A median more than this many times the fastest call marks a timing as noise: a call's
#: own cost varies by tens of percent between runs, not by multiples.
NOISY_SPREAD = 3.0
#: Most timed calls behind one figure, however fast the call.
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one call, in seconds.

    Attributes:
        min: The fastest call: the best estimate of the cost when the machine is shared.
        median: The typical call.
        samples: How many calls were timed.
    """

    min: float
    median: float
    samples: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        """Summarise a list of timings."""
        return cls(min(seconds), statistics.median(seconds), len(seconds))

    @property
    def noisy(self) -> bool:
        """Whether the typical call took more than ``NOISY_SPREAD`` times the fastest: then
        the machine, not the engine, set the numbers (threads contending, other work)."""
        return self.median > NOISY_SPREAD * self.min


@dataclass(frozen=True)
class BenchmarkCase:
    """One engine on one problem, size and dtype.

    Attributes:
        problem: The problem's name.
        engine: The engine's name.
        n: The number of data points.
        dtype: ``"float32"`` or ``"float64"``.
        status: ``"measured"``, ``"skipped"`` (the engine cannot run it; see ``note``) or
            ``"over budget"`` (the time budget ran out before this case).
        note: Why a case was skipped, or ``"cut short by the time budget"``, else ``""``.
        first_objective: Seconds of the first call of the loss alone (tracing and
            compilation included), or ``None``.
        first_gradient: Seconds of the first value-and-gradient call, or ``None``.
        objective: Steady-state timing of the loss alone.
        gradient: Steady-state timing of value-and-gradient.
        fit_steps: The number of steps each timed fit ran.
        fit_per_step: Seconds per step of [`fit`][gradlab.fit] (SGD), after a warm-up fit,
            over several fits: from the start of the loop to the results on the host.
        floor: Timing of one read of the same data arrays (``numpy.dot(y, x)`` for a design
            and a target; ``numpy.vdot`` of each array otherwise): the memory floor that a
            gradient cannot beat by much (``None`` for a problem without data).
        peak_memory: Bytes of resident memory a warm fit of ``fit_steps`` steps added at its
            peak over what the process held before it, measured in a fresh process
            (``benchmark(memory=True)``, Linux, named problems and engines), else ``None``.
        peak_memory_4x_steps: The same for a fit four times as long: equal to
            ``peak_memory`` when nothing is kept per step.
        data_bytes: The size of the data arrays in this dtype.
        device: Where the engine computed.
    """

    problem: str
    engine: str
    n: int
    dtype: str
    status: str = "measured"
    note: str = ""
    first_objective: float | None = None
    first_gradient: float | None = None
    objective: Timing | None = None
    gradient: Timing | None = None
    fit_steps: int | None = None
    fit_per_step: Timing | None = None
    floor: Timing | None = None
    peak_memory: int | None = None
    peak_memory_4x_steps: int | None = None
    data_bytes: int | None = None
    device: str | None = None

    @property
    def ratio(self) -> float | None:
        """Value-and-gradient time over objective time (minima): the cheap-gradient ratio."""
        if self.gradient is None or self.objective is None:
            return None
        return self.gradient.min / self.objective.min

    @property
    def floor_ratio(self) -> float | None:
        """Value-and-gradient time over one ``numpy.dot`` over the data (minima)."""
        if self.gradient is None or self.floor is None:
            return None
        return self.gradient.min / self.floor.min

    def to_dict(self) -> dict[str, Any]:
        """Every field, timings as ``{"min", "median", "samples"}``, and the two ratios."""
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("objective", "gradient", "fit_per_step", "floor"):
            timing = record[name]
            record[name] = None if timing is None else timing.__dict__.copy()
        record["ratio"] = self.ratio
        record["floor_ratio"] = self.floor_ratio
        return record


@dataclass(frozen=True)
class BenchmarkResult(Record):
    """What [`benchmark`][gradlab.benchmark] measured: one [`BenchmarkCase`][gradlab.BenchmarkCase]
    per engine × problem × size × dtype, with the settings and the provenance.

    Attributes:
        cases: Every case, in the order run (problem, dtype, size, engine).
        settings: ``min_time``, ``fit_steps``, ``budget``, ``memory``, ``seed``.
        provenance: Versions, machine, threads and time, once; per engine what it says of
            itself (device, threads, compile mode) under ``provenance["engines"]``.
        elapsed: Seconds the whole benchmark took.
        truncated: Whether the time budget ran out before every case ran.
    """

    cases: list[BenchmarkCase]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)
    elapsed: float = 0.0
    truncated: bool = False

    def select(
        self,
        *,
        problem: str | None = None,
        engine: str | None = None,
        n: int | None = None,
        dtype: str | None = None,
    ) -> list[BenchmarkCase]:
        """The measured cases that match every criterion given."""
        return [
            case
            for case in self.cases
            if case.status == "measured"
            and (problem is None or case.problem == problem)
            and (engine is None or case.engine == engine)
            and (n is None or case.n == n)
            and (dtype is None or case.dtype == dtype)
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record: settings, provenance, elapsed time and every case."""
        return _output.stamp(
            self,
            {
                "settings": self.settings,
                "elapsed": self.elapsed,
                "truncated": self.truncated,
                "provenance": self.provenance,
                "cases": [case.to_dict() for case in self.cases],
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> BenchmarkResult:
        """Rebuild a result from ``to_dict`` (or parsed ``to_json``), to print or plot
        saved figures.

        Examples:
            >>> import gradlab
            >>> result = gradlab.benchmark("quadratic", 100, engines="numpy", min_time=0.01,
            ...                            fit_steps=10)
            >>> again = gradlab.BenchmarkResult.from_json(result.to_json())
            >>> again.cases == result.cases
            True
        """
        with _output.reading(cls, record) as saved:
            return cls(
                cases=[_case_from_dict(case) for case in saved["cases"]],
                settings=dict(saved["settings"]),
                provenance=dict(saved["provenance"]),
                elapsed=float(saved["elapsed"]),
                truncated=bool(saved["truncated"]),
            )

    def to_frame(self) -> Any:
        """One row per case, timings in seconds (min and median columns). Needs pandas."""
        pandas = _output.optional("pandas", "BenchmarkResult.to_frame", None)
        rows = []
        for case in self.cases:
            row = case.to_dict()
            for name in ("objective", "gradient", "fit_per_step", "floor"):
                timing = getattr(case, name)
                row.pop(name)
                row[f"{name}_min"] = None if timing is None else timing.min
                row[f"{name}_median"] = None if timing is None else timing.median
            rows.append(row)
        return pandas.DataFrame(rows)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Log-log time of value-and-gradient against n, one panel per problem (and dtype).

        Args:
            path: Also save the figure there (``.png``, ``.pdf``, ``.svg``).

        Returns:
            A ``matplotlib.figure.Figure`` (needs the ``plot`` extra).
        """
        from gradlab.plots import benchmark_figure

        if path is not None:
            _output.check_image_path(path)
        figure = benchmark_figure(self)
        if path is not None:
            _output.save_figure(figure, path)
        return figure

    def machine(self) -> str:
        """One line saying where this ran: CPU, versions, and each engine's device and threads."""
        facts = self.provenance
        engines = "; ".join(
            f"{name} on {info.get('device')}"
            + (f", {info['threads']} threads" if info.get("threads") else "")
            for name, info in facts.get("engines", {}).items()
        )
        versions = ", ".join(
            f"{package} {facts[package]}"
            for package in ("gradlab", "python", "numpy", "torch", "jax")
            if facts.get(package)
        )
        return (
            f"{facts.get('platform')} ({facts.get('machine')}, {facts.get('cpu_count')} CPUs); "
            f"{versions}; {engines}; run {facts.get('time')}"
        )

    def to_markdown(self) -> str:
        """The table as Markdown, headed by the machine and the settings."""
        header, rows = self._rows()
        lines = [
            "# gradlab benchmark",
            "",
            f"Machine: {self.machine()}",
            "",
            f"Settings: {', '.join(f'{key} {value}' for key, value in self.settings.items())}. "
            f"{len(self.select())} cases in {self.elapsed:.0f} s"
            + (" (time budget ran out)" if self.truncated else "")
            + ".",
            "",
            "Times are the minimum over repeated calls, each synchronised before the clock is "
            "read; the first call (compilation) is apart. grad/obj is value-and-gradient time "
            "over objective time; ×dot is value-and-gradient time over one numpy.dot(y, x) on "
            "the same data.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            *(f"{line}  " for line in self._notes()),
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        header, rows = self._rows()
        measured = len(self.select())
        lines = [
            f"Benchmark: {measured} of {len(self.cases)} cases measured in {self.elapsed:.1f} s "
            f"(min of repeated calls, each synchronised; first call apart; "
            f"min measuring time {self.settings['min_time']} s per figure)",
            "",
            table(header, rows),
        ]
        notes = self._notes()
        if notes:
            lines += ["", *notes]
        if self.cases and not measured:
            lines += ["", "No case could be measured: see the notes above."]
        if self.truncated:
            lines += ["", "The time budget ran out: the cases marked 'over budget' did not run."]
        return "\n".join(lines)

    def _note_numbers(self) -> dict[str, int]:
        """Each distinct reason a case was not measured, numbered in order of appearance."""
        numbers: dict[str, int] = {}
        for case in self.cases:
            if case.status != "measured" and case.note and case.note not in numbers:
                numbers[case.note] = len(numbers) + 1
        return numbers

    @property
    def noisy(self) -> list[BenchmarkCase]:
        """The measured cases whose timings spread so far that they are noise (see
        [`Timing.noisy`][gradlab.Timing.noisy]): rerun them on a quiet machine, with
        threads pinned."""
        return [
            case
            for case in self.cases
            if any(
                timing is not None and timing.noisy
                for timing in (case.objective, case.gradient, case.fit_per_step)
            )
        ]

    def _notes(self) -> list[str]:
        """The notes in full: why cases were skipped (never cut short), and a warning where
        timings are noise."""
        notes = [f"note {number}: {note}" for note, number in self._note_numbers().items()]
        noisy = self.noisy
        if noisy:
            which = ", ".join(f"{case.engine} {case.problem} n={case.n}" for case in noisy)
            notes.append(
                f"warning: timings marked ! are noise, not the engines' cost: their median "
                f"call took over {NOISY_SPREAD:g}× the fastest ({which}). Threads contending "
                "for the cores, or other work on the machine, do that: pin threads "
                "(OMP_NUM_THREADS=1, or torch.set_num_threads(1) and "
                "XLA_FLAGS=--xla_cpu_multi_thread_eigen=false), stop other work, and rerun."
            )
        return notes

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = [
            "problem",
            "n",
            "dtype",
            "engine",
            "1st grad",
            "objective",
            "value+grad",
            "(median)",
            "grad/obj",
            "×dot",
            "fit/step",
        ]
        if self.settings.get("memory"):
            header.append("peak MB (4× steps)")
        rows = []
        notes = self._note_numbers()
        noisy = self.noisy
        for case in self.cases:
            if case.status != "measured":
                marker = f"see note {notes[case.note]}" if case.note else ""
                rows.append(
                    [case.problem, str(case.n), case.dtype, case.engine, case.status, marker]
                    + [""] * (len(header) - 6)
                )
                continue
            row = [
                case.problem,
                str(case.n),
                case.dtype,
                case.engine,
                seconds(case.first_gradient),
                seconds(case.objective.min if case.objective else None),
                seconds(case.gradient.min if case.gradient else None),
                seconds(case.gradient.median if case.gradient else None)
                + (" !" if case in noisy else ""),
                _number(case.ratio),
                _number(case.floor_ratio),
                seconds(case.fit_per_step.min if case.fit_per_step else None),
            ]
            if self.settings.get("memory"):
                row.append(_megabytes(case.peak_memory, case.peak_memory_4x_steps))
            rows.append(row)
        return header, rows


def _case_from_dict(record: Mapping[str, Any]) -> BenchmarkCase:
    fields = {name: record[name] for name in BenchmarkCase.__dataclass_fields__}
    for name in ("first_objective", "first_gradient"):  # a loss may be saved as "nan"
        fields[name] = _output.maybe(fields[name])
    for name in ("objective", "gradient", "fit_per_step", "floor"):
        if fields[name] is not None:
            fields[name] = Timing(**fields[name])
    return BenchmarkCase(**fields)


def seconds(value: float | None) -> str:
    """A duration with a unit that keeps three significant digits (``"12.3 µs"``)."""
    if value is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _megabytes(peak: int | None, longer: int | None) -> str:
    if peak is None or longer is None:
        return "—"
    return f"{peak / 2**20:.0f} ({longer / 2**20:.0f})"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def benchmark(
    problems: str | AbstractProblem | Sequence[str | AbstractProblem] = "quadratic",
    sizes: int | Sequence[int] = (100, 1_000, 10_000),
    *,
    engines: str | Sequence[str | GradientEngine] | None = None,
    dtypes: str | Sequence[str] = "float64",
    min_time: float = 0.2,
    fit_steps: int = 100,
    memory: bool = False,
    budget: float | None = None,
    progress: bool = False,
    seed: int = 0,
    data: Mapping[str, Any] | None = None,
    params: Any = None,
) -> BenchmarkResult:
    """Time every engine on every problem, size and dtype, in this process.

    For each case: the first call of the loss and of value-and-gradient (compilation
    included) apart; then each repeated, synchronised after every call, until ``min_time``
    seconds (at least 5 calls), reported as min and median; the ratio of the two (the
    figure ADBench and GradBench report); one ``numpy.dot(y, x)`` over the same data as the
    memory floor; and [`fit`][gradlab.fit] per step, after a warm-up fit.

    Args:
        problems: Problem names (``"quadratic"``, ``"logistic_regression"``, ``"mlp"``, ...;
            see ``gradlab bench --help``) or problem objects with a ``make_data(n, seed=...)``.
        sizes: Numbers of data points n; for problems without data (Rosenbrock, LogSumExp),
            numbers of variables (``problem.sized(n)``).
        engines: Engine names or objects; default every installed engine that comparisons
            use by default (``"torch-compile"`` must be named).
        dtypes: ``"float32"`` and/or ``"float64"``.
        min_time: Seconds of measuring behind each steady-state figure.
        fit_steps: The most steps a timed fit runs; fewer when a step is slow (at least 10),
            so that a fit takes about ``min_time``.
        memory: Also measure each fit's peak resident memory, in a fresh process per case
            (Linux; built-in problems and registered engines; a few seconds per case).
        budget: Seconds of wall time the whole benchmark may take. Timing loops stop at
            it, a case that reaches it keeps what it measured (fewer samples, and no fit or
            memory figure where none was taken), the cases not started are marked
            ``"over budget"``, and the result is ``truncated``. A call already running (a
            first call that compiles) is not interrupted, so the overrun is at most one
            call. ``None``: no limit.
        progress: Show a progress bar (needs tqdm, the ``cli`` extra) on long runs.
        seed: Seed of the generated data and of the point the gradient is taken at.
        data: Your data, instead of data the problem makes: then ``sizes`` is unused, and
            each case's n is the data's number of rows (its first array's first axis).
        params: The point the gradient is taken at and fits start from, instead of one
            drawn near the problem's ``initial_params``.

    Returns:
        A [`BenchmarkResult`][gradlab.BenchmarkResult]: print it, or ``to_json()``, ``to_frame()``,
        ``plot()``.

    Raises:
        ArgumentError: bad sizes, dtypes, times, an unknown problem or engine.
        EngineUnavailable: a named engine is not installed.

    Examples:
        >>> import gradlab
        >>> result = gradlab.benchmark("quadratic", [100, 1000], engines="numpy,fd",
        ...                            min_time=0.01, fit_steps=10)
        >>> [(case.engine, case.n, case.status) for case in result.cases]
        [('numpy', 100, 'measured'), ('fd', 100, 'measured'),
         ('numpy', 1000, 'measured'), ('fd', 1000, 'measured')]
        >>> case = result.select(engine="fd", n=1000)[0]
        >>> case.gradient.samples >= 5 and case.gradient.min <= case.gradient.median
        True
    """
    problem_list = [problem_named(p, "problems") for p in _as_list(problems, "problems")]
    if data is not None:
        data = dict(check_mapping(data, "data"))
        sizes = [_rows(data)]
    size_list = [check_positive_int(size, "sizes") for size in _as_list(sizes, "sizes")]
    dtype_list = [check_dtype(dtype, "dtypes") for dtype in _as_list(dtypes, "dtypes")]
    min_time = check_positive_float(min_time, "min_time")
    fit_steps = check_positive_int(fit_steps, "fit_steps")
    memory = check_bool(memory, "memory")
    if budget is not None:
        budget = check_positive_float(budget, "budget")
    for problem in problem_list:
        # Up front, at the smallest size: a problem that draws no data, or has no parameters
        # to start from, is named now, not after the other problems ran.
        sized = at_size(problem, min(size_list))
        try:
            if data is None:
                point(sized, sized.make_data(min(size_list), seed=seed), seed)
        except NotSupported as error:
            raise ArgumentError(
                "problems",
                f"{error}; a benchmarked problem needs make_data(n, seed=...) and parameter "
                "shapes (declared, or initial_params(data, seed=...))",
            ) from None
    engine_list = _engines(engines)
    optimizer = sgd(SGD_STEP)

    cases: list[BenchmarkCase] = []
    plan = [
        (problem, dtype, n, engine)
        for problem in problem_list
        for dtype in dtype_list
        for n in size_list
        for engine in engine_list
    ]
    start = time.perf_counter()
    deadline = math.inf if budget is None else start + budget
    settings = {
        "min_time": min_time,
        "fit_steps": fit_steps,
        "memory": memory,
        "budget": budget,
        "seed": seed,
        "optimizer": f"sgd({SGD_STEP})",
    }
    with progress_bar(len(plan), "benchmark", progress) as advance:
        floors: dict[tuple[str, str, int], Timing | None] = {}
        for problem, dtype, n, engine in plan:
            label = f"{engine.name} {problem.name} n={n} {dtype}"
            if time.perf_counter() > deadline:
                cases.append(BenchmarkCase(problem.name, engine.name, n, dtype, "over budget"))
                advance(label)
                continue
            sized = problem if data is not None else at_size(problem, n)
            case_data = data if data is not None else sized.make_data(n, seed=seed)
            key = (problem.name, dtype, n)
            if key not in floors:
                floors[key] = _floor(case_data, dtype, min_time, deadline)
            case = _case(
                sized,
                case_data,
                engine,
                dtype,
                n,
                min_time,
                fit_steps,
                memory,
                seed,
                optimizer,
                deadline,
                params,
            )
            if case.gradient:
                case = dataclasses.replace(case, floor=floors[key])
            if case.status == "measured" and time.perf_counter() > deadline:
                case = dataclasses.replace(case, note="cut short by the time budget")
            cases.append(case)
            advance(label)
    engine_facts = {engine.name: engine.describe() for engine in engine_list}
    return BenchmarkResult(
        cases=cases,
        settings=settings,
        provenance={**common_provenance(", ".join(dtype_list)), "engines": engine_facts},
        elapsed=time.perf_counter() - start,
        truncated=time.perf_counter() > deadline,
    )


def _rows(data: Mapping[str, Any]) -> int:
    """The number of rows of given data: its first array's first axis (1 for scalars)."""
    for value in data.values():
        shape = np.shape(value)
        return int(shape[0]) if shape else 1
    raise ArgumentError("data", "holds no arrays")


def _as_list(value: object, argument: str) -> list[Any]:
    """One value or a sequence of them (a comma-separated string for names)."""
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise ArgumentError(argument, "is empty")
    return items


def _engines(engines: object) -> list[GradientEngine]:
    """Engine objects, built once for the whole benchmark (so their caches persist)."""
    return [get_engine(item) for item in engine_list(engines, installed_only=True)[0]]


def time_calls(
    call: Callable[[], Any],
    block: Callable[[Any], Any],
    min_time: float,
    deadline: float = math.inf,
) -> list[float]:
    """Seconds of repeated calls, each waited for (``block``) before the clock is read.

    Calls continue until they add up to ``min_time`` seconds and number at least
    ``MIN_SAMPLES`` (at most ``MAX_SAMPLES``), or until ``deadline`` (a
    ``time.perf_counter()`` reading) passes, after one call at least.
    """
    clock = time.perf_counter
    samples: list[float] = []
    total = 0.0
    while (
        (total < min_time or len(samples) < MIN_SAMPLES)
        and len(samples) < MAX_SAMPLES
        and not (samples and clock() > deadline)
    ):
        begin = clock()
        block(call())
        elapsed = clock() - begin
        samples.append(elapsed)
        total += elapsed
    return samples


def _first(call: Callable[[], Any], block: Callable[[Any], Any]) -> float:
    begin = time.perf_counter()
    block(call())
    return time.perf_counter() - begin


def _floor(
    data: dict[str, np.ndarray], dtype: str, min_time: float, deadline: float = math.inf
) -> Timing | None:
    """One pass over the data, reading every element once and writing nothing.

    ``numpy.dot(y, x)`` for a design (``x``) and a target vector (``y``); otherwise
    ``numpy.vdot(a, a)`` for each array. ``None`` for a problem without data.
    """
    arrays = {key: np.ascontiguousarray(value, dtype=dtype) for key, value in data.items()}
    if not arrays:
        return None
    x, y = arrays.get("x"), arrays.get("y")
    if x is not None and y is not None and y.ndim == 1 and len(arrays) == 2 and len(x) == len(y):
        return Timing.of(time_calls(lambda: np.dot(y, x), lambda out: out, min_time, deadline))
    return Timing.of(
        time_calls(
            lambda: [np.vdot(a, a) for a in arrays.values()], lambda out: out, min_time, deadline
        )
    )


def _case(
    problem: AbstractProblem,
    data: dict[str, np.ndarray],
    engine: GradientEngine,
    dtype: str,
    n: int,
    min_time: float,
    fit_steps: int,
    memory: bool,
    seed: int,
    optimizer: GradientTransformation,
    deadline: float = math.inf,
    params: Any = None,
) -> BenchmarkCase:
    """Measure one engine on one problem, size and dtype, stopping at ``deadline`` (what is
    not measured by then is left out: see ``benchmark``'s ``budget``)."""
    base: dict[str, Any] = {"problem": problem.name, "engine": engine.name, "n": n, "dtype": dtype}
    try:
        at = point(problem, data, seed) if params is None else params
        _, _, flat, checked, start, layout = prepare(problem, data, at, engine, dtype)
        loss = objective_of(engine, flat)
        gradient = value_and_grad_of(engine, flat)
    except (HandGradientMissing, NotSupported) as error:  # it cannot run this problem
        return BenchmarkCase(**base, status="skipped", note=str(error))
    block = block_of(engine)
    with np.errstate(all="ignore"), calling(flat, engine, start, checked):
        batch, params = on_engine_together(engine, checked, start, dtype)
        first_objective = _first(lambda: loss(params, batch), block)
        first_gradient = _first(lambda: gradient(params, batch), block)
        if crosses(engine, flat, gradient):  # a plug-in or hand gradient: check it once
            check_value_and_grad(engine, flat, gradient, gradient(params, batch), start, dtype)
        objective_timing = Timing.of(
            time_calls(lambda: loss(params, batch), block, min_time, deadline)
        )
        gradient_timing = Timing.of(
            time_calls(lambda: gradient(params, batch), block, min_time, deadline)
        )
        # About min_time per fit; at least 10 steps, so that per-call costs are spread.
        steps = int(min(fit_steps, max(10, min_time // max(gradient_timing.min, 1e-9))))

        def run() -> Any:
            return fit(
                problem,
                data,
                engine=engine,
                optimizer=optimizer,
                steps=steps,
                init=layout.unflatten(start),
                dtype=dtype,
            )

        per_step: list[float] = []
        if time.perf_counter() < deadline:
            run()  # warm-up: compiles the loop where the engine compiles it
            while (len(per_step) < 3 or sum(per_step) * steps < min_time) and not (
                per_step and time.perf_counter() > deadline
            ):
                per_step.append(run().wall_time / steps)
                if len(per_step) >= 100:
                    break
    in_time = memory and time.perf_counter() < deadline
    peak = _fit_memory(problem, engine, n, dtype, steps, seed) if in_time else {}
    return BenchmarkCase(
        **base,
        first_objective=first_objective,
        first_gradient=first_gradient,
        objective=objective_timing,
        gradient=gradient_timing,
        fit_steps=steps,
        fit_per_step=Timing.of(per_step) if per_step else None,
        peak_memory=peak.get("peak"),
        peak_memory_4x_steps=peak.get("peak_4x_steps"),
        data_bytes=sum(
            int(np.asarray(a).size) * np.dtype(dtype).itemsize for a in checked.values()
        ),
        device=str(engine.describe().get("device")),
    )


def _fit_memory(
    problem: AbstractProblem, engine: GradientEngine, n: int, dtype: str, steps: int, seed: int
) -> dict[str, Any]:
    """Peak memory of the case's fit, from a fresh process (see ``gradlab.bench._memory``)."""
    from gradlab.bench._memory import measure

    try:
        named = at_size(problem_named(problem.name), n) == problem and get_engine(engine.name)
    except GradlabError:
        named = False
    if not named:
        return {}
    return measure(problem.name, n, dtype, engine.name, steps, seed) or {}
