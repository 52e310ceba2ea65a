"""Do the engines agree? Every engine's derivative at one point, compared pairwise."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gradlab import _output
from gradlab._agreement import Criterion, Label, criterion, differences, joined, tolerance
from gradlab._boundary import evaluate, on_engine, prepare
from gradlab._checks import check_dtype, check_positive_int
from gradlab._errors import (
    ArgumentError,
    ArgumentTypeError,
    Disagreement,
    EngineUnavailable,
    HandGradientMissing,
    NotSupported,
    UnknownEngine,
    naming,
)
from gradlab._flat import FlatView
from gradlab._output import point
from gradlab._progress import progress_bar
from gradlab._provenance import common_provenance
from gradlab._second import check_tangent, hessian_blocks, hessian_matrix, hvp_at
from gradlab._tree import element, structure
from gradlab.comparison._baseline import BaselineComparison, gradients_against
from gradlab.engines._protocol import (
    GradientEngine,
    hvp_of,
    is_approximate,
    jacobian_of,
    per_example_of,
    value_and_grad_of,
)
from gradlab.engines._registry import engine_list, get_engine
from gradlab.problems._base import AbstractProblem
from gradlab.problems._native import NativeProblem, framework_of

Derivative = Literal["gradient", "hessian", "hvp", "jacobian", "per-example"]
_QUANTITIES = {
    "gradient": "gradients",
    "hessian": "Hessians",
    "hvp": "Hessian-vector products",
    "jacobian": "Jacobians",
    "per-example": "per-example gradients",
}
Engines = str | Sequence["str | GradientEngine"] | None


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

    @property
    def criterion(self) -> Criterion:
        """How pairs were judged: in rho, or with ``atol``/``rtol``."""
        return Criterion(atol=self.atol, rtol=self.rtol)

    @property
    def quantity(self) -> str:
        """What was compared, in words: "gradients", "Hessians", "Hessian-vector products"."""
        return _QUANTITIES[self.derivative]

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
        label = labeler(self.derivative, self.params, self.outputs)
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

    def __str__(self) -> str:
        label = {
            "gradient": "Gradient",
            "hessian": "Hessian",
            "hvp": "Hessian-vector product",
            "jacobian": "Jacobian",
            "per-example": "Per-example gradient",
        }
        at = point(self.params)
        lines = [
            f"{label[self.derivative]} agreement: {self.problem}, {self.dtype}, at {at}",
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
        label = labeler(self.derivative, self.params, self.outputs)
        return gradients_against(self, baseline, label)

    def to_frame(self) -> Any:
        """One row per engine: loss, verdict against the reference, and rho against each engine.

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
            rows.append(row)
        return pandas.DataFrame(rows).set_index("engine")

    def plot(self, path: str | None = None) -> Any:
        """The pairwise rho as a heatmap (a matplotlib Figure), saved to ``path`` if given."""
        from gradlab import plots

        figure = plots.agreement_figure(self)
        if path is not None:
            _output.save_figure(figure, path)
        return figure


def compare_gradients(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's gradient at ``params``, compared pairwise and against a reference.

    Args:
        problem: The problem.
        data: Its data (copied, never modified).
        params: Where to take the gradient (copied, never modified).
        engines: Engine names or objects (or one comma-separated string). Default: every
            known engine, skipping with a note those not installed or unable to run this
            problem. An engine named explicitly that cannot run is an error.
        dtype: ``"float32"`` or ``"float64"``: every engine computes in it.
        reference: The engine the verdicts are against. Default ``"numpy"`` (the hand
            derivation) when the problem has one, else ``"fd"``, added to ``engines`` if
            absent; where that default cannot run the problem, the first engine that can.
        tolerance: One largest rho for every pair, instead of gradlab's table
            ([`tolerance`][gradlab.tolerance]: exact pairs 1e-9 in float64 and 1e-4 in float32;
            pairs with an approximate engine such as fd 1e-6 and 1e-4).
        atol: Judge pairs instead in the familiar form, element by element:
            |a − b| ≤ atol + rtol·max(|a|, |b|) (symmetric, unlike ``numpy.isclose``).
            ``atol = rtol = τ`` is within a factor 2 of ``tolerance = τ``: it accepts all
            that rho ≤ τ/2 accepts, and rho ≤ 2τ accepts all it accepts. Either alone means
            the other is 0; not with ``tolerance``.
        rtol: See ``atol``.
        progress: Show a progress bar (needs tqdm) while engines run.

    Returns:
        A [`GradientReport`][gradlab.GradientReport]: ``str()`` it, assert on ``.ok``, or
        ``raise_if_disagree()``.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.Quadratic()
        >>> report = gradlab.compare_gradients(problem, problem.make_data(50),
        ...                                    {"w": 0.5, "b": -1.0}, engines="numpy,fd")
        >>> report.ok, report.reference, report.verdicts["fd"].rho < 1e-9
        (True, 'numpy', True)
    """
    setup = _arguments(
        problem, data, params, engines, dtype, reference, tolerance, atol, rtol, progress
    )

    def compute(engine: GradientEngine, dtype: str) -> tuple[dict[str, np.ndarray], float]:
        loss, grads = evaluate(engine, setup.problem, setup.data, setup.params, dtype)
        return grads, float(loss)

    return _report(setup, "gradient", compute)


def compare_hessians(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    tangent: Any = None,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's second derivatives at ``params``: the full Hessian, or H·``tangent``.

    Like [`compare_gradients`][gradlab.compare_gradients], with the same tolerance table and
    overrides (``tolerance``, ``atol``, ``rtol``). Without
    ``tangent`` each engine builds the full Hessian (one Hessian-vector product per parameter
    element, so for small problems); with it, each computes the Hessian-vector product H·tangent.
    Engines without second derivatives are skipped with a note. The default reference is ``"numpy"``
    when the problem has a hand-derived Hessian-vector product, else ``"fd"`` (where that cannot
    run the problem, the first engine that can).

    Examples:
        >>> import gradlab
        >>> problem = gradlab.LinearRegression()
        >>> data = problem.make_data(30, d=2)
        >>> report = gradlab.compare_hessians(problem, data, {"w": [1.0, -1.0], "b": 0.0},
        ...                                   engines=["numpy", "fd"])
        >>> report.ok, report.values["numpy"]["hessian"].shape
        (True, (3, 3))
    """
    setup = _arguments(
        problem, data, params, engines, dtype, reference, tolerance, atol, rtol, progress
    )
    checked_tangent = (
        None if tangent is None else check_tangent(tangent, setup.params, structure(params))
    )

    def compute(engine: GradientEngine, dtype: str) -> tuple[dict[str, np.ndarray], float | None]:
        if checked_tangent is None:
            blocks = hessian_blocks(engine, setup.problem, setup.data, setup.params, dtype)
            return {"hessian": hessian_matrix(blocks, setup.params)}, None
        batch = on_engine(engine, setup.data, dtype)
        product = hvp_of(engine, setup.problem)
        return hvp_at(
            engine, setup.problem, product, batch, setup.params, checked_tangent, dtype
        ), None

    derivative: Derivative = "hessian" if checked_tangent is None else "hvp"
    return _report(setup, derivative, compute, tangent=checked_tangent)


@dataclass(frozen=True)
class Setup:
    """What every comparison checked before computing anything: the engines, the problem as
    engines see it (flat), copies of data and parameters by path, and how to judge."""

    engines: list[str | GradientEngine]
    default: bool
    reference: str | GradientEngine | None
    dtype: str
    problem: AbstractProblem
    data: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    judge: Criterion
    progress: bool


def _arguments(
    problem: object,
    data: object,
    params: object,
    engines: Engines,
    dtype: object,
    reference: str | GradientEngine | None,
    tolerance: object,
    atol: object,
    rtol: object,
    progress: bool,
    output: str = "scalar",
) -> Setup:
    """Check what every comparison shares, in one place."""
    _, checked_dtype, flat, checked_data, checked_params, _ = prepare(
        problem, data, params, "numpy", dtype, "params", output
    )
    judge = criterion(tolerance, atol, rtol)
    wanted, default = engine_list(engines)
    return Setup(
        wanted,
        default,
        reference,
        checked_dtype,
        flat,
        checked_data,
        checked_params,
        judge,
        progress,
    )


def _derivative(name: object) -> Derivative:
    """A saved report's derivative, checked."""
    if name not in _QUANTITIES:
        raise ValueError(f"unknown derivative {name!r}")
    return name  # type: ignore[return-value]


def default_reference(
    reference: str | GradientEngine | None, has_hand: bool
) -> str | GradientEngine:
    """The reference asked for, or the hand derivation when there is one, else fd."""
    if reference is None:
        return "numpy" if has_hand else "fd"
    if not isinstance(reference, str) and not isinstance(reference, GradientEngine):
        raise ArgumentTypeError(
            "reference", f"must be an engine name or a GradientEngine, got {reference!r}"
        )
    return reference


def resolve_engines(
    engines: list[str | GradientEngine],
    default: bool,
    reference: str | GradientEngine | None,
    can_run: Callable[[GradientEngine], object],
    has_hand: bool,
) -> tuple[dict[str, GradientEngine], dict[str, str]]:
    """Build the engines, the reference first among them; skip the unusable defaults.

    ``can_run(engine)`` raises (``HandGradientMissing``, ``NotSupported``) when the engine
    cannot do the job. For the default list that skips the engine with a note; for an engine
    the caller named, and for a reference the caller named, it is an error.

    Without a ``reference``, the hand derivation (``numpy``) is the reference where the
    problem has one, else ``fd``. Where that one cannot run (``fd`` on a
    [`NativeProblem`][gradlab.NativeProblem] without a NumPy implementation, an optax
    optimizer), it is skipped with its note, and the first engine that can run is the
    reference. When none can, a ``NotSupported`` (naming ``engines``) gives every reason.
    """
    chosen = default_reference(reference, has_hand)
    ref_name = chosen if isinstance(chosen, str) else chosen.name
    names = [item if isinstance(item, str) else item.name for item in engines]
    wanted: list[tuple[str | GradientEngine, bool]] = [(item, not default) for item in engines]
    named = ref_name in names and not default
    if ref_name in names:
        wanted.pop(names.index(ref_name))
    wanted.insert(0, (chosen, reference is not None or named))
    built: dict[str, GradientEngine] = {}
    skipped: dict[str, str] = {}
    for position, (item, required) in enumerate(wanted):
        argument = "reference" if reference is not None and position == 0 else "engines"
        try:
            with naming(argument):
                engine = _built(item, argument)
                can_run(engine)
        except (EngineUnavailable, HandGradientMissing, NotSupported) as error:
            if required:
                raise
            skipped[item if isinstance(item, str) else item.name] = str(error)
            continue
        built[engine.name] = engine
    if not built:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        refusal = NotSupported(f"no engine can run this: {reasons}")
        refusal.argument = "engines"
        raise refusal
    return built, skipped


def _built(item: str | GradientEngine, argument: str) -> GradientEngine:
    """``get_engine(item)``, an unknown name blamed on ``argument``."""
    try:
        return get_engine(item)
    except UnknownEngine as error:
        raise UnknownEngine(error.name, error.known, error.suggestion, argument) from None


def _report(
    setup: Setup,
    derivative: Derivative,
    compute: Callable[[GradientEngine, str], tuple[dict[str, np.ndarray], float | None]],
    outputs: dict[str, tuple[int, ...]] | None = None,
    tangent: dict[str, np.ndarray] | None = None,
) -> GradientReport:
    """The report of one derivative on every engine: ``compute(engine, dtype)`` gives an
    engine's values (and loss); ``outputs`` (Jacobians) is filled in by ``compute``."""
    problem, dtype, params, judge = setup.problem, setup.dtype, setup.params, setup.judge

    def can_run(engine: GradientEngine) -> object:
        return _NEEDS[derivative](engine, problem)

    has_hand = {
        "gradient": problem.has_hand_gradient,
        "per-example": problem.has_hand_gradient,
        "jacobian": problem.has_hand_jacobian or problem.has_hand_gradient,
    }.get(derivative, problem.has_hand_hvp)
    built, skipped = resolve_engines(
        setup.engines, setup.default, setup.reference, can_run, has_hand
    )
    values: dict[str, dict[str, np.ndarray]] = {}
    losses: dict[str, float] = {}
    with progress_bar(len(built), f"{derivative}s", setup.progress) as advance:
        for position, (name, engine) in enumerate(built.items()):
            # What an engine finds it cannot do only once it runs (the complex step meeting
            # xp.max) is blamed on the argument that chose it, as in resolve_engines.
            chosen = "reference" if setup.reference is not None and position == 0 else "engines"
            with naming(chosen):
                values[name], loss = compute(engine, dtype)
            if loss is not None:
                losses[name] = loss
            advance(name)

    names = tuple(built)
    implementations = implementations_of(built, problem)
    outputs = outputs or {}
    label = labeler(derivative, params, outputs)
    size = len(names)
    matrix = np.zeros((size, size))
    limits = pair_tolerances(built, dtype, judge.tolerance)
    worst: dict[str, dict[str, str | None]] = {name: {} for name in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if j < i:
                matrix[i, j], worst[a][b] = matrix[j, i], worst[b][a]
            elif j > i:
                matrix[i, j], worst[a][b] = _largest_rho(values[a], values[b], label)
            else:
                worst[a][b] = None
    ref_name = names[0]
    against_float64 = {}
    if dtype == "float32":
        # How far float32 round-off takes each engine from the reference's float64 values at
        # the same (float32-representable) point: engines can agree with one another and
        # still all be off the truth by the same rounding.
        truth, _ = compute(built[ref_name], "float64")
        against_float64 = {name: _largest_rho(truth, values[name], label)[0] for name in names}
    agree = matrix <= limits
    if not judge.in_rho:
        agree = np.array(
            [[judge.close(*joined(values[a], values[b])) for b in names] for a in names]
        )
    verdicts = {
        name: Verdict(
            name,
            float(matrix[i, 0]),
            worst[name][ref_name],
            float(limits[i, 0]),
            None if judge.in_rho else bool(agree[i, 0]),
        )
        for i, name in enumerate(names)
    }
    facts = {name: engine.describe() for name, engine in built.items()}
    return GradientReport(
        problem=problem.name,
        derivative=derivative,
        dtype=dtype,
        reference=ref_name,
        engines=names,
        params={name: value.astype(dtype) for name, value in params.items()},
        values=values,
        losses=losses,
        rho=matrix,
        worst=worst,
        tolerances=limits,
        verdicts=verdicts,
        outlier=outlier(names, agree, implementations),
        rho_float64=against_float64,
        skipped=skipped,
        provenance={**common_provenance(dtype), "engines": facts},
        atol=judge.atol,
        rtol=judge.rtol,
        outputs=outputs,
        tangent=None if tangent is None else {k: v.astype(dtype) for k, v in tangent.items()},
        data_digest=_output.digest(setup.data),
        implementations=implementations,
    )


#: What an engine must offer for each derivative (raising ``NotSupported`` if it cannot).
_NEEDS: dict[str, Callable[[GradientEngine, AbstractProblem], object]] = {
    "gradient": value_and_grad_of,
    "hessian": hvp_of,
    "hvp": hvp_of,
    "jacobian": jacobian_of,
    "per-example": per_example_of,
}


def pair_tolerances(
    engines: Mapping[str, GradientEngine], dtype: str, custom: float | None = None
) -> np.ndarray:
    """The largest rho allowed between each pair of engines: ``custom``, or gradlab's table.

    A pair with an engine that approximates derivatives (fd, or any engine declaring
    ``approximate = True``) gets the finite-difference tolerance.
    """
    approximate = [is_approximate(engine) for engine in engines.values()]
    return np.array(
        [
            [
                custom if custom is not None else tolerance(dtype, against_fd=left or right)
                for right in approximate
            ]
            for left in approximate
        ]
    )


def element_labels(params: Mapping[str, np.ndarray]) -> list[str]:
    """``"w[0]"``, ``"w[1]"``, ``"b"``: one label per parameter element, in flattening order."""
    return [
        element(name, index) for name, value in params.items() for index in np.ndindex(value.shape)
    ]


def _largest_rho(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], label: Label
) -> tuple[float, str | None]:
    """The largest rho over every element of two results, and the element where it peaks
    (``None`` when they are equal everywhere)."""
    top = differences(a, b, label, 1)
    if not top or top[0][3] == 0:
        return 0.0, None
    return top[0][3], top[0][0]


def labeler(
    derivative: str, params: Mapping[str, np.ndarray], outputs: Mapping[str, tuple[int, ...]]
) -> Label:
    """How a report names the element at ``index`` of its value ``name``: ``w[1]``; a
    Hessian's ``∂²/∂w[0]∂b``; a Jacobian's ``∂f[2]/∂w[0]``; a per-example gradient's
    ``w[0] of row 3``."""
    wrt = element_labels(params)
    of = element_labels({path or "f": np.zeros(shape) for path, shape in outputs.items()})

    def label(name: str, index: tuple[int, ...]) -> str:
        if derivative == "hessian":  # a flattened (P, P) matrix: name both elements
            return f"∂²/∂{wrt[index[0]]}∂{wrt[index[1]]}"
        if derivative == "jacobian":  # a flattened (M, P) matrix
            return f"∂{of[index[0]]}/∂{wrt[index[1]]}"
        if derivative == "per-example":
            return f"{element(name, index[1:])} of row {index[0]}"
        return element(name, index)

    return label


def outlier(
    names: tuple[str, ...], agree: np.ndarray, implementations: Mapping[str, str] | None = None
) -> str | None:
    """The one engine that disagrees with all others while they all agree among themselves.

    Engines that ran one implementation (``implementations``, engine to implementation)
    are one voice: two torch engines agreeing on a NativeProblem's torch code do not outvote
    its jax code, since they share any bug in it. It takes three voices to name an outlier;
    the outlier returned is the first engine of the implementation that stands alone.
    """
    voice = {name: (implementations or {}).get(name, name) for name in names}
    voices = list(dict.fromkeys(voice.values()))
    if len(voices) < 3:
        return None
    for alone in voices:
        mine = [i for i, name in enumerate(names) if voice[name] == alone]
        others = [j for j in range(len(names)) if j not in mine]
        if (
            not any(agree[i, j] for i in mine for j in others)
            and all(agree[j, k] for j in others for k in others)
            and all(agree[i, k] for i in mine for k in mine)
        ):
            return names[mine[0]]
    return None


def implementations_of(
    engines: Mapping[str, GradientEngine], problem: AbstractProblem
) -> dict[str, str]:
    """Which code of ``problem`` each engine ran, for a problem whose engines share some:
    a [`NativeProblem`][gradlab.NativeProblem]'s implementation for the engine's framework,
    or its hand derivation for an engine that runs that. Empty for a problem written once
    against ``xp``: each engine differentiates that one definition its own way, and is its
    own voice."""
    native = problem.problem if isinstance(problem, FlatView) else problem
    if not isinstance(native, NativeProblem):
        return {}
    return {
        name: "hand derivation"
        if getattr(engine, "runs_hand", False)
        else f"{framework_of(engine.xp)} implementation"
        for name, engine in engines.items()
    }


def _and(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def _rho_cell(value: float, diagonal: bool = False) -> str:
    return "—" if diagonal else "0" if value == 0 else f"{value:.1e}"
