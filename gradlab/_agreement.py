"""How gradlab measures agreement between two gradients: rho, and its tolerances."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import check_dtype, check_float, check_positive_float
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._tree import NestError, flatten, subscript

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
#: Names the element at an index of a named result (``"w[1]"``, ``"∂f[2]/∂x[0]"``).
Label = Callable[[str, "tuple[int, ...]"], str]


def rho(a: Any, b: Any) -> np.ndarray:
    """Elementwise disagreement |a − b| / max(1, |a| + |b|) (ADBench/GradBench's measure).

    Relative for large values, absolute for small ones, symmetric, and 0 only when equal.

    Examples:
        >>> float(rho(3.0, 1.0)), float(rho(0.1, 0.2))
        (0.5, 0.1)
    """
    a, b = _as_real(a, "a"), _as_real(b, "b")
    with np.errstate(over="ignore", invalid="ignore"):
        out: np.ndarray = np.abs(a - b) / np.maximum(1.0, np.abs(a) + np.abs(b))
        # Near the largest float, |a − b| and |a| + |b| overflow, and inf / inf would call
        # two opposite gradients equal: there, the same on halves (exact in binary).
        big = np.isfinite(a) & np.isfinite(b) & ~np.isfinite(out)
        if np.any(big):
            half_a, half_b = a / 2, b / 2
            halves = np.abs(half_a - half_b) / np.maximum(0.5, np.abs(half_a) + np.abs(half_b))
            out = np.where(big, halves, out)
    return out


def max_rho(a: Any, b: Any) -> float:
    """The largest [`rho`][gradlab.rho] over every element of two gradients with the same names.

    Gradients are dicts of arrays, or nests of the same structure (compared leaf by leaf,
    by path), or two arrays. Non-finite values count as total disagreement (``inf``).

    Examples:
        >>> max_rho({"w": [1.0, 2.0], "b": 0.0}, {"w": [1.0, 2.5], "b": 0.0})
        0.1111111111111111
    """
    a, b = _named(a, "a"), _named(b, "b")
    if set(a) != set(b):
        raise ArgumentError("b", f"has {_names(b)}, where a has {_names(a)}")
    worst = 0.0
    for name in a:
        left, right = _as_real(a[name], _at("a", name)), _as_real(b[name], _at("b", name))
        if left.shape != right.shape:
            raise ArgumentError(_at("b", name), f"has shape {right.shape}, expected {left.shape}")
        if left.size == 0:
            continue
        if not (np.all(np.isfinite(left)) and np.all(np.isfinite(right))):
            return float("inf")
        worst = max(worst, float(np.max(rho(left, right))))
    return worst


def excess(a: Any, b: Any, atol: float, rtol: float) -> np.ndarray:
    """Elementwise |a − b| / (atol + rtol·max(|a|, |b|)): at most 1 where a and b are close.

    The symmetric form of ``numpy.isclose`` (which scales by |b| alone, so that
    ``isclose(a, b)`` and ``isclose(b, a)`` can differ): a pair of engines is judged the same
    whichever is the reference. Equal values score 0, non-finite ones ``inf``.

    How it relates to rho: rho ≤ τ means |a − b| ≤ τ·max(1, |a| + |b|), so ``atol = rtol =
    τ`` accepts everything rho ≤ τ/2 accepts, and rho ≤ 2τ accepts everything it accepts.

    Examples:
        >>> round(float(excess(1.0, 1.1, atol=0.0, rtol=0.1)), 12)  # |Δ| = 0.1 of max = 1.1
        0.909090909091
    """
    a, b = _as_real(a, "a"), _as_real(b, "b")
    with np.errstate(all="ignore"):
        allowed = atol + rtol * np.maximum(np.abs(a), np.abs(b))
        out = np.where(a == b, 0.0, np.abs(a - b) / allowed)
        out = np.where(np.isfinite(a) & np.isfinite(b), out, np.inf)
    return np.asarray(np.where(np.isnan(out), np.inf, out))


@dataclass(frozen=True)
class Criterion:
    """How two engines' values are judged close: a largest rho (gradlab's table, or one the
    caller gives), or the caller's ``atol``/``rtol`` (see [`excess`][gradlab._agreement.excess]).

    Attributes:
        tolerance: One largest rho for every pair, or ``None`` for gradlab's table.
        atol: The absolute tolerance, or ``None`` when judging in rho.
        rtol: The relative tolerance, or ``None`` when judging in rho.
    """

    tolerance: float | None = None
    atol: float | None = None
    rtol: float | None = None
    #: Each pair's largest rho derived from the computation (``tolerance="derived"``).
    derived: bool = False

    @property
    def in_rho(self) -> bool:
        """Whether pairs are judged in rho (no ``atol``/``rtol`` given)."""
        return self.atol is None

    def excess(self, a: Any, b: Any) -> np.ndarray:
        """With ``atol``/``rtol``: each element's [`excess`][gradlab._agreement.excess]."""
        return excess(a, b, self.atol or 0.0, self.rtol or 0.0)

    def close(self, a: Any, b: Any) -> bool:
        """With ``atol``/``rtol``: whether every element of two arrays is close."""
        scores = self.excess(a, b)
        return bool(scores.size == 0 or np.max(scores) <= 1.0)

    def describe(self) -> str:
        """The criterion for a table's tolerance column."""
        return f"atol {self.atol:g}, rtol {self.rtol:g}"


def criterion(tolerance: object = None, atol: object = None, rtol: object = None) -> Criterion:
    """Check a comparison's tolerance arguments: ``tolerance`` (a largest rho, or
    ``"derived"``: each pair's from the computation) or ``atol`` and ``rtol`` (either alone
    means the other is 0), not both kinds."""
    if tolerance is not None and (atol is not None or rtol is not None):
        raise ArgumentError(
            "tolerance", "and atol/rtol are two ways of saying the same thing: give one of them"
        )
    if tolerance == "derived":
        return Criterion(derived=True)
    if tolerance is not None:
        if isinstance(tolerance, str):
            raise ArgumentError(
                "tolerance", f"must be a positive number or 'derived', got {tolerance!r}"
            )
        return Criterion(tolerance=check_positive_float(tolerance, "tolerance"))
    if atol is None and rtol is None:
        return Criterion()
    checked = {
        name: 0.0 if value is None else check_float(value, name, 0.0)
        for name, value in (("atol", atol), ("rtol", rtol))
    }
    if checked["atol"] == 0.0 and checked["rtol"] == 0.0:
        raise ArgumentError("atol", "and rtol are both 0: nothing but exact equality would pass")
    return Criterion(atol=checked["atol"], rtol=checked["rtol"])


def path_rho(a: Any, b: Any, judge: Criterion | None = None) -> np.ndarray:
    """Per step, the largest rho between two fits' trajectories, over their common steps.

    ``a`` and ``b`` are ``FitResult.trajectory`` values: for each parameter (a dict, or a
    nest) an array whose leading axis is the step. Non-finite parameters count as total
    disagreement (``inf``). With an ``atol``/``rtol`` ``judge``, the largest
    [`excess`][gradlab._agreement.excess] instead (at most 1 where the paths are close).
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
        if judge is not None and not judge.in_rho:
            elementwise = judge.excess(left, right)
        else:
            with np.errstate(all="ignore"):
                finite = np.isfinite(left) & np.isfinite(right)
                elementwise = np.where(finite, rho(left, right), np.inf)
        per_step = np.maximum(per_step, elementwise.max(axis=1))
    return per_step


def joined(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two results with the same names as two flat arrays, element by element."""
    return (
        np.concatenate([np.ravel(a[name]) for name in a] or [np.zeros(0)]),
        np.concatenate([np.ravel(b[name]) for name in a] or [np.zeros(0)]),
    )


def differences(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    label: Label,
    count: int,
    judge: Criterion | None = None,
) -> list[tuple[str, float, float, float]]:
    """The ``count`` elements where ``a`` and ``b`` differ most, most first: ``(element, a's
    value, b's value, rho)`` (a pair with a non-finite value has rho inf). "Most" is by rho,
    or by [`excess`][gradlab._agreement.excess] when ``judge`` has ``atol``/``rtol``."""
    judge = judge or Criterion()
    found: list[tuple[str, float, float, float, float]] = []
    for name in a:
        left, right = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        if left.size == 0:
            continue
        with np.errstate(all="ignore"):
            rhos = np.where(np.isfinite(left) & np.isfinite(right), rho(left, right), np.inf)
        scores = rhos if judge.in_rho else judge.excess(left, right)
        flat = scores.ravel()
        if count == 1:  # the first of equal largest, in flattening order
            top: Any = [int(np.argmax(flat))]
        elif flat.size > count:
            top = np.argpartition(-flat, count - 1)[:count]
        else:
            top = range(flat.size)
        for position in top:
            index = np.unravel_index(int(position), rhos.shape)
            found.append(
                (
                    label(name, tuple(int(i) for i in index)),
                    float(left[index]),
                    float(right[index]),
                    float(rhos[index]),
                    float(flat[position]),
                )
            )
    found.sort(key=lambda item: -item[4])  # stable: the first parameter among equals
    return [item[:4] for item in found[:count]]


def _as_real(value: Any, argument: str) -> np.ndarray:
    """``value`` as a float64 array (non-finite values allowed), or a named error."""
    try:
        if np.iscomplexobj(value):  # would lose its imaginary part, with only a warning
            raise TypeError
        if np.asarray(value).dtype.kind not in "biuf":  # strings, None, objects: no numbers
            raise TypeError
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        shown = f"{type(value).__name__} {value!r}"
        raise ArgumentTypeError(
            argument, f"must be real numbers, got {shown[:80]}{'…' * (len(shown) > 80)}"
        ) from None


def _named(value: Any, argument: str) -> dict[str, Any]:
    """``value``'s leaves by path (one array is the single leaf ``""``), or a named error."""
    try:
        return flatten(value)[0]
    except NestError as error:
        raise ArgumentError(subscript(argument, error.keys), str(error)) from None


def _names(flat: Mapping[str, Any]) -> str:
    """What a flattened argument holds, for an error: its leaves' names, or one array."""
    return "one array" if list(flat) == [""] else f"the leaves {sorted(flat)}"


def _at(argument: str, name: str) -> str:
    """The argument naming one leaf: ``a['w']``, or ``a`` for a lone array."""
    return f"{argument}[{name!r}]" if name else argument


def tolerance(dtype: str, *, against_fd: bool = False) -> float:
    """The rho a correct engine stays within, in ``dtype``, against hand or fd gradients."""
    table = FD_TOLERANCE if against_fd else EXACT_TOLERANCE
    return table[check_dtype(dtype)]
