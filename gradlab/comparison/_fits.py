"""The same fit on every engine, from the same start: do their paths agree, and how fast?"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from gradlab import _output
from gradlab._agreement import Criterion, criterion, differences, path_rho
from gradlab._boundary import check_transformation, prepare
from gradlab._checks import check_dtype, check_float, check_positive_int
from gradlab._errors import ArgumentError
from gradlab._output import point, short
from gradlab._progress import progress_bar
from gradlab._provenance import common_provenance
from gradlab._tree import element, flatten
from gradlab.comparison._baseline import BaselineComparison, fits_against
from gradlab.comparison._divergence import derived_bound, moved_data, moved_params
from gradlab.comparison._kernel import Engines, outlier, resolve_engines
from gradlab.comparison._kinds import element_labels, pair_tolerances
from gradlab.engines._protocol import GradientEngine, is_approximate, value_and_grad_of
from gradlab.engines._registry import engine_list
from gradlab.fitting._optimizer import check_engine as check_optax_engine
from gradlab.fitting._prepare import PreparedFit, default_start
from gradlab.fitting._result import FitResult
from gradlab.optimizers import GradientTransformation
from gradlab.problems._base import AbstractProblem


@dataclass(frozen=True)
class FitComparison(_output.Record):
    """One fit run on several engines from the same start, compared step by step.

    Made by [`compare_fits`][gradlab.compare_fits].

    Attributes:
        problem: The problem's name.
        dtype: The precision every engine ran in.
        reference: The engine the others' paths are compared with.
        engines: The engines, in order (the reference first).
        steps: The number of steps asked for.
        init: The common starting point, by parameter path (``"w"``, ``"layers[0].w"``).
        results: Each engine's [`FitResult`][gradlab.FitResult], with its ``trajectory``
            (from a last run that recorded it, after the timed runs).
        times: Each engine's wall time in seconds: the fastest of the timed runs, which
            follow an untimed warm-up run and record nothing.
        loss_tol: The loss tolerance asked for, or ``None``.
        steps_to_tol: Per engine, the number of updates after which the loss first was at or
            below ``loss_tol`` (``None`` if it never was, or no ``loss_tol`` was given).
        divergence: ``divergence[i, j]``: the largest rho between the parameter paths of
            engines i and j, over every step and element.
        peak_step: ``peak_step[i, j]``: the step (number of updates) where that rho peaks.
        tolerances: ``tolerances[i, j]``: the largest path rho allowed between i and j
            (with an envelope: the largest of the pair's per-step bounds).
        outlier: The engine whose path leaves all others while they agree, or ``None``.
        skipped: Engines left out, with the reason.
        provenance: Versions, machine, dtype, time, and each engine's device and threads.
        close: With ``atol``/``rtol``: per engine, whether its path met them against the
            reference's at every step (``None`` when judged in path rho).
        atol: The absolute tolerance paths were judged with, or ``None``.
        rtol: The relative tolerance paths were judged with, or ``None``.
        data_digest: A fingerprint of the data, so that
            [`against`][gradlab.FitComparison.against] can tell a baseline run on other data
            from a changed path; ``None`` if unknown.
        envelope_runs: With ``envelope=k``: k, the moved runs of each engine's fit; else
            ``None`` (and the four fields below ``None`` or empty).
        envelope: Per engine, at each step (number of updates applied), how far round-off
            carries its own path: the largest rho between its recorded path and its k twins
            (each run from a start and on data moved by a few ulps) at that step or any
            before it.
        envelope_bound: Per engine but the reference, the largest path rho allowed against
            the reference at each step: 8 times the larger of the two engines' envelopes
            there, never under 32 ulps (for a pair with fd, never under the table's
            tolerance either).
        leaves_at: Per engine, the first step where its path's rho against the reference's
            exceeds ``envelope_bound``, or ``None``: within natural drift all the way (the
            reference: ``None``).
        leaving_element: Per engine, the parameter element farthest from the reference's at
            that step, as reports name elements (``"layers[0].w[1, 2]"``), or ``None``.
    """

    problem: str
    dtype: str
    reference: str
    engines: tuple[str, ...]
    steps: int
    init: dict[str, np.ndarray]
    results: dict[str, FitResult]
    times: dict[str, float]
    loss_tol: float | None
    steps_to_tol: dict[str, int | None]
    divergence: np.ndarray
    peak_step: np.ndarray
    tolerances: np.ndarray
    outlier: str | None
    skipped: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    model: AbstractProblem | None = field(default=None, repr=False, compare=False)
    data: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    close: np.ndarray | None = None
    atol: float | None = None
    rtol: float | None = None
    data_digest: str | None = None
    envelope_runs: int | None = None
    envelope: dict[str, np.ndarray] | None = field(default=None, repr=False)
    envelope_bound: dict[str, np.ndarray] | None = field(default=None, repr=False)
    leaves_at: dict[str, int | None] = field(default_factory=dict)
    leaving_element: dict[str, str | None] = field(default_factory=dict)

    def time_per_step(self, engine: str) -> float:
        """An engine's timed wall time divided by the steps it ran."""
        return self.times[engine] / max(1, len(self.results[engine].losses))

    @property
    def disagreeing(self) -> tuple[str, ...]:
        """Engines whose path or status departs from the reference's (or the outlier)."""
        if self.outlier is not None:
            return (self.outlier,)
        ref = self.results[self.reference]
        return tuple(
            name
            for i, name in enumerate(self.engines)
            if not self._close(i) or self.results[name].status != ref.status
        )

    def _tolerance(self, i: int) -> str:
        """What engine i's path was judged with, for tables."""
        if self.atol is None:
            return f"{self.tolerances[i, 0]:.0e}"
        return Criterion(atol=self.atol, rtol=self.rtol).describe()

    def _close(self, i: int) -> bool:
        """Whether engine i's path stayed within tolerance of the reference's."""
        if self.close is not None:
            return bool(self.close[i])
        return bool(self.divergence[i, 0] <= self.tolerances[i, 0])

    @property
    def ok(self) -> bool:
        """Whether every engine followed the reference's path within tolerance."""
        return not self.disagreeing

    def summary(self) -> str:
        """One sentence: do the paths agree, did the fits complete."""
        limit = "tolerance" if self.envelope_runs is None else "natural drift"
        if self.outlier is not None:
            return (
                f"{self.outlier}'s path leaves every other engine's{self._where(self.outlier)}, "
                "and those agree."
            )
        if not self.ok and len(self.engines) == 2:
            other = self.engines[1]
            return (
                f"The paths of {self.engines[0]} and {other} part beyond {limit}"
                f"{self._where(other)}; with two engines gradlab cannot tell which is wrong: "
                "add a third engine to find out."
            )
        if not self.ok:
            departed = ", ".join(name + self._where(name) for name in self.disagreeing)
            return f"Paths depart from {self.reference}'s beyond {limit}: {departed}."
        done = all(result.ok for result in self.results.values())
        if len(self.engines) == 1:
            outcome = "it completed" if done else "it diverged"
            return f"Only {self.reference} ran ({outcome}): there was no other path to compare."
        status = "every fit completed" if done else "every fit diverged at the same step"
        if self.envelope_runs is not None:
            runs = f"{self.envelope_runs} moved run{'s' * (self.envelope_runs != 1)}"
            limit += f" (the envelope of {runs}){self._judged_until()}"
        return f"All {len(self.engines)} engines follow the same path within {limit}; {status}."

    def saturates_at(self, engine: str) -> int | None:
        """The first step where ``engine``'s envelope bound reaches rho 1, or ``None``.

        rho is at most 1 between finite numbers, so from that step on no finite path can
        leave the envelope: the fit is chaotic enough there that correct runs may be
        anywhere, and only a path that stops being finite is caught. A verdict of "within
        natural drift" holds up to that step.
        """
        bound = (self.envelope_bound or {}).get(engine)
        if bound is None:
            return None
        saturated = np.flatnonzero(np.asarray(bound) >= 1.0)
        return int(saturated[0]) if saturated.size else None

    def _judged_until(self) -> str:
        """For sentences: where the envelopes stop judging, if they do."""
        steps = [step for name in self.engines if (step := self.saturates_at(name)) is not None]
        if not steps:
            return " all the way"
        return (
            f" up to step {min(steps)}, where an envelope reaches rho 1: past it this fit is "
            "chaotic enough that correct paths may be anywhere, and only a non-finite path "
            "is caught"
        )

    def _where(self, name: str) -> str:
        """Where an engine's path leaves its envelope, for sentences (``""`` if it does not)."""
        step = self.leaves_at.get(name)
        if step is None:
            return ""
        return f" (at step {step}, {self.leaving_element[name]})"

    def path_rho(self, engine: str) -> np.ndarray:
        """Per step, the largest rho between ``engine``'s parameters and the reference's
        (what ``divergence`` takes the largest of)."""
        return path_rho(self.results[engine].trajectory, self.results[self.reference].trajectory)

    def __repr__(self) -> str:
        """One line with the verdict and, when paths part, where and by how much
        (``assert comparison.ok, comparison`` shows it; ``str()`` is the whole table)."""
        head = f"FitComparison({self.problem!r}, {self.dtype}, {self.steps} steps: "
        if self.ok:
            within = "" if self.envelope_runs is None else " within their envelopes"
            return head + f"{', '.join(self.engines)} follow one path{within})"
        name = self.disagreeing[0]
        if name == self.reference:
            name = next(other for other in self.engines if other != self.reference)
        i = self.engines.index(name)
        statuses = f"{name} {self.results[name].status}, {self.reference} " + (
            self.results[self.reference].status
        )
        step = self.leaves_at.get(name)
        if step is not None and self.envelope_bound is not None:
            return head + (
                f"{name}'s path leaves its envelope at step {step} "
                f"({self.leaving_element[name]}: rho {self.path_rho(name)[step]:.1e} against a "
                f"bound of {self.envelope_bound[name][step]:.1e}; {statuses}); "
                "print(comparison) for the table)"
            )
        return head + (
            f"{name}'s path is {self.divergence[i, 0]:.1e} from {self.reference}'s at step "
            f"{int(self.peak_step[i, 0])} (tolerance {self._tolerance(i)}; {statuses}); "
            "print(comparison) for the table)"
        )

    def __str__(self) -> str:
        at = point(self.init)
        lines = [
            f"Fit comparison: {self.problem}, {self.dtype}, {self.steps} steps from {at}",
            f"reference: {self.reference}; path rho = largest rho between the parameters at "
            "the same step, over all steps",
        ]
        if self.envelope_runs is not None:
            runs = self.envelope_runs
            lines.append(
                f"envelope: how far each path drifts from itself under round-off ({runs} run(s) "
                "from a moved start, on moved data); a path leaves it where its rho exceeds 8 "
                "times the larger of the two envelopes at that step"
            )
        lines.append("")
        show = sum(value.size for value in self.init.values()) <= 4
        header = ["engine", "status", "final loss"]
        if show:
            header += [f"final {name}" for name in self.init]
        if self.loss_tol is not None:
            header.append(f"steps to {self.loss_tol:g}")
        header += ["time s", "µs/step", f"path rho vs {self.reference}", "at step"]
        if self.envelope_runs is not None:
            header += ["leaves envelope at", "parameter"]
        header.append("agrees")
        rows = []
        for i, name in enumerate(self.engines):
            result = self.results[name]
            row = [name, result.status, f"{result.final_loss:.9g}"]
            if show:
                final = flatten(result.params)[0]
                row += [short(final[param], 9) for param in self.init]
            if self.loss_tol is not None:
                reached = self.steps_to_tol[name]
                row.append("never" if reached is None else str(reached))
            row += [
                f"{self.times[name]:.3g}",
                f"{self.time_per_step(name) * 1e6:.1f}",
            ]
            if name == self.reference:
                row += ["reference", ""] + ["", ""] * (self.envelope_runs is not None) + ["—"]
            else:
                row += [f"{self.divergence[i, 0]:.1e}", str(int(self.peak_step[i, 0]))]
                if self.envelope_runs is not None:
                    step = self.leaves_at.get(name)
                    saturated = self.saturates_at(name)
                    never = "never" if saturated is None else f"not by {saturated} (then ≥ 1)"
                    row += [
                        never if step is None else str(step),
                        self.leaving_element.get(name) or "",
                    ]
                row.append("NO" if name in self.disagreeing else "yes")
            rows.append(row)
        lines.append(_output.table(header, rows))
        lines += ["", self.summary()]
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record (losses and trajectories included, as lists);
        [`from_dict`][gradlab.FitComparison.from_dict] rebuilds the comparison from it."""
        return _output.stamp(
            self,
            {
                "problem": self.problem,
                "dtype": self.dtype,
                "reference": self.reference,
                "engines": list(self.engines),
                "steps": self.steps,
                "init": self.init,
                "ok": self.ok,
                "summary": self.summary(),
                "outlier": self.outlier,
                "loss_tol": self.loss_tol,
                "atol": self.atol,
                "rtol": self.rtol,
                "data_digest": self.data_digest,
                "envelope_runs": self.envelope_runs,
                "engine_results": {
                    name: {
                        **self.results[name].to_dict(),
                        "time": self.times[name],
                        "time_per_step": self.time_per_step(name),
                        "steps_to_tol": self.steps_to_tol[name],
                        "path_rho": float(self.divergence[i, 0]),
                        "path_rho_step": int(self.peak_step[i, 0]),
                        "agrees": name not in self.disagreeing,
                        "close": None if self.close is None else bool(self.close[i]),
                        "envelope": None if self.envelope is None else self.envelope[name],
                        "envelope_bound": (self.envelope_bound or {}).get(name),
                        "leaves_at": self.leaves_at.get(name),
                        "leaving_element": self.leaving_element.get(name),
                    }
                    for i, name in enumerate(self.engines)
                },
                "path_rho": _output.pairs(self.divergence, self.engines),
                "path_rho_step": _output.pairs(self.peak_step, self.engines),
                "tolerances": _output.pairs(self.tolerances, self.engines),
                "skipped": self.skipped,
                "provenance": self.provenance,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FitComparison:
        """Rebuild a comparison from [`to_dict`][gradlab.FitComparison.to_dict] (or parsed
        ``to_json``). Without the model and data, its ``plot`` draws the losses and paths
        but not the fitted curves.

        Raises:
            ArgumentError: ``record`` is not a saved fit comparison.
        """
        with _output.reading(cls, record) as saved:
            dtype = check_dtype(saved["dtype"], "record")
            engines = tuple(str(name) for name in saved["engines"])
            per_engine = {name: saved["engine_results"][name] for name in engines}
            closes = [per_engine[name]["close"] for name in engines]
            # Records saved before envelopes existed have none of their fields.
            runs = _output.maybe(saved.get("envelope_runs"), int)
            drift = {name: per_engine[name].get("envelope") for name in engines}
            bounds = {name: per_engine[name].get("envelope_bound") for name in engines}
            return cls(
                problem=str(saved["problem"]),
                dtype=dtype,
                reference=str(saved["reference"]),
                engines=engines,
                steps=int(saved["steps"]),
                init=_output.arrays(saved["init"], dtype),
                results={name: FitResult.from_dict(per_engine[name]) for name in engines},
                times={name: _output.number(per_engine[name]["time"]) for name in engines},
                loss_tol=_output.maybe(saved["loss_tol"]),
                steps_to_tol={
                    name: _output.maybe(per_engine[name]["steps_to_tol"], int) for name in engines
                },
                divergence=_output.square(saved["path_rho"], engines, float),
                peak_step=_output.square(saved["path_rho_step"], engines, int),
                tolerances=_output.square(saved["tolerances"], engines, float),
                outlier=saved["outlier"],
                skipped=dict(saved["skipped"]),
                provenance=dict(saved["provenance"]),
                close=None if closes[0] is None else np.array(closes, dtype=bool),
                atol=_output.maybe(saved["atol"]),
                rtol=_output.maybe(saved["rtol"]),
                data_digest=saved["data_digest"],
                envelope_runs=runs,
                envelope=None
                if runs is None
                else {name: _output.array(drift[name], "float64") for name in engines},
                envelope_bound=None
                if runs is None
                else {
                    name: _output.array(bound, "float64")
                    for name, bound in bounds.items()
                    if bound is not None
                },
                leaves_at={
                    name: _output.maybe(per_engine[name].get("leaves_at"), int)
                    for name in engines
                    if runs is not None
                },
                leaving_element={
                    name: per_engine[name].get("leaving_element")
                    for name in engines
                    if runs is not None
                },
            )

    def against(self, baseline: FitComparison | str | os.PathLike[str]) -> BaselineComparison:
        """Whether each engine's path changed since ``baseline``, the same fits saved earlier
        (same problem, data, start, steps and dtype): each engine's parameters step by step
        against its own earlier ones, judged with this comparison's criterion (its path
        tolerance against itself, or the ``tolerance``/``atol``/``rtol`` given), and its
        status. Times are shown, not judged. See
        [`BaselineComparison`][gradlab.BaselineComparison].

        Args:
            baseline: The earlier comparison, or the path of its JSON (``save``).

        Raises:
            ArgumentError: ``baseline`` is not a saved fit comparison, or is of another
                problem, dtype, start, number of steps or data.
        """
        return fits_against(self, baseline)

    def to_frame(self) -> Any:
        """One row per engine (final loss and parameters, times, path rho). Needs pandas."""
        pandas = _output.optional("pandas", "FitComparison.to_frame", None)
        rows = []
        for i, name in enumerate(self.engines):
            result = self.results[name]
            row: dict[str, Any] = {"engine": name, "status": result.status}
            row["final_loss"] = result.final_loss
            # One column per parameter element, named as reports name it (layers[0].w[1, 2]).
            flat = flatten(result.params)[0]
            elements = (float(x) for value in flat.values() for x in np.ravel(value))
            row.update(zip(element_labels(flat), elements, strict=True))
            row["steps_to_tol"] = self.steps_to_tol[name]
            row["time"] = self.times[name]
            row["time_per_step"] = self.time_per_step(name)
            row["path_rho"] = float(self.divergence[i, 0])
            row["path_rho_step"] = int(self.peak_step[i, 0])
            if self.envelope_runs is not None:
                row["leaves_at"] = self.leaves_at.get(name)
                row["leaving_element"] = self.leaving_element.get(name)
            row["agrees"] = name not in self.disagreeing
            rows.append(row)
        return pandas.DataFrame(rows).set_index("engine")

    def plot(self, path: str | None = None) -> Any:
        """Data with each engine's fitted curve, the loss curves, and how far the paths part,
        against the tolerance they were judged with (see
        [`fit_comparison_figure`][gradlab.plots.fit_comparison_figure]).

        Returns a matplotlib Figure; saved to ``path`` (.png, .pdf, .svg) if given.
        """
        from gradlab import plots

        figure = plots.fit_comparison_figure(self)
        if path is not None:
            _output.save_figure(figure, path)
        return figure


def compare_fits(
    problem: AbstractProblem,
    data: Any,
    *,
    optimizer: GradientTransformation | Any,
    steps: int,
    init: Any = None,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    loss_tol: float | None = None,
    repeats: int = 1,
    progress: bool = False,
    tolerance: float | str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    envelope: int | None = None,
) -> FitComparison:
    """Run the same fit on every engine from the same start, and compare the paths.

    Each engine runs the fit once untimed, to warm up (imports, tracing, compilation),
    then ``repeats`` times without recording, the fastest of which is the engine's time,
    then once more recording every step's parameters (recording is kept out of the
    timed runs). The parameter paths are compared step by
    step in rho against the reference, with the tolerance table of
    [`tolerance`][gradlab.tolerance] (a correct engine's path stays as close as its gradients,
    since gradient descent on these problems does not amplify round-off), or, with
    ``envelope``, against how far round-off carries each path at each step.

    Args:
        problem: What to minimise.
        data: Its data (copied, never modified).
        optimizer: The optimizer ([`sgd`][gradlab.sgd], ...), the same for every engine.
        steps: Steps per fit.
        init: The common starting point (copied, never modified); default: the problem's
            ``initial_params`` for the data.
        engines: Engine names or objects, or one comma-separated string. Default: every
            known engine that is installed and can run the problem (the others are skipped
            with a note).
        dtype: ``"float32"`` or ``"float64"``.
        reference: The engine the others are compared with; default ``"numpy"`` if the
            problem has a hand gradient, else ``"fd"``; where that cannot run (an optax
            optimizer, a problem without a NumPy implementation), the first engine that can.
        loss_tol: Report, per engine, how many steps it took to reach this loss.
        repeats: Timed runs per engine after the first; the fastest is reported.
        progress: Show a progress bar (needs tqdm).
        tolerance: One largest path rho for every pair, instead of gradlab's table (as in
            [`compare_gradients`][gradlab.compare_gradients]): for float32 fits whose
            round-off an optimizer amplifies (Adam divides by √v), say. Or ``"derived"``:
            each engine's fit is run once more from a start moved by a few ulps, and an
            exact pair may part by 8 times the larger of the two paths' spread (the largest
            rho between a path and its moved twin, over the steps), never under 32 ulps:
            round-off as this fit amplifies it. A coarse bound, one for the whole path;
            for one per step, see ``envelope``.
        atol: Judge paths instead in the familiar form, at every step and element:
            |a − b| ≤ atol + rtol·max(|a|, |b|), as in
            [`compare_gradients`][gradlab.compare_gradients]; not with ``tolerance``.
        rtol: See ``atol``.
        envelope: Judge each path step by step against its natural drift, from ``k``
            more untimed runs of each engine's fit: run i starts from the start moved by a
            few ulps and runs on the data moved by a few ulps (integer and whole-number
            arrays, labels, kept), with seed i. Moved data changes every step's gradient by
            round-off, what smooth or contracting dynamics carry; a moved start is what
            chaotic dynamics grow. An engine's envelope at step t is the largest rho
            between its path and a twin's at step t or before; at each step a pair may
            part by 8 times the larger of the two envelopes (never under 32 ulps; with fd,
            never under the table's tolerance). The verdict is the first step where a path
            leaves that bound, and the element that leaves: a bug stands out from the step
            it acts, even in a fit whose correct paths part by 0.1, which any fixed
            tolerance fails. Not with ``tolerance``, ``atol`` or ``rtol``.

    Returns:
        A [`FitComparison`][gradlab.FitComparison].

    Raises:
        ArgumentError: a bad argument, or ``envelope`` with ``tolerance``, ``atol`` or
            ``rtol``.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.Quadratic()
        >>> comparison = gradlab.compare_fits(problem, problem.make_data(100),
        ...     optimizer=gradlab.sgd(1e-3), steps=500, init={"w": 0.0, "b": 0.0},
        ...     engines=["numpy", "fd"], loss_tol=0.5)
        >>> comparison.ok, comparison.steps_to_tol["numpy"] == comparison.steps_to_tol["fd"]
        (True, True)
    """
    optimizer = check_transformation(optimizer)
    steps = check_positive_int(steps, "steps")
    repeats = check_positive_int(repeats, "repeats")
    if loss_tol is not None:
        loss_tol = check_float(loss_tol, "loss_tol")
    judge = criterion(tolerance, atol, rtol)
    if envelope is not None:
        envelope = check_positive_int(envelope, "envelope")
        if tolerance is not None or atol is not None or rtol is not None:
            raise ArgumentError(
                "envelope",
                "judges each path by its own drift: give it without tolerance, atol or rtol",
            )
    runs = envelope or 0
    if init is None:
        init = default_start(problem, data)
    _, dtype, flat, checked_data, start, layout = prepare(problem, data, init, "numpy", dtype)
    wanted, default = engine_list(engines)

    def can_run(engine: GradientEngine) -> None:
        value_and_grad_of(engine, flat)
        check_optax_engine(optimizer, engine)

    built, skipped = resolve_engines(wanted, default, reference, can_run, problem.has_hand_gradient)
    nested_start = layout.unflatten(start)

    def prepared(engine: GradientEngine, on: Any = data, at: Any = nested_start) -> PreparedFit:
        # Checked and made ready once per engine (and data): the warm-up, timed and
        # recording runs that follow each cost a dispatch.
        return PreparedFit(
            problem, on, engine=engine, optimizer=optimizer, dtype=dtype, _start=(at, "init")
        )

    results: dict[str, FitResult] = {}
    times: dict[str, float] = {}
    spread: dict[str, float] = {}
    drift: dict[str, np.ndarray] = {}
    # Per engine: one untimed warm-up (imports, tracing, compilation), the timed runs, then
    # the run that records the path (recording is kept out of the timed runs), then the
    # untimed runs that measure its spread or envelope.
    fits = 2 + repeats + judge.derived + runs
    with progress_bar(len(built) * fits, "fits", progress) as advance:
        for name, engine in built.items():
            ready = prepared(engine)
            ready.run(nested_start, steps=steps)
            advance(name)
            timed = []
            for _ in range(repeats):
                timed.append(ready.run(nested_start, steps=steps).wall_time)
                advance(name)
            times[name] = min(timed)
            results[name] = ready.run(nested_start, steps=steps, trajectory=True)
            advance(name)
            if judge.derived:
                # How far this engine's own path moves from a start moved by a few ulps:
                # round-off as this fit carries it, step by step.
                moved = layout.unflatten(moved_params(start, dtype))
                other = ready.run(moved, steps=steps, trajectory=True)
                spread[name] = float(np.max(path_rho(results[name].trajectory, other.trajectory)))
                advance(name)
            twins = []
            for seed in range(runs):
                # A start moved by a few ulps (what chaotic dynamics grow) on data moved by a
                # few ulps (a round-off-sized change of every step's gradient, what smooth
                # and contracting dynamics carry).
                moved = layout.unflatten(moved_params(start, dtype, seed))
                twin = prepared(engine, moved_data(data, dtype, seed), moved)
                other = twin.run(moved, steps=steps, trajectory=True)
                twins.append(path_rho(results[name].trajectory, other.trajectory))
                advance(name)
            if twins:
                drift[name] = _envelope(twins)

    names = tuple(built)
    size = len(names)
    divergence, peak = np.zeros((size, size)), np.zeros((size, size), dtype=int)
    limits = pair_tolerances(built, dtype, judge.tolerance)
    exact = np.array([not is_approximate(engine) for engine in built.values()])
    exact_pairs = exact[:, None] & exact[None, :]
    if judge.derived:
        # Exact pairs by their paths' spread; a pair with fd keeps the table's where larger.
        derived = np.array(
            [[derived_bound(dtype, spread[a], spread[b]) for b in names] for a in names]
        )
        limits = np.where(exact_pairs, derived, np.maximum(limits, derived))
    agree = np.ones((size, size), dtype=bool)
    paths: dict[tuple[int, int], np.ndarray] = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                per_step = paths[i, j] = path_rho(results[a].trajectory, results[b].trajectory)
                peak[i, j] = int(np.argmax(per_step))
                divergence[i, j] = per_step[peak[i, j]]
                if judge.in_rho:
                    agree[i, j] = divergence[i, j] <= limits[i, j]
                else:
                    scores = path_rho(results[a].trajectory, results[b].trajectory, judge)
                    agree[i, j] = bool(np.max(scores, initial=0.0) <= 1.0)
    verdict = None
    if envelope is not None:
        # A pair with fd is never held tighter than the table holds it.
        floors = np.where(exact_pairs, 0.0, limits)
        verdict = _by_envelopes(dtype, names, results, drift, paths, floors)
        agree, limits = verdict.agree, verdict.limits
    return FitComparison(
        problem=problem.name,
        dtype=dtype,
        reference=names[0],
        engines=names,
        steps=steps,
        init={name: value.astype(dtype) for name, value in start.items()},
        results=results,
        times=times,
        loss_tol=loss_tol,
        steps_to_tol={name: _first_below(r.losses, loss_tol) for name, r in results.items()},
        divergence=divergence,
        peak_step=peak,
        tolerances=limits,
        outlier=outlier(names, agree),
        skipped=skipped,
        provenance={
            **common_provenance(dtype),
            "engines": {n: e.describe() for n, e in built.items()},
        },
        model=problem,
        data=checked_data,
        close=agree[:, 0],
        atol=judge.atol,
        rtol=judge.rtol,
        data_digest=_output.digest(checked_data),
        envelope_runs=envelope,
        envelope=drift or None,
        envelope_bound=None if verdict is None else verdict.bounds,
        leaves_at={} if verdict is None else verdict.leaves_at,
        leaving_element={} if verdict is None else verdict.leaving,
    )


def _envelope(spreads: list[np.ndarray]) -> np.ndarray:
    """Per step, the largest rho between a path and any of its twins, at that step or any
    before it (over the steps every twin ran).

    A running maximum, not each step's own: a twin's path may cross the recorded one, and
    the bound would dip there by chance (a comparison that passes on one machine could fail
    on another, and a test could be flaky); round-off carried to step t can only be taken
    to have reached what it reached before.
    """
    length = min(len(spread) for spread in spreads)
    largest = np.max([spread[:length] for spread in spreads], axis=0)
    return np.asarray(np.maximum.accumulate(largest))


def _held(envelope: np.ndarray, length: int) -> np.ndarray:
    """An envelope over ``length`` steps: cut, or held at its last (its largest) value past
    the steps the twins ran (a twin that diverged sooner than the recorded path)."""
    return np.pad(envelope[:length], (0, max(0, length - len(envelope))), mode="edge")


class _Verdict(NamedTuple):
    """Paths judged against their envelopes: which pairs agree, each pair's largest bound,
    and, against the reference, each engine's per-step bound, the step where its path
    leaves it and the element that leaves."""

    agree: np.ndarray
    limits: np.ndarray
    bounds: dict[str, np.ndarray]
    leaves_at: dict[str, int | None]
    leaving: dict[str, str | None]


def _by_envelopes(
    dtype: str,
    names: tuple[str, ...],
    results: Mapping[str, FitResult],
    drift: Mapping[str, np.ndarray],
    paths: Mapping[tuple[int, int], np.ndarray],
    floors: np.ndarray,
) -> _Verdict:
    """Each pair's path rho, step by step, against ``derived_bound`` of the two engines'
    envelopes at that step (never under the pair's floor)."""
    size = len(names)
    agree = np.ones((size, size), dtype=bool)
    limits = np.zeros((size, size))
    bounds: dict[str, np.ndarray] = {}
    leaves_at: dict[str, int | None] = {names[0]: None}
    leaving: dict[str, str | None] = {names[0]: None}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            length = len(paths[i, j]) if i != j else len(drift[a])
            envelopes = _held(drift[a], length), _held(drift[b], length)
            bound = np.maximum(floors[i, j], derived_bound(dtype, *envelopes))
            limits[i, j] = np.max(bound)
            if i == j:
                continue
            beyond = np.flatnonzero(paths[i, j] > bound)
            agree[i, j] = not beyond.size
            if j == 0:
                bounds[a] = bound
                leaves_at[a] = int(beyond[0]) if beyond.size else None
                leaving[a] = None
                if beyond.size:
                    leaving[a] = _farthest(results[a], results[b], int(beyond[0]))
    return _Verdict(agree, limits, bounds, leaves_at, leaving)


def _farthest(result: FitResult, reference: FitResult, step: int) -> str:
    """The parameter element of ``result`` farthest (in rho) from ``reference``'s at
    ``step``, named as reports name elements (``layers[0].w[1, 2]``)."""
    mine, theirs = flatten(result.trajectory)[0], flatten(reference.trajectory)[0]
    at = {name: np.asarray(path)[step] for name, path in mine.items()}
    there = {name: np.asarray(theirs[name])[step] for name in mine}
    return differences(at, there, element, 1)[0][0]


def _first_below(losses: np.ndarray, limit: float | None) -> int | None:
    """The first step whose loss (before its update) is at most ``limit``."""
    if limit is None:
        return None
    hits = np.flatnonzero(losses <= limit)
    return int(hits[0]) if hits.size else None
