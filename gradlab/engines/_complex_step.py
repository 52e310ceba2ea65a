"""The ``complex-step`` engine: derivatives as Im f(x + ih·v) / h, exact to round-off.

For a function that is real-analytic (built from +, −, ×, ÷, powers, exp, log, tanh, ...),
f(x + ih·v) = f(x) + ih·J·v − h²/2·vᵀHv + O(h³), so Im f(x + ih·v) / h is J·v with an error
of order h² and no subtraction: with h = 1e-20 it is exact to the precision of the
arithmetic (Squire & Trapp 1998; Martins, Sturdza & Alonso 2003). That makes it a far
sharper reference than central differences, judged with the exact engines' tolerances.

It is only right for analytic operations. abs, comparisons, max and min, sign, rounding,
clipping, taking the real part: each either fails on complex numbers or silently returns a
wrong derivative. So the loss runs on a namespace and an array type that let through only
operations known to be analytic, and refuse every other one, naming it, with
[`NotSupported`][gradlab.NotSupported]: a loss with ``xp.max`` (a log-sum-exp shift) or
``xp.abs`` is refused, never answered with wrong numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._checks import read_only
from gradlab._errors import NotSupported
from gradlab._loss import checked_loss, checked_output
from gradlab._tree import structure, tree_map
from gradlab.engines._derive import jacobian_from_jvp, vjp_from_jacobian
from gradlab.engines._protocol import (
    JVP,
    VJP,
    AbstractEngine,
    Data,
    Jacobian,
    Params,
    Tree,
    ValueAndGrad,
)
from gradlab.problems._base import AbstractProblem

#: The imaginary step. Its error is of order h²·|f'''|, far below round-off at 1e-20; no
#: subtraction means no cancellation however small it is.
STEP = 1e-20

# Ufuncs that are analytic where they are defined (matmul is a ufunc too).
_ANALYTIC_UFUNCS = frozenset(
    {
        "add",
        "subtract",
        "multiply",
        "divide",
        "true_divide",
        "negative",
        "positive",
        "power",
        "float_power",
        "square",
        "sqrt",
        "cbrt",
        "reciprocal",
        "exp",
        "exp2",
        "expm1",
        "log",
        "log2",
        "log10",
        "log1p",
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "sinh",
        "cosh",
        "tanh",
        "arcsinh",
        "arccosh",
        "arctanh",
        "matmul",
        "conjugate",
    }
)
# Ufunc methods that only add or multiply what the ufunc computes.
_ANALYTIC_METHODS = frozenset({"__call__", "reduce", "accumulate", "outer"})
# Array functions that only move, combine, sum or multiply values.
_ANALYTIC_FUNCTIONS = frozenset(
    {
        "sum",
        "mean",
        "prod",
        "cumsum",
        "cumprod",
        "dot",
        "vdot",
        "inner",
        "outer",
        "tensordot",
        "einsum",
        "matmul",
        "stack",
        "hstack",
        "vstack",
        "concatenate",
        "concat",
        "reshape",
        "ravel",
        "transpose",
        "permute_dims",
        "moveaxis",
        "swapaxes",
        "squeeze",
        "expand_dims",
        "broadcast_to",
        "broadcast_arrays",
        "atleast_1d",
        "atleast_2d",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "diag",
        "diagonal",
        "trace",
        "tril",
        "triu",
        "take",
        "take_along_axis",
        "repeat",
        "tile",
        "flip",
        "roll",
        "split",
        "array_split",
        "where",
        "copy",
        "asarray",
        "array",
        "linalg.matmul",
    }
)


def _refuse(operation: str) -> NotSupported:
    return NotSupported(
        f"the complex-step engine cannot differentiate through {operation}: it is not "
        "analytic (a complex argument gives a wrong derivative or none); use 'fd' or an "
        "autodiff engine for this loss"
    )


class _Complex(np.ndarray):
    """A complex128 array that lets through analytic operations only (see the module)."""

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        name = ufunc.__name__
        if name == "logaddexp" and method == "__call__" and not kwargs:
            return _logaddexp(*inputs)
        if name not in _ANALYTIC_UFUNCS or method not in _ANALYTIC_METHODS:
            raise _refuse(f"numpy.{name}" + ("" if method == "__call__" else f".{method}"))
        if "out" in kwargs:
            raise _refuse(f"numpy.{name} with out=")
        return _wrap(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        name = func.__name__ if func.__module__ == "numpy" else f"linalg.{func.__name__}"
        if name not in _ANALYTIC_FUNCTIONS:
            raise _refuse(f"numpy.{name}")
        return _wrap(func(*_plain(args), **_plain(kwargs)))

    def __getitem__(self, key: Any) -> Any:
        # An element would come back as a NumPy scalar, outside these checks: keep it 0-d.
        return _wrap(np.asarray(self)[_plain(key)])

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    @property  # type: ignore[misc]
    def real(self) -> Any:
        raise _refuse("taking the real part")

    @property  # type: ignore[misc]
    def imag(self) -> Any:
        raise _refuse("taking the imaginary part")

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
        if not np.issubdtype(np.dtype(dtype), np.complexfloating):
            raise _refuse(f"a cast to {np.dtype(dtype)}")
        return _wrap(np.asarray(self).astype(dtype, *args, **kwargs))

    def __bool__(self) -> bool:
        raise _refuse("a comparison or truth test")

    def item(self, *args: Any) -> Any:
        raise _refuse("item() (a Python number loses the derivative)")

    def tolist(self) -> Any:
        raise _refuse("tolist() (Python numbers lose the derivative)")


def _plain(value: Any) -> Any:
    """``value`` with every ``_Complex`` as a plain ndarray (nests of args and kwargs)."""
    if isinstance(value, _Complex):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _wrap(value: Any) -> Any:
    """Arrays back as ``_Complex`` (complex128); anything else (shapes, tuples) as it is."""
    if isinstance(value, (np.ndarray, np.generic)) and np.issubdtype(value.dtype, np.number):
        return np.asarray(value, np.complex128).view(_Complex)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(item) for item in value)
    return value


def _logaddexp(a: Any, b: Any) -> Any:
    """log(eᵃ + eᵇ), analytic: shifted by the larger *real* part, a constant, so nothing
    overflows and the derivative is untouched."""
    a, b = np.asarray(_plain(a), np.complex128), np.asarray(_plain(b), np.complex128)
    shift = np.maximum(a.real, b.real)
    return _wrap(shift + np.log(np.exp(a - shift) + np.exp(b - shift)))


class _Namespace:
    """NumPy for a loss evaluated at complex points: analytic functions only.

    ``isdtype`` counts complex128 as real floating: the namespace stands for real arithmetic
    carried on complex numbers (and a loss's value is checked as a real one would be).
    """

    ndarray = _Complex
    #: A NativeProblem's NumPy implementation is the one it runs (at complex points).
    gradlab_framework = "numpy"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # Python's own probes (abc, copy, pickle): not there
            raise AttributeError(name)
        if name in ("asarray", "array"):
            return _asarray
        if name in ("float64", "float32", "complex128", "int64", "int32", "pi", "e", "newaxis"):
            return getattr(np, name)
        if name == "astype":
            return _astype
        if name in _ANALYTIC_FUNCTIONS or name in _ANALYTIC_UFUNCS or name == "logaddexp":
            function = getattr(np, name)
            if name in _ANALYTIC_UFUNCS or name == "logaddexp":
                return lambda *args, **kwargs: function(*(_wrap(arg) for arg in args), **kwargs)
            return function
        raise _refuse(f"xp.{name}")

    def isdtype(self, dtype: Any, kind: Any) -> bool:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if np.dtype(dtype) == np.complex128 and "real floating" in kinds:
            return True
        return bool(np.isdtype(dtype, kind))

    def __repr__(self) -> str:
        return "<gradlab complex-step namespace>"


def _asarray(value: Any, *args: Any, **kwargs: Any) -> Any:
    """An array at a complex point; integers and booleans (indices, masks) as they are."""
    array = np.asarray(_plain(value))
    return array if array.dtype.kind in "biu" else _wrap(array)


def _astype(array: Any, dtype: Any, **kwargs: Any) -> Any:
    """``astype``, refused where it would drop an imaginary part (the derivative): a loss
    may cast its data (indices held as floats), not a complex value to a real kind."""
    if np.iscomplexobj(array) and not np.issubdtype(np.dtype(dtype), np.complexfloating):
        raise _refuse(f"xp.astype to {np.dtype(dtype)}")
    return np.astype(_plain(array), dtype, **kwargs)


XP = _Namespace()


class ComplexStepEngine(AbstractEngine):
    """Derivatives by the complex step, Im f(x + ih·v) / h with h = 1e-20, in complex128.

    Exact to round-off for real-analytic losses, with no step to tune; refuses, naming the
    operation, a loss that uses anything not analytic (abs, comparisons, max, ...). One loss
    evaluation per parameter element for a gradient, one per JVP. Computes in complex128
    whatever dtype is asked, and casts the results to it (as ``fd`` does with float64).
    Registered as ``"complex-step"``; opt-in in comparisons (name it, or make it the
    reference).
    """

    name = "complex-step"
    xp = XP
    #: The loop's arrays (parameters, optimizer state, batches) are plain NumPy; only the
    #: loss sees the analytic namespace, so gradlab's own bookkeeping is never refused.
    loop_xp = np

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """``array`` in ``dtype``: a read-only view where it already is, else a read-only copy."""
        return read_only(array, dtype)

    def objective(self, problem: AbstractProblem) -> Callable[[Params, Data], Any]:
        """The loss alone, in NumPy."""
        loss = checked_loss(problem)
        return lambda params, data: loss(params, data, np)

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """One complex-step derivative per parameter element (a column of a 1 × P Jacobian)."""
        return jacobian_from_jvp(_jvp(checked_loss(problem)))

    def jvp(self, problem: AbstractProblem) -> JVP:
        """Im f(x + ih·v) / h: one complex evaluation, whatever the sizes."""
        return _jvp(checked_output(problem))

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """Column by column: one complex step per parameter element."""
        return jacobian_from_jvp(self.jvp(problem))

    def vjp(self, problem: AbstractProblem) -> VJP:
        """The complex-step Jacobian, contracted with the cotangent."""
        return vjp_from_jacobian(self.jacobian(problem))

    def describe(self) -> dict[str, Any]:
        """The step and precision; it runs on the host CPU."""
        return {
            "framework": "numpy",
            "numpy": np.__version__,
            "device": "cpu",
            "complex_step": STEP,
            "complex_step_precision": "complex128",
        }


def _jvp(function: Callable[[Any, Any, Any], Any]) -> JVP:
    """``(params, tangent, data) -> (value, J·tangent)`` by one complex evaluation."""

    def jvp(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
        dtype = np.result_type(*params.values())
        point = {
            name: _wrap(
                np.asarray(value, np.float64) + 1j * STEP * np.asarray(tangent[name], np.float64)
            )
            for name, value in params.items()
        }
        with np.errstate(all="ignore"):
            out = function(point, _as_float64(data), XP)
        layout = structure(out)
        flat = {path: np.asarray(_plain(leaf)) for path, leaf in layout.flatten(out).items()}
        value = layout.unflatten({path: leaf.real.astype(dtype) for path, leaf in flat.items()})
        product = layout.unflatten(
            {path: (leaf.imag / STEP).astype(dtype) for path, leaf in flat.items()}
        )
        return value, product

    return jvp


def _as_float64(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Data as plain float64 arrays: real constants for the complex evaluation."""
    out: dict[str, np.ndarray] = tree_map(lambda leaf: np.asarray(leaf, np.float64), dict(data))
    return out
