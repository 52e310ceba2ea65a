"""What an engine lacks, derived from what it has.

Once for every engine that needs them: a Jacobian from JVPs (one column per parameter
element: ``fd`` and ``complex-step``), JVPs and VJPs from a Jacobian (contractions: the
hand-derived Jacobian). They run in NumPy, as do the engines that need them. (Per-example
gradients as a loop over rows, which every engine can derive, are the protocol's default:
``per_row`` in ``_protocol``, which this module's types come from.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gradlab._loss import hand, runs_hand
from gradlab._tree import Structure, flatten_up_to, structure

if TYPE_CHECKING:
    from gradlab.engines._protocol import (
        JVP,
        VJP,
        Data,
        Jacobian,
        Params,
        Tree,
    )


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

    return hand(jvp) if runs_hand(jacobian) else jvp


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

    return hand(vjp) if runs_hand(jacobian) else vjp
