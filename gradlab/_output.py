"""Turning results into text, JSON, DataFrames and image files: shared by every report."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError, MissingDependency, NotSupported


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    lines = [list(header), *map(list, rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: Sequence[str]) -> str:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join(
        [render(lines[0]), "  ".join("-" * width for width in widths)]
        + [render(line) for line in lines[1:]]
    )


def jsonable(value: Any) -> Any:
    """``value`` with NumPy arrays as lists, and non-finite floats as "inf", "-inf", "nan".

    Strict JSON has no infinities; a string keeps the information without breaking parsers.
    """
    if isinstance(value, Mapping):
        written = {str(key): jsonable(item) for key, item in value.items()}
        if len(written) < len(value):  # 1 and "1": one would overwrite the other
            seen: dict[str, Any] = {}
            for key in value:
                if str(key) in seen:
                    raise NotSupported(
                        f"cannot write as JSON: the keys {seen[str(key)]!r} and {key!r} of one "
                        f"dict are both written {str(key)!r}; rename one to save this result"
                    )
                seen[str(key)] = key
        return written
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def to_json(record: Mapping[str, Any], indent: int | None = 2) -> str:
    """Strict JSON text of a ``to_dict()`` record."""
    return json.dumps(jsonable(record), indent=indent, allow_nan=False)


#: The layout of saved records: bumped when a field changes meaning, so that a loader can
#: refuse a record written by a newer gradlab instead of misreading it.
FORMAT = 1
_R = TypeVar("_R", bound="Record")


class Record:
    """Mixin for results that can be saved and loaded: ``to_dict``/``from_dict`` (each
    class's own), and from them ``to_json``/``from_json``, ``save`` and
    [`load`][gradlab.load]. Every record names its class (``"kind"``) and ``"format"``."""

    #: Every saved kind by name, for ``load`` (filled in as subclasses are defined).
    kinds: ClassVar[dict[str, type[Record]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Record.kinds[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_R], record: Mapping[str, Any]) -> _R:
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        """``to_dict`` as strict JSON (infinities as the strings "inf", "nan")."""
        return to_json(self.to_dict(), indent)

    @classmethod
    def from_json(cls: type[_R], text: str) -> _R:
        """Rebuild from ``to_json`` text (an [`ArgumentError`][gradlab.ArgumentError] naming
        ``text`` if it is not one)."""
        rebuilt: _R = _as(cls.from_dict, parse(text, "text"), "text")
        return rebuilt

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``to_json()`` to ``path``; [`load`][gradlab.load] reads it back."""
        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentTypeError("path", f"must be a file path, got {path!r}")
        text = os.fspath(path)
        check_writable(text, "path")
        written = self.to_json()  # first: a record that cannot be written leaves no file
        with open(text, "w", encoding="utf-8") as file:
            file.write(written + "\n")


def stamp(record: Record, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A ``to_dict`` record: its kind and format first, then ``fields`` made JSON-friendly."""
    stamped: dict[str, Any] = jsonable({"kind": type(record).__name__, "format": FORMAT, **fields})
    return stamped


def _bounded_int(text: str) -> int:
    """An integer of a record: gradlab writes none beyond 64 bits (counts, steps, seeds),
    and a larger one would overflow where a float is made of it."""
    number = int(text)
    if abs(number) >= 2**63:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits, beyond 64 bits")
    return number


def _finite_float(text: str) -> float:
    """A number of a record: gradlab writes non-finite ones as the strings "nan", "inf"."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is not a finite number")
    return number


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def strict_json(text: str | bytes | bytearray) -> Any:
    """``json.loads`` of strict JSON: no ``NaN`` or ``Infinity``, no number beyond a float
    (``1e400``), no integer beyond 64 bits (gradlab writes none of them; a record or a
    message holding one was not written by a well-behaved peer). ``ValueError`` if it is
    not, ``RecursionError`` if it nests deeper than the parser goes."""
    return json.loads(
        text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
    )


#: The largest file ``load`` reads: records are JSON text, and a fit's trajectory of 10⁷
#: values is about 250 MB of it.
_LARGEST_FILE = 2**30


def parse(text: object, argument: str) -> Any:
    """JSON text parsed, or an [`ArgumentError`][gradlab.ArgumentError] naming ``argument``."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise ArgumentTypeError(argument, f"must be JSON text, got {type(text).__name__}")
    try:
        return strict_json(text)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ArgumentError(argument, f"is not JSON ({error})") from None
    except RecursionError:
        raise ArgumentError(argument, "is nested too deeply to be a saved result") from None


def load(
    path: str | os.PathLike[str], kind: type[_R] | str | None = None, argument: str = "path"
) -> Any:
    """Read a saved report or result (``save``, ``to_json``, ``gradlab compare --json``).

    Args:
        path: The JSON file.
        kind: The class expected (a record of another kind is refused), or its name
            (``"GradientReport"``), or ``None`` for whichever class the record names.
        argument: The argument to name in errors.

    Returns:
        A [`GradientReport`][gradlab.GradientReport], [`FitComparison`][gradlab.FitComparison],
        [`FitResult`][gradlab.FitResult], [`BenchmarkResult`][gradlab.BenchmarkResult] or
        [`BaselineComparison`][gradlab.BaselineComparison], as the record says.

    Raises:
        ArgumentError: The file cannot be read, is not JSON, or is not a gradlab record
            (of ``kind``).

    Examples:
        >>> import os, tempfile, gradlab
        >>> problem = gradlab.Quadratic()
        >>> report = gradlab.compare_gradients(problem, problem.make_data(20),
        ...                                    {"w": 1.0, "b": 0.5}, engines="numpy,fd")
        >>> path = os.path.join(tempfile.mkdtemp(), "baseline.json")
        >>> report.save(path)
        >>> str(gradlab.load(path)) == str(report)
        True
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(argument, f"must be a file path, got {path!r}")
    expected = _kind(kind)
    text = os.fspath(path)
    try:
        with open(text, "rb") as file:
            # A device or a pipe (/dev/zero) could be read without end: files only, bounded.
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ArgumentError(argument, f"{text!r} is not a file")
            content = file.read(_LARGEST_FILE + 1)
    except (OSError, ValueError) as error:  # ValueError: a path with a NUL byte in it
        raise ArgumentError(
            argument, f"cannot read {text!r}: {getattr(error, 'strerror', None) or error}"
        ) from None
    if len(content) > _LARGEST_FILE:
        raise ArgumentError(
            argument, f"{text!r} is larger than {_LARGEST_FILE >> 20} MiB: not a saved record"
        )
    try:
        record = parse(content, argument)
    except ArgumentError as error:
        raise ArgumentError(
            argument, f"{text!r} {str(error).removeprefix(argument + ': ')}"
        ) from None
    name = record.get("kind") if isinstance(record, Mapping) else None
    if not isinstance(name, str) or name not in Record.kinds:
        raise ArgumentError(argument, f"{text!r} is not a saved gradlab report or result")
    if expected is not None and name != expected.__name__:
        raise ArgumentError(argument, f"{text!r} holds {_a(name)}, not {_a(expected.__name__)}")
    found = Record.kinds[name]
    return _as(found.from_dict, record, argument)


def _kind(kind: object) -> type[Record] | None:
    """``load``'s ``kind``: ``None``, a saved class, or its name; else an error naming it."""
    if kind is None or (isinstance(kind, type) and kind in Record.kinds.values()):
        return kind
    if isinstance(kind, str) and kind in Record.kinds:
        return Record.kinds[kind]
    raise ArgumentTypeError(
        "kind",
        f"must be one of gradlab's saved classes or its name ({', '.join(sorted(Record.kinds))}), "
        f"got {kind!r:.60}",
    )


def _as(build: Any, record: Any, argument: str) -> Any:
    """``build(record)``, its failures blamed on ``argument`` (the text or file it came from).

    What was built is shown and written once here: a record whose fields are each well
    formed but do not fit together (an outlier that is no engine, a reference missing from
    its losses) is refused now, not when the result is printed or saved.
    """
    try:
        built = build(record)
        str(built)
        built.to_dict()
        return built
    except ArgumentError as error:
        raise ArgumentError(argument, str(error).removeprefix("record: ")) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        raise ArgumentError(
            argument, f"is not a consistent saved record ({type(error).__name__}: {error!s:.120})"
        ) from None


@contextlib.contextmanager
def reading(cls: type, record: object) -> Iterator[Mapping[str, Any]]:
    """Rebuild a ``cls`` from ``record`` inside the block: a record that is not a mapping, names
    another kind or a newer format, or lacks what the block reads, is an
    [`ArgumentError`][gradlab.ArgumentError] naming ``record``."""
    name = cls.__name__
    if not isinstance(record, Mapping):
        raise ArgumentTypeError("record", f"must be a saved {name} (a dict), got {record!r:.60}")
    kind = record.get("kind", name)  # records saved before kinds were written have none
    if kind != name:
        raise ArgumentError("record", f"is a saved {kind}, not a {name}")
    version = record.get("format", FORMAT)
    if not isinstance(version, int) or version > FORMAT:
        raise ArgumentError(
            "record", f"has format {version!r}; this gradlab reads up to {FORMAT}: upgrade it"
        )
    try:
        yield record
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as error:
        if isinstance(error, ArgumentError):
            raise
        raise ArgumentError("record", f"is not a saved {name} ({error!r:.200})") from None


def number(value: Any) -> float:
    """A float from a record: ``jsonable``'s "nan", "inf" and "-inf" strings undone."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r:.60}")
    return float(value)


def maybe(value: Any, convert: Any = None) -> Any:
    """``None`` kept, anything else through ``convert`` (by default
    [`number`][gradlab._output.number])."""
    return None if value is None else (convert or number)(value)


def array(value: Any, dtype: str) -> np.ndarray:
    """An array from a record's nested lists, in ``dtype`` (strings "nan", "inf" undone)."""

    def numbers(item: Any) -> Any:
        return [numbers(inner) for inner in item] if isinstance(item, list) else number(item)

    return np.asarray(numbers(value), dtype=dtype)


def arrays(value: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """``{name: array}`` from a record, in ``dtype``."""
    return {str(name): array(item, dtype) for name, item in value.items()}


def pairs(matrix: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A matrix over ``names`` as a record's ``{a: {b: value}}`` (``square`` undoes it)."""
    return {a: {b: matrix[i, j].item() for j, b in enumerate(names)} for i, a in enumerate(names)}


def square(value: Mapping[str, Mapping[str, Any]], names: Sequence[str], dtype: Any) -> np.ndarray:
    """A matrix over ``names`` from a record's ``{a: {b: value}}``."""
    return np.array([[number(value[a][b]) for b in names] for a in names], dtype=dtype)


def digest(arrays: Mapping[str, Any]) -> str:
    """A short fingerprint of named arrays (names, dtypes, shapes and bytes), to tell whether
    a baseline was computed on the same data without storing the data."""
    hasher = hashlib.blake2b(digest_size=12)
    for name in sorted(arrays, key=str):
        value = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        hasher.update(value.data)  # the bytes in place: no copy of large data
    return hasher.hexdigest()


def optional(module: str, what: str, extra: str | None) -> Any:
    """Import an optional dependency, or raise [`MissingDependency`][gradlab.MissingDependency]
    naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(what, module.split(".")[0], extra) from None


def check_image_path(path: object, argument: str = "path") -> str:
    """Refuse, before any work is done, a path that a figure could not be written to.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``); the file must be
    writable (see [`check_writable`][gradlab._output.check_writable]).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(argument, f"must be a file path, got {path!r}")
    text = os.fspath(path)
    suffix = os.path.splitext(text)[1].lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise ArgumentError(argument, f"{text!r} must end in .png, .pdf or .svg")
    check_writable(text, argument)
    return text


def check_writable(path: str, argument: str) -> None:
    """Refuse a file path that cannot be written, by opening it for appending.

    Trying is the only test that holds for every user: permission bits do not bind root,
    and a read-only file system or a special folder (``/proc``) refuses root too. A file
    that did not exist is removed again; an existing one is left as it was.
    """
    if not path:
        raise ArgumentError(argument, "is empty: give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArgumentError(argument, f"cannot write {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ArgumentError(argument, f"cannot write {path!r}: it is a folder")
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise ArgumentError(argument, f"cannot write {path!r}: {error.strerror or error}") from None
    if not existed:
        with contextlib.suppress(OSError):
            os.remove(path)


def save_figure(figure: Any, path: object) -> None:
    """Write ``figure`` to ``path``, refusing bad paths with an
    [`ArgumentError`][gradlab.ArgumentError]."""
    text = check_image_path(path)
    try:
        figure.savefig(text, dpi=120)
    except OSError as error:
        raise ArgumentError("path", f"cannot write {text!r}: {error.strerror or error}") from None


def point(params: Mapping[str, np.ndarray]) -> str:
    """Parameters for a header line: their values when few, else their count and shapes."""
    size = sum(np.size(value) for value in params.values())
    if size <= 12:
        return ", ".join(f"{name}={short(value)}" for name, value in params.items())
    shapes = ", ".join(f"{name} {np.shape(value)}" for name, value in params.items())
    return f"{size} parameter values ({shapes})"


def short(value: np.ndarray, digits: int = 6) -> str:
    """A parameter value in a table or header line: the number, or a short array."""
    if np.ndim(value) == 0:
        return f"{float(value):.{digits}g}"
    return np.array2string(np.asarray(value), precision=4, threshold=6, separator=", ")


def _a(noun: str) -> str:
    """``noun`` with its indefinite article, as a reader would say it (an AuditReport)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
