"""Nests of dicts, NamedTuples, tuples and lists: parameters and optimizer states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def tree_map(function: Callable[[Any], Any], tree: Any) -> Any:
    """The same nest with ``function`` applied to every leaf (anything not a container)."""
    if isinstance(tree, dict):
        return {key: tree_map(function, value) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple state
        return type(tree)(*(tree_map(function, value) for value in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(function, value) for value in tree)
    return function(tree)


def leaves(tree: Any) -> list[Any]:
    """Every leaf of the nest, in order."""
    found: list[Any] = []
    tree_map(found.append, tree)
    return found
