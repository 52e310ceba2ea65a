"""The boundary between gradlab and the code users hand it, checked where it crosses.

Everything user-supplied reaches an engine through this module, whichever entry point it
came from ([`fit`][gradlab.fit], [`value_and_grad`][gradlab.value_and_grad], the
comparisons, the second derivatives, the benchmark):

- [`prepare`][gradlab._boundary.prepare] checks the problem, data, parameters, engine and
  dtype. For a problem that declares no parameter shapes it also evaluates the loss once in
  NumPy on a view of the parameters that records what the loss reads, so a parameter the
  loss needs but ``init`` lacks, or one ``init`` has that the loss never reads, is named
  before any framework runs.
- [`checked_loss`][gradlab.engines.checked_loss] (in ``gradlab._loss``, below the engines
  that differentiate it) refuses, on every engine alike, a loss that returns anything but a
  0-d floating-point array of the ``xp`` it was given; ``gradlab._loss.calling`` turns an
  exception raised inside user code into a [`ProblemError`][gradlab.ProblemError].
- [`check_value_and_grad`][gradlab._boundary.check_value_and_grad] and
  [`check_dtypes`][gradlab._boundary.check_dtypes] check what an engine (or a hand-derived
  gradient) returned: a scalar loss, gradients with the parameters' names and shapes, in the
  dtype asked for.
- [`check_optimizer`][gradlab._boundary.check_optimizer] runs one update of a
  user-supplied optimizer on NumPy arrays and checks its structure.
- [`check_steps`][gradlab._boundary.check_steps] refuses a fit whose per-step records could
  not fit in memory, before it starts.

Code gradlab wrote itself (its engines, problems and optimizers) is not probed again on
every call: [`crosses`][gradlab._boundary.crosses] says where user code crosses.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from gradlab._checks import check_dtype, check_params, check_positive_int
from gradlab._errors import ArgumentError, ArgumentTypeError, GradlabError, ProblemError, naming
from gradlab._flat import FlatView, flat_view
from gradlab._loss import MissingName, calling, checked_loss, checked_output, describe, runs_hand
from gradlab._tree import Keys, Structure, flatten, structure, tree_map
from gradlab.engines._protocol import (
    GradientEngine,
    asarrays_of,
    asinputs_of,
    value_and_grad_of,
)
from gradlab.engines._registry import get_engine
from gradlab.optimizers import GradientTransformation
from gradlab.problems._base import AbstractProblem, Problem
from gradlab.problems._native import NativeProblem


def check_problem(problem: object) -> AbstractProblem:
    """``problem`` if it is a gradlab problem, else an error naming ``problem``."""
    if not isinstance(problem, AbstractProblem):
        hint = " (a class: pass an instance)" if isinstance(problem, type) else ""
        raise ArgumentTypeError(
            "problem",
            f"must be a gradlab problem (AbstractProblem), got {type(problem).__name__}{hint}",
        )
    return problem


class Prepared(NamedTuple):
    """The checked arguments of an entry point, flat, and how to rebuild the caller's nests.

    Attributes:
        engine: The engine object.
        dtype: ``"float32"`` or ``"float64"``.
        problem: What engines are handed: the problem itself, or its
            [`FlatView`][gradlab._flat.FlatView] when parameters or data are nests.
        data: The data by path (read-only views or float64 copies).
        params: The parameters by path (float64 copies).
        layout: The parameters' structure: ``layout.unflatten`` rebuilds the caller's nest.
    """

    engine: GradientEngine
    dtype: str
    problem: AbstractProblem
    data: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    layout: Structure


def prepare(
    problem: object,
    data: object,
    params: object,
    engine: object,
    dtype: object,
    params_argument: str = "init",
    output: str = "scalar",
) -> Prepared:
    """Check the arguments every entry point shares; return them flat, ready for engines.

    Data comes back as read-only views of the caller's float arrays (or float64 copies of
    anything else), parameters as float64 copies: nothing the caller owns is ever written.
    Parameters and data may be nests; they come back flattened by path, with the problem
    wrapped to match. ``output="array"`` is for the Jacobian entry points: the loss may
    return any nest of floating-point arrays, not only a scalar.
    """
    checked = check_problem(problem)
    checked_dtype = check_dtype(dtype)
    with naming("engine"):
        checked_engine = get_engine(engine)  # type: ignore[arg-type]
    nested_data = checked.check_data(data)
    flat_data, data_layout = flatten(nested_data)
    shapes = checked.param_shapes(nested_data)
    checked_params, layout = check_params(params, shapes, params_argument)
    checked.check_params(checked_params, params_argument, layout)
    if shapes is None and checked.probe:
        _probe(checked, nested_data, layout.unflatten(checked_params), params_argument, output)
    return Prepared(
        checked_engine,
        checked_dtype,
        flat_view(checked, layout, data_layout),
        flat_data,
        checked_params,
        layout,
    )


class _Reads(dict):  # type: ignore[type-arg]
    """A dict that records which keys were read (a loss's view of its parameters).

    Every dict of a nest is one, sharing ``read``: the set of key paths read.
    """

    def __init__(
        self, values: Mapping[Any, Any], read: set[Keys], prefix: Keys, argument: str, kind: str
    ) -> None:
        super().__init__(values)
        self.read, self.prefix, self.argument, self.kind = read, prefix, argument, kind

    def __getitem__(self, key: Any) -> Any:
        self.read.add((*self.prefix, key))
        if key not in self:
            raise MissingName(self.argument, (*self.prefix, key), self.kind)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add((*self.prefix, key))
        return super().get(key, default)

    def _everything(self) -> None:
        # dict's own iteration: this class's would call back here, without end.
        self.read.update((*self.prefix, key) for key in dict.__iter__(self))

    def keys(self) -> Any:
        self._everything()
        return super().keys()

    def values(self) -> Any:
        self._everything()
        return super().values()

    def items(self) -> Any:
        self._everything()
        return super().items()

    def __iter__(self) -> Iterator[Any]:
        self._everything()
        return super().__iter__()


def _recording(tree: Any, read: set[Keys], argument: str, kind: str, prefix: Keys = ()) -> Any:
    """``tree`` with every dict a [`_Reads`][gradlab._boundary._Reads] sharing ``read``."""
    if isinstance(tree, Mapping):
        children = {
            key: _recording(value, read, argument, kind, (*prefix, key))
            for key, value in tree.items()
        }
        return _Reads(children, read, prefix, argument, kind)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(
            *(
                _recording(value, read, argument, kind, (*prefix, name))
                for name, value in zip(tree._fields, tree, strict=True)
            )
        )
    if isinstance(tree, (tuple, list)):
        return type(tree)(
            _recording(value, read, argument, kind, (*prefix, index))
            for index, value in enumerate(tree)
        )
    return tree


def _probe(
    problem: AbstractProblem, data: Any, params: Any, argument: str, output: str = "scalar"
) -> None:
    """Evaluate the loss once in NumPy, recording what it reads, for a problem whose
    parameters are not declared: the only way to name a missing or unused parameter.

    A parameter counts as read when the loss looked up the dict key nearest above it
    (``params["layers"][0]["w"]`` reads ``layers[0].w``; reading ``params["x"]``, a
    list, reads all of it; parameters with no dict above them, a top-level tuple or list, are
    read with the whole).
    """
    read: set[Keys] = {()}
    seen = _recording(params, read, argument, "params")
    given = _recording(data, set(), "data", "data")
    with np.errstate(all="ignore"), calling(problem, None, params_argument=argument):
        (checked_loss if output == "scalar" else checked_output)(problem)(seen, given, np)
    layout = structure(params)
    unused = [
        name
        for name, keys in zip(layout.paths, layout.keys, strict=True)
        if _looked_up(params, keys) not in read
    ]
    if unused:
        found = [
            name for name, keys in zip(layout.paths, layout.keys, strict=True) if name not in unused
        ]
        raise ArgumentError(
            argument,
            f"has parameter(s) {', '.join(map(repr, unused))} that problem {problem.name!r}'s "
            f"loss never reads (it reads {', '.join(map(repr, found)) or 'none'})",
        )


def _looked_up(tree: Any, keys: Keys) -> Keys:
    """The keys of a leaf up to its nearest dict key: what a loss looks up to reach it."""
    last = 0
    node = tree
    for depth, key in enumerate(keys, 1):
        if isinstance(node, Mapping):
            last = depth
        node = (
            getattr(node, key) if isinstance(key, str) and hasattr(node, "_fields") else node[key]
        )
    return keys[:last]


def evaluate(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
    argument: str = "params",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One engine's loss and gradient at checked NumPy ``params``, checked, back as NumPy."""
    with np.errstate(all="ignore"), calling(problem, engine, params, data, argument):
        with naming("engine"):
            function = value_and_grad_of(engine, problem)
        batch, point = on_engine_together(engine, data, params, dtype)
        output = function(point, batch)
    return check_value_and_grad(engine, problem, function, output, params, dtype)


def check_value_and_grad(
    engine: GradientEngine,
    problem: AbstractProblem,
    function: Callable[..., Any],
    output: object,
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What ``engine.value_and_grad(problem)`` returned, checked and brought to NumPy.

    A hand-derived gradient (the function runs ``problem.hand_value_and_grad``) is blamed
    as the problem's ``value_and_grad``; anything else as the engine.
    """
    fault = blame(
        engine, problem, "value_and_grad", runs_hand(function, problem.hand_value_and_grad)
    )
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        got = f"a {len(output)}-tuple" if isinstance(output, (tuple, list)) else describe(output)
        raise fault(f"must return a pair (loss, grads), got {got}")
    loss, grads = output
    host = check_named_output(engine, fault, {"loss": loss}, {"loss": np.zeros(())}, dtype)
    return host["loss"], check_named_output(engine, fault, grads, params, dtype)


def check_hvp(
    engine: GradientEngine,
    problem: AbstractProblem,
    function: Callable[..., Any],
    output: object,
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> dict[str, np.ndarray]:
    """What ``engine.hvp(problem)`` returned, checked and brought to NumPy."""
    fault = blame(engine, problem, "hvp", runs_hand(function, problem.hand_hvp))
    return check_named_output(engine, fault, output, params, dtype)


def blame(
    engine: GradientEngine, problem: AbstractProblem, function: str, hand: bool
) -> Callable[[str], GradlabError]:
    def fault(message: str) -> GradlabError:
        if hand:
            return ProblemError(problem.name, function, message, engine.name)
        return ArgumentError("engine", f"engine {engine.name!r}: {function} {message}")

    return fault


def check_named_output(
    engine: GradientEngine,
    fault: Callable[[str], GradlabError],
    output: object,
    like: Mapping[str, np.ndarray],
    dtype: str,
) -> dict[str, np.ndarray]:
    """Named engine arrays with the names and shapes of ``like``, as NumPy arrays of ``dtype``."""
    if not isinstance(output, Mapping):
        raise fault(f"must return a mapping from name to array, got {describe(output)}")
    if set(output) != set(like):
        raise fault(f"returned values for {sorted(output)}, expected {sorted(like)}")
    try:
        with np.errstate(all="ignore"):
            host = {name: engine.to_numpy(output[name]) for name in like}
    except GradlabError:
        raise
    except Exception as error:
        raise fault(f"returned values that cannot be read as arrays ({error})") from None
    for name, value in host.items():
        if not isinstance(value, (np.ndarray, np.generic)):
            raise fault(f"returned {name} as {describe(value)}")
        if np.shape(value) != np.shape(like[name]):
            raise fault(
                f"returned shape {np.shape(value)} for {name!r}, whose shape is "
                f"{np.shape(like[name])}"
            )
        if value.dtype != np.dtype(dtype):
            raise fault(f"returned {name} as {value.dtype}, but {dtype} was asked for")
    return {name: np.asarray(value) for name, value in host.items()}


def crosses(engine: GradientEngine, problem: AbstractProblem, function: Callable[..., Any]) -> bool:
    """Whether ``function`` (what ``engine.value_and_grad(problem)`` returned) runs code that
    gradlab did not write, so that what it returns must be checked before it is used.

    A built-in engine differentiates [`checked_loss`][gradlab.engines.checked_loss], which
    is checked where the loss returns; its gradients have the parameters' structure by
    construction. A plug-in or user engine, and a hand-derived gradient a user wrote, may
    return anything: their first call in a fit is checked.
    """
    if not _is_gradlab(type(engine)):
        return True
    if runs_hand(function, problem.hand_value_and_grad):
        user = problem.problem if isinstance(problem, FlatView) else problem
        return isinstance(user, (Problem, NativeProblem)) or not _is_gradlab(type(user))
    return False


def only_gradlab_code(engine: GradientEngine, problem: AbstractProblem) -> bool:
    """Whether only code gradlab wrote (the engine, and the problem's loss and hand
    derivation) sees the data that ``engine`` is handed for ``problem``: then none of it
    writes into the data, and the caller's arrays can be lent to the engine (shared, not
    copied) for as long as a call lasts."""
    user = problem.problem if isinstance(problem, FlatView) else problem
    return (
        _is_gradlab(type(engine))
        and _is_gradlab(type(user))
        and not isinstance(user, (Problem, NativeProblem))
    )


def _is_gradlab(thing: Any) -> bool:
    return str(getattr(thing, "__module__", "")).partition(".")[0] == "gradlab"


def on_engine(
    engine: GradientEngine, arrays: Mapping[str, np.ndarray], dtype: str
) -> dict[str, Any]:
    """Copies of named NumPy arrays as engine arrays of ``dtype``."""
    moved = asarrays_of(engine)(list(arrays.values()), dtype)
    return dict(zip(arrays, moved, strict=True))


def on_engine_together(
    engine: GradientEngine,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A call's named data and parameters as engine arrays of ``dtype``, in one call of the
    engine's ``asinputs``: one transfer where the framework batches, and the data placed as
    the engine places rows (spread over the devices of a data-parallel engine)."""
    moved_data, moved_params = asinputs_of(engine)(
        list(data.values()), list(params.values()), dtype
    )
    return dict(zip(data, moved_data, strict=True)), dict(zip(params, moved_params, strict=True))


def to_engine(tree: Any, engine: GradientEngine, dtype: str) -> Any:
    """Move every NumPy array in a nest of dicts, tuples and lists onto the engine.

    Python numbers (a step count) and None stay as they are.
    """

    def move(leaf: Any) -> Any:
        if isinstance(leaf, (np.ndarray, np.generic)):
            return engine.asarray(np.asarray(leaf), dtype)
        return leaf

    return tree_map(move, tree)


def check_dtypes(engine: GradientEngine, dtype: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Never report numbers in a precision other than the one asked for."""
    for what, array in arrays.items():
        got = np.asarray(array).dtype
        if got != np.dtype(dtype):
            raise ArgumentError(
                "engine",
                f"engine {engine.name!r} returned {what} as {got}, but {dtype} was asked for",
            )


def check_transformation(optimizer: object) -> Any:
    """``optimizer`` if it is one: gradlab's ``GradientTransformation``, optax's, or anything
    with ``init`` and ``update`` functions; else an error naming ``optimizer``."""
    if isinstance(optimizer, GradientTransformation) or (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        return optimizer
    raise ArgumentTypeError(
        "optimizer",
        "must be a GradientTransformation (gradlab.sgd(...), optax.adam(...), anything with "
        f"init and update), got {optimizer!r}",
    )


def check_optimizer(
    optimizer: object, params: Mapping[str, np.ndarray], resumed: Any = None
) -> Any:
    """The optimizer's state at ``params`` (``resumed``, checked, or a fresh one), after one
    update on NumPy arrays has shown the structure it must have.

    An optimizer touches arrays with arithmetic only, so it runs on NumPy as on any
    engine; a custom one that raises, returns ``None``, drops a parameter or changes its
    state's structure is named here, not as a framework error inside a compiled loop.
    """
    transformation = check_transformation(optimizer)
    if _is_gradlab(transformation.init) and _is_gradlab(transformation.update) and resumed is None:
        return transformation.init(params)  # gradlab's own: its structure is tested, not probed
    zeros = {name: np.zeros_like(value) for name, value in params.items()}
    try:
        with np.errstate(all="ignore"):
            fresh = transformation.init(params)
            output = transformation.update(zeros, fresh, params)
    except GradlabError:
        raise
    except Exception as error:
        raise ArgumentError(
            "optimizer", f"raised {type(error).__name__} on NumPy arrays: {error}"
        ) from error
    if not isinstance(output, tuple) or len(output) != 2:
        raise ArgumentError(
            "optimizer", f"update must return (updates, state), got {describe(output)}"
        )
    updates, new_state = output
    if not isinstance(updates, Mapping) or set(updates) != set(params):
        got = sorted(updates) if isinstance(updates, Mapping) else describe(updates)
        raise ArgumentError(
            "optimizer", f"update returned updates for {got}, expected {sorted(params)}"
        )
    for name, value in params.items():
        if np.shape(updates[name]) != np.shape(value):
            raise ArgumentError(
                "optimizer",
                f"update returned shape {np.shape(updates[name])} for {name!r}, whose shape "
                f"is {np.shape(value)}",
            )
    check_state(new_state, fresh, "optimizer", "the state its update returns")
    if resumed is None:
        return fresh
    check_state(resumed, fresh, "resume", "resume.state")
    return resumed


def check_state(state: Any, expected: Any, argument: str, where: str) -> None:
    """``state`` must have the structure (containers and shapes) of ``expected``."""
    if isinstance(expected, Mapping):
        if not isinstance(state, Mapping) or set(state) != set(expected):
            raise ArgumentError(argument, f"{where} does not match the optimizer's state")
        for key in expected:
            check_state(state[key], expected[key], argument, f"{where}[{key!r}]")
    elif isinstance(expected, tuple):
        if type(state) is not type(expected) or len(state) != len(expected):
            raise ArgumentError(
                argument,
                f"{where} is a {type(state).__name__}, but the optimizer's state is a "
                f"{type(expected).__name__}",
            )
        for index, (item, want) in enumerate(zip(state, expected, strict=True)):
            check_state(item, want, argument, f"{where}[{index}]")
    elif np.shape(state) != np.shape(expected):
        raise ArgumentError(
            argument, f"{where} has shape {np.shape(state)}, expected {np.shape(expected)}"
        )


def check_steps(steps: object, per_step_bytes: int) -> int:
    """``steps`` as a positive int whose per-step records (losses, a trajectory) can exist.

    A fit keeps ``per_step_bytes`` for every step until it ends; more steps than this
    machine's memory can hold are refused up front, not after the memory has run out.
    """
    count = check_positive_int(steps, "steps")
    memory = physical_memory()
    if memory is not None and count * per_step_bytes > memory:
        raise ArgumentError(
            "steps",
            f"is {count}: a fit records {per_step_bytes} bytes per step (its loss"
            f"{' and parameters' if per_step_bytes > 8 else ''}), "
            f"{_gigabytes(count * per_step_bytes)}, more than this machine's "
            f"{_gigabytes(memory)} of memory; fit in stretches with resume=",
        )
    return count


@functools.cache
def physical_memory() -> int | None:
    """Bytes of physical memory, where the platform says (POSIX ``sysconf``); read once (it
    does not change under a running process, and every fit asks)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _gigabytes(count: int) -> str:
    return f"{count / 2**30:.3g} GiB" if count < 2**70 else f"about 2^{math.log2(count):.0f} bytes"
