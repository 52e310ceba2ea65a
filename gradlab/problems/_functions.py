"""Test functions without data: Rosenbrock's valley and GradBench's log-sum-exp."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import check_int, check_mapping
from gradlab._errors import ArgumentError
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import data_rng


class _NoData(AbstractProblem):
    """A function of its parameters alone: the data is the empty mapping ``{}``.

    Its size is the number of parameters, so a benchmark sizes it with ``sized``.
    """

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """Only ``{}``: this function takes no data."""
        mapping = check_mapping(data, "data")
        if mapping:
            raise ArgumentError(
                "data", f"{self.name} takes no data; pass {{}}, got keys {sorted(mapping)}"
            )
        return {}

    def make_data(self, n: int = 0, *, seed: int = 0) -> dict[str, np.ndarray]:
        """``{}``; ``n`` and ``seed`` are accepted for a uniform interface."""
        data_rng(seed)
        return {}

    @abc.abstractmethod
    def sized(self, n: int) -> AbstractProblem:
        """The same function with ``n`` parameters."""


@dataclass(frozen=True)
class Rosenbrock(_NoData):
    r"""Rosenbrock's valley in ``dim`` dimensions, the classic non-convex test function:
    Σᵢ 100·(xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)², i = 0 … dim − 2. Minimum 0 at x = (1, …, 1).

    No data (pass ``{}``). Parameters: ``x`` of shape ``(dim,)``.

    Hand gradient: ∂f/∂xᵢ = −400·xᵢ·(xᵢ₊₁ − xᵢ²) − 2·(1 − xᵢ) (for i < dim − 1)
    + 200·(xᵢ − xᵢ₋₁²) (for i > 0). Hessian: tridiagonal, Hᵢᵢ = 1200·xᵢ² − 400·xᵢ₊₁ + 2
    (i < dim − 1) + 200 (i > 0), Hᵢ,ᵢ₊₁ = Hᵢ₊₁,ᵢ = −400·xᵢ.

    Args:
        dim: The number of variables, an integer ≥ 2.

    Examples:
        >>> import numpy as np
        >>> from gradlab import Rosenbrock
        >>> problem = Rosenbrock(dim=3)
        >>> [float(problem.loss({"x": point}, {}, np)) for point in (np.ones(3), np.zeros(3))]
        [0.0, 2.0]
        >>> problem.hand_value_and_grad({"x": np.zeros(3)}, {})[1]["x"].tolist()
        [-2.0, -2.0, 0.0]
    """

    dim: int = 2
    name = "rosenbrock"
    has_hand_gradient = True
    has_hand_hvp = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", check_int(self.dim, "dim", 2))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """Σ 100·(xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)²."""
        x = params["x"]
        head, tail = x[:-1], x[1:]
        return xp.sum(100 * (tail - head**2) ** 2 + (1 - head) ** 2)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """The two terms each xᵢ appears in, summed."""
        x = params["x"]
        head, tail = x[:-1], x[1:]
        valley = tail - head**2
        loss = np.sum(100 * valley**2 + (1 - head) ** 2)
        grad = np.zeros_like(x)
        grad[:-1] = -400 * head * valley - 2 * (1 - head)
        grad[1:] += 200 * valley
        return loss, {"x": grad}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """The tridiagonal Hessian times v."""
        x, v = params["x"], tangent["x"]
        head, tail = x[:-1], x[1:]
        diagonal = np.zeros_like(x)
        diagonal[:-1] = 1200 * head**2 - 400 * tail + 2
        diagonal[1:] += 200
        off = -400 * head
        product = diagonal * v
        product[:-1] += off * v[1:]
        product[1:] += off * v[:-1]
        return {"x": product}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """One vector of ``dim`` variables."""
        return {"x": (self.dim,)}

    def sized(self, n: int) -> Rosenbrock:
        """Rosenbrock's valley in n dimensions."""
        return Rosenbrock(dim=n)


@dataclass(frozen=True)
class LogSumExp(_NoData):
    r"""GradBench's ``lse``: log Σᵢ exp(xᵢ), computed as m + log Σᵢ exp(xᵢ − m) with m = max x
    so that nothing overflows.

    No data (pass ``{}``). Parameters: ``x`` of shape ``(size,)``.

    Hand gradient: softmax(x) = exp(x − lse(x)). Hessian: diag(p) − p·pᵀ with p = softmax(x).

    Args:
        size: The length of x, an integer ≥ 1.

    Examples:
        >>> import numpy as np
        >>> from gradlab import LogSumExp
        >>> x = {"x": np.array([1000.0, 1000.0])}
        >>> float(LogSumExp(size=2).loss(x, {}, np))   # 1000 + log 2; exp(1000) overflows
        1000.6931471805599
        >>> LogSumExp(size=2).hand_value_and_grad(x, {})[1]["x"].tolist()
        [0.5, 0.5]
    """

    size: int = 100
    name = "log_sum_exp"
    has_hand_gradient = True
    has_hand_hvp = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_int(self.size, "size", 1))

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """m + log Σ exp(x − m), m = max x, taken as x's element at argmax x.

        The value does not depend on m, so neither does the derivative: m through an integer
        index (one element gathered, one scattered back), not through ``max``, whose
        derivative is a pass over x to find and share among its ties (``jax.nn.logsumexp``
        stops the gradient at its shift for the same reason). A quarter off torch's gradient
        at n = 1.28·10⁶.
        """
        x = params["x"]
        top = x[xp.argmax(x)]
        return top + xp.log(xp.sum(xp.exp(x - top)))

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """softmax(x), from the same shifted exponentials as the value."""
        x = params["x"]
        top = np.max(x)
        shifted = np.exp(x - top)
        total = np.sum(shifted)
        return top + np.log(total), {"x": shifted / total}

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """p ⊙ v − p·(p·v)."""
        x, v = params["x"], tangent["x"]
        p = np.exp(x - np.max(x))
        p /= np.sum(p)
        return {"x": p * v - p * np.dot(p, v)}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """One vector of ``size`` numbers."""
        return {"x": (self.size,)}

    def sized(self, n: int) -> LogSumExp:
        """log-sum-exp of n numbers."""
        return LogSumExp(size=n)
