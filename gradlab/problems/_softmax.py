"""Multinomial logistic (softmax) regression."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import as_float_array, check_int, check_mapping
from gradlab._errors import ArgumentError
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import data_rng


def log_sum_exp_rows(z: Array, xp: Any) -> Array:
    """log Σₖ exp(zᵢₖ) per row, shifted by the row's maximum so that nothing overflows."""
    top = xp.max(z, axis=1, keepdims=True)
    return top[:, 0] + xp.log(xp.sum(xp.exp(z - top), axis=1))


@dataclass(frozen=True)
class SoftmaxRegression(AbstractProblem):
    r"""Softmax regression: mean cross-entropy of softmax(x·W + b) against label rows y.

    With z = x·W + b (one score per class), each sample's loss is
    log Σₖ exp(zₖ) − Σₖ yₖ·zₖ, the cross-entropy −Σₖ yₖ·log softmax(z)ₖ for a label row y
    that sums to 1 (one-hot, or class probabilities). log Σ exp is computed shifted by the
    row's maximum, so no score overflows.

    Data: ``x`` of shape ``(n, d)`` and ``y`` of shape ``(n, classes)``, rows of
    non-negative numbers summing to 1. Parameters: ``W`` of shape ``(d, classes)`` and
    ``b`` of shape ``(classes,)``.

    Hand gradient, with P = softmax(z) row by row:  ∂L/∂W = xᵀ(P − y) / n,
    ∂L/∂b = Σᵢ (Pᵢ − yᵢ) / n.

    Hessian-vector product along (V, c): with u = x·V + c (how z moves), each row of P
    moves by P ⊙ u − P·(P·u), and H·(V, c) = (xᵀ·that / n, Σᵢ that / n).

    Args:
        classes: The number of classes, an integer ≥ 2.

    Examples:
        >>> import numpy as np
        >>> from gradlab import SoftmaxRegression
        >>> data = {"x": np.zeros((1, 2)), "y": np.array([[0.0, 1.0, 0.0]])}
        >>> params = {"W": np.zeros((2, 3)), "b": np.zeros(3)}
        >>> bool(np.isclose(SoftmaxRegression(3).loss(params, data, np), np.log(3)))
        True
    """

    takes_features = True  # make_data(n, d=...)

    classes: int = 3
    name = "softmax_regression"
    reduction = "mean"
    has_hand_gradient = True
    has_hand_hvp = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", check_int(self.classes, "classes", 2))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """mean (log Σₖ exp(zₖ) − Σₖ yₖ·zₖ) with z = x·W + b."""
        z = data["x"] @ params["W"] + params["b"]
        return xp.mean(log_sum_exp_rows(z, xp) - xp.sum(data["y"] * z, axis=1))

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """softmax(z) − y, backpropagated through the linear map."""
        x, y = data["x"], data["y"]
        n = x.shape[0]
        z = x @ params["W"]
        z += params["b"]
        lse = log_sum_exp_rows(z, np)
        loss = (np.sum(lse) - np.vdot(y, z)) / n
        error = np.exp(z - lse[:, None])  # softmax(z), until it becomes P − y below
        error -= y
        return loss, {"W": (x.T @ error) / n, "b": np.sum(error, axis=0) / n}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """How softmax(z) moves along the tangent, backpropagated like the gradient."""
        x = data["x"]
        n = x.shape[0]
        z = x @ params["W"] + params["b"]
        p = np.exp(z - log_sum_exp_rows(z, np)[:, None])
        u = x @ tangent["W"] + tangent["b"]
        moved = p * u - p * np.sum(p * u, axis=1, keepdims=True)
        return {"W": (x.T @ moved) / n, "b": np.sum(moved, axis=0) / n}

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The class probabilities softmax(x·W + b), one row per sample."""
        z = np.asarray(x) @ params["W"] + params["b"]
        return np.asarray(np.exp(z - log_sum_exp_rows(z, np)[:, None]))

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """A weight per feature and class, a bias per class."""
        return {"W": (data["x"].shape[1], self.classes), "b": (self.classes,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``x`` of shape ``(n, d)``; ``y`` of shape ``(n, classes)``, rows that are
        probability distributions (one-hot labels, or soft ones)."""
        mapping = check_mapping(data, "data")
        if set(mapping) != {"x", "y"}:
            raise ArgumentError(
                "data", f"must have exactly the keys 'x' and 'y', got {sorted(mapping)}"
            )
        x = as_float_array(mapping["x"], "data['x']")
        y = as_float_array(mapping["y"], "data['y']")
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ArgumentError("data['x']", f"has shape {x.shape}, expected (n, d)")
        if y.shape != (x.shape[0], self.classes):
            raise ArgumentError(
                "data['y']",
                f"has shape {y.shape}, expected {(x.shape[0], self.classes)}: one row of "
                f"{self.classes} class probabilities per sample (one-hot labels)",
            )
        # 1e-6: labels that were rounded to float32 on the way still count as distributions.
        if np.any(y < 0) or not np.allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-6):
            raise ArgumentError(
                "data['y']", "rows must be probabilities: non-negative and summing to 1"
            )
        return {"x": x, "y": y}

    def make_data(self, n: int = 100, d: int = 3, *, seed: int = 0) -> dict[str, np.ndarray]:
        """x ~ N(0, 1)ⁿˣᵈ; one-hot y drawn from softmax(x·W*) with W*ⱼₖ = cos(j + 2k)."""
        n, d = check_int(n, "n", 1), check_int(d, "d", 1)
        rng = data_rng(seed)
        x = rng.standard_normal((n, d))
        truth = np.cos(np.add.outer(np.arange(d), 2 * np.arange(self.classes)))
        z = x @ truth
        probability = np.exp(z - log_sum_exp_rows(z, np)[:, None])
        labels = (rng.random((n, 1)) > np.cumsum(probability, axis=1)).sum(axis=1)
        return {"x": x, "y": np.eye(self.classes)[np.minimum(labels, self.classes - 1)]}
