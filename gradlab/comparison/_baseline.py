"""Has anything changed since the baseline? A report or fit against the same one saved earlier.

The intended use is a regression test in a user's CI: save a report once
(``report.save("baseline.json")``, or ``gradlab compare --json > baseline.json``), then after
every upgrade of torch, jax or the user's own code, compare the new report with it
(``report.against("baseline.json")``, ``gradlab compare --baseline baseline.json``). Each
engine is judged against *its own* earlier numbers, with the same criterion the report judges
engines against each other with: a change beyond round-off is a regression, whatever the
other engines say.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gradlab import _output
from gradlab._agreement import Criterion, Label, differences, joined, rho, tolerance
from gradlab._errors import ArgumentError, ArgumentTypeError, Regression
from gradlab._tree import element, flatten

# The results (GradientReport, FitComparison, FitResult) import this module, not the other
# way round: here they are typed ``Any`` and read by their attributes.
_R = TypeVar("_R", bound=_output.Record)
#: Provenance entries worth naming when they differ: versions and the machine (not the time).
_VERSIONS = ("gradlab", "python", "numpy", "torch", "jax", "platform", "machine", "cpu_count")


@dataclass(frozen=True)
class Change:
    """One engine now against the same engine in the baseline.

    Attributes:
        engine: The engine's name.
        rho: The largest rho between its values then and now (over every step, for fits).
        worst: The element where that rho peaks (``"w[1]"``, ``"b after 37 updates"``,
            ``"loss"``), or ``None`` when nothing moved.
        then: The baseline's value there, or ``None``.
        now: The value there now, or ``None``.
        tolerance: What the change was judged with: the largest rho allowed, or with
            ``atol``/``rtol`` those (``"atol 1e-08, rtol 1e-06"``).
        changed: Whether it moved beyond that (or, for fits, its status or length changed).
        note: Why a fit counts as changed beyond its numbers (``"diverged, was completed"``),
            else ``""``.
    """

    engine: str
    rho: float
    worst: str | None
    then: float | None
    now: float | None
    tolerance: str
    changed: bool
    note: str = ""


@dataclass(frozen=True)
class BaselineComparison(_output.Record):
    """A report (or fit) against the same one saved earlier: what changed, engine by engine.

    Made by [`GradientReport.against`][gradlab.GradientReport.against],
    [`FitComparison.against`][gradlab.FitComparison.against] and
    [`FitResult.against`][gradlab.FitResult.against].

    Attributes:
        what: What was compared, in words: ``"gradients"``, ``"Hessians"``, ``"fit paths"``...
        problem: The problem's name.
        dtype: The precision.
        changes: Each engine in both, now against then.
        missing: Engines in the baseline that could not run now, with the reason: a
            regression too (a framework that no longer installs or imports).
        new: Engines run now that the baseline does not have (not judged).
        unchecked: Engines in the baseline that were not asked for now (not judged).
        versions: Versions (and machine) that differ, ``{"torch": ("2.12.0", "2.13.0")}``.
        times: For fits, each engine's time then and now in seconds (shown, not judged:
            timings are too noisy to fail a build on).
        baseline_time: When the baseline was made (ISO 8601), if recorded.
    """

    what: str
    problem: str
    dtype: str
    changes: dict[str, Change]
    missing: dict[str, str] = field(default_factory=dict)
    new: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()
    versions: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    times: dict[str, tuple[float, float]] = field(default_factory=dict)
    baseline_time: str | None = None

    @property
    def regressions(self) -> tuple[str, ...]:
        """The engines whose result changed, then those that no longer run."""
        changed = [name for name, change in self.changes.items() if change.changed]
        return (*changed, *self.missing)

    @property
    def ok(self) -> bool:
        """Whether nothing changed: every engine of the baseline ran, within tolerance."""
        return not self.regressions

    def raise_if_changed(self) -> None:
        """Raise [`Regression`][gradlab.Regression] (an ``AssertionError``) unless ``ok``."""
        __tracebackhide__ = True  # pytest shows the caller's line, not gradlab's
        if not self.ok:
            raise Regression(f"{self.summary()}\n\n{self}", self)

    def summary(self) -> str:
        """One sentence: did anything change since the baseline, and what."""
        if self.ok:
            count = len(self.changes)
            engines = "1 engine" if count == 1 else f"{count} engines"
            return f"No change since the baseline: {self.what} of {engines}, each within tolerance."
        parts = []
        changed = [change for change in self.changes.values() if change.changed]
        if changed:
            parts.append(f"{self.what} changed on " + ", ".join(c.engine for c in changed))
        if self.missing:
            parts.append(f"no longer ran: {', '.join(self.missing)}")
        text = "; ".join(parts)
        return f"Regression against the baseline: {text[0].lower()}{text[1:]}."

    def __repr__(self) -> str:
        """One line, with the first change's numbers (``assert comparison.ok, comparison``)."""
        head = f"BaselineComparison({self.problem!r}, {self.what}, {self.dtype}: "
        changed = [change for change in self.changes.values() if change.changed]
        if self.ok:
            return head + "no change)"
        if not changed:
            return head + f"missing {', '.join(self.missing)})"
        first = changed[0]
        where = first.note or (
            f"at {first.worst}: {_value(first.now)} now, {_value(first.then)} in the baseline, "
            f"rho {first.rho:.1e} beyond {first.tolerance}"
        )
        return head + f"{first.engine} changed {where}; print() it for the table)"

    def __str__(self) -> str:
        lines = [f"{self.what.capitalize()} against the baseline: {self.problem}, {self.dtype}"]
        if self.baseline_time:
            lines.append(f"baseline made {self.baseline_time}")
        if self.versions:
            lines.append(
                "since then: "
                + "; ".join(f"{name} {then} → {now}" for name, (then, now) in self.versions.items())
            )
        lines.append("")
        header = ["engine", "rho vs baseline", "where", "baseline", "now", "tolerance"]
        if self.times:
            header += ["time then s", "time now s"]
        header.append("changed")
        rows = []
        for name, change in self.changes.items():
            row = [
                name,
                "0" if change.rho == 0 else f"{change.rho:.1e}",
                change.worst or "—",
                _value(change.then),
                _value(change.now),
                change.tolerance,
            ]
            if self.times:
                then, now = self.times[name]
                row += [f"{then:.3g}", f"{now:.3g}"]
            row.append("YES" if change.changed else "no")
            rows.append(row)
        lines.append(_output.table(header, rows))
        lines.append("")
        lines += [f"{c.engine}: {c.note}" for c in self.changes.values() if c.note]
        lines += [f"missing {name}: {reason}" for name, reason in self.missing.items()]
        if self.new:
            lines.append(f"new (no baseline to compare with): {', '.join(self.new)}")
        if self.unchecked:
            lines.append(f"in the baseline, not run now: {', '.join(self.unchecked)}")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record; [`from_dict`][gradlab.BaselineComparison.from_dict]
        rebuilds it."""
        return _output.stamp(
            self,
            {
                "what": self.what,
                "problem": self.problem,
                "dtype": self.dtype,
                "ok": self.ok,
                "summary": self.summary(),
                "regressions": list(self.regressions),
                "changes": {name: vars(change) for name, change in self.changes.items()},
                "missing": self.missing,
                "new": list(self.new),
                "unchecked": list(self.unchecked),
                "versions": {name: list(pair) for name, pair in self.versions.items()},
                "times": {name: list(pair) for name, pair in self.times.items()},
                "baseline_time": self.baseline_time,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> BaselineComparison:
        """Rebuild a comparison from [`to_dict`][gradlab.BaselineComparison.to_dict]."""
        with _output.reading(cls, record) as saved:
            changes = {}
            for name, item in saved["changes"].items():
                changes[name] = Change(
                    engine=str(item["engine"]),
                    rho=_output.number(item["rho"]),
                    worst=item["worst"],
                    then=_output.maybe(item["then"]),
                    now=_output.maybe(item["now"]),
                    tolerance=str(item["tolerance"]),
                    changed=bool(item["changed"]),
                    note=str(item["note"]),
                )
            return cls(
                what=str(saved["what"]),
                problem=str(saved["problem"]),
                dtype=str(saved["dtype"]),
                changes=changes,
                missing=dict(saved["missing"]),
                new=tuple(saved["new"]),
                unchecked=tuple(saved["unchecked"]),
                versions={name: (a, b) for name, (a, b) in saved["versions"].items()},
                times={
                    name: (_output.number(a), _output.number(b))
                    for name, (a, b) in saved["times"].items()
                },
                baseline_time=saved["baseline_time"],
            )


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.12g}"


# -- Against a baseline ------------------------------------------------------------------------


def gradients_against(report: Any, baseline: Any, label: Label) -> BaselineComparison:
    """[`GradientReport.against`][gradlab.GradientReport.against]; ``label`` names the
    report's elements."""
    then = _baseline(baseline, type(report))
    _same(report, then, "problem", "derivative", "dtype")
    _same_arrays("parameters", report.params, then.params)
    if report.tangent is not None or then.tangent is not None:
        _same_arrays("tangent", report.tangent or {}, then.tangent or {})
    if report.outputs != then.outputs:
        raise ArgumentError(
            "baseline", f"is of a function with outputs {then.outputs}, not {report.outputs}"
        )
    _same_data(report.data_digest, then.data_digest)
    judge = report.criterion
    changes = {}
    for i, name in enumerate(report.engines):
        if name not in then.values:
            continue
        before, after = dict(then.values[name]), dict(report.values[name])
        if name in then.losses and name in report.losses:  # the loss counts too
            before[""], after[""] = np.asarray(then.losses[name]), np.asarray(report.losses[name])
        changes[name] = _change(
            name, before, after, _with_loss(label), judge, float(report.tolerances[i, i])
        )
    return _comparison(report, then, report.quantity, changes)


def points_against(report: Any, baseline: Any, floor: float) -> BaselineComparison:
    """[`DivergenceReport.against`][gradlab.DivergenceReport.against]: each engine's points
    (their sums and norms, forward and backward) and loss against the baseline's, each
    judged by the larger of the point's two bounds (the loss by ``floor``, the least bound)."""
    then = _baseline(baseline, type(report))
    _same(report, then, "problem", "dtype")
    _same_arrays("parameters", report.params, then.params)
    _same_data(report.data_digest, then.data_digest)
    before = {point.name: point for point in then.points}
    directions = ("forward sum", "forward norm", "backward sum", "backward norm")
    changes = {}
    for name in report.engines:
        if name not in then.engines:
            continue
        items = [(floor, "loss", then.losses.get(name), report.losses.get(name))]
        for point in report.points:
            old = before.get(point.name)
            if old is None or name not in point.summaries or name not in old.summaries:
                continue
            for index, what in enumerate(directions):
                direction = what.split()[0]
                bound = max(point.bound(direction) or floor, old.bound(direction) or floor)
                was, now = old.summaries[name][index], point.summaries[name][index]
                items.append((bound, f"{point.name} {what}", was, now))
        worst: tuple[float, float, str | None, float | None, float | None] = (
            0.0,
            0.0,
            None,
            None,
            None,
        )
        for bound, where, was, now in items:
            if was is None or now is None or (np.isnan(was) and np.isnan(now)):
                continue
            finite = np.isfinite(was) and np.isfinite(now)
            gap = float(rho(was, now)) if finite else float(was != now) * np.inf
            if gap > 0 and gap / bound > worst[0]:
                worst = (gap / bound, gap, where, was, now)
        ratio, largest, at, then_value, now_value = worst
        changes[name] = Change(
            name, largest, at, then_value, now_value, "each point's bound", ratio > 1.0
        )
    return _comparison(report, then, "tapped points", changes)


def fits_against(comparison: Any, baseline: Any) -> BaselineComparison:
    """[`FitComparison.against`][gradlab.FitComparison.against]."""
    then = _baseline(baseline, type(comparison))
    _same(comparison, then, "problem", "dtype", "steps")
    _same_arrays("start", comparison.init, then.init)
    _same_data(comparison.data_digest, then.data_digest)
    judge = Criterion(atol=comparison.atol, rtol=comparison.rtol)
    changes = {
        name: _fit_change(then.results[name], comparison.results[name], judge, limit)
        for name, limit in zip(
            comparison.engines, np.diag(comparison.tolerances).tolist(), strict=True
        )
        if name in then.results
    }
    times = {name: (then.times[name], comparison.times[name]) for name in changes}
    return _comparison(comparison, then, "fit paths", changes, times)


def fit_against(result: Any, baseline: Any) -> BaselineComparison:
    """[`FitResult.against`][gradlab.FitResult.against]."""
    then = _baseline(baseline, type(result))
    _same(result, then, "problem", "engine", "dtype", "steps")
    if result.trajectory is not None and then.trajectory is not None:
        start = {name: path[0] for name, path in flatten(result.trajectory)[0].items()}
        _same_arrays("start", start, {k: v[0] for k, v in flatten(then.trajectory)[0].items()})
    limit = tolerance(result.dtype, against_fd=_approximate(result.engine))
    change = _fit_change(then, result, Criterion(), limit)
    return BaselineComparison(
        what="fit path",
        problem=result.problem,
        dtype=result.dtype,
        changes={result.engine: change},
        versions=_versions(then.provenance, result.provenance, (result.engine,)),
        times={result.engine: (then.wall_time, result.wall_time)},
        baseline_time=then.provenance.get("time"),
    )


def _comparison(
    now: Any,
    then: Any,
    what: str,
    changes: dict[str, Change],
    times: dict[str, tuple[float, float]] | None = None,
) -> BaselineComparison:
    """The comparison of two reports: engines compared, missing, new and unasked-for."""
    missing = {name: now.skipped[name] for name in then.engines if name in now.skipped}
    return BaselineComparison(
        what=what,
        problem=now.problem,
        dtype=now.dtype,
        changes=changes,
        missing=missing,
        new=tuple(name for name in now.engines if name not in then.engines),
        unchecked=tuple(
            name for name in then.engines if name not in now.engines and name not in missing
        ),
        versions=_versions(then.provenance, now.provenance, tuple(changes)),
        times=times or {},
        baseline_time=then.provenance.get("time"),
    )


def _baseline(baseline: object, kind: type[_R]) -> _R:
    """The baseline as an object of ``kind``: given, or loaded from its JSON file."""
    if isinstance(baseline, kind):
        return baseline
    if isinstance(baseline, (str, os.PathLike)):
        loaded: _R = _output.load(baseline, kind, "baseline")
        return loaded
    raise ArgumentTypeError(
        "baseline",
        f"must be a {kind.__name__} or the path of one saved as JSON, got "
        f"{type(baseline).__name__}",
    )


def _same(now: object, then: object, *names: str) -> None:
    """Refuse a baseline that differs from ``now`` in any of the attributes ``names``."""
    for name in names:
        a, b = getattr(now, name), getattr(then, name)
        if a != b:
            raise ArgumentError(
                "baseline", f"is of {name} {b!r}, not {a!r}: it is not a baseline of this"
            )


def _same_arrays(what: str, now: Mapping[str, Any], then: Mapping[str, Any]) -> None:
    """Refuse a baseline taken elsewhere: the names, shapes and values must all be equal,
    and the refusal says where they first differ (two points of the same shapes read
    alike in a summary)."""
    differs = _first_difference(now, then)
    if differs is not None:
        raise ArgumentError(
            "baseline", f"was taken at other {what}: {differs}; compare like with like"
        )


def _first_difference(now: Mapping[str, Any], then: Mapping[str, Any]) -> str | None:
    """Where two named sets of arrays first differ, in words, or ``None`` if they are equal."""
    if list(now) != list(then):
        return f"it has {sorted(then)}, this has {sorted(now)}"
    for name in now:
        a, b = np.asarray(now[name], np.float64), np.asarray(then[name], np.float64)
        if a.shape != b.shape:
            return f"{name} has shape {b.shape} there, {a.shape} here"
        unequal = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if unequal.any():
            index = tuple(int(i) for i in np.argwhere(unequal)[0])
            count = int(unequal.sum())
            more = f" (and {count - 1} more of its {a.size} values)" if count > 1 else ""
            return (
                f"{element(name, index)} is {float(b[index])!r} there, {float(a[index])!r} "
                f"here{more}"
            )
    return None


def _same_data(now: str | None, then: str | None) -> None:
    if now is not None and then is not None and now != then:
        raise ArgumentError(
            "baseline",
            "was computed on other data (its fingerprint differs: another n, seed, features "
            "or data): compare like with like",
        )


def _with_loss(label: Label) -> Label:
    """``label``, naming the loss (stored under the empty name, which no parameter has)."""
    return lambda name, index: "loss" if name == "" else label(name, index)


def _change(
    engine: str,
    then: Mapping[str, np.ndarray],
    now: Mapping[str, np.ndarray],
    label: Label,
    judge: Criterion,
    limit: float,
    note: str = "",
) -> Change:
    """How far ``now`` moved from ``then`` (same names and shapes), judged by ``judge``: in
    rho against ``limit``, or with its ``atol``/``rtol``."""
    shapes = {name: np.shape(value) for name, value in then.items()}
    if shapes != {name: np.shape(value) for name, value in now.items()}:  # an edited file
        raise ArgumentError(
            "baseline", f"its {engine} results have other names or shapes than this one's"
        )
    # The same NaN or infinity as before is no change (a comparison of two engines counts
    # it as total disagreement; here it is the same engine giving the same answer).
    then, now = _unchanged_as_zero(then, now), _unchanged_as_zero(now, then)
    top = differences(then, now, label, 1, judge)
    worst, before, after, largest = top[0] if top else (None, None, None, 0.0)
    if largest == 0.0:  # nothing moved: no element to name
        worst, before, after = None, None, None
    if judge.in_rho:
        moved, described = largest > limit, f"{limit:.0e}"
    else:
        moved, described = not judge.close(*joined(then, now)), judge.describe()
    return Change(engine, largest, worst, before, after, described, moved or bool(note), note=note)


def _unchanged_as_zero(
    values: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``values`` with 0 wherever it and ``other`` hold the same non-finite number."""
    result = {}
    for name, value in values.items():
        a, b = np.asarray(value, np.float64), np.asarray(other[name], np.float64)
        same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
        result[name] = np.where(same, 0.0, a) if same.any() else a
    return result


def _fit_change(then: Any, now: Any, judge: Criterion, limit: float) -> Change:
    """One engine's fit now against its fit in the baseline: the path over the steps both
    ran (the trajectory where both recorded one, else the final parameters) and the losses;
    a different status or number of steps is a change whatever the numbers."""
    note = ""
    if (then.status, len(then.losses)) != (now.status, len(now.losses)):
        note = (
            f"now {now.status} after {len(now.losses)} steps; in the baseline {then.status} "
            f"after {len(then.losses)}"
        )
    steps = min(len(then.losses), len(now.losses))
    before = {"": then.losses[:steps]}
    after = {"": now.losses[:steps]}
    if then.trajectory is not None and now.trajectory is not None:
        paths = flatten(then.trajectory)[0], flatten(now.trajectory)[0]
        rows = min(len(path) for trajectory in paths for path in trajectory.values())
        before.update({k: v[:rows] for k, v in paths[0].items()})
        after.update({k: v[:rows] for k, v in paths[1].items()})

        def label(name: str, index: tuple[int, ...]) -> str:
            if name == "":
                return f"loss at step {index[0]}"
            return f"{element(name, index[1:])} after {index[0]} updates"

    else:
        before.update(flatten(then.params)[0])
        after.update(flatten(now.params)[0])

        def label(name: str, index: tuple[int, ...]) -> str:
            return f"loss at step {index[0]}" if name == "" else f"final {element(name, index)}"

    return _change(now.engine, before, after, label, judge, limit, note)


def _versions(
    then: Mapping[str, Any], now: Mapping[str, Any], engines: tuple[str, ...]
) -> dict[str, tuple[Any, Any]]:
    """What differs between two provenance records: versions, the machine, and what each
    compared engine says of itself (its framework's version, device, compile mode)."""
    found = {
        name: (then.get(name), now.get(name))
        for name in _VERSIONS
        if then.get(name) != now.get(name)
    }
    for engine in engines:
        before = then.get("engines", {}).get(engine, {})
        after = now.get("engines", {}).get(engine, {})
        for key in sorted(set(before) | set(after)):
            pair = (before.get(key), after.get(key))
            if pair[0] != pair[1] and key not in found:
                found[f"{engine} {key}" if key not in _VERSIONS else key] = pair
    return found


def _approximate(name: str) -> bool:
    """Whether the engine registered under ``name`` approximates derivatives (fd)."""
    # Read from the registry's spec: no engine is made, so no framework is imported.
    from gradlab.engines._registry import approximates

    return approximates(name)
