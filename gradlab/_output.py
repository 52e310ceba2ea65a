"""Turning results into text, JSON, DataFrames and image files: shared by every report."""

from __future__ import annotations

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

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``); the folder must exist
    and be writable.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(argument, f"must be a file path, got {path!r}")
    text = os.fspath(path)
    suffix = os.path.splitext(text)[1].lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise ArgumentError(argument, f"{text!r} must end in .png, .pdf or .svg")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise ArgumentError(argument, f"cannot write {text!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(text) and not os.access(text, os.W_OK)):
        raise ArgumentError(argument, f"cannot write {text!r}: permission denied")
    return text


def save_figure(figure: Any, path: object) -> None:
    """Write ``figure`` to ``path``, refusing bad paths with an
    [`ArgumentError`][gradlab.ArgumentError]."""
    text = check_image_path(path)
    try:
        figure.savefig(text, dpi=120)
    except OSError as error:
        raise ArgumentError("path", f"cannot write {text!r}: {error.strerror or error}") from None
