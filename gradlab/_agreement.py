"""How gradlab measures agreement between two gradients: rho, and its tolerances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradlab._checks import check_dtype
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._tree import flatten

#: Largest rho accepted between two exact gradients (autodiff or hand-derived), per dtype.
#: float64: round-off of a few hundred operations on data of moderate size sits near 1e-14;
#: 1e-9 leaves five orders of magnitude for ill-conditioned sums while still catching any
#: real derivation error, which shows up at 1e-3 or above. float32: unit round-off is
#: 6e-8, so the same margin over a float32 evaluation is about 1e-4 (see docs/agreement.md).
EXACT_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
#: Largest rho accepted against central finite differences, per dtype of the compared
#: engine. fd always differences in float64 with a fourth-order stencil (error ~1e-11 on
#: smooth losses), so it is bounded by the compared engine's own round-off in float32.
FD_TOLERANCE = {"float64": 1e-6, "float32": 1e-4}


def rho(a: Any, b: Any) -> np.ndarray:
    """Elementwise disagreement |a − b| / max(1, |a| + |b|) (ADBench/GradBench's measure).

    Relative for large values, absolute for small ones, symmetric, and 0 only when equal.

    Examples:
        >>> float(rho(3.0, 1.0)), float(rho(0.1, 0.2))
        (0.5, 0.1)
    """
    a, b = _as_real(a, "a"), _as_real(b, "b")
    out: np.ndarray = np.abs(a - b) / np.maximum(1.0, np.abs(a) + np.abs(b))
    return out


def max_rho(a: Any, b: Any) -> float:
    """The largest [`rho`][gradlab.rho] over every element of two gradients with the same names.

    Gradients are dicts of arrays, or nests of the same structure (compared leaf by leaf,
    by path). Non-finite values count as total disagreement (``inf``).

    Examples:
        >>> max_rho({"w": [1.0, 2.0], "b": 0.0}, {"w": [1.0, 2.5], "b": 0.0})
        0.1111111111111111
    """
    for argument, value in (("a", a), ("b", b)):
        if not isinstance(value, (Mapping, list, tuple)):
            raise ArgumentTypeError(
                argument, f"must be a dict of arrays or a nest of them, got {type(value).__name__}"
            )
    a, b = flatten(a)[0], flatten(b)[0]
    if set(a) != set(b):
        raise ArgumentError("b", f"names {sorted(b)} differ from {sorted(a)}")
    worst = 0.0
    for name in a:
        left, right = _as_real(a[name], f"a[{name!r}]"), _as_real(b[name], f"b[{name!r}]")
        if left.shape != right.shape:
            raise ArgumentError("b", f"{name!r} has shape {right.shape}, expected {left.shape}")
        if left.size == 0:
            continue
        if not (np.all(np.isfinite(left)) and np.all(np.isfinite(right))):
            return float("inf")
        worst = max(worst, float(np.max(rho(left, right))))
    return worst


def path_rho(a: Any, b: Any) -> np.ndarray:
    """Per step, the largest rho between two fits' trajectories, over their common steps.

    ``a`` and ``b`` are ``FitResult.trajectory`` values: for each parameter (a dict, or a
    nest) an array whose leading axis is the step. Non-finite parameters count as total
    disagreement (``inf``).
    """
    if a is None or b is None:
        raise ArgumentTypeError("results", "need trajectories: fit(..., trajectory=True)")
    a, b = flatten(a)[0], flatten(b)[0]
    length = min(len(np.asarray(path)) for path in (*a.values(), *b.values()))
    per_step = np.zeros(length)
    for name, path in a.items():
        left = np.asarray(path)[:length].reshape(length, -1).astype(np.float64)
        right = np.asarray(b[name])[:length].reshape(length, -1).astype(np.float64)
        if left.shape[1] == 0:
            continue
        with np.errstate(all="ignore"):
            elementwise = np.where(np.isfinite(left) & np.isfinite(right), rho(left, right), np.inf)
        per_step = np.maximum(per_step, elementwise.max(axis=1))
    return per_step


def _as_real(value: Any, argument: str) -> np.ndarray:
    """``value`` as a float64 array (non-finite values allowed), or a named error."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(argument, f"must be real numbers, got {value!r}") from None


def tolerance(dtype: str, *, against_fd: bool = False) -> float:
    """The rho a correct engine stays within, in ``dtype``, against hand or fd gradients."""
    table = FD_TOLERANCE if against_fd else EXACT_TOLERANCE
    return table[check_dtype(dtype)]
