"""Is it stable? One engine's gradient and a short fit, under variations that should leave
them unchanged (a rerun, one thread, eager or compiled, another device) or change them by
round-off (mini-batches accumulated, another precision): bitwise equal, or by how much."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradlab import _output
from gradlab._agreement import rho
from gradlab._boundary import check_transformation, evaluate, prepare
from gradlab._checks import check_int
from gradlab._errors import ArgumentError, ArgumentTypeError, GradlabError, NotSupported
from gradlab._fingerprint import Keyed, key
from gradlab._provenance import common_provenance
from gradlab.comparison._divergence import precision_settings
from gradlab.comparison._locate import _observe, initial_point
from gradlab.engines._protocol import GradientEngine
from gradlab.engines._registry import get_engine
from gradlab.problems._base import AbstractProblem
from gradlab.problems._native import framework_of

#: Each variation, and what it sets against the engine's plain run.
VARIATIONS: dict[str, str] = {
    "rerun": "the same calls again, in this process",
    "threads": "one thread, in a new process",
    "compiled": "eager against compiled",
    "accumulation": "the gradient summed over mini-batches, against the full batch",
    "device": "on a GPU, against the CPU",
    "precision": "in the other precision (float32 against float64)",
}

#: An engine's compiled counterpart, or its eager one (jax's engines run eagerly under
#: ``jax.disable_jit`` instead).
_COUNTERPART = {
    "torch": "torch-compile",
    "torch-compile": "torch",
    "tensorflow": "tensorflow-xla",
    "tensorflow-xla": "tensorflow",
}

#: Environment that makes a new process compute with one thread, whatever the framework:
#: BLAS and OpenMP pools, XLA's CPU client, TensorFlow's pools (torch's is set in the child).
_ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}
_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

#: Seconds the one-thread process may take (imports and compilation included).
_CHILD_TIMEOUT = 600.0

Values = dict[str, np.ndarray]


@dataclass(frozen=True)
class Variation:
    """One variation of an [`audit`][gradlab.audit]: what ran, and how far each quantity
    moved.

    Attributes:
        name: One of ``rerun``, ``threads``, ``compiled``, ``accumulation``, ``device``,
            ``precision``.
        against: What ran against the plain run (``"torch-compile"``, ``"1 thread"``,
            ``"4 mini-batches"``, ``"float32"``).
        status: ``"bitwise"`` (every quantity equal to the bit), ``"differs"``,
            ``"skipped"`` (it cannot run here) or ``"failed"`` (it raised where the plain
            run did not); see ``reason``.
        reason: Why it was skipped or failed, else ``""``.
        unit: The precision the ulps count in (the coarser of the two runs').
        ulps: Per quantity, the largest difference in units in the last place of ``unit``
            at the quantity's largest magnitude (``inf`` where one run is finite and the
            other not).
        rho: Per quantity, the largest rho = |a − b| / max(1, |a| + |b|).
    """

    name: str
    against: str
    status: str
    reason: str = ""
    unit: str = "float64"
    ulps: dict[str, float] = field(default_factory=dict)
    rho: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> str | None:
        """The quantity that moved most in rho (in ulps where rho ties), or ``None`` if none
        moved. Why rho first: a quantity that is round-off away from zero (a gradient that
        vanishes by symmetry) moves by ~1e16 of its own ulps and by 1e-16 in rho."""
        moved = [name for name, value in self.ulps.items() if value > 0]
        if not moved:
            return None
        return max(moved, key=lambda name: (self.rho[name], self.ulps[name]))

    @property
    def max_ulps(self) -> float:
        """The largest move of any quantity, in ulps of ``unit``."""
        return max(self.ulps.values(), default=0.0)

    @property
    def max_rho(self) -> float:
        """The largest move of any quantity, in rho."""
        return max(self.rho.values(), default=0.0)

    def describe(self) -> str:
        """One phrase: bitwise, by how much, or why not run."""
        if self.status == "skipped":
            return f"not run: {self.reason}"
        if self.status == "failed":
            return f"failed: {self.reason}"
        if self.status == "bitwise":
            return "bitwise equal"
        worst = self.worst
        ulps = self.ulps[worst] if worst is not None else 0.0
        return f"differs: most at {worst}, rho {self.max_rho:.1e} ({_ulps(ulps)} {self.unit} ulps)"


@dataclass(frozen=True)
class AuditReport(_output.Record):
    """An engine's gradient and short fit under variations: made by
    [`audit`][gradlab.audit].

    Attributes:
        problem: The problem's name.
        engine: The engine audited.
        dtype: The precision of the plain run.
        steps: The steps of the short fit (0: none).
        quantities: What was compared, in order: ``loss``, ``gradient <param>``, with taps
            ``forward <point>`` and ``backward <point>``, and after a fit ``fit losses``
            and ``fit <param>``.
        variations: One [`Variation`][gradlab.Variation] each, in the order asked.
        provenance: Versions, machine, threads, and the engine's precision settings.
        data_digest: A fingerprint of the data.
    """

    problem: str
    engine: str
    dtype: str
    steps: int
    quantities: tuple[str, ...]
    variations: tuple[Variation, ...]
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    data_digest: str | None = None

    def __getitem__(self, name: str) -> Variation:
        """The variation called ``name`` (``KeyError`` if it was not audited)."""
        for variation in self.variations:
            if variation.name == name:
                return variation
        raise KeyError(f"no variation {name!r} in this audit; it has {self._names()}")

    def __contains__(self, name: object) -> bool:
        """Whether a variation called ``name`` was audited."""
        return any(variation.name == name for variation in self.variations)

    def _names(self) -> str:
        return ", ".join(variation.name for variation in self.variations)

    @property
    def deterministic(self) -> bool | None:
        """Whether a rerun was bitwise equal (``None`` when reruns were not audited)."""
        return self._bitwise("rerun")

    @property
    def thread_invariant(self) -> bool | None:
        """Whether one thread gave the bits of the default (``None``: not audited)."""
        return self._bitwise("threads")

    def _bitwise(self, name: str) -> bool | None:
        found = [
            v for v in self.variations if v.name == name and v.status in ("bitwise", "differs")
        ]
        return found[0].status == "bitwise" if found else None

    def summary(self) -> str:
        """One sentence per variation."""
        lines = [f"{self.engine} on {self.problem}, {self.dtype}:"]
        lines += [
            f"  {v.name}{f' ({v.against})' if v.against else ''}: {v.describe()}"
            for v in self.variations
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        fit = f", a {self.steps}-step fit" if self.steps else ""
        lines = [
            f"Audit of {self.engine} on {self.problem}, {self.dtype}: the gradient{fit}, "
            "under each variation against the plain run",
            "",
        ]
        rows = []
        for v in self.variations:
            moved = v.status == "differs"
            rows.append(
                [
                    v.name,
                    v.against or "—",
                    {"skipped": "not run"}.get(v.status, v.status),
                    f"{v.max_rho:.1e}" if moved else "",
                    _ulps(v.ulps[v.worst]) if moved and v.worst else "",
                    v.worst or "",
                ]
            )
        header = ["variation", "against", "result", "max rho", "its ulps", "at"]
        lines.append(_output.table(header, rows))
        lines += [
            f"{v.name} {'not run' if v.status == 'skipped' else 'failed'}: {v.reason}"
            for v in self.variations
            if v.reason
        ]
        ran = [v for v in self.variations if v.status in ("bitwise", "differs")]
        if ran:
            lines += ["", "Per quantity, ulps (= bitwise; ulps of each variation's unit):"]
            detail = [[name] + [_cell(v, name) for v in ran] for name in self.quantities]
            lines.append(_output.table(["quantity", *(v.name for v in ran)], detail))
        return "\n".join(lines)

    def __repr__(self) -> str:
        verdicts = ", ".join(
            f"{v.name} {'skipped' if v.status == 'skipped' else v.status}" for v in self.variations
        )
        return f"AuditReport({self.engine!r} on {self.problem!r}, {self.dtype}: {verdicts})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record; [`from_dict`][gradlab.AuditReport.from_dict] reads it."""
        return _output.stamp(
            self,
            {
                "problem": self.problem,
                "engine": self.engine,
                "dtype": self.dtype,
                "steps": self.steps,
                "quantities": list(self.quantities),
                "deterministic": self.deterministic,
                "thread_invariant": self.thread_invariant,
                "variations": [
                    {
                        "name": v.name,
                        "against": v.against,
                        "status": v.status,
                        "reason": v.reason,
                        "unit": v.unit,
                        "ulps": v.ulps,
                        "rho": v.rho,
                    }
                    for v in self.variations
                ],
                "data_digest": self.data_digest,
                "provenance": self.provenance,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> AuditReport:
        """Rebuild a report from [`to_dict`][gradlab.AuditReport.to_dict] (or parsed
        ``to_json``).

        Raises:
            ArgumentError: ``record`` is not a saved audit.
        """
        with _output.reading(cls, record) as saved:
            variations = tuple(
                Variation(
                    name=str(v["name"]),
                    against=str(v["against"]),
                    status=str(v["status"]),
                    reason=str(v["reason"]),
                    unit=str(v["unit"]),
                    ulps={str(k): _output.number(x) for k, x in v["ulps"].items()},
                    rho={str(k): _output.number(x) for k, x in v["rho"].items()},
                )
                for v in saved["variations"]
            )
            return cls(
                problem=str(saved["problem"]),
                engine=str(saved["engine"]),
                dtype=str(saved["dtype"]),
                steps=int(saved["steps"]),
                quantities=tuple(str(q) for q in saved["quantities"]),
                variations=variations,
                provenance=dict(saved["provenance"]),
                data_digest=saved["data_digest"],
            )


def audit(
    problem: AbstractProblem,
    data: Any = None,
    params: Any = None,
    *,
    engine: str | GradientEngine,
    variations: str | tuple[str, ...] | list[str] | None = None,
    dtype: str = "float64",
    steps: int = 20,
    optimizer: Any = None,
    batches: int = 4,
    seed: int = 0,
) -> AuditReport:
    """Run one engine's gradient and a short fit under variations, and say, per variation
    and per quantity, whether they came out bitwise equal, or how far they moved.

    Each variation is set against the plain run (the engine, this process, ``dtype``):

    - ``rerun``: the same calls again. If they are not bitwise equal, the engine is not
      deterministic here, and agreement tests of it need a tolerance for that.
    - ``threads``: in a new process computing with one thread (BLAS, OpenMP, XLA's and
      TensorFlow's pools, torch's intra-op threads) against this process's threads: a
      reduction split over threads sums in another order. The problem, data and parameters
      travel to the child pickled, through its standard input (only this process holds
      it); the results come back as a NumPy ``.npz`` read without pickle.
    - ``compiled``: torch against torch-compile (and back), tensorflow against
      tensorflow-xla, a jax engine against itself under ``jax.disable_jit``.
    - ``accumulation``: the loss as the sum of its mini-batches' losses (each weighted by
      its share of the rows for a ``reduction="mean"`` problem), which every engine
      differentiates as gradient accumulation does: the same gradient, summed in another
      order.
    - ``device``: the engine on a GPU, where one is present (torch's CUDA, jax's GPU).
    - ``precision``: the other precision: float32 against float64 shows the scale of
      round-off in this computation (in float32 ulps).

    The quantities are the loss, each parameter's gradient, each tapped point's forward
    value and backward cotangent (points marked with [`tap`][gradlab.tap], or a
    [`torch_module`][gradlab.torch_module]'s submodules; not for NumPy engines, nor for
    ``accumulation``, whose points are per mini-batch), and after a fit of ``steps`` steps
    its losses and final parameters.

    Args:
        problem: The problem.
        data: Its data (default: ``problem.make_data(100, seed=seed)`` where it makes
            data, else none); copied, never modified.
        params: Where to take the gradient and start the fit (default: the problem's
            ``initial_params``); copied.
        engine: The engine (a name or an engine object).
        variations: Which, by name (a list or a comma-separated string); default all.
        dtype: ``"float32"`` or ``"float64"``.
        steps: Steps of the short fit (0: no fit).
        optimizer: Its optimizer (default ``sgd(1e-3)``, as ``gradlab fit``).
        batches: Mini-batches for ``accumulation`` (at least 2).
        seed: Seed of the default data and parameters.

    Returns:
        An [`AuditReport`][gradlab.AuditReport].

    Raises:
        ArgumentError: bad arguments, or an unknown variation.

    Examples:
        >>> import gradlab
        >>> report = gradlab.audit(gradlab.Quadratic(), engine="numpy",
        ...                        variations="rerun,accumulation,precision", steps=5)
        >>> report.deterministic, report["precision"].status
        (True, 'differs')
    """
    chosen = _variations(variations)
    steps = check_int(steps, "steps", 0)
    batches = check_int(batches, "batches", 2)
    seed = check_int(seed, "seed", 0)
    if optimizer is None:
        from gradlab.optimizers import sgd

        optimizer = sgd(1e-3)
    optimizer = check_transformation(optimizer)
    if data is None:
        data = _default_data(problem, seed)
    if params is None:
        params = initial_point(problem, data, seed)
    checked_engine, checked_dtype, flat, checked_data, checked_params, _ = prepare(
        problem, data, params, engine, dtype, "params"
    )
    run = _Run(checked_engine, checked_dtype, flat, checked_data, checked_params, optimizer, steps)
    plain = run.measure()
    results = []
    for name in chosen:
        try:
            results.append(run.vary(name, plain, batches))
        except _Skip as skip:
            results.append(Variation(name, skip.against, "skipped", str(skip)))
        except GradlabError as error:
            # The plain run worked and this did not (a compiler refusing the loss, float32
            # unsupported): a finding, reported beside the others.
            results.append(Variation(name, "", "failed", str(error).splitlines()[0]))
    return AuditReport(
        problem=getattr(problem, "name", type(problem).__name__),
        engine=checked_engine.name,
        dtype=checked_dtype,
        steps=steps,
        quantities=tuple(plain),
        variations=tuple(results),
        provenance={
            **common_provenance(checked_dtype),
            "engine": checked_engine.describe(),
            "precision": precision_settings(checked_engine),
        },
        data_digest=_output.digest(checked_data),
    )


class _Skip(Exception):
    """A variation that cannot run here, and why."""

    def __init__(self, reason: str, against: str = "") -> None:
        super().__init__(reason)
        self.against = against


@dataclass(frozen=True)
class _Run:
    """What an audit holds fixed: the engine, precision, problem, data, start and fit."""

    engine: GradientEngine
    dtype: str
    problem: AbstractProblem
    data: Mapping[str, np.ndarray]
    params: Mapping[str, np.ndarray]
    optimizer: Any
    steps: int

    @property
    def framework(self) -> str:
        return framework_of(self.engine.xp)

    def measure(
        self,
        engine: GradientEngine | None = None,
        dtype: str | None = None,
        problem: AbstractProblem | None = None,
    ) -> Values:
        """The quantities from this run, with the engine, precision or loss replaced;
        tapped points are read but for NumPy engines and a replaced loss."""
        return _measure(
            engine or self.engine,
            problem or self.problem,
            self.data,
            self.params,
            dtype or self.dtype,
            self.optimizer,
            self.steps,
            taps=self.framework != "numpy" and problem is None,
        )

    def vary(self, name: str, plain: Values, batches: int) -> Variation:
        """Run variation ``name`` and compare it with ``plain`` (or ``_Skip``)."""
        engine, dtype = self.engine, self.dtype
        if name == "rerun":
            return _compared(name, "the same calls", plain, self.measure(), dtype)
        if name == "threads":
            return _compared(
                name, f"1 thread (here {_threads(self)})", plain, self.in_one_thread(), dtype
            )
        if name == "compiled":
            if self.framework == "jax":
                with __import__("jax").disable_jit():
                    return _compared(name, "jax.disable_jit", plain, self.measure(), dtype)
            other = _COUNTERPART.get(engine.name)
            if other is None:
                raise _Skip(f"gradlab has no compiled or eager counterpart of {engine.name}")
            try:
                counterpart = get_engine(other)
            except GradlabError as error:
                raise _Skip(str(error), other) from None
            return _compared(name, other, plain, self.measure(counterpart), dtype)
        if name == "accumulation":
            accumulated = _Accumulated.of(self.problem, self.data, batches)
            varied = self.measure(problem=accumulated)
            return _compared(name, f"{batches} mini-batches", plain, varied, dtype)
        if name == "device":
            gpu, device = _gpu_engine(engine, self.framework)
            return _compared(name, f"{device}", plain, self.measure(gpu), dtype)
        other = "float32" if dtype == "float64" else "float64"
        # fd and complex-step compute in one precision whatever the dtype (they say which
        # in describe()): the other dtype would only round their result.
        fixed = {k: v for k, v in engine.describe().items() if k.endswith("_precision")}
        if fixed:
            computes = ", ".join(f"{key}={value}" for key, value in fixed.items())
            raise _Skip(
                f"{engine.name} computes in one precision whatever the dtype ({computes}): "
                "the other dtype only rounds its result",
                other,
            )
        return _compared(name, other, plain, self.measure(dtype=other), "float32")

    def in_one_thread(self) -> Values:
        """The quantities from a new process computing with one thread."""
        engine = self.engine
        try:
            rebuilt = get_engine(engine.name)
        except GradlabError:
            raise _Skip(
                f"{engine.name!r} is not a registered engine a new process can build"
            ) from None
        if rebuilt.describe() != engine.describe():
            raise _Skip(f"this {engine.name} has options a new process cannot repeat")
        fixed = (self.problem, dict(self.data), dict(self.params), self.optimizer)
        # Modules the command line loaded from a file path (``--problem file.py:name``) are
        # loaded again by path in the child before the problem is unpickled.
        by_path = {
            name: module.__file__
            for name, module in sys.modules.items()
            if name.startswith("gradlab_user_") and getattr(module, "__file__", None)
        }
        try:
            fixed_bytes = pickle.dumps(fixed)
        except Exception as error:  # what pickling user objects raises varies
            raise _Skip(f"the problem, data or optimizer does not pickle ({error})") from None
        header = (engine.name, self.framework, self.dtype, self.steps, by_path)
        payload = pickle.dumps((header, fixed_bytes))
        env = {**os.environ, **_ONE_THREAD}
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_XLA_ONE_THREAD}".strip()
        # The child imports what this process imported from where it did (a source tree),
        # and, as the command line does, from the working directory.
        paths = [os.getcwd(), *(path for path in sys.path if path)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        try:
            done = subprocess.run(
                [sys.executable, "-c", "from gradlab.comparison._audit import _child; _child()"],
                input=payload,
                capture_output=True,
                env=env,
                timeout=_CHILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _Skip(f"the one-thread process took over {_CHILD_TIMEOUT:g} s") from None
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exit status {done.returncode}"
            if "__main__" in last:
                raise _Skip(
                    "the problem is defined in the script run as __main__, which a new "
                    "process cannot import: define it in a module beside the script and "
                    f"import it from there ({last})"
                )
            raise _Skip(f"the one-thread process failed: {last}")
        with np.load(io.BytesIO(done.stdout), allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}


def _threads(run: _Run) -> str:
    """This process's thread count as the engine's framework reports it, else the cores
    its pools would use."""
    threads = run.engine.describe().get("threads") or os.cpu_count() or 1
    return f"{threads} thread{'s' * (threads != 1)}"


def _compared(name: str, against: str, plain: Values, varied: Values, unit: str) -> Variation:
    """How far each quantity of ``varied`` is from ``plain``'s (those both have, of one
    shape), in ulps of ``unit`` and in rho."""
    ulps, rhos = {}, {}
    for quantity, value in plain.items():
        other = varied.get(quantity)
        if other is None:
            continue  # a point the variation does not reach (mini-batches reach their own)
        if np.shape(other) != np.shape(value):
            # A fit that stopped at another step (diverged in one precision): its path
            # differs in length, which is as far apart as two paths can be.
            ulps[quantity], rhos[quantity] = np.inf, np.inf
            continue
        ulps[quantity], rhos[quantity] = _distance(value, other, unit)
    if not ulps:
        raise _Skip("no quantity in common with the plain run", against)
    status = (
        "bitwise"
        if all(u == 0 for u in ulps.values()) and _same_bits(plain, varied, ulps)
        else "differs"
    )
    return Variation(name, against, status, "", unit, ulps, rhos)


def _same_bits(plain: Values, varied: Values, compared: Mapping[str, float]) -> bool:
    """Whether every compared quantity is equal to the bit (0 ulps apart but for the sign of
    a zero, or a NaN's payload)."""
    return all(
        np.array_equal(np.asarray(plain[q]), np.asarray(varied[q]), equal_nan=True)
        for q in compared
    )


def _distance(a: np.ndarray, b: np.ndarray, unit: str) -> tuple[float, float]:
    """The largest difference between ``a`` and ``b``, in ulps of ``unit`` at the quantity's
    largest magnitude, and in rho; a non-finite element counts as 0 where both are the same,
    else ``inf``.

    Why at the largest magnitude: a gradient element that is round-off away from zero (a
    bias at the optimum) differs by ~1e16 of its own ulps while it differs by one of the
    vector's; an element's own ulps measure how it was computed, not how far it moved.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    with np.errstate(all="ignore"):
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        finite = np.isfinite(a) & np.isfinite(b)
        scale = np.max(np.where(finite, np.maximum(np.abs(a), np.abs(b)), 0.0))
        # A float64 value beyond float32's range is counted in float32's largest ulps
        # (just below the largest: the spacing above the largest finite value is inf)
        largest = np.nextafter(np.finfo(unit).max, 0, dtype=unit)
        spacing = float(
            np.spacing(np.minimum(np.array(scale, dtype=np.float64), largest).astype(unit))
        )
        ulps = np.where(same, 0.0, np.where(finite, np.abs(a - b) / spacing, np.inf))
        rhos = np.where(same, 0.0, np.where(finite, rho(a, b), np.inf))
    return float(ulps.max()), float(rhos.max())


def _measure(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
    optimizer: Any,
    steps: int,
    taps: bool,
) -> Values:
    """The quantities an audit compares, from one engine: loss, gradient, tapped points'
    values and cotangents, and a short fit's losses and final parameters."""
    values: Values = {}
    forward: dict[str, np.ndarray] = {}
    backward: dict[str, np.ndarray] = {}
    if taps:
        seen = _observe(engine, problem, data, params, dtype)
        values["loss"] = np.asarray(seen.loss, dtype=np.float64)
        grads = seen.grads or {}
        forward, backward = seen.forward, seen.backward or {}
    else:
        loss, grads = evaluate(engine, problem, data, dict(params), dtype)
        values["loss"] = np.asarray(loss, dtype=np.float64)
    values.update({f"gradient {name}": np.asarray(g) for name, g in grads.items()})
    values.update({f"forward {name}": np.asarray(v) for name, v in forward.items()})
    values.update({f"backward {name}": np.asarray(v) for name, v in backward.items()})
    if steps:
        from gradlab.fitting._fit import fit

        result = fit(
            problem,
            data,
            engine=engine,
            optimizer=optimizer,
            steps=steps,
            init=dict(params),
            dtype=dtype,
        )
        values["fit losses"] = np.asarray(result.losses, dtype=np.float64)
        # The fit ran on the flat problem from the flat start: its parameters come back
        # keyed as they went in (flattening them again would quote the keys twice).
        values.update({f"fit {name}": np.asarray(result.params[name]) for name in params})
    return values


class _Accumulated(AbstractProblem, Keyed):
    """``problem``'s loss as the sum of its mini-batches' losses (each weighted by its share
    of the rows for a mean): what gradient accumulation differentiates."""

    probe = False

    def __init__(
        self, problem: AbstractProblem, bounds: tuple[tuple[int, int], ...], rows: int
    ) -> None:
        self.problem = problem
        self.name = problem.name
        self.reduction = problem.reduction
        self.bounds = bounds
        self.shares = tuple(
            (stop - start) / rows if problem.reduction == "mean" else 1.0 for start, stop in bounds
        )
        self.has_hand_gradient = problem.has_hand_gradient
        self.fingerprint = ("accumulated", key(problem)[1], bounds)

    @classmethod
    def of(
        cls, problem: AbstractProblem, data: Mapping[str, np.ndarray], batches: int
    ) -> _Accumulated:
        """The accumulated view, or ``_Skip`` saying why the problem's rows cannot split."""
        from gradlab.engines.parallel._common import shard_bounds

        if problem.reduction is None:
            raise _Skip(
                "the problem declares no reduction: its loss may not be a mean or sum over rows"
            )
        counts = {int(np.shape(value)[0]) if np.ndim(value) else 0 for value in data.values()}
        if len(counts) != 1 or 0 in counts:
            raise _Skip("its data are not arrays with one number of rows to split")
        rows = counts.pop()
        if rows < batches:
            raise _Skip(f"its data have {rows} rows, fewer than {batches} mini-batches")
        return cls(problem, tuple(shard_bounds(rows, batches)), rows)

    def check_namespace(self, xp: Any) -> None:
        self.problem.check_namespace(xp)

    def loss(self, params: Mapping[str, Any], data: Mapping[str, Any], xp: Any) -> Any:
        total = None
        for (start, stop), weight in zip(self.bounds, self.shares, strict=True):
            part = self.problem.loss(params, _rows(data, start, stop), xp)
            term = part * weight if weight != 1.0 else part
            total = term if total is None else total + term
        return total

    def hand_value_and_grad(self, params: Mapping[str, Any], data: Mapping[str, Any]) -> Any:
        total, grads = 0.0, {name: 0.0 for name in params}
        for (start, stop), weight in zip(self.bounds, self.shares, strict=True):
            value, part = self.problem.hand_value_and_grad(params, _rows(data, start, stop))
            total = total + weight * value
            grads = {name: grads[name] + weight * part[name] for name in params}
        return total, grads


def _rows(data: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {name: value[start:stop] for name, value in data.items()}


def _gpu_engine(engine: GradientEngine, framework: str) -> tuple[GradientEngine, str]:
    """The engine built on a GPU, or ``_Skip`` when there is none (or it cannot move)."""
    if framework == "torch":
        torch = __import__("torch")
        if torch.cuda.is_available():
            with contextlib.suppress(GradlabError, TypeError):
                return get_engine(engine.name, device="cuda"), "cuda"
    elif framework == "jax":
        jax = __import__("jax")
        with contextlib.suppress(RuntimeError):
            if jax.devices("gpu"):
                with contextlib.suppress(GradlabError, TypeError):
                    return get_engine(engine.name, device="gpu"), "gpu"
    raise _Skip("no GPU this engine can use on this machine")


def _child() -> None:
    """The one-thread process: read the payload the parent pickled, measure, and write the
    quantities to standard output as an ``.npz``."""
    # The payload comes from the parent, through a pipe only it holds.
    header, fixed = pickle.loads(sys.stdin.buffer.read())
    name, framework, dtype, steps, by_path = header
    for module_name, path in by_path.items():
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    problem, data, params, optimizer = pickle.loads(fixed)
    if framework == "torch":
        __import__("torch").set_num_threads(1)
    run = _Run(get_engine(name), dtype, problem, data, params, optimizer, steps)
    values = run.measure()
    buffer = io.BytesIO()
    np.savez(buffer, **values)  # type: ignore[arg-type]  # numpy's stub types allow_pickle
    sys.stdout.buffer.write(buffer.getvalue())


def _variations(variations: object) -> tuple[str, ...]:
    if variations is None:
        return tuple(VARIATIONS)
    given = variations
    if isinstance(variations, str):
        variations = [part.strip() for part in variations.split(",") if part.strip()]
    if not isinstance(variations, (list, tuple)) or not variations:
        raise ArgumentTypeError(
            "variations", f"must be names from {', '.join(VARIATIONS)}, got {given!r}"
        )
    for name in variations:
        if name not in VARIATIONS:
            raise ArgumentError(
                "variations", f"has {name!r}; the variations are {', '.join(VARIATIONS)}"
            )
    return tuple(dict.fromkeys(variations))


def _default_data(problem: object, seed: int) -> Any:
    make = getattr(problem, "make_data", None)
    if make is None:
        return {}
    try:
        return make(100, seed=seed)
    except NotSupported:
        return {}


def _ulps(value: float) -> str:
    if not np.isfinite(value):
        return "inf"
    if value < 10:  # a correctly rounded float32 of a float64 value is under half an ulp off
        return f"{value:.2g}"
    return f"{value:.0f}" if value < 1e4 else f"{value:.1e}"


def _cell(variation: Variation, quantity: str) -> str:
    if quantity not in variation.ulps:
        return "—"
    value = variation.ulps[quantity]
    return "=" if value == 0 else _ulps(value)
