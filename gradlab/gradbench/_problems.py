"""GradBench's evals as problems: its GMM, k-means, determinant, ODE and LSTM.

Each keeps the eval's parameter names, layout and constants, so that a gradient here is the
``output`` GradBench expects (``gradlab.gradbench`` turns one into the other). GradBench's
``llsq`` and ``lse`` are [`LeastSquares`][gradlab.LeastSquares] and
[`LogSumExp`][gradlab.LogSumExp].
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from gradlab._checks import as_float_array, check_int, check_mapping
from gradlab._errors import ArgumentError, HandGradientMissing
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import data_rng
from gradlab.problems._functions import _NoData
from gradlab.problems._gmm import GMM


def _exact_keys(data: object, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """The data mapping, refused unless it has exactly ``keys``."""
    mapping = check_mapping(data, "data")
    if set(mapping) != set(keys):
        wanted = " and ".join(repr(key) for key in keys)
        raise ArgumentError("data", f"must have exactly the keys {wanted}, got {sorted(mapping)}")
    return mapping


def fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    """Whether an array's ``shape`` is ``expected`` (None: any size ≥ 1 on that axis)."""
    return len(shape) == len(expected) and all(
        (have > 0) if want is None else (have == want)
        for have, want in zip(shape, expected, strict=True)
    )


def _float_data(mapping: Mapping[str, Any], key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``data[key]`` as a float array of ``shape`` (None: any size ≥ 1 on that axis)."""
    array = as_float_array(mapping[key], f"data[{key!r}]")
    if not fits(array.shape, shape):
        expected = tuple("n" if want is None else want for want in shape)
        raise ArgumentError(f"data[{key!r}]", f"has shape {array.shape}, expected {expected}")
    return array


@dataclass(frozen=True)
class GradBenchGMM(GMM):
    r"""GradBench's ``gmm``: the log posterior of a Gaussian mixture with a Wishart prior on
    its precision matrices.

    GradBench took ADBench's objective ([`GMM`][gradlab.GMM]) and fixed three errors in it
    (its eval's README): the sign of the prior terms, the orientation of the precision
    matrices, and a prior over precisions rather than covariances. In the code the fixes
    come to this: the prior terms, ½γ²‖Qₖ‖²_F − m·Σⱼ qₖⱼ and the constant, enter with the
    opposite sign, so that the value is log p(x | θ) + log Wishart(QₖᵀQₖ; I/γ², n_w), and
    each precision is QₖᵀQₖ. With the likelihood terms of [`GMM`][gradlab.GMM]:

    −(n·d/2)·log 2π + Σᵢ logsumexpₖ(αₖ + Σⱼ qₖⱼ − ½‖Qₖ·zᵢₖ‖²) − n·logsumexp(α)
    − Σₖ [½γ²(‖exp(qₖ)‖² + ‖lₖ‖²) − m·Σⱼ qₖⱼ] + k·[n_w·d·(log γ − ½ log 2) − log Γ_d(n_w/2)]

    Parameters, named and laid out as GradBench's input: ``alpha`` (k,), ``mu`` (k, d),
    ``q`` (k, d) (log diagonals) and ``l`` (k, d(d−1)/2), each row Qₖ's strictly lower
    entries column by column. Data: ``x`` of shape ``(n, d)``. The hand gradient is
    [`GMM`][gradlab.GMM]'s with the prior's terms negated.

    Args:
        k: The number of components, an integer ≥ 1.
        d: The dimension, an integer ≥ 1.
        gamma: The Wishart prior's γ > 0.
        m: The Wishart prior's extra degrees of freedom, an integer ≥ 0.

    Examples:
        >>> from gradlab import GradBenchGMM
        >>> problem = GradBenchGMM(k=2, d=3)
        >>> data = problem.make_data(10)
        >>> {name: shape for name, shape in problem.param_shapes(data).items()}
        {'alpha': (2,), 'mu': (2, 3), 'q': (2, 3), 'l': (2, 3)}
    """

    name = "gradbench_gmm"
    _prior_sign = -1.0

    @staticmethod
    def _as_adbench(params: Params, xp: Any) -> dict[str, Array]:
        """ADBench's parameters from GradBench's: icf is each row's q, then its l."""
        return {
            "alphas": params["alpha"],
            "means": params["mu"],
            "icf": xp.concatenate([params["q"], params["l"]], axis=1),
        }

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """GMM's likelihood terms plus the log Wishart prior."""
        return super().loss(self._as_adbench(params, xp), data, xp)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """GMM's hand gradient (with the prior's sign), split back into q and l."""
        value, grads = super().hand_value_and_grad(self._as_adbench(params, np), data)
        icf = grads["icf"]
        return value, {
            "alpha": grads["alphas"],
            "mu": grads["means"],
            "q": icf[:, : self.d],
            "l": icf[:, self.d :],
        }

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """GradBench's layout: alpha (k,), mu (k, d), q (k, d), l (k, d(d−1)/2)."""
        k, d = self.k, self.d
        return {"alpha": (k,), "mu": (k, d), "q": (k, d), "l": (k, d * (d - 1) // 2)}

    def make_data(self, n: int = 1000, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Points drawn as GradBench's eval draws them: standard normal in d dimensions."""
        n = check_int(n, "n", 1)
        return {"x": data_rng(seed).standard_normal((n, self.d))}


@dataclass(frozen=True)
class KMeans(AbstractProblem):
    r"""GradBench's ``kmeans`` cost: Σᵢ minⱼ ‖pᵢ − cⱼ‖², the squared distance from each point
    to its nearest centroid.

    Parameters: ``centroids`` of shape ``(k, d)``. Data: ``points`` of shape ``(n, d)``.
    GradBench's ``dir`` is this cost's gradient divided, element by element, by its
    Hessian's diagonal (the Hessian is diagonal: J·H⁻¹ is one Newton step's direction).

    Hand gradient, with Sⱼ the points nearest to cⱼ: ∂/∂cⱼ = 2·Σ_{i∈Sⱼ} (cⱼ − pᵢ).
    Hessian: diagonal, 2·|Sⱼ| on each of cⱼ's coordinates.

    Args:
        k: The number of centroids, an integer ≥ 1.
        d: The dimension, an integer ≥ 1.

    Examples:
        >>> import numpy as np
        >>> from gradlab import KMeans
        >>> data = {"points": np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]])}
        >>> params = {"centroids": np.array([[0.0, 0.0], [3.0, 0.0]])}
        >>> float(KMeans(k=2, d=2).loss(params, data, np))   # 0 + 1 + 1
        2.0
        >>> KMeans(k=2, d=2).hand_value_and_grad(params, data)[1]["centroids"].tolist()
        [[-2.0, 0.0], [-2.0, 0.0]]
    """

    k: int = 10
    d: int = 8
    name = "kmeans"
    reduction = "sum"
    has_hand_gradient = True
    has_hand_hvp = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_int(self.k, "k", 1))
        object.__setattr__(self, "d", check_int(self.d, "d", 1))

    @staticmethod
    def _nearest(points: Array, centroids: Array, xp: Any) -> Array:
        """Each point's nearest centroid: the argmin over j of ‖cⱼ‖² − 2·pᵢ·cⱼ, the squared
        distance less ‖pᵢ‖² (the same for every j). The (n, k) matrix comes from one
        product, [pᵢ, 1]·[−2·cⱼ, ‖cⱼ‖²], where the differences would take an (n, k, d)
        array (12 GB at GradBench's largest) and a sum after the product one more pass."""
        ones = points[:, :1] * 0 + 1
        scaled = xp.concatenate(
            [-2 * centroids, xp.sum(centroids * centroids, axis=1)[:, None]], axis=1
        )
        closeness = xp.concatenate([points, ones], axis=1) @ xp.permute_dims(scaled, (1, 0))
        return xp.argmin(closeness, axis=1)

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """Σᵢ ‖pᵢ − c_{nearest(i)}‖², the same as Σᵢ minⱼ ‖pᵢ − cⱼ‖².

        Written with the nearest centroid's index, not a min over the (n, k) distances: a
        derivative then flows through a gather of n rows (a scatter of n rows back), and
        never through the (n, k) matrix, whose derivative is zero but for one entry a row.
        The index is an integer, so no engine differentiates the search.
        """
        points, centroids = data["points"], params["centroids"]
        offsets = points - centroids[self._nearest(points, centroids, xp)]
        return xp.sum(offsets * offsets)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """2·Σ_{i∈Sⱼ} (cⱼ − pᵢ) for each centroid."""
        centroids, points = params["centroids"], data["points"]
        nearest = self._nearest(points, centroids, np)
        offsets = centroids[nearest] - points
        # Sums by cluster, a coordinate at a time: bincount is one pass, where np.add.at is
        # an unbuffered loop ten times slower. It sums in float64: cast back to the dtype.
        sums = [np.bincount(nearest, offsets[:, j], minlength=self.k) for j in range(self.d)]
        grad = 2 * np.stack(sums, axis=1).astype(centroids.dtype, copy=False)
        return np.sum(offsets * offsets), {"centroids": grad}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """2·|Sⱼ|·vⱼ: the Hessian is diagonal."""
        nearest = self._nearest(data["points"], params["centroids"], np)
        counts = np.bincount(nearest, minlength=self.k).astype(tangent["centroids"].dtype)
        return {"centroids": 2 * counts[:, None] * tangent["centroids"]}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """k centroids in d dimensions."""
        return {"centroids": (self.k, self.d)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``points`` of shape ``(n, d)``, n ≥ 1."""
        mapping = _exact_keys(data, ("points",))
        return {"points": _float_data(mapping, "points", (None, self.d))}

    def make_data(self, n: int = 1000, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Points uniform in the unit cube, as GradBench's eval draws them."""
        n = check_int(n, "n", 1)
        return {"points": data_rng(seed).uniform(size=(n, self.d))}

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """The last k points, as GradBench's eval starts: every centroid has a point."""
        points = np.asarray(data["points"])
        if points.shape[0] < self.k:
            raise ArgumentError(
                "data['points']", f"has {points.shape[0]} rows, fewer than k={self.k}"
            )
        return {"centroids": points[-self.k :].copy()}


def _minor_tables(ell: int) -> list[tuple[list[int], list[int], tuple[int, int]]]:
    """Index tables for the expansion by minors, one per row from the bottom up.

    Level s covers the minors of the last s rows: one per set S of s columns (in
    lexicographic order). ``columns[level]`` (sets, s) lists each set's columns in order;
    ``smaller[level]`` (sets, s) the position, in level s − 1's list, of S without its t-th
    column. Each minor is then Σₜ (−1)ᵗ·A[ell − s, Sₜ]·minor(S ∖ Sₜ): the recursion of
    GradBench's reference, with each minor computed once. Both tables come flat, as lists
    (an index array is made in each namespace's own kind), with their shape.
    """
    position: dict[tuple[int, ...], int] = {(): 0}
    tables = []
    for size in range(1, ell + 1):
        sets = list(itertools.combinations(range(ell), size))
        columns = np.array(sets, dtype=np.intp).reshape(len(sets), size)
        smaller = np.array(
            [[position[s[:t] + s[t + 1 :]] for t in range(size)] for s in sets], dtype=np.intp
        ).reshape(len(sets), size)
        tables.append((columns.reshape(-1).tolist(), smaller.reshape(-1).tolist(), columns.shape))
        position = {s: i for i, s in enumerate(sets)}
    return tables


#: The largest matrix ``Det`` expands: 2^16 minors, about a million table entries.
MAX_ELL = 16


@dataclass(frozen=True)
class Det(_NoData):
    r"""GradBench's ``det`` (from cmpad): the determinant of an ell × ell matrix by expansion
    by minors along the first row, recursively.

    Each minor is computed once, bottom row first (2^ell of them, not ell!), with the same
    signs and order of terms as the recursion. Parameters: ``A`` of shape ``(ell, ell)``.
    No data (pass ``{}``).

    Hand gradient: the cofactor matrix, Cᵢⱼ = (−1)^(i+j)·det(A without row i and column j),
    each minor's determinant from NumPy's LU factorisation (an independent algorithm).

    Args:
        ell: The matrix's edge, an integer ≥ 1 (GradBench: 5 … 11).

    Examples:
        >>> import numpy as np
        >>> from gradlab import Det
        >>> A = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]])
        >>> round(float(Det(ell=3).loss({"A": A}, {}, np)), 12)
        18.0
        >>> Det(ell=2).hand_value_and_grad({"A": A[:2, :2]}, {})[1]["A"].tolist()
        [[3.0, -1.0], [-1.0, 2.0]]
    """

    ell: int = 5
    name = "det"
    has_hand_gradient = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ell", check_int(self.ell, "ell", 1))
        if self.ell > MAX_ELL:
            raise ArgumentError(
                "ell",
                f"must be at most {MAX_ELL}, got {self.ell}: the expansion computes 2^ell "
                "minors (GradBench's largest is 11)",
            )

    @cached_property
    def _tables(self) -> list[tuple[list[int], list[int], tuple[int, int]]]:
        return _minor_tables(self.ell)

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """det(A) by expansion by minors."""
        matrix, ell = params["A"], self.ell
        minors = None
        for size, (columns, smaller, shape) in enumerate(self._tables, start=1):
            row = matrix[ell - size]
            # Index arrays in the namespace's own kind (MLX and TensorFlow index only with
            # their own arrays).
            entries = xp.reshape(row[xp.asarray(columns)], shape)
            if minors is None:
                minors = entries[:, 0]
                continue
            terms = entries * xp.reshape(minors[xp.asarray(smaller)], shape)
            # Alternating signs: the even-placed terms less the odd-placed ones.
            minors = xp.sum(terms[:, 0::2], axis=1) - xp.sum(terms[:, 1::2], axis=1)
        assert minors is not None  # ell ≥ 1
        return minors[0]

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """NumPy's determinant and the cofactor matrix."""
        matrix, ell = params["A"], self.ell
        cofactors = np.empty_like(matrix)
        for i in range(ell):
            for j in range(ell):
                minor = np.delete(np.delete(matrix, i, axis=0), j, axis=1)
                cofactors[i, j] = (-1) ** (i + j) * (np.linalg.det(minor) if ell > 1 else 1.0)
        return np.linalg.det(matrix), {"A": cofactors}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """One ell × ell matrix."""
        return {"A": (self.ell, self.ell)}

    def sized(self, n: int) -> Det:
        """The determinant of an n × n matrix."""
        return Det(ell=n)

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """A matrix uniform in [0, 1), as GradBench's eval draws it."""
        return {"A": data_rng(seed).uniform(size=(self.ell, self.ell))}


def _ode_rate(x: Array, y: Array, xp: Any) -> Array:
    """y′ for the ODE: (x₀, x₁·y₀, x₂·y₁, …)."""
    return xp.concatenate([x[:1], x[1:] * y[:-1]])


@dataclass(frozen=True)
class ODE(_NoData):
    r"""GradBench's ``ode`` (cmpad's ``an_ode``): y′₀ = x₀, y′ᵢ = xᵢ·yᵢ₋₁, y(0) = 0, solved to
    t = 2 by ``steps`` classical Runge–Kutta (RK4) steps; the loss is the last element of y(2).

    Parameters: ``x`` of shape ``(size,)``. No data (pass ``{}``).
    ``ODE(..., last=False)`` returns the whole y(2) (GradBench's ``primal``): a vector-valued
    function, for [`jacobian`][gradlab.jacobian] and friends.

    Hand gradient: the adjoint of each RK4 step, taken in reverse. With f(y) the rate,
    ∂f/∂y is the subdiagonal x₁…, ∂f/∂x has 1 and y₀, y₁, … on its diagonal; each step's
    stages are recomputed from its stored start.

    Args:
        size: The length n of x and y, an integer ≥ 1.
        steps: The number s of RK4 steps, an integer ≥ 1.
        last: Whether the loss is y(2)'s last element (the default) or all of y(2).

    Examples:
        >>> import numpy as np
        >>> from gradlab import ODE
        >>> x = np.array([1.0, 1.0, 1.0])          # y = (t, t²/2, t³/6): y(2) = (2, 2, 4/3)
        >>> ODE(size=3, steps=4, last=False).loss({"x": x}, {}, np).round(12).tolist()
        [2.0, 2.0, 1.333333333333]
    """

    size: int = 1000
    steps: int = 10
    last: bool = True
    name = "ode"
    has_hand_gradient = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_int(self.size, "size", 1))
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1))
        if not isinstance(self.last, bool):
            raise ArgumentError("last", f"must be True or False, got {self.last!r}")

    def _step(self, x: Array, y: Array, xp: Any) -> Array:
        """One RK4 step of length h = 2/steps."""
        h = 2.0 / self.steps
        k1 = _ode_rate(x, y, xp)
        k2 = _ode_rate(x, y + h * k1 / 2, xp)
        k3 = _ode_rate(x, y + h * k2 / 2, xp)
        k4 = _ode_rate(x, y + h * k3, xp)
        return y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """y(2)'s last element (or all of y(2))."""
        x = params["x"]
        y = _repeat(lambda _, y: self._step(x, y, xp), x * 0, self.steps, xp)
        return y[-1] if self.last else y

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Forward, keeping each step's start; then each step's adjoint, last step first."""
        if not self.last:
            raise HandGradientMissing(
                "ODE(last=False) is vector-valued; its hand derivative is the last element's "
                "gradient (last=True)"
            )
        x = params["x"]
        h = 2.0 / self.steps
        starts = [np.zeros_like(x)]
        for _ in range(self.steps - 1):
            starts.append(self._step(x, starts[-1], np))
        final = self._step(x, starts[-1], np)

        def back_rate(y: np.ndarray, bar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(∂f/∂y)ᵀ·bar and (∂f/∂x)ᵀ·bar at y."""
            y_bar = np.zeros_like(y)
            y_bar[:-1] = x[1:] * bar[1:]
            x_bar = np.empty_like(x)
            x_bar[0] = bar[0]
            x_bar[1:] = y[:-1] * bar[1:]
            return y_bar, x_bar

        y_bar = np.zeros_like(x)
        y_bar[-1] = 1.0
        x_bar = np.zeros_like(x)
        for y in reversed(starts):
            k1 = _ode_rate(x, y, np)
            y2 = y + h * k1 / 2
            k2 = _ode_rate(x, y2, np)
            y3 = y + h * k2 / 2
            k3 = _ode_rate(x, y3, np)
            y4 = y + h * k3
            # y_next = y + h·(k1 + 2k2 + 2k3 + k4)/6; each kᵢ = f(yᵢ) with yᵢ = y + cᵢ·h·kᵢ₋₁.
            k_bar = [h / 6 * y_bar, h / 3 * y_bar, h / 3 * y_bar, h / 6 * y_bar]
            start_bar = y_bar.copy()
            for stage, (point, weight) in enumerate(((y4, h), (y3, h / 2), (y2, h / 2))):
                through_y, through_x = back_rate(point, k_bar[3 - stage])
                x_bar += through_x
                start_bar += through_y
                k_bar[2 - stage] = k_bar[2 - stage] + weight * through_y
            through_y, through_x = back_rate(y, k_bar[0])
            x_bar += through_x
            y_bar = start_bar + through_y
        return final[-1], {"x": x_bar}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """One vector x of ``size``."""
        return {"x": (self.size,)}

    def sized(self, n: int) -> ODE:
        """The same ODE with n unknowns."""
        return ODE(size=n, steps=self.steps, last=self.last)

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """x uniform in [0, 1), as GradBench's eval draws it."""
        return {"x": data_rng(seed).uniform(size=self.size)}


def _repeat(step: Any, start: Any, times: int, xp: Any) -> Any:
    """``state = step(i, state)`` for i = 0 … times − 1, from ``start`` (a tuple of arrays
    or one): on jax, a ``lax.fori_loop`` (one traced step, where a Python loop unrolls into
    a program whose compile time grows faster than the steps: ODE at s = 100 did not
    compile in 10 minutes, nor LSTM at GradBench's c = 1024); elsewhere a Python loop. Both
    compute the same steps in the same order."""
    if getattr(xp, "__name__", "") == "jax.numpy":
        import jax

        return jax.lax.fori_loop(0, times, step, start)
    for i in range(times):
        start = step(i, start)
    return start


def _sigmoid(z: Array, xp: Any) -> Array:
    return 1 / (1 + xp.exp(-z))


@dataclass(frozen=True)
class LSTM(AbstractProblem):
    r"""ADBench's LSTM (GradBench's ``lstm``): ``layers`` stacked cells with diagonal weights,
    run over a sequence of ``length`` one-hot-like vectors of ``width`` b; the loss is the
    mean negative log-likelihood of each next vector.

    Parameters, as GradBench's input: ``main_params`` (2·layers, 4b), per layer a row of
    weights and a row of biases, each the forget, input, output and change gates' b values;
    ``extra_params`` (3, b): input weights, output weights, output biases. Data: ``state``
    (2·layers, b), per layer the hidden and the cell state, and ``sequence`` (length, b).

    As in ADBench's code, the forget and output gates read the layer's input and the input
    and change gates the previous hidden state, and the normaliser is
    log(Σ exp(ŷ) + 2). No hand gradient: ADBench's hand-written one is some 300 lines of
    C++; here the autodiff engines, finite differences and the complex step cross-check.

    Args:
        layers: The number of layers l, an integer ≥ 1 (ADBench: 2, 4).
        length: The sequence's length c, an integer ≥ 2 (ADBench: 1024, 4096).
        width: The vectors' width b, an integer ≥ 1 (ADBench: 14).

    Examples:
        >>> import numpy as np
        >>> from gradlab import LSTM
        >>> problem = LSTM(layers=1, length=3, width=2)
        >>> data = problem.make_data()
        >>> params = problem.initial_params(data)
        >>> {name: value.shape for name, value in params.items()}
        {'main_params': (2, 8), 'extra_params': (3, 2)}
    """

    layers: int = 2
    length: int = 1024
    width: int = 14
    name = "lstm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", check_int(self.layers, "layers", 1))
        object.__setattr__(self, "length", check_int(self.length, "length", 2))
        object.__setattr__(self, "width", check_int(self.width, "width", 1))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """−Σₜ Σᵢ y_{t+1,i}·log softmax₊₂(ŷₜ)ᵢ / ((c − 1)·b)."""
        main, extra = params["main_params"], params["extra_params"]
        # An array of xp: on jax, the loop indexes it by a traced step.
        sequence = xp.asarray(data["sequence"])
        b = self.width
        weights = [main[2 * layer] for layer in range(self.layers)]
        biases = [main[2 * layer + 1] for layer in range(self.layers)]

        def step(t: Any, carry: tuple[Any, Any, Array]) -> tuple[Any, Any, Array]:
            hidden, cell, total = list(carry[0]), list(carry[1]), carry[2]
            layer_input = sequence[t] * extra[0]
            for layer in range(self.layers):
                w, c = weights[layer], biases[layer]
                forget = _sigmoid(layer_input * w[:b] + c[:b], xp)
                ingate = _sigmoid(hidden[layer] * w[b : 2 * b] + c[b : 2 * b], xp)
                outgate = _sigmoid(layer_input * w[2 * b : 3 * b] + c[2 * b : 3 * b], xp)
                change = xp.tanh(hidden[layer] * w[3 * b :] + c[3 * b :])
                cell[layer] = cell[layer] * forget + ingate * change
                hidden[layer] = outgate * xp.tanh(cell[layer])
                layer_input = hidden[layer]
            predicted = layer_input * extra[1] + extra[2]
            normaliser = xp.log(xp.sum(xp.exp(predicted)) + 2)
            return (
                tuple(hidden),
                tuple(cell),
                total + xp.sum(sequence[t + 1] * (predicted - normaliser)),
            )

        state = data["state"]
        start = (
            tuple(state[2 * layer] for layer in range(self.layers)),
            tuple(state[2 * layer + 1] for layer in range(self.layers)),
            xp.sum(extra[0] * 0),
        )
        _, _, total = _repeat(step, start, self.length - 1, xp)
        return -total / ((self.length - 1) * b)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """main_params (2l, 4b) and extra_params (3, b)."""
        return {
            "main_params": (2 * self.layers, 4 * self.width),
            "extra_params": (3, self.width),
        }

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``state`` (2l, b) and ``sequence`` (c, b)."""
        mapping = _exact_keys(data, ("sequence", "state"))
        return {
            "state": _float_data(mapping, "state", (2 * self.layers, self.width)),
            "sequence": _float_data(mapping, "sequence", (self.length, self.width)),
        }

    def make_data(self, n: int = 0, *, seed: int = 0) -> dict[str, np.ndarray]:
        """A random state and sequence, uniform in [−1, 1) (ADBench's generator's range)."""
        rng = data_rng(seed)
        return {
            "state": rng.uniform(-1, 1, (2 * self.layers, self.width)),
            "sequence": rng.uniform(-1, 1, (self.length, self.width)),
        }

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """Weights uniform in [−1, 1) (ADBench's generator's range)."""
        rng = np.random.default_rng(seed)
        return {
            "main_params": rng.uniform(-1, 1, (2 * self.layers, 4 * self.width)),
            "extra_params": rng.uniform(-1, 1, (3, self.width)),
        }
