"""gradlab's one gradient-descent loop, and what it returns."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gradlab._checks import (
    check_bool,
    check_dtype,
    check_float,
    check_int,
    check_params,
    check_positive_int,
)
from gradlab._errors import ArgumentError, ArgumentTypeError, GradlabError
from gradlab._output import Record, jsonable
from gradlab._provenance import provenance
from gradlab._tree import tree_map
from gradlab.engines._protocol import Carry, Data, GradientEngine, ValueAndGrad
from gradlab.engines._registry import get_engine
from gradlab.optimizers import GradientTransformation, apply_updates
from gradlab.problems._base import AbstractProblem

Status = Literal["completed", "converged", "stopped", "diverged"]
#: The data key that carries the mini-batch order into the loop body (never a problem's).
_ORDER = "__gradlab_batch_order__"


@dataclass(frozen=True)
class FitResult(Record):
    """The outcome of [`fit`][gradlab.fit].

    Attributes:
        params: Final parameters, as NumPy arrays of the run's dtype. When the fit diverged
            at step k, the parameters after k updates: the point whose loss or gradient was
            first non-finite.
        losses: The loss at every step, *before* that step's update (as in the seed), as a
            NumPy array of the run's dtype: length ``steps``, or k when the fit diverged at
            step k (only the finite losses before it).
        engine: The engine's name.
        dtype: ``"float32"`` or ``"float64"``.
        status: ``"completed"`` (every step ran), ``"converged"`` (a [`Stop`][gradlab.Stop] rule was
            met), ``"stopped"`` (the callback asked to stop), or ``"diverged"`` (a loss or
            gradient became non-finite).
        diverged_at: The index of the first step whose loss or gradient was non-finite, or
            ``None``.
        steps: The number of steps asked for.
        wall_time: Seconds from the start of the loop to the results being on the host,
            including any compilation the engine does on first use.
        problem: The problem's name.
        provenance: Versions, machine, threads, device, precision mode and time of the run.
        trajectory: With ``fit(..., trajectory=True)``, the parameters at every step: for
            each name an array of shape ``(updates + 1, *shape)`` whose row k is the point
            after k updates of this call (row 0 the start, the last row ``params``); else
            ``None``.
        stop_reason: Why the fit ended: ``"steps"``, ``"loss"``, ``"grad_norm"``,
            ``"patience"`` (the [`Stop`][gradlab.Stop] rules), ``"callback"`` or ``"diverged"``.
        state: The optimizer's state at ``params``, as NumPy arrays: with ``params`` and
            ``step`` what ``fit(..., resume=result)`` continues from.
        step: Updates taken in total, counting those of the fits this one resumed.

    When a [`Stop`][gradlab.Stop] rule is met by the loss or gradient at the point after k updates,
    the fit ends there: ``params`` is that point, and ``losses`` has k + 1 entries, the last
    being the loss that met the rule (``final_loss``).
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
    stop_reason: str = "steps"
    state: Any = field(default=None, repr=False)
    step: int = 0

    @property
    def ok(self) -> bool:
        """Whether the fit ended without diverging (all steps run, or a rule met)."""
        return self.status != "diverged"

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
                "stop_reason": self.stop_reason,
                "step": self.step,
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
class Stop:
    """Rules that end a fit early; each is checked at every step, ``None`` switches it off.

    Args:
        loss: Stop at the first point whose loss is at most this.
        grad_norm: Stop at the first point whose gradient's global norm is at most this.
        patience: Stop when the loss has not improved on its best by more than
            ``min_delta`` for this many steps.
        min_delta: The improvement that counts for ``patience`` (≥ 0).
        check_every: Steps run between checks on the host; the stop is still exact to the
            step (the last stretch is replayed). Compiled engines run each stretch as one
            program. Default: 100.

    Examples:
        >>> import gradlab
        >>> recipe = gradlab.recipes.seed_numpy()
        >>> result = gradlab.fit(recipe.problem, recipe.data, engine="numpy",
        ...                      optimizer=recipe.optimizer, steps=800, init=recipe.init,
        ...                      stop=gradlab.Stop(loss=0.2))
        >>> result.status, result.stop_reason, result.final_loss <= 0.2
        ('converged', 'loss', True)
    """

    loss: float | None = None
    grad_norm: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    check_every: int = 100

    def __post_init__(self) -> None:
        for name in ("loss", "grad_norm"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_float(value, name, 0.0))
        if self.patience is not None:
            object.__setattr__(self, "patience", check_positive_int(self.patience, "patience"))
        object.__setattr__(self, "min_delta", check_float(self.min_delta, "min_delta", 0.0))
        object.__setattr__(self, "check_every", check_positive_int(self.check_every, "check_every"))


@dataclass(frozen=True)
class _Step:
    """The body of the loop: one gradient evaluation and one optimizer update.

    Engines run it (``GradientEngine.run``); it never asks which engine it is on. It is a
    hashable value so that engines which compile it (jax) can cache the compiled loop.

    Outputs per step, in order: the loss; with ``check_gradients`` a probe that is NaN when
    a gradient element is not finite; with ``grad_norms`` the gradient's squared global
    norm; then the recorded parameters. With ``batched`` the carry ends with the position
    in the mini-batch order, and the step takes its rows of the data.
    """

    value_and_grad: ValueAndGrad
    optimizer: GradientTransformation
    xp: Any
    check_gradients: bool = False
    #: Parameters to record at every step (before its update), in this order.
    record: tuple[str, ...] = ()
    grad_norms: bool = False
    batched: bool = False

    def __call__(self, carry: Carry, data: Data) -> tuple[Carry, tuple[Any, ...]]:
        params, state = carry[0], carry[1]
        if self.batched:
            position = carry[2]
            index = position if isinstance(position, int) else self.xp.astype(position, int)
            # The order is carried as floats (engines hold float arrays); rows are exact.
            rows = self.xp.astype(data[_ORDER][index], int)
            data = {name: value[rows] for name, value in data.items() if name != _ORDER}
        loss, grads = self.value_and_grad(params, data)
        updates, state = self.optimizer.update(grads, state, params)
        out: tuple[Any, ...] = (loss,)
        if self.check_gradients:
            # 0 when every gradient element is finite, NaN otherwise (inf·0 and NaN·0 are NaN).
            out += (sum(self.xp.sum(g * 0) for g in grads.values()),)
        if self.grad_norms:
            out += (sum(self.xp.sum(g * g) for g in grads.values()),)
        out += tuple(params[name] for name in self.record)
        new_carry: tuple[Any, ...] = (apply_updates(params, updates), state)
        if self.batched:
            new_carry += (carry[2] + 1,)
        return new_carry, out


Callback = Callable[[int, float, dict[str, np.ndarray]], Any]


def fit(
    problem: AbstractProblem,
    data: Mapping[str, Any],
    *,
    engine: str | GradientEngine,
    optimizer: GradientTransformation,
    steps: int,
    init: Mapping[str, Any] | None = None,
    dtype: str = "float64",
    trajectory: bool = False,
    batch_size: int | None = None,
    seed: int = 0,
    stop: Stop | None = None,
    callback: Callback | None = None,
    every: int = 100,
    resume: FitResult | None = None,
) -> FitResult:
    """Minimise ``problem`` on ``data`` by gradient descent on one engine.

    There is one loop for every engine: at each step the engine's gradient function gives
    ``(loss, grads)``, the optimizer turns them into updates, and the updates are added to
    the parameters. The engine decides only how that loop *runs* (a Python loop; one
    compiled ``lax.scan`` on jax). Losses stay on the engine until the end (or the end of
    each stretch of ``every`` or ``stop.check_every`` steps), so no step waits for the host.

    A non-finite loss or gradient ends the fit with status ``"diverged"``; the step is
    located exactly by replaying the fit with gradient checks, which costs time only when
    something went wrong.

    Args:
        problem: What to minimise ([`Quadratic`][gradlab.Quadratic], [`Problem`][gradlab.Problem],
            ...).
        data: Mapping from name to array, as the problem expects (``{"x": ..., "y": ...}``).
            Copied and checked, never modified.
        engine: An engine name (``"numpy"``, ``"torch"``, ``"jax"``, ``"fd"``, ...) or an
            engine object.
        optimizer: A [`GradientTransformation`][gradlab.GradientTransformation]
            ([`sgd`][gradlab.sgd], [`adam`][gradlab.adam], ...).
        steps: How many steps to take, a positive integer.
        init: Starting parameters, a mapping from name to array. Copied, never modified.
            Not with ``resume``.
        dtype: ``"float32"`` or ``"float64"``: the precision of data, parameters and gradients.
        trajectory: Also keep the parameters at every step (``FitResult.trajectory``); they
            stay on the engine until the end, like the losses. Costs memory steps × size.
        batch_size: Mini-batches of this many samples (rows of every data array), in an
            order shuffled afresh each epoch from ``seed``: the same batches in the same
            order on every engine. An epoch is ⌊n / batch_size⌋ batches (the remainder
            waits for the next epoch's shuffle). ``None``: the full batch, as in the seed.
        seed: Seed of the mini-batch order.
        stop: Rules that end the fit early ([`Stop`][gradlab.Stop]); ``FitResult.stop_reason`` says
            which.
        callback: ``callback(step, loss, params)`` after every ``every`` steps (the last
            stretch may be shorter), with the number of updates so far (``FitResult.step``),
            the latest loss and NumPy copies of the parameters; return ``True`` to stop the
            fit there. Compiled engines run the ``every`` steps in between as one program.
        every: Steps between callbacks, a positive integer.
        resume: A [`FitResult`][gradlab.FitResult] to continue from: its parameters, optimizer state
            and step count (schedules and the mini-batch order carry on). A resumed fit of k steps
            ends where one uninterrupted fit with k more steps does.

    Returns:
        A [`FitResult`][gradlab.FitResult].

    Raises:
        ArgumentError: bad data, init, steps, dtype, batch_size, stop or resume; an unknown
            engine (``UnknownEngine``).
        EngineUnavailable: the engine's framework is not installed.
        HandGradientMissing: engine ``"numpy"`` on a problem without a hand gradient.

    Examples:
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
    every = check_positive_int(every, "every")
    if stop is not None and not isinstance(stop, Stop):
        raise ArgumentTypeError("stop", f"must be a gradlab.Stop, got {stop!r}")
    if callback is not None and not callable(callback):
        raise ArgumentTypeError("callback", f"must be callable, got {callback!r}")
    start_state, first_step = None, 0
    if resume is not None:
        if init is not None:
            raise ArgumentError("init", "cannot be given with resume (the fit continues there)")
        if not isinstance(resume, FitResult) or resume.state is None:
            raise ArgumentTypeError(
                "resume", f"must be a FitResult from gradlab.fit, got {resume!r}"
            )
        init, start_state, first_step = resume.params, resume.state, resume.step
    elif init is None:
        raise ArgumentError("init", "is required (or resume=, to continue a fit)")
    engine, dtype, checked_data, start_params = prepare(problem, data, init, engine, dtype)
    record = tuple(start_params) if check_bool(trajectory, "trajectory") else ()
    order = _batch_order(checked_data, batch_size, seed, first_step, steps, dtype)
    if start_state is None:
        start_state = optimizer.init(start_params)
    else:
        _check_state(start_state, optimizer.init(start_params))

    # Overflow on the way to divergence is reported through the status, not as warnings.
    with np.errstate(all="ignore"):
        value_and_grad = engine.value_and_grad(problem)
        if order is not None:
            checked_data = {**checked_data, _ORDER: order.astype(np.float64)}
        batch = on_engine(engine, checked_data, dtype)
        params = on_engine(engine, start_params, dtype)
        # The optimizer's state is made from NumPy parameters and moved like them, so that no
        # framework arithmetic happens outside the engine (jax's 64-bit mode is scoped to it).
        carry: tuple[Any, ...] = (params, _to_engine(start_state, engine, dtype))
        if order is not None:
            carry += (0,)
        body = _Step(
            value_and_grad,
            optimizer,
            engine.xp,
            record=record,
            grad_norms=stop is not None and stop.grad_norm is not None,
            batched=order is not None,
        )
        stretch = steps
        if callback is not None:
            stretch = min(stretch, every)
        if stop is not None:
            stretch = min(stretch, stop.check_every)
        run = _Run(engine, body, batch, record, stop, tuple(start_params))
        start = time.perf_counter()
        done = 0
        while done < steps and run.reason is None:
            length = min(stretch, steps - done)
            carry = run.stretch(carry, length, done)
            done = run.updates
            asked = (
                callback is not None
                and run.reason is None
                and callback(first_step + done, run.last_loss, run.host_params(carry)) is True
            )
            if asked:
                run.reason = "callback"
        loss_history, final, visited = run.results(carry)
        wall_time = time.perf_counter() - start

    check_dtypes(engine, dtype, {"loss": loss_history, **final})
    path_arrays = (
        {name: np.concatenate([visited[name], final[name][None]]) for name in record}
        if record
        else None
    )
    reason = run.reason or "steps"
    status: Status = {
        "diverged": "diverged",
        "callback": "stopped",
        "steps": "completed",
    }.get(reason, "converged")  # type: ignore[assignment]
    return FitResult(
        params=final,
        losses=loss_history,
        engine=engine.name,
        dtype=dtype,
        status=status,
        diverged_at=run.diverged_at,
        steps=steps,
        wall_time=wall_time,
        problem=problem.name,
        provenance=provenance(engine.describe(), dtype),
        trajectory=path_arrays,
        stop_reason=reason,
        state=_to_numpy_tree(carry[1], engine),
        step=first_step + run.updates,
    )


class _Run:
    """A fit in stretches: runs each, checks it on the host, and ends it where it must."""

    def __init__(
        self,
        engine: GradientEngine,
        body: _Step,
        batch: Data,
        record: tuple[str, ...],
        stop: Stop | None,
        names: tuple[str, ...],
    ) -> None:
        self.engine, self.body, self.batch, self.record, self.stop = (
            engine,
            body,
            batch,
            record,
            stop,
        )
        self.names = names
        self.losses: list[np.ndarray] = []
        self.visited: dict[str, list[np.ndarray]] = {name: [] for name in record}
        self.updates = 0
        self.reason: str | None = None
        self.diverged_at: int | None = None
        self.best = np.inf
        self.best_at = 0
        self.last_loss = float("nan")
        self._host: tuple[Carry, dict[str, np.ndarray]] | None = None

    def stretch(self, carry: Carry, length: int, done: int) -> Carry:
        """Run ``length`` steps from ``carry``; return the carry where this stretch ends."""
        engine = self.engine
        end, outputs = engine.run(self.body, carry, self.batch, length)
        losses = engine.to_numpy(outputs[0])
        norms = engine.to_numpy(outputs[1]) if self.body.grad_norms else None
        path = outputs[2:] if self.body.grad_norms else outputs[1:]
        params_end = {name: engine.to_numpy(end[0][name]) for name in self.names}
        if not (_finite(losses) and all(map(_finite, params_end.values()))):
            checked = dataclasses.replace(
                self.body, check_gradients=True, record=(), grad_norms=False
            )
            at = _locate_divergence(engine, checked, carry, self.batch, length)
            self.diverged_at = done + at
            self.reason = "diverged"
            return self._cut(carry, losses, path, at, at)
        hit = self._rule(losses, norms, done)
        if hit is not None:
            # Stop at the point after `hit` updates of this stretch: its loss is kept.
            return self._cut(carry, losses, path, hit, hit + 1)
        self._keep(losses, path, length)
        self.updates = done + length
        self.last_loss = float(losses[-1])
        self._host = (end, params_end)  # already on the host: not converted again at the end
        return end

    def _rule(self, losses: np.ndarray, norms: np.ndarray | None, done: int) -> int | None:
        """The first step of this stretch whose point meets a stop rule, if any."""
        stop = self.stop
        if stop is None:
            return None
        for j, loss in enumerate(losses):
            if stop.loss is not None and loss <= stop.loss:
                self.reason = "loss"
                return j
            if (
                norms is not None
                and stop.grad_norm is not None
                and norms[j] ** 0.5 <= stop.grad_norm
            ):
                self.reason = "grad_norm"
                return j
            if stop.patience is not None:
                if loss < self.best - stop.min_delta:
                    self.best, self.best_at = float(loss), done + j
                elif done + j - self.best_at >= stop.patience:
                    self.reason = "patience"
                    return j
        return None

    def _cut(self, carry: Carry, losses: np.ndarray, path: Any, updates: int, kept: int) -> Carry:
        """End the fit after ``updates`` updates of this stretch, keeping ``kept`` losses."""
        self._keep(losses, path, updates)
        self.losses[-1] = losses[:kept]
        plain = dataclasses.replace(self.body, record=(), grad_norms=False)
        if updates > 0:
            carry, _ = self.engine.run(plain, carry, self.batch, updates)
        self.updates += updates
        if kept:
            self.last_loss = float(losses[kept - 1])
        return carry

    def _keep(self, losses: np.ndarray, path: Any, count: int) -> None:
        self.losses.append(losses[:count])
        for name, values in zip(self.record, path, strict=True):
            self.visited[name].append(self.engine.to_numpy(values)[:count])

    def host_params(self, carry: Carry) -> dict[str, np.ndarray]:
        if self._host is not None and self._host[0] is carry:
            return {name: self._host[1][name].copy() for name in self.names}
        # By the caller's names, in the caller's order: jax hands dicts back with sorted keys.
        return {name: self.engine.to_numpy(carry[0][name]) for name in self.names}

    def results(
        self, carry: Carry
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        losses = np.concatenate(self.losses) if self.losses else np.zeros(0)
        visited = {
            name: np.concatenate(values) if values else np.zeros((0,))
            for name, values in self.visited.items()
        }
        return losses, self.host_params(carry), visited


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

    Examples:
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
    """Move every NumPy array in a nest of dicts, tuples and lists onto the engine.

    Python numbers (a step count) and None stay as they are.
    """

    def move(leaf: Any) -> Any:
        if isinstance(leaf, (np.ndarray, np.generic)):
            return engine.asarray(np.asarray(leaf), dtype)
        return leaf

    return tree_map(move, tree)


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())  # the method: a third of np.all's overhead


def _locate_divergence(
    engine: GradientEngine, checked: _Step, carry: Carry, batch: Data, steps: int
) -> int:
    """Replay a failed stretch with gradient checks; return the first bad step.

    ``steps`` when no loss or gradient was bad: the last update itself overflowed the
    parameters.
    """
    _, (losses, probes) = engine.run(checked, carry, batch, steps)
    bad = ~(np.isfinite(engine.to_numpy(losses)) & np.isfinite(engine.to_numpy(probes)))
    return int(np.argmax(bad)) if bad.any() else steps


def _batch_order(
    data: Mapping[str, np.ndarray],
    batch_size: int | None,
    seed: int,
    first: int,
    steps: int,
    dtype: str,
) -> np.ndarray | None:
    """The rows of each step's mini-batch, steps first … first + steps − 1 of the fit.

    Epoch e is a permutation of the n rows drawn from ``default_rng([seed, e])``, cut into
    ⌊n / batch_size⌋ batches: the order depends on the global step alone, so every engine,
    and a resumed fit, sees the same batches.
    """
    if batch_size is None:
        return None
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", 0)
    if not data:
        raise ArgumentError("batch_size", "this problem takes no data to batch")
    sizes = {name: np.shape(value)[0] if np.ndim(value) else 0 for name, value in data.items()}
    n = min(sizes.values())
    if len(set(sizes.values())) != 1:
        raise ArgumentError(
            "batch_size", f"the data arrays have different numbers of rows: {sizes}"
        )
    if batch_size > n:
        raise ArgumentError("batch_size", f"is {batch_size}, larger than the data's {n} rows")
    if dtype == "float32" and n > 2**24:
        # The order rides into the loop as an engine array of the run's dtype: float32 holds
        # row numbers exactly only up to 2²⁴.
        raise ArgumentError("batch_size", "float32 mini-batches need at most 2**24 rows")
    per_epoch = n // batch_size
    order = np.empty((steps, batch_size), dtype=np.int64)
    epochs: dict[int, np.ndarray] = {}
    for i in range(steps):
        epoch, position = divmod(first + i, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        order[i] = epochs[epoch][position * batch_size : (position + 1) * batch_size]
    return order


def _check_state(state: Any, expected: Any, where: str = "resume.state") -> None:
    """The resumed optimizer state must have the structure this optimizer makes."""
    if isinstance(expected, dict):
        if not isinstance(state, dict) or set(state) != set(expected):
            raise ArgumentError("resume", f"{where} does not match this optimizer's state")
        for key in expected:
            _check_state(state[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, tuple):
        if type(state) is not type(expected) or len(state) != len(expected):
            raise ArgumentError(
                "resume",
                f"{where} is a {type(state).__name__}, but this optimizer's state is a "
                f"{type(expected).__name__}: resume with the optimizer the fit ran with",
            )
        for index, (item, want) in enumerate(zip(state, expected, strict=True)):
            _check_state(item, want, f"{where}[{index}]")
    elif np.shape(state) != np.shape(expected):
        raise ArgumentError(
            "resume", f"{where} has shape {np.shape(state)}, expected {np.shape(expected)}"
        )


def _to_numpy_tree(tree: Any, engine: GradientEngine) -> Any:
    """The optimizer state back on the host: NumPy arrays; counts as Python ints."""

    def bring(leaf: Any) -> Any:
        if leaf is None or isinstance(leaf, (int, float)):
            return leaf
        array = engine.to_numpy(leaf)
        if array.ndim == 0 and not np.issubdtype(array.dtype, np.floating):
            return int(array)
        return array

    return tree_map(bring, tree)


def check_dtypes(engine: GradientEngine, dtype: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Never report numbers in a precision other than the one asked for."""
    for what, array in arrays.items():
        if np.asarray(array).dtype != np.dtype(dtype):
            raise GradlabError(
                f"engine {engine.name!r} returned {what} as {np.asarray(array).dtype}, "
                f"but {dtype} was asked for"
            )
