"""A small multi-layer perceptron on regression data, with hand-written backpropagation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._checks import check_float, check_int
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab.problems._base import AbstractProblem, Array, Data, Params
from gradlab.problems._data import check_xy, data_rng

#: Smooth activations only: where a kink sits (relu at 0), frameworks legitimately pick
#: different one-sided derivatives, and a comparison would flag a difference of convention.
ACTIVATIONS = ("tanh", "sigmoid")


def _activate(name: str, z: Array, xp: Any) -> Array:
    if name == "tanh":
        return xp.tanh(z)
    return 1 / (1 + xp.exp(-z))


@dataclass(frozen=True)
class MLP(AbstractProblem):
    r"""A multi-layer perceptron fitted by least squares: ½·meanᵢ (f(xᵢ) − yᵢ)².

    f(x) = a_L·w_out + b_out with a₀ = x and a_{l+1} = σ(a_l·W_l + b_l) for each hidden
    layer l, σ = tanh or the logistic sigmoid. Data: ``x`` of shape ``(n, d)``, ``y`` of
    shape ``(n,)``. Parameters ``W0``, ``b0``, ``W1``, ``b1``, …: ``W_l`` of shape
    ``(width of layer l − 1, width of layer l)`` and ``b_l`` of shape ``(width,)``; the last
    pair maps to one output (``W`` of shape ``(width,)``, ``b`` a scalar).

    Hand gradient (backpropagation): with r = f(x) − y and δ = r / n at the output,
    ∂L/∂w_out = a_Lᵀδ, ∂L/∂b_out = Σδ; then for each hidden layer, going back,
    δ ← (δ·Wᵀ) ⊙ σ′(z) with σ′ = 1 − a² (tanh) or a(1 − a) (sigmoid),
    ∂L/∂W_l = a_lᵀδ and ∂L/∂b_l = Σᵢ δᵢ.

    Args:
        hidden: The width of each hidden layer, a non-empty tuple of integers ≥ 1.
        activation: ``"tanh"`` or ``"sigmoid"`` (smooth, so engines have one derivative to
            agree on).

    Examples:
        >>> import numpy as np
        >>> from gradlab import MLP
        >>> problem = MLP(hidden=(4,))
        >>> data = problem.make_data(8, d=2, seed=0)
        >>> {name: shape for name, shape in problem.param_shapes(data).items()}
        {'W0': (2, 4), 'b0': (4,), 'W1': (4,), 'b1': ()}
        >>> params = problem.initial_params(data, seed=0)
        >>> bool(np.isfinite(problem.loss(params, data, np)))
        True
    """

    takes_features = True  # make_data(n, d=...)

    hidden: tuple[int, ...] = (16,)
    activation: str = "tanh"
    name = "mlp"
    reduction = "mean"
    has_hand_gradient = True

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, (tuple, list)) or not self.hidden:
            raise ArgumentTypeError(
                "hidden", f"must be a non-empty tuple of layer widths, got {self.hidden!r}"
            )
        object.__setattr__(self, "hidden", tuple(check_int(w, "hidden", 1) for w in self.hidden))
        if self.activation not in ACTIVATIONS:
            raise ArgumentError(
                "activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    @property
    def _layers(self) -> int:
        return len(self.hidden)

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """½·mean (f(x) − y)², the network written once for every namespace."""
        a = data["x"]
        for layer in range(self._layers):
            a = _activate(self.activation, a @ params[f"W{layer}"] + params[f"b{layer}"], xp)
        out = self._layers
        residual = a @ params[f"W{out}"] + params[f"b{out}"] - data["y"]
        return 0.5 * xp.mean(residual**2)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Forward pass keeping each layer's activation, then backpropagation."""
        x, y = data["x"], data["y"]
        n = x.shape[0]
        activations = [x]
        for layer in range(self._layers):
            z = activations[-1] @ params[f"W{layer}"] + params[f"b{layer}"]
            activations.append(_activate(self.activation, z, np))
        out = self._layers
        residual = activations[-1] @ params[f"W{out}"] + params[f"b{out}"] - y
        loss = 0.5 * np.dot(residual, residual) / n
        delta = residual / n
        grads = {f"W{out}": activations[-1].T @ delta, f"b{out}": np.sum(delta)}
        upstream = np.multiply.outer(delta, params[f"W{out}"])
        for layer in range(self._layers - 1, -1, -1):
            a = activations[layer + 1]
            slope = 1 - a * a if self.activation == "tanh" else a * (1 - a)
            delta = upstream * slope
            grads[f"W{layer}"] = activations[layer].T @ delta
            grads[f"b{layer}"] = np.sum(delta, axis=0)
            upstream = delta @ params[f"W{layer}"].T
        return loss, {name: grads[name] for name in params}

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """f(x) for inputs of shape ``(n, d)``."""
        a = np.asarray(x)
        for layer in range(self._layers):
            a = _activate(self.activation, a @ params[f"W{layer}"] + params[f"b{layer}"], np)
        return np.asarray(a @ params[f"W{self._layers}"] + params[f"b{self._layers}"])

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """Weights and biases layer by layer, ending in one output."""
        widths = (data["x"].shape[1], *self.hidden)
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self._layers):
            shapes[f"W{layer}"] = (widths[layer], widths[layer + 1])
            shapes[f"b{layer}"] = (widths[layer + 1],)
        shapes[f"W{self._layers}"] = (widths[-1],)
        shapes[f"b{self._layers}"] = ()
        return shapes

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """A starting point: Glorot-uniform weights (seeded), zero biases.

        Zeros would not do: every hidden unit would stay the same as every other.
        """
        rng = data_rng(seed)
        params: dict[str, Any] = {}
        for name, shape in self.param_shapes(self.check_data(data)).items():
            if name.startswith("W"):
                fan_in, fan_out = shape[0], shape[1] if len(shape) == 2 else 1
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                params[name] = rng.uniform(-limit, limit, shape)
            else:
                params[name] = np.zeros(shape)
        return params

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``x`` of shape ``(n, d)`` (1-D means d = 1) and ``y`` of shape ``(n,)``."""
        x, y = check_xy(data, x_ndim=2)
        return {"x": x, "y": y}

    def make_data(
        self, n: int = 100, d: int = 2, *, noise: float = 0.05, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """x ~ U(−1, 1)ⁿˣᵈ, y = sin(2·x₁) + ½·x₂² (x₂ = 0 when d = 1) + noise·N(0, 1)."""
        n, d = check_int(n, "n", 1), check_int(d, "d", 1)
        noise = check_float(noise, "noise", 0.0)
        rng = data_rng(seed)
        x = rng.uniform(-1.0, 1.0, (n, d))
        second = x[:, 1] if d > 1 else np.zeros(n)
        y = np.sin(2 * x[:, 0]) + 0.5 * second**2 + noise * rng.standard_normal(n)
        return {"x": x, "y": y}
