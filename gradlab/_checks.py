"""Argument checks shared by every public entry point.

Each check either returns a clean value (a normalised dtype name, a float64 *copy* of an
array) or raises an [`ArgumentError`][gradlab.ArgumentError] naming the argument, so that bad input
never reaches numpy, torch or jax, and user arrays are never modified.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError, first_line
from gradlab._tree import (
    Keys,
    NestError,
    Structure,
    canonical_path,
    check_walkable,
    named_leaves,
    nest_of_paths,
    parse_path,
    path,
    structure,
    subscript,
)

DTYPES = ("float32", "float64")


def check_dtype(dtype: object, argument: str = "dtype") -> str:
    """Return ``"float32"`` or ``"float64"`` for any spelling NumPy understands."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype  # the common spelling, without asking NumPy
    try:
        name = str(np.dtype(dtype).name)  # type: ignore[call-overload]
    except TypeError:
        name = None
    if dtype is None or name not in DTYPES:
        raise ArgumentError(argument, f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return name


def check_int(value: object, argument: str, low: int = 0) -> int:
    """Return ``value`` as an int of at least ``low``, refusing bools and floats."""
    kind = "positive" if low == 1 else "non-negative" if low == 0 else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(argument, f"must be a {kind} integer, got {value!r}")
    if value < low:
        raise ArgumentError(argument, f"must be a {kind} integer, got {value!r}")
    return int(value)


def check_positive_int(value: object, argument: str) -> int:
    """Return ``value`` as an int, refusing bools, floats and values below 1."""
    return check_int(value, argument, 1)


def check_positive_float(value: object, argument: str) -> float:
    """Return ``value`` as a float, refusing non-numbers, non-finite values and values <= 0."""
    number = check_float(value, argument)
    if number <= 0:
        raise ArgumentError(argument, f"must be a positive, finite number, got {value!r}")
    return number


def check_bool(value: object, argument: str) -> bool:
    """Return ``value`` if it is a bool; refuse truthy stand-ins such as 1 or "yes"."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(argument, f"must be True or False, got {value!r}")
    return value


def check_float(
    value: object,
    argument: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite float in ``[low, high]`` (``[low, high)`` if ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(argument, f"must be a real number, got {value!r}")
    number = float(value)
    above = number >= high if high_open else number > high
    if not math.isfinite(number) or number < low or above:
        bracket = ")" if high_open else "]"
        bounds = "" if math.isinf(low) and math.isinf(high) else f" in [{low}, {high}{bracket}"
        raise ArgumentError(argument, f"must be a finite number{bounds}, got {value!r}")
    return number


def as_float_array(value: object, argument: str, *, copy: bool = True) -> np.ndarray:
    """Return ``value`` as a finite float array; the caller's array is never touched.

    Args:
        value: An array, a nest of numbers, or a framework tensor (a torch tensor that
            requires grad is read through a detached copy, never changed).
        argument: Its name, for errors.
        copy: ``True``: a float64 copy (parameters: small, and kept). ``False``: a float32
            or float64 array is returned as a read-only view, not copied (data: maybe large,
            and copied once more, into the run's dtype, when it moves onto an engine);
            anything else becomes a float64 copy.

    Raises:
        ArgumentTypeError: not real numbers, or a masked array (its mask would be ignored).
        ArgumentError: a NaN or an infinity.
    """
    if isinstance(value, (str, bytes)):
        raise ArgumentTypeError(argument, f"must be an array of real numbers, got {value!r}")
    if isinstance(value, np.ma.MaskedArray):
        raise ArgumentTypeError(
            argument,
            "is a masked array, and gradlab does not honour masks: pass value.compressed() "
            "(the unmasked values) or value.filled(fill_value)",
        )
    value = _on_host(value, argument)
    try:
        array = np.array(value, copy=True) if copy else np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ArgumentTypeError(argument, f"must be an array of real numbers ({error})") from None
    if array.dtype.kind not in "biuf":
        raise ArgumentTypeError(
            argument, f"must hold real numbers, got an array of dtype {array.dtype}"
        )
    if copy or array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64, copy=False)
    else:
        array = array.view()
        array.flags.writeable = False
    if not _all_finite(array):
        count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ArgumentError(argument, f"holds {count} non-finite value(s) (NaN or inf)")
    return array


#: Values from which the finiteness check compares extremes instead of making a mask.
_NO_MASK = 1 << 20


def _all_finite(array: np.ndarray) -> bool:
    """Whether every value of a float array is finite.

    A mask of one byte a value is the fastest check, but the allocator kept a large one
    once freed (9.5 MiB in the peak of a fit at 10⁷ rows). From ``_NO_MASK`` values the
    extremes are compared instead: they are finite exactly when every value is (a NaN makes
    both NaN), in two passes that allocate nothing, as fast at 10⁷ values.
    """
    if array.size < _NO_MASK:
        return bool(np.isfinite(array).all())
    return bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def read_only(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` in ``dtype`` for NumPy code (the NumPy engines, a fit's start): a read-only
    view where it already is one, else a read-only copy.

    Why not always a copy: the data of a fit is checked once and then only read, and a
    copy of large data cost a float64 fit of 10⁶ points 3.5 ms of its 4.6 ms fixed cost.
    Read-only keeps the promise that user data is never written: a hand gradient that
    wrote into its data would fail loudly instead of corrupting the next step.
    """
    view: np.ndarray = np.asarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


def _on_host(value: object, argument: str) -> object:
    """A torch tensor as a detached CPU tensor that NumPy can read (found without importing
    torch: by the module its type comes from, as eagerpy does)."""
    if type(value).__module__.partition(".")[0] == "torch" and hasattr(value, "detach"):
        if getattr(value, "is_meta", False):
            raise ArgumentError(argument, META_DEVICE)
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as error:  # bfloat16, sparse, quantized tensors
            raise ArgumentTypeError(
                argument,
                f"is a torch tensor NumPy cannot read ({first_line(error)}); give a dense "
                "float tensor (tensor.to_dense().double())",
            ) from None
    return value


#: Why a tensor on torch's meta device cannot be used, and what to do instead.
META_DEVICE = (
    "is a torch tensor on the meta device: it has a shape but no values to compute with; "
    "give it values first (tensor = torch.empty_like(tensor, device='cpu') and fill it; "
    "a module: module.to_empty(device='cpu') then initialise it or load_state_dict)"
)


def check_mapping(value: object, argument: str) -> Mapping[str, Any]:
    """Refuse anything that is not a mapping with string keys."""
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ArgumentTypeError(
            argument, f"must be a mapping from names to arrays, got {type(value).__name__}"
        )
    return value


#: Declared shapes: names to shapes (tuples of ints), or to nested mappings of them.
Shapes: TypeAlias = Mapping[str, "Sequence[int] | Shapes"]


def check_shapes(
    shapes: object, argument: str, *, paths: bool = True, strict: bool = True
) -> dict[str, tuple[int, ...]]:
    """Declared shapes by name, from a mapping (nested or not) of names to shapes.

    A nested mapping's names join its parent's with a dot: ``{"embed": {"kernel": (3, 2)}}``
    declares ``"embed.kernel"``. With ``paths``, every name is a parameter's path, kept in
    the one spelling that flattening a nest gives (``"embed['kernel']"`` is
    ``"embed.kernel"``), so that declared names and parameters' paths compare as strings.

    Args:
        shapes: ``{name: shape}``, each shape a tuple (or list) of non-negative ints.
        argument: The argument's name, for errors (``"params"``, ``"shapes"``).
        paths: Whether the names are parameter paths (else names kept as written, such
            as a torch module's ``"0.weight"``).
        strict: Whether a name that is not a path is refused; else it is kept as
            written (the paths of keys Python cannot read back, ``[<Color.RED: 1>]``,
            name parameters all the same).

    Raises:
        ArgumentTypeError: not a mapping with string keys, or a shape that is not a tuple
            of ints (bools refused).
        ArgumentError: a negative size, an empty nested mapping, a name that is not a
            path, one named twice, or one both a parameter and a nest of them.
    """
    if not isinstance(shapes, Mapping):
        raise ArgumentTypeError(
            argument, f"must be a mapping from names to shape tuples, got {type(shapes).__name__}"
        )
    if any(isinstance(value, Mapping) for value in shapes.values()):
        try:
            check_walkable(shapes)
        except NestError as error:
            raise ArgumentError(subscript(argument, error.keys), str(error)) from None
    out: dict[str, tuple[int, ...]] = {}

    def visit(tree: Mapping[Any, Any], keys: Keys, prefix: str) -> None:
        for key, value in tree.items():
            where = subscript(argument, (*keys, key))
            if not isinstance(key, str):
                raise ArgumentTypeError(where, f"names must be strings, got {key!r}")
            name = key if not prefix else prefix + ("" if key.startswith("[") else ".") + key
            if isinstance(value, Mapping):
                if not value:
                    raise ArgumentError(where, "is an empty mapping: it declares no shape")
                visit(value, (*keys, key), name)
                continue
            shape = _shape(value, where)
            if paths:
                try:
                    name = canonical_path(name)
                except ValueError as error:
                    if strict:
                        raise ArgumentError(
                            where,
                            f"is not a parameter path ({error}); a key with dots, brackets or "
                            "quotes is written in brackets, as Python indexes it: "
                            "\"['my.key']\"",
                        ) from None
            if name in out:
                raise ArgumentError(where, f"declares {name!r} a second time")
            out[name] = shape

    visit(shapes, (), "")
    # Paths of more than one key may clash ("a" and "a.b"): building their nest tells.
    if paths and strict and any(path((name,)) != name for name in out):
        try:
            nest_of_paths(dict.fromkeys(out))
        except ValueError as error:
            raise ArgumentError(argument, str(error)) from None
    return out


def _shape(value: object, argument: str) -> tuple[int, ...]:
    """A shape: a tuple (or list, or ``torch.Size``) of non-negative ints, NumPy's too."""
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(size, numbers.Integral) and not isinstance(size, (bool, np.bool_))
        for size in value
    ):
        raise ArgumentTypeError(
            argument, f"must be a shape tuple of non-negative ints, got {value!r}"
        )
    if any(size < 0 for size in value):
        raise ArgumentError(argument, f"must be a shape tuple of non-negative ints, got {value!r}")
    return tuple(int(size) for size in value)


def check_params(
    params: object,
    shapes: Mapping[str, tuple[int, ...]] | None,
    argument: str = "init",
) -> tuple[dict[str, np.ndarray], Structure]:
    """Return float64 copies of the parameters by path, and their structure.

    Args:
        params: The caller's parameters: a mapping from name to array (or number), or any
            nest of dicts, lists, tuples and NamedTuples of arrays.
        shapes: The expected shape of every parameter by path (``"layers[0].w"``), or
            ``None`` when the problem does not declare them (a user problem given only a
            loss).
        argument: The argument's name for error messages.

    Returns:
        ``({path: array}, structure)``: the leaves flattened in the caller's order, and the
        structure that rebuilds the caller's nest from them.
    """
    layout = _nest(params, argument)
    if not layout.paths:
        raise ArgumentError(argument, "has no parameters")
    if len(set(layout.paths)) != len(layout.paths):
        raise ArgumentError(argument, f"has two parameters named alike: {list(layout.paths)}")
    if shapes is not None:
        # Declared by path, nested or not, in any spelling: compared in flatten's spelling.
        shapes = check_shapes(shapes, "param_shapes", strict=False)
        _check_names(argument, shapes, layout)
    out = {}
    for name, (keys, value) in zip(layout.paths, named_leaves(params), strict=True):
        where = subscript(argument, keys)
        array = as_float_array(value, where)
        if shapes is not None and array.shape != tuple(shapes[name]):
            raise ArgumentError(where, f"has shape {array.shape}, expected {tuple(shapes[name])}")
        out[name] = array
    return out, layout


def _check_names(argument: str, shapes: Mapping[str, tuple[int, ...]], layout: Structure) -> None:
    """Refuse parameters whose paths are not the declared ones, naming each where it is."""
    missing = [name for name in shapes if name not in layout.paths]
    extra = [
        keys for keys, name in zip(layout.keys, layout.paths, strict=True) if name not in shapes
    ]
    if not missing and not extra:
        return
    parts = []
    if missing:
        nests = [_keys_of(name) for name in missing]
        listed = ", ".join(
            repr(name) if at == (name,) else f"{name!r} ({subscript(argument, at)})"
            for name, at in zip(missing, nests, strict=True)
        )
        parts.append(f"is missing parameter(s) {listed}")
    if extra:
        parts.append(
            f"has unknown parameter(s) {', '.join(subscript(argument, keys) for keys in extra)}"
        )
    # A flat key spelled like a declared path ({"embed.kernel": ...}) is not that path: a
    # path's dots and brackets index into nests.
    lookalike = [keys[0] for keys in extra if len(keys) == 1 and keys[0] in missing]
    hint = (
        f"; a declared path indexes into nests: {lookalike[0]!r} is "
        f"{subscript(argument, _keys_of(lookalike[0]))}, not "
        f"{subscript(argument, (lookalike[0],))}"
        if lookalike
        else ""
    )
    raise ArgumentError(
        argument, f"{' and '.join(parts)}; expected {', '.join(map(repr, shapes))}{hint}"
    )


def _keys_of(name: str) -> Keys:
    """The keys a declared path names; a name that is no path, as one key."""
    try:
        return parse_path(name)
    except ValueError:
        return (name,)


def check_tree(tree: object, argument: str) -> Any:
    """A nest of arrays (data) with every leaf a finite float array (read-only views where
    the caller's arrays are already float, float64 copies otherwise)."""
    layout = _nest(tree, argument)
    checked = [
        as_float_array(value, subscript(argument, keys), copy=False)
        for keys, value in named_leaves(tree)
    ]
    return layout.unflatten(dict(zip(layout.paths, checked, strict=True)))


def check_same_structure(argument: str, tree: object, layout: Structure, like: str) -> Structure:
    """``tree``'s structure, which must be ``layout``'s (dicts by key, in any order), or an
    error naming the first container that differs and how."""
    given = _nest(tree, argument)
    found = layout.difference(given)
    if found is not None:
        keys, how = found
        raise ArgumentError(
            subscript(argument, keys), f"{how} ({argument} must have the structure of {like})"
        )
    return given


def _nest(tree: object, argument: str) -> Structure:
    """The structure of ``tree``, which must be a mapping or a nest of containers."""
    if not isinstance(tree, (Mapping, tuple, list)):
        raise ArgumentTypeError(
            argument,
            "must be a mapping from names to arrays, or a nest of dicts, lists and tuples of "
            f"arrays, got {type(tree).__name__}{_wrap_hint(tree)}",
        )
    try:
        layout = structure(tree)
    except NestError as error:
        raise ArgumentError(subscript(argument, error.keys), str(error)) from None
    if layout.node is None:  # a list of numbers: one array, with no name to report it by
        raise ArgumentTypeError(
            argument,
            f"is a single array of numbers, not a named parameter{_wrap_hint(tree)}",
        )
    return layout


def _wrap_hint(tree: object) -> str:
    """How to pass one array: reports name every parameter, so it needs a name."""
    if hasattr(tree, "shape") or isinstance(tree, (list, tuple, numbers.Real)):
        return "; give it a name: {'theta': ...}"
    return ""
