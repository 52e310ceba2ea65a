"""The GradientEngine protocol, and a base class that supplies its defaults."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError, EngineDefinitionError, NotSupported
from gradlab._loss import hand, runs_hand
from gradlab._tree import leaves, tree_map
from gradlab.problems._base import AbstractProblem

Array = Any
Params = Mapping[str, Array]
Data = Mapping[str, Array]
Carry = Any
ValueAndGrad = Callable[[Params, Data], "tuple[Array, dict[str, Array]]"]
Objective = Callable[[Params, Data], Array]
HVP = Callable[[Params, Params, Data], "dict[str, Array]"]
Step = Callable[[Carry, Data], "tuple[Carry, tuple[Array, ...]]"]
# Vector-valued functions: their output is any nest of arrays (``Tree``); a Jacobian has the
# output's structure outside and a flat ``{param path: block}`` dict at each output leaf.
Tree = Any
Jacobian = Callable[[Params, Data], "tuple[Tree, Tree]"]
JVP = Callable[[Params, Params, Data], "tuple[Tree, Tree]"]
Pullback = Callable[[Tree], "dict[str, Array]"]
VJP = Callable[[Params, Data], "tuple[Tree, Pullback]"]
PerExample = Callable[[Params, Data], "dict[str, Array]"]


@runtime_checkable
class GradientEngine(Protocol):
    """One way of computing gradients, behind the interface every gradlab loop uses.

    An engine owns a kind of array (NumPy arrays, torch tensors, jax arrays, ...). It moves
    NumPy arrays in and out, builds a ``(params, data) -> (loss, grads)`` function for a
    problem, and runs a loop body ``steps`` times. That is all the generic loop in
    [`fit`][gradlab.fit] needs, so the loop never asks which engine it is running on.

    Members:
        name: The engine's registry name (``"torch"``).
        xp: The array namespace the problem's loss is evaluated with on this engine
            (``numpy``, torch's array-API namespace, ``jax.numpy``).
        asarray(array, dtype): A NumPy array to an engine array of ``dtype`` (``"float32"``
            or ``"float64"``), on the engine's device. Must copy: the caller's array is
            never shared with, or changed by, the engine.
        to_numpy(array): An engine array (or scalar) back to a NumPy array.
        value_and_grad(problem): A function ``(params, data) -> (loss, grads)`` over engine arrays.
            ``loss`` is a 0-d array; ``grads`` has the keys, shapes and dtype of ``params``. Raise
            [`HandGradientMissing`][gradlab.HandGradientMissing] (or another
            [`GradlabError`][gradlab.GradlabError]) if this engine cannot differentiate the problem.
        run(step, carry, data, steps): Apply ``carry, out = step(carry, data)`` ``steps`` times, in
            order, and return the last carry and each output stacked along a new leading axis (a
            tuple of arrays of length ``steps``). The default is a plain Python loop
            ([`AbstractEngine`][gradlab.AbstractEngine]); an engine that can compile the whole loop
            (jax: ``lax.scan``) may, as long as the result is the same.
        describe(): Facts to record beside every result: framework version, device,
            threads, precision modes (a JSON-friendly dict).

    Optional member, for second derivatives ([`hvp`][gradlab.hvp],
    [`hessian`][gradlab.hessian], [`compare_hessians`][gradlab.compare_hessians]); an engine
    without it is skipped there with a note:

        hvp(problem): A function ``(params, tangent, data) -> H·tangent``, the
            Hessian-vector product of the loss, with the keys, shapes and dtype of
            ``params``. ``tangent`` has the same structure as ``params``.

    Optional members, for vector-valued functions ([`jacobian`][gradlab.jacobian],
    [`jvp`][gradlab.jvp], [`vjp`][gradlab.vjp], [`compare_jacobians`][gradlab.compare_jacobians]),
    whose ``problem.loss`` returns any nest of arrays; an engine without them is skipped there
    with a note:

        jacobian(problem): A function ``(params, data) -> (value, J)``: the function's value
            and its Jacobian, laid out as ``jax.jacobian`` lays it out (the output's
            structure outside, a ``{param: block}`` dict at each output leaf, blocks of shape
            ``output.shape + param.shape``).
        jvp(problem): ``(params, tangent, data) -> (value, J·tangent)``.
        vjp(problem): ``(params, data) -> (value, pullback)``, as ``jax.vjp``:
            ``pullback(cotangent)`` is cotangentᵀ·J, the cotangent with the output's
            structure, the result with the parameters'.

    Optional member, for [`per_example_grads`][gradlab.per_example_grads]; the default runs
    ``value_and_grad`` on one row at a time:

        per_example_grads(problem): ``(params, data) -> grads``, each row's gradient (the
            loss on a batch of that row alone), stacked: ``grads[name]`` has shape
            ``(rows,) + params[name].shape``.

    Optional members, for moving data (a framework that moves several arrays in one
    transfer, such as jax, saves a dispatch, or a wait for the device, per array):

        asarrays(arrays, dtype): A list of NumPy arrays as engine arrays of ``dtype``, as
            ``asarray`` makes each, in one call. Default: ``asarray`` on each.
        to_numpy_all(arrays): A list of engine arrays back as NumPy arrays, as
            ``to_numpy`` makes each, in one call. Default: ``to_numpy`` on each.
        asinputs(data, params, dtype): A call's or a fit's data arrays (the problem's
            rows, along the first axis) and parameters, two lists of NumPy arrays, as
            engine arrays of ``dtype``: ``(data, params)``, one array back for each. Where
            an engine places data apart from parameters: a data-parallel engine spreads the
            rows over its devices (each holds its own) and keeps the parameters whole on
            every one. The data it returns need only be what its own ``value_and_grad`` and
            ``run`` take, with the rows' ``shape`` and ``dtype``, and rows gathered by
            ``data[name][indices]`` (mini-batches). A data array given writable is lent:
            the engine may keep its memory rather than copy it (the caller passes one only
            where nothing writes it while the engine's arrays live); one given read-only
            must never be written through, so an engine whose arrays can be written in
            place (torch) copies it. Default: ``asarrays`` on all of them, in one call.

    Optional member, for data-parallel launches whose processes each pass only their own
    rows:

        total_rows(rows): The rows of all processes' data, given this process's ``rows``
            (every process calls it at the same point of a fit). Default: ``rows``.

    Optional attribute, for the comparisons:

        approximate: ``True`` when its derivatives are approximations (finite differences);
            pairs with it are then judged with gradlab's finite-difference tolerances.
            Default ``False``.

    Optional attribute, for listings (``gradlab engines``):

        compiled_loop: ``True`` when ``run`` executes the loop body as compiled code (jax's
            ``lax.scan``, torch-compile's graphs). Default ``False``.

    Optional members, for [`benchmark`][gradlab.benchmark] (which falls back to these defaults
    when an engine lacks them):

        objective(problem): A function ``(params, data) -> loss``, the loss alone, computed
            as this engine would (compiled where the engine compiles). Default: the
            problem's loss on ``xp``.
        output(problem): The same for a vector-valued function: ``(params, data) -> value``,
            any nest of arrays (GradBench's ``ode`` primal). Default: the function on ``xp``.
        block(tree): Wait until every array in ``tree`` is computed, and return ``tree``.
            Frameworks that compute asynchronously (jax; torch on a GPU) must implement
            it, or a clock read after a call measures only the dispatch. Default: nothing
            to wait for.

    Optional attribute, for reports on a [`NativeProblem`][gradlab.NativeProblem]:

        runs_hand: ``True`` when it runs a problem's hand derivation instead of
            differentiating its loss (like ``numpy``). Default ``False``.

    The optional members are typed by the Protocols of this module (``SecondDerivatives``,
    ``VectorDerivatives``, ``PerExampleGradients``, ``Timing``, ``BatchedMoves``,
    ``SpreadRows``, ``Facts``) and looked up in one place (``hvp_of``, ``objective_of``,
    ``block_of``, ``asarrays_of``, ``to_numpy_all_of``, ``asinputs_of``, ``is_approximate``,
    ``runs_hand_of``, ... in this module), never probed elsewhere. The required members
    (``REQUIRED``) are checked when an ``AbstractEngine`` subclass is defined, and on any
    other engine object when it is handed to gradlab (``check_engine``).

    The easiest way to write an engine is to subclass [`AbstractEngine`][gradlab.AbstractEngine],
    which supplies ``run``, ``to_numpy``, ``describe`` and every optional member; see
    ``docs/writing-an-engine.md``.
    """

    @property
    def name(self) -> str:
        """The engine's registry name."""
        ...

    @property
    def xp(self) -> Any:
        """The array namespace that problem losses are evaluated with."""
        ...

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A NumPy array as an engine array of ``dtype``: a copy, or a read-only view (the
        caller's array must never be written through it)."""
        ...

    def to_numpy(self, array: Array) -> np.ndarray:
        """Convert an engine array back to NumPy."""
        ...

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """Build ``(params, data) -> (loss, grads)`` for ``problem``."""
        ...

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """Apply ``step`` ``steps`` times; return the last carry and the stacked outputs."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts about the framework, device and precision, for provenance."""
        ...


#: The members every engine has, each with what it is (for the errors that name one missing).
REQUIRED: dict[str, str] = {
    "name": "its registry name, a str",
    "xp": "the array namespace its losses are evaluated with",
    "asarray": "asarray(array, dtype), a NumPy array to an engine array",
    "to_numpy": "to_numpy(array), an engine array back to NumPy",
    "value_and_grad": "value_and_grad(problem), the (params, data) -> (loss, grads) function",
    "run": "run(step, carry, data, steps), the loop",
    "describe": "describe(), facts for provenance",
}
#: The required members that are values rather than methods: an engine's ``__init__`` may
#: set them (torch's ``xp`` exists once torch is imported), so a class declares them by a
#: value, a property or an annotation (``xp: Any``) in its body.
_VALUES = ("name", "xp")


# The optional members, typed: an engine may have any of them (AbstractEngine has most, with
# defaults); gradlab looks each up in one place below (``hvp_of``, ``block_of``, ...).


class SecondDerivatives(Protocol):
    """Optional: Hessian-vector products of a scalar loss."""

    def hvp(self, problem: AbstractProblem) -> HVP:
        """``(params, tangent, data) -> H·tangent``."""
        ...


class VectorDerivatives(Protocol):
    """Optional: derivatives of vector-valued functions (any nest of arrays)."""

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """``(params, data) -> (value, J)``, laid out as ``jax.jacobian`` lays it out."""
        ...

    def jvp(self, problem: AbstractProblem) -> JVP:
        """``(params, tangent, data) -> (value, J·tangent)``."""
        ...

    def vjp(self, problem: AbstractProblem) -> VJP:
        """``(params, data) -> (value, pullback)``, as ``jax.vjp``."""
        ...


class PerExampleGradients(Protocol):
    """Optional: each row's gradient, vectorised (the default loops over rows)."""

    def per_example_grads(self, problem: AbstractProblem) -> PerExample:
        """``(params, data) -> grads``, each of shape ``(rows,) + param.shape``."""
        ...


class Timing(Protocol):
    """Optional, for benchmarks: the function alone, and a wait for asynchronous work."""

    def objective(self, problem: AbstractProblem) -> Objective:
        """``(params, data) -> loss``, computed as this engine computes it."""
        ...

    def output(self, problem: AbstractProblem) -> Objective:
        """``(params, data) -> value`` of a vector-valued function."""
        ...

    def block(self, tree: Any) -> Any:
        """Wait until every array in ``tree`` is computed; return ``tree``."""
        ...


class BatchedMoves(Protocol):
    """Optional: several arrays moved in one transfer, and data placed apart from parameters."""

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """NumPy arrays as engine arrays of ``dtype``, one back for each."""
        ...

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """Engine arrays back as NumPy arrays, one back for each."""
        ...

    def asinputs(
        self, data: Sequence[np.ndarray], params: Sequence[np.ndarray], dtype: str
    ) -> tuple[list[Array], list[Array]]:
        """A call's data and parameters as engine arrays: ``(data, params)``."""
        ...


class SpreadRows(Protocol):
    """Optional, for data-parallel launches whose processes each pass only their rows."""

    def total_rows(self, rows: int) -> int:
        """The rows of all processes' data, given this process's ``rows``."""
        ...


class Facts(Protocol):
    """Optional attributes: what an engine is, for comparisons, listings and loops (read
    only: a class attribute or a property will do)."""

    @property
    def approximate(self) -> bool:
        """Its derivatives are approximations (finite differences)."""
        ...

    @property
    def compiled_loop(self) -> bool:
        """``run`` executes the loop body as compiled code."""
        ...

    @property
    def runs_hand(self) -> bool:
        """It runs a problem's hand derivation rather than differentiating its loss."""
        ...

    @property
    def loop_xp(self) -> Any:
        """The namespace of the arrays its loop holds, where it is not ``xp``."""
        ...


class AbstractEngine(abc.ABC):
    """Base class for engines: implement ``name``, ``xp``, ``asarray`` and ``value_and_grad``.

    A class without one of them is refused where it is defined, with an
    ``EngineDefinitionError`` naming the class and the member. A base class meant to be
    subclassed says so, ``class MyBase(AbstractEngine, abstract=True)`` (as does one whose
    name starts with ``Abstract``), and is not checked; its concrete subclasses are.

    It supplies the protocol's defaults: ``run`` as a plain Python loop that stacks the
    per-step outputs once at the end (so there is no host synchronisation per step),
    ``to_numpy`` through ``numpy.asarray``, an empty ``describe``, an ``hvp``
    that raises [`NotSupported`][gradlab.NotSupported] (override it to offer second derivatives), an
    ``objective`` that evaluates the loss on ``xp`` and a ``block`` with nothing to
    wait for (override it if your framework computes asynchronously).
    """

    name: str
    xp: Any
    #: Whether its derivatives are approximations (finite differences): comparisons then
    #: judge it with gradlab's finite-difference tolerances.
    approximate: bool = False
    #: Whether ``run`` executes the loop body as compiled code (for listings).
    compiled_loop: bool = False
    #: Whether it runs a problem's hand derivation instead of differentiating its loss (the
    #: ``numpy`` engine): a report counts it as that code, not as the loss's implementation.
    runs_hand: bool = False

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        """Refuse a concrete engine class that lacks a required member, where it is defined.

        Args:
            abstract: The class is a base for other engines (it may lack members); an
                ``Abstract…`` name says the same.
            **kwargs: For the next class in line.

        Raises:
            EngineDefinitionError: a required member is missing; the message names it and
                the class.
        """
        super().__init_subclass__(**kwargs)
        if abstract or cls.__name__.startswith("Abstract"):
            return
        missing = tuple(member for member in REQUIRED if not _declares(cls, member))
        if missing:
            raise EngineDefinitionError(
                f"{cls.__module__}.{cls.__qualname__}",
                missing,
                f"engine class {cls.__qualname__} lacks {_listing(missing)}: define "
                f"{'it' if len(missing) == 1 else 'them'} in the class body (a value such as "
                f'`name = "my-engine"`, or an annotation such as `xp: Any` where __init__ '
                "sets it), or declare a base class "
                f"`class {cls.__name__}(AbstractEngine, abstract=True)`",
            )

    @abc.abstractmethod
    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """Copy a NumPy array into an engine array of ``dtype``."""

    @abc.abstractmethod
    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """Build ``(params, data) -> (loss, grads)`` for ``problem``."""

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Second derivatives are optional: by default, refuse with a clear error."""
        raise NotSupported(f"engine {self.name!r} does not compute Hessian-vector products")

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """Jacobians are optional: by default, refuse with a clear error."""
        raise NotSupported(f"engine {self.name!r} does not compute Jacobians")

    def jvp(self, problem: AbstractProblem) -> JVP:
        """Jacobian-vector products are optional: by default, refuse with a clear error."""
        raise NotSupported(f"engine {self.name!r} does not compute Jacobian-vector products")

    def vjp(self, problem: AbstractProblem) -> VJP:
        """Vector-Jacobian products are optional: by default, refuse with a clear error."""
        raise NotSupported(f"engine {self.name!r} does not compute vector-Jacobian products")

    def per_example_grads(self, problem: AbstractProblem) -> PerExample:
        """Each row's gradient, one row at a time through ``value_and_grad``: every engine
        can; frameworks that vectorise (``vmap``) override it."""
        return per_row(self, value_and_grad_of(self, problem))

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, on ``xp``: what benchmarks divide the gradient's time by."""
        xp = self.xp

        def objective(params: Params, data: Data) -> Array:
            return problem.loss(params, data, xp)

        return objective

    def block(self, tree: Any) -> Any:
        """Synchronous by default: everything is computed once a call returns."""
        return tree

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """``asarray`` on each array; override it where one transfer moves them all."""
        return [self.asarray(array, dtype) for array in arrays]

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """``to_numpy`` on each array; override it where one transfer brings them all."""
        return [self.to_numpy(array) for array in arrays]

    def to_numpy(self, array: Array) -> np.ndarray:
        """Convert with ``numpy.asarray``."""
        return np.asarray(array)

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """Run ``step`` in a Python loop, writing each output into a buffer made once.

        Why buffers: keeping one small array per step alive until the end (a list to stack)
        pins the allocator's heap between each step's large temporaries, and a long fit's
        resident memory then grows with its steps. One buffer per output, allocated before
        the loop, keeps memory flat; nothing waits for the device either.
        """
        if steps == 0:
            return carry, ()
        carry, first = step(carry, data)
        buffers = [self._buffer(value, steps) for value in first]
        for buffer, value in zip(buffers, first, strict=True):
            buffer[0] = value
        for i in range(1, steps):
            carry, out = step(carry, data)
            for buffer, value in zip(buffers, out, strict=True):
                buffer[i] = value
        return carry, tuple(buffers)

    def _buffer(self, value: Array, steps: int) -> Array:
        """An uninitialised array for ``steps`` values like ``value``, where ``value`` lives."""
        # A Python number (a hand gradient's float loss) is a float64 scalar, as in NumPy.
        shape = tuple(getattr(value, "shape", ()))
        dtype, device = getattr(value, "dtype", None), getattr(value, "device", None)
        return loop_xp_of(self).empty((steps, *shape), dtype=dtype, device=device)

    def describe(self) -> dict[str, Any]:
        """Nothing beyond what gradlab records itself."""
        return {}

    def __repr__(self) -> str:
        return f"<gradlab engine {self.name!r}>"


def _declares(cls: type, member: str) -> bool:
    """Whether an engine class has ``member``: a method that is not abstract, or a value
    given, or declared, below ``AbstractEngine`` (whose own annotations promise nothing)."""
    if member not in _VALUES:
        method = getattr(cls, member, None)
        return callable(method) and not getattr(method, "__isabstractmethod__", False)
    for klass in cls.__mro__:
        if klass in (AbstractEngine, abc.ABC, object):
            continue
        if member in vars(klass) or member in vars(klass).get("__annotations__", {}):
            return True
    return False


def _listing(members: Sequence[str]) -> str:
    """One member with what it is (``name (its registry name, a str)``), or several named."""
    if len(members) == 1:
        return f"{members[0]} ({REQUIRED[members[0]]})"
    return ", ".join(members)


def check_engine(engine: object, argument: str = "engine") -> GradientEngine:
    """``engine`` if it is an engine object; else an error naming ``argument`` and, for an
    object that is partly an engine, the members it lacks.

    An [`AbstractEngine`][gradlab.AbstractEngine] has its methods (checked when its class
    was made); only the values its ``__init__`` may set are looked for. Any other object is
    held against the whole [`GradientEngine`][gradlab.GradientEngine] protocol. Either
    costs well under a microsecond: ``get_engine`` calls it on every call that is handed
    an engine object.

    Raises:
        ArgumentTypeError: ``engine`` is not an engine, or lacks a required member.
    """
    if isinstance(engine, type):
        raise ArgumentTypeError(
            argument,
            f"is the class {engine.__name__}; pass an engine object, {engine.__name__}()",
        )
    missing = missing_members(engine)
    if len(missing) == len(REQUIRED):  # nothing of an engine: say what is wanted
        raise ArgumentTypeError(
            argument, f"must be an engine name or a GradientEngine, got {type(engine).__name__}"
        )
    if missing:
        raise ArgumentTypeError(
            argument,
            f"is a {type(engine).__name__}, which lacks {_listing(missing)} of the "
            "GradientEngine protocol (subclass gradlab.AbstractEngine for the defaults)",
        )
    return cast(GradientEngine, engine)


def missing_members(engine: object) -> tuple[str, ...]:
    """The required members an engine object lacks: for an ``AbstractEngine``, only the
    values its ``__init__`` may set (its methods were checked when its class was made)."""
    if isinstance(engine, AbstractEngine):
        return tuple(member for member in _VALUES if not hasattr(engine, member))
    return tuple(
        member
        for member in REQUIRED
        if not (
            hasattr(engine, member)
            if member in _VALUES
            else callable(getattr(engine, member, None))
        )
    )


# The protocol's optional members, looked up here and nowhere else: an engine that is not an
# AbstractEngine may lack them, and each has a stated fallback.


def value_and_grad_of(engine: GradientEngine, problem: AbstractProblem) -> ValueAndGrad:
    """``engine.value_and_grad(problem)``, refusing up front (``NotSupported``) a problem
    whose loss has no implementation for the engine's framework (a
    [`NativeProblem`][gradlab.NativeProblem] without one), unless the engine runs the hand
    gradient instead of the loss."""
    function = engine.value_and_grad(problem)
    if not runs_hand(function, problem.hand_value_and_grad):
        problem.check_namespace(engine.xp)
    return function


def hvp_of(engine: GradientEngine, problem: AbstractProblem) -> HVP:
    """The engine's Hessian-vector product for ``problem``, or ``NotSupported`` (also for a
    problem without an implementation for the engine's framework, as ``value_and_grad_of``)."""
    method: Callable[[AbstractProblem], HVP] | None = getattr(engine, "hvp", None)
    if method is None:
        raise NotSupported(f"engine {engine.name!r} does not compute Hessian-vector products")
    function: HVP = method(problem)
    if not runs_hand(function, problem.hand_hvp):
        problem.check_namespace(engine.xp)
    return function


def objective_of(engine: GradientEngine, problem: AbstractProblem) -> Objective:
    """The engine's loss alone for ``problem``; by default the loss on ``engine.xp``."""
    return _value_of(engine, "objective", problem)


def output_of(engine: GradientEngine, problem: AbstractProblem) -> Objective:
    """The engine's value of a vector-valued function; by default the function on
    ``engine.xp``."""
    return _value_of(engine, "output", problem)


def _value_of(engine: GradientEngine, member: str, problem: AbstractProblem) -> Objective:
    """``engine.<member>(problem)``, or else the problem's function on ``engine.xp``."""
    method: Callable[[AbstractProblem], Objective] | None = getattr(engine, member, None)
    if method is not None:
        return method(problem)
    xp = engine.xp

    def value(params: Params, data: Data) -> Array:
        return problem.loss(params, data, xp)

    return value


#: The data entry ``fit`` adds for mini-batches: each step's row numbers, one row per step
#: (not rows of the data). An engine that spreads rows leaves it whole on every rank.
BATCH_ORDER = "__gradlab_batch_order__"


def loop_xp_of(engine: GradientEngine) -> Any:
    """The namespace of the arrays an engine's loop holds (parameters, optimizer state,
    batches, buffers): ``engine.loop_xp`` where the loss is given another namespace than
    those arrays live in (complex-step gives the loss an analytic-only NumPy, and keeps its
    loop in NumPy), else ``engine.xp``."""
    return getattr(engine, "loop_xp", engine.xp)


def total_rows_of(engine: GradientEngine) -> Callable[[int], int]:
    """The engine's ``total_rows``: how many rows the data a process passes stands for,
    across all processes (each process of a data-parallel launch may pass only its own
    rows); by default the rows it passes. ``fit`` numbers mini-batches over these."""
    method: Callable[[int], int] | None = getattr(engine, "total_rows", None)
    return (lambda rows: rows) if method is None else method


def asarrays_of(engine: GradientEngine) -> Callable[[Sequence[np.ndarray], str], list[Array]]:
    """The engine's ``asarrays`` (one array back per array given, or an error naming the
    engine); by default ``asarray`` on each array."""
    method: Callable[[Sequence[np.ndarray], str], list[Array]] | None = getattr(
        engine, "asarrays", None
    )
    if method is None:

        def asarrays(arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
            return [engine.asarray(array, dtype) for array in arrays]

        return asarrays

    def checked(arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        return _as_many(engine, "asarrays", list(method(arrays, dtype)), len(arrays))

    return checked


def asinputs_of(
    engine: GradientEngine,
) -> Callable[[Sequence[np.ndarray], Sequence[np.ndarray], str], tuple[list[Array], list[Array]]]:
    """The engine's ``asinputs`` (checked as ``asarrays_of`` checks); by default the data and
    the parameters moved together by ``asarrays``, one transfer where the framework batches."""
    method: (
        Callable[[Sequence[np.ndarray], Sequence[np.ndarray], str], tuple[list[Array], list[Array]]]
        | None
    ) = getattr(engine, "asinputs", None)
    if method is None:
        asarrays = asarrays_of(engine)

        def together(
            data: Sequence[np.ndarray], params: Sequence[np.ndarray], dtype: str
        ) -> tuple[list[Array], list[Array]]:
            moved = asarrays([*data, *params], dtype)
            return moved[: len(data)], moved[len(data) :]

        return together

    def checked(
        data: Sequence[np.ndarray], params: Sequence[np.ndarray], dtype: str
    ) -> tuple[list[Array], list[Array]]:
        data_moved, params_moved = method(data, params, dtype)
        return (
            _as_many(engine, "asinputs", list(data_moved), len(data)),
            _as_many(engine, "asinputs", list(params_moved), len(params)),
        )

    return checked


def to_numpy_all_of(engine: GradientEngine) -> Callable[[Sequence[Array]], list[np.ndarray]]:
    """The engine's ``to_numpy_all`` (checked as ``asarrays_of`` checks); by default
    ``to_numpy`` on each array."""
    method: Callable[[Sequence[Array]], list[np.ndarray]] | None = getattr(
        engine, "to_numpy_all", None
    )
    if method is None:

        def to_numpy_all(arrays: Sequence[Array]) -> list[np.ndarray]:
            return [engine.to_numpy(array) for array in arrays]

        return to_numpy_all

    def checked(arrays: Sequence[Array]) -> list[np.ndarray]:
        return _as_many(engine, "to_numpy_all", list(method(arrays)), len(arrays))

    return checked


def _as_many(engine: GradientEngine, member: str, out: list[Any], count: int) -> list[Any]:
    """``out``, if a batched move gave one array per array; else an error naming the engine
    (a plug-in's mistake, which would otherwise surface as a misaligned result)."""
    if len(out) != count:
        raise ArgumentError(
            "engine", f"engine {engine.name!r}: {member} returned {len(out)} arrays for {count}"
        )
    return out


def block_of(engine: GradientEngine) -> Callable[[Any], Any]:
    """The engine's ``block``; by default, bring one result to the host, which waits for it."""
    method: Callable[[Any], Any] | None = getattr(engine, "block", None)
    if method is not None:
        return method

    def to_host(tree: Any) -> Any:
        engine.to_numpy(tree[0] if isinstance(tree, tuple) else tree)
        return tree

    return to_host


#: What an engine can do, in the order listings show it.
CAPABILITIES = ("gradient", "hvp", "jacobian", "forward mode", "per-example", "compiled loop")


def capabilities_of(engine: Any) -> dict[str, bool]:
    """What an engine (an object, or an engine class, which need not be importable-ready:
    nothing is constructed) can do, by ``CAPABILITIES`` name.

    An optional member counts when it is there and is not
    [`AbstractEngine`][gradlab.AbstractEngine]'s refusing default; ``per-example`` means
    vectorised per-example gradients (every engine can loop over rows); ``forward mode``
    means Jacobian-vector products.
    """

    def offers(member: str) -> bool:
        method = getattr(engine, member, None)
        if method is None:
            return False
        default = getattr(AbstractEngine, member, None)
        return getattr(method, "__func__", method) is not default

    return {
        "gradient": True,
        "hvp": offers("hvp"),
        "jacobian": offers("jacobian"),
        "forward mode": offers("jvp"),
        "per-example": offers("per_example_grads"),
        "compiled loop": bool(getattr(engine, "compiled_loop", False)),
    }


def is_approximate(engine: GradientEngine) -> bool:
    """Whether the engine declares its derivatives approximate (``approximate = True``)."""
    return bool(getattr(engine, "approximate", False))


def runs_hand_of(engine: GradientEngine) -> bool:
    """Whether the engine runs a problem's hand derivation rather than differentiating its
    loss (``runs_hand = True``, the ``numpy`` engine)."""
    return bool(getattr(engine, "runs_hand", False))


def _optional(engine: GradientEngine, member: str, problem: AbstractProblem, what: str) -> Any:
    """``engine.<member>(problem)``, or ``NotSupported`` naming ``what`` when the engine lacks
    it; a problem without an implementation for the engine's framework is refused too,
    unless the function runs a hand derivation instead of the loss (marked ``hand``)."""
    method = getattr(engine, member, None)
    if method is None:
        raise NotSupported(f"engine {engine.name!r} does not compute {what}")
    function = method(problem)
    if not runs_hand(function):
        problem.check_namespace(engine.xp)
    return function


def jacobian_of(engine: GradientEngine, problem: AbstractProblem) -> Jacobian:
    """The engine's ``(params, data) -> (value, Jacobian)`` for ``problem``, or ``NotSupported``."""
    function: Jacobian = _optional(engine, "jacobian", problem, "Jacobians")
    return function


def jvp_of(engine: GradientEngine, problem: AbstractProblem) -> JVP:
    """The engine's Jacobian-vector product for ``problem``, or ``NotSupported``."""
    function: JVP = _optional(engine, "jvp", problem, "Jacobian-vector products")
    return function


def vjp_of(engine: GradientEngine, problem: AbstractProblem) -> VJP:
    """The engine's vector-Jacobian product for ``problem``, or ``NotSupported``."""
    function: VJP = _optional(engine, "vjp", problem, "vector-Jacobian products")
    return function


def per_example_of(engine: GradientEngine, problem: AbstractProblem) -> PerExample:
    """The engine's per-example gradients for ``problem``; by default, one row at a time."""
    if getattr(engine, "per_example_grads", None) is None:
        return per_row(engine, value_and_grad_of(engine, problem))
    function: PerExample = _optional(engine, "per_example_grads", problem, "")
    return function


def float_dtype(tree: Any, xp: Any, default: Any) -> Any:
    """The dtype of the first floating-point array in ``tree`` (else ``default``): the
    precision a loop or a call follows, for engines whose precision is chosen per call."""
    for leaf in leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if (
            dtype is not None
            and not isinstance(leaf, np.generic)
            and xp.isdtype(dtype, "real floating")
        ):
            return dtype
    return default


def numbers_as_arrays(tree: Any, make: Callable[[float], Array]) -> Any:
    """``tree`` with each Python number (Adam's step count in a loop's carry) made a 0-d
    array by ``make``. Why: compiled code is specialised on the value of a Python number, so
    a count that changes every step would compile every step."""

    def array(leaf: Any) -> Any:
        if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            return make(leaf)
        return leaf

    return tree_map(array, tree)


def row(data: Data, index: int) -> dict[str, Array]:
    """Row ``index`` of every data array, as a batch of one (the leading axis kept)."""
    return {name: value[index : index + 1] for name, value in data.items()}


def per_row(engine: GradientEngine, value_and_grad: ValueAndGrad) -> PerExample:
    """Per-example gradients as a loop: ``value_and_grad`` on each row, stacked on the
    engine (for engines and losses that cannot vectorise over rows)."""
    xp = engine.xp

    def per_example(params: Params, data: Data) -> dict[str, Array]:
        rows = len(next(iter(data.values())))
        grads = [value_and_grad(params, row(data, i))[1] for i in range(rows)]
        return {name: xp.stack([grad[name] for grad in grads]) for name in params}

    # Marked as running a hand derivation so that per_example_of does not check the loss's
    # namespace again: value_and_grad came through value_and_grad_of, which did.
    return hand(per_example)
