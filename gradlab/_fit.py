"""gradlab's one gradient-descent loop, and what it returns."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gradlab._checks import check_bool, check_dtype, check_params, check_positive_int
from gradlab._errors import ArgumentTypeError, GradlabError
from gradlab._output import Record, jsonable
from gradlab._provenance import provenance
from gradlab.engines._protocol import Carry, Data, GradientEngine, ValueAndGrad
from gradlab.engines._registry import get_engine
from gradlab.optimizers import GradientTransformation, apply_updates
from gradlab.problems._base import AbstractProblem

Status = Literal["completed", "diverged"]


@dataclass(frozen=True)
class FitResult(Record):
    """The outcome of :func:`fit`.

    Attributes:
        params: Final parameters, as NumPy arrays of the run's dtype. When the fit diverged
            at step k, the parameters after k updates: the point whose loss or gradient was
            first non-finite.
        losses: The loss at every step, *before* that step's update (as in the seed), as a
            NumPy array of the run's dtype: length ``steps``, or k when the fit diverged at
            step k (only the finite losses before it).
        engine: The engine's name.
        dtype: ``"float32"`` or ``"float64"``.
        status: ``"completed"``, or ``"diverged"`` when a loss or gradient became non-finite.
        diverged_at: The index of the first step whose loss or gradient was non-finite, or
            ``None``.
        steps: The number of steps asked for.
        wall_time: Seconds from the start of the loop to the results being on the host,
            including any compilation the engine does on first use.
        problem: The problem's name.
        provenance: Versions, machine, threads, device, precision mode and time of the run.
        trajectory: With ``fit(..., trajectory=True)``, the parameters at every step: for
            each name an array of shape ``(len(losses) + 1, *shape)`` whose row k is the
            point after k updates (row 0 the start, the last row ``params``); else ``None``.
    """

    params: dict[str, np.ndarray]
    losses: np.ndarray
    engine: str
    dtype: str
    status: Status
    diverged_at: int | None
    steps: int
    wall_time: float
    problem: str
    provenance: dict[str, Any] = field(repr=False)
    trajectory: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the fit ran all its steps with finite losses and gradients."""
        return self.status == "completed"

    @property
    def time_per_step(self) -> float:
        """Wall time divided by the number of steps run."""
        return self.wall_time / max(1, len(self.losses))

    @property
    def final_loss(self) -> float:
        """The last recorded loss (before the last update), or NaN if none was recorded."""
        return float(self.losses[-1]) if len(self.losses) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record: every field, arrays as lists (trajectory if recorded)."""
        record: dict[str, Any] = jsonable(
            {
                "problem": self.problem,
                "engine": self.engine,
                "dtype": self.dtype,
                "status": self.status,
                "diverged_at": self.diverged_at,
                "steps": self.steps,
                "params": self.params,
                "final_loss": self.final_loss,
                "losses": self.losses,
                "wall_time": self.wall_time,
                "time_per_step": self.time_per_step,
                "trajectory": self.trajectory,
                "provenance": self.provenance,
            }
        )
        return record

    def __repr__(self) -> str:
        params = ", ".join(
            f"{name}={np.array2string(value, precision=6)}" for name, value in self.params.items()
        )
        where = f" at step {self.diverged_at}" if self.diverged_at is not None else ""
        return (
            f"FitResult({self.problem} on {self.engine!r}, {self.dtype}, {self.status}{where}: "
            f"{params}, final loss {self.final_loss:.6g}, {len(self.losses)} steps "
            f"in {self.wall_time:.3g} s)"
        )


@dataclass(frozen=True)
class _Step:
    """The body of the loop: one gradient evaluation and one optimizer update.

    Engines run it (``GradientEngine.run``); it never asks which engine it is on. It is a
    hashable value so that engines which compile it (jax) can cache the compiled loop.
    """

    value_and_grad: ValueAndGrad
    optimizer: GradientTransformation
    xp: Any
    check_gradients: bool = False
    #: Parameters to record at every step (before its update), in this order.
    record: tuple[str, ...] = ()

    def __call__(self, carry: Carry, data: Data) -> tuple[Carry, tuple[Any, ...]]:
        params, state = carry
        loss, grads = self.value_and_grad(params, data)
        updates, state = self.optimizer.update(grads, state, params)
        out: tuple[Any, ...] = (loss,)
        if self.check_gradients:
            # 0 when every gradient element is finite, NaN otherwise (inf·0 and NaN·0 are NaN).
            out += (sum(self.xp.sum(g * 0) for g in grads.values()),)
        out += tuple(params[name] for name in self.record)
        return (apply_updates(params, updates), state), out


def fit(
    problem: AbstractProblem,
    data: Mapping[str, Any],
    *,
    engine: str | GradientEngine,
    optimizer: GradientTransformation,
    steps: int,
    init: Mapping[str, Any],
    dtype: str = "float64",
    trajectory: bool = False,
) -> FitResult:
    """Minimise ``problem`` on ``data`` by gradient descent on one engine.

    There is one loop for every engine: at each step the engine's gradient function gives
    ``(loss, grads)``, the optimizer turns them into updates, and the updates are added to
    the parameters. The engine decides only how that loop *runs* (a Python loop; one
    compiled ``lax.scan`` on jax). Losses stay on the engine until the end, so no step waits
    for the host.

    A non-finite loss or gradient ends the fit with status ``"diverged"``; the step is
    located exactly by replaying the fit with gradient checks, which costs time only when
    something went wrong.

    Args:
        problem: What to minimise (:class:`Quadratic`, :class:`Problem`, ...).
        data: Mapping from name to array, as the problem expects (``{"x": ..., "y": ...}``).
            Copied and checked, never modified.
        engine: An engine name (``"numpy"``, ``"torch"``, ``"jax"``, ``"fd"``, ...) or an
            engine object.
        optimizer: A :class:`GradientTransformation` (:func:`sgd`, :func:`momentum`,
            :func:`adam`).
        steps: How many steps to take, a positive integer.
        init: Starting parameters, a mapping from name to array. Copied, never modified.
        dtype: ``"float32"`` or ``"float64"``: the precision of data, parameters and gradients.
        trajectory: Also keep the parameters at every step (``FitResult.trajectory``); they
            stay on the engine until the end, like the losses. Costs memory steps × size.

    Returns:
        A :class:`FitResult`.

    Raises:
        ArgumentError: bad data, init, steps or dtype; an unknown engine (``UnknownEngine``).
        EngineUnavailable: the engine's framework is not installed.
        HandGradientMissing: engine ``"numpy"`` on a problem without a hand gradient.

    Example:
        >>> import gradlab
        >>> problem = gradlab.Quadratic()
        >>> data = problem.make_data(100, seed=0)
        >>> result = gradlab.fit(problem, data, engine="numpy", optimizer=gradlab.sgd(1e-3),
        ...                      steps=800, init={"w": 0.0, "b": 0.0})
        >>> result.status, len(result.losses)
        ('completed', 800)
        >>> round(float(result.params["w"]), 1), round(float(result.params["b"]), 1)
        (3.0, 2.1)
    """
    if not isinstance(optimizer, GradientTransformation):
        raise ArgumentTypeError(
            "optimizer",
            f"must be a GradientTransformation (gradlab.sgd(...), ...), got {optimizer!r}",
        )
    steps = check_positive_int(steps, "steps")
    engine, dtype, checked_data, start_params = prepare(problem, data, init, engine, dtype)
    record = tuple(start_params) if check_bool(trajectory, "trajectory") else ()

    # Overflow on the way to divergence is reported through the status, not as warnings.
    with np.errstate(all="ignore"):
        value_and_grad = engine.value_and_grad(problem)
        batch = on_engine(engine, checked_data, dtype)
        params = on_engine(engine, start_params, dtype)
        # The optimizer's state is made from NumPy parameters and moved like them, so that no
        # framework arithmetic happens outside the engine (jax's 64-bit mode is scoped to it).
        carry = (params, _to_engine(optimizer.init(start_params), engine, dtype))

        start = time.perf_counter()
        (last, _), (losses, *path) = engine.run(
            _Step(value_and_grad, optimizer, engine.xp, record=record), carry, batch, steps
        )
        loss_history = engine.to_numpy(losses)
        final = {name: engine.to_numpy(last[name]) for name in start_params}
        visited = {name: engine.to_numpy(value) for name, value in zip(record, path, strict=True)}
        wall_time = time.perf_counter() - start

        diverged_at = None
        if not (_finite(loss_history) and all(map(_finite, final.values()))):
            diverged_at, loss_history, final = _locate_divergence(
                engine, _Step(value_and_grad, optimizer, engine.xp, True), carry, batch, steps
            )

    check_dtypes(engine, dtype, {"loss": loss_history, **final})
    # The path: the point before each step that ran, then where the fit ended.
    kept = len(loss_history)
    path_arrays = (
        {name: np.concatenate([visited[name][:kept], final[name][None]]) for name in record}
        if record
        else None
    )
    return FitResult(
        params=final,
        losses=loss_history,
        engine=engine.name,
        dtype=dtype,
        status="completed" if diverged_at is None else "diverged",
        diverged_at=diverged_at,
        steps=steps,
        wall_time=wall_time,
        problem=problem.name,
        provenance=provenance(engine.describe(), dtype),
        trajectory=path_arrays,
    )


def prepare(
    problem: object,
    data: object,
    params: object,
    engine: object,
    dtype: object,
    params_argument: str = "init",
) -> tuple[GradientEngine, str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Check the arguments every entry point shares; return the engine, dtype and copies.

    Also evaluates the loss once in NumPy, so that a loss that is not a scalar is refused
    with a clear message before any framework traces it.
    """
    if not isinstance(problem, AbstractProblem):
        raise ArgumentTypeError(
            "problem", f"must be a gradlab problem (AbstractProblem), got {type(problem).__name__}"
        )
    checked_dtype = check_dtype(dtype)
    checked_engine = get_engine(engine)  # type: ignore[arg-type]
    checked_data = problem.check_data(data)
    checked_params = check_params(params, problem.param_shapes(checked_data), params_argument)
    with np.errstate(all="ignore"):
        shape = np.shape(problem.loss(checked_params, checked_data, np))
    if shape != ():
        raise GradlabError(
            f"problem {problem.name!r}: loss must return a scalar, got an array of shape {shape}"
        )
    return checked_engine, checked_dtype, checked_data, checked_params


def value_and_grad(
    problem: AbstractProblem,
    data: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Evaluate one engine's loss and gradient at ``params``, returned as NumPy arrays.

    Args:
        problem: The problem.
        data: Its data (copied, never modified).
        params: Where to evaluate, a mapping from name to array (copied, never modified).
        engine: An engine name or object.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        ``(loss, grads)``: a 0-d array and a dict with the keys and shapes of ``params``, in
        ``dtype``.

    Example:
        >>> import numpy as np, gradlab
        >>> data = {"x": np.array([0.0, 1.0, 2.0]), "y": np.array([1.0, 1.0, 1.0])}
        >>> loss, grads = gradlab.value_and_grad(
        ...     gradlab.Quadratic(), data, {"w": 1.0, "b": 0.0}, engine="fd")
        >>> float(loss), round(float(grads["w"]), 9), round(float(grads["b"]), 9)
        (5.0, 12.0, 2.0)
    """
    engine, dtype, checked_data, checked_params = prepare(
        problem, data, params, engine, dtype, "params"
    )
    return evaluate(engine, problem, checked_data, checked_params, dtype)


def evaluate(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One engine's loss and gradient at checked NumPy ``params``, back as NumPy arrays."""
    with np.errstate(all="ignore"):
        function = engine.value_and_grad(problem)
        loss, grads = function(on_engine(engine, params, dtype), on_engine(engine, data, dtype))
        result = (engine.to_numpy(loss), {name: engine.to_numpy(grads[name]) for name in params})
    check_dtypes(engine, dtype, {"loss": result[0], **result[1]})
    return result


def on_engine(
    engine: GradientEngine, arrays: Mapping[str, np.ndarray], dtype: str
) -> dict[str, Any]:
    """Copies of named NumPy arrays as engine arrays of ``dtype``."""
    return {name: engine.asarray(value, dtype) for name, value in arrays.items()}


def _to_engine(tree: Any, engine: GradientEngine, dtype: str) -> Any:
    """Move every NumPy array in a nest of dicts, tuples and lists onto the engine."""
    if isinstance(tree, (np.ndarray, np.generic)):
        return engine.asarray(np.asarray(tree), dtype)
    if isinstance(tree, dict):
        return {key: _to_engine(value, engine, dtype) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple state
        return type(tree)(*(_to_engine(value, engine, dtype) for value in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_engine(value, engine, dtype) for value in tree)
    return tree  # Python numbers (a step count) and None stay as they are


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())  # the method: a third of np.all's overhead


def _locate_divergence(
    engine: GradientEngine, checked: _Step, carry: Carry, batch: Data, steps: int
) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """Replay a failed fit with gradient checks; return (step, finite losses, params there)."""
    _, (losses, probes) = engine.run(checked, carry, batch, steps)
    losses, probes = engine.to_numpy(losses), engine.to_numpy(probes)
    bad = ~(np.isfinite(losses) & np.isfinite(probes))
    # No bad loss or gradient: the last update itself overflowed the parameters.
    step = int(np.argmax(bad)) if bad.any() else steps
    params = carry[0]
    if step > 0:
        unchecked = _Step(checked.value_and_grad, checked.optimizer, checked.xp)
        (params, _), _ = engine.run(unchecked, carry, batch, step)
    return step, losses[:step], {name: engine.to_numpy(params[name]) for name in carry[0]}


def check_dtypes(engine: GradientEngine, dtype: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Never report numbers in a precision other than the one asked for."""
    for what, array in arrays.items():
        if np.asarray(array).dtype != np.dtype(dtype):
            raise GradlabError(
                f"engine {engine.name!r} returned {what} as {np.asarray(array).dtype}, "
                f"but {dtype} was asked for"
            )
