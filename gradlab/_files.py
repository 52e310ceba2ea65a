"""Named arrays read from files: the command line's ``--data`` and ``--params``.

One reader per format, each safe on a file from anywhere: ``.npz`` and ``.npy`` are read
with ``allow_pickle=False``, ``.pt`` with ``torch.load(weights_only=True)`` (torch's
restricted unpickler: tensors and containers, no code), ``.safetensors`` by its own
library (a JSON header and raw bytes). Whatever the format, the result is NumPy arrays by
name; a ``.pt`` file's nest of dicts is kept as a nest, named by path as gradlab names
parameters (``"fc.weight"``, ``"layers[0].w"``).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Sequence
from pickle import UnpicklingError
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError
from gradlab._output import optional
from gradlab._tree import canonical_path, flatten, path

#: The suffixes read.
FORMATS = (".npz", ".npy", ".pt", ".pth", ".safetensors")


def read_arrays(words: Sequence[str], argument: str) -> dict[str, np.ndarray]:
    """Arrays by name from ``FILE`` and ``NAME=FILE`` words, later words winning.

    ``FILE`` holds named arrays (``.npz``, ``.pt``, ``.safetensors``); ``NAME=FILE`` names
    the one array a file holds (a ``.npy``, or any file of exactly one array).

    Raises:
        ArgumentError: naming ``argument``: a missing or unreadable file, an unknown
            suffix, a ``.npy`` given without a name, a ``NAME=FILE`` whose file holds more
            than one array, or an array that is not numbers.
        MissingDependency: a ``.pt`` without torch, a ``.safetensors`` without
            safetensors.
    """
    arrays: dict[str, np.ndarray] = {}
    for word in words:
        name, sep, path = word.rpartition("=") if _named(word) else ("", "", word)
        found = _read(path, argument)
        if sep:
            if len(found) != 1:
                raise ArgumentError(
                    argument,
                    f"{word!r}: {path} holds {len(found)} arrays ({', '.join(found)}); "
                    "NAME=FILE names a file of one array (give the file alone to read them all)",
                )
            found = {name: next(iter(found.values()))}
        elif path.lower().endswith(".npy"):
            stem = os.path.splitext(os.path.basename(path))[0]
            raise ArgumentError(argument, f"{path} is one unnamed array: name it, as {stem}={path}")
        arrays.update(found)
    return arrays


def _named(word: str) -> bool:
    """Whether a word is ``NAME=FILE`` (a file name may itself hold ``=``: only a name
    before the last ``=`` that is not a path of its own counts)."""
    name, sep, _ = word.rpartition("=")
    return bool(sep and name) and os.sep not in name


def match(name: str, known: Sequence[str]) -> str | None:
    """Which of ``known`` (paths, as flattening names them) a file's array name means:
    the name as a path (``"layers[0].w"``, ``"embed.kernel"``), else as one key with dots
    (torch's ``"fc.weight"`` is the path ``"['fc.weight']"``); ``None`` when neither."""
    candidates = [path((name,))]
    with contextlib.suppress(ValueError):  # not a path: only a key
        candidates.insert(0, canonical_path(name))
    return next((candidate for candidate in candidates if candidate in known), None)


def _read(path: str, argument: str) -> dict[str, np.ndarray]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ArgumentError(
            argument,
            f"{path!r}: unknown format {suffix or '(no suffix)'!r}; gradlab reads "
            f"{', '.join(FORMATS)}",
        )
    if not os.path.isfile(path):
        raise ArgumentError(argument, f"no such file: {path}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                found: dict[str, Any] = {key: archive[key] for key in archive.files}
        elif suffix == ".npy":
            found = {"": np.load(path, allow_pickle=False)}
        elif suffix == ".safetensors":
            library = optional("safetensors.numpy", f"{argument} {path}", "safetensors")
            found = dict(library.load_file(path))
        else:
            found = _torch_file(path, argument)
    except UnpicklingError:
        # torch's message advises weights_only=False: unsafe, and not a gradlab user's to
        # take. What the file holds is not tensors by name; say that, on one line.
        raise ArgumentError(
            argument,
            f"cannot read {path}: it holds Python objects other than tensors (a whole "
            "model, an optimizer, code), which gradlab never unpickles; save the "
            "parameters alone: torch.save(model.state_dict(), path)",
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError, EOFError) as error:
        # Every reader's way of saying "not a file of this format".
        raise ArgumentError(
            argument, f"cannot read {path} as {suffix}: {type(error).__name__}: {error}"
        ) from None
    arrays = {}
    for name, value in found.items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ArgumentError(
                argument, f"{path}: {name or 'its array'!r} holds {array.dtype}, not numbers"
            )
        arrays[name] = array
    if not arrays:
        raise ArgumentError(argument, f"{path} holds no arrays")
    return arrays


def _torch_file(path: str, argument: str) -> dict[str, Any]:
    """A ``.pt`` file's tensors by path; ``weights_only``: no code runs from the file."""
    torch = optional("torch", f"{argument} {path}", "torch")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, torch.Tensor):
        return {"": loaded.detach().numpy()}
    try:
        # A state_dict is flat, by torch's own names ("0.weight"): kept as they are; a nest
        # is named by path.
        flat = dict(loaded) if _flat_by_name(loaded) else flatten(loaded)[0]
    except (TypeError, ValueError) as error:
        raise ArgumentError(
            argument, f"{path} holds {type(loaded).__name__}, not tensors by name: {error}"
        ) from None
    arrays = {}
    for name, value in flat.items():
        if not isinstance(value, torch.Tensor):
            raise ArgumentError(
                argument,
                f"{path}: {name!r} is {type(value).__name__}, not a tensor; a training "
                "checkpoint holds more than parameters: save model.state_dict() alone",
            )
        # Widened: NumPy has no bfloat16.
        wide = value.detach().to("cpu")
        arrays[name] = (wide.double() if wide.is_floating_point() else wide).numpy()
    return arrays


def _flat_by_name(loaded: object) -> bool:
    """Whether a loaded object is a flat dict of values by string name (a state_dict)."""
    return isinstance(loaded, dict) and all(
        isinstance(key, str) and not isinstance(value, (dict, list, tuple))
        for key, value in loaded.items()
    )
