"""The same fit on every engine, from the same start: do their paths agree, and how fast?"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradlab import _output
from gradlab._agreement import Criterion, criterion, path_rho
from gradlab._boundary import check_transformation, prepare
from gradlab._checks import check_dtype, check_float, check_positive_int
from gradlab._output import point, short
from gradlab._progress import progress_bar
from gradlab._provenance import common_provenance
from gradlab._tree import flatten
from gradlab.comparison._baseline import BaselineComparison, fits_against
from gradlab.comparison._divergence import derived_bound, moved_params
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
        tolerances: ``tolerances[i, j]``: the largest path rho allowed between i and j.
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
        if self.outlier is not None:
            return f"{self.outlier}'s path leaves every other engine's, and those agree."
        if not self.ok and len(self.engines) == 2:
            return (
                f"The paths of {self.engines[0]} and {self.engines[1]} part beyond tolerance; "
                "with two engines gradlab cannot tell which is wrong: add a third engine to "
                "find out."
            )
        if not self.ok:
            departed = ", ".join(self.disagreeing)
            return f"Paths depart from {self.reference}'s beyond tolerance: {departed}."
        done = all(result.ok for result in self.results.values())
        if len(self.engines) == 1:
            outcome = "it completed" if done else "it diverged"
            return f"Only {self.reference} ran ({outcome}): there was no other path to compare."
        status = "every fit completed" if done else "every fit diverged at the same step"
        return f"All {len(self.engines)} engines follow the same path within tolerance; {status}."

    def __repr__(self) -> str:
        """One line with the verdict and, when paths part, where and by how much
        (``assert comparison.ok, comparison`` shows it; ``str()`` is the whole table)."""
        head = f"FitComparison({self.problem!r}, {self.dtype}, {self.steps} steps: "
        if self.ok:
            return head + f"{', '.join(self.engines)} follow one path)"
        name = self.disagreeing[0]
        if name == self.reference:
            name = next(other for other in self.engines if other != self.reference)
        i = self.engines.index(name)
        statuses = f"{name} {self.results[name].status}, {self.reference} " + (
            self.results[self.reference].status
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
            "",
        ]
        show = sum(value.size for value in self.init.values()) <= 4
        header = ["engine", "status", "final loss"]
        if show:
            header += [f"final {name}" for name in self.init]
        if self.loss_tol is not None:
            header.append(f"steps to {self.loss_tol:g}")
        header += ["time s", "µs/step", f"path rho vs {self.reference}", "at step", "agrees"]
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
                row += ["reference", "", "—"]
            else:
                row += [
                    f"{self.divergence[i, 0]:.1e}",
                    str(int(self.peak_step[i, 0])),
                    "NO" if name in self.disagreeing else "yes",
                ]
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
) -> FitComparison:
    """Run the same fit on every engine from the same start, and compare the paths.

    Each engine runs the fit once untimed, to warm up (imports, tracing, compilation),
    then ``repeats`` times without recording, the fastest of which is the engine's time,
    then once more recording every step's parameters (recording is kept out of the
    timed runs). The parameter paths are compared step by
    step in rho against the reference, with the tolerance table of
    [`tolerance`][gradlab.tolerance] (a correct engine's path stays as close as its gradients,
    since gradient descent on these problems does not amplify round-off).

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
            per-step envelopes are the stability audit's.
        atol: Judge paths instead in the familiar form, at every step and element:
            |a − b| ≤ atol + rtol·max(|a|, |b|), as in
            [`compare_gradients`][gradlab.compare_gradients]; not with ``tolerance``.
        rtol: See ``atol``.

    Returns:
        A [`FitComparison`][gradlab.FitComparison].

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
    if init is None:
        init = default_start(problem, data)
    _, dtype, flat, checked_data, start, layout = prepare(problem, data, init, "numpy", dtype)
    wanted, default = engine_list(engines)

    def can_run(engine: GradientEngine) -> None:
        value_and_grad_of(engine, flat)
        check_optax_engine(optimizer, engine)

    built, skipped = resolve_engines(wanted, default, reference, can_run, problem.has_hand_gradient)
    nested_start = layout.unflatten(start)

    def prepared(engine: GradientEngine) -> PreparedFit:
        # Checked and made ready once per engine: the warm-up, timed and recording runs
        # that follow each cost a dispatch.
        return PreparedFit(
            problem,
            data,
            engine=engine,
            optimizer=optimizer,
            dtype=dtype,
            _start=(nested_start, "init"),
        )

    results: dict[str, FitResult] = {}
    times: dict[str, float] = {}
    spread: dict[str, float] = {}
    # Per engine: one untimed warm-up (imports, tracing, compilation), the timed runs, then
    # the run that records the path (recording is kept out of the timed runs).
    with progress_bar(len(built) * (2 + repeats), "fits", progress) as advance:
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

    names = tuple(built)
    size = len(names)
    divergence, peak = np.zeros((size, size)), np.zeros((size, size), dtype=int)
    limits = pair_tolerances(built, dtype, judge.tolerance)
    if judge.derived:
        # Exact pairs by their paths' spread; a pair with fd keeps the table's where larger.
        exact = np.array([not is_approximate(engine) for engine in built.values()])
        derived = np.array(
            [[derived_bound(dtype, spread[a], spread[b]) for b in names] for a in names]
        )
        limits = np.where(exact[:, None] & exact[None, :], derived, np.maximum(limits, derived))
    agree = np.ones((size, size), dtype=bool)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                per_step = path_rho(results[a].trajectory, results[b].trajectory)
                peak[i, j] = int(np.argmax(per_step))
                divergence[i, j] = per_step[peak[i, j]]
                if judge.in_rho:
                    agree[i, j] = divergence[i, j] <= limits[i, j]
                else:
                    scores = path_rho(results[a].trajectory, results[b].trajectory, judge)
                    agree[i, j] = bool(np.max(scores, initial=0.0) <= 1.0)
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
    )


def _first_below(losses: np.ndarray, limit: float | None) -> int | None:
    """The first step whose loss (before its update) is at most ``limit``."""
    if limit is None:
        return None
    hits = np.flatnonzero(losses <= limit)
    return int(hits[0]) if hits.size else None
