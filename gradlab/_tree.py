"""Nests of dicts, lists, tuples and NamedTuples of arrays (pytrees): gradlab's one implementation.

Why gradlab's own and not ``jax.tree_util`` or ``optree``: the core depends on NumPy alone,
and gradlab needs little: map a function over leaves, and flatten a nest into named leaves
and back. A leaf's name is its path, written as a reader would index it
(``layers[0].w``), so reports, tables and plots name elements the way the user wrote them.

Every entry point flattens the caller's nests once, where arguments are checked
(``gradlab._boundary.prepare``): inside, gradlab works on flat ``{path: array}`` dicts, and
results are rebuilt into the caller's structure on the way out. A flat dict of plain names
is its own flattening, so it costs nothing.
"""

from __future__ import annotations

import collections
import functools
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A leaf's position: the keys, indices and field names leading to it.
Keys = tuple[Any, ...]

# A dict key written without brackets in a path: no dots, brackets or quotes in it.
_BARE = re.compile(r"[^.\[\]'\"]+")


_CONTAINERS = (Mapping, list, tuple)


def _is_namedtuple(tree: object) -> bool:
    return isinstance(tree, tuple) and hasattr(tree, "_fields")


def _is_numbers(tree: object) -> bool:
    """Whether ``tree`` is a number, or a non-empty list or tuple of them (nested or not)."""
    if isinstance(tree, numbers.Real):
        return True
    return (
        isinstance(tree, (list, tuple))
        and not _is_namedtuple(tree)
        and len(tree) > 0
        and all(map(_is_numbers, tree))
    )


def _children(tree: Any) -> list[tuple[Any, Any]] | None:
    """``(key, child)`` pairs of a container, in order; ``None`` for a leaf.

    A list or tuple of plain numbers (``[1.0, -1.0]``, ``[[1, 2], [3, 4]]``) is one array,
    a leaf, as gradlab has always read ``{"w": [1.0, -1.0]}``; a list of arrays (or of
    dicts) is a container.
    """
    if isinstance(tree, Mapping):
        return list(tree.items())
    if _is_namedtuple(tree):
        return list(zip(tree._fields, tree, strict=True))
    if isinstance(tree, (tuple, list)) and not _is_numbers(tree):
        return list(enumerate(tree))
    return None


def tree_map(function: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """The same nest with ``function`` applied to every leaf (anything not a container).

    With more trees (of the same structure), ``function`` takes the leaves at the same
    position in each, as ``jax.tree_util.tree_map`` does; dicts are matched by key.
    """
    if type(tree) is dict and not rest:  # the common case, flat dicts of arrays: no recursion
        return {
            key: tree_map(function, value) if isinstance(value, _CONTAINERS) else function(value)
            for key, value in tree.items()
        }
    if type(tree) is dict and len(rest) == 1 and type(rest[0]) is dict:
        # Two flat dicts (an optimizer's update, apply_updates): every step of every fit.
        other = rest[0]
        return {
            key: tree_map(function, value, other[key])
            if isinstance(value, _CONTAINERS)
            else function(value, other[key])
            for key, value in tree.items()
        }
    if isinstance(tree, Mapping):
        return _mapping(
            type(tree),
            {
                key: tree_map(function, value, *(other[key] for other in rest))
                for key, value in tree.items()
            },
        )
    if _is_namedtuple(tree):
        return type(tree)(
            *(
                tree_map(function, value, *others)
                for value, *others in zip(tree, *rest, strict=True)
            )
        )
    if isinstance(tree, (tuple, list)):
        return type(tree)(
            tree_map(function, value, *others) for value, *others in zip(tree, *rest, strict=True)
        )
    return function(tree, *rest)


def leaves(tree: Any) -> list[Any]:
    """Every leaf of the nest, in order."""
    found: list[Any] = []
    tree_map(found.append, tree)
    return found


def path(keys: Keys) -> str:
    """A leaf's name for reports: ``layers[0].w`` (keys and fields dotted, indices bracketed)."""
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int) and not isinstance(key, bool):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and _BARE.fullmatch(key):
            parts.append(f".{key}" if parts else key)
        else:
            parts.append(f"[{key!r}]")
    return "".join(parts)


def element(name: str, index: tuple[int, ...]) -> str:
    """One element of the leaf ``name``, for reports: ``w[1, 2]``, or ``b`` for a scalar."""
    return f"{name}[{', '.join(map(str, index))}]" if index else name


def subscript(argument: str, keys: Keys) -> str:
    """A leaf as Python indexes it, for errors naming an argument: ``init['layers'][0]['w']``."""
    return argument + "".join(f"[{key!r}]" for key in keys)


def named_leaves(tree: Any) -> list[tuple[Keys, Any]]:
    """Every leaf of a nest with its keys, in order (lists of numbers are leaves)."""
    return list(_walk(tree))


def _walk(tree: Any, prefix: Keys = ()) -> Iterator[tuple[Keys, Any]]:
    children = _children(tree)
    if children is None:
        yield prefix, tree
        return
    for key, child in children:
        yield from _walk(child, (*prefix, key))


def _node(tree: Any) -> Any:
    """A hashable description of the containers, without the leaves."""
    children = _children(tree)
    if children is None:
        return None
    if isinstance(tree, Mapping):
        return ("dict", tuple((key, _node(value)) for key, value in children), type(tree))
    if _is_namedtuple(tree):
        return ("namedtuple", type(tree), tuple(_node(value) for _, value in children))
    return (type(tree).__name__, tuple(_node(value) for _, value in children))


def _mapping(kind: type, items: dict[Any, Any]) -> Any:
    """``items`` as a mapping of the caller's type (an ``OrderedDict``, a torch ``state_dict``,
    a Flax ``FrozenDict``) where that type is built from a dict; else as a plain dict."""
    if kind is dict:
        return items
    try:
        return kind(items)
    except Exception:  # a mapping type built otherwise (defaultdict, MappingProxyType, ...)
        return items


def _build(node: Any, values: Iterator[Any]) -> Any:
    if node is None:
        return next(values)
    kind = node[0]
    if kind == "dict":
        return _mapping(node[2], {key: _build(child, values) for key, child in node[1]})
    if kind == "namedtuple":
        return node[1](*(_build(child, values) for child in node[2]))
    built = [_build(child, values) for child in node[1]]
    return tuple(built) if kind == "tuple" else built


@dataclass(frozen=True)
class Structure:
    """The containers of a nest without its leaves (a treedef): how to flatten and rebuild it.

    Attributes:
        keys: Each leaf's keys, in order.
        paths: Each leaf's name (``layers[0].w``), in the same order: the keys of the flat
            dict that ``flatten`` gives.
    """

    node: Any
    keys: tuple[Keys, ...]
    paths: tuple[str, ...] = field(compare=False)

    @functools.cached_property
    def trivial(self) -> bool:
        """Whether the nest is a plain flat dict whose names are their own paths (nothing to
        do; another mapping type, an ``OrderedDict``, is rebuilt as such). Computed once:
        every fit asks several times."""
        return (
            self.node is not None
            and self.node[0] == "dict"
            and self.node[2] is dict
            and all(
                child is None and isinstance(key, str) and path((key,)) == key
                for key, child in self.node[1]
            )
        )

    def flatten(self, tree: Any) -> dict[str, Any]:
        """``{path: leaf}`` of a nest with this structure."""
        if self.trivial and isinstance(tree, Mapping):
            return dict(tree)
        return dict(zip(self.paths, (leaf for _, leaf in _walk(tree)), strict=True))

    def unflatten(self, flat: Mapping[str, Any]) -> Any:
        """The nest with this structure whose leaves are ``flat``'s values, by path."""
        return _build(self.node, iter([flat[name] for name in self.paths]))

    def unflatten_within(self, tree: Any) -> Any:
        """``tree`` with every flat dict of this structure's paths rebuilt as a nest.

        Optimizer states hold one dict of the parameters' paths per moment (Adam's ``mu``
        and ``nu``); this gives them the parameters' structure.
        """
        if self.trivial:
            return tree
        names = set(self.paths)
        return _replace(
            tree, lambda node: isinstance(node, Mapping) and set(node) == names, self.unflatten
        )

    def flatten_within(self, tree: Any) -> Any:
        """``tree`` with every nest of this structure flattened: ``unflatten_within`` undone."""
        if self.trivial:
            return tree
        return _replace(tree, lambda node: _node(node) == self.node, self.flatten)


def _replace(tree: Any, matches: Callable[[Any], bool], replace: Callable[[Any], Any]) -> Any:
    """``tree`` with every subtree that ``matches`` replaced by ``replace(subtree)``."""
    if matches(tree):
        return replace(tree)
    children = _children(tree)
    if children is None:
        return tree
    rebuilt = [_replace(child, matches, replace) for _, child in children]
    if isinstance(tree, Mapping):
        return _mapping(type(tree), dict(zip(tree, rebuilt, strict=True)))
    if _is_namedtuple(tree):
        return type(tree)(*rebuilt)
    return type(tree)(rebuilt)


def structure(tree: Any) -> Structure:
    """The structure of a nest."""
    if type(tree) is dict and all(type(leaf) in _PLAIN_LEAVES for leaf in tree.values()):
        # A flat dict of arrays and numbers, what nearly every call passes: the same
        # Structure as the walk below builds, without the walk (every fit takes two).
        keys = tuple((key,) for key in tree)
        node = ("dict", tuple((key, None) for key in tree), dict)
        return Structure(node, keys, tuple(path(k) for k in keys))
    keys = tuple(keys for keys, _ in _walk(tree))
    return Structure(_node(tree), keys, tuple(path(k) for k in keys))


#: Types that are always leaves (``_children`` is None for them).
_PLAIN_LEAVES = frozenset({np.ndarray, np.float64, np.float32, float, int})


def flatten(tree: Any) -> tuple[dict[str, Any], Structure]:
    """``({path: leaf}, structure)``: a nest's named leaves, and how to rebuild it."""
    shape = structure(tree)
    return shape.flatten(tree), shape


class _Whole:
    """A subtree held as one leaf (see [`flatten_up_to`][gradlab._tree.flatten_up_to])."""

    def __init__(self, tree: Any) -> None:
        self.tree = tree


def flatten_up_to(tree: Any, matches: Callable[[Any], bool]) -> tuple[dict[str, Any], Structure]:
    """``flatten``, with every subtree for which ``matches`` is true kept whole as one leaf.

    A Jacobian is the output's nest with a ``{param: block}`` dict at each output leaf: this
    gives ``{output path: {param: block}}`` and the output's structure.
    """
    flat, shape = flatten(_replace(tree, matches, _Whole))
    return {
        name: leaf.tree if isinstance(leaf, _Whole) else leaf for name, leaf in flat.items()
    }, shape


def layout(tree: Any) -> Any:
    """The containers of a nest as JSON (leaves ``None``), so that a saved nest, which JSON
    writes with lists for tuples and strings for keys, can be rebuilt as it was
    ([`rebuild`][gradlab._tree.rebuild])."""
    children = _children(tree)
    if children is None:
        return None
    pairs = [
        [key if isinstance(key, (str, int)) else str(key), layout(child)] for key, child in children
    ]
    if isinstance(tree, Mapping):
        return {"dict": pairs}
    if _is_namedtuple(tree):
        return {"namedtuple": type(tree).__name__, "fields": pairs}
    return {type(tree).__name__: [child for _, child in pairs]}


def rebuild(shape: Any, saved: Any, leaf: Callable[[Any], Any]) -> Any:
    """The nest that ``layout`` described, from its JSON form ``saved``; ``leaf`` makes each
    leaf (an array). A NamedTuple comes back as a NamedTuple of the same name and fields."""
    if shape is None:
        return leaf(saved)
    if "dict" in shape:
        return {key: rebuild(child, saved[str(key)], leaf) for key, child in shape["dict"]}
    if "namedtuple" in shape:
        fields = [name for name, _ in shape["fields"]]
        kind = collections.namedtuple(shape["namedtuple"], fields)  # type: ignore[misc]
        return kind(
            *(rebuild(child, saved[i], leaf) for i, (_, child) in enumerate(shape["fields"]))
        )
    ((kind_name, children),) = shape.items()
    built = [rebuild(child, saved[i], leaf) for i, child in enumerate(children)]
    if kind_name not in ("list", "tuple") or len(saved) != len(children):
        raise ValueError(f"a saved nest does not match its layout at {kind_name!r}")
    return tuple(built) if kind_name == "tuple" else built
