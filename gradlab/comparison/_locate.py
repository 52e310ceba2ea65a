"""``locate``: where two implementations of one loss part, forward or backward, and whether
the gap is one round-off explains.

Each implementation marks its points with [`tap`][gradlab.tap]. For each engine, ``locate``
evaluates the loss three times:

1. **discover**: which points the loss reaches, in order, with their shapes and dtypes (the
   loss alone, where the engine offers it);
2. **read**: the loss with a zero *probe* added at each point and a zero *reader* dotted
   with it (``gradlab._tap``; one flat vector of each for all points): one
   ``value_and_grad`` gives every forward value (the readers' gradients), every backward
   cotangent (the probes') and every parameter's gradient, in any engine, traced or eager;
3. **perturb**: the same at parameters moved by a few ulps: how far round-off alone moves
   each value *of this implementation* — the derived bound.

In float32, where the engines part, a fourth pass in float64 (the *referee*) says which is
the nearer to its own float64 run there. Engines on NumPy (``fd``, ``complex-step``) read
forward values by evaluating the loss directly, in NumPy: they have no backward pass to read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gradlab import _output
from gradlab._agreement import rho
from gradlab._boundary import evaluate, on_engine_together, prepare
from gradlab._checks import check_int
from gradlab._errors import (
    ArgumentError,
    ArgumentTypeError,
    EngineUnavailable,
    HandGradientMissing,
    NotSupported,
    ProblemError,
    naming,
)
from gradlab._fingerprint import Compiled, Keyed, key
from gradlab._flat import FlatView
from gradlab._loss import calling
from gradlab._provenance import common_provenance
from gradlab._tap import Point, Session, watching
from gradlab._tree import parse_path
from gradlab._tree import path as path_of
from gradlab.comparison._divergence import (
    DivergenceReport,
    PointVerdict,
    derived_bound,
    moved_params,
    precision_settings,
)
from gradlab.comparison._kernel import Engines, implementations_of
from gradlab.engines._protocol import GradientEngine, runs_hand_of
from gradlab.engines._registry import engine_list, get_engine
from gradlab.problems._base import AbstractProblem
from gradlab.problems._native import framework_of

#: Prefixes of the probes' and readers' names among the parameters an engine differentiates.
_PROBE, _READER, _FLAG = "⟨probe⟩", "⟨reader⟩", "⟨flag⟩"
_LOCATE_NAMES = (_PROBE, _READER, _FLAG)
#: The probed views, by the problem's key and the points probed: a second locate of the same
#: problem (and the perturbed pass of each) runs the engines' compiled code again.
_PROBED: Compiled[_Probed] = Compiled()

Names = Mapping[str, Mapping[str, str]] | None


def locate(
    problem: AbstractProblem,
    data: Any = None,
    params: Any = None,
    *,
    engines: Engines = None,
    dtype: str = "float64",
    names: Names = None,
    seed: int = 0,
) -> DivergenceReport:
    """Where two implementations of one loss part: the first tapped point, forward or
    backward, whose values differ beyond what round-off explains.

    Args:
        problem: The problem: a [`NativeProblem`][gradlab.NativeProblem] (each engine runs
            its framework's implementation) or one written once against ``xp`` (each engine
            runs that code). Points are marked in the code with [`tap`][gradlab.tap];
            modules wrapped by [`torch_module`][gradlab.torch_module] are tapped at every
            submodule's output, by module path.
        data: Its data (``None``: none), copied, never modified.
        params: Where to evaluate (``None``: the problem's ``initial_params``), copied.
        engines: Two or more engines (names or objects, or a comma-separated string); the
            first is the reference. Default: one engine per framework among gradlab's
            default engines that can run the loss: torch, jax and, for NumPy code, ``fd``
            (forward values only; its gradients are judged by their own spread, which holds
            its truncation error). Opt-in engines (TensorFlow, MLX, torch-compile) when
            named.
        dtype: ``"float32"`` or ``"float64"``.
        names: Point names to translate, by engine or framework name:
            ``{"jax": {"Dense_0": "fc1"}}``; points are matched by (translated) name.
        seed: Seed of the round-off perturbation.

    Returns:
        A [`DivergenceReport`][gradlab.DivergenceReport].

    Raises:
        ArgumentError: bad arguments, fewer than two engines that can run, or no point
            tapped in any implementation.
    """
    seed = check_int(seed, "seed", 0)
    if data is None:
        data = {}
    if params is None:
        params = initial_point(problem, data, seed)
    _, checked_dtype, flat, checked_data, checked_params, _ = prepare(
        problem, data, params, "numpy", dtype, "params"
    )
    names = _check_names(names)
    chosen, skipped = _engines(engines, flat)
    for path in checked_params:
        if path in _LOCATE_NAMES:
            raise ArgumentError("params", f"has a parameter named {path!r}, a name locate uses")
    perturbed = moved_params(checked_params, checked_dtype, seed)
    observed: dict[str, tuple[GradientEngine, dict[str, str], _Run, _Run]] = {}
    for engine_name, engine in chosen.items():
        framework = framework_of(engine.xp)
        renames = {
            **_layout_names(flat, framework),
            **names.get(framework, {}),
            **names.get(engine_name, {}),
        }
        run = _observe(engine, flat, checked_data, checked_params, checked_dtype)
        _check_renames(engine_name, framework, names, run.points, renames)
        moved = _observe(engine, flat, checked_data, perturbed, checked_dtype, run.points)
        observed[engine_name] = (engine, renames, run, moved)
    unknown = sorted(set(names) - {*chosen, *(framework_of(e.xp) for e in chosen.values())})
    if unknown:
        raise ArgumentError(
            "names", f"has {unknown}, which are neither engines nor frameworks located here"
        )
    if not any(run.points for _, _, run, _ in observed.values()):
        raise ArgumentError(
            "problem",
            "reached no tap in any implementation: mark points with gradlab.tap(name, x), "
            "or wrap torch modules with gradlab.torch_module (tapped at every submodule)",
        )

    def report(referees: Mapping[str, _Run]) -> DivergenceReport:
        runs = {
            name: run.renamed(renames, moved, referees.get(name))
            for name, (_, renames, run, moved) in observed.items()
        }
        return _report(
            problem_name=getattr(problem, "name", type(problem).__name__),
            dtype=checked_dtype,
            runs=runs,
            reference=next(iter(runs)),
            implementations=implementations_of(chosen, flat),
            skipped=skipped,
            params={name: value.astype(checked_dtype) for name, value in checked_params.items()},
            flat_params=checked_params,
            data_digest=_output.digest(checked_data),
            provenance={
                **common_provenance(checked_dtype),
                "precision": {name: precision_settings(engine) for name, engine in chosen.items()},
            },
        )

    found = report({})
    if found.first is None or checked_dtype != "float32":
        return found
    # Where they part in float32, which is nearer to its own float64 run there: one pass
    # more per engine, made only when there is a divergence to referee.
    return report(
        {
            name: _observe(engine, flat, checked_data, checked_params, "float64", run.points)
            for name, (engine, _, run, _) in observed.items()
        }
    )


@dataclass
class _Run:
    """One engine's observation: points in order, and per point its forward value and
    backward cotangent (``None`` where the engine has no backward to read), the loss and the
    parameters' gradients; after ``renamed``, the same at perturbed parameters and (float32)
    in float64."""

    points: dict[str, Point]
    loss: float
    forward: dict[str, np.ndarray]
    backward: dict[str, np.ndarray] | None
    grads: dict[str, np.ndarray] | None
    moved: _Run | None = None
    referee: _Run | None = None

    def renamed(self, renames: Mapping[str, str], moved: _Run, referee: _Run | None) -> _Run:
        def rename(values: dict[str, Any] | None) -> dict[str, Any] | None:
            if values is None:
                return None
            return {renames.get(name, name): value for name, value in values.items()}

        def apply(run: _Run) -> _Run:
            return _Run(
                rename(run.points) or {},
                run.loss,
                rename(run.forward) or {},
                rename(run.backward),
                run.grads,
            )

        out = apply(self)
        out.points = {name: replace(point, name=name) for name, point in out.points.items()}
        out.moved = apply(moved)
        out.referee = None if referee is None else apply(referee)
        return out


def _observe(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
    points: Mapping[str, Point] | None = None,
) -> _Run:
    """One engine's values at every point: discovered first unless ``points`` are known."""
    if framework_of(engine.xp) == "numpy":  # fd, and complex-step's own namespace
        return _observe_eagerly(engine, problem, data, params, dtype)
    if points is None:
        points = _discover(engine, problem, data, params, dtype)
    slots, total = {}, 0
    for name, point in points.items():
        if point.floating:
            size = int(np.prod(point.shape))
            slots[name] = (total, total + size, point.shape)
            total += size
    finite = frozenset(name for name in slots if points[name].finite)
    probed = _probed(problem, _context(engine, data, params, dtype), tuple(slots.items()), finite)
    zeros = {prefix: np.zeros(total) for prefix in (_PROBE, _READER, _FLAG)}
    loss, grads = _evaluate(engine, probed, data, {**params, **zeros}, dtype)
    if list(probed.points) != list(points):
        if not probed.points:
            raise ArgumentError("problem", f"engine {engine.name!r}: {_HIDDEN}")
        raise ArgumentError(
            "problem",
            f"engine {engine.name!r}: the loss reached other points on a second evaluation "
            f"({', '.join(probed.points)}, after {', '.join(points)}): taps must not depend "
            "on the parameters' values",
        )

    def split(vector: np.ndarray) -> dict[str, np.ndarray]:
        return {name: vector[a:b].reshape(shape) for name, (a, b, shape) in slots.items()}

    values, cotangents, flags = split(grads[_READER]), split(grads[_PROBE]), split(grads[_FLAG])
    return _Run(
        dict(points),
        float(loss),
        {name: _read(values[name], flags[name]) for name in slots},
        cotangents,
        {name: grads[name] for name in params},
    )


#: Why a loss's taps may fire once and then never, or leak out of a trace.
_HIDDEN = (
    "its taps did not fire, or fired inside a transformation of the loss's own (jax.jit, "
    "jax.checkpoint, lax.scan, vmap, lax.cond, while_loop): there a tap's value lives in that "
    "transformation's trace, or its compiled code runs without the Python that taps. Tap "
    "outside it (its result), or leave the inner jit out while locating"
)


@contextlib.contextmanager
def _taps_in_traces(engine: GradientEngine) -> Iterator[None]:
    """A tap whose value leaked out of a jax transformation of the user's, named as such
    rather than as jax's error from inside the loss."""
    try:
        yield
    except ProblemError as error:
        if type(error.__cause__).__name__ == "UnexpectedTracerError":
            raise ArgumentError("problem", f"engine {engine.name!r}: {_HIDDEN}") from None
        raise


def _evaluate(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with _taps_in_traces(engine):
        return evaluate(engine, problem, data, dict(params), dtype)


def _discover(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> dict[str, Point]:
    """The points the loss reaches, in order: by evaluating it, the loss alone where the
    engine offers it (``objective``: a third of a gradient's cost), else with its gradient."""
    discover = _probed(problem, _context(engine, data, params, dtype), ())
    objective = getattr(engine, "objective", None)
    if objective is None:
        _evaluate(engine, discover, data, params, dtype)
        return discover.points
    with (
        _taps_in_traces(engine),
        np.errstate(all="ignore"),
        calling(discover, engine, params, data),
    ):
        batch, point = on_engine_together(engine, data, params, dtype)
        objective(discover)(point, batch)
    return discover.points


def _read(value: np.ndarray, code: np.ndarray) -> np.ndarray:
    """A point's forward value from its reader's gradient (the finite elements) and its
    flag's (the codes of the others: +1 for +inf, −1 for −inf, 2 for NaN)."""
    out = np.array(value, dtype=np.float64)
    out[code == 1] = np.inf
    out[code == -1] = -np.inf
    out[code == 2] = np.nan
    return out


def _observe_eagerly(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> _Run:
    """An engine on NumPy: the loss evaluated directly, each tap's value kept as it is; the
    parameters' gradients are the engine's own (hand-derived or approximated)."""
    session = Session(np, keep=True)
    cast_params = {name: value.astype(dtype) for name, value in params.items()}
    cast_data = {name: np.asarray(value).astype(dtype) for name, value in data.items()}
    with (
        np.errstate(all="ignore"),
        calling(problem, engine, cast_params, cast_data),
        watching(session),
    ):
        loss = problem.loss(cast_params, cast_data, np)
    try:  # the engine's own loss and gradient, where it computes them
        loss, grads = evaluate(engine, problem, data, dict(params), dtype)
    except (HandGradientMissing, NotSupported):
        grads = None
    forward = {
        name: np.array(value, dtype=np.float64)
        for name, value in session.values.items()
        if session.points[name].floating
    }
    return _Run(dict(session.points), float(loss), forward, None, grads)


Slots = tuple[tuple[str, tuple[int, int, tuple[int, ...]]], ...]


def _probed(
    problem: AbstractProblem,
    context: Hashable,
    slots: Slots,
    finite: frozenset[str] = frozenset(),
) -> _Probed:
    """``problem`` with the points of ``slots`` probed, read and (but those known
    ``finite``) flagged: one view per problem, context and slots, so that the engines'
    compiled code of it is found again.

    Why the context (framework, dtype, shapes): a traced engine that finds its compiled code
    does not run the loss, and the view's ``points`` are then those of its last evaluation,
    which must have been of the same framework, dtype and shapes to be the same points.
    """
    problem_key = key(problem)
    return _PROBED.get(
        (problem_key, context, slots, finite),
        lambda: _Probed(problem, slots, finite, problem_key),
    )


def _context(
    engine: GradientEngine,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> Hashable:
    """What a traced evaluation's points depend on besides the problem: the engine's
    framework, the dtype, and the shapes of the data and the parameters."""
    shapes = tuple((name, np.shape(value)) for name, value in {**data, **params}.items())
    return framework_of(engine.xp), engine.name, dtype, shapes


class _Probed(AbstractProblem, Keyed):
    """``problem`` with its taps watched: the parameter ``⟨probe⟩`` (one flat vector, each
    point's elements at its slot) is added to the points' values, and ``⟨reader⟩`` and
    ``⟨flag⟩`` dotted with them into the loss (``gradlab._tap``); the points the last
    evaluation reached are in ``points`` (with a traced engine: the last trace), which the
    fingerprint leaves out."""

    probe = False

    def __init__(
        self, problem: AbstractProblem, slots: Slots, finite: frozenset[str], problem_key: Any
    ) -> None:
        self.problem = problem
        self.name = problem.name
        self.reduction = problem.reduction
        self.slots = dict(slots)
        self.finite = finite
        self.fingerprint = ("locate", problem_key[1], slots, tuple(sorted(finite)))
        self.points: dict[str, Point] = {}

    def check_namespace(self, xp: Any) -> None:
        self.problem.check_namespace(xp)

    def loss(self, params: Mapping[str, Any], data: Mapping[str, Any], xp: Any) -> Any:
        own = {name: value for name, value in params.items() if name not in _LOCATE_NAMES}
        session = Session(
            xp, params.get(_PROBE), params.get(_READER), params.get(_FLAG), self.slots, self.finite
        )
        with watching(session):
            value = self.problem.loss(own, data, xp)
        for term in session.terms:
            value = value + term
        self.points = session.points
        return value


def initial_point(problem: object, data: Any, seed: int) -> Any:
    """The problem's ``initial_params`` for ``data``, or an error naming ``params``."""
    try:
        return problem.initial_params(data, seed=seed)  # type: ignore[attr-defined]
    except (NotSupported, AttributeError):
        name = getattr(problem, "name", "the problem")
        raise ArgumentError(
            "params", f"is required: problem {name!r} declares no parameter shapes to start from"
        ) from None


def _layout_names(problem: AbstractProblem, framework: str) -> dict[str, str]:
    """Point names a [`Layout`][gradlab.Layout] implies: the module of each native parameter
    (its name less the last part, ``"0"`` for ``"0.weight"``) is named as the module of the
    canonical parameter it holds (``"fc1"`` for ``"fc1.kernel"``), where every parameter of
    the native module maps into one canonical module: a torch module's automatic points then
    meet the other implementations' under the names the parameters already share."""
    native = problem.problem if isinstance(problem, FlatView) else problem
    layout = getattr(native, "layouts", {}).get(framework)
    if layout is None:
        return {}
    modules: dict[str, set[str]] = {}
    for name, (source, _) in layout.mapping.items():
        keys = parse_path(source)
        if "." in name and len(keys) > 1:
            modules.setdefault(name.rsplit(".", 1)[0], set()).add(path_of(keys[:-1]))
    return {module: next(iter(mapped)) for module, mapped in modules.items() if len(mapped) == 1}


def _check_renames(
    engine: str,
    framework: str,
    names: Mapping[str, Mapping[str, str]],
    points: Mapping[str, Point],
    renames: Mapping[str, str],
) -> None:
    """Refuse ``names`` for an engine that name points its loss never reached, or that
    give two of its points one name (one would silently hide the other)."""
    for who in (framework, engine):
        missing = sorted(set(names.get(who, {})) - set(points))
        if missing:
            raise ArgumentError(
                f"names[{who!r}]",
                f"translates {missing}, which engine {engine!r} never reached (its points: "
                f"{', '.join(points) or 'none'})",
            )
    final = [renames.get(name, name) for name in points]
    twice = sorted({name for name in final if final.count(name) > 1})
    if twice:
        raise ArgumentError(
            "names", f"gives two of engine {engine!r}'s points the same name: {twice}"
        )


def _check_names(names: object) -> dict[str, dict[str, str]]:
    """``names`` as ``{engine or framework: {its name: shared name}}``."""
    if names is None:
        return {}
    if not isinstance(names, Mapping):
        raise ArgumentTypeError(
            "names", f"must map engine or framework names to dicts, got {names!r}"
        )
    checked: dict[str, dict[str, str]] = {}
    for who, mapping in names.items():
        if not isinstance(mapping, Mapping) or not all(
            isinstance(a, str) and isinstance(b, str) for a, b in mapping.items()
        ):
            raise ArgumentTypeError(f"names[{who!r}]", "must map point names to point names")
        checked[str(who)] = dict(mapping)
    return checked


def _engines(
    engines: Engines, problem: AbstractProblem
) -> tuple[dict[str, GradientEngine], dict[str, str]]:
    """The engines to observe, the reference first; by default one per framework that can
    run the problem's loss (not a hand derivation, which has no taps to read)."""
    wanted, default = engine_list(engines, installed_only=True)
    chosen: dict[str, GradientEngine] = {}
    skipped: dict[str, str] = {}
    frameworks: set[str] = set()
    candidates = wanted
    if default:
        # One voice per framework: fd reads the NumPy implementation (forward only).
        candidates = [name for name in wanted if name != "numpy"]
    for item in candidates:
        label = item if isinstance(item, str) else item.name
        try:
            with naming("engines"):
                engine = get_engine(item)
                if runs_hand_of(engine):
                    raise NotSupported(
                        f"engine {label!r} runs the hand derivation, which has no taps to read"
                    )
                problem.check_namespace(engine.xp)
        except (EngineUnavailable, HandGradientMissing, NotSupported) as error:
            if not default:
                raise
            skipped[label] = str(error)
            continue
        framework = framework_of(engine.xp)
        if default and framework in frameworks:
            continue
        frameworks.add(framework)
        chosen[engine.name] = engine
    if len(chosen) < 2:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ArgumentError(
            "engines",
            f"locate needs two engines that can run the loss, got {list(chosen) or 'none'}"
            + (f" ({reasons})" if reasons else ""),
        )
    return chosen, skipped


def _report(
    *,
    problem_name: str,
    dtype: str,
    runs: dict[str, _Run],
    reference: str,
    implementations: dict[str, str],
    skipped: dict[str, str],
    params: Any,
    flat_params: Mapping[str, np.ndarray],
    data_digest: str | None,
    provenance: dict[str, Any],
) -> DivergenceReport:
    """Judge every engine against the reference, point by point, and make the report."""
    ref = runs[reference]
    order = list(ref.points)
    for run in runs.values():
        order += [point for point in run.points if point not in order]
    taps: list[PointVerdict] = []
    for point in order:
        taps.append(_tap(point, runs, reference, dtype))
    grads = {}
    for path in flat_params:
        rhos: dict[str, float] = {}
        bound = 0.0
        for name, run in runs.items():
            if name == reference or run.grads is None or ref.grads is None:
                continue
            rhos[name] = _rho(ref.grads[path], run.grads[path])
            bound = max(
                bound,
                derived_bound(
                    dtype,
                    _spread(
                        ref.grads[path],
                        ref.moved.grads[path] if ref.moved and ref.moved.grads else None,
                    ),
                    _spread(
                        run.grads[path],
                        run.moved.grads[path] if run.moved and run.moved.grads else None,
                    ),
                ),
            )
        grads[path] = (rhos, bound)
    return DivergenceReport.build(
        problem=problem_name,
        dtype=dtype,
        reference=reference,
        engines=tuple(runs),
        losses={name: run.loss for name, run in runs.items()},
        points=tuple(taps),
        gradients=grads,
        implementations=implementations,
        skipped=skipped,
        params=params,
        provenance=provenance,
        data_digest=data_digest,
    )


def _tap(point: str, runs: Mapping[str, _Run], reference: str, dtype: str) -> PointVerdict:
    """One point judged: each engine's rho against the reference, forward and backward, and
    the bound round-off explains there."""
    ref = runs[reference]
    present = [name for name, run in runs.items() if point in run.points]
    shapes = {name: runs[name].points[point].shape for name in present}
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    spreads: dict[str, dict[str, float]] = {"forward": {}, "backward": {}}
    referee: dict[str, float] = {}
    if point in ref.forward:
        for name in present:
            run = runs[name]
            if point not in run.forward or shapes[name] != shapes[reference]:
                continue
            for direction, mine, theirs, store in (
                ("forward", run.forward, ref.forward, forward),
                ("backward", run.backward, ref.backward, backward),
            ):
                if mine is None or theirs is None or point not in mine or point not in theirs:
                    continue
                spreads[direction][name] = _spread(mine[point], _moved(run, direction, point))
                if name != reference:
                    store[name] = _rho(theirs[point], mine[point])
            if run.referee is not None and point in run.referee.forward:
                referee[name] = _rho(run.forward[point], run.referee.forward[point])
    return PointVerdict(
        name=point,
        shape=shapes.get(reference) or next(iter(shapes.values()), ()),
        engines=tuple(present),
        shapes={name: tuple(shape) for name, shape in shapes.items()},
        forward=forward,
        backward=backward,
        forward_bound=derived_bound(dtype, *spreads["forward"].values()),
        backward_bound=derived_bound(dtype, *spreads["backward"].values()) if backward else None,
        referee=referee,
        dtypes={name: runs[name].points[point].dtype for name in present},
        summaries={name: _summary(runs[name], point) for name in present},
        spreads={direction: dict(values) for direction, values in spreads.items() if values},
    )


def _summary(run: _Run, point: str) -> tuple[float, ...]:
    """A point's values in four numbers, for ``against``: the sum and the norm of the finite
    elements, forward and backward (NaN where there is none)."""
    numbers: list[float] = []
    for values in (run.forward, run.backward):
        value = None if values is None else values.get(point)
        if value is None:
            numbers += [float("nan"), float("nan")]
            continue
        finite = value[np.isfinite(value)]
        numbers += [float(np.sum(finite)), float(np.sqrt(np.sum(finite * finite)))]
    return tuple(numbers)


def _moved(run: _Run, direction: str, point: str) -> np.ndarray | None:
    moved = run.moved
    if moved is None:
        return None
    values = moved.forward if direction == "forward" else moved.backward
    return None if values is None else values.get(point)


def _spread(value: np.ndarray, moved: np.ndarray | None) -> float:
    """How far round-off-sized moves of the parameters move this value (largest rho)."""
    return 0.0 if moved is None else _rho(value, moved)


def _rho(a: Any, b: Any) -> float:
    """The largest rho over the finite elements; ``inf`` where the non-finite ones (a
    mask's ``-inf``) are not the same in both, element by element."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.all():
        with np.errstate(over="ignore"):
            gaps = np.abs(a - b) / np.maximum(1.0, np.abs(a) + np.abs(b))
        if np.isfinite(gaps).all():  # else near the largest float: rho's careful path
            return float(gaps.max())
    if not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return float("inf")
    if not finite.any():
        return 0.0
    return float(np.max(rho(a[finite], b[finite])))
