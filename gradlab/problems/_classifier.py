"""One small MLP classifier written three times: a torch ``nn.Module``, a JAX function, NumPy.

The worked example of [`NativeProblem`][gradlab.NativeProblem]: the model a user would write
in each framework, not one loss written against ``xp``. Each engine differentiates its own
framework's code, so agreement means the three *implementations* compute the same function
and the same derivatives.

The model: logits = tanh(x·K₀ + c₀)·K₁ + c₁, loss = −meanᵢ Σ_c yᵢ_c log softmax(logitsᵢ)_c
with one-hot labels y. Canonical parameters are laid out as Flax does,
``{"layers": [{"kernel": (in, out), "bias": (out,)}, ...]}``; the torch module
(``nn.Sequential(Linear, Tanh, Linear)``) stores ``weight`` as ``(out, in)``, which a
[`Layout`][gradlab.Layout] maps.

Hand gradient (backpropagation): with p = softmax(logits) and δ₁ = (p − y)/n,
∂L/∂K₁ = hᵀδ₁, ∂L/∂c₁ = Σᵢ δ₁; δ₀ = (δ₁K₁ᵀ) ⊙ (1 − h²), ∂L/∂K₀ = xᵀδ₀, ∂L/∂c₀ = Σᵢ δ₀.
Hand Hessian-vector product: the same backpropagation under the R-operator (``hand_hvp``).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError
from gradlab.problems._models import torch_module
from gradlab.problems._native import Layout, NativeProblem


def _layers(params: Any) -> list[Any]:
    return list(params["layers"])


def _forward(params: Any, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """NumPy forward pass: each layer's input and the logits (what backpropagation reuses)."""
    inputs, h = [], x
    layers = _layers(params)
    for i, layer in enumerate(layers):
        inputs.append(h)
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(layers) - 1:
            h = np.tanh(h)
    return inputs, h


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def numpy_loss(params: Any, data: Any) -> np.ndarray:
    """The loss in NumPy (what the ``fd`` engine differences)."""
    _, logits = _forward(params, data["x"])
    return np.asarray(-np.mean(np.sum(data["y"] * _log_softmax(logits), axis=1)))


def hand_value_and_grad(params: Any, data: Any) -> tuple[np.ndarray, Any]:
    """Loss and backpropagated gradient, in the canonical structure."""
    inputs, logits = _forward(params, data["x"])
    log_p = _log_softmax(logits)
    y = data["y"]
    loss = np.asarray(-np.mean(np.sum(y * log_p, axis=1)))
    delta = (np.exp(log_p) - y) / len(y)
    layers = _layers(params)
    grads: list[dict[str, np.ndarray]] = [{} for _ in layers]
    for i in reversed(range(len(layers))):
        grads[i] = {"kernel": inputs[i].T @ delta, "bias": delta.sum(axis=0)}
        if i > 0:
            delta = (delta @ layers[i]["kernel"].T) * (1 - inputs[i] ** 2)
    return loss, {"layers": grads}


def hand_hvp(params: Any, tangent: Any, data: Any) -> Any:
    """H·tangent by the R-operator (Pearlmutter 1994): backpropagation differentiated along
    ``tangent``, with R(·) the directional derivative of each forward and backward quantity.

    Forward: R(aᵢ) = R(hᵢ₋₁)Kᵢ + hᵢ₋₁Vᵢ + vᵢ, R(hᵢ) = (1 − hᵢ²) ⊙ R(aᵢ) (R(x) = 0);
    softmax: R(p) = p ⊙ (R(z) − Σ_c p ⊙ R(z)). Backward: R(δ) = R(p)/n at the top,
    R(∂Kᵢ) = R(hᵢ₋₁)ᵀδᵢ + hᵢ₋₁ᵀR(δᵢ), and R(δᵢ₋₁) = (R(δᵢ)Kᵢᵀ + δᵢVᵢᵀ) ⊙ (1 − hᵢ₋₁²) −
    2(δᵢKᵢᵀ) ⊙ hᵢ₋₁ ⊙ R(hᵢ₋₁).
    """
    layers, directions = _layers(params), _layers(tangent)
    inputs, logits = _forward(params, data["x"])
    r_inputs = [np.zeros_like(inputs[0])]
    for i, (layer, direction) in enumerate(zip(layers, directions, strict=True)):
        r_a = r_inputs[i] @ layer["kernel"] + inputs[i] @ direction["kernel"] + direction["bias"]
        if i < len(layers) - 1:
            r_inputs.append((1 - inputs[i + 1] ** 2) * r_a)
    p = np.exp(_log_softmax(logits))
    y = data["y"]
    delta = (p - y) / len(y)
    r_delta = p * (r_a - np.sum(p * r_a, axis=1, keepdims=True)) / len(y)
    products: list[dict[str, np.ndarray]] = [{} for _ in layers]
    for i in reversed(range(len(layers))):
        products[i] = {
            "kernel": r_inputs[i].T @ delta + inputs[i].T @ r_delta,
            "bias": r_delta.sum(axis=0),
        }
        if i > 0:
            h, back = inputs[i], delta @ layers[i]["kernel"].T
            r_back = r_delta @ layers[i]["kernel"].T + delta @ directions[i]["kernel"].T
            r_delta = r_back * (1 - h**2) - 2 * back * h * r_inputs[i]
            delta = back * (1 - h**2)
    return {"layers": products}


def jax_loss(params: Any, data: Any) -> Any:
    """The loss as a JAX user writes it (``jax.nn.log_softmax``, Flax-style kernels)."""
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    h = data["x"]
    layers = _layers(params)
    for i, layer in enumerate(layers):
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(layers) - 1:
            h = jnp.tanh(h)
    return -jnp.mean(jnp.sum(data["y"] * jax.nn.log_softmax(h, axis=1), axis=1))


def torch_model(sizes: Sequence[int]) -> Any:
    """The torch module: ``nn.Sequential(Linear, Tanh, ..., Linear)``."""
    nn = importlib.import_module("torch.nn")
    modules: list[Any] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        modules.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            modules.append(nn.Tanh())
    return nn.Sequential(*modules)


def torch_layout(sizes: Sequence[int], shapes: dict[str, tuple[int, ...]] | None = None) -> Layout:
    """Canonical (Flax) parameters to the ``nn.Sequential``'s: every kernel transposed."""
    mapping: dict[str, str | tuple[str, tuple[int, ...]]] = {}
    for i in range(len(sizes) - 1):
        index = 2 * i  # Linear modules sit at 0, 2, 4, ... between the Tanh modules
        mapping[f"{index}.weight"] = (f"layers[{i}].kernel", (1, 0))
        mapping[f"{index}.bias"] = f"layers[{i}].bias"
    return Layout(mapping, shapes=shapes)


class MLPClassifier(NativeProblem):
    """The classifier, with the data and starting point the benchmark and the CLI need.

    Args:
        sizes: Input features, hidden widths, classes.
        **kwargs: As [`NativeProblem`][gradlab.NativeProblem].
    """

    def __init__(self, sizes: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes = sizes

    def make_data(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` points of a spiral with one arm per class (``classifier_data``)."""
        return classifier_data(n, self.sizes[-1], features=self.sizes[0], seed=seed)

    def initial_params(self, data: Any, *, seed: int = 0) -> dict[str, Any]:
        """A Glorot-normal start (zeros would leave every hidden unit the same)."""
        return classifier_init(self.sizes, seed=seed)


def mlp_classifier(sizes: Sequence[int] = (2, 16, 3)) -> MLPClassifier:
    """The classifier as a [`NativeProblem`][gradlab.NativeProblem]: torch (when installed),
    JAX (when installed) and NumPy implementations, and the hand-derived gradient; with
    ``make_data`` and ``initial_params``, so that ``gradlab.benchmark`` times it.

    Args:
        sizes: Input features, hidden widths, classes (at least two numbers, each ≥ 1).
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ArgumentError("sizes", f"must be two or more positive ints, got {sizes!r}")
    implementations: dict[str, Any] = {"numpy": numpy_loss}
    layouts = {}
    if importlib.util.find_spec("jax") is not None:
        implementations["jax"] = jax_loss
    if importlib.util.find_spec("torch") is not None:
        apply, native = torch_module(torch_model(sizes))
        torch = importlib.import_module("torch")

        def torch_loss(params: Any, data: Any) -> Any:
            logits = apply(params, data["x"])
            return -(data["y"] * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

        implementations["torch"] = torch_loss
        layouts["torch"] = torch_layout(sizes, {k: v.shape for k, v in native.items()})
    return MLPClassifier(
        sizes,
        name="mlp_classifier",
        value_and_grad=hand_value_and_grad,
        hvp=hand_hvp,
        layouts=layouts,
        reduction="mean",
        **implementations,
    )


def classifier_data(
    n: int = 120, classes: int = 3, *, features: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """``classes`` interleaved spiral arms: ``x`` (n, features) and one-hot ``y`` (n, classes).

    The arms lie in the first two features; any further features are N(0, 0.3²) noise, and
    with one feature only the first coordinate is kept.
    """
    rng = np.random.default_rng(seed)
    label = np.arange(n) % classes
    radius = rng.uniform(0.2, 1.0, n)
    angle = 2.5 * radius + 2 * np.pi * label / classes + 0.2 * rng.standard_normal(n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    if features > 2:
        x = np.concatenate([x, 0.3 * rng.standard_normal((n, features - 2))], axis=1)
    return {"x": x[:, :features], "y": np.eye(classes)[label]}


def classifier_init(sizes: Sequence[int] = (2, 16, 3), *, seed: int = 0) -> dict[str, Any]:
    """Glorot-normal kernels and zero biases, in the canonical (Flax) layout."""
    rng = np.random.default_rng(seed)
    layers = [
        {
            "kernel": rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / (fan_in + fan_out)),
            "bias": np.zeros(fan_out),
        }
        for fan_in, fan_out in itertools.pairwise(sizes)
    ]
    return {"layers": layers}
