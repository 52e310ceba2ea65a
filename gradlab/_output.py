"""Turning results into text, JSON, DataFrames and image files: shared by every report."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError, MissingDependency


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
        return {str(key): jsonable(item) for key, item in value.items()}
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


class Record:
    """Mixin for results with a ``to_dict()``: gives them ``to_json()``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        """``to_dict`` as strict JSON (infinities as the strings "inf", "nan")."""
        return to_json(self.to_dict(), indent)


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
