"""Data checks shared by the shipped supervised problems."""

from __future__ import annotations

import numpy as np

from gradlab._checks import as_float_array, check_int, check_mapping
from gradlab._errors import ArgumentError


def check_xy(data: object, *, x_ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 copies of ``data["x"]`` and ``data["y"]``, checked against each other.

    Args:
        data: The caller's mapping; it must have exactly the keys ``"x"`` and ``"y"``.
        x_ndim: 1 for one feature per sample (an ``(n, 1)`` column is flattened), 2 for a
            design matrix ``(n, d)`` (a 1-D ``x`` becomes one column).
    """
    mapping = check_mapping(data, "data")
    if set(mapping) != {"x", "y"}:
        raise ArgumentError(
            "data", f"must have exactly the keys 'x' and 'y', got {sorted(mapping)}"
        )
    x = as_float_array(mapping["x"], "data['x']", copy=False)
    y = as_float_array(mapping["y"], "data['y']", copy=False)
    if x.ndim == 2 and x_ndim == 1 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 1 and x_ndim == 2:
        x = x[:, None]
    if x.ndim != x_ndim:
        want = "(n,) or (n, 1)" if x_ndim == 1 else "(n, d)"
        raise ArgumentError("data['x']", f"has shape {x.shape}, expected {want}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ArgumentError("data['y']", f"has shape {y.shape}, expected (n,) or (n, 1)")
    if x.shape[0] != y.shape[0]:
        raise ArgumentError("data['y']", f"has {y.shape[0]} samples but data['x'] has {x.shape[0]}")
    if y.shape[0] == 0 or (x.ndim == 2 and x.shape[1] == 0):
        raise ArgumentError("data['x']", f"is empty (shape {x.shape})")
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def data_rng(seed: object) -> np.random.Generator:
    """The generator a ``make_data`` draws from; ``seed`` must be a non-negative integer."""
    return np.random.default_rng(check_int(seed, "seed", 0))
