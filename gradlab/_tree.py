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

import ast
import collections
import functools
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: A leaf's position: the keys, indices and field names leading to it.
Keys = tuple[Any, ...]

# A dict key written without brackets in a path: no dots, brackets or quotes in it.
_BARE = re.compile(r"[^.\[\]'\"]+")


_CONTAINERS = (Mapping, list, tuple)

#: The deepest nest gradlab walks. Real models nest a few levels, NumPy arrays at most 64
#: (written as lists); every walk below recurses, and Python's recursion limit is 1000.
MAX_DEPTH = 100

#: The most containers a nest may hold. A nest that shares a subtree (``t = [t, t]``,
#: repeated) can describe more leaves than memory holds in a few lines.
MAX_CONTAINERS = 100_000


class NestError(ValueError):
    """A nest that gradlab cannot walk: one that holds itself, or nests too deep or too wide.

    Attributes:
        keys: Where it was found.
    """

    def __init__(self, keys: Keys, message: str) -> None:
        super().__init__(message)
        self.keys = keys


def check_walkable(tree: Any) -> None:
    """Refuse a nest that holds itself, or is deeper than ``MAX_DEPTH`` or larger than
    ``MAX_CONTAINERS``, before any recursive walk meets it.

    Iterative, so the check itself cannot overflow the stack; every list and tuple counts as
    a container here, lists of numbers too (a 100-deep list of numbers is no array either).

    Raises:
        NestError: Naming where.
    """
    # Depth first, with the containers above the current one in ``above``: an ``_EXIT``
    # entry takes a container out of it once its children are done.
    stack: list[tuple[Any, Keys]] = [(tree, ())] if isinstance(tree, _CONTAINERS) else []
    above: set[int] = set()
    count = 0
    while stack:
        node, keys = stack.pop()
        if node is _EXIT:
            above.discard(keys[0])
            continue
        if id(node) in above:
            raise NestError(keys, "contains itself")
        if len(keys) >= MAX_DEPTH:
            raise NestError(keys[:1], f"nests deeper than {MAX_DEPTH} levels")
        count += 1
        if count > MAX_CONTAINERS:
            raise NestError(keys[:1], f"holds more than {MAX_CONTAINERS:,} containers")
        above.add(id(node))
        stack.append((_EXIT, (id(node),)))
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        stack.extend(
            (child, (*keys, key)) for key, child in items if isinstance(child, _CONTAINERS)
        )


_EXIT = object()


def _is_namedtuple(tree: object) -> bool:
    return isinstance(tree, tuple) and hasattr(tree, "_fields")


def is_numbers(tree: object) -> bool:
    """Whether ``tree`` is a number, or a non-empty list or tuple of them (nested or not)."""
    if isinstance(tree, numbers.Real):
        return True
    return (
        isinstance(tree, (list, tuple))
        and not _is_namedtuple(tree)
        and len(tree) > 0
        and all(map(is_numbers, tree))
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
    if isinstance(tree, (tuple, list)) and not is_numbers(tree):
        return list(enumerate(tree))
    return None


#: Types seen not to be containers. ``isinstance(value, Mapping)`` goes through the ABC
#: machinery, a microsecond a leaf: an optimizer's update meets every parameter twice a step.
_LEAF_TYPES: set[type] = {np.ndarray, np.float64, np.float32, float, int}


def is_leaf(value: Any) -> bool:
    """Whether ``value`` is a leaf (not a dict, list or tuple); its type remembered."""
    kind = type(value)
    if kind in _LEAF_TYPES:
        return True
    if isinstance(value, _CONTAINERS):
        return False
    _LEAF_TYPES.add(kind)
    return True


def tree_map(function: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """The same nest with ``function`` applied to every leaf (anything not a container).

    With more trees (of the same structure), ``function`` takes the leaves at the same
    position in each, as ``jax.tree_util.tree_map`` does; dicts are matched by key.
    """
    if type(tree) is dict and not rest:  # the common case, flat dicts of arrays: no recursion
        return {
            key: function(value) if is_leaf(value) else tree_map(function, value)
            for key, value in tree.items()
        }
    if type(tree) is dict and len(rest) == 1 and type(rest[0]) is dict:
        # Two flat dicts (an optimizer's update, apply_updates): every step of every fit.
        other = rest[0]
        return {
            key: function(value, other[key])
            if is_leaf(value)
            else tree_map(function, value, other[key])
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
    paths: tuple[str, ...]

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

    def difference(self, other: Structure) -> tuple[Keys, str] | None:
        """Where ``other`` holds other containers than this structure, and how, or ``None``.

        Mappings match by key in any order and of any mapping type: ``jax.tree_util`` sorts
        dict keys, and a tangent built with it is still a tangent of these parameters.
        """
        return _differs(self.node, other.node, ())

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


def _kind(node: Any) -> str:
    """What a node of ``_node`` is, for a message: ``an array``, ``a dict``, ``a Point``."""
    if node is None:
        return "an array"
    if node[0] == "namedtuple":
        return f"a {node[1].__name__}"
    return f"a {node[0]}"


def _differs(mine: Any, theirs: Any, keys: Keys) -> tuple[Keys, str] | None:
    """The first place where node ``theirs`` differs from ``mine`` (see ``difference``)."""
    other_namedtuple = (
        mine is not None
        and theirs is not None
        and mine[0] == "namedtuple"
        and mine[1] is not theirs[1]
    )
    if _kind(mine) != _kind(theirs) or other_namedtuple:
        return keys, f"is {_kind(theirs)} where {_kind(mine)} is expected"
    if mine is None:
        return None
    if mine[0] == "dict":
        expected, given = dict(mine[1]), dict(theirs[1])
        if set(expected) != set(given):
            missing = [key for key in expected if key not in given]
            extra = [key for key in given if key not in expected]
            parts = [f"lacks key(s) {missing}"] if missing else []
            parts += [f"has extra key(s) {extra}"] if extra else []
            return keys, " and ".join(parts)
        pairs = [(key, child, given[key]) for key, child in expected.items()]
    else:
        children, others = mine[-1], theirs[-1]
        if len(children) != len(others):
            return keys, f"has {len(others)} items where {len(children)} are expected"
        fields = mine[1]._fields if mine[0] == "namedtuple" else range(len(children))
        pairs = list(zip(fields, children, others, strict=True))
    for key, child, other in pairs:
        found = _differs(child, other, (*keys, key))
        if found is not None:
            return found
    return None


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
    check_walkable(tree)
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
    pairs = [[saved_key(key), layout(child)] for key, child in children]
    if isinstance(tree, Mapping):
        return {"dict": pairs}
    if _is_namedtuple(tree):
        return {"namedtuple": type(tree).__name__, "fields": pairs}
    return {type(tree).__name__: [child for _, child in pairs]}


def saved_key(key: Any) -> Any:
    """A dict key of a nest as JSON, so that ``loaded_key`` gives back an equal key: strings
    and integers as themselves, ``None``, booleans, floats and tuples of them tagged, any
    other key as its ``repr`` and ``str`` (it comes back as a
    [`SavedKey`][gradlab._tree.SavedKey], naming the same path)."""
    if isinstance(key, str) or type(key) is int:
        return key
    if key is None or isinstance(key, bool):
        return {"constant": key}
    if type(key) is float:
        return {"float": key if math.isfinite(key) else str(key)}
    if type(key) is tuple:
        return {"tuple": [saved_key(part) for part in key]}
    return {"repr": repr(key), "str": str(key)}


def loaded_key(saved: Any) -> Any:
    """The key that ``saved_key`` wrote; ``ValueError`` for anything it does not write."""
    if isinstance(saved, str) or type(saved) is int:
        return saved
    if isinstance(saved, Mapping):
        if set(saved) == {"constant"} and saved["constant"] in (None, True, False):
            return saved["constant"]
        if set(saved) == {"float"} and isinstance(saved["float"], (int, float, str)):
            return float(saved["float"])
        if set(saved) == {"tuple"} and isinstance(saved["tuple"], list):
            return tuple(loaded_key(part) for part in saved["tuple"])
        if set(saved) == {"repr", "str"} and all(isinstance(v, str) for v in saved.values()):
            return SavedKey(saved["repr"], saved["str"])
    raise ValueError(f"{saved!r:.60} is not a saved key")


@dataclass(frozen=True)
class SavedKey:
    """A dict key of a loaded nest that was neither a string, a number, ``None`` nor a tuple
    of them (an ``Enum``, say): it names the same path as the original did."""

    shown: str
    text: str

    def __repr__(self) -> str:
        return self.shown

    def __str__(self) -> str:
        return self.text


def rebuild(shape: Any, saved: Any, leaf: Callable[[Any], Any]) -> Any:
    """The nest that ``layout`` described, from its JSON form ``saved``; ``leaf`` makes each
    leaf (an array). A NamedTuple comes back as a NamedTuple of the same name and fields."""
    if shape is None:
        return leaf(saved)
    if "dict" in shape:
        return {
            (key := loaded_key(stored)): rebuild(child, saved[str(key)], leaf)
            for stored, child in shape["dict"]
        }
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


def parse_path(name: str) -> Keys:
    """The keys a path names: [`path`][gradlab._tree.path] undone.

    ``"layers[0].w"`` is ``("layers", 0, "w")``; a key with dots, brackets or quotes is
    written in brackets as Python writes it (``"['embed.kernel']"``), so every path has
    one reading.

    Raises:
        ValueError: ``name`` is not a path (empty, an unclosed bracket, ``"a..b"``).
    """
    keys: list[Any] = []
    at = 0
    while at < len(name):
        if name[at] == "[":
            # A quoted key may hold "]": its end is the closing quote, not the first "]".
            end = _string_end(name, at + 1) + 1 if name[at + 1 : at + 2] in ("'", '"') else at + 1
            close = name.find("]", end)
            if close < 0:
                raise ValueError(f"{name!r} has an unclosed bracket")
            try:
                key = ast.literal_eval(name[at + 1 : close])
                hash(key)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise ValueError(f"{name!r}: {name[at : close + 1]} is not an index") from None
            keys.append(key)
            at = close + 1
            continue
        if keys:
            if name[at] != ".":
                raise ValueError(f"{name!r}: expected '.' or '[' at {name[at:]!r}")
            at += 1
        bare = _BARE.match(name, at)
        if bare is None:
            raise ValueError(f"{name!r}: expected a key at {name[at:]!r}")
        keys.append(bare.group())
        at = bare.end()
    if not keys:
        raise ValueError("an empty path names nothing")
    return tuple(keys)


def canonical_path(name: str) -> str:
    """``name`` in the one spelling [`path`][gradlab._tree.path] gives the keys it names
    (``"embed['kernel']"``: ``"embed.kernel"``).

    Raises:
        ValueError: ``name`` is not a path.
    """
    return name if _BARE.fullmatch(name) else path(parse_path(name))


def _string_end(name: str, start: int) -> int:
    """Where the Python string literal that opens at ``name[start]`` closes."""
    quote, at = name[start], start + 1
    while at < len(name):
        if name[at] == "\\":
            at += 2
        elif name[at] == quote:
            return at
        else:
            at += 1
    raise ValueError(f"{name!r} has an unclosed quote")


def nest_of_paths(flat: Mapping[str, Any]) -> Any:
    """The nest whose leaves ``flat`` names by path: ``{"embed.kernel": k}`` is
    ``{"embed": {"kernel": k}}``; ``flatten`` undone where no structure was kept.

    Indices ``[0]``, ``[1]``, ... of one container make a list; any other key a dict.

    Raises:
        ValueError: a path that does not parse, or one that runs through another's leaf
            (``"a"`` and ``"a.b"``).
    """
    root: dict[Any, Any] = {}
    for name, leaf in flat.items():
        *above, last = parse_path(name)
        node = root
        for key in above:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name!r} runs through another parameter")
        if last in node:
            raise ValueError(f"{name!r} is named twice, or is both a parameter and a nest")
        node[last] = _Leaf(leaf)
    return _lists(root)


class _Leaf:
    """A leaf while a nest is built from paths (a leaf may itself be a dict)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _lists(node: Any) -> Any:
    if isinstance(node, _Leaf):
        return node.value
    built = {key: _lists(child) for key, child in node.items()}
    indices = [key for key in built if isinstance(key, int) and not isinstance(key, bool)]
    if len(indices) == len(built) and sorted(indices) == list(range(len(built))):
        return [built[index] for index in range(len(built))]
    return built
