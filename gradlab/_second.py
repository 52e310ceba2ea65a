"""Second derivatives: Hessian-vector products on any engine that offers them, and Hessians."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradlab._boundary import calling, check_hvp, on_engine, prepare
from gradlab._checks import check_params, check_same_structure
from gradlab._errors import ArgumentError, naming
from gradlab._tree import Structure
from gradlab.engines._protocol import HVP, GradientEngine, hvp_of
from gradlab.problems._base import AbstractProblem

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
