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

from gradlab._errors import ArgumentError, GradlabError
from gradlab.gradbench import _ba, _ht
from gradlab.gradbench._ba import BundleAdjustment
from gradlab.gradbench._ht import HandTracking
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
# function's value, k-means' Newton direction (gradient over the Hessian's diagonal), a
# procedure with derivatives nested inside (particle, saddle: ``gradlab.gradbench._nested``),
# or a structured Jacobian (ba's sparse one, ht's compressed one: the eval's ``jacobian``).
VALUE, GRADIENT, VECTOR, NEWTON, NESTED = "value", "gradient", "vector", "newton", "nested"
JACOBIAN = "jacobian"


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
        jacobian: For ``JACOBIAN`` functions, ``(engine, case)`` to a function of no
            arguments that computes the Jacobian (in NumPy, as ``write`` takes it); what
            does not depend on the values is prepared once, outside the timed runs.
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
    jacobian: Callable[[Any, Case], Callable[[], Any]] | None = None


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


# ba: the largest GradBench sends by default is ba14 (n = 356, m = 226,730, p = 1,255,268;
# its files go to ba20, m = 4,456,117, and ba19, p = 9,125,125). A run's memory is O(p)
# (each observation's 15 variables and 31 derivatives) plus the n cameras and m points.
_BA = Limits(
    {"n": "input field 'n'", "m": "input field 'm'", "p": "input field 'p'"},
    {"n": 2**24, "m": 2**24, "p": 2**24},
)
# ht: ADBench's big model has 10,000 vertices and 22 bones, 1,084 triangles; its largest
# input 100,000 points. Memory: the vertices' weights (v·b) and the Jacobian (points · 28).
_HT = Limits(
    {
        "v": "the rows of input field 'data.model.base_positions'",
        "b": "input field 'data.model.bone_count'",
        "t": "the rows of input field 'data.model.triangles'",
        "c": "the rows of input field 'data.points'",
    },
    {"b": 2**10, "v·b": 2**24, "t": 2**24, "c": 2**22},
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


def _read_ba(input: JSON) -> Case:
    n, m, p = (_integer(input, size, 1) for size in ("n", "m", "p"))
    _BA.check(n=n, m=m, p=p)
    cam, point = _array(input, "cam", (_ba.CAMERA,)), _array(input, "x", (3,))
    w = _number(_field(input, "w"), "input field 'w'")
    feat = _array(input, "feat", (2,))
    problem = BundleAdjustment(n=n, m=m, p=p)
    data = problem.make_data()
    data["feats"] = np.tile(feat, (p, 1))
    params = {"cams": np.tile(cam, (n, 1)), "x": np.tile(point, (m, 1)), "w": np.full(p, w)}
    return Case(problem, params, data)


def _write_ba(function: str, case: Case, result: Any) -> JSON:
    if isinstance(result, _ba.Sparse):
        # GradBench's reduced form: the first 30 entries of each list, and the last.
        def dedup(values: np.ndarray) -> list[Any]:
            return [*values[:30].tolist(), values[-1].item()]

        return {"rows": dedup(result.rows), "cols": dedup(result.cols), "vals": dedup(result.vals)}
    reproj, w_err = result["reproj_err"], result["w_err"]
    return {
        "reproj_error": {"elements": _floats(reproj[0]), "repeated": int(reproj.shape[0])},
        "w_err": {"element": float(w_err[0]), "repeated": int(w_err.shape[0])},
    }


def _ba_jacobian(engine: Any, case: Case) -> Callable[[], Any]:
    problem = case.problem
    assert isinstance(problem, BundleAdjustment)
    blocks = _ba.block_jacobian(engine, problem, case.params, case.data)
    obs = case.data["obs"]

    def jacobian() -> _ba.Sparse:
        return _ba.sparse(problem, obs, *blocks())

    return jacobian


def _integers(value: Any, where: str, depth: int) -> np.ndarray:
    """``depth`` levels of lists of integers (no booleans), as an integer array."""
    if not _numbers(value, depth) or not all(
        isinstance(number, int) for number in np.asarray(value, dtype=object).reshape(-1)
    ):
        raise BadInput(f"{where} must be a {depth}-D array of integers")
    return np.asarray(value, dtype=np.int64).reshape((-1,) if depth == 1 else (-1, 3))


def _object(input: JSON, key: str, where: str) -> Mapping[str, Any]:
    """Field ``key`` of ``input``, which must be a JSON object; ``where`` is its path."""
    parent = where.rpartition(".")[0]
    if parent and isinstance(input, Mapping) and key not in input:
        raise BadInput(
            f"input field {parent!r} has no field {key!r} (it has {shown(sorted(input))})"
        )
    value = _field(input, key)
    if not isinstance(value, Mapping):
        raise BadInput(f"input field {where!r} must be a JSON object, got {shown(value)}")
    return value


def _read_ht(input: JSON) -> Case:
    data_in = _object(input, "data", "data")
    model = _object(data_in, "model", "data.model")
    bones = _integer(model, "bone_count", 1)
    parents = _integers(_field(model, "parents"), "input field 'data.model.parents'", 1)
    names = _field(model, "bone_names")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BadInput("input field 'data.model.bone_names' must be a list of strings")
    if len(parents) != bones or len(names) != bones:
        raise BadInput(
            f"input field 'data.model.bone_count' is {bones}, but 'parents' has "
            f"{len(parents)} and 'bone_names' {len(names)}"
        )
    mirrored = _field(model, "is_mirrored")
    if not isinstance(mirrored, bool):
        raise BadInput("input field 'data.model.is_mirrored' must be true or false")
    positions = _array(model, "base_positions", (None, 4))
    triangles_in = _field(model, "triangles")
    triangles = (
        _integers(triangles_in, "input field 'data.model.triangles'", 2)
        if triangles_in
        else np.zeros((0, 3), np.int64)
    )
    points = _array(data_in, "points", (None, 3))
    _HT.check(v=positions.shape[0], b=bones, t=triangles.shape[0], c=points.shape[0])
    us_in = _field(input, "us")
    if not isinstance(us_in, list):
        raise BadInput(
            f"input field 'us' must be an array ([] for the simple case), got {shown(us_in)}"
        )
    complicated = bool(us_in)
    try:
        problem = HandTracking(
            parents=tuple(parents.tolist()),
            points=points.shape[0],
            complicated=complicated,
            mirrored=mirrored,
        )
    except GradlabError as error:
        raise BadInput(f"input field 'data.model.parents': {error}") from None
    data = {
        "base_relatives": _array(model, "base_relatives", (bones, 4, 4)),
        "inverse_base_absolutes": _array(model, "inverse_base_absolutes", (bones, 4, 4)),
        "base_positions": positions,
        "weights": _array(model, "weights", (positions.shape[0], bones)),
        "points": points,
        "correspondences": _integers(
            _field(data_in, "correspondences"), "input field 'data.correspondences'", 1
        ).astype(np.float64),
    }
    params = {"theta": _array(input, "theta", (_ht.THETA,))}
    if complicated:
        data["triangles"] = triangles.astype(np.float64)
        params["us"] = _array(input, "us", (points.shape[0], 2))
    try:
        checked = problem.check_data(data)
    except ArgumentError as error:  # data['points'] is input field 'data.points'
        key = str(error.argument).removeprefix("data['").removesuffix("']")
        where = f"data.{key}" if key in ("points", "correspondences") else f"data.model.{key}"
        reason = str(error).removeprefix(f"{error.argument}: ")
        raise BadInput(f"input field {where!r} {reason}") from None
    return Case(problem, params, checked)


def _write_ht(function: str, case: Case, result: Any) -> JSON:
    if function == "jacobian":
        return _floats(result)
    return _floats(np.reshape(result, -1))


def _ht_jacobian(engine: Any, case: Case) -> Callable[[], Any]:
    problem = case.problem
    assert isinstance(problem, HandTracking)
    return _ht.jacobian(engine, problem, case.params, case.data)


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


def _example_ba(seed: int = 0, n: int = 49, m: int = 7776, p: int = 31843) -> JSON:
    """ADBench's ``ba1`` camera, point, weight and feature at the given sizes; another seed
    perturbs them (GradBench's own inputs are its data files' first lines)."""
    rng = _rng(seed)
    one = _ba._BA1
    jitter = (lambda size: rng.normal(scale=0.05, size=size)) if seed else np.zeros
    return {
        "n": n,
        "m": m,
        "p": p,
        "cam": (np.asarray(one["cam"]) * (1 + jitter(_ba.CAMERA))).tolist(),
        "x": (np.asarray(one["x"]) + jitter(3)).tolist(),
        "w": float(one["w"] + jitter(1)[0]) if seed else one["w"],
        "feat": one["feat"],
    }


def _example_ht(
    seed: int = 0,
    v: int = 16,
    c: int = 8,
    b: int = _ht.BONES,
    t: int | None = None,
    complicated: bool = True,
) -> JSON:
    """A random hand (``HandTracking.make_data``) of ``v`` vertices, ``b`` bones (ADBench's
    hand, and any more bones on its root), ``t`` triangles (2v) and ``c`` points, in
    GradBench's input layout (GradBench's own reads ADBench's model and data files)."""
    parents = _ht.HAND_PARENTS + (0,) * (b - _ht.BONES)
    problem = HandTracking(parents=parents, points=c, complicated=complicated)
    data = problem.make_data(v, seed=seed, triangles=t)
    params = problem.initial_params(data, seed=seed)
    bones = len(problem.parents)
    triangles = data.get("triangles", np.zeros((0, 3)))
    return {
        "theta": params["theta"].tolist(),
        "data": {
            "model": {
                "bone_count": bones,
                "bone_names": [f"bone{index}" for index in range(bones)],
                "parents": list(problem.parents),
                "base_relatives": data["base_relatives"].tolist(),
                "inverse_base_absolutes": data["inverse_base_absolutes"].tolist(),
                "base_positions": data["base_positions"].tolist(),
                "weights": data["weights"].tolist(),
                "triangles": triangles.astype(int).tolist(),
                "is_mirrored": False,
            },
            "correspondences": data["correspondences"].astype(int).tolist(),
            "points": data["points"].tolist(),
        },
        "us": params["us"].tolist() if complicated else [],
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
    "ba": Eval(
        "ba",
        {"objective": VECTOR, "jacobian": JACOBIAN},
        _read_ba,
        _write_ba,
        _example_ba,
        # ADBench's ba1 to ba14 (GradBench's default --max 14): (n, m, p) of each file.
        tuple(
            {"n": n, "m": m, "p": p}
            for n, m, p in (
                (49, 7776, 31843),
                (21, 11315, 36455),
                (161, 48126, 182072),
                (372, 47423, 204472),
                (257, 65132, 225911),
                (539, 65220, 277273),
                (93, 61203, 287451),
                (88, 64298, 383937),
                (810, 88814, 393775),
                (1197, 126327, 563734),
                (1723, 156502, 678718),
                (253, 163691, 899155),
                (245, 198739, 1091386),
                (356, 226730, 1255268),
            )
        ),
        vector_problem=lambda case: case.problem,  # type: ignore[arg-type,return-value]
        limits=_BA,
        jacobian=_ba_jacobian,
    ),
    "ht": Eval(
        "ht",
        {"objective": VECTOR, "jacobian": JACOBIAN},
        _read_ht,
        _write_ht,
        _example_ht,
        # ADBench's big hand model (10,000 vertices) with GradBench's 12 point counts.
        tuple(
            {"v": 10000, "b": _ht.BONES, "t": 1084, "c": c}
            for c in (100, 192, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 100000)
        ),
        vector_problem=lambda case: case.problem,  # type: ignore[arg-type,return-value]
        limits=_HT,
        jacobian=_ht_jacobian,
    ),
    "particle": Eval(
        "particle", NESTED_VARIANTS, _read_particle, _write_nested, _example_particle, ({"w": 0},)
    ),
    "saddle": Eval(
        "saddle", NESTED_VARIANTS, _read_saddle, _write_nested, _example_saddle, ({"start": 1},)
    ),
}
