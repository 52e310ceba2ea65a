"""One engine at one point: the loss and its derivatives, as NumPy arrays.

Each entry point checks its arguments at the boundary (``gradlab._boundary.prepare``), asks
the engine for the function, runs it once and checks what came back: the gradient
(``value_and_grad``), second derivatives (``hvp``, ``hessian``), and, beyond scalar losses,
Jacobians, JVPs and VJPs of vector-valued functions and per-example gradients, on any engine
that offers them. The ``*_at`` functions do the same on arguments already checked, for the
comparisons, which run them on every engine.

A vector-valued function is a problem whose ``loss(params, data, xp)`` returns any nest of
floating-point arrays (or a plain function of that signature). Its Jacobian is laid out as
``jax.jacobian`` lays it out: the output's structure outside, the parameters' inside, each
block of shape ``output.shape + param.shape``. What an engine lacks (a Jacobian from JVPs,
JVPs and VJPs from a Jacobian) is derived from what it has in ``gradlab.engines._derive``,
below the engines that use it.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._boundary import blame, check_hvp, check_named_output, evaluate, on_engine, prepare
from gradlab._checks import as_float_array, check_params, check_same_structure
from gradlab._errors import ArgumentError, ArgumentTypeError, GradlabError, naming
from gradlab._loss import calling, describe, runs_hand
from gradlab._tree import Structure, is_numbers, structure, subscript
from gradlab.engines._derive import split
from gradlab.engines._protocol import (
    HVP,
    GradientEngine,
    hvp_of,
    jacobian_of,
    jvp_of,
    per_example_of,
    vjp_of,
)
from gradlab.problems._base import AbstractProblem, Problem


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


# -- Second derivatives -----------------------------------------------------------------------

#: The largest number of parameter elements [`hessian`][gradlab.hessian] builds a full
#: matrix for: it costs one Hessian-vector product per element and memory for elements².
MAX_HESSIAN_SIZE = 2048


def hvp(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    tangent: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> Any:
    """The Hessian-vector product H·v of the loss at ``params``, on one engine.

    torch and jax compute it forward-over-reverse (a JVP of the gradient), ``numpy`` runs the
    problem's hand-derived product, and ``fd`` differences its own finite-difference gradient
    along ``tangent``.

    Args:
        problem: The problem.
        data: Its data (copied, never modified).
        params: Where to evaluate (copied, never modified).
        tangent: The vector v, with the structure and shapes of ``params``.
        engine: An engine name or object that offers ``hvp``.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        H·v with the structure and shapes of ``params``, as NumPy arrays of ``dtype``.

    Raises:
        NotSupported: the engine has no second derivatives.
        HandGradientMissing: engine ``"numpy"`` on a problem without a hand-derived product.

    Examples:
        >>> import numpy as np, gradlab
        >>> data = {"x": np.array([1.0, 2.0]), "y": np.array([0.0, 0.0])}
        >>> hv = gradlab.hvp(gradlab.Quadratic(), data, {"w": 0.0, "b": 0.0},
        ...                  {"w": 1.0, "b": 0.0}, engine="numpy")
        >>> float(hv["w"]), float(hv["b"])  # (Σx⁴, Σx²): the first column of H
        (17.0, 5.0)
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        problem, data, params, engine, dtype, "params"
    )
    checked_tangent = check_tangent(tangent, checked_params, layout)
    with naming("engine"):
        product = hvp_of(engine, flat)
    batch = on_engine(engine, checked_data, dtype)
    return layout.unflatten(
        hvp_at(engine, flat, product, batch, checked_params, checked_tangent, dtype)
    )


def check_tangent(
    tangent: object, params: Mapping[str, np.ndarray], layout: Structure
) -> dict[str, np.ndarray]:
    """``tangent`` by path: the structure and shapes of the parameters, or an error naming it.

    Dicts match by key whatever their order (``jax.tree_util.tree_map`` sorts them).
    """
    check_same_structure("tangent", tangent, layout, "params")
    checked, _ = check_params(
        tangent, {name: value.shape for name, value in params.items()}, "tangent"
    )
    return {name: checked[name] for name in params}


def hessian(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    engine: str | GradientEngine,
    dtype: str = "float64",
) -> Any:
    """The full Hessian of the loss at ``params``, one Hessian-vector product per element.

    Meant for small problems (at most ``MAX_HESSIAN_SIZE`` parameter elements); use
    [`hvp`][gradlab.hvp] beyond that.

    Returns:
        Nested blocks as ``jax.hessian`` gives them: ``H[a][b]`` has shape
        ``shape(a) + shape(b)`` and holds ∂²L/∂a∂b. For nested parameters, the outer nest
        has their structure and each of its leaves is a nest of that structure again.

    Examples:
        >>> import numpy as np, gradlab
        >>> data = {"x": np.array([1.0, 2.0]), "y": np.array([0.0, 0.0])}
        >>> H = gradlab.hessian(gradlab.Quadratic(), data, {"w": 0.0, "b": 0.0}, engine="fd")
        >>> [[round(float(H[a][b]), 6) for b in "wb"] for a in "wb"]  # [[Σx⁴, Σx²], [Σx², n]]
        [[17.0, 5.0], [5.0, 2.0]]
    """
    engine, dtype, flat, checked_data, checked_params, layout = prepare(
        problem, data, params, engine, dtype, "params"
    )
    blocks = hessian_blocks(engine, flat, checked_data, checked_params, dtype)
    return layout.unflatten({a: layout.unflatten(row) for a, row in blocks.items()})


def hessian_blocks(
    engine: GradientEngine,
    problem: AbstractProblem,
    data: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    dtype: str,
) -> dict[str, dict[str, np.ndarray]]:
    """[`hessian`][gradlab.hessian] on checked arguments."""
    size = sum(value.size for value in params.values())
    if size > MAX_HESSIAN_SIZE:
        raise ArgumentError(
            "params",
            f"has {size} elements; a full Hessian is built for at most {MAX_HESSIAN_SIZE} "
            "(use gradlab.hvp for Hessian-vector products)",
        )
    with naming("engine"):
        product = hvp_of(engine, problem)
    batch = on_engine(engine, data, dtype)  # moved once, used by every product
    blocks: dict[str, dict[str, np.ndarray]] = {
        a: {b: np.empty(params[a].shape + params[b].shape, dtype) for b in params} for a in params
    }
    for a, value in params.items():
        for i in np.ndindex(value.shape):
            # H·e_(a,i) is the column of H for element i of a; H is symmetric, so that is
            # also the row: ∂²L/∂a_i∂b for every b.
            basis = {name: np.zeros_like(other) for name, other in params.items()}
            basis[a][i] = 1.0
            column = hvp_at(engine, problem, product, batch, params, basis, dtype)
            for b in params:
                blocks[a][b][i] = column[b]
    return blocks


def hessian_matrix(
    blocks: Mapping[str, Mapping[str, np.ndarray]], params: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The blocks of [`hessian`][gradlab.hessian] as one (P, P) matrix, parameters flattened in
    order."""
    sizes = {name: math.prod(value.shape) for name, value in params.items()}
    return np.block(
        [[np.reshape(blocks[a][b], (sizes[a], sizes[b])) for b in params] for a in params]
    )


def hvp_at(
    engine: GradientEngine,
    problem: AbstractProblem,
    product: HVP,
    batch: Mapping[str, Any],
    params: Mapping[str, np.ndarray],
    tangent: Mapping[str, np.ndarray],
    dtype: str,
) -> dict[str, np.ndarray]:
    """H·tangent at NumPy ``params``, with the data already on the engine, back in NumPy."""
    with np.errstate(all="ignore"), calling(problem, engine):
        out = product(on_engine(engine, params, dtype), on_engine(engine, tangent, dtype), batch)
    return check_hvp(engine, problem, product, out, params, dtype)


# -- Vector-valued functions: Jacobians, JVPs, VJPs; per-example gradients ------------------


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
    fault = blame(engine, problem, "jacobian", runs_hand(function))
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise fault(f"must return a pair (value, jacobian), got {describe(output)}")
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
    fault = blame(engine, flat, "jvp", runs_hand(product))
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise fault(f"must return a pair (value, product), got {describe(output)}")
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
    fault = blame(engine, flat, "vjp", runs_hand(product))
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
    fault = blame(engine, problem, "per_example_grads", False)
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
    if isinstance(cotangent, (Mapping, list, tuple)) and not is_numbers(cotangent):
        return check_params(cotangent, None, "cotangent")
    weights = as_float_array(cotangent, "cotangent")
    return {"": weights}, structure(weights)


def _shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{path or 'the output'} {shape}" for path, shape in shapes.items())
