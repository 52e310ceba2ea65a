"""One kernel for every comparison kind: check the arguments once, choose the engines, run
the kind on each, and judge every pair.

The kernel knows a kind only by its value (``gradlab.comparison._kinds``): what an engine
must offer, what it computes, how pairs are judged and how elements are named. The public
``compare_*`` functions are thin calls of [`compare`][gradlab.comparison._kernel.compare].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gradlab import _output
from gradlab._agreement import Label, criterion, differences, joined
from gradlab._boundary import prepare
from gradlab._derivatives import check_tangent
from gradlab._errors import (
    ArgumentError,
    ArgumentTypeError,
    EngineUnavailable,
    HandGradientMissing,
    NotSupported,
    UnknownEngine,
    naming,
)
from gradlab._flat import FlatView
from gradlab._progress import progress_bar
from gradlab._provenance import common_provenance
from gradlab._tree import structure
from gradlab.comparison._divergence import derived_bound, moved_params
from gradlab.comparison._kinds import Kind, Setup, kind_named
from gradlab.comparison._report import GradientReport, Verdict
from gradlab.engines._forward import noting
from gradlab.engines._protocol import GradientEngine, is_approximate, runs_hand_of
from gradlab.engines._registry import engine_list, get_engine
from gradlab.problems._base import AbstractProblem
from gradlab.problems._native import NativeProblem, framework_of

#: What ``engines=`` takes: names or engine objects, one comma-separated string, or
#: ``None`` for the default list.
Engines = str | Sequence["str | GradientEngine"] | None


def compare(
    kind: Kind | str,
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    tangent: Any = None,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's derivative of one ``kind`` at ``params``, compared pairwise.

    Args:
        kind: A comparison kind, or its name (``"gradient"``, ``"hessian"``, ``"hvp"``,
            ``"jacobian"``, ``"per-example"``).
        problem: The problem (for a vector-valued kind, a problem whose loss returns arrays).
        data: Its data (copied, never modified).
        params: Where to compare (copied, never modified).
        tangent: The vector of a kind that takes one (Hessian-vector products), with the
            structure and shapes of ``params``; ``None`` for every other kind.
        engines: As for [`compare_gradients`][gradlab.compare_gradients].
        dtype: As for [`compare_gradients`][gradlab.compare_gradients].
        reference: As for [`compare_gradients`][gradlab.compare_gradients]; by default the
            hand derivation where the problem has the one this kind runs, else ``fd``.
        tolerance: As for [`compare_gradients`][gradlab.compare_gradients].
        atol: As for [`compare_gradients`][gradlab.compare_gradients].
        rtol: As for [`compare_gradients`][gradlab.compare_gradients].
        progress: As for [`compare_gradients`][gradlab.compare_gradients].

    Returns:
        The [`GradientReport`][gradlab.GradientReport], its ``derivative`` the kind's name.

    Raises:
        ArgumentError: ``kind`` names no comparison kind (the error names ``kind`` and the
            kinds there are), or ``tangent`` is missing for a kind that takes one, or
            given to one that does not.
    """
    chosen = kind_named(kind)
    setup = _setup(
        chosen, problem, data, params, tangent, engines, dtype, reference, tolerance, atol, rtol
    )
    if chosen.check is not None:
        chosen.check(setup)
    return _report(chosen, setup, progress)


def _setup(
    kind: Kind,
    problem: object,
    data: object,
    params: object,
    tangent: object,
    engines: Engines,
    dtype: object,
    reference: str | GradientEngine | None,
    tolerance: object,
    atol: object,
    rtol: object,
) -> Setup:
    """Check what every comparison shares, in one place."""
    _, checked_dtype, flat, checked_data, checked_params, _ = prepare(
        problem, data, params, "numpy", dtype, "params", kind.output
    )
    judge = criterion(tolerance, atol, rtol)
    wanted, default = engine_list(engines)
    if kind.takes_tangent and tangent is None:
        raise ArgumentError("tangent", f"is required to compare {kind.quantity}")
    if not kind.takes_tangent and tangent is not None:
        raise ArgumentError("tangent", f"is not taken when comparing {kind.quantity}")
    checked_tangent = (
        None if tangent is None else check_tangent(tangent, checked_params, structure(params))
    )
    return Setup(
        wanted,
        default,
        reference,
        checked_dtype,
        flat,
        checked_data,
        checked_params,
        judge,
        checked_tangent,
    )


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


def _report(kind: Kind, setup: Setup, progress: bool) -> GradientReport:
    """The report of one kind on every engine that can run it."""
    problem, dtype, params, judge = setup.problem, setup.dtype, setup.params, setup.judge

    def can_run(engine: GradientEngine) -> object:
        return kind.offered(engine, problem)

    built, skipped = resolve_engines(
        setup.engines, setup.default, setup.reference, can_run, kind.has_hand(problem)
    )
    values: dict[str, dict[str, np.ndarray]] = {}
    losses: dict[str, float] = {}
    outputs: dict[str, tuple[int, ...]] = {}
    notes: dict[str, str] = {}
    with progress_bar(len(built), f"{kind.name}s", progress) as advance:
        for position, (name, engine) in enumerate(list(built.items())):
            # What an engine finds it cannot do only once it runs (the complex step meeting
            # xp.max, forward mode meeting an operation without a forward derivative) is
            # blamed on the argument that chose it, as in resolve_engines; an engine of the
            # default list other than the reference is skipped with the reason instead.
            chosen = "reference" if setup.reference is not None and position == 0 else "engines"
            try:
                with naming(chosen), noting() as noted:
                    computed = kind.compute(setup, engine, dtype)
            except NotSupported as error:
                if not setup.default or position == 0:
                    raise
                skipped[name] = str(error)
                del built[name]
                advance(name)
                continue
            values[name] = computed.values
            if computed.loss is not None:
                losses[name] = computed.loss
            outputs.update(computed.outputs or {})
            if noted:  # how it computed, where that is not the engine's usual way
                notes[name] = "; ".join(noted)
            advance(name)

    names = tuple(built)
    implementations = implementations_of(built, problem)
    label = kind.label(params, outputs)
    size = len(names)
    matrix = np.zeros((size, size))
    limits = kind.tolerances(built, dtype, judge.tolerance)
    if judge.derived:
        # Exact pairs get the derived bound; a pair with an approximate engine (fd) keeps the
        # table's tolerance where it is the larger: its truncation error is no round-off.
        derived = _derived(kind, setup, built, values, label)
        exact = np.array([not is_approximate(engine) for engine in built.values()])
        limits = np.where(exact[:, None] & exact[None, :], derived, np.maximum(limits, derived))
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
        truth = kind.compute(setup, built[ref_name], "float64").values
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
        derivative=kind.name,
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
        tangent=None
        if setup.tangent is None
        else {k: v.astype(dtype) for k, v in setup.tangent.items()},
        data_digest=_output.digest(setup.data),
        implementations=implementations,
        notes=notes,
    )


def _derived(
    kind: Kind,
    setup: Setup,
    built: Mapping[str, GradientEngine],
    values: Mapping[str, Mapping[str, np.ndarray]],
    label: Label,
) -> np.ndarray:
    """Each pair's largest rho derived from this computation (``tolerance="derived"``): how
    far each engine's own result moves when the parameters move by a few ulps (its spread),
    times ``SAFETY``, never under the floor (``comparison._divergence``). An approximate
    engine keeps the table's tolerance beside it (the caller takes the larger)."""
    moved = moved_params(setup.params, setup.dtype, seed=0)
    spread = {
        name: _largest_rho(
            values[name],
            kind.compute(replace(setup, params=moved), engine, setup.dtype).values,
            label,
        )[0]
        for name, engine in built.items()
    }
    return np.array(
        [[derived_bound(setup.dtype, spread[a], spread[b]) for b in built] for a in built]
    )


def _largest_rho(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], label: Label
) -> tuple[float, str | None]:
    """The largest rho over every element of two results, and the element where it peaks
    (``None`` when they are equal everywhere)."""
    top = differences(a, b, label, 1)
    if not top or top[0][3] == 0:
        return 0.0, None
    return top[0][3], top[0][0]


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
        if runs_hand_of(engine)
        else f"{framework_of(engine.xp)} implementation"
        for name, engine in engines.items()
    }
