"""[`fit`][gradlab.fit]: minimise a problem on one engine, in gradlab's one loop; it is
``prepare_fit(...).run(...)``."""

from __future__ import annotations

from typing import Any

from gradlab._errors import ArgumentError
from gradlab.engines._protocol import GradientEngine
from gradlab.fitting._prepare import Callback, PreparedFit, check_resume
from gradlab.fitting._result import FitResult
from gradlab.fitting._stop import Stop
from gradlab.optimizers import GradientTransformation
from gradlab.problems._base import AbstractProblem


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

    ``fit(...)`` is [`prepare_fit(...)`][gradlab.prepare_fit]``.run(...)``: for many fits of
    one problem on one data set (restarts, sweeps, timing), prepare once and run each.

    A non-finite loss or gradient ends the fit with status ``"diverged"``; the step is
    located exactly by replaying the fit with gradient checks, which costs time only when
    something went wrong.

    Args:
        problem: What to minimise ([`Quadratic`][gradlab.Quadratic], [`Problem`][gradlab.Problem],
            ...).
        data: Mapping from name to array, as the problem expects (``{"x": ..., "y": ...}``).
            Checked, never modified: an engine may read it in place for the length of
            the call (torch only where gradlab wrote the loss, which never writes it).
        engine: An engine name (``"numpy"``, ``"torch"``, ``"jax"``, ``"fd"``, ...) or an
            engine object.
        optimizer: A [`GradientTransformation`][gradlab.GradientTransformation]
            ([`sgd`][gradlab.sgd], [`adam`][gradlab.adam], ...), anything with ``init``
            and ``update``, or an optax transformation (on the jax engine).
        steps: How many steps to take, a positive integer.
        init: Starting parameters: a mapping from name to array, or any nest of dicts,
            lists, tuples and NamedTuples of arrays (a pytree), which the loss receives as
            engine arrays in the same structure. Copied, never modified. Default: the
            problem's ``initial_params`` for the data (where it declares its parameters'
            shapes). Not with ``resume``.
        dtype: ``"float32"`` or ``"float64"``: the precision of data, parameters and gradients.
        trajectory: Also keep the parameters at every step (``FitResult.trajectory``); they
            stay on the engine until the end, like the losses. Costs memory steps × size.
        batch_size: Mini-batches of this many samples (rows of every data array), in an
            order shuffled afresh each epoch from ``seed``: the same batches in the same
            order on every engine. An epoch is ⌊n / batch_size⌋ batches (the remainder
            waits for the next epoch's shuffle). ``None``: the full batch, as in the seed.
        seed: Seed of the mini-batch order, and of the start ``initial_params`` draws
            when ``init`` is not given (where a problem draws one: an MLP's).
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
    # The start fit prepares with: init (when given) or resume's parameters, each checked
    # and named as the caller wrote it.
    start: tuple[Any, str] | None = None if init is None else (init, "init")
    if resume is not None:
        check_resume(resume, problem)
        start = (resume.params, "resume.params")
    try:
        prepared = PreparedFit(
            problem,
            data,
            engine=engine,
            optimizer=optimizer,
            dtype=dtype,
            batch_size=batch_size,
            seed=seed,
            _start=start,
        )
    except ArgumentError as error:
        if resume is None or not str(error.argument).startswith("resume"):
            raise
        raise ArgumentError(
            "resume", f"its parameters do not fit this problem and data: {error}"
        ) from None
    return prepared.run(
        init,
        steps=steps,
        trajectory=trajectory,
        stop=stop,
        callback=callback,
        every=every,
        resume=resume,
    )
