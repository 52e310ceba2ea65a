"""Linear models on a design matrix: least squares and logistic regression."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import check_float, check_positive_int
from gradlab._errors import ArgumentError
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import check_xy, data_rng


class _LinearModel(AbstractProblem):
    """Shared shape logic: ``x`` is ``(n, d)``, ``y`` is ``(n,)``, params ``w (d,)``, ``b ()``."""

    takes_features = True  # make_data(n, d=...)

    has_hand_gradient = True
    has_hand_hvp = True

    def _weights(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The per-sample curvature of the loss in z = x·w + b (times n)."""
        raise NotImplementedError

    @staticmethod
    def _linear(params: Params, x: np.ndarray) -> np.ndarray:
        """z = x·w + b for inputs given as ``(n, d)``, or ``(n,)`` for one feature."""
        x = np.asarray(x)
        return np.asarray((x[:, None] if x.ndim == 1 else x) @ params["w"] + params["b"])

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """H·v = Jᵀ·diag(c)·J·v / n with J = [x, 1] and c the curvature in z (see _weights)."""
        x = data["x"]
        n = x.shape[0]
        z = x @ params["w"] + params["b"]
        change = self._weights(x, z) * (x @ tangent["w"] + tangent["b"])  # c·(J·v)
        return {"w": (x.T @ change) / n, "b": np.sum(change) / n}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """``w`` has one weight per feature; ``b`` is a scalar."""
        return {"w": (data["x"].shape[1],), "b": ()}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``x`` of shape ``(n, d)`` (1-D means d = 1) and ``y`` of shape ``(n,)``."""
        x, y = check_xy(data, x_ndim=2)
        return {"x": x, "y": y}


@dataclass(frozen=True)
class LinearRegression(_LinearModel):
    r"""Least squares, y_pred = x·w + b, with loss ½·meanᵢ (xᵢ·w + b − yᵢ)².

    The loss is a *mean* over the batch, so a learning rate does not depend on n.

    Hand gradient, with residual r = x·w + b − y:  ∂L/∂w = xᵀr / n,  ∂L/∂b = Σᵢ rᵢ / n.

    Hessian (constant): H = JᵀJ / n with J = [x, 1], the design matrix with a ones column.

    Examples:
        >>> import numpy as np
        >>> from gradlab import LinearRegression
        >>> data = LinearRegression().make_data(n=4, d=2, seed=0)
        >>> data["x"].shape, data["y"].shape
        ((4, 2), (4,))
    """

    name = "linear_regression"
    reduction = "mean"

    def _weights(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """½(z − y)² has curvature 1 in z."""
        return np.ones_like(z)

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """x·w + b (a 1-D ``x`` is one feature)."""
        return self._linear(params, x)

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """½·mean (x·w + b − y)²."""
        residual = data["x"] @ params["w"] + params["b"] - data["y"]
        return 0.5 * xp.mean(residual**2)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Normal-equation gradient, sharing the residual (built in place) with the loss."""
        x = data["x"]
        n = x.shape[0]
        residual = x @ params["w"]
        residual += params["b"]
        residual -= data["y"]
        loss = 0.5 * np.dot(residual, residual) / n
        return loss, {"w": (residual @ x) / n, "b": np.sum(residual) / n}

    def make_data(
        self, n: int = 100, d: int = 3, *, noise: float = 0.1, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """x ~ N(0, 1)ⁿˣᵈ, y = x·w* + b* + noise·N(0, 1) with w* = 1, 2, …, d and b* = 0.5."""
        n, d = check_positive_int(n, "n"), check_positive_int(d, "d")
        noise = check_float(noise, "noise", 0.0)
        rng = data_rng(seed)
        x = rng.standard_normal((n, d))
        y = x @ np.arange(1.0, d + 1.0) + 0.5 + noise * rng.standard_normal(n)
        return {"x": x, "y": y}


@dataclass(frozen=True)
class LogisticRegression(_LinearModel):
    r"""Binary logistic regression: mean binary cross-entropy of σ(x·w + b) against y ∈ [0, 1].

    With z = x·w + b, each sample's loss is softplus(z) − y·z, with softplus(z) =
    logaddexp(0, z), which no framework lets overflow for any z. Its derivative is σ(z) − y
    and its second derivative σ(z)(1 − σ(z)), everywhere. (The once-popular form
    (z + |z|)/2 + log1p(exp(−|z|)) is stable too, but autodiff through |z| gets the second
    derivative wrong at exactly z = 0: torch gives 0 there instead of ¼. gradlab's Hessian
    comparison found that.)

    Hand gradient:  ∂L/∂w = xᵀ(σ(z) − y) / n,  ∂L/∂b = Σᵢ (σ(zᵢ) − yᵢ) / n.

    Hessian: H = Jᵀ·diag(σ(z)(1 − σ(z)))·J / n with J = [x, 1].

    Examples:
        >>> import numpy as np
        >>> from gradlab import LogisticRegression
        >>> data = {"x": np.zeros((2, 1)), "y": np.array([0.0, 1.0])}
        >>> params = {"w": np.zeros(1), "b": np.float64(0.0)}
        >>> bool(np.isclose(LogisticRegression().loss(params, data, np), np.log(2)))
        True
    """

    name = "logistic_regression"
    reduction = "mean"

    def _weights(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """softplus(z) − y·z has curvature σ(z)(1 − σ(z)) = σ(z)·σ(−z) in z."""
        return np.asarray(_sigmoid(z) * _sigmoid(-z))

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """σ(x·w + b), the probability of label 1."""
        return _sigmoid(self._linear(params, x))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """mean softplus(z) − y·z, in a form that never overflows."""
        z = data["x"] @ params["w"] + params["b"]
        return xp.mean(xp.logaddexp(xp.zeros_like(z), z) - data["y"] * z)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """σ(z) − y backpropagated through the linear map.

        softplus(z) is computed once and shared: the loss sums it, and the gradient reuses
        it as σ(z) = exp(z − softplus(z)) (accurate in both tails), in place.
        """
        x, y = data["x"], data["y"]
        n = x.shape[0]
        z = x @ params["w"]
        z += params["b"]
        error = np.logaddexp(0.0, z)  # softplus(z), until it becomes the error below
        loss = (np.sum(error) - np.dot(y, z)) / n
        np.subtract(z, error, out=error)
        np.exp(error, out=error)  # σ(z)
        error -= y
        return loss, {"w": (error @ x) / n, "b": np.sum(error) / n}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """As for linear models, and every label in [0, 1]."""
        checked = super().check_data(data)
        y = checked["y"]
        if np.any((y < 0) | (y > 1)):
            raise ArgumentError("data['y']", "labels must lie in [0, 1] (0/1 or probabilities)")
        return checked

    def make_data(self, n: int = 100, d: int = 3, *, seed: int = 0) -> dict[str, np.ndarray]:
        """x ~ N(0, 1)ⁿˣᵈ, y ~ Bernoulli(σ(x·w* + b*)) with w* = 1, −1, 1, … and b* = 0.25."""
        n, d = check_positive_int(n, "n"), check_positive_int(d, "d")
        rng = data_rng(seed)
        x = rng.standard_normal((n, d))
        w = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
        probability = 1 / (1 + np.exp(-(x @ w + 0.25)))
        y = (rng.random(n) < probability).astype(np.float64)
        return {"x": x, "y": y}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = exp(−softplus(−z)): accurate in both tails, unlike 1 / (1 + exp(−z))."""
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)))
