"""Beyond scalar losses: Jacobians, JVPs and VJPs of vector-valued functions, and per-example
gradients, on any engine that offers them.

A vector-valued function is a problem whose ``loss(params, data, xp)`` returns any nest of
floating-point arrays (or a plain function of that signature). Its Jacobian is laid out as
``jax.jacobian`` lays it out: the output's structure outside, the parameters' inside, each
block of shape ``output.shape + param.shape``.

The NumPy helpers here derive what an engine lacks from what it has, once for every engine
that needs them: a Jacobian from JVPs (one column per parameter element: ``fd`` and
``complex-step``), JVPs and VJPs from a Jacobian (contractions: the hand-derived Jacobian).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._boundary import _blame, _describe, calling, check_named_output, on_engine, prepare
from gradlab._checks import as_float_array, check_params
from gradlab._errors import ArgumentError, ArgumentTypeError, GradlabError, naming
from gradlab._second import check_tangent
from gradlab._tree import Structure, _is_numbers, flatten_up_to, structure, subscript
from gradlab.comparison._report import Engines, GradientReport
from gradlab.comparison._report import _arguments as arguments
from gradlab.comparison._report import _report as report
from gradlab.engines._protocol import (
    JVP,
    VJP,
    GradientEngine,
    Jacobian,
    Params,
    Tree,
    jacobian_of,
    jvp_of,
    per_example_of,
    vjp_of,
)
from gradlab.problems._base import AbstractProblem, Data, Problem

_WRAPPED: weakref.WeakKeyDictionary[Any, AbstractProblem] = weakref.WeakKeyDictionary()


def as_function(function: object) -> AbstractProblem:
    """A problem as it is; a plain ``f(params, data, xp)`` as a [`Problem`][gradlab.Problem]."""
    if isinstance(function, AbstractProblem):
        return function
    if callable(function) and not isinstance(function, type):
        try:
            return _WRAPPED[function]
        except (KeyError, TypeError):  # new, or not weakly referable
            pass
        name = getattr(function, "__name__", "function")
        problem = Problem(function, name="function" if name == "<lambda>" else name)
        with contextlib.suppress(TypeError):
            # The same Problem for the same function: what engines compiled for it is found.
            _WRAPPED[function] = problem
        return problem
    raise ArgumentTypeError(
        "function",
        "must be a gradlab problem or a function f(params, data, xp), got "
        f"{type(function).__name__}",
    )


# -- Derivations in NumPy, for the engines that need them ------------------------------------


def is_blocks(names: set[str]) -> Callable[[Any], bool]:
    """Whether a node of a Jacobian is one output leaf's ``{param: block}`` dict."""

    def matches(node: Any) -> bool:
        return (
            isinstance(node, Mapping)
            and set(node) == names
            and not any(isinstance(value, (Mapping, list, tuple)) for value in node.values())
        )

    return matches


def split(jacobian: Tree, names: set[str]) -> tuple[dict[str, dict[str, Any]], Structure]:
    """``({output path: {param: block}}, the output's structure)`` of a Jacobian."""
    return flatten_up_to(jacobian, is_blocks(names))


def jacobian_from_jvp(jvp: JVP) -> Jacobian:
    """The Jacobian as columns: one JVP along each parameter element (NumPy arrays)."""

    def jacobian(params: Params, data: Data) -> tuple[Tree, Tree]:
        columns: dict[str, list[dict[str, np.ndarray]]] = {}
        value: Tree = None
        out: Structure | None = None
        for name, param in params.items():
            columns[name] = []
            for index in np.ndindex(np.shape(param)):
                tangent = {other: np.zeros_like(v) for other, v in params.items()}
                tangent[name][index] = 1.0
                value, product = jvp(params, tangent, data)
                out = structure(value)
                columns[name].append(out.flatten(product))
        assert out is not None  # params is never empty
        blocks = {
            path: {
                name: np.stack([column[path] for column in columns[name]], axis=-1).reshape(
                    np.shape(flat_value) + np.shape(param)
                )
                for name, param in params.items()
            }
            for path, flat_value in out.flatten(value).items()
        }
        return value, out.unflatten(blocks)

    return jacobian


def jvp_from_jacobian(jacobian: Jacobian) -> JVP:
    """J·tangent by contracting a Jacobian (NumPy arrays)."""

    def jvp(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
        value, full = jacobian(params, data)
        blocks, out = split(full, set(params))
        return value, out.unflatten(
            {
                path: sum(
                    np.tensordot(row[name], tangent[name], axes=np.ndim(tangent[name]))
                    for name in params
                )
                for path, row in blocks.items()
            }
        )

    jvp.hand = getattr(jacobian, "hand", False)  # type: ignore[attr-defined]
    return jvp


def vjp_from_jacobian(jacobian: Jacobian) -> VJP:
    """cotangentᵀ·J by contracting a Jacobian (NumPy arrays)."""

    def vjp(params: Params, data: Data) -> tuple[Tree, Callable[[Tree], dict[str, Any]]]:
        value, full = jacobian(params, data)
        blocks, out = split(full, set(params))

        def pullback(cotangent: Tree) -> dict[str, Any]:
            flat = out.flatten(cotangent)
            return {
                name: sum(
                    np.tensordot(flat[path], blocks[path][name], axes=np.ndim(flat[path]))
                    for path in blocks
                )
                for name in params
            }

        return value, pullback

    vjp.hand = getattr(jacobian, "hand", False)  # type: ignore[attr-defined]
    return vjp


# -- Entry points ------------------------------------------------------------------------------


def jacobian(
    function: Any,
    data: Any,
    params: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> Any:
    """The Jacobian of a vector-valued function at ``params``, on one engine.

    Reverse mode (``torch``, ``jax``: one VJP per output element, vectorised) or forward mode
    (``torch-fwd``, ``jax-fwd``: one JVP per parameter element); ``fd`` and
    ``complex-step`` build it a column at a time; ``numpy`` runs the problem's hand-derived
    Jacobian (or, for a scalar loss, its hand-derived gradient).

    Args:
        function: A problem whose ``loss`` returns arrays (any nest of them, a scalar too),
            or a plain function ``f(params, data, xp)``.
        data: Its data (copied, never modified); ``{}`` if it takes none.
        params: Where to differentiate (copied, never modified): any nest of arrays.
        engine: An engine name or object that offers Jacobians.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        Laid out as ``jax.jacobian``: the output's structure outside, the parameters'
        inside, blocks of shape ``output.shape + param.shape``, as NumPy arrays of ``dtype``.

    Raises:
        NotSupported: the engine has no Jacobians.
        HandGradientMissing: engine ``"numpy"`` without a hand-derived Jacobian.

    Examples:
        >>> import numpy as np, gradlab
        >>> def f(p, d, xp):
        ...     return xp.stack([p["x"][0] * p["x"][1], xp.sin(p["x"][0])])
        >>> J = gradlab.jacobian(f, {}, {"x": np.array([2.0, 3.0])}, engine="fd")
        >>> np.round(J["x"], 6).tolist()  # [[x1, x0], [cos x0, 0]]
        [[3.0, 2.0], [-0.416147, 0.0]]
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        as_function(function), data, params, engine, dtype, "params", "array"
    )
    _, blocks, out = jacobian_at(engine, flat, checked_data, checked_params, dtype)
    return out.unflatten({path: layout.unflatten(row) for path, row in blocks.items()})


def jacobian_at(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], Structure]:
    """One engine's value and Jacobian at checked NumPy ``params``: ``(value by output path,
    {output path: {param: block}}, the output's structure)``, checked, in NumPy."""
    with naming("engine"):
        function = jacobian_of(engine, problem)
    with np.errstate(all="ignore"), calling(problem, engine, params, data):
        output = function(on_engine(engine, params, dtype), on_engine(engine, data, dtype))
    fault = _blame(engine, problem, "jacobian", getattr(function, "hand", False))
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise fault(f"must return a pair (value, jacobian), got {_describe(output)}")
    value, out = _values(engine, fault, output[0], dtype)
    found, found_out = split(output[1], set(params))
    if found_out.paths != out.paths:
        raise fault(
            f"returned a Jacobian for outputs {list(found_out.paths)}, but the function "
            f"returned {list(out.paths)}"
        )
    like = {
        path: {name: np.zeros(value[path].shape + param.shape) for name, param in params.items()}
        for path in out.paths
    }
    blocks = {
        path: check_named_output(engine, fault, found[path], like[path], dtype)
        for path in out.paths
    }
    return value, blocks, out


def jvp(
    function: Any,
    data: Any,
    params: Any,
    tangent: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> tuple[Any, Any]:
    """The value of a vector-valued function and its Jacobian-vector product J·``tangent``.

    Forward mode where the engine has it (``jax``, ``torch``: one pass, whatever the
    sizes); ``fd`` and ``complex-step`` difference along ``tangent``; ``numpy`` contracts
    the hand-derived Jacobian.

    Args:
        function: As for [`jacobian`][gradlab.jacobian].
        data: Its data (copied, never modified).
        params: Where to differentiate (copied, never modified).
        tangent: The direction, with the structure and shapes of ``params``.
        engine: An engine name or object that offers JVPs.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        ``(value, J·tangent)``, both with the output's structure, as NumPy arrays.

    Examples:
        >>> import numpy as np, gradlab
        >>> f = lambda p, d, xp: p["x"] ** 2
        >>> value, product = gradlab.jvp(f, {}, {"x": np.array([1.0, 3.0])},
        ...                              {"x": np.array([1.0, 1.0])}, engine="fd")
        >>> value.tolist(), np.round(product, 9).tolist()  # (x², 2x·v)
        ([1.0, 9.0], [2.0, 6.0])
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        as_function(function), data, params, engine, dtype, "params", "array"
    )
    checked_tangent = check_tangent(tangent, checked_params, layout)
    with naming("engine"):
        product = jvp_of(engine, flat)
    with np.errstate(all="ignore"), calling(flat, engine, checked_params, checked_data):
        output = product(
            on_engine(engine, checked_params, dtype),
            on_engine(engine, checked_tangent, dtype),
            on_engine(engine, checked_data, dtype),
        )
    fault = _blame(engine, flat, "jvp", getattr(product, "hand", False))
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise fault(f"must return a pair (value, product), got {_describe(output)}")
    value, out = _values(engine, fault, output[0], dtype)
    found = _flat_like(fault, output[1], out, "product")
    return out.unflatten(value), out.unflatten(
        check_named_output(engine, fault, found, value, dtype)
    )


def vjp(
    function: Any,
    data: Any,
    params: Any,
    cotangent: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> tuple[Any, Any]:
    """The value of a vector-valued function and its vector-Jacobian product
    ``cotangent``ᵀ·J: reverse mode, one pass whatever the sizes, where the engine has it.

    Args:
        function: As for [`jacobian`][gradlab.jacobian].
        data: Its data (copied, never modified).
        params: Where to differentiate (copied, never modified).
        cotangent: A weight per output element, with the structure and shapes of the
            function's output (checked against it before the product is taken).
        engine: An engine name or object that offers VJPs.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        ``(value, cotangentᵀ·J)``: the value with the output's structure, the product with
        the parameters', as NumPy arrays.

    Examples:
        >>> import numpy as np, gradlab
        >>> f = lambda p, d, xp: p["x"] ** 2
        >>> value, product = gradlab.vjp(f, {}, {"x": np.array([1.0, 3.0])},
        ...                              np.array([1.0, 0.5]), engine="fd")
        >>> np.round(product["x"], 9).tolist()  # (2·x₀·1, 2·x₁·0.5)
        [2.0, 3.0]
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        as_function(function), data, params, engine, dtype, "params", "array"
    )
    weights, weights_layout = _check_cotangent(cotangent)
    with naming("engine"):
        product = vjp_of(engine, flat)
    with np.errstate(all="ignore"), calling(flat, engine, checked_params, checked_data):
        value_out, pullback = product(
            on_engine(engine, checked_params, dtype), on_engine(engine, checked_data, dtype)
        )
    fault = _blame(engine, flat, "vjp", getattr(product, "hand", False))
    value, out = _values(engine, fault, value_out, dtype)
    shapes = {path: np.shape(array) for path, array in value.items()}
    differs = out.difference(weights_layout)
    if differs is not None and differs[0]:  # a container inside: say which
        raise ArgumentError(
            subscript("cotangent", differs[0]),
            f"{differs[1]} (cotangent must have the structure of the function's output)",
        )
    if differs or {p: np.shape(w) for p, w in weights.items()} != shapes:
        raise ArgumentError(
            "cotangent",
            f"must have the structure and shapes of the function's output, {_shapes(shapes)}; "
            f"got {_shapes({p: np.shape(w) for p, w in weights.items()})}",
        )
    with np.errstate(all="ignore"), calling(flat, engine, checked_params, checked_data):
        result = pullback(out.unflatten(on_engine(engine, weights, dtype)))
    return out.unflatten(value), layout.unflatten(
        check_named_output(engine, fault, result, checked_params, dtype)
    )


def per_example_grads(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> Any:
    """Each row's gradient: the gradient of the loss on a batch of that row alone.

    Vectorised over rows where the framework can (``jax.vmap``, ``torch.func.vmap``), one
    row at a time through the engine's gradient otherwise (``numpy``, ``fd``, a loss that
    ``vmap`` cannot trace). Rows are the leading axis of every data array, which must all
    have the same length. For a mean loss each row's gradient is its own loss's; for a sum,
    the per-example gradients add up to the full gradient.

    Args:
        problem: The problem.
        data: Its data (copied, never modified): every array has one row per example.
        params: Where to take the gradients (copied, never modified).
        engine: An engine name or object.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        The parameters' structure, each leaf of shape ``(rows,) + param.shape``.

    Examples:
        >>> import numpy as np, gradlab
        >>> data = {"x": np.array([1.0, 2.0]), "y": np.array([0.0, 0.0])}
        >>> grads = gradlab.per_example_grads(gradlab.Quadratic(), data,
        ...                                   {"w": 1.0, "b": 0.0}, engine="numpy")
        >>> grads["w"].tolist()  # (w·x² + b − y)·x² per row
        [1.0, 16.0]
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        problem, data, params, engine, dtype, "params"
    )
    return layout.unflatten(per_example_at(engine, flat, checked_data, checked_params, dtype))


def rows_of(data: Mapping[str, np.ndarray]) -> int:
    """The number of rows every data array has, or an error naming ``data``."""
    lengths = {name: np.shape(value)[0] for name, value in data.items() if np.ndim(value) > 0}
    if not data or len(lengths) != len(data):
        raise ArgumentError(
            "data",
            "needs rows for per-example gradients: every array with a leading axis of one "
            f"row per example (got {_shapes({n: np.shape(v) for n, v in data.items()}) or 'none'})",
        )
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ArgumentError(
            "data",
            f"arrays must have the same number of rows, at least 1, got {_shapes(lengths)}",
        )
    return int(next(iter(lengths.values())))


def per_example_at(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> dict[str, np.ndarray]:
    """One engine's per-example gradients at checked NumPy ``params``, checked, in NumPy."""
    rows = rows_of(data)
    with naming("engine"):
        function = per_example_of(engine, problem)
    with np.errstate(all="ignore"), calling(problem, engine, params, data):
        output = function(on_engine(engine, params, dtype), on_engine(engine, data, dtype))
    fault = _blame(engine, problem, "per_example_grads", False)
    like = {name: np.zeros((rows, *np.shape(value))) for name, value in params.items()}
    return check_named_output(engine, fault, output, like, dtype)


# -- Checks -------------------------------------------------------------------------------------


def _values(
    engine: GradientEngine, fault: Callable[[str], GradlabError], tree: Any, dtype: str
) -> tuple[dict[str, np.ndarray], Structure]:
    """A function's value (a nest of engine arrays) by output path in NumPy, and its structure."""
    out = structure(tree)
    flat = out.flatten(tree)
    like = {path: np.zeros(tuple(getattr(leaf, "shape", ()))) for path, leaf in flat.items()}
    return check_named_output(engine, fault, flat, like, dtype), out


def _flat_like(
    fault: Callable[[str], GradlabError], tree: Any, out: Structure, what: str
) -> dict[str, Any]:
    """``tree`` by output path, refusing a structure other than the output's."""
    found = structure(tree)
    if found != out:
        raise fault(
            f"returned a {what} for outputs {list(found.paths)}, expected {list(out.paths)}"
        )
    return out.flatten(tree)


def _check_cotangent(cotangent: object) -> tuple[dict[str, np.ndarray], Structure]:
    """A cotangent by output path (float64 copies): one array, or any nest of them."""
    if isinstance(cotangent, (Mapping, list, tuple)) and not _is_numbers(cotangent):
        return check_params(cotangent, None, "cotangent")
    weights = as_float_array(cotangent, "cotangent")
    return {"": weights}, structure(weights)


def _shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{path or 'the output'} {shape}" for path, shape in shapes.items())


# -- Comparisons -------------------------------------------------------------------------------


def compare_jacobians(
    function: Any,
    data: Any,
    params: Any,
    *,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's Jacobian of a vector-valued function at ``params``, compared pairwise.

    Like [`compare_gradients`][gradlab.compare_gradients] (the same report, tolerances and
    overrides, outlier logic), over the Jacobian as one (outputs × parameters) matrix.
    Engines without Jacobians are skipped with a note. The default reference is ``"numpy"``
    when the problem has a hand-derived Jacobian (or, for a scalar loss, a hand-derived
    gradient), else ``"fd"``. Forward mode against reverse mode is one call:
    ``engines="jax,jax-fwd"``.

    Examples:
        >>> import numpy as np, gradlab
        >>> f = lambda p, d, xp: xp.tanh(d["A"] @ p["x"])
        >>> data = {"A": np.arange(6.0).reshape(3, 2) / 6}
        >>> report = gradlab.compare_jacobians(f, data, {"x": np.array([0.5, -1.0])},
        ...                                    engines="fd,jax,jax-fwd")
        >>> report.ok, report.values["fd"]["jacobian"].shape
        (True, (3, 2))
    """
    setup = arguments(
        as_function(function),
        data,
        params,
        engines,
        dtype,
        reference,
        tolerance,
        atol,
        rtol,
        progress,
        "array",
    )
    outputs: dict[str, tuple[int, ...]] = {}

    def compute(engine: GradientEngine, dtype: str) -> tuple[dict[str, np.ndarray], None]:
        value, blocks, _ = jacobian_at(engine, setup.problem, setup.data, setup.params, dtype)
        # Outputs in one order for every engine: jax sorts a dict's keys, a hand Jacobian
        # (and torch) keeps the order it was written in.
        paths = sorted(blocks)
        outputs.update({path: np.shape(value[path]) for path in paths})
        rows = [
            np.concatenate(
                [
                    np.reshape(blocks[path][name], (np.size(value[path]), -1))
                    for name in setup.params
                ],
                axis=1,
            )
            for path in paths
        ]
        return {"jacobian": np.concatenate(rows, axis=0)}, None

    return report(setup, "jacobian", compute, outputs)


def compare_per_example_grads(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's per-example gradients at ``params``, compared pairwise.

    Like [`compare_gradients`][gradlab.compare_gradients], over each row's gradient (see
    [`per_example_grads`][gradlab.per_example_grads]); elements are named ``w[1] of row 3``.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.LinearRegression()
        >>> report = gradlab.compare_per_example_grads(problem, problem.make_data(8, d=2),
        ...     {"w": [1.0, -1.0], "b": 0.0}, engines="numpy,fd")
        >>> report.ok, report.values["numpy"]["w"].shape
        (True, (8, 2))
    """
    setup = arguments(
        problem, data, params, engines, dtype, reference, tolerance, atol, rtol, progress
    )
    rows_of(setup.data)

    def compute(engine: GradientEngine, dtype: str) -> tuple[dict[str, np.ndarray], None]:
        return per_example_at(engine, setup.problem, setup.data, setup.params, dtype), None

    return report(setup, "per-example", compute)
