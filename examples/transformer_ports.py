"""One transformer block written three times, in torch, Flax and Equinox, and checked.

Tokens → embedding → multi-head self-attention → residual and layer norm → residual MLP
→ mean over the sequence → a linear head: one number per sequence, and the mean squared
error over a batch. D = 8, 2 heads, sequences of 5 tokens, a batch of 3.

The torch module (``nn.MultiheadAttention``) is the canonical port: its parameters, by
its names (``attn.in_proj_weight``: query, key and value fused, 3·D × D), are what every
report names and every engine's gradient comes back as. Flax
(``nn.MultiHeadDotProductAttention``: a (D, heads, head size) kernel each) and Equinox
(``eqx.nn.MultiheadAttention``: one (D, D) ``Linear`` each) hold theirs differently: a
layout function builds each one's from the canonical ones, inside the function an engine
differentiates, so no inverse is written by hand.

A ``NativeProblem`` holds one implementation per framework, and the Flax and Equinox ports
are both jax: so there are two problems, torch against Flax and torch against Equinox,
each with a NumPy port too (written from the mathematics, for finite differences). Run it
from the repository root::

    import runpy
    ports = runpy.run_path("examples/transformer_ports.py")
    ports["TORCH_VS_FLAX"], ports["DATA"], ports["PARAMS"]
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn

import gradlab
from gradlab import equinox_module, flax_module

VOCAB, D, HEADS, T, BATCH = 11, 8, 2, 5, 3
HEAD = D // HEADS  # each head's width


# torch: the canonical port.
class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.attn = torch.nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm = torch.nn.LayerNorm(D)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(D, 2 * D), torch.nn.GELU(), torch.nn.Linear(2 * D, D)
        )
        self.head = torch.nn.Linear(D, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        # need_weights=True (the default) takes the explicit softmax path, which forward
        # mode can differentiate (HVPs); need_weights=False calls scaled_dot_product_attention.
        attended, _ = self.attn(x, x, x)
        x = self.norm(x + attended)
        x = x + self.mlp(x)
        outputs: torch.Tensor = self.head(x.mean(dim=1))[:, 0]
        return outputs


torch_apply, torch_params = gradlab.torch_module(TorchBlock())


def torch_loss(params: Any, data: Any) -> Any:
    tokens = data["tokens"].long()  # gradlab hands data over in the run's dtype
    return torch.mean((torch_apply(params, tokens) - data["y"]) ** 2)


# Flax (linen): Flax's defaults differ from torch's twice (layer norm's epsilon, GELU).
class FlaxBlock(nn.Module):
    epsilon: float = 1e-5  # torch's layer norm epsilon; Flax's default is 1e-6

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(VOCAB, D, name="embed")(tokens)
        attended = nn.MultiHeadDotProductAttention(num_heads=HEADS, name="attn")(x)
        x = nn.LayerNorm(epsilon=self.epsilon, name="norm")(x + attended)
        hidden = nn.gelu(nn.Dense(2 * D, name="mlp_in")(x), approximate=False)  # torch's GELU
        x = x + nn.Dense(D, name="mlp_out")(hidden)
        return nn.Dense(1, name="head")(x.mean(axis=1))[:, 0]


flax_apply, flax_params = flax_module(
    FlaxBlock(), FlaxBlock().init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))
)


def flax_loss(params: Any, data: Any) -> Any:
    return jnp.mean((flax_apply(params, data["tokens"].astype(jnp.int32)) - data["y"]) ** 2)


def dense(weight: Any, bias: Any, xp: Any) -> dict[str, Any]:
    """A torch ``Linear``'s (out, in) weight as Flax's (in, out) kernel."""
    return {"kernel": xp.permute_dims(weight, (1, 0)), "bias": bias}


def to_flax(p: Any, xp: Any) -> dict[str, Any]:
    """Flax's parameters from torch's: the fused projection split, each part by heads."""
    fused, fused_bias = p["attn.in_proj_weight"], p["attn.in_proj_bias"]

    def heads(part: int) -> dict[str, Any]:  # rows part·D … of the fused (3·D, D) weight
        rows = slice(part * D, (part + 1) * D)
        kernel = xp.permute_dims(fused[rows], (1, 0))  # (D in, D out): out = head·HEAD + j
        return {
            "kernel": xp.reshape(kernel, (D, HEADS, HEAD)),
            "bias": xp.reshape(fused_bias[rows], (HEADS, HEAD)),
        }

    out = xp.permute_dims(p["attn.out_proj.weight"], (1, 0))
    return {
        "embed": {"embedding": p["embed.weight"]},
        "attn": {
            "query": heads(0),
            "key": heads(1),
            "value": heads(2),
            "out": {"kernel": xp.reshape(out, (HEADS, HEAD, D)), "bias": p["attn.out_proj.bias"]},
        },
        "norm": {"scale": p["norm.weight"], "bias": p["norm.bias"]},
        "mlp_in": dense(p["mlp.0.weight"], p["mlp.0.bias"], xp),
        "mlp_out": dense(p["mlp.2.weight"], p["mlp.2.bias"], xp),
        "head": dense(p["head.weight"], p["head.bias"], xp),
    }


# Equinox: a module runs on one example (here one sequence); jax.vmap runs a batch.
class EquinoxBlock(eqx.Module):
    embed: eqx.nn.Embedding
    attn: eqx.nn.MultiheadAttention
    norm: eqx.nn.LayerNorm
    mlp_in: eqx.nn.Linear
    mlp_out: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        keys = jax.random.split(key, 5)
        self.embed = eqx.nn.Embedding(VOCAB, D, key=keys[0])
        biases = {f"use_{name}_bias": True for name in ("query", "key", "value", "output")}
        self.attn = eqx.nn.MultiheadAttention(HEADS, D, **biases, key=keys[1])
        self.norm = eqx.nn.LayerNorm(D)  # eps=1e-5, as torch's
        self.mlp_in = eqx.nn.Linear(D, 2 * D, key=keys[2])
        self.mlp_out = eqx.nn.Linear(2 * D, D, key=keys[3])
        self.head = eqx.nn.Linear(D, 1, key=keys[4])

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jax.vmap(self.embed)(tokens)
        x = jax.vmap(self.norm)(x + self.attn(x, x, x))
        hidden = jax.vmap(self.mlp_in)(x)
        x = x + jax.vmap(self.mlp_out)(jax.nn.gelu(hidden, approximate=False))
        return self.head(x.mean(axis=0))[0]


equinox_apply, equinox_params = equinox_module(EquinoxBlock(jax.random.key(1)))


def equinox_loss(params: Any, data: Any) -> Any:
    tokens = data["tokens"].astype(jnp.int32)
    outputs = jax.vmap(lambda sequence: equinox_apply(params, sequence))(tokens)
    return jnp.mean((outputs - data["y"]) ** 2)


def to_equinox(p: Any, xp: Any) -> dict[str, Any]:
    """Equinox's parameters from torch's: the same (out, in) layout, the projection split."""

    def linear(name: str) -> dict[str, Any]:
        return {"weight": p[f"{name}.weight"], "bias": p[f"{name}.bias"]}

    fused, fused_bias = p["attn.in_proj_weight"], p["attn.in_proj_bias"]
    query, key, value = ({"weight": fused[i * D : (i + 1) * D]} for i in range(3))
    for i, part in enumerate((query, key, value)):
        part["bias"] = fused_bias[i * D : (i + 1) * D]
    return {
        "embed": {"weight": p["embed.weight"]},
        "attn": {
            "query_proj": query,
            "key_proj": key,
            "value_proj": value,
            "output_proj": linear("attn.out_proj"),
        },
        "norm": linear("norm"),
        "mlp_in": linear("mlp.0"),
        "mlp_out": linear("mlp.2"),
        "head": linear("head"),
    }


# NumPy: the mathematics written out, for finite differences (the fd engine).
def numpy_loss(p: Any, data: Any) -> Any:
    tokens = data["tokens"].astype(int)
    x = p["embed.weight"][tokens]  # (batch, T, D)
    qkv = x @ p["attn.in_proj_weight"].T + p["attn.in_proj_bias"]
    q, k, v = (
        qkv[..., i * D : (i + 1) * D].reshape(*tokens.shape, HEADS, HEAD).swapaxes(1, 2)
        for i in range(3)
    )  # each (batch, heads, T, HEAD)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(HEAD)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    heads = (weights @ v).swapaxes(1, 2).reshape(x.shape)
    x = x + heads @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    x = normed * p["norm.weight"] + p["norm.bias"]
    hidden = x @ p["mlp.0.weight"].T + p["mlp.0.bias"]
    gelu = 0.5 * hidden * (1 + _erf(hidden / math.sqrt(2)))
    x = x + gelu @ p["mlp.2.weight"].T + p["mlp.2.bias"]
    outputs = x.mean(axis=1) @ p["head.weight"].T + p["head.bias"]
    return np.mean((outputs[:, 0] - data["y"]) ** 2)


_erf = np.vectorize(math.erf)  # NumPy has no erf; torch's GELU is the exact one


def shapes(params: Any) -> Any:
    """The shapes of a nest of arrays, nested alike: what ``Layout(..., shapes=)`` checks."""
    return jax.tree_util.tree_map(np.shape, params)


TORCH_VS_FLAX = gradlab.NativeProblem(
    name="transformer-flax",
    torch=torch_loss,
    jax=flax_loss,
    numpy=numpy_loss,
    layouts={"jax": gradlab.Layout(to_flax, shapes=shapes(flax_params))},
)
TORCH_VS_EQUINOX = gradlab.NativeProblem(
    name="transformer-equinox",
    torch=torch_loss,
    jax=equinox_loss,
    numpy=numpy_loss,
    layouts={"jax": gradlab.Layout(to_equinox, shapes=shapes(equinox_params))},
)

# One point: the canonical parameters (by torch's names), drawn afresh so that the check
# does not depend on any framework's initialisation; and a batch of token sequences.
_rng = np.random.default_rng(0)
PARAMS = {name: 0.5 * _rng.standard_normal(value.shape) for name, value in torch_params.items()}
DATA = {"tokens": _rng.integers(0, VOCAB, size=(BATCH, T)), "y": _rng.standard_normal(BATCH)}
