"""GradBench's evals, as gradlab sees them: each input read into a problem, parameters and
data; each function a computation on an engine; each output written in the eval's schema.

``gradlab.gradbench`` speaks the protocol and times; this module knows the evals. The input
generators mirror GradBench's eval programs (the same distributions and default sizes), so
that the in-project tests and the benchmark send what GradBench would.

Reading is the tool's boundary: every number in an input is a JSON number (``true``,
``false``, ``null`` and strings are refused wherever a number or an array of numbers is
expected, though NumPy would read them), and every size is bounded before anything is
allocated. Each eval's ``limits`` bound the products of its sizes that measure memory (the
largest array a run makes) and work (a run's arithmetic), each well above the largest
GradBench's own eval sends, so that no real run is refused and no small message asks for
gigabytes or hours (the table is in docs/gradbench.md, checked against ``EVALS``).
``hello``, ``particle`` and ``saddle`` have no sizes (one number, one number, two numbers).
"""

from __future__ import annotations

import itertools
import math
import numbers
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradlab.gradbench._problems import LSTM, MAX_ELL, ODE, Det, GradBenchGMM, KMeans, fits
from gradlab.problems._base import AbstractProblem
from gradlab.problems._functions import LogSumExp
from gradlab.problems._polynomial import LeastSquares

JSON = Any


class BadInput(ValueError):
    """An input that does not fit its eval's schema; the message says where."""


@dataclass(frozen=True)
class Limits:
    """An eval's bounds on its input's sizes, checked before anything is allocated.

    Attributes:
        sizes: Each size's letter and where the input gives it (``"input field 'n'"``).
        bounds: Each bounded product of sizes, written with ``·`` (``"n·k·d"``; one letter
            alone bounds that size), and the largest value accepted.
    """

    sizes: Mapping[str, str]
    bounds: Mapping[str, int]

    def check(self, **sizes: int) -> None:
        """Refuse sizes whose product passes a bound, naming the fields and the bound.

        Raises:
            BadInput: A product is above its bound.
        """
        for product, most in self.bounds.items():
            letters = product.split("·")
            value = math.prod(sizes[letter] for letter in letters)
            if value <= most:
                continue
            if len(letters) == 1:
                raise BadInput(
                    f"input too large: {self.sizes[product]} is {value}, above gradlab's "
                    f"bound of {most}"
                )
            given = ", ".join(
                f"{letter} = {sizes[letter]} is {self.sizes[letter]}"
                for letter in dict.fromkeys(letters)
            )
            raise BadInput(
                f"input too large: {product} = {value}, above gradlab's bound of {most} ({given})"
            )


# What a function asks of an engine: the loss's value, its gradient, a vector-valued
# function's value, k-means' Newton direction (gradient over the Hessian's diagonal), or a
# procedure with derivatives nested inside (particle, saddle: ``gradlab.gradbench._nested``).
VALUE, GRADIENT, VECTOR, NEWTON, NESTED = "value", "gradient", "vector", "newton", "nested"


@dataclass(frozen=True)
class Case:
    """One input, read: what to differentiate, where, and on which data."""

    problem: AbstractProblem | None
    params: dict[str, np.ndarray]
    data: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Eval:
    """One GradBench eval: its functions, how its inputs read and its outputs write.

    Attributes:
        name: The module name GradBench defines (``"gmm"``).
        functions: Each function's name and what it computes (``VALUE``, ...).
        read: The input (JSON) to a ``Case``; raises ``BadInput``.
        write: ``(function, case, result)`` to the output JSON, ``result`` being NumPy: a
            scalar for ``VALUE``, the gradient dict for ``GRADIENT`` and ``NEWTON``, an array
            for ``VECTOR``, the procedure's result for ``NESTED``.
        example: Inputs as GradBench's eval makes them: ``example(seed, **sizes)``.
        sizes: The eval's default sizes, one dict per input, in its order.
        vector_problem: For ``VECTOR`` functions, the case's problem as a vector function.
        timed: Whether its inputs carry ``min_runs`` and ``min_seconds`` (not ``hello``).
        limits: The bounds on its sizes (``read`` checks them), named as in ``sizes``;
            None for an eval without sizes.
    """

    name: str
    functions: Mapping[str, str]
    read: Callable[[JSON], Case]
    write: Callable[[str, Case, Any], JSON]
    example: Callable[..., JSON]
    sizes: tuple[dict[str, Any], ...]
    vector_problem: Callable[[Case], AbstractProblem] | None = None
    timed: bool = True
    limits: Limits | None = None


# -- reading JSON ----------------------------------------------------------------------------


def shown(value: Any) -> str:
    """``repr(value)``, cut short: an error names a bad value without echoing megabytes."""
    return reprlib.repr(value)


def _field(input: JSON, key: str) -> Any:
    if not isinstance(input, Mapping):
        raise BadInput(f"the input must be a JSON object, got {type(input).__name__}")
    if key not in input:
        raise BadInput(f"the input has no field {key!r} (it has {shown(sorted(input))})")
    return input[key]


def _integer(input: JSON, key: str, low: int) -> int:
    value = _field(input, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise BadInput(f"input field {key!r} must be an integer ≥ {low}, got {shown(value)}")
    return int(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadInput(f"{where} must be a number, got {shown(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise BadInput(f"{where} must be finite, got {shown(value)}")
    return number


def _numbers(value: Any, depth: int) -> bool:
    """Whether ``value`` is ``depth`` levels of lists with numbers at the bottom.

    NumPy reads ``true`` as 1, ``"1.5"`` as 1.5 and ``null`` as NaN: each is refused here,
    by the set of the kinds at each level (a pass in C over each level, not a Python loop).
    """
    lists: list[Any] = [value]  # the lists at one level, from the top
    for level in range(depth):
        if not set(map(type, lists)) <= {list}:
            return False
        if level < depth - 1:
            lists = list(itertools.chain.from_iterable(lists))
    return all(
        issubclass(kind, numbers.Real) and not issubclass(kind, bool)
        for kind in set(map(type, itertools.chain.from_iterable(lists)))
    )


def _array(input: JSON, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Field ``key`` as a float64 array of ``shape`` (None: any length ≥ 1)."""
    value = _field(input, key)
    refusal = (
        f"input field {key!r} must be a {len(shape)}-D array of numbers (rows of equal "
        "length; no true, false, null or strings)"
    )
    if not _numbers(value, len(shape)):
        raise BadInput(refusal)
    try:
        array = np.array(value, dtype=np.float64)
    except ValueError:  # ragged rows
        raise BadInput(refusal) from None
    if not fits(array.shape, shape):
        expected = "×".join("n" if want is None else str(want) for want in shape) or "scalar"
        raise BadInput(f"input field {key!r} has shape {array.shape}, expected {expected}")
    if not np.all(np.isfinite(array)):
        raise BadInput(f"input field {key!r} has a value that is not a finite number")
    return array


def _floats(array: Any) -> JSON:
    """A NumPy array as nested lists of Python floats (a 0-d one as a float)."""
    return np.asarray(array, dtype=np.float64).tolist()


# -- the evals -------------------------------------------------------------------------------


class _Square(AbstractProblem):
    """``hello``'s function: x², of one number."""

    name = "hello"
    has_hand_gradient = True

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        return xp.sum(params["x"] * params["x"])

    def hand_value_and_grad(self, params: Any, data: Any) -> tuple[Any, dict[str, Any]]:
        x = params["x"]
        return np.sum(x * x), {"x": 2 * x}

    def param_shapes(self, data: Any) -> dict[str, tuple[int, ...]]:
        return {"x": (1,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        return {}


def _read_hello(input: JSON) -> Case:
    return Case(_Square(), {"x": np.array([_number(input, "the input")])})


def _write_hello(function: str, case: Case, result: Any) -> JSON:
    return float(result["x"][0]) if isinstance(result, dict) else float(result)


def _write_scalar_or_gradient(function: str, case: Case, result: Any, key: str) -> JSON:
    if isinstance(result, dict):
        return _floats(result[key].reshape(-1))
    return float(result)


# Each eval's bounds, beside its reader; the largest GradBench's own eval sends (its
# defaults, ADBench's sizes for gmm) in comments. Memory and work per run: lse and llsq
# O(n·m) (the hand gradient's Vandermonde matrix); gmm (n, k, d) arrays, (k, d, d) factors
# and O(n·k·d²) work; kmeans an (n, k) distance matrix from n·k·d products; ode n·s (the
# reverse pass keeps each step's start) and s steps unrolled by compiling engines; lstm
# l·c cells of b values.
_LSE = Limits({"n": "the length of input field 'x'"}, {"n": 2**24})  # 1,280,000
_LLSQ = Limits(
    {"n": "input field 'n'", "m": "the length of input field 'x'"},
    {"n·m": 2**25},  # 16,392·128
)
_GMM = Limits(
    {"n": "input field 'n'", "k": "input field 'k'", "d": "input field 'd'"},
    # 1000·100·64, 100·64·64, 1000·100·64·64; ADBench's d = 128, k = 200 pass at n = 1000.
    {"n·k·d": 2**26, "k·d·d": 2**24, "n·k·d·d": 2**33},
)
_KMEANS = Limits(
    {
        "n": "the rows of input field 'points'",
        "k": "the rows of input field 'centroids'",
        "d": "the columns of input field 'points'",
    },
    {"n·k": 2**28, "n·k·d": 2**34},  # 100,000·1000, 100,000·1000·16
)
_DET = Limits({"ell": "input field 'ell'"}, {"ell": MAX_ELL})  # 11
_ODE = Limits(
    {"n": "the length of input field 'x'", "s": "input field 's'"},
    {"s": 2**10, "n·s": 2**26},  # 100, 100,000·100
)
_LSTM = Limits(
    {
        "l": "half the rows of input field 'main_params'",
        "c": "the rows of input field 'sequence'",
        "b": "a quarter of the columns of input field 'main_params'",
    },
    {"l·c": 2**17, "l·c·b": 2**24},  # 4·4096, 4·4096·14
)


def _read_lse(input: JSON) -> Case:
    x = _array(input, "x", (None,))
    _LSE.check(n=x.shape[0])
    return Case(LogSumExp(size=x.shape[0]), {"x": x})


def _read_llsq(input: JSON) -> Case:
    x = _array(input, "x", (None,))
    n = _integer(input, "n", 2)
    _LLSQ.check(n=n, m=x.shape[0])
    problem = LeastSquares(terms=x.shape[0])
    return Case(problem, {"x": x}, problem.make_data(n))


def _read_gmm(input: JSON) -> Case:
    d, k, n = _integer(input, "d", 1), _integer(input, "k", 1), _integer(input, "n", 1)
    _GMM.check(n=n, k=k, d=d)
    gamma = _number(_field(input, "gamma"), "input field 'gamma'")
    if gamma <= 0:
        raise BadInput(f"input field 'gamma' must be positive, got {gamma!r}")
    problem = GradBenchGMM(k=k, d=d, gamma=gamma, m=_integer(input, "m", 0))
    shapes = problem.param_shapes({})
    params = {name: _array(input, name, shape) for name, shape in shapes.items()}
    return Case(problem, params, {"x": _array(input, "x", (n, d))})


def _write_gmm(function: str, case: Case, result: Any) -> JSON:
    if isinstance(result, dict):
        return {name: _floats(result[name]) for name in ("alpha", "mu", "q", "l")}
    return float(result)


def _read_kmeans(input: JSON) -> Case:
    points = _array(input, "points", (None, None))
    centroids = _array(input, "centroids", (None, points.shape[1]))
    _KMEANS.check(n=points.shape[0], k=centroids.shape[0], d=points.shape[1])
    return Case(
        KMeans(k=centroids.shape[0], d=points.shape[1]),
        {"centroids": centroids},
        {"points": points},
    )


def _write_kmeans(function: str, case: Case, result: Any) -> JSON:
    return _floats(result["centroids"]) if isinstance(result, dict) else float(result)


def _read_det(input: JSON) -> Case:
    ell = _integer(input, "ell", 1)
    _DET.check(ell=ell)  # 2^ell minors
    matrix = _array(input, "A", (ell * ell,))
    return Case(Det(ell=ell), {"A": matrix.reshape(ell, ell)})


def _read_ode(input: JSON) -> Case:
    x = _array(input, "x", (None,))
    steps = _integer(input, "s", 1)
    _ODE.check(n=x.shape[0], s=steps)
    return Case(ODE(size=x.shape[0], steps=steps), {"x": x})


def _ode_vector(case: Case) -> AbstractProblem:
    problem = case.problem
    assert isinstance(problem, ODE)
    return ODE(size=problem.size, steps=problem.steps, last=False)


def _write_vector_or_gradient(function: str, case: Case, result: Any) -> JSON:
    return _floats(result["x"] if isinstance(result, dict) else result)


def _read_lstm(input: JSON) -> Case:
    main = _array(input, "main_params", (None, None))
    if main.shape[0] % 2 or main.shape[1] % 4:
        raise BadInput(
            f"input field 'main_params' has shape {main.shape}: expected 2l rows of 4b values"
        )
    layers, width = main.shape[0] // 2, main.shape[1] // 4
    sequence = _array(input, "sequence", (None, width))
    if sequence.shape[0] < 2:
        raise BadInput("input field 'sequence' needs at least 2 rows (it predicts the next)")
    _LSTM.check(l=layers, c=sequence.shape[0], b=width)
    return Case(
        LSTM(layers=layers, length=sequence.shape[0], width=width),
        {"main_params": main, "extra_params": _array(input, "extra_params", (3, width))},
        {"state": _array(input, "state", (2 * layers, width)), "sequence": sequence},
    )


def _write_lstm(function: str, case: Case, result: Any) -> JSON:
    if isinstance(result, dict):  # rows adjacent, main_params then extra_params
        return _floats(
            np.concatenate([result["main_params"].ravel(), result["extra_params"].ravel()])
        )
    return float(result)


def _read_particle(input: JSON) -> Case:
    return Case(None, {"w": np.array([_number(_field(input, "w"), "input field 'w'")])})


def _read_saddle(input: JSON) -> Case:
    return Case(None, {"start": _array(input, "start", (2,))})


def _write_nested(function: str, case: Case, result: Any) -> JSON:
    return result  # already floats: the procedure's w, or its two points


# -- inputs as GradBench's evals make them ---------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _example_hello(seed: int = 0, x: float = 1.0) -> JSON:
    return float(x)


def _example_lse(seed: int = 0, n: int = 2500) -> JSON:
    return {"x": _rng(seed).uniform(size=n).tolist()}


def _example_llsq(seed: int = 0, n: int = 16, m: int = 128) -> JSON:
    return {"x": _rng(seed).uniform(size=m).tolist(), "n": n}


def _example_gmm(seed: int = 0, d: int = 2, k: int = 5, n: int = 1000) -> JSON:
    rng = _rng(seed)
    return {
        "d": d,
        "k": k,
        "n": n,
        "x": rng.normal(size=(n, d)).tolist(),
        "m": 0,
        "gamma": 1.0,
        "alpha": rng.normal(size=k).tolist(),
        "mu": rng.uniform(size=(k, d)).tolist(),
        "q": rng.normal(size=(k, d)).tolist(),
        "l": rng.normal(size=(k, d * (d - 1) // 2)).tolist(),
    }


def _example_kmeans(seed: int = 0, k: int = 10, n: int = 1000, d: int = 8) -> JSON:
    points = _rng(seed).uniform(size=(n, d))
    return {"points": points.tolist(), "centroids": points[-k:].tolist()}


def _example_det(seed: int = 0, ell: int = 5) -> JSON:
    return {"A": _rng(seed).uniform(size=ell * ell).tolist(), "ell": ell}


def _example_ode(seed: int = 0, n: int = 1000, s: int = 1) -> JSON:
    return {"x": _rng(seed).uniform(size=n).tolist(), "s": s}


def _example_lstm(seed: int = 0, l: int = 2, c: int = 1024, b: int = 14) -> JSON:  # noqa: E741
    rng = _rng(seed)
    return {
        "main_params": rng.uniform(-1, 1, (2 * l, 4 * b)).tolist(),
        "extra_params": rng.uniform(-1, 1, (3, b)).tolist(),
        "state": rng.uniform(-1, 1, (2 * l, b)).tolist(),
        "sequence": rng.uniform(-1, 1, (c, b)).tolist(),
    }


def _example_particle(seed: int = 0, w: float = 0.0) -> JSON:
    return {"w": float(w)}


def _example_saddle(seed: int = 0, start: float = 1.0) -> JSON:
    return {"start": [float(start), float(start)]}


#: GradBench's four variants of a nested eval: outer and inner derivative, forward or reverse.
NESTED_VARIANTS = {"rr": NESTED, "ff": NESTED, "fr": NESTED, "rf": NESTED}


def _scalar_eval(name: str, read: Callable[[JSON], Case], key: str, **extra: Any) -> Eval:
    """An eval of a ``primal`` value and its ``gradient`` with respect to ``key``."""
    return Eval(
        name,
        {"primal": VALUE, "gradient": GRADIENT},
        read,
        lambda function, case, result: _write_scalar_or_gradient(function, case, result, key),
        **extra,
    )


#: Every eval gradlab implements, by GradBench module name.
EVALS: dict[str, Eval] = {
    "hello": Eval(
        "hello",
        {"square": VALUE, "double": GRADIENT},
        _read_hello,
        _write_hello,
        _example_hello,
        ({"x": 1.0}, {"x": 2.0}, {"x": 8.0}),
        timed=False,
    ),
    "lse": _scalar_eval(
        "lse",
        _read_lse,
        "x",
        example=_example_lse,
        sizes=tuple({"n": 2500 * 2**i} for i in range(10)),  # 2500 … 1,280,000
        limits=_LSE,
    ),
    "llsq": _scalar_eval(
        "llsq",
        _read_llsq,
        "x",
        example=_example_llsq,
        sizes=tuple({"n": n, "m": 128} for n in (16, 64, 256, 1024, 4096, 16392)),
        limits=_LLSQ,
    ),
    "gmm": Eval(
        "gmm",
        {"objective": VALUE, "jacobian": GRADIENT},
        _read_gmm,
        _write_gmm,
        _example_gmm,
        tuple(
            {"d": d, "k": k, "n": 1000}
            for d, k in sorted(
                ((d, k) for d in (2, 10, 20, 32, 64) for k in (5, 10, 25, 50, 100)),
                key=lambda pair: pair[0] * pair[1],
            )
        ),
        limits=_GMM,
    ),
    "kmeans": Eval(
        "kmeans",
        {"cost": VALUE, "dir": NEWTON},
        _read_kmeans,
        _write_kmeans,
        _example_kmeans,
        tuple(
            {"k": k, "n": n, "d": d}
            for k in (10, 100, 1000)
            for n in (1000, 10000, 100000)
            for d in (8, 16)
            if k <= n
        ),
        limits=_KMEANS,
    ),
    "det": _scalar_eval(
        "det",
        _read_det,
        "A",
        example=_example_det,
        sizes=tuple({"ell": ell} for ell in range(5, 12)),
        limits=_DET,
    ),
    "ode": Eval(
        "ode",
        {"primal": VECTOR, "gradient": GRADIENT},
        _read_ode,
        _write_vector_or_gradient,
        _example_ode,
        tuple(
            {"n": n, "s": s}
            for n, s in sorted(
                ((n, s) for n in (1000, 10000, 100000) for s in (1, 10, 100)),
                key=lambda pair: pair[0] * pair[1],
            )
        ),
        vector_problem=_ode_vector,
        limits=_ODE,
    ),
    "lstm": Eval(
        "lstm",
        {"objective": VALUE, "jacobian": GRADIENT},
        _read_lstm,
        _write_lstm,
        _example_lstm,
        tuple({"l": l, "c": c, "b": 14} for l in (2, 4) for c in (1024, 4096)),  # noqa: E741
        limits=_LSTM,
    ),
    "particle": Eval(
        "particle", NESTED_VARIANTS, _read_particle, _write_nested, _example_particle, ({"w": 0},)
    ),
    "saddle": Eval(
        "saddle", NESTED_VARIANTS, _read_saddle, _write_nested, _example_saddle, ({"start": 1},)
    ),
}
