"""Gaussian-mixture objectives: ADBench's, and GradBench's ``gmm`` with its three fixes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import check_float, check_int
from gradlab._errors import ArgumentError
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import data_rng


def _log_multigamma(a: float, p: int) -> float:
    """log Γ_p(a) = p(p − 1)/4·log π + Σⱼ log Γ(a + (1 − j)/2), j = 1 … p."""
    return p * (p - 1) / 4 * math.log(math.pi) + sum(
        math.lgamma(a + (1 - j) / 2) for j in range(1, p + 1)
    )


#: Points summed naively in one block before blocks are summed pairwise.
_BLOCK = 1024


def _sum_over_points(term: Callable[[slice], np.ndarray], n: int) -> np.ndarray:
    """``term(points)`` summed over blocks of the n points: ``term(slice)`` is one block's
    sum.

    A sum over all points at once (``sum(axis)``, one product over n) adds them one after
    another, so its rounding error grows with n (rho 2·10⁻¹⁰ at ADBench's 2.5M points,
    where torch and jax stay at 10⁻¹⁴). Here points are added only within blocks of
    ``_BLOCK``, and the block sums pairwise: the error grows with log n, and the
    temporaries stay one block's.
    """
    parts = [term(slice(start, start + _BLOCK)) for start in range(0, n, _BLOCK)]
    while len(parts) > 1:
        pairs = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
        parts = pairs + parts[len(pairs) * 2 :]
    return parts[0]


def _lower_offsets(d: int) -> list[int]:
    """Where column c's strictly-lower entries start among an icf row's last d(d−1)/2."""
    offsets, start = [], 0
    for column in range(d):
        offsets.append(start)
        start += d - column - 1
    return offsets


@dataclass(frozen=True)
class GMM(AbstractProblem):
    r"""ADBench's Gaussian-mixture objective, with its parametrisation and constants.

    For k components in d dimensions and n points xᵢ, with parameters ``alphas`` (k,)
    (log mixture weights, unnormalised), ``means`` (k, d) and ``icf`` (k, d(d+1)/2): each
    row of icf holds qₖ, the log of the diagonal of the precision's Cholesky-like factor
    Qₖ, then its strictly lower entries column by column (column 0's rows 1 … d−1, then
    column 1's rows 2 … d−1, ...). So Qₖ = diag(exp(qₖ)) + Lₖ and, with
    zᵢₖ = xᵢ − μₖ, the objective is

    −(n·d/2)·log 2π + Σᵢ logsumexpₖ(αₖ + Σⱼ qₖⱼ − ½‖Qₖ·zᵢₖ‖²) − n·logsumexp(α)
    + Σₖ [½γ²(‖exp(qₖ)‖² + ‖Lₖ‖²_F) − m·Σⱼ qₖⱼ] − k·[n_w·d·(log γ − ½ log 2) − log Γ_d(n_w/2)]

    with the Wishart prior's γ and m, and n_w = d + m + 1: the value ADBench's code
    computes, so figures on it can be held against ADBench's. (It is their benchmark
    function, log-likelihood plus prior terms, not a loss one would minimise to fit a
    mixture.) Its prior terms have the wrong sign for a log posterior; GradBench's ``gmm``
    fixes that: [`GradBenchGMM`][gradlab.GradBenchGMM]. Data: ``x`` of shape ``(n, d)``.

    Hand gradient, with βᵢₖ the terms inside the first logsumexp, rᵢₖ = softmaxₖ(βᵢ) the
    responsibilities and yᵢₖ = Qₖ·zᵢₖ:
    ∂/∂αₖ = Σᵢ rᵢₖ − n·softmax(α)ₖ;  ∂/∂μₖ = Qₖᵀ·Σᵢ rᵢₖ·yᵢₖ;
    ∂/∂qₖⱼ = Σᵢ rᵢₖ·(1 − yᵢₖⱼ·exp(qₖⱼ)·zᵢₖⱼ) + γ²·exp(2qₖⱼ) − m;
    ∂/∂Lₖ[a, c] = −Σᵢ rᵢₖ·yᵢₖₐ·zᵢₖ꜀ + γ²·Lₖ[a, c]  (a > c).

    Args:
        k: The number of components, an integer ≥ 1 (ADBench: 5 … 200).
        d: The dimension, an integer ≥ 1 (ADBench: 2 … 128).
        gamma: The Wishart prior's γ > 0 (ADBench's data: 1).
        m: The Wishart prior's m, an integer ≥ 0 (ADBench's data: 0).

    Examples:
        >>> import numpy as np
        >>> from gradlab import GMM
        >>> problem = GMM(k=2, d=3)
        >>> data = problem.make_data(10, seed=0)
        >>> {name: shape for name, shape in problem.param_shapes(data).items()}
        {'alphas': (2,), 'means': (2, 3), 'icf': (2, 6)}
    """

    k: int = 5
    d: int = 2
    gamma: float = 1.0
    m: int = 0
    name = "gmm"
    has_hand_gradient = True
    #: The sign the prior terms enter with: +1 as ADBench's code has it, −1 for the log
    #: posterior (GradBench's fix).
    _prior_sign = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_int(self.k, "k", 1))
        object.__setattr__(self, "d", check_int(self.d, "d", 1))
        gamma = check_float(self.gamma, "gamma", 0.0)
        if gamma <= 0:
            raise ArgumentError("gamma", f"must be positive, got {self.gamma!r}")
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "m", check_int(self.m, "m", 0))

    def _constant(self, n: int) -> float:
        """The terms that depend on no parameter: the Gaussian's and the prior's."""
        d, k, m = self.d, self.k, self.m
        n_w = d + m + 1
        prior = n_w * d * (math.log(self.gamma) - 0.5 * math.log(2)) - _log_multigamma(0.5 * n_w, d)
        return -n * d * 0.5 * math.log(2 * math.pi) - self._prior_sign * k * prior

    def _factors(self, icf: Array, xp: Any) -> Array:
        """Each Qₖ, a (k, d, d) array, built from its columns: column c is c zeros,
        exp(qₖ꜀), then Lₖ's column c, which icf holds contiguously. Built by concatenation,
        as every namespace can (autograd.numpy, the gradlab-autograd plug-in's, cannot
        differentiate indexed assignment), at O(k·d²) work: the points then meet Qₖ in one
        batched product, not d passes over an (n, k, d) array."""
        d = self.d
        diagonal = xp.exp(icf[:, :d])
        zeros = icf[:, :d] * 0
        columns = []
        for column, start in enumerate(_lower_offsets(d)):
            count = d - column - 1
            pieces = [zeros[:, :column]] if column else []
            pieces.append(diagonal[:, column : column + 1])
            if count:
                pieces.append(icf[:, d + start : d + start + count])
            # concatenate, not the array API's concat: numpy, torch's namespace and jax.numpy
            # have both, but autograd.numpy only differentiates concatenate.
            columns.append(xp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0])
        return xp.stack(columns, axis=2)

    def _terms(self, params: Params, x: Array, xp: Any) -> tuple[Array, Array, Array]:
        """βₖᵢ = αₖ + Σⱼ qₖⱼ − ½‖yₖᵢ‖² (k, n), with the points as columns: zₖ = xᵀ − μₖ
        and yₖ = Qₖ·zₖ, each (k, d, n). Components lead and points trail, so that each Qₖ
        meets all its points in one product (NumPy's batched (n, d)·(d, d) products run
        4× slower than (d, d)·(d, n) ones) and sums over points run along memory."""
        alphas, means, icf = params["alphas"], params["means"], params["icf"]
        z = xp.permute_dims(x, (1, 0))[None, :, :] - means[:, :, None]
        y = self._factors(icf, xp) @ z
        beta = (alphas + xp.sum(icf[:, : self.d], axis=1))[:, None] - 0.5 * xp.sum(y * y, axis=1)
        return beta, y, z

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """ADBench's objective, vectorised over points and components."""
        x, alphas, icf = data["x"], params["alphas"], params["icf"]
        d = self.d
        q = icf[:, :d]
        beta, _, _ = self._terms(params, x, xp)
        top = xp.max(beta, axis=0, keepdims=True)
        slse = xp.sum(top[0] + xp.log(xp.sum(xp.exp(beta - top), axis=0)))
        alpha_top = xp.max(alphas)
        lse_alphas = alpha_top + xp.log(xp.sum(xp.exp(alphas - alpha_top)))
        n = x.shape[0]
        prior = xp.sum(
            0.5 * self.gamma**2 * (xp.sum(xp.exp(2 * q), axis=1) + xp.sum(icf[:, d:] ** 2, axis=1))
            - self.m * xp.sum(q, axis=1)
        )
        return self._constant(n) + slse - n * lse_alphas + self._prior_sign * prior

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Responsibilities times the derivative of each component's term, plus the prior."""
        x, alphas, icf = data["x"], params["alphas"], params["icf"]
        n, d = x.shape
        q = icf[:, :d]
        factors = self._factors(icf, np)
        beta, y, z = self._terms(params, x, np)
        top = np.max(beta, axis=0, keepdims=True)
        weights = np.exp(beta - top)
        total = np.sum(weights, axis=0, keepdims=True)
        slse = np.sum(top[0] + np.log(total[0]))
        resp = weights / total  # rₖᵢ
        alpha_top = np.max(alphas)
        alpha_weights = np.exp(alphas - alpha_top)
        lse_alphas = alpha_top + np.log(np.sum(alpha_weights))
        gamma2, lower = self.gamma**2, icf[:, d:]
        prior = np.sum(
            0.5 * gamma2 * (np.sum(np.exp(2 * q), axis=1) + np.sum(lower**2, axis=1))
            - self.m * np.sum(q, axis=1)
        )
        sign = self._prior_sign
        value = self._constant(n) + slse - n * lse_alphas + sign * prior

        weighted = resp[:, None, :] * y  # rₖᵢ·yₖᵢ, (k, d, n)
        responsibility = _sum_over_points(lambda points: np.sum(resp[:, points], axis=1), n)
        grad_alphas = responsibility - n * alpha_weights / np.sum(alpha_weights)
        summed = _sum_over_points(lambda points: np.sum(weighted[:, :, points], axis=2), n)
        grad_means = np.einsum("kac,ka->kc", factors, summed)
        # ∂β/∂Q[a, c] = −y_a·z_c: one (k, d, d) matrix, one batched product over the points,
        # of which the diagonal and the lower triangle are used.
        outer = -_sum_over_points(
            lambda points: weighted[:, :, points] @ z[:, :, points].transpose(0, 2, 1), n
        )
        grad_icf = np.empty_like(icf)
        diagonal = np.exp(q)
        grad_icf[:, :d] = (
            responsibility[:, None]
            + np.einsum("kaa->ka", outer) * diagonal
            + sign * (gamma2 * diagonal**2 - self.m)
        )
        for column, start in enumerate(_lower_offsets(d)):
            count = d - column - 1
            grad_icf[:, d + start : d + start + count] = (
                outer[:, column + 1 :, column] + sign * gamma2 * lower[:, start : start + count]
            )
        return value, {"alphas": grad_alphas, "means": grad_means, "icf": grad_icf}

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """ADBench's layout: alphas (k,), means (k, d), icf (k, d(d+1)/2)."""
        return {
            "alphas": (self.k,),
            "means": (self.k, self.d),
            "icf": (self.k, self.d * (self.d + 1) // 2),
        }

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``x`` of shape ``(n, d)`` (the key ``"x"`` only)."""
        from gradlab._checks import as_float_array, check_mapping

        mapping = check_mapping(data, "data")
        if set(mapping) != {"x"}:
            raise ArgumentError("data", f"must have exactly the key 'x', got {sorted(mapping)}")
        x = as_float_array(mapping["x"], "data['x']", copy=False)
        if x.ndim != 2 or x.shape[1] != self.d or x.shape[0] == 0:
            raise ArgumentError("data['x']", f"has shape {x.shape}, expected (n, {self.d})")
        return {"x": x}

    def make_data(self, n: int = 1000, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Points drawn from a mixture of k unit Gaussians whose centres are U(−3, 3)ᵈ."""
        n = check_int(n, "n", 1)
        rng = data_rng(seed)
        centres = rng.uniform(-3.0, 3.0, (self.k, self.d))
        labels = rng.integers(0, self.k, n)
        return {"x": centres[labels] + rng.standard_normal((n, self.d))}
