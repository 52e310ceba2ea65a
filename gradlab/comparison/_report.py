"""Do the engines agree? Every engine's derivative at one point, compared pairwise."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradlab import _output
from gradlab._agreement import Criterion, differences, rho
from gradlab._checks import check_dtype, check_positive_int
from gradlab._errors import ArgumentError, Disagreement
from gradlab._output import point
from gradlab.comparison._baseline import BaselineComparison, gradients_against
from gradlab.comparison._kinds import KINDS, Derivative


@dataclass(frozen=True)
class Verdict:
    """One engine judged against the reference.

    Attributes:
        engine: The engine's name.
        rho: The largest rho between its values and the reference's.
        worst: The element where that rho peaks (``"w[2]"``, ``"layers[0].w[3, 1]"``), or
            ``None`` when rho is 0.
        tolerance: The largest rho allowed for this pair, in this dtype.
        close: With ``atol``/``rtol``, whether every element met them (``rho`` and
            ``tolerance`` are then for information); ``None`` when judged in rho.
    """

    engine: str
    rho: float
    worst: str | None
    tolerance: float
    close: bool | None = None

    @property
    def agrees(self) -> bool:
        """Whether rho is within the tolerance (or, with ``atol``/``rtol``, every element
        is close)."""
        return self.rho <= self.tolerance if self.close is None else self.close


@dataclass(frozen=True)
class GradientReport(_output.Record):
    """Every engine's derivative at one point, compared pairwise in rho.

    Made by [`compare_gradients`][gradlab.compare_gradients] and
    [`compare_hessians`][gradlab.compare_hessians].

    Attributes:
        problem: The problem's name.
        derivative: ``"gradient"``, ``"hessian"`` or ``"hvp"``.
        dtype: The precision every engine computed in.
        reference: The engine the verdicts are against.
        engines: The engines compared, in order (the reference among them).
        params: Where the derivatives were taken (NumPy, in ``dtype``), by parameter path
            (``"w"``; ``"layers[0].w"`` for nested parameters), in the caller's order.
        values: Each engine's result, as NumPy arrays: the gradient (or H·v) by parameter
            path
            name, or for a Hessian one ``"hessian"`` matrix over the flattened parameters.
        losses: Each engine's loss at ``params`` (gradient reports only).
        rho: ``rho[i, j]`` is the largest rho between engines i and j over every element.
        worst: ``worst[a][b]``: the element where rho between engines a and b peaks.
        tolerances: ``tolerances[i, j]``: the largest rho allowed between engines i and j.
        verdicts: Each engine against the reference.
        outlier: The engine that disagrees with every other while those agree among
            themselves (needs at least three implementations), or ``None``. Engines that
            run the same implementation are one voice (see ``implementations``): the
            outlier is then the first engine of the implementation that stands alone.
        rho_float64: In float32 reports, each engine's largest rho against the reference
            computed in float64 at the same point: float32 round-off, for information (the
            verdicts compare float32 with float32). Empty in float64.
        skipped: Engines left out, with the reason (not installed, no hand derivative...).
        provenance: Versions, machine, dtype, time, and ``"engines"``: each engine's device,
            threads and precision mode.
        atol: The absolute tolerance pairs were judged with, or ``None`` (judged in rho).
        rtol: The relative tolerance pairs were judged with, or ``None`` (judged in rho).
        outputs: For Jacobians, the function's output shapes by path (``""`` for a single
            array); ``values[engine]["jacobian"]`` is then one (outputs, parameters) matrix,
            both flattened in order.
        tangent: For Hessian-vector products, the vector, by parameter path; else ``None``.
        data_digest: A fingerprint of the data (names, dtypes, shapes and bytes), so that
            [`against`][gradlab.GradientReport.against] can tell a baseline taken on other
            data from a changed derivative; ``None`` if unknown.
        implementations: Which code each engine ran, where engines share some: for a
            [`NativeProblem`][gradlab.NativeProblem], ``"torch implementation"`` for
            ``torch``, ``torch-func`` and ``torch-compile`` alike, ``"hand derivation"``
            for ``numpy``. Empty where every engine is its own voice (a problem written
            once against ``xp``, which each engine differentiates its own way).
        notes: How an engine computed its result where that is not its usual way, by
            engine: ``"HVP by reverse-over-reverse (forward mode unsupported by
            grid_sampler_2d)"`` where the loss has an operation without a forward-mode
            derivative. Printed under the table; empty when every engine ran as usual.
    """

    problem: str
    derivative: Derivative
    dtype: str
    reference: str
    engines: tuple[str, ...]
    params: dict[str, np.ndarray]
    values: dict[str, dict[str, np.ndarray]]
    losses: dict[str, float]
    rho: np.ndarray
    worst: dict[str, dict[str, str | None]]
    tolerances: np.ndarray
    verdicts: dict[str, Verdict]
    outlier: str | None
    rho_float64: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    atol: float | None = None
    rtol: float | None = None
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tangent: dict[str, np.ndarray] | None = None
    data_digest: str | None = None
    implementations: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def criterion(self) -> Criterion:
        """How pairs were judged: in rho, or with ``atol``/``rtol``."""
        return Criterion(atol=self.atol, rtol=self.rtol)

    @property
    def quantity(self) -> str:
        """What was compared, in words: "gradients", "Hessians", "Hessian-vector products"."""
        return KINDS[self.derivative].quantity

    @property
    def ok(self) -> bool:
        """Whether every engine agrees with the reference and none is an outlier."""
        return not self.disagreeing

    @property
    def disagreeing(self) -> tuple[str, ...]:
        """The engines to blame: those beyond tolerance of the reference, or the outlier (with
        every engine that ran its implementation); every engine where two implementations,
        each run by several engines, disagree (either may be wrong)."""
        if self.outlier is not None:
            return self._sharing(self.outlier)
        beyond = tuple(name for name, verdict in self.verdicts.items() if not verdict.agrees)
        voices = set(map(self._voice, self.engines))
        if beyond and len(self.engines) > 2 and len(voices) == 2:
            # Two implementations that disagree: the reference's side is no less suspect.
            return self.engines
        return beyond

    def _voice(self, engine: str) -> str:
        """The implementation ``engine`` ran (itself, where engines share none)."""
        return self.implementations.get(engine, engine)

    def _sharing(self, engine: str) -> tuple[str, ...]:
        """The engines that ran ``engine``'s implementation, ``engine`` among them."""
        return tuple(name for name in self.engines if self._voice(name) == self._voice(engine))

    def raise_if_disagree(self) -> None:
        """Raise [`Disagreement`][gradlab.Disagreement] (an ``AssertionError``) unless ``ok``.

        Examples:
            >>> import gradlab
            >>> problem = gradlab.Quadratic()
            >>> report = gradlab.compare_gradients(problem, problem.make_data(20),
            ...     {"w": 1.0, "b": 0.5}, engines=["numpy", "fd"])
            >>> report.raise_if_disagree()  # silent: they agree
        """
        __tracebackhide__ = True  # pytest shows the caller's line, not gradlab's
        if not self.ok:
            raise Disagreement(f"{self.summary()}\n\n{self}", self)

    def summary(self) -> str:
        """One sentence: do they agree, and if not, who is to blame."""
        what = self.quantity
        voices = list(dict.fromkeys(map(self._voice, self.engines)))
        if self.outlier is not None:
            alone = self._sharing(self.outlier)
            others = [name for name in self.engines if name not in alone]
            blame = " (the reference)" if self.reference in alone else ""
            if len(alone) == 1:
                return (
                    f"{self.outlier}{blame} disagrees with every other engine, and "
                    f"{', '.join(others)} agree with each other: suspect {self.outlier}."
                )
            voice = self._voice(self.outlier)
            return (
                f"{_and(alone)}{blame} (one voice: they ran the same {voice}) disagree with "
                f"every other implementation, and {', '.join(others)} agree with each other: "
                f"suspect the {voice}."
            )
        if len(self.engines) == 1:
            return f"Only {self.reference} ran: there was nothing to compare its {what} with."
        if self.ok:
            return f"All {len(self.engines)} engines' {what} agree within tolerance."
        if len(self.engines) == 2:
            # Either may be the wrong one (fd, the approximate one, is often right).
            return (
                f"{self.engines[0]} and {self.engines[1]} disagree beyond tolerance; with two "
                "engines gradlab cannot tell which is wrong: add a third engine to find out."
            )
        if len(voices) == 2:
            # Engines that run one implementation outvote nothing: they share its bugs.
            groups = "; ".join(
                f"{_and([n for n in self.engines if self._voice(n) == voice])} ran the {voice}"
                for voice in voices
            )
            return (
                f"Disagreement beyond tolerance between two implementations ({groups}); "
                "engines that run one implementation are one voice, so gradlab cannot tell "
                "which is wrong: add a third implementation (a numpy one, with the fd engine) "
                "to find out."
            )
        return (
            f"Disagreement beyond tolerance with the reference {self.reference}: "
            f"{', '.join(self.disagreeing)}."
        )

    def largest_differences(
        self, engine: str, count: int = 5
    ) -> list[tuple[str, float, float, float]]:
        """The elements where ``engine`` is farthest from the reference, farthest first.

        Returns:
            Up to ``count`` tuples ``(element, reference's value, engine's value, rho)``,
            the element named by path (``"layers[0].w[3, 1]"``).

        Raises:
            ArgumentError: ``engine`` is not in the report, or ``count`` is not a positive
                integer.
        """
        if engine not in self.values:
            raise ArgumentError("engine", f"{engine!r} is not in this report: {self.engines}")
        count = check_positive_int(count, "count")
        label = KINDS[self.derivative].label(self.params, self.outputs)
        return differences(
            self.values[self.reference], self.values[engine], label, count, self.criterion
        )

    def __repr__(self) -> str:
        """One line with the verdict and, when engines disagree, the numbers where they part
        (``assert report.ok, report`` shows it; ``str(report)`` is the whole table)."""
        # pytest cuts an assertion's message at 240 characters: the numbers come first.
        head = f"GradientReport({self.problem!r}, {self.derivative}, {self.dtype}: "
        if self.ok:
            return head + f"{', '.join(self.engines)} agree)"
        name = self.disagreeing[0]
        if name == self.reference:  # the reference is the outlier: show it against another
            name = next(other for other in self.engines if other != self.reference)
        element, expected, value, rho_ = self.largest_differences(name, 1)[0]
        limit = f"rho {rho_:.1e} > {self._tolerance(name)}"
        if not self.criterion.in_rho:
            limit = f"beyond {self._tolerance(name)} (rho {rho_:.1e})"
        return head + (
            f"{name} and {self.reference} differ most at {element}: {value:.10g} vs "
            f"{expected:.10g}, {limit}; print(report) for the table)"
        )

    def _tolerance(self, engine: str) -> str:
        """What ``engine`` was judged with against the reference, for tables."""
        if self.criterion.in_rho:
            return f"{self.verdicts[engine].tolerance:.0e}"
        return self.criterion.describe()

    @property
    def losses_differ(self) -> str | None:
        """Where two implementations' losses differ beyond the pair's tolerance, a sentence
        that says so (their forward passes differ: [`locate`][gradlab.locate] finds where);
        else ``None``. Only for problems whose engines run different code (a
        [`NativeProblem`][gradlab.NativeProblem])."""
        if not self.implementations or not self.losses:
            return None
        voices: dict[str, str] = {}
        for name in self.engines:
            if name in self.losses:
                voices.setdefault(self._voice(name), name)
        first, *others = voices.values()
        for other in others:
            i, j = self.engines.index(first), self.engines.index(other)
            gap = float(np.max(rho(self.losses[first], self.losses[other])))
            if gap > self.tolerances[i, j]:
                return (
                    f"The implementations' losses differ ({first} {self.losses[first]:.12g}, "
                    f"{other} {self.losses[other]:.12g}; rho {gap:.1e}): their forward passes "
                    "differ. gradlab.locate(problem, data, params) finds the first point where "
                    "they part."
                )
        return None

    def __str__(self) -> str:
        at = point(self.params)
        lines = [self.losses_differ] if self.losses_differ else []
        lines += [
            f"{KINDS[self.derivative].title} agreement: {self.problem}, {self.dtype}, at {at}",
            f"reference: {self.reference}; rho = |a − b| / max(1, |a| + |b|), largest over "
            "all elements",
            "",
        ]
        header = ["engine"]
        if self.losses:
            header.append("loss")
        header += [f"rho vs {self.reference}", "worst element", "tolerance", "agrees"]
        if self.rho_float64:
            header.append(f"rho vs float64 {self.reference}")
        rows = []
        for name in self.engines:
            verdict = self.verdicts[name]
            row = [name]
            if self.losses:
                row.append(f"{self.losses[name]:.9g}")
            if name == self.reference:
                row += ["reference", "", "", "—"]
            else:
                row += [
                    _rho_cell(verdict.rho),
                    verdict.worst or "—",
                    self._tolerance(name),
                    "yes" if verdict.agrees else "NO",
                ]
            if self.rho_float64:
                row.append(_rho_cell(self.rho_float64[name]))
            rows.append(row)
        lines.append(_output.table(header, rows))
        lines += [f"note: {name}: {note}" for name, note in self.notes.items()]
        lines += ["", "rho between engines:"]
        matrix = [
            [a] + [_rho_cell(self.rho[i, j], i == j) for j in range(len(self.engines))]
            for i, a in enumerate(self.engines)
        ]
        lines.append(_output.table(["", *self.engines], matrix))
        for name in self.engines:
            verdict = self.verdicts[name]
            if name == self.reference or verdict.agrees:
                continue
            lines += [
                "",
                f"Largest differences, {name} against {self.reference} (tolerance "
                f"{self._tolerance(name)}):",
            ]
            rows = [
                [element, f"{expected:.12g}", f"{value:.12g}", _rho_cell(rho_)]
                for element, expected, value, rho_ in self.largest_differences(name)
            ]
            lines.append(_output.table(["element", self.reference, name, "rho"], rows))
        lines += ["", self.summary()]
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record of everything in the report (arrays as lists);
        [`from_dict`][gradlab.GradientReport.from_dict] rebuilds the report from it."""
        return _output.stamp(
            self,
            {
                "problem": self.problem,
                "derivative": self.derivative,
                "dtype": self.dtype,
                "reference": self.reference,
                "engines": list(self.engines),
                "ok": self.ok,
                "summary": self.summary(),
                "outlier": self.outlier,
                "atol": self.atol,
                "rtol": self.rtol,
                "params": self.params,
                "tangent": self.tangent,
                "outputs": {path: list(shape) for path, shape in self.outputs.items()},
                "data_digest": self.data_digest,
                "implementations": self.implementations,
                "notes": self.notes,
                "verdicts": {
                    name: {
                        "rho": v.rho,
                        "worst": v.worst,
                        "tolerance": v.tolerance,
                        "agrees": v.agrees,
                    }
                    for name, v in self.verdicts.items()
                },
                "rho": _output.pairs(self.rho, self.engines),
                "tolerances": _output.pairs(self.tolerances, self.engines),
                "worst": self.worst,
                "losses": self.losses,
                "rho_float64": self.rho_float64,
                "values": self.values,
                "skipped": self.skipped,
                "provenance": self.provenance,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> GradientReport:
        """Rebuild a report from [`to_dict`][gradlab.GradientReport.to_dict] (or parsed
        ``to_json``, or ``gradlab compare --json``): every value in its dtype, exactly.

        Raises:
            ArgumentError: ``record`` is not a saved report.
        """
        with _output.reading(cls, record) as saved:
            dtype = check_dtype(saved["dtype"], "record")
            engines = tuple(str(name) for name in saved["engines"])
            judged_close = saved["atol"] is not None
            return cls(
                problem=str(saved["problem"]),
                derivative=_derivative(saved["derivative"]),
                dtype=dtype,
                reference=str(saved["reference"]),
                engines=engines,
                params=_output.arrays(saved["params"], dtype),
                values={name: _output.arrays(saved["values"][name], dtype) for name in engines},
                losses={name: _output.number(v) for name, v in saved["losses"].items()},
                rho=_output.square(saved["rho"], engines, float),
                worst={a: {b: saved["worst"][a][b] for b in engines} for a in engines},
                tolerances=_output.square(saved["tolerances"], engines, float),
                verdicts={
                    name: Verdict(
                        name,
                        _output.number(v["rho"]),
                        v["worst"],
                        _output.number(v["tolerance"]),
                        bool(v["agrees"]) if judged_close else None,
                    )
                    for name, v in ((name, saved["verdicts"][name]) for name in engines)
                },
                outlier=saved["outlier"],
                rho_float64={k: _output.number(v) for k, v in saved["rho_float64"].items()},
                skipped=dict(saved["skipped"]),
                provenance=dict(saved["provenance"]),
                atol=_output.maybe(saved["atol"]),
                rtol=_output.maybe(saved["rtol"]),
                outputs={path: tuple(map(int, shape)) for path, shape in saved["outputs"].items()},
                tangent=_output.maybe(saved["tangent"], lambda t: _output.arrays(t, dtype)),
                data_digest=saved["data_digest"],
                implementations=dict(saved.get("implementations", {})),
                notes={str(k): str(v) for k, v in saved.get("notes", {}).items()},
            )

    def against(self, baseline: GradientReport | str | os.PathLike[str]) -> BaselineComparison:
        """Whether each engine's derivative changed since ``baseline``, a report of the same
        problem, data and point saved earlier (a regression test across framework upgrades).

        Each engine in both is judged against its own earlier values with this report's
        criterion: its tolerance against itself (1e-9 in float64 for exact engines), or the
        ``tolerance``/``atol``/``rtol`` this report was made with. See
        [`BaselineComparison`][gradlab.BaselineComparison].

        Args:
            baseline: The earlier report, or the path of its JSON (``save``, ``--json``).

        Raises:
            ArgumentError: ``baseline`` is not a saved report, or is of another problem,
                derivative, dtype, point or data.

        Examples:
            >>> import gradlab
            >>> problem = gradlab.Quadratic()
            >>> data, point = problem.make_data(20), {"w": 1.0, "b": 0.5}
            >>> before = gradlab.compare_gradients(problem, data, point, engines="numpy,fd")
            >>> saved = before.to_json()  # e.g. report.save("baseline.json")
            >>> now = gradlab.compare_gradients(problem, data, point, engines="numpy,fd")
            >>> now.against(gradlab.GradientReport.from_json(saved)).ok
            True
        """
        label = KINDS[self.derivative].label(self.params, self.outputs)
        return gradients_against(self, baseline, label)

    def to_frame(self) -> Any:
        """One row per engine: loss, verdict against the reference, rho against each engine,
        and (where any engine has one) its note.

        Needs pandas (an optional dependency).
        """
        pandas = _output.optional("pandas", "GradientReport.to_frame", None)
        rows = []
        for i, name in enumerate(self.engines):
            verdict = self.verdicts[name]
            row: dict[str, Any] = {"engine": name}
            if self.losses:
                row["loss"] = self.losses[name]
            row.update(
                rho=verdict.rho,
                worst=verdict.worst,
                tolerance=verdict.tolerance,
                agrees=verdict.agrees,
            )
            row.update(
                {f"rho_{other}": float(self.rho[i, j]) for j, other in enumerate(self.engines)}
            )
            if self.notes:
                row["note"] = self.notes.get(name, "")
            rows.append(row)
        return pandas.DataFrame(rows).set_index("engine")

    def plot(self, path: str | None = None) -> Any:
        """The pairwise rho as a heatmap (a matplotlib Figure), saved to ``path`` if given."""
        from gradlab import plots

        figure = plots.agreement_figure(self)
        if path is not None:
            _output.save_figure(figure, path)
        return figure


def _derivative(name: object) -> Derivative:
    """A saved report's derivative, checked."""
    if not isinstance(name, str) or name not in KINDS:
        raise ValueError(f"unknown derivative {name!r}")
    return KINDS[name].name


def _and(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def _rho_cell(value: float, diagonal: bool = False) -> str:
    return "—" if diagonal else "0" if value == 0 else f"{value:.1e}"
