"""The seed's model: y ≈ w·x² + b, fitted by least squares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import check_float, check_positive_int
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import check_xy, data_rng

#: From this many points the hand gradient takes Σ r·x² without a temporary (see below).
_LARGE = 100_000


@dataclass(frozen=True)
class Quadratic(AbstractProblem):
    r"""The seed tutorial's model, y_pred = w·x² + b, with loss ½·Σᵢ (w·xᵢ² + b − yᵢ)².

    The loss is a *sum* over the batch, as in the seed. Data: ``x`` and ``y`` of shape
    ``(n,)`` (an ``(n, 1)`` column is accepted and flattened). Parameters: scalars ``w``, ``b``.

    Hand gradient, with residual rᵢ = w·xᵢ² + b − yᵢ:  ∂L/∂w = Σᵢ rᵢ·xᵢ²,  ∂L/∂b = Σᵢ rᵢ.

    Hessian (constant, since the model is linear in w and b):
    H = [[Σᵢ xᵢ⁴, Σᵢ xᵢ²], [Σᵢ xᵢ², n]].

    Examples:
        >>> import numpy as np
        >>> from gradlab import Quadratic
        >>> data = {"x": np.array([0.0, 1.0, 2.0]), "y": np.array([1.0, 1.0, 1.0])}
        >>> params = {"w": np.float64(1.0), "b": np.float64(0.0)}
        >>> float(Quadratic().loss(params, data, np))  # ½·((−1)² + 0² + 3²)
        5.0
        >>> loss, grads = Quadratic().hand_value_and_grad(params, data)
        >>> float(grads["w"]), float(grads["b"])  # (−1·0 + 0·1 + 3·4, −1 + 0 + 3)
        (12.0, 2.0)
    """

    name = "quadratic"
    reduction = "sum"
    has_hand_gradient = True
    has_hand_hvp = True

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """½·Σ (w·x² + b − y)².

        ``residual**2`` rather than ``residual * residual``, which gives the same numbers:
        torch's backward of the product holds one array of n fewer (two temporaries
        beside the saved residual, not three), but in jax's compiled loop XLA keeps its
        cotangent as one more array and a step at n = 10⁶ took 650 µs against 520.
        """
        x2 = data["x2"] if "x2" in data else data["x"] ** 2  # see constants
        residual = params["w"] * x2 + params["b"] - data["y"]
        return 0.5 * xp.sum(residual**2)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """The seed's own derivation; the residual is computed once and shared.

        The residual is built in place from x², and the sums are dot products. Large data
        avoids a second array of length n: each fresh large array costs page faults on
        every call, as much as the arithmetic at n = 10⁶ (4.4 ms a call with x² kept apart,
        2.4 ms with Σ r·x² taken by ``einsum`` without a temporary); below ``_LARGE``,
        ``einsum`` is the slower (23 against 13 µs at n = 10⁴) and x² is kept.
        """
        x = data["x"]
        if "x2" in data:  # made once per fit (constants): no array of length n but this one
            residual = data["x2"] * params["w"]
            residual += params["b"]
            residual -= data["y"]
            grad_w = np.dot(residual, data["x2"])
        elif x.size >= _LARGE:
            residual = x * x
            residual *= params["w"]
            residual += params["b"]
            residual -= data["y"]
            grad_w = np.einsum("i,i,i->", residual, x, x)
        else:
            x2 = x * x
            residual = x2 * params["w"]
            residual += params["b"]
            residual -= data["y"]
            grad_w = np.dot(residual, x2)
        loss = 0.5 * np.dot(residual, residual)
        return loss, {"w": grad_w, "b": residual.sum()}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """H·v = (Σx⁴·v_w + Σx²·v_b, Σx²·v_w + n·v_b), through u = x²·v_w + v_b."""
        x2 = data["x"] ** 2
        change = x2 * tangent["w"] + tangent["b"]  # how the residual moves along the tangent
        return {"w": np.sum(change * x2), "b": np.sum(change)}

    def constants(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """x², which every step would otherwise compute again."""
        return {"x2": data["x"] * data["x"]}

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """w·x² + b."""
        return np.asarray(params["w"] * np.asarray(x) ** 2 + params["b"])

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """Two scalars."""
        return {"w": (), "b": ()}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``x`` and ``y``: finite, 1-D (or a column), of equal length."""
        x, y = check_xy(data, x_ndim=1)
        return {"x": x, "y": y}

    def make_data(
        self, n: int = 100, *, noise: float = 0.2, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Seed-like data: x = linspace(−1, 1, n), y = 3x² + 2 + noise·U[0, 1)."""
        x = np.linspace(-1.0, 1.0, check_positive_int(n, "n"))
        noise = check_float(noise, "noise", 0.0)
        y = 3 * x**2 + 2 + noise * data_rng(seed).random(n)
        return {"x": x, "y": y}
