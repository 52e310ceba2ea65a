"""gradlab's one gradient-descent loop, and what it returns."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from gradlab import _output
from gradlab._boundary import (
    Prepared,
    calling,
    check_dtypes,
    check_optimizer,
    check_steps,
    check_transformation,
    check_value_and_grad,
    crosses,
    evaluate,
    on_engine_together,
    prepare,
    to_engine,
)
from gradlab._checks import check_bool, check_dtype, check_float, check_int, check_positive_int
from gradlab._errors import ArgumentError, ArgumentTypeError, ProblemError, naming
from gradlab._output import Record
from gradlab._provenance import provenance
from gradlab._tree import flatten, layout, leaves, rebuild, tree_map
from gradlab.comparison._baseline import BaselineComparison, fit_against
from gradlab.engines._numpy import read_only
from gradlab.engines._protocol import (
    BATCH_ORDER,
    Carry,
    Data,
    GradientEngine,
    ValueAndGrad,
    loop_xp_of,
    to_numpy_all_of,
    total_rows_of,
    value_and_grad_of,
)
from gradlab.fitting._optax import blame as blame_optax
from gradlab.fitting._optax import is_optax
from gradlab.fitting._optax import start_state as start_state_optax
from gradlab.optimizers import GradientTransformation, apply_updates
from gradlab.problems._base import AbstractProblem

Status = Literal["completed", "converged", "stopped", "diverged"]
_ORDER = BATCH_ORDER


@dataclass(frozen=True)
class FitResult(Record):
    """The outcome of [`fit`][gradlab.fit].

    Attributes:
        params: Final parameters, as NumPy arrays of the run's dtype, in the structure of
            ``init`` (a dict, or the nest of dicts, lists and tuples it was). When the fit diverged
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
            each parameter (in the structure of ``params``) an array of shape
            ``(updates + 1, *shape)`` whose row k is the point after k updates of this call
            (row 0 the start, the last row ``params``); else ``None``.
        stop_reason: Why the fit ended: ``"steps"``, ``"loss"``, ``"grad_norm"``,
            ``"patience"`` (the [`Stop`][gradlab.Stop] rules), ``"callback"`` or ``"diverged"``.
        state: The optimizer's state at ``params``, as NumPy arrays (its moments in the
            structure of ``params``): with ``params`` and
            ``step`` what ``fit(..., resume=result)`` continues from.
        step: Updates taken in total, counting those of the fits this one resumed.

    When a [`Stop`][gradlab.Stop] rule is met by the loss or gradient at the point after k updates,
    the fit ends there: ``params`` is that point, and ``losses`` has k + 1 entries, the last
    being the loss that met the rule (``final_loss``).
    """

    params: Any
    losses: np.ndarray
    engine: str
    dtype: str
    status: Status
    diverged_at: int | None
    steps: int
    wall_time: float
    problem: str
    provenance: dict[str, Any] = field(repr=False)
    trajectory: Any = field(default=None, repr=False)
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
        """A JSON-friendly record: every field, arrays as lists (trajectory if recorded), and
        the layout of ``params``; [`from_dict`][gradlab.FitResult.from_dict] rebuilds the
        result from it (without the optimizer state)."""
        return _output.stamp(
            self,
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
                "layout": layout(self.params),
                "final_loss": self.final_loss,
                "losses": self.losses,
                "wall_time": self.wall_time,
                "time_per_step": self.time_per_step,
                "trajectory": self.trajectory,
                "provenance": self.provenance,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FitResult:
        """Rebuild a result from [`to_dict`][gradlab.FitResult.to_dict] (or parsed
        ``to_json``, or ``gradlab fit --json``): parameters in their structure and dtype.

        The optimizer state is not saved, so a loaded result cannot be resumed
        (``fit(..., resume=...)`` needs the result ``fit`` returned).

        Raises:
            ArgumentError: ``record`` is not a saved fit result.
        """
        with _output.reading(cls, record) as saved:
            dtype = check_dtype(saved["dtype"], "record")
            shape = saved["layout"]

            def nest(value: Any) -> Any:
                return rebuild(shape, value, lambda leaf: _output.array(leaf, dtype))

            status = saved["status"]
            if status not in get_args(Status):
                raise ValueError(f"unknown status {status!r}")
            return cls(
                params=nest(saved["params"]),
                losses=_output.array(saved["losses"], dtype).reshape(-1),
                engine=str(saved["engine"]),
                dtype=dtype,
                status=status,
                diverged_at=_output.maybe(saved["diverged_at"], int),
                steps=int(saved["steps"]),
                wall_time=_output.number(saved["wall_time"]),
                problem=str(saved["problem"]),
                provenance=dict(saved["provenance"]),
                trajectory=_output.maybe(saved["trajectory"], nest),
                stop_reason=str(saved["stop_reason"]),
                step=int(saved["step"]),
            )

    def against(self, baseline: FitResult | str | os.PathLike[str]) -> BaselineComparison:
        """Whether this fit's path changed since ``baseline``, the same fit saved earlier:
        its losses step by step and its final parameters (and, when both recorded one, its
        trajectory), judged with gradlab's path tolerance for its engine and dtype. See
        [`FitComparison.against`][gradlab.FitComparison.against] for several engines.

        Args:
            baseline: The earlier result, or the path of its JSON (``save``, ``--json``).

        Raises:
            ArgumentError: ``baseline`` is not a saved fit result, or is of another problem,
                engine, dtype, start or number of steps.
        """
        return fit_against(self, baseline)

    def __repr__(self) -> str:
        params = ", ".join(
            f"{name}={np.array2string(value, precision=6)}"
            for name, value in flatten(self.params)[0].items()
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

    Its outputs per step are laid out by ``outputs`` and read back by ``read``, the one
    place that knows the layout: the loss; with ``check_gradients`` a probe that is NaN when
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
            # The order is carried as floats (engines hold float arrays); rows are exact. The
            # indices are int32: every namespace has it (MLX's and TensorFlow's take no
            # Python ``int`` as a dtype; jax's int64 needs its 64-bit mode).
            index = (
                position if isinstance(position, int) else self.xp.astype(position, self.xp.int32)
            )
            rows = self.xp.astype(data[_ORDER][index], self.xp.int32)
            data = {name: value[rows] for name, value in data.items() if name != _ORDER}
        loss, grads = self.value_and_grad(params, data)
        updates, state = self.optimizer.update(grads, state, params)
        new_carry: tuple[Any, ...] = (apply_updates(params, updates), state)
        if self.batched:
            new_carry += (carry[2] + 1,)
        return new_carry, self.outputs(loss, grads, params)

    def outputs(
        self, loss: Any, grads: Mapping[str, Any], params: Mapping[str, Any]
    ) -> tuple[Any, ...]:
        """One step's outputs, in the layout ``read`` takes apart."""
        out: tuple[Any, ...] = (loss,)
        if self.check_gradients:
            # 0 when every gradient element is finite, NaN otherwise (inf·0 and NaN·0 are NaN).
            out += (sum(self.xp.sum(g * 0) for g in grads.values()),)
        if self.grad_norms:
            out += (sum(self.xp.sum(g * g) for g in grads.values()),)
        return out + tuple(params[name] for name in self.record)

    def read(self, outputs: tuple[Any, ...]) -> _Outputs:
        """Name the stacked outputs of ``steps`` runs of this body."""
        at = 1
        probes = norms = None
        if self.check_gradients:
            probes, at = outputs[at], at + 1
        if self.grad_norms:
            norms, at = outputs[at], at + 1
        return _Outputs(
            outputs[0], probes, norms, dict(zip(self.record, outputs[at:], strict=True))
        )


@dataclass(frozen=True)
class _Outputs:
    """A stretch's stacked outputs, by name (engine arrays, one row per step)."""

    losses: Any
    probes: Any
    norms: Any
    path: dict[str, Any]


Callback = Callable[[int, float, Any], Any]


def fit(
    problem: AbstractProblem,
    data: Any,
    *,
    engine: str | GradientEngine,
    optimizer: GradientTransformation | Any,
    steps: int,
    init: Any = None,
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
            ([`sgd`][gradlab.sgd], [`adam`][gradlab.adam], ...), anything with ``init``
            and ``update``, or an optax transformation (on the jax engine).
        steps: How many steps to take, a positive integer.
        init: Starting parameters: a mapping from name to array, or any nest of dicts,
            lists, tuples and NamedTuples of arrays (a pytree), which the loss receives as
            engine arrays in the same structure. Copied, never modified. Not with ``resume``.
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
    optimizer = check_transformation(optimizer)
    every = check_positive_int(every, "every")
    start_state: Any = None
    first_step = 0
    seed = check_int(seed, "seed", 0)
    if stop is not None and not isinstance(stop, Stop):
        raise ArgumentTypeError("stop", f"must be a gradlab.Stop, got {stop!r}")
    if callback is not None and not callable(callback):
        raise ArgumentTypeError("callback", f"must be callable, got {callback!r}")
    record_trajectory = check_bool(trajectory, "trajectory")
    if resume is not None:
        if init is not None:
            raise ArgumentError("init", "cannot be given with resume (the fit continues there)")
        prepared, start_state, first_step = _resumed(resume, problem, data, engine, dtype)
    elif init is None:
        raise ArgumentError("init", "is required (or resume=, to continue a fit)")
    else:
        prepared = prepare(problem, data, init, engine, dtype)
    engine, dtype, problem, checked_data, start_params, layout = prepared
    if start_state is not None:
        start_state = layout.flatten_within(start_state)
    itemsize = np.dtype(dtype).itemsize
    recorded = sum(value.size for value in start_params.values()) if record_trajectory else 0
    steps = check_steps(steps, itemsize * (1 + recorded))
    record = tuple(start_params) if record_trajectory else ()
    rows = total_rows_of(engine)
    order = _batch_order(checked_data, batch_size, seed, first_step, steps, dtype, rows)
    checked_data = _with_constants(problem, checked_data, dtype, order is not None)
    if is_optax(optimizer):
        start_state = start_state_optax(optimizer, start_params, start_state, engine, dtype)
    else:
        start_state = check_optimizer(optimizer, start_params, start_state)

    # Overflow on the way to divergence is reported through the status, not as warnings.
    with np.errstate(all="ignore"):
        with calling(problem, engine, start_params, checked_data):
            with naming("engine"):
                value_and_grad = value_and_grad_of(engine, problem)
            batch, params = on_engine_together(engine, checked_data, start_params, dtype)
            # Code gradlab did not write (a plug-in engine, a hand gradient) is checked on
            # its first call, here, so that the loop itself runs unchecked.
            check = crosses(engine, problem, value_and_grad)
            first = value_and_grad(params, batch) if check else None
        if check:
            check_value_and_grad(engine, problem, value_and_grad, first, start_params, dtype)
        del first
        if order is not None:
            batch[_ORDER] = engine.asarray(order.astype(np.float64), dtype)
        # The optimizer's state is made from NumPy parameters and moved like them, so that no
        # framework arithmetic happens outside the engine (jax's 64-bit mode is scoped to it).
        carry: tuple[Any, ...] = (params, to_engine(start_state, engine, dtype))
        if order is not None:
            carry += (0,)
        body = _Step(
            value_and_grad,
            optimizer,
            loop_xp_of(engine),
            record=record,
            grad_norms=stop is not None and stop.grad_norm is not None,
            batched=order is not None,
        )
        # Only the engine's copies are needed from here on: a large data set is held once.
        del checked_data
        stretch = steps
        if callback is not None:
            stretch = min(stretch, every)
        if stop is not None:
            stretch = min(stretch, stop.check_every)
        run = _Run(engine, body, batch, stop, tuple(start_params))
        start = time.perf_counter()
        done = 0
        while done < steps and run.reason is None:
            length = min(stretch, steps - done)
            try:
                with calling(problem, engine):
                    carry = run.stretch(carry, length, done, last=done + length == steps)
            except ProblemError:
                if is_optax(optimizer):  # whose code failed: the loss's or optax's?
                    blame_optax(optimizer, carry[0], carry[1], dtype)
                raise
            done = run.updates
            if callback is not None and run.reason is None:
                answer = callback(
                    first_step + done, run.last_loss, layout.unflatten(run.host_params(carry))
                )
                if _stops(answer):
                    run.reason = "callback"
        loss_history, final, visited = run.results(carry)
        wall_time = time.perf_counter() - start

    check_dtypes(engine, dtype, {"loss": loss_history, **final})
    path_arrays = (
        layout.unflatten(
            {name: np.concatenate([visited[name], final[name][None]]) for name in record}
        )
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
        params=layout.unflatten(final),
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
        state=layout.unflatten_within(run.host_state(carry)),
        step=first_step + run.updates,
    )


class _Run:
    """A fit in stretches: runs each, checks it on the host, and ends it where it must."""

    def __init__(
        self,
        engine: GradientEngine,
        body: _Step,
        batch: Data,
        stop: Stop | None,
        names: tuple[str, ...],
    ) -> None:
        self.engine, self.body, self.batch, self.stop = engine, body, batch, stop
        self.names = names
        self.losses: list[np.ndarray] = []
        self.visited: dict[str, list[np.ndarray]] = {name: [] for name in body.record}
        self.updates = 0
        self.reason: str | None = None
        self.diverged_at: int | None = None
        self.best = np.inf
        self.best_at = 0
        self.last_loss = float("nan")
        self._host: tuple[Carry, dict[str, np.ndarray], Any] | None = None

    def stretch(self, carry: Carry, length: int, done: int, last: bool = False) -> Carry:
        """Run ``length`` steps from ``carry``; return the carry where this stretch ends.

        ``last``: the fit ends with this stretch unless a rule stops it earlier, so the
        optimizer state it returns comes back with the stretch's own results.
        """
        engine = self.engine
        end, stacked = engine.run(self.body, carry, self.batch, length)
        outputs = self.body.read(stacked)
        # Everything this stretch checks on the host (and, in the last, the optimizer state
        # the fit returns), brought back in one transfer: on a GPU, one wait.
        state = _state_arrays(end[1]) if last else []
        wanted = [outputs.losses, *(end[0][name] for name in self.names), *state]
        if outputs.norms is not None:
            wanted.append(outputs.norms)
        host = to_numpy_all_of(engine)(wanted)
        losses = host[0]
        _check_losses(engine, losses, length)
        norms = host[-1] if outputs.norms is not None else None
        path = outputs.path
        at = 1 + len(self.names)
        params_end = dict(zip(self.names, host[1:at], strict=True))
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
        # Already on the host: not converted again at the end.
        on_host = _state_on_host(end[1], host[at : at + len(state)]) if last else None
        self._host = (end, params_end, on_host)
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

    def _cut(
        self, carry: Carry, losses: np.ndarray, path: dict[str, Any], updates: int, kept: int
    ) -> Carry:
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

    def _keep(self, losses: np.ndarray, path: dict[str, Any], count: int) -> None:
        self.losses.append(losses[:count])
        for name, values in path.items():
            self.visited[name].append(self.engine.to_numpy(values)[:count])

    def host_state(self, carry: Carry) -> Any:
        """The optimizer state of ``carry`` on the host."""
        if self._host is not None and self._host[0] is carry and self._host[2] is not None:
            return self._host[2]
        return _to_numpy_tree(carry[1], self.engine)

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


def value_and_grad(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> tuple[np.ndarray, Any]:
    """Evaluate one engine's loss and gradient at ``params``, returned as NumPy arrays.

    Args:
        problem: The problem.
        data: Its data (copied, never modified).
        params: Where to evaluate: a mapping from name to array, or a nest of them (copied,
            never modified).
        engine: An engine name or object.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        ``(loss, grads)``: a 0-d array, and the gradient in the structure and shapes of
        ``params``, in ``dtype``.

    Examples:
        >>> import numpy as np, gradlab
        >>> data = {"x": np.array([0.0, 1.0, 2.0]), "y": np.array([1.0, 1.0, 1.0])}
        >>> loss, grads = gradlab.value_and_grad(
        ...     gradlab.Quadratic(), data, {"w": 1.0, "b": 0.0}, engine="fd")
        >>> float(loss), round(float(grads["w"]), 9), round(float(grads["b"]), 9)
        (5.0, 12.0, 2.0)
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        problem, data, params, engine, dtype, "params"
    )
    loss, grads = evaluate(engine, flat, checked_data, checked_params, dtype)
    return loss, layout.unflatten(grads)


def _resumed(
    resume: object, problem: object, data: object, engine: object, dtype: object
) -> tuple[Prepared, Any, int]:
    """What a fit resumed from ``resume`` starts from, every mismatch named as ``resume``."""
    if not isinstance(resume, FitResult):
        raise ArgumentTypeError("resume", f"must be a FitResult from gradlab.fit, got {resume!r}")
    if resume.state is None:
        raise ArgumentError(
            "resume",
            "has no optimizer state (a result loaded from JSON): resume from the FitResult "
            "that fit returned, or start a new fit with init=result.params",
        )
    step = check_int(resume.step, "resume.step", 0)
    if resume.status == "diverged":
        raise ArgumentError(
            "resume",
            f"diverged at step {step}: its parameters or gradient are not finite there, so "
            "there is nothing to continue (start again with a smaller learning rate)",
        )
    for where, count in _counts(resume.state):
        if isinstance(count, bool) or np.ndim(count) != 0 or count != step:
            raise ArgumentError(
                f"resume.state{where}.count",
                f"is {count.tolist() if hasattr(count, 'tolist') else count!r}, but the result "
                f"has taken {step} steps: its state and step count were changed apart "
                "(resume from the FitResult fit returned)",
            )
    name = getattr(problem, "name", None)
    if name is not None and resume.problem != name:
        raise ArgumentError(
            "resume", f"is a fit of problem {resume.problem!r}; it cannot resume {name!r}"
        )
    try:
        checked = prepare(problem, data, resume.params, engine, dtype, "resume.params")
    except ArgumentError as error:
        if not str(error.argument).startswith("resume"):
            raise
        raise ArgumentError(
            "resume", f"its parameters do not fit this problem and data: {error}"
        ) from None
    return checked, resume.state, resume.step


def _counts(state: Any, where: str = "") -> list[tuple[str, Any]]:
    """The step counts in a gradlab optimizer's state (a ``chain``'s too), with where they
    are (``[1]``): each counts the updates taken, as a result's ``step`` does."""
    if type(state).__module__ == "gradlab.optimizers" and hasattr(state, "count"):
        return [(where, state.count)]
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return [found for i, part in enumerate(state) for found in _counts(part, f"{where}[{i}]")]
    return []


def _stops(answer: object) -> bool:
    """Whether a callback's answer asks to stop: its truth value, as ``if answer:`` reads it."""
    try:
        return bool(answer)
    except Exception as error:  # an array of several values has no single truth value
        raise ArgumentError(
            "callback", f"returned {type(answer).__name__}, whose truth value is unclear: {error}"
        ) from None


def _check_losses(engine: GradientEngine, losses: np.ndarray, length: int) -> None:
    """An engine's ``run`` must give one loss per step."""
    if np.shape(losses) != (length,):
        raise ArgumentError(
            "engine",
            f"engine {engine.name!r}: run returned losses of shape {np.shape(losses)} for "
            f"{length} steps, expected ({length},)",
        )


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())  # the method: a third of np.all's overhead


def _locate_divergence(
    engine: GradientEngine, checked: _Step, carry: Carry, batch: Data, steps: int
) -> int:
    """Replay a failed stretch with gradient checks; return the first bad step.

    ``steps`` when no loss or gradient was bad: the last update itself overflowed the
    parameters.
    """
    _, stacked = engine.run(checked, carry, batch, steps)
    outputs = checked.read(stacked)
    losses, probes = engine.to_numpy(outputs.losses), engine.to_numpy(outputs.probes)
    bad = ~(np.isfinite(losses) & np.isfinite(probes))
    return int(np.argmax(bad)) if bad.any() else steps


class _InDtype(Mapping[str, np.ndarray]):
    """The checked data as a problem's ``constants`` sees it: each array in the run's dtype,
    cast on first use (a float32 fit of float64 data casts only what the constants read)."""

    def __init__(self, data: Mapping[str, np.ndarray], dtype: str) -> None:
        self._data, self._dtype = data, dtype
        self._cast: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cast:
            self._cast[name] = read_only(self._data[name], self._dtype)
        return self._cast[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _with_constants(
    problem: AbstractProblem, data: dict[str, np.ndarray], dtype: str, batched: bool
) -> dict[str, np.ndarray]:
    """``data`` with the problem's ``constants``, computed once in the run's dtype (so that
    they are, bit for bit, what the loss would compute from the data at every step)."""
    with calling(problem, None):
        made = problem.constants(_InDtype(data, dtype))
    if not made:
        return data
    if not isinstance(made, Mapping) or not all(isinstance(name, str) for name in made):
        raise ProblemError(problem.name, "constants", "must return a dict of named arrays")
    rows = {np.shape(value)[0] for value in data.values() if np.ndim(value)}
    added = {}
    for name, value in made.items():
        if name in data:
            raise ProblemError(
                problem.name, "constants", f"returned {name!r}, a name the data already uses"
            )
        array = np.asarray(value)
        if array.dtype != np.dtype(dtype):
            raise ProblemError(
                problem.name, "constants", f"returned {name!r} in {array.dtype}, not {dtype}"
            )
        if batched and (array.ndim == 0 or {array.shape[0]} != rows):
            raise ProblemError(
                problem.name,
                "constants",
                f"returned {name!r} of shape {array.shape}: mini-batches need one row per data row",
            )
        added[name] = array
    return {**data, **added}


def _batch_order(
    data: Mapping[str, np.ndarray],
    batch_size: int | None,
    seed: int,
    first: int,
    steps: int,
    dtype: str,
    total_rows: Callable[[int], int] = int,
) -> np.ndarray | None:
    """The rows of each step's mini-batch, steps first … first + steps − 1 of the fit.

    Epoch e is a permutation of the n rows drawn from ``default_rng([seed, e])``, cut into
    ⌊n / batch_size⌋ batches: the order depends on the global step alone, so every engine,
    and a resumed fit, sees the same batches. ``total_rows`` turns the rows given into the
    rows numbered: those of every rank, where each rank of a data-parallel launch passes
    its own (its rows are the ones it picks out of each batch).
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
    n = total_rows(n)
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


def _to_numpy_tree(tree: Any, engine: GradientEngine) -> Any:
    """The optimizer state back on the host, in one transfer: NumPy arrays; counts as Python
    ints."""
    return _state_on_host(tree, to_numpy_all_of(engine)(_state_arrays(tree)))


def _is_array(leaf: Any) -> bool:
    """Whether an optimizer state's leaf is an engine array (not a Python number or None)."""
    return not (leaf is None or isinstance(leaf, (int, float)))


def _state_arrays(tree: Any) -> list[Any]:
    """The engine arrays of an optimizer state, in order."""
    return [leaf for leaf in leaves(tree) if _is_array(leaf)]


def _state_on_host(tree: Any, arrays: Sequence[np.ndarray]) -> Any:
    """``tree`` with its engine arrays replaced, in order, by ``arrays`` (their host copies);
    0-d integer arrays (counts) as Python ints."""
    brought = iter(arrays)

    def bring(leaf: Any) -> Any:
        if not _is_array(leaf):
            return leaf
        array = next(brought)
        if array.ndim == 0 and not np.issubdtype(array.dtype, np.floating):
            return int(array)
        return array

    return tree_map(bring, tree)
