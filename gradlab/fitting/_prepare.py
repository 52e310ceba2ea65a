"""``prepare_fit``: everything a fit needs that depends only on the problem, the data, the
engine and the optimizer, checked and made ready once; ``PreparedFit.run`` then costs a
dispatch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._boundary import (
    Prepared,
    check_dtypes,
    check_problem,
    check_steps,
    check_value_and_grad,
    crosses,
    on_engine_together,
    only_gradlab_code,
    prepare,
    to_engine,
)
from gradlab._checks import (
    check_bool,
    check_dtype,
    check_int,
    check_params,
    check_positive_int,
    read_only,
)
from gradlab._errors import ArgumentError, ArgumentTypeError, NotSupported, ProblemError, naming
from gradlab._fingerprint import fingerprint
from gradlab._flat import FlatView
from gradlab._loss import calling
from gradlab._provenance import provenance, refreshed
from gradlab._tree import NestError, Structure, check_walkable, tree_map
from gradlab.engines._protocol import (
    BATCH_ORDER,
    Data,
    GradientEngine,
    ValueAndGrad,
    asinputs_of,
    loop_xp_of,
    total_rows_of,
    value_and_grad_of,
)
from gradlab.engines._registry import get_engine
from gradlab.fitting._optimizer import FitOptimizer, fit_optimizer
from gradlab.fitting._result import FitResult, Status
from gradlab.fitting._run import Run, stops
from gradlab.fitting._step import Carry, Step
from gradlab.fitting._stop import Stop
from gradlab.problems._base import AbstractProblem

_ORDER = BATCH_ORDER

Callback = Callable[[int, float, Any], Any]


def prepare_fit(
    problem: AbstractProblem,
    data: Any,
    *,
    engine: str | GradientEngine,
    optimizer: Any,
    dtype: str = "float64",
    batch_size: int | None = None,
    seed: int = 0,
) -> PreparedFit:
    """Check a fit's problem, data, engine and optimizer once, and make them ready to run.

    Everything that depends on these alone is done here, once: the checks of the problem,
    data and engine, flattening nests, the problem's ``constants``, the data's transfer to
    the engine, and the first-call check of code gradlab did not write. The first run
    compiles what the engine compiles (the loop, on jax and torch-compile); later runs of
    the same length reuse it. [`fit`][gradlab.fit] is ``prepare_fit(...).run(...)``.

    Args:
        problem: What to minimise.
        data: Its data, copied and checked once (changing the arrays afterwards does not
            change the prepared fit: prepare again), never modified.
        engine: An engine name or object.
        optimizer: A [`GradientTransformation`][gradlab.GradientTransformation], anything
            with ``init`` and ``update``, or an optax transformation (on jax).
        dtype: ``"float32"`` or ``"float64"``.
        batch_size: Mini-batches of this many rows (see [`fit`][gradlab.fit]); ``None``:
            the full batch.
        seed: Seed of the mini-batch order, and of the start ``initial_params`` draws
            (where a problem draws one: an MLP's).

    Returns:
        A [`PreparedFit`][gradlab.PreparedFit]: ``.run(init=None, steps=...)`` fits.

    Raises:
        ArgumentError: bad problem, data, engine, optimizer, dtype, batch_size or seed.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.Quadratic()
        >>> prepared = gradlab.prepare_fit(problem, problem.make_data(100, seed=0),
        ...                                engine="numpy", optimizer=gradlab.sgd(1e-3))
        >>> first = prepared.run(steps=400)             # from problem.initial_params
        >>> again = prepared.run(init=first.params, steps=400)
        >>> round(float(again.params["w"]), 1), round(float(again.params["b"]), 1)
        (3.0, 2.1)
    """
    # Copied: a prepared fit outlives this call, and the caller may change the arrays it
    # passed (a one-shot fit holds views, as nothing can change them before it returns).
    return PreparedFit(
        problem,
        _copied(data),
        engine=engine,
        optimizer=optimizer,
        dtype=dtype,
        batch_size=batch_size,
        seed=seed,
    )


@dataclass(frozen=True)
class _Ready:
    """One preparation: the checked problem and data on the engine, for parameters of one
    structure and shape (``layout``, ``shapes``)."""

    engine: GradientEngine
    dtype: str
    problem: AbstractProblem
    layout: Structure
    shapes: dict[str, tuple[int, ...]]
    batch: Data
    value_and_grad: ValueAndGrad
    rows: int
    facts: dict[str, Any]
    #: Whether the problem takes any parameters of the declared names and shapes (its
    #: ``check_params`` is the default one), so that a plain start needs no other check.
    plain: bool


class PreparedFit:
    """A fit checked and made ready once ([`prepare_fit`][gradlab.prepare_fit]); each
    [`run`][gradlab.PreparedFit.run] starts from a point and costs a dispatch.

    Attributes:
        problem: The problem, as given.
        engine: The engine object (``None`` until the first run, for a problem that declares
            no parameter shapes: its preparation waits for ``init``).
        dtype: ``"float32"`` or ``"float64"`` (``None`` likewise).
    """

    def __init__(
        self,
        problem: AbstractProblem,
        data: Any,
        *,
        engine: str | GradientEngine,
        optimizer: Any,
        dtype: str = "float64",
        batch_size: int | None = None,
        seed: int = 0,
        _start: tuple[Any, str] | None = None,
    ) -> None:
        self._optimizer: FitOptimizer = fit_optimizer(optimizer)
        self._key = fingerprint(self._optimizer.transformation)
        self._seed = check_int(seed, "seed", 0)
        self._batch_size = (
            None if batch_size is None else check_positive_int(batch_size, "batch_size")
        )
        self._arguments = (problem, data, engine, dtype)
        self._ready: _Ready | None = None
        self._start: dict[str, np.ndarray] | None = None
        if _start is not None:  # fit's own start (init, or resume's parameters)
            params, argument = _start
            self._ready, self._start = self._prepare(params, argument)
            return
        initial = default_start(problem, data, self._seed, required=False)
        # Checked even when there is no start: the problem, data, engine and dtype.
        checked = prepare(problem, data, initial, engine, dtype) if initial is not None else None
        if checked is not None:
            self._ready, self._start = self._ready_from(checked)
        else:
            self._check_without_start()

    @property
    def problem(self) -> AbstractProblem:
        problem: AbstractProblem = self._arguments[0]
        return problem

    @property
    def engine(self) -> GradientEngine | None:
        return None if self._ready is None else self._ready.engine

    @property
    def dtype(self) -> str | None:
        return None if self._ready is None else self._ready.dtype

    def _check_without_start(self) -> None:
        """The problem, data, engine and dtype of a problem that declares no shapes, checked
        now (the parameters' checks wait for ``init``)."""
        problem, data, engine, dtype = self._arguments
        checked = check_problem(problem)
        check_dtype(dtype)
        with naming("engine"):
            get_engine(engine)
        checked.check_data(data)

    def _prepare(self, params: Any, argument: str) -> tuple[_Ready, dict[str, np.ndarray]]:
        problem, data, engine, dtype = self._arguments
        return self._ready_from(prepare(problem, data, params, engine, dtype, argument))

    def _ready_from(self, checked: Prepared) -> tuple[_Ready, dict[str, np.ndarray]]:
        engine, dtype, problem, data, start, layout = checked
        rows = 0
        if self._batch_size is not None:
            rows = _check_batches(data, self._batch_size, dtype, total_rows_of(engine))
        data = _with_constants(problem, data, dtype, self._batch_size is not None)
        data = _lent(data, only_gradlab_code(engine, problem))
        # Overflow on the way to divergence is reported through the status, not as warnings.
        with np.errstate(all="ignore"):
            with calling(problem, engine, start, data):
                with naming("engine"):
                    value_and_grad = value_and_grad_of(engine, problem)
                batch, params = on_engine_together(engine, data, start, dtype)
                # Code gradlab did not write (a plug-in engine, a hand gradient) is checked
                # on its first call, here, so that the loop itself runs unchecked.
                check = crosses(engine, problem, value_and_grad)
                first = value_and_grad(params, batch) if check else None
            if check:
                check_value_and_grad(engine, problem, value_and_grad, first, start, dtype)
        ready = _Ready(
            engine,
            dtype,
            problem,
            layout,
            {name: np.shape(value) for name, value in start.items()},
            batch,
            value_and_grad,
            rows,
            provenance(engine.describe(), dtype),
            type(problem.problem if isinstance(problem, FlatView) else problem).check_params
            is AbstractProblem.check_params,
        )
        return ready, {name: read_only(value, "float64") for name, value in start.items()}

    def _from(self, init: Any) -> tuple[_Ready, dict[str, np.ndarray]]:
        """The preparation and checked start for ``init`` (``None``: the problem's
        ``initial_params``): this one when ``init`` has its structure and shapes, else a
        new one (checked in full, as the first was)."""
        if init is None:
            if self._start is None or self._ready is None:
                name = getattr(self.problem, "name", "the problem")
                raise ArgumentError(
                    "init",
                    f"is required: problem {name!r} declares no parameter shapes to start "
                    "from (or give resume=, to continue a fit)",
                )
            return self._ready, self._start
        ready = self._ready
        if ready is not None:
            quick = _plain_start(init, ready)
            if quick is not None:
                return ready, quick
            start, layout = check_params(init, ready.shapes, "init")
            if layout == ready.layout:
                ready.problem.check_params(start, "init", layout)
                return ready, start
        self._ready, self._start = self._prepare(init, "init")
        return self._ready, self._start

    def run(
        self,
        init: Any = None,
        *,
        steps: int,
        trajectory: bool = False,
        stop: Stop | None = None,
        callback: Callback | None = None,
        every: int = 100,
        resume: FitResult | None = None,
    ) -> FitResult:
        """Fit from ``init`` (or ``resume``) for ``steps`` steps.

        Args:
            init: Starting parameters (a nest of arrays, copied, never modified); ``None``:
                the problem's ``initial_params`` for the data. Not with ``resume``.
            steps: How many steps to take, a positive integer.
            trajectory: Also keep the parameters at every step.
            stop: Rules that end the fit early ([`Stop`][gradlab.Stop]).
            callback: ``callback(step, loss, params)`` after every ``every`` steps; return
                ``True`` to stop there.
            every: Steps between callbacks.
            resume: A [`FitResult`][gradlab.FitResult] of this problem to continue from.

        Returns:
            A [`FitResult`][gradlab.FitResult], as [`fit`][gradlab.fit] returns.
        """
        every = check_positive_int(every, "every")
        if stop is not None and not isinstance(stop, Stop):
            raise ArgumentTypeError("stop", f"must be a gradlab.Stop, got {stop!r}")
        if callback is not None and not callable(callback):
            raise ArgumentTypeError("callback", f"must be callable, got {callback!r}")
        record_trajectory = check_bool(trajectory, "trajectory")
        if resume is not None:
            if init is not None:
                raise ArgumentError("init", "cannot be given with resume (the fit continues there)")
            ready, start, state, first_step = self._resumed(resume)
        else:
            ready, start = self._from(init)
            state, first_step = None, 0
        return self._run(
            ready, start, state, first_step, steps, record_trajectory, stop, callback, every
        )

    def _resumed(self, resume: object) -> tuple[_Ready, dict[str, np.ndarray], Any, int]:
        """What a fit resumed from ``resume`` starts from, every mismatch named as ``resume``."""
        resume = check_resume(resume, self.problem)
        ready = self._ready
        try:
            if ready is not None:
                start, layout = check_params(resume.params, ready.shapes, "resume.params")
                if layout == ready.layout:
                    ready.problem.check_params(start, "resume.params", layout)
                    return ready, start, resume.state, resume.step
            self._ready, self._start = self._prepare(resume.params, "resume.params")
        except ArgumentError as error:
            if not str(error.argument).startswith("resume"):
                raise
            raise ArgumentError(
                "resume", f"its parameters do not fit this problem and data: {error}"
            ) from None
        return self._ready, self._start, resume.state, resume.step

    def _run(
        self,
        ready: _Ready,
        start_params: dict[str, np.ndarray],
        start_state: Any,
        first_step: int,
        steps: int,
        record_trajectory: bool,
        stop: Stop | None,
        callback: Callback | None,
        every: int,
    ) -> FitResult:
        engine, dtype, layout = ready.engine, ready.dtype, ready.layout
        problem = ready.problem
        if start_state is not None:
            start_state = layout.flatten_within(start_state)
        itemsize = np.dtype(dtype).itemsize
        recorded = sum(value.size for value in start_params.values()) if record_trajectory else 0
        steps = check_steps(steps, itemsize * (1 + recorded))
        record = tuple(start_params) if record_trajectory else ()
        order = _batch_order(ready.rows, self._batch_size, self._seed, first_step, steps)
        start_state = self._optimizer.start_state(start_params, start_state, engine, dtype)
        with np.errstate(all="ignore"):
            batch = ready.batch
            with calling(problem, engine, start_params, batch):
                _, moved = asinputs_of(engine)([], list(start_params.values()), dtype)
            params = dict(zip(start_params, moved, strict=True))
            position: Any = ()
            if order is not None:
                batch = {**batch, _ORDER: engine.asarray(order.astype(np.float64), dtype)}
                position = 0
            # The optimizer's state is made from NumPy parameters and moved like them, so that
            # no framework arithmetic happens outside the engine (jax's 64-bit mode is scoped
            # to it).
            carry = Carry(params, to_engine(start_state, engine, dtype), position)
            body = Step(
                ready.value_and_grad,
                self._optimizer.transformation,
                loop_xp_of(engine),
                record=record,
                grad_norms=stop is not None and stop.grad_norm is not None,
                batched=order is not None,
                key=self._key,
            )
            stretch = steps
            if callback is not None:
                stretch = min(stretch, every)
            if stop is not None:
                stretch = min(stretch, stop.check_every)
            run = Run(engine, body, batch, stop, tuple(start_params))
            began = time.perf_counter()
            done = 0
            while done < steps and run.reason is None:
                length = min(stretch, steps - done)
                try:
                    with calling(problem, engine):
                        carry = run.stretch(carry, length, done, last=done + length == steps)
                except ProblemError:
                    self._optimizer.blame(carry[0], carry[1], dtype)
                    raise
                done = run.updates
                if callback is not None and run.reason is None:
                    answer = callback(
                        first_step + done, run.last_loss, layout.unflatten(run.host_params(carry))
                    )
                    if stops(answer):
                        run.reason = "callback"
            loss_history, final, visited = run.results(carry)
            wall_time = time.perf_counter() - began

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
            provenance=refreshed(ready.facts),
            trajectory=path_arrays,
            stop_reason=reason,
            state=layout.unflatten_within(run.host_state(carry)),
            step=first_step + run.updates,
        )


def _plain_start(init: Any, ready: _Ready) -> dict[str, np.ndarray] | None:
    """``init`` as float64 copies when it is what most runs pass, a flat dict of finite
    Python floats or float arrays with the prepared names (in their order) and shapes, and
    the problem takes any such parameters; else ``None``, and ``check_params`` checks it
    in full (and names what is wrong)."""
    if (
        type(init) is not dict
        or not ready.layout.trivial
        or tuple(init) != ready.layout.paths
        or not ready.plain
    ):
        return None
    start = {}
    for name, value in init.items():
        if type(value) is float:
            array = np.array(value)
        elif type(value) is np.ndarray and value.dtype.kind == "f":
            array = value.astype(np.float64)
        else:
            return None
        if array.shape != ready.shapes[name] or not np.isfinite(array).all():
            return None
        start[name] = array
    return start


def _copied(data: Any) -> Any:
    """``data`` with every NumPy array copied (anything else as it is, for the checks)."""
    try:
        check_walkable(data)
    except NestError:
        return data  # refused, naming where, by the checks that follow
    return tree_map(
        lambda leaf: np.array(leaf, copy=True) if isinstance(leaf, np.ndarray) else leaf, data
    )


def default_start(problem: object, data: Any, seed: int = 0, required: bool = True) -> Any:
    """Where a fit starts when no ``init`` is given: the problem's ``initial_params`` for the
    data (zeros of the declared shapes, or the problem's own start; ``seed`` draws a random
    one). Without declared shapes there is none: an error naming ``init``, or ``None`` when
    not ``required`` (a prepared fit then waits for its first run's ``init``)."""
    if not isinstance(problem, AbstractProblem):
        return None  # named as the problem by the checks that follow
    try:
        return problem.initial_params(data, seed=seed)
    except NotSupported:
        if not required:
            return None
        raise ArgumentError(
            "init",
            f"is required: problem {problem.name!r} declares no parameter shapes to start "
            "from (or give resume=, to continue a fit)",
        ) from None


def check_resume(resume: object, problem: object) -> FitResult:
    """``resume`` if it is a result this problem's fit can continue, else an error naming it."""
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
    return resume


def _counts(state: Any, where: str = "") -> list[tuple[str, Any]]:
    """The step counts in a gradlab optimizer's state (a ``chain``'s too), with where they
    are (``[1]``): each counts the updates taken, as a result's ``step`` does."""
    if type(state).__module__ == "gradlab.optimizers" and hasattr(state, "count"):
        return [(where, state.count)]
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return [found for i, part in enumerate(state) for found in _counts(part, f"{where}[{i}]")]
    return []


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


def _lent(data: dict[str, np.ndarray], lend: bool) -> dict[str, np.ndarray]:
    """``data`` as the engine is handed it: each array writable where the fit can ``lend``
    it (only gradlab's code sees it: an engine may then share its memory instead of copying
    it, as torch does), else read-only, so that an engine whose arrays can be written copies
    it (a loss a user wrote could write into its data, and so into the caller's arrays)."""
    return {
        name: _writable(value) if lend else read_only(value, value.dtype.name)
        for name, value in data.items()
    }


def _writable(array: np.ndarray) -> np.ndarray:
    """A writable view of ``array`` where its memory is writable (a read-only view of the
    caller's array), else ``array`` itself."""
    view: np.ndarray = array.view()
    try:
        view.flags.writeable = True
    except ValueError:  # memory nobody may write (a read-only array, a buffer of bytes)
        return array
    return view


def _check_batches(
    data: Mapping[str, np.ndarray], batch_size: int, dtype: str, total_rows: Callable[[int], int]
) -> int:
    """Mini-batches of ``batch_size`` rows must be possible: the arrays have one number of
    rows, at least ``batch_size`` of them. ``total_rows`` turns the rows given into the rows
    numbered: those of every rank, where each rank of a data-parallel launch passes its own."""
    if not data:
        raise ArgumentError("batch_size", "this problem takes no data to batch")
    sizes = {name: np.shape(value)[0] if np.ndim(value) else 0 for name, value in data.items()}
    if len(set(sizes.values())) != 1:
        raise ArgumentError(
            "batch_size", f"the data arrays have different numbers of rows: {sizes}"
        )
    n = total_rows(min(sizes.values()))
    if batch_size > n:
        raise ArgumentError("batch_size", f"is {batch_size}, larger than the data's {n} rows")
    if dtype == "float32" and n > 2**24:
        # The order rides into the loop as an engine array of the run's dtype: float32 holds
        # row numbers exactly only up to 2²⁴.
        raise ArgumentError("batch_size", "float32 mini-batches need at most 2**24 rows")
    return n


def _batch_order(
    rows: int, batch_size: int | None, seed: int, first: int, steps: int
) -> np.ndarray | None:
    """The rows of each step's mini-batch, steps first … first + steps − 1 of the fit.

    Epoch e is a permutation of the ``rows`` rows drawn from ``default_rng([seed, e])``, cut
    into ⌊rows / batch_size⌋ batches: the order depends on the global step alone, so every
    engine, and a resumed fit, sees the same batches.
    """
    if batch_size is None:
        return None
    per_epoch = rows // batch_size
    order = np.empty((steps, batch_size), dtype=np.int64)
    epochs: dict[int, np.ndarray] = {}
    for i in range(steps):
        epoch, position = divmod(first + i, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = np.random.default_rng([seed, epoch]).permutation(rows)
        order[i] = epochs[epoch][position * batch_size : (position + 1) * batch_size]
    return order
