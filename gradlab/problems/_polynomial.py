"""Polynomial models in one variable: the seed generalised, and GradBench's ``llsq``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import as_float_array, check_float, check_int, check_mapping
from gradlab._errors import ArgumentError
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import check_xy, data_rng


def horner(coefficients: Array, t: Array, terms: int) -> Array:
    """Σₖ cₖ·tᵏ by Horner's rule: arithmetic only, so every namespace keeps the dtype."""
    value = coefficients[terms - 1] + 0 * t
    for k in range(terms - 2, -1, -1):
        value = value * t + coefficients[k]
    return value


def powers(t: np.ndarray, terms: int) -> np.ndarray:
    """The Vandermonde matrix V[i, k] = tᵢᵏ, k < terms, in the dtype of ``t``."""
    matrix = np.empty((t.shape[0], terms), dtype=t.dtype)
    matrix[:, 0] = 1
    for k in range(1, terms):
        matrix[:, k] = matrix[:, k - 1] * t
    return matrix


def _evaluate(coefficients: np.ndarray, t: np.ndarray) -> np.ndarray:
    """V·c = Σₖ cₖ·tᵏ by Horner's rule, in place in one NumPy buffer."""
    value = np.full_like(t, coefficients[-1])
    for coefficient in coefficients[-2::-1]:
        value *= t
        value += coefficient
    return value


def _moments(weights: np.ndarray, t: np.ndarray, terms: int) -> np.ndarray:
    """Vᵀw = (Σᵢ wᵢ·tᵢʲ for j < terms), a power at a time, as GradBench's C++ ``manual``
    loops: V itself (n × terms) would cost more in memory traffic than in arithmetic (six
    times the time at n = 16392, terms = 128)."""
    moments = np.empty(terms, dtype=np.result_type(weights, t))
    power = np.array(weights, dtype=moments.dtype)
    for j in range(terms):
        moments[j] = np.sum(power)
        power *= t
    return moments


@dataclass(frozen=True)
class PolynomialRegression(AbstractProblem):
    r"""Least squares with a polynomial, y_pred = Σₖ cₖ·xᵏ (k = 0 … degree), loss
    ½·meanᵢ (y_pred,ᵢ − yᵢ)².

    The seed's model is the case degree = 2 with c₁ = 0, c₀ = b, c₂ = w; the loss here is a
    *mean* (the seed's is a sum), so a learning rate does not depend on n. Data: ``x`` and
    ``y`` of shape ``(n,)``. Parameters: ``c`` of shape ``(degree + 1,)``.

    Hand gradient, with V the Vandermonde matrix Vᵢₖ = xᵢᵏ and residual r = V·c − y:
    ∂L/∂c = Vᵀr / n. Hessian (constant): VᵀV / n.

    Args:
        degree: The polynomial's degree, an integer ≥ 0.

    Examples:
        >>> import numpy as np
        >>> from gradlab import PolynomialRegression
        >>> data = {"x": np.array([0.0, 1.0, 2.0]), "y": np.array([1.0, 2.0, 5.0])}
        >>> problem = PolynomialRegression(degree=2)
        >>> float(problem.loss({"c": np.array([1.0, 0.0, 1.0])}, data, np))  # y = 1 + x²
        0.0
        >>> loss, grads = problem.hand_value_and_grad({"c": np.zeros(3)}, data)
        >>> grads["c"].tolist()  # −Vᵀy / 3 = −(8, 12, 22) / 3
        [-2.6666666666666665, -4.0, -7.333333333333333]
    """

    degree: int = 2
    name = "polynomial_regression"
    reduction = "mean"
    has_hand_gradient = True
    has_hand_hvp = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int(self.degree, "degree", 0))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """½·mean (Σₖ cₖ·xᵏ − y)², the polynomial by Horner's rule."""
        residual = horner(params["c"], data["x"], self.degree + 1) - data["y"]
        return 0.5 * xp.mean(residual**2)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Vᵀr / n, sharing the residual with the loss."""
        x = data["x"]
        n = x.shape[0]
        vandermonde = powers(x, self.degree + 1)
        residual = vandermonde @ params["c"]
        residual -= data["y"]
        return 0.5 * np.dot(residual, residual) / n, {"c": (residual @ vandermonde) / n}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """VᵀV·v / n."""
        vandermonde = powers(data["x"], self.degree + 1)
        return {"c": ((vandermonde @ tangent["c"]) @ vandermonde) / data["x"].shape[0]}

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Σₖ cₖ·xᵏ."""
        return np.asarray(horner(np.asarray(params["c"]), np.asarray(x), self.degree + 1))

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """One coefficient per power, 0 to degree."""
        return {"c": (self.degree + 1,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``x`` and ``y``: finite, 1-D (or a column), of equal length."""
        x, y = check_xy(data, x_ndim=1)
        return {"x": x, "y": y}

    def make_data(
        self, n: int = 100, *, noise: float = 0.1, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """x = linspace(−1, 1, n), y = Σₖ (−1)ᵏ·(k + 1)·xᵏ + noise·N(0, 1)."""
        n = check_int(n, "n", 1)
        noise = check_float(noise, "noise", 0.0)
        x = np.linspace(-1.0, 1.0, n)
        truth = np.array([(-1) ** k * (k + 1.0) for k in range(self.degree + 1)])
        y = powers(x, self.degree + 1) @ truth + noise * data_rng(seed).standard_normal(n)
        return {"x": x, "y": y}


@dataclass(frozen=True)
class LeastSquares(AbstractProblem):
    r"""GradBench's ``llsq`` (from cmpad): ½·Σᵢ (sᵢ − Σⱼ xⱼ·tᵢʲ)², j = 0 … terms − 1.

    The data are fixed by the definition: tᵢ = −1 + 2i / (n − 1) and sᵢ = sign(tᵢ) for
    i = 0 … n − 1 (``make_data``); the parameters are the coefficients ``x`` of shape
    ``(terms,)``, GradBench's *m*. The loss is a *sum*, as there, so that figures can be held
    against GradBench's.

    Hand gradient, with Vᵢⱼ = tᵢʲ and residual r = s − V·x:  ∂L/∂x = −Vᵀr.
    Hessian (constant): VᵀV.

    Args:
        terms: The number of coefficients m, an integer ≥ 1.

    Examples:
        >>> import numpy as np
        >>> from gradlab import LeastSquares
        >>> problem = LeastSquares(terms=2)
        >>> data = problem.make_data(3)            # t = (−1, 0, 1), s = (−1, 0, 1)
        >>> data["t"].tolist(), data["s"].tolist()
        ([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0])
        >>> float(problem.loss({"x": np.array([0.0, 1.0])}, data, np))   # s = t exactly
        0.0
    """

    terms: int = 8
    name = "least_squares"
    reduction = "sum"
    has_hand_gradient = True
    has_hand_hvp = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", check_int(self.terms, "terms", 1))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """½·Σ (s − Σⱼ xⱼ·tʲ)²."""
        residual = data["s"] - horner(params["x"], data["t"], self.terms)
        return 0.5 * xp.sum(residual**2)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """−Vᵀr, sharing the residual with the loss."""
        residual = _evaluate(params["x"], data["t"])
        np.subtract(data["s"], residual, out=residual)
        return 0.5 * np.dot(residual, residual), {"x": -_moments(residual, data["t"], self.terms)}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """VᵀV·v."""
        t = data["t"]
        return {"x": _moments(_evaluate(tangent["x"], t), t, self.terms)}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """The m coefficients."""
        return {"x": (self.terms,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``t`` and ``s``: finite, 1-D, of equal, non-zero length."""
        mapping = check_mapping(data, "data")
        if set(mapping) != {"t", "s"}:
            raise ArgumentError(
                "data", f"must have exactly the keys 't' and 's', got {sorted(mapping)}"
            )
        t, s = (as_float_array(mapping[key], f"data[{key!r}]") for key in ("t", "s"))
        if t.ndim != 1 or s.shape != t.shape or t.size == 0:
            raise ArgumentError(
                "data['s']", f"t and s must be 1-D of one length, got {t.shape} and {s.shape}"
            )
        return {"t": t, "s": s}

    def make_data(self, n: int = 1000, *, seed: int = 0) -> dict[str, np.ndarray]:
        """GradBench's data: tᵢ = −1 + 2i / (n − 1) (t = 0 when n = 1), sᵢ = sign(tᵢ).

        ``seed`` is accepted for a uniform interface; the data are not random.
        """
        n = check_int(n, "n", 1)
        data_rng(seed)  # checks the seed
        # GradBench's formula as written (np.linspace rounds some points differently).
        t = -1.0 + np.arange(n) * 2.0 / (n - 1) if n > 1 else np.zeros(1)
        return {"t": t, "s": np.sign(t)}
