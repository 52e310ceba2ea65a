"""Where implementations part: the report ``locate`` makes, and the bounds that judge it."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from gradlab import _output
from gradlab._agreement import rho
from gradlab._checks import as_float_array, check_dtype
from gradlab._errors import Disagreement
from gradlab._tree import flatten
from gradlab.comparison._baseline import BaselineComparison, points_against
from gradlab.engines._protocol import GradientEngine

#: How much further apart two correct implementations may be than round-off-sized moves of
#: the parameters move either one. Measured on fault-free ports (torch against jax: an MLP,
#: a CNN, a pre-layernorm transformer block and an LSTM, 10 seeds each, float32 and float64,
#: ``benchmarks/locate_faults.py``): the rho between the ports was at most 0.8 times the
#: larger spread at every point, forward, backward and in every gradient (0 false alarms in
#: 80 reports); 8 leaves a factor 10 for longer reductions and other orders of summation.
SAFETY = 8.0
#: Below this rho (in units of the dtype's machine epsilon) two values are the same to the
#: last few bits, whatever the point: a few operations' round-off (where the spread is
#: smaller still, as at a bias's gradient, a sum of a few rows: observed up to 12 ulps).
FLOOR_ULPS = 32.0
#: How far, in parameter ulps, ``locate`` moves each parameter to measure the spread.
ULPS = 4
#: How many units of a lower precision's round-off (amplified as the parameters' moves are)
#: a gap it explains may reach: one rounding at the point, a few more downstream.
_RELAXED = 2.0
#: The unit round-off of the precisions a point or a setting may compute in.
_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "tf32": 2.0**-10,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}


@overload
def derived_bound(dtype: str, *spreads: float) -> float: ...


@overload
def derived_bound(dtype: str, *spreads: np.ndarray) -> np.ndarray: ...


def derived_bound(dtype: str, *spreads: float | np.ndarray) -> float | np.ndarray:
    """The largest rho round-off explains at a point: ``SAFETY`` times the larger spread of
    the two implementations there under round-off-sized moves, and never under the floor.

    Spreads may be arrays (one per step of a fit's path, say): the bound is then computed
    elementwise, an array of their broadcast shape.
    """
    floor = FLOOR_ULPS * _EPS[dtype]
    if not spreads:
        return floor
    bound = np.maximum(floor, SAFETY * functools.reduce(np.maximum, spreads))
    return float(bound) if np.ndim(bound) == 0 else np.asarray(bound)


def _moved(value: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    """``value`` with each element moved by ``ULPS`` units of round-off ``eps``, relative,
    each with a random sign (a new array: ``value`` is never written)."""
    return np.asarray(value * (1.0 + ULPS * eps * rng.choice([-1.0, 1.0], size=np.shape(value))))


def moved_params(
    params: Mapping[str, np.ndarray], dtype: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """``params`` with every element moved by ``ULPS`` units of ``dtype``'s round-off,
    relative, each with a random sign: round-off-sized moves, to measure how far a
    computation carries them (its spread)."""
    rng = np.random.default_rng(seed)
    eps = float(np.finfo(dtype).eps)
    return {name: _moved(value, eps, rng) for name, value in params.items()}


def moved_data(data: Any, dtype: str, seed: int = 0) -> Any:
    """``data`` (a nest, as a problem takes it) with the elements of every array of
    fractional numbers moved as [`moved_params`][gradlab.comparison._divergence.moved_params]
    moves parameters; integer arrays and arrays of whole numbers (labels, one-hot rows,
    counts, indices) kept as they are, so that no label stops being one. The caller's
    arrays are never written: the moved ones are new.

    A fit on moved data computes, at every step, gradients that differ from the original
    ones by round-off: how far the path carries differences injected all along, where a
    moved start shows only how far it carries one at the start. The moves are drawn from
    another stream than ``moved_params``'s of the same seed.
    """
    flat, layout = flatten(data)
    rng = np.random.default_rng((seed, 1))
    eps = float(np.finfo(dtype).eps)
    moved = {}
    for name, value in flat.items():
        array = as_float_array(value, "data", copy=False)  # integer arrays: whole numbers
        whole = bool(np.all(array == np.round(array)))
        moved[name] = value if whole else _moved(array, eps, rng)
    return layout.unflatten(moved)


def precision_settings(engine: GradientEngine) -> dict[str, Any]:
    """The framework settings that change float32 arithmetic, read without importing a
    framework that is not loaded: torch's float32 matmul precision, TF32 switches and
    autocast, JAX's default matmul precision and XLA flags, TensorFlow's TF32 execution,
    MLX's TF32 variable.

    ``matmul``: the precision float32 matrix products run in on this engine's device as
    set (``"float32"``, ``"tf32"`` or ``"bfloat16"``).
    """
    settings: dict[str, Any] = {"matmul": "float32"}
    device = str(engine.describe().get("device", "cpu"))
    on_gpu = "cuda" in device or "gpu" in device
    name = engine.name
    torch = sys.modules.get("torch")
    if name.startswith("torch") and torch is not None:
        precision = torch.get_float32_matmul_precision()
        settings["torch.float32_matmul_precision"] = precision
        settings["torch.backends.cuda.matmul.allow_tf32"] = bool(
            torch.backends.cuda.matmul.allow_tf32
        )
        if on_gpu and (precision != "highest" or torch.backends.cuda.matmul.allow_tf32):
            settings["matmul"] = "bfloat16" if precision == "medium" else "tf32"
        settings["torch.autocast"] = _autocast(torch)
    jax = sys.modules.get("jax")
    if name.startswith("jax") and jax is not None:
        precision = jax.config.jax_default_matmul_precision
        settings["jax_default_matmul_precision"] = precision
        if on_gpu and precision in (None, "default", "bfloat16", "fastest"):
            settings["matmul"] = "bfloat16" if precision in ("bfloat16", "fastest") else "tf32"
        settings["XLA_FLAGS"] = os.environ.get("XLA_FLAGS")
    tf = sys.modules.get("tensorflow")
    if name.startswith("tensorflow") and tf is not None:
        enabled = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        settings["tensorflow.tensor_float_32_execution"] = enabled
        if on_gpu and enabled:
            settings["matmul"] = "tf32"
    if name.startswith("mlx"):
        settings["MLX_ENABLE_TF32"] = os.environ.get("MLX_ENABLE_TF32")
        if on_gpu and os.environ.get("MLX_ENABLE_TF32", "1") != "0":
            settings["matmul"] = "tf32"
    return settings


def _autocast(torch: Any) -> dict[str, str] | None:
    """torch's autocast where it is on, by device type, with the dtype it casts to (its
    points then show that dtype, which ``locate`` reports as a lower precision)."""
    found = {}
    for device in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(device):
                found[device] = str(torch.get_autocast_dtype(device))
        except (RuntimeError, TypeError, AttributeError):  # an older torch: not readable
            continue
    return found or None


@dataclass(frozen=True)
class PointVerdict:
    """One point, judged: each engine's rho against the reference, forward (the value) and
    backward (d loss / d value), and the bounds round-off explains there.

    Attributes:
        name: The point's name.
        shape: Its shape (the reference's).
        engines: The engines that reached it.
        shapes: Its shape in each of them (a point whose shapes differ is not compared).
        forward: rho of each engine's value against the reference's.
        backward: rho of each engine's cotangent against the reference's.
        forward_bound: The largest forward rho round-off explains here.
        backward_bound: The same backward (``None`` without cotangents).
        referee: In float32, each engine's rho against its own float64 run.
        dtypes: The dtype each engine computed the point in.
        spreads: Per direction, how far round-off-sized moves of the parameters moved
            each engine's values here (rho): what the bounds are derived from.
        summaries: Each engine's values here in four numbers (the sum and the norm of the
            finite elements, forward and backward): what ``against`` compares.
    """

    name: str
    shape: tuple[int, ...]
    engines: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    forward: dict[str, float]
    backward: dict[str, float]
    forward_bound: float
    backward_bound: float | None
    referee: dict[str, float] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    spreads: dict[str, dict[str, float]] = field(default_factory=dict)
    summaries: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def rho(self, direction: str) -> float:
        """The largest rho of any engine against the reference in ``direction``."""
        values = self.forward if direction == "forward" else self.backward
        return max(values.values(), default=0.0)

    def bound(self, direction: str) -> float | None:
        return self.forward_bound if direction == "forward" else self.backward_bound


@dataclass(frozen=True)
class Divergence:
    """Where an engine first parts from the reference.

    Attributes:
        name: The point (or, when only a gradient parts, the parameter).
        direction: ``"forward"`` (the values), ``"backward"`` (the cotangents, in the order
            the backward pass reaches them: the last point first) or ``"gradient"``.
        engine: The engine that parts there.
        rho: Its rho against the reference there.
        bound: The largest rho round-off explains there.
        after: The last point, in the same direction's order, where they still agreed:
            the operations between it and ``name`` made the difference (``None``: none
            before).
        verdict: ``"unexplained"``, or what explains it (``"bfloat16 in jax"``).
        closer: In float32, the engine nearer to its own float64 run at this point.
    """

    name: str
    direction: str
    engine: str
    rho: float
    bound: float
    after: str | None
    verdict: str
    closer: str | None = None

    def describe(self, reference: str) -> str:
        where = f"{self.direction} at {self.name!r}"
        if self.direction == "gradient":
            where = f"in the gradient of {self.name!r} (no tapped point parts)"
        why = self.verdict if self.verdict == "unexplained" else f"explained by {self.verdict}"
        text = (
            f"{self.engine} parts from {reference} {where}: rho {self.rho:.1e} against a "
            f"round-off bound of {self.bound:.1e} ({why})"
        )
        if self.direction != "gradient" and self.verdict == "unexplained":
            if self.after is not None:
                text += (
                    f"; {self.after!r} still agreed, so the operations between them made the "
                    "difference"
                )
            elif self.direction == "backward":
                # The backward pass starts at the loss: nothing agreed before this point.
                text += (
                    "; it is the first point the backward pass reaches, so the operations "
                    "between it and the loss made the difference"
                )
            else:
                text += "; no point before it agreed: the operations before it made the difference"
        if self.closer is not None:
            text += f"; {self.closer} is the nearer to its own float64 run there"
        return text


@dataclass(frozen=True)
class DivergenceReport(_output.Record):
    """Where implementations part: every tapped point in order, forward and backward, each
    judged against the bound round-off explains there. Made by [`locate`][gradlab.locate].

    Attributes:
        problem: The problem's name.
        dtype: The precision every engine computed in.
        reference: The engine the others are judged against.
        engines: The engines observed, the reference first.
        losses: Each engine's loss.
        points: The points, in the order the reference reached them (then any only another
            engine reached).
        gradients: Per parameter path, each engine's gradient rho against the reference and
            the bound: ``{path: ({engine: rho}, bound)}``.
        first: Where an engine first parts from the reference beyond what round-off or a
            precision setting explains (``None``: nowhere). Its ``verdict`` names a lower
            dtype at a point upstream when that one's round-off covers the gap.
        explained: Points where the engines part by more than round-off, explained by a
            precision setting in which they differ (TF32 matrix products in one).
        unmatched: Points some engines reached and others did not, or reached in another
            shape: ``{point: reason}``.
        implementations: Which code each engine ran (a NativeProblem's).
        skipped: Engines of the default set left out, with why.
        params: Where the loss was evaluated, by parameter path.
        provenance: Versions, machine, and each engine's precision settings.
        data_digest: A fingerprint of the data, so that ``against`` refuses a baseline taken
            on other data.
    """

    problem: str
    dtype: str
    reference: str
    engines: tuple[str, ...]
    losses: dict[str, float]
    points: tuple[PointVerdict, ...]
    gradients: dict[str, tuple[dict[str, float], float]]
    first: Divergence | None
    explained: tuple[Divergence, ...]
    unmatched: dict[str, str]
    implementations: dict[str, str]
    skipped: dict[str, str]
    params: Any
    provenance: dict[str, Any]
    data_digest: str | None = None

    @classmethod
    def build(cls, **fields: Any) -> DivergenceReport:
        """A report with ``first``, ``explained`` and ``unmatched`` worked out from the rest."""
        fields.setdefault("first", None)
        fields.setdefault("explained", ())
        fields.setdefault("unmatched", {})
        report = cls(**fields)
        first, explained = report._judge()
        unmatched = report._unmatched()
        return cls(**{**fields, "first": first, "explained": explained, "unmatched": unmatched})

    @property
    def ok(self) -> bool:
        """Whether no engine parts from the reference beyond what round-off or a precision
        setting explains, at one compared point at least (a report whose points all went
        unmatched compared nothing, and is not ok)."""
        return self.first is None and self.compared > 0

    @property
    def compared(self) -> int:
        """How many points were compared: reached by the reference and another engine, in
        the same shape."""
        return sum(bool(point.forward) for point in self.points)

    def _unmatched(self) -> dict[str, str]:
        out = {}
        for tap in self.points:
            missing = [name for name in self.engines if name not in tap.engines]
            if missing:
                out[tap.name] = f"not reached by {', '.join(missing)}"
            elif len(set(tap.shapes.values())) > 1:
                shapes = ", ".join(f"{name} {shape}" for name, shape in tap.shapes.items())
                out[tap.name] = f"shapes differ: {shapes}"
        return out

    def _judge(self) -> tuple[Divergence | None, tuple[Divergence, ...]]:
        """The first point beyond round-off that no precision setting explains, and the
        points a setting explains (a TF32 mode in one engine: expected, not a fault).

        A point one engine computes in a lower dtype than the run's (a bfloat16 product in a
        float32 port, a float32 cast in a float64 one) is different code, so it is reported
        as where they part, with that dtype as the verdict when its round-off covers the gap:
        from it on (later points, every cotangent and gradient, which read the forward
        values) its round-off is carried.
        """
        explained: list[Divergence] = []
        carried: list[tuple[str, str]] = []  # (precision, reason) of lower-dtype points
        points = self.points
        for direction, order in (("forward", points), ("backward", tuple(reversed(points)))):
            after = None
            for point in order:
                bound = point.bound(direction)
                values = point.forward if direction == "forward" else point.backward
                if bound is None or not values:
                    continue
                carried += [
                    (precision, f"{reason} at {point.name!r}")
                    for precision, reason in self._lower(point)
                    if all(known != precision for known, _ in carried)
                ]
                parted = None
                for engine, value in values.items():
                    if value > bound and (parted is None or value > values[parted]):
                        parted = engine
                if parted is None:
                    after = point.name
                    continue
                value = values[parted]
                setting = self._explain(point, direction, value, self._settings(parted))
                verdict = setting
                if setting == "unexplained":
                    verdict = self._explain(point, direction, value, carried)
                divergence = Divergence(
                    point.name,
                    direction,
                    parted,
                    value,
                    bound,
                    after,
                    verdict,
                    self._closer(point),
                )
                if setting == "unexplained":
                    return divergence, tuple(explained)
                explained.append(divergence)
                after = point.name
        for path, (rhos, bound) in self.gradients.items():
            for engine, value in rhos.items():
                if value <= bound:
                    continue
                verdict = next(
                    (
                        reason
                        for precision, reason in carried
                        if value <= _RELAXED * _EPS[precision]
                    ),
                    "unexplained",
                )
                divergence = Divergence(path, "gradient", engine, value, bound, None, verdict)
                return divergence, tuple(explained)
        return None, tuple(explained)

    def _lower(self, point: PointVerdict) -> list[tuple[str, str]]:
        """The engines that computed ``point`` in a lower precision than the run's."""
        found = []
        for who in self.engines:
            precision = _precision_of(point.dtypes.get(who, self.dtype))
            if _EPS.get(precision, 0.0) > _EPS[self.dtype]:
                found.append((precision, f"{precision} in {who}"))
        return found

    def _settings(self, engine: str) -> list[tuple[str, str]]:
        """A precision setting in which ``engine`` and the reference differ (TF32 matrix
        products in one of them), with the precision it computes in: what may explain a gap
        beyond round-off without any fault."""
        reasons = []
        settings = self.provenance.get("precision", {})
        for who, other in ((engine, self.reference), (self.reference, engine)):
            mode = settings.get(who, {}).get("matmul", "float32")
            theirs = settings.get(other, {}).get("matmul", "float32")
            if mode != theirs and _EPS.get(mode, 0.0) > _EPS[self.dtype]:
                reasons.append((mode, f"{mode} matrix products in {who} (a precision setting)"))
        return reasons

    def _explain(
        self, point: PointVerdict, direction: str, value: float, reasons: list[tuple[str, str]]
    ) -> str:
        """The first reason whose unit round-off covers the gap: ``_RELAXED`` times it,
        amplified as round-off-sized moves of the parameters are amplified here in the engines
        that computed the point in the run's dtype (their spread, over the ulps moved)."""
        spreads = point.spreads.get(direction, {})
        eps = _EPS[self.dtype]
        plain = [
            spread
            for who, spread in spreads.items()
            if _precision_of(point.dtypes.get(who, self.dtype)) == self.dtype
        ]
        amplification = max(1.0, max(plain, default=0.0) / (ULPS * eps))
        for precision, reason in reasons:
            if value <= _RELAXED * _EPS[precision] * amplification:
                return reason
        return "unexplained"

    def _closer(self, tap: PointVerdict) -> str | None:
        """The engine nearer to its own float64 run at ``tap``, when one clearly is."""
        if len(tap.referee) < 2:
            return None
        ranked = sorted(tap.referee.items(), key=lambda item: item[1])
        best, runner = ranked[0], ranked[1]
        return best[0] if runner[1] > 4 * best[1] else None

    def summary(self) -> str:
        """One line: where they part, or that they do not."""
        unmatched = f"; {len(self.unmatched)} unmatched" if self.unmatched else ""
        if self.first is None and self.compared == 0:
            return (
                f"no point was compared: the {len(self.points)} points reached are each "
                "reached by one engine only (tap the same names in every implementation, or "
                "translate them with names=)"
            )
        if self.first is None:
            agree = (
                f"{_and(self.engines)} agree at every one of the {self.compared} points "
                f"compared{unmatched}, forward and backward, and in every gradient, within "
                "round-off"
            )
            if self.explained:
                agree += f" (or a precision setting: {len(self.explained)} points)"
            return agree
        return self.first.describe(self.reference) + (
            f" ({self.compared} points compared{unmatched})"
        )

    def raise_if_diverged(self) -> None:
        """Raise [`Disagreement`][gradlab.Disagreement] (an ``AssertionError``) with the
        summary if an engine parts from the reference beyond what is explained, or if no
        point was compared."""
        if not self.ok:
            raise Disagreement(f"{self.problem}: {self.summary()}", self)

    def __str__(self) -> str:
        others = [name for name in self.engines if name != self.reference]
        lines = [
            f"Where {_and(self.engines)} part: {self.problem}, {self.dtype}",
            f"reference: {self.reference}; rho = |a − b| / max(1, |a| + |b|), largest over "
            "a point's elements; bound: what round-off explains there",
        ]
        losses = ", ".join(f"{name} {value:.12g}" for name, value in self.losses.items())
        reference = self.losses.get(self.reference, 0.0)
        gap = max((float(rho(reference, value)) for value in self.losses.values()), default=0.0)
        lines.append(f"losses: {losses}" + (f" (rho {gap:.1e})" if gap else ""))
        lines.append("")
        header = ["#", "point", "shape"]
        for name in others:
            suffix = f" {name}" if len(others) > 1 else ""
            header += [f"forward{suffix}", f"backward{suffix}"]
        header += ["bound fwd", "bound bwd", ""]
        rows = []
        first = self.first
        for index, tap in enumerate(self.points, 1):
            row = [str(index), tap.name, "×".join(map(str, tap.shape)) or "()"]
            for name in others:
                row += [
                    _cell(tap.forward.get(name)),
                    _cell(tap.backward.get(name)),
                ]
            row += [f"{tap.forward_bound:.0e}", _cell(tap.backward_bound, bound=True)]
            mark = ""
            if first is not None and first.name == tap.name and first.direction != "gradient":
                mark = f"← first ({first.direction})"
            elif any(e.name == tap.name for e in self.explained):
                mark = "explained"
            elif tap.name in self.unmatched:
                mark = "unmatched"
            row.append(mark)
            rows.append(row)
        lines.append(_output.table(header, rows))
        parted = {
            path: (rhos, bound)
            for path, (rhos, bound) in self.gradients.items()
            if any(value > bound for value in rhos.values())
        }
        if self.gradients:
            worst = max(
                (
                    (path, max(rhos.values(), default=0.0), bound)
                    for path, (rhos, bound) in self.gradients.items()
                ),
                key=lambda item: item[1],
            )
            lines += [
                "",
                f"parameter gradients: {len(parted)} of {len(self.gradients)} part beyond "
                f"round-off; largest rho {worst[1]:.1e} ({worst[0]}, bound {worst[2]:.0e})",
            ]
        if self.explained:
            by = sorted({divergence.verdict for divergence in self.explained})
            lines.append(
                f"explained by a precision setting ({'; '.join(by)}): {len(self.explained)} "
                f"points beyond round-off, the first: {self.explained[0].describe(self.reference)}"
            )
        for name, reason in self.unmatched.items():
            lines.append(f"unmatched point {name!r}: {reason}")
        lines += ["", self.summary()]
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record; [`from_dict`][gradlab.DivergenceReport.from_dict] rebuilds
        the report from it."""
        return _output.stamp(
            self,
            {
                "problem": self.problem,
                "dtype": self.dtype,
                "reference": self.reference,
                "engines": list(self.engines),
                "ok": self.ok,
                "summary": self.summary(),
                "losses": self.losses,
                "points": [
                    {
                        "name": tap.name,
                        "shape": list(tap.shape),
                        "engines": list(tap.engines),
                        "shapes": {k: list(v) for k, v in tap.shapes.items()},
                        "forward": tap.forward,
                        "backward": tap.backward,
                        "forward_bound": tap.forward_bound,
                        "backward_bound": tap.backward_bound,
                        "referee": tap.referee,
                        "dtypes": tap.dtypes,
                        "spreads": tap.spreads,
                        "summaries": {k: list(v) for k, v in tap.summaries.items()},
                    }
                    for tap in self.points
                ],
                "gradients": {
                    path: {"rho": rhos, "bound": bound}
                    for path, (rhos, bound) in self.gradients.items()
                },
                "implementations": self.implementations,
                "skipped": self.skipped,
                "params": self.params,
                "provenance": self.provenance,
                "data_digest": self.data_digest,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> DivergenceReport:
        """Rebuild a report from [`to_dict`][gradlab.DivergenceReport.to_dict] (or parsed
        ``to_json``, or ``gradlab locate --json``).

        Raises:
            ArgumentError: ``record`` is not a saved report.
        """
        with _output.reading(cls, record) as saved:
            dtype = check_dtype(saved["dtype"], "record")
            return cls.build(
                problem=str(saved["problem"]),
                dtype=dtype,
                reference=str(saved["reference"]),
                engines=tuple(str(name) for name in saved["engines"]),
                losses={name: _output.number(v) for name, v in saved["losses"].items()},
                points=tuple(
                    PointVerdict(
                        name=str(tap["name"]),
                        shape=tuple(int(size) for size in tap["shape"]),
                        engines=tuple(str(name) for name in tap["engines"]),
                        shapes={
                            str(k): tuple(int(size) for size in v) for k, v in tap["shapes"].items()
                        },
                        forward={k: _output.number(v) for k, v in tap["forward"].items()},
                        backward={k: _output.number(v) for k, v in tap["backward"].items()},
                        forward_bound=_output.number(tap["forward_bound"]),
                        backward_bound=_output.maybe(tap["backward_bound"]),
                        referee={k: _output.number(v) for k, v in tap["referee"].items()},
                        dtypes={str(k): str(v) for k, v in tap["dtypes"].items()},
                        spreads={
                            str(direction): {k: _output.number(v) for k, v in values.items()}
                            for direction, values in tap["spreads"].items()
                        },
                        summaries={
                            str(k): tuple(_output.number(x) for x in v)
                            for k, v in tap["summaries"].items()
                        },
                    )
                    for tap in saved["points"]
                ),
                gradients={
                    str(path): (
                        {k: _output.number(v) for k, v in entry["rho"].items()},
                        _output.number(entry["bound"]),
                    )
                    for path, entry in saved["gradients"].items()
                },
                implementations=dict(saved["implementations"]),
                skipped=dict(saved["skipped"]),
                params=_output.arrays(saved["params"], dtype),
                provenance=dict(saved["provenance"]),
                data_digest=saved.get("data_digest"),
            )

    def against(self, baseline: DivergenceReport | str | os.PathLike[str]) -> BaselineComparison:
        """Whether each engine's values changed since ``baseline``, a report of the same
        problem and point saved earlier: at every point, forward and backward, the sum and
        the norm of its values, and its loss, each judged by the point's bound (a
        regression test across framework upgrades, as for the other reports).

        Returns:
            A [`BaselineComparison`][gradlab.BaselineComparison].

        Raises:
            ArgumentError: ``baseline`` is not a saved report of this problem at this point.
        """
        return points_against(self, baseline, derived_bound(self.dtype))

    def plot(self, path: str | None = None) -> Any:
        """rho per point, forward and backward, with the bound drawn (a matplotlib Figure),
        saved to ``path`` if given."""
        from gradlab import plots

        figure = plots.divergence_figure(self)
        if path is not None:
            _output.save_figure(figure, path)
        return figure

    def __repr__(self) -> str:
        return (
            f"DivergenceReport(problem={self.problem!r}, engines={list(self.engines)}, "
            f"points={len(self.points)}, ok={self.ok})"
        )


def _precision_of(dtype: str) -> str:
    """A framework's dtype name (``torch.bfloat16``, ``bfloat16``) as a key of ``_EPS``."""
    text = dtype.lower()
    for name in ("bfloat16", "float16", "float32", "float64"):
        if name in text:
            return name
    return "float64"


def _cell(value: float | None, bound: bool = False) -> str:
    if value is None:
        return "—"
    if bound:
        return f"{value:.0e}"
    return "0" if value == 0 else f"{value:.1e}"


def _and(names: tuple[str, ...] | list[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
