"""An array-API namespace for TensorFlow: ``tf.experimental.numpy`` with NumPy's semantics.

Problems are written once against ``xp`` and the array API (``xp.sum(x, axis=0)``,
``x @ w``, ``x[rows]``, ``x.T``). TensorFlow offers ``tf.experimental.numpy`` (``tnp``),
whose *functions* follow NumPy, but a ``tf.Tensor``'s *operators* do not: ``x @ w`` with
a vector ``w`` fails (``tf.matmul`` wants matrices), ``x[rows]`` with an index array fails,
``x.T`` does not exist. ``tnp.experimental_enable_numpy_behavior()`` changes that for the
whole process, for good; gradlab leaves global framework state as it found it, so it
wraps tensors instead: an [`Array`][gradlab.engines._tf_numpy.Array] holds one
``tf.Tensor`` and gives its operators NumPy's meaning through ``tnp``. The wrapper is thin
Python around the tensor; under ``tf.function`` it exists only while tracing, so compiled
code is pure TensorFlow.

TensorFlow code written natively (a [`NativeProblem`][gradlab.NativeProblem]'s
``tensorflow=`` implementation) receives these arrays too, and TensorFlow converts them
where it needs tensors (``__tf_tensor__``): ``tf.matmul(x, w)`` works on them unchanged.

This module imports TensorFlow; the ``tensorflow`` engines import it when they are made.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

#: Read by ``gradlab.problems._native.framework_of``: this namespace is TensorFlow's.
gradlab_framework = "tensorflow"

float32, float64, int32, int64 = tf.float32, tf.float64, tf.int32, tf.int64
bool = tf.bool
e, pi, inf, nan = np.e, np.pi, np.inf, np.nan


def unwrap(value: Any) -> Any:
    """The tensor inside an [`Array`][gradlab.engines._tf_numpy.Array]; anything else as is."""
    return value.tensor if isinstance(value, Array) else value


def _unwrap_all(values: Any) -> Any:
    if isinstance(values, (list, tuple)):
        return type(values)(_unwrap_all(value) for value in values)
    return unwrap(values)


def _wrap(value: Any) -> Any:
    if isinstance(value, tf.Tensor):
        return Array(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(item) for item in value)
    return value


def _lifted(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a ``tnp``/``tf`` function) on and to ``Array``s."""

    def lifted(*args: Any, **kwargs: Any) -> Any:
        return _wrap(
            function(*_unwrap_all(args), **{name: unwrap(v) for name, v in kwargs.items()})
        )

    lifted.__name__ = getattr(function, "__name__", "function")
    return lifted


class Array:
    """One ``tf.Tensor`` with NumPy's operators: what the ``tensorflow`` engines compute on.

    Attributes:
        tensor: The wrapped ``tf.Tensor``.
    """

    __slots__ = ("tensor",)
    __array_priority__ = 100  # NumPy defers to these operators: ``np.float64(2) * array``

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int | None, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> Any:
        return self.tensor.dtype

    @property
    def ndim(self) -> int:
        return len(self.tensor.shape)

    @property
    def size(self) -> int | None:
        size = 1
        for length in self.tensor.shape:
            if length is None:
                return None
            size *= length
        return size

    @property
    def device(self) -> str:
        return str(self.tensor.device)

    @property
    def T(self) -> Array:
        return Array(tf.transpose(self.tensor))

    @property
    def mT(self) -> Array:
        return Array(tf.linalg.matrix_transpose(self.tensor))

    def __getitem__(self, key: Any) -> Array:
        key = _unwrap_all(key)
        if _is_index_array(key):
            # An index array, NumPy's advanced indexing along the first axis.
            if key.dtype == tf.bool:
                return Array(tf.boolean_mask(self.tensor, key))
            return Array(tf.gather(self.tensor, key, axis=0))
        if isinstance(key, tuple) and _holds_index_array(key):
            return Array(_gather_along(self.tensor, key))
        return Array(self.tensor[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("TensorFlow arrays are immutable: build a new array instead")

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.tensor.numpy(), dtype=dtype)

    def __tf_tensor__(self, dtype: Any = None, name: Any = None) -> Any:
        return tf.convert_to_tensor(self.tensor, dtype=dtype, name=name)

    def __float__(self) -> float:
        return float(self.tensor)

    def __int__(self) -> int:
        return int(self.tensor)

    def __bool__(self) -> builtins.bool:
        return builtins.bool(self.tensor)

    def __repr__(self) -> str:
        return f"Array({self.tensor!r})"

    def __neg__(self) -> Array:
        return Array(tf.negative(self.tensor))

    def __pos__(self) -> Array:
        return self

    def __abs__(self) -> Array:
        return Array(tf.abs(self.tensor))

    __hash__ = None  # type: ignore[assignment]  # elementwise ==, as NumPy's


def _is_index_array(key: Any) -> builtins.bool:
    """Whether ``key`` indexes by an array (NumPy's advanced indexing), not by a number."""
    return isinstance(key, (tf.Tensor, np.ndarray)) and builtins.bool(len(key.shape))


def _holds_index_array(key: tuple[Any, ...]) -> builtins.bool:
    # builtins': this module's own any and all are the namespace's (TensorFlow's).
    return builtins.any(_is_index_array(part) for part in key)


def _gather_along(tensor: Any, key: tuple[Any, ...]) -> Any:
    """NumPy's ``x[:, i]`` (one integer array, every other axis whole, an ``...`` allowed):
    ``tf.gather`` along that array's axis, which places the indexed axes where NumPy does.
    TensorFlow's own indexing takes no array there; other mixes are refused by name."""
    arrays = [place for place, part in enumerate(key) if _is_index_array(part)]
    ellipses = [place for place, part in enumerate(key) if part is Ellipsis]
    whole = builtins.all(
        part is Ellipsis or (isinstance(part, slice) and part == slice(None))
        for place, part in enumerate(key)
        if place not in arrays
    )
    index = key[arrays[0]]
    if len(arrays) != 1 or not whole or len(ellipses) > 1 or tf.as_dtype(index.dtype) == tf.bool:
        raise IndexError(
            "gradlab's TensorFlow namespace indexes by an array along one axis with every "
            f"other axis whole (x[:, i], x[..., i]), got the key {key!r}"
        )
    place = arrays[0]
    if ellipses and ellipses[0] < place:  # counted from the last axis
        place = len(tensor.shape) - (len(key) - place)
    return tf.gather(tensor, index, axis=place)


def _binary(function: Callable[..., Any], name: str) -> None:
    def forward(self: Array, other: Any) -> Any:
        if not isinstance(other, (Array, tf.Tensor, np.ndarray, np.generic, int, float)):
            return NotImplemented
        return Array(function(self.tensor, unwrap(other)))

    def backward(self: Array, other: Any) -> Any:
        if not isinstance(other, (tf.Tensor, np.ndarray, np.generic, int, float)):
            return NotImplemented
        return Array(function(unwrap(other), self.tensor))

    setattr(Array, f"__{name}__", forward)
    setattr(Array, f"__r{name}__", backward)


for _name, _function in {
    "add": tnp.add,
    "sub": tnp.subtract,
    "mul": tnp.multiply,
    "truediv": tnp.true_divide,
    "floordiv": tnp.floor_divide,
    "mod": tnp.mod,
    "pow": tnp.power,
    "matmul": tnp.matmul,
}.items():
    _binary(_function, _name)
for _name, _function in {
    "lt": tnp.less,
    "le": tnp.less_equal,
    "gt": tnp.greater,
    "ge": tnp.greater_equal,
    "eq": tnp.equal,
    "ne": tnp.not_equal,
    "and": tnp.logical_and,
    "or": tnp.logical_or,
}.items():
    setattr(
        Array,
        f"__{_name}__",
        (lambda function: lambda self, other: Array(function(self.tensor, unwrap(other))))(
            _function
        ),
    )
ndarray = Array

# Element-wise functions, by their array-API names.
abs = _lifted(tnp.abs)
acos, asin, atan = _lifted(tnp.arccos), _lifted(tnp.arcsin), _lifted(tnp.arctan)
acosh, asinh, atanh = _lifted(tnp.arccosh), _lifted(tnp.arcsinh), _lifted(tnp.arctanh)
atan2 = _lifted(tnp.arctan2)
add, subtract, multiply = _lifted(tnp.add), _lifted(tnp.subtract), _lifted(tnp.multiply)
divide, pow, negative = _lifted(tnp.true_divide), _lifted(tnp.power), _lifted(tnp.negative)
ceil, floor, round = _lifted(tnp.ceil), _lifted(tnp.floor), _lifted(tnp.round)
cos, cosh, sin, sinh, tan, tanh = (
    _lifted(tnp.cos),
    _lifted(tnp.cosh),
    _lifted(tnp.sin),
    _lifted(tnp.sinh),
    _lifted(tnp.tan),
    _lifted(tnp.tanh),
)
exp, expm1, log, log1p = _lifted(tnp.exp), _lifted(tnp.expm1), _lifted(tnp.log), _lifted(tnp.log1p)
log2, log10, logaddexp = _lifted(tnp.log2), _lifted(tnp.log10), _lifted(tnp.logaddexp)
sqrt, square, sign = _lifted(tnp.sqrt), _lifted(tnp.square), _lifted(tnp.sign)
maximum, minimum = _lifted(tnp.maximum), _lifted(tnp.minimum)
isfinite, isinf, isnan = _lifted(tnp.isfinite), _lifted(tnp.isinf), _lifted(tnp.isnan)
equal, not_equal = _lifted(tnp.equal), _lifted(tnp.not_equal)
less, less_equal = _lifted(tnp.less), _lifted(tnp.less_equal)
greater, greater_equal = _lifted(tnp.greater), _lifted(tnp.greater_equal)
logical_and, logical_or, logical_not = (
    _lifted(tnp.logical_and),
    _lifted(tnp.logical_or),
    _lifted(tnp.logical_not),
)
where = _lifted(tnp.where)
clip = _lifted(tnp.clip)

# Reductions and linear algebra.
sum, prod, mean = _lifted(tnp.sum), _lifted(tnp.prod), _lifted(tnp.mean)
max, min = _lifted(tnp.max), _lifted(tnp.min)
argmax, argmin = _lifted(tnp.argmax), _lifted(tnp.argmin)
all, any = _lifted(tnp.all), _lifted(tnp.any)
cumulative_sum = _lifted(tnp.cumsum)
matmul, tensordot, outer = _lifted(tnp.matmul), _lifted(tnp.tensordot), _lifted(tnp.outer)


def var(
    x: Any, /, *, axis: Any = None, correction: float = 0.0, keepdims: builtins.bool = False
) -> Any:
    return _wrap(tnp.var(unwrap(x), axis=axis, ddof=correction, keepdims=keepdims))


def std(
    x: Any, /, *, axis: Any = None, correction: float = 0.0, keepdims: builtins.bool = False
) -> Any:
    return _wrap(tnp.std(unwrap(x), axis=axis, ddof=correction, keepdims=keepdims))


def vecdot(x1: Any, x2: Any, /, *, axis: int = -1) -> Any:
    return sum(multiply(x1, x2), axis=axis)


# Shapes.
reshape = _lifted(tnp.reshape)
expand_dims, squeeze, flip = _lifted(tnp.expand_dims), _lifted(tnp.squeeze), _lifted(tnp.flip)
broadcast_to = _lifted(tnp.broadcast_to)


def stack(arrays: Sequence[Any], /, *, axis: int = 0) -> Any:
    return _wrap(tnp.stack(_unwrap_all(list(arrays)), axis=axis))


def concatenate(arrays: Sequence[Any], /, *, axis: int | None = 0) -> Any:
    return _wrap(tnp.concatenate(_unwrap_all(list(arrays)), axis=axis))


#: The array API's name for it (NumPy 2 has both).
concat = concatenate


def permute_dims(x: Any, /, axes: Sequence[int]) -> Any:
    return _wrap(tf.transpose(unwrap(x), perm=list(axes)))


def matrix_transpose(x: Any, /) -> Any:
    return _wrap(tf.linalg.matrix_transpose(unwrap(x)))


# Creation and types.


def _dtype(dtype: Any) -> Any:
    """A TensorFlow dtype from an array-API one, a NumPy one or a Python type."""
    if dtype is None or isinstance(dtype, tf.DType):
        return dtype
    if dtype is builtins.float:
        return tf.float64
    if dtype is builtins.int:
        return tf.int64
    return tf.as_dtype(np.dtype(dtype))


def asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Any:
    return Array(tf.convert_to_tensor(unwrap(obj), dtype=_dtype(dtype)))


def astype(x: Any, dtype: Any, /, *, copy: builtins.bool = True, device: Any = None) -> Any:
    return Array(tf.cast(unwrap(x), _dtype(dtype)))


def zeros(shape: Any, *, dtype: Any = None, device: Any = None) -> Any:
    return Array(tf.zeros(shape, dtype=_dtype(dtype) or tf.float64))


def ones(shape: Any, *, dtype: Any = None, device: Any = None) -> Any:
    return Array(tf.ones(shape, dtype=_dtype(dtype) or tf.float64))


def full(shape: Any, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Any:
    return Array(tf.fill(shape, tf.constant(fill_value, dtype=_dtype(dtype) or tf.float64)))


empty = zeros  # TensorFlow has no uninitialised arrays


def zeros_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return Array(tf.zeros_like(unwrap(x), dtype=_dtype(dtype)))


def ones_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return Array(tf.ones_like(unwrap(x), dtype=_dtype(dtype)))


def full_like(x: Any, /, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Any:
    return Array(tf.fill(tf.shape(unwrap(x)), tf.constant(fill_value, _dtype(dtype) or x.dtype)))


def arange(
    start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None
) -> Any:
    return _wrap(tnp.arange(start, stop, step, dtype=_dtype(dtype)))


def linspace(
    start: Any,
    stop: Any,
    /,
    num: int,
    *,
    dtype: Any = None,
    device: Any = None,
    endpoint: builtins.bool = True,
) -> Any:
    return _wrap(
        tnp.linspace(start, stop, num, endpoint=endpoint, dtype=_dtype(dtype) or tf.float64)
    )


def eye(
    n_rows: int, n_cols: int | None = None, /, *, k: int = 0, dtype: Any = None, device: Any = None
) -> Any:
    return _wrap(tnp.eye(n_rows, n_cols, k=k, dtype=_dtype(dtype) or tf.float64))


_KINDS = {
    "bool": (tf.bool,),
    "signed integer": (tf.int8, tf.int16, tf.int32, tf.int64),
    "unsigned integer": (tf.uint8, tf.uint16, tf.uint32, tf.uint64),
    "real floating": (tf.float16, tf.bfloat16, tf.float32, tf.float64),
    "complex floating": (tf.complex64, tf.complex128),
}
_KINDS["integral"] = _KINDS["signed integer"] + _KINDS["unsigned integer"]
_KINDS["numeric"] = _KINDS["integral"] + _KINDS["real floating"] + _KINDS["complex floating"]


def isdtype(dtype: Any, kind: Any) -> builtins.bool:
    """The array API's ``isdtype``, for TensorFlow (and NumPy) dtypes."""
    dtype = _dtype(dtype)
    if isinstance(kind, tuple):
        return builtins.any(isdtype(dtype, one) for one in kind)
    if isinstance(kind, str):
        if kind not in _KINDS:
            raise ValueError(f"unknown dtype kind {kind!r}")
        return dtype in _KINDS[kind]
    return builtins.bool(dtype == _dtype(kind))


def __getattr__(name: str) -> Any:
    """A name this namespace lacks: say what it covers, and what to do instead."""
    raise AttributeError(
        f"gradlab's TensorFlow namespace has no {name!r}: it covers the array API's "
        "element-wise, reduction, creation and shape functions and matmul, not linalg or "
        "fft; write this loss natively (NativeProblem(tensorflow=...))"
    )
