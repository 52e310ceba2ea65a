"""Four small models ported twice, to torch and to jax, with porting bugs to plant in one port.

The oracle for [`locate`][gradlab.locate]: each model is written once with torch ops
(functional, parameters in a flat dict, torch's layouts: ``Linear.weight`` is ``(out, in)``,
convolutions ``OIHW`` on ``NCHW`` images) and once with ``jax.numpy`` / ``jax.nn`` /
``jax.lax`` (``x @ W.T``; convolutions in ``NHWC``/``HWIO``, converted from the same
arrays), both tapped with [`tap`][gradlab.tap] at the same points under the same names.
Fault-free, the two ports compute the same function of the same parameters; each
[`Fault`][ports.Fault] plants one realistic porting bug in one port, and says where
``locate`` must find it:

- a *forward* fault (the value computed differs) first shows at the first tap downstream
  of the planted operation, the tap that reads its result (a float32 intermediate in a
  float64 run included: a point computed in a lower dtype is different code, reported
  where it parts, with the dtype as the verdict);
- a *backward-only* fault (a forward-correct op with a wrong ``jax.custom_vjp`` or
  ``torch.autograd.Function`` backward) leaves the cotangent of the tap just after the op
  right and makes the one of the tap just *before* it wrong: ``locate`` reports the first
  backward point in the backward pass's order (the latest in execution order) whose
  cotangent differs, so the expected point is the tap before the op, direction
  ``"backward"``;
- a fault in the loss after the last tap (a mean for a sum) changes no forward value and
  every cotangent: it shows backward at the last tap;
- a fault in a parameter's gradient alone (a wrong weight gradient in a custom backward)
  changes no tap: it shows in ``"gradient"``, at the parameter's path.

torch and jax are imported only when a port is built: the module imports without them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

import gradlab
from gradlab import tap

Loss = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]

MODELS = ("mlp", "cnn", "transformer", "lstm")
PORTS = ("torch", "jax")


@dataclass(frozen=True)
class Fault:
    """One porting bug: in which model, planted in which port, and where ``locate`` must
    report it first (a tap name, or a parameter's path for ``"gradient"``)."""

    model: str
    name: str
    port: str
    expected_point: str
    expected_direction: str

    @property
    def id(self) -> str:
        return f"{self.model}:{self.name}"


def _f(model: str, name: str, port: str, point: str, direction: str) -> Fault:
    return Fault(model, name, port, point, direction)


FWD, BWD, GRAD = "forward", "backward", "gradient"

FAULTS: list[Fault] = [
    # -- MLP: fc1 → act1 (ReLU) → fc2 (8×8) → act2 (ReLU) → head; 0.5·Σ_out (mean over rows)
    _f("mlp", "fc1_bias_missing", "jax", "fc1", FWD),
    # x @ W instead of x @ W.T
    _f("mlp", "fc2_weight_transposed", "jax", "fc2", FWD),
    # leaky_relu(0.01) for relu
    _f("mlp", "act1_leaky_relu", "jax", "act1", FWD),
    _f("mlp", "act2_gelu_for_relu", "jax", "act2", FWD),
    _f("mlp", "head_bias_missing", "jax", "head", FWD),
    # act1 computed and tapped in float32 (verdict: float32 in jax); fc2 promotes back
    _f("mlp", "act1_float32", "jax", "act1", FWD),
    # sum for mean after the last tap: no value differs, every cotangent does
    _f("mlp", "loss_sum_over_rows", "jax", "head", BWD),
    # F.mse_loss (mean over rows and outputs, no 0.5) for 0.5·Σ_out, mean over rows
    _f("mlp", "mse_loss_mean_over_elements", "torch", "head", BWD),
    # custom_vjp relu (act1) passes the cotangent through unmasked
    _f("mlp", "relu_vjp_straight_through", "jax", "fc1", BWD),
    # autograd.Function fc2: grad_x = g @ W.T instead of g @ W
    _f("mlp", "linear_vjp_input_grad_untransposed", "torch", "act1", BWD),
    # autograd.Function fc2: grad_W = x.T @ g instead of g.T @ x; no tap's value or cotangent
    # changes
    _f("mlp", "linear_vjp_weight_grad_transposed", "torch", "['fc2.weight']", GRAD),
    # -- CNN (NCHW 2×2×8×8): conv1 3×3 pad 1 → relu1 → pool1 (max 2×2) → conv2 3×3 stride 2
    #    pad 1 → relu2 → flatten (NCHW order) → head; softmax cross-entropy, mean over rows
    # VALID convolution, output zero-padded back to 8×8
    _f("cnn", "conv1_valid_then_pad", "jax", "conv1", FWD),
    # kernel flipped spatially (a true convolution for torch's cross-correlation)
    _f("cnn", "conv1_kernel_flipped", "jax", "conv1", FWD),
    _f("cnn", "conv1_bias_missing", "jax", "conv1", FWD),
    _f("cnn", "relu1_leaky", "jax", "relu1", FWD),
    _f("cnn", "pool1_avg_for_max", "jax", "pool1", FWD),
    # padding='SAME' at stride 2 pads (0, 1) where torch's padding=1 pads (1, 1)
    _f("cnn", "conv2_same_padding_stride2", "jax", "conv2", FWD),
    # OIHW → HWOI instead of HWIO (4 in, 4 out: the shapes fit)
    _f("cnn", "conv2_kernel_io_swapped", "jax", "conv2", FWD),
    # conv2 in float32, cast back
    _f("cnn", "conv2_float32", "jax", "conv2", FWD),
    # flattened in NHWC order; the head's weight expects NCHW
    _f("cnn", "flatten_nhwc_order", "jax", "flatten", FWD),
    _f("cnn", "cross_entropy_sum_over_rows", "jax", "head", BWD),
    # custom_vjp softmax cross-entropy: the gradient forgets the 1/N of the mean
    _f("cnn", "softmax_xent_vjp_missing_mean", "jax", "head", BWD),
    # autograd.Function max-pool whose backward spreads the cotangent as avg-pool's
    _f("cnn", "maxpool_fn_avg_backward", "torch", "relu1", BWD),
    # -- Transformer block (B=2, T=4, D=8, 2 heads): x + attn(ln1 x) → res1; res1 +
    #    mlp(ln2 res1) → res2; 0.5·Σ_D (res2 − y)², mean over rows
    # layernorm eps 1e-6 for 1e-5
    _f("transformer", "ln1_eps_1e-6", "jax", "ln1", FWD),
    _f("transformer", "ln1_weight_bias_swapped", "jax", "ln1", FWD),
    # x.var(-1) is unbiased in torch (layernorm divides by D)
    _f("transformer", "ln2_unbiased_variance", "torch", "ln2", FWD),
    _f("transformer", "q_weight_transposed", "jax", "attn.q", FWD),
    # reshape (B, T, dh, H) instead of (B, T, H, dh)
    _f("transformer", "heads_split_interleaved", "jax", "attn.q", FWD),
    # copy-paste: v = h @ Wk.T + bv
    _f("transformer", "v_uses_k_weight", "jax", "attn.v", FWD),
    # / dh for / √dh
    _f("transformer", "scores_scaled_by_d", "jax", "attn.scores", FWD),
    # / √D for / √dh
    _f("transformer", "scores_scaled_by_sqrt_dmodel", "jax", "attn.scores", FWD),
    # k @ q.T for q @ k.T
    _f("transformer", "q_k_swapped", "jax", "attn.scores", FWD),
    # softmax over queries
    _f("transformer", "softmax_wrong_axis", "jax", "attn.probs", FWD),
    # tril(k=1): each query sees the next key
    _f("transformer", "causal_mask_off_by_one", "jax", "attn.probs", FWD),
    _f("transformer", "causal_mask_missing", "jax", "attn.probs", FWD),
    # probabilities masked after the softmax, not renormalised
    _f("transformer", "mask_after_softmax", "jax", "attn.probs", FWD),
    # softmax in float32, cast back
    _f("transformer", "probs_float32", "jax", "attn.probs", FWD),
    _f("transformer", "heads_merged_without_transpose", "jax", "attn.ctx", FWD),
    _f("transformer", "out_weight_transposed", "jax", "attn.out", FWD),
    _f("transformer", "out_bias_missing", "jax", "attn.out", FWD),
    _f("transformer", "residual1_missing", "jax", "res1", FWD),
    # ln1(x) + attn for x + attn
    _f("transformer", "residual1_from_normed", "jax", "res1", FWD),
    # jax.nn.gelu's default approximate=True; torch's F.gelu is erf
    _f("transformer", "gelu_tanh_approximation", "jax", "mlp.act", FWD),
    _f("transformer", "fc2_bias_missing", "jax", "mlp.fc2", FWD),
    _f("transformer", "residual2_missing", "jax", "res2", FWD),
    # custom_vjp softmax: g·p, without the − p·Σ g·p term
    _f("transformer", "softmax_vjp_diagonal_only", "jax", "attn.scores", BWD),
    # custom_vjp layernorm: mean and variance treated as constants in the backward
    _f("transformer", "ln2_vjp_statistics_constant", "jax", "res1", BWD),
    # autograd.Function layernorm: the input gradient forgets the weight
    _f("transformer", "ln2_fn_backward_without_weight", "torch", "res1", BWD),
    # custom_vjp GELU: erf forward, the tanh approximation's derivative backward
    _f("transformer", "gelu_vjp_tanh_derivative", "jax", "mlp.fc1", BWD),
    # -- LSTM (B=2, T=4, 3 → 4, torch gate order i, f, g, o, zero initial state) → head on
    #    the last h; 0.5·Σ_out (mean over rows)
    _f("lstm", "gate_order_i_f_swapped", "jax", "lstm.c1", FWD),
    # TensorFlow's i, g(j), f, o order for torch's i, f, g, o
    _f("lstm", "gate_order_tf_i_g_f_o", "jax", "lstm.c1", FWD),
    # TF's forget_bias=1.0: c1 = f·0 + i·g is unaffected, c2 is the first
    _f("lstm", "forget_bias_plus_one", "jax", "lstm.c2", FWD),
    # sigmoid for tanh on g
    _f("lstm", "candidate_sigmoid", "jax", "lstm.c1", FWD),
    # tanh for sigmoid on o
    _f("lstm", "output_gate_tanh", "jax", "lstm.h1", FWD),
    # h = o·c
    _f("lstm", "h_without_tanh", "jax", "lstm.h1", FWD),
    # one bias (Keras), not two
    _f("lstm", "bias_hh_missing", "jax", "lstm.gates1", FWD),
    _f("lstm", "sequence_reversed", "jax", "lstm.gates1", FWD),
    _f("lstm", "hidden_state_not_carried", "jax", "lstm.gates2", FWD),
    _f("lstm", "cell_state_not_carried", "jax", "lstm.c2", FWD),
    # c kept in float32 (tapped in float32; verdict: float32 in jax)
    _f("lstm", "cell_float32", "jax", "lstm.c1", FWD),
    # head(c) for head(h)
    _f("lstm", "head_reads_cell", "jax", "head", FWD),
    _f("lstm", "loss_sum_over_rows", "jax", "head", BWD),
    # custom_vjp sigmoid: g·s for g·s·(1 − s); the last step's gates are the first cotangent the
    # backward pass gets wrong
    _f("lstm", "sigmoid_vjp_missing_one_minus", "jax", "lstm.gates4", BWD),
    # custom_vjp tanh(c): g·(1 − y) for g·(1 − y²)
    _f("lstm", "cell_tanh_vjp_one_minus_y", "jax", "lstm.c4", BWD),
    # autograd.Function tanh: g·(1 − x²) with x the input, not the output
    _f("lstm", "candidate_tanh_fn_backward_from_input", "torch", "lstm.gates4", BWD),
]

_BY_NAME = {(fault.model, fault.name): fault for fault in FAULTS}
assert len(_BY_NAME) == len(FAULTS), "fault names repeat within a model"


def fault_named(model: str, name: str) -> Fault:
    try:
        return _BY_NAME[(model, name)]
    except KeyError:
        raise ValueError(f"model {model!r} has no fault {name!r}") from None


def _active(model: str, fault: str | None, port: str) -> str | None:
    """The fault's name if it is planted in ``port``, else ``None``."""
    if port not in PORTS:
        raise ValueError(f"port must be one of {PORTS}, got {port!r}")
    if fault is None:
        return None
    return fault if fault_named(model, fault).port == port else None


# -- Parameters and data ------------------------------------------------------------------


def _glorot(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Any:
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def _bias(rng: np.random.Generator, n: int) -> Any:
    return 0.1 * rng.normal(size=n)


def _linear(
    rng: np.random.Generator, params: dict[str, Any], name: str, n_in: int, n_out: int
) -> None:
    params[f"{name}.weight"] = _glorot(rng, (n_out, n_in), n_in, n_out)
    params[f"{name}.bias"] = _bias(rng, n_out)


def _one_hot(rng: np.random.Generator, rows: int, classes: int) -> Any:
    return np.eye(classes)[rng.integers(0, classes, size=rows)]


# Sizes: tiny, so that one locate takes a fraction of a second.
MLP_N, MLP_IN, MLP_H, MLP_OUT = 6, 5, 8, 3
CNN_N, CNN_C, CNN_HW, CNN_K, CNN_OUT = 2, 2, 8, 4, 3
TF_B, TF_T, TF_D, TF_H, TF_F = 2, 4, 8, 2, 16
LSTM_B, LSTM_T, LSTM_I, LSTM_H, LSTM_OUT = 2, 4, 3, 4, 2


def init(model: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, params)`` for ``model``: float64 NumPy arrays drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {}
    if model == "mlp":
        _linear(rng, params, "fc1", MLP_IN, MLP_H)
        _linear(rng, params, "fc2", MLP_H, MLP_H)
        _linear(rng, params, "head", MLP_H, MLP_OUT)
        data = {"x": rng.normal(size=(MLP_N, MLP_IN)), "y": rng.normal(size=(MLP_N, MLP_OUT))}
    elif model == "cnn":
        c, k = CNN_C, CNN_K
        params["conv1.weight"] = _glorot(rng, (k, c, 3, 3), c * 9, k * 9)
        params["conv1.bias"] = _bias(rng, k)
        params["conv2.weight"] = _glorot(rng, (k, k, 3, 3), k * 9, k * 9)
        params["conv2.bias"] = _bias(rng, k)
        _linear(rng, params, "head", k * 2 * 2, CNN_OUT)
        data = {
            "x": rng.normal(size=(CNN_N, c, CNN_HW, CNN_HW)),
            "y": _one_hot(rng, CNN_N, CNN_OUT),
        }
    elif model == "transformer":
        d = TF_D
        for name in ("ln1", "ln2"):
            params[f"{name}.weight"] = 1.0 + 0.1 * rng.normal(size=d)
            params[f"{name}.bias"] = 0.1 * rng.normal(size=d)
        for name in ("q", "k", "v", "o"):
            _linear(rng, params, f"attn.{name}", d, d)
        _linear(rng, params, "mlp.fc1", d, TF_F)
        _linear(rng, params, "mlp.fc2", TF_F, d)
        data = {
            "x": rng.normal(size=(TF_B, TF_T, d)),
            "y": rng.normal(size=(TF_B, TF_T, d)),
        }
    elif model == "lstm":
        h, scale = LSTM_H, 1.0 / math.sqrt(LSTM_H)
        params["lstm.weight_ih"] = rng.uniform(-scale, scale, size=(4 * h, LSTM_I))
        params["lstm.weight_hh"] = rng.uniform(-scale, scale, size=(4 * h, h))
        params["lstm.bias_ih"] = rng.uniform(-scale, scale, size=4 * h)
        params["lstm.bias_hh"] = rng.uniform(-scale, scale, size=4 * h)
        _linear(rng, params, "head", h, LSTM_OUT)
        data = {
            "x": rng.normal(size=(LSTM_B, LSTM_T, LSTM_I)),
            "y": rng.normal(size=(LSTM_B, LSTM_OUT)),
        }
    else:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return data, params


# -- Custom backward passes (forward-correct ops with a wrong derivative) ------------------


@functools.cache
def _torch_functions() -> SimpleNamespace:
    import torch
    import torch.nn.functional as F

    class LinearInputGradUntransposed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, w: Any, b: Any) -> Any:
            ctx.save_for_backward(x, w)
            return F.linear(x, w, b)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            x, w = ctx.saved_tensors
            return g @ w.T, g.T @ x, g.sum(0)  # bug: g @ w

    class LinearWeightGradTransposed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, w: Any, b: Any) -> Any:
            ctx.save_for_backward(x, w)
            return F.linear(x, w, b)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            x, w = ctx.saved_tensors
            return g @ w, x.T @ g, g.sum(0)  # bug: g.T @ x

    class MaxPoolAvgBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return F.max_pool2d(x, 2)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            # bug: the cotangent spread over the window, as average pooling's
            return g.repeat_interleave(2, -1).repeat_interleave(2, -2) / 4

    class LayerNormBackwardWithoutWeight(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, w: Any, b: Any) -> Any:
            mu = x.mean(-1, keepdim=True)
            rstd = torch.rsqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
            xhat = (x - mu) * rstd
            ctx.save_for_backward(xhat, rstd)
            return xhat * w + b

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            xhat, rstd = ctx.saved_tensors
            dxhat = g  # bug: g * w
            dx = rstd * (
                dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True)
            )
            rows = tuple(range(g.dim() - 1))
            return dx, (g * xhat).sum(rows), g.sum(rows)

    class TanhBackwardFromInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return torch.tanh(x)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            (x,) = ctx.saved_tensors
            return g * (1 - x**2)  # bug: 1 − tanh(x)²

    return SimpleNamespace(
        linear_input_grad_untransposed=LinearInputGradUntransposed.apply,
        linear_weight_grad_transposed=LinearWeightGradTransposed.apply,
        maxpool_avg_backward=MaxPoolAvgBackward.apply,
        layer_norm_backward_without_weight=LayerNormBackwardWithoutWeight.apply,
        tanh_backward_from_input=TanhBackwardFromInput.apply,
    )


@functools.cache
def _jax_functions() -> SimpleNamespace:
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def relu_straight_through(x: Any) -> Any:
        return jax.nn.relu(x)

    relu_straight_through.defvjp(
        lambda x: (jax.nn.relu(x), None),
        lambda _, g: (g,),  # bug: g * (x > 0)
    )

    @jax.custom_vjp
    def softmax_diagonal_only(s: Any) -> Any:
        return jax.nn.softmax(s, axis=-1)

    def softmax_fwd(s: Any) -> Any:
        p = jax.nn.softmax(s, axis=-1)
        return p, p

    softmax_diagonal_only.defvjp(
        softmax_fwd,
        lambda p, g: (g * p,),  # bug: p * (g − Σ g·p)
    )

    def _ln(x: Any, w: Any, b: Any) -> Any:
        mu = x.mean(-1, keepdims=True)
        rstd = 1.0 / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
        xhat = (x - mu) * rstd
        return xhat * w + b, (xhat, rstd, w)

    @jax.custom_vjp
    def layer_norm_statistics_constant(x: Any, w: Any, b: Any) -> Any:
        return _ln(x, w, b)[0]

    def ln_bwd(saved: Any, g: Any) -> Any:
        xhat, rstd, w = saved
        rows = tuple(range(g.ndim - 1))
        # bug: mean and variance treated as constants
        return g * w * rstd, (g * xhat).sum(rows), g.sum(rows)

    layer_norm_statistics_constant.defvjp(_ln, ln_bwd)

    @jax.custom_vjp
    def gelu_tanh_derivative(x: Any) -> Any:
        return jax.nn.gelu(x, approximate=False)

    def gelu_bwd(x: Any, g: Any) -> Any:
        # bug: the derivative of the tanh approximation, not of x·Φ(x)
        c = math.sqrt(2.0 / math.pi)
        t = jnp.tanh(c * (x + 0.044715 * x**3))
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)),)

    gelu_tanh_derivative.defvjp(lambda x: (jax.nn.gelu(x, approximate=False), x), gelu_bwd)

    @jax.custom_vjp
    def sigmoid_missing_one_minus(x: Any) -> Any:
        return jax.nn.sigmoid(x)

    def sigmoid_fwd(x: Any) -> Any:
        s = jax.nn.sigmoid(x)
        return s, s

    sigmoid_missing_one_minus.defvjp(sigmoid_fwd, lambda s, g: (g * s,))  # bug: g·s·(1 − s)

    @jax.custom_vjp
    def tanh_one_minus_y(x: Any) -> Any:
        return jnp.tanh(x)

    def tanh_fwd(x: Any) -> Any:
        y = jnp.tanh(x)
        return y, y

    tanh_one_minus_y.defvjp(tanh_fwd, lambda y, g: (g * (1 - y),))  # bug: 1 − y²

    @jax.custom_vjp
    def softmax_xent_missing_mean(z: Any, y: Any) -> Any:
        return -(y * jax.nn.log_softmax(z, axis=-1)).sum(-1).mean()

    def xent_fwd(z: Any, y: Any) -> Any:
        return softmax_xent_missing_mean(z, y), (z, y)

    def xent_bwd(saved: Any, g: Any) -> Any:
        z, y = saved
        # bug: the mean's 1 / N forgotten
        return g * (jax.nn.softmax(z, axis=-1) - y), jnp.zeros_like(y)

    softmax_xent_missing_mean.defvjp(xent_fwd, xent_bwd)

    return SimpleNamespace(
        relu_straight_through=relu_straight_through,
        softmax_diagonal_only=softmax_diagonal_only,
        layer_norm_statistics_constant=layer_norm_statistics_constant,
        gelu_tanh_derivative=gelu_tanh_derivative,
        sigmoid_missing_one_minus=sigmoid_missing_one_minus,
        tanh_one_minus_y=tanh_one_minus_y,
        softmax_xent_missing_mean=softmax_xent_missing_mean,
    )


# -- MLP ----------------------------------------------------------------------------------


def mlp(fault: str | None, port: str) -> Loss:
    """fc1 → ReLU → fc2 (square) → ReLU → head; half the squared error summed over the
    outputs, mean over rows."""
    bug = _active("mlp", fault, port)
    return _mlp_torch(bug) if port == "torch" else _mlp_jax(bug)


def _mlp_torch(bug: str | None) -> Loss:
    import torch.nn.functional as F

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        h = tap("fc1", F.linear(d["x"], p["fc1.weight"], p["fc1.bias"]))
        h = tap("act1", F.relu(h))
        fc2 = F.linear
        if bug == "linear_vjp_input_grad_untransposed":
            fc2 = _torch_functions().linear_input_grad_untransposed
        elif bug == "linear_vjp_weight_grad_transposed":
            fc2 = _torch_functions().linear_weight_grad_transposed
        h = tap("fc2", fc2(h, p["fc2.weight"], p["fc2.bias"]))
        h = tap("act2", F.relu(h))
        out = tap("head", F.linear(h, p["head.weight"], p["head.bias"]))
        if bug == "mse_loss_mean_over_elements":
            return F.mse_loss(out, d["y"])
        return 0.5 * ((out - d["y"]) ** 2).sum(-1).mean()

    return loss


def _mlp_jax(bug: str | None) -> Loss:
    import jax
    import jax.numpy as jnp

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        z = d["x"] @ p["fc1.weight"].T
        if bug != "fc1_bias_missing":
            z = z + p["fc1.bias"]
        h = tap("fc1", z)
        if bug == "act1_leaky_relu":
            h = jax.nn.leaky_relu(h, 0.01)
        elif bug == "relu_vjp_straight_through":
            h = _jax_functions().relu_straight_through(h)
        elif bug == "act1_float32":
            h = jax.nn.relu(h.astype(jnp.float32))
        else:
            h = jax.nn.relu(h)
        h = tap("act1", h)
        w2 = p["fc2.weight"] if bug == "fc2_weight_transposed" else p["fc2.weight"].T
        h = tap("fc2", h @ w2 + p["fc2.bias"])
        h = tap(
            "act2",
            jax.nn.gelu(h, approximate=False) if bug == "act2_gelu_for_relu" else jax.nn.relu(h),
        )
        out = h @ p["head.weight"].T
        if bug != "head_bias_missing":
            out = out + p["head.bias"]
        out = tap("head", out)
        per_row = 0.5 * ((out - d["y"]) ** 2).sum(-1)
        return per_row.sum() if bug == "loss_sum_over_rows" else per_row.mean()

    return loss


# -- CNN ----------------------------------------------------------------------------------


def cnn(fault: str | None, port: str) -> Loss:
    """conv 3×3 pad 1 → ReLU → max-pool 2 → conv 3×3 stride 2 pad 1 → ReLU → flatten (NCHW
    order) → dense; softmax cross-entropy against one-hot rows, mean over rows. torch runs
    NCHW/OIHW; jax NHWC/HWIO from the same arrays, its taps read in NCHW."""
    bug = _active("cnn", fault, port)
    return _cnn_torch(bug) if port == "torch" else _cnn_jax(bug)


def _cnn_torch(bug: str | None) -> Loss:
    import torch.nn.functional as F

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        h = tap("conv1", F.conv2d(d["x"], p["conv1.weight"], p["conv1.bias"], padding=1))
        h = tap("relu1", F.relu(h))
        if bug == "maxpool_fn_avg_backward":
            h = tap("pool1", _torch_functions().maxpool_avg_backward(h))
        else:
            h = tap("pool1", F.max_pool2d(h, 2))
        h = tap("conv2", F.conv2d(h, p["conv2.weight"], p["conv2.bias"], stride=2, padding=1))
        h = tap("relu2", F.relu(h))
        h = tap("flatten", h.flatten(1))
        z = tap("head", F.linear(h, p["head.weight"], p["head.bias"]))
        return -(d["y"] * F.log_softmax(z, -1)).sum(-1).mean()

    return loss


def _cnn_jax(bug: str | None) -> Loss:
    import jax
    import jax.numpy as jnp
    from jax import lax

    def conv(
        x: Any, w: Any, stride: int, padding: Any, axes: tuple[int, ...] = (2, 3, 1, 0)
    ) -> Any:
        return lax.conv_general_dilated(
            x,
            w.transpose(axes),
            (stride, stride),
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    def tap_nchw(name: str, h: Any) -> Any:
        return tap(name, h.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        x = d["x"].transpose(0, 2, 3, 1)
        w1, b1 = p["conv1.weight"], p["conv1.bias"]
        if bug == "conv1_valid_then_pad":
            h = jnp.pad(conv(x, w1, 1, "VALID") + b1, ((0, 0), (1, 1), (1, 1), (0, 0)))
        elif bug == "conv1_kernel_flipped":
            h = conv(x, w1[:, :, ::-1, ::-1], 1, ((1, 1), (1, 1))) + b1
        elif bug == "conv1_bias_missing":
            h = conv(x, w1, 1, ((1, 1), (1, 1)))
        else:
            h = conv(x, w1, 1, ((1, 1), (1, 1))) + b1
        h = tap_nchw("conv1", h)
        h = tap_nchw(
            "relu1", jax.nn.leaky_relu(h, 0.01) if bug == "relu1_leaky" else jax.nn.relu(h)
        )
        window = (1, 2, 2, 1)
        if bug == "pool1_avg_for_max":
            h = lax.reduce_window(h, 0.0, lax.add, window, window, "VALID") / 4
        else:
            h = lax.reduce_window(h, -jnp.inf, lax.max, window, window, "VALID")
        h = tap_nchw("pool1", h)
        w2, b2 = p["conv2.weight"], p["conv2.bias"]
        if bug == "conv2_same_padding_stride2":
            h = conv(h, w2, 2, "SAME") + b2
        elif bug == "conv2_kernel_io_swapped":
            h = conv(h, w2, 2, ((1, 1), (1, 1)), axes=(2, 3, 0, 1)) + b2
        elif bug == "conv2_float32":
            h32 = conv(h.astype(jnp.float32), w2.astype(jnp.float32), 2, ((1, 1), (1, 1)))
            h = h32.astype(h.dtype) + b2
        else:
            h = conv(h, w2, 2, ((1, 1), (1, 1))) + b2
        h = tap_nchw("conv2", h)
        h = tap_nchw("relu2", jax.nn.relu(h))
        rows = h.shape[0]
        if bug == "flatten_nhwc_order":
            h = tap("flatten", h.reshape(rows, -1))
        else:
            h = tap("flatten", h.transpose(0, 3, 1, 2).reshape(rows, -1))
        z = tap("head", h @ p["head.weight"].T + p["head.bias"])
        if bug == "softmax_xent_vjp_missing_mean":
            return _jax_functions().softmax_xent_missing_mean(z, d["y"])
        per_row = -(d["y"] * jax.nn.log_softmax(z, axis=-1)).sum(-1)
        return per_row.sum() if bug == "cross_entropy_sum_over_rows" else per_row.mean()

    return loss


# -- Transformer block --------------------------------------------------------------------


def transformer(fault: str | None, port: str) -> Loss:
    """A pre-layernorm block: x + attn(ln1(x)) (2 heads, causal softmax attention), then
    + mlp(ln2(·)) (erf GELU); half the squared error against ``y``, summed over features,
    mean over (batch, position)."""
    bug = _active("transformer", fault, port)
    return _transformer_torch(bug) if port == "torch" else _transformer_jax(bug)


def _transformer_torch(bug: str | None) -> Loss:
    import torch
    import torch.nn.functional as F

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        x = d["x"]
        b, t, dim = x.shape
        dh = dim // TF_H

        def heads(z: Any) -> Any:
            return z.view(b, t, TF_H, dh).transpose(1, 2)

        h = tap("ln1", F.layer_norm(x, (dim,), p["ln1.weight"], p["ln1.bias"], 1e-5))
        q = tap("attn.q", heads(F.linear(h, p["attn.q.weight"], p["attn.q.bias"])))
        k = tap("attn.k", heads(F.linear(h, p["attn.k.weight"], p["attn.k.bias"])))
        v = tap("attn.v", heads(F.linear(h, p["attn.v.weight"], p["attn.v.bias"])))
        s = tap("attn.scores", q @ k.transpose(-1, -2) / math.sqrt(dh))
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        a = tap("attn.probs", torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1))
        ctx = tap("attn.ctx", (a @ v).transpose(1, 2).reshape(b, t, dim))
        o = tap("attn.out", F.linear(ctx, p["attn.o.weight"], p["attn.o.bias"]))
        x1 = tap("res1", x + o)
        if bug == "ln2_unbiased_variance":
            mu = x1.mean(-1, keepdim=True)
            h2 = (x1 - mu) / torch.sqrt(x1.var(-1, keepdim=True) + 1e-5)
            h2 = h2 * p["ln2.weight"] + p["ln2.bias"]
        elif bug == "ln2_fn_backward_without_weight":
            h2 = _torch_functions().layer_norm_backward_without_weight(
                x1, p["ln2.weight"], p["ln2.bias"]
            )
        else:
            h2 = F.layer_norm(x1, (dim,), p["ln2.weight"], p["ln2.bias"], 1e-5)
        h2 = tap("ln2", h2)
        f = tap("mlp.fc1", F.linear(h2, p["mlp.fc1.weight"], p["mlp.fc1.bias"]))
        f = tap("mlp.act", F.gelu(f))
        f = tap("mlp.fc2", F.linear(f, p["mlp.fc2.weight"], p["mlp.fc2.bias"]))
        out = tap("res2", x1 + f)
        return 0.5 * ((out - d["y"]) ** 2).sum(-1).mean()

    return loss


def _transformer_jax(bug: str | None) -> Loss:
    import jax
    import jax.numpy as jnp

    def layer_norm(x: Any, w: Any, b: Any, eps: float = 1e-5) -> Any:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + eps) * w + b

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        x = d["x"]
        b, t, dim = x.shape
        dh = dim // TF_H

        def heads(z: Any) -> Any:
            if bug == "heads_split_interleaved":
                return z.reshape(b, t, dh, TF_H).transpose(0, 3, 1, 2)
            return z.reshape(b, t, TF_H, dh).transpose(0, 2, 1, 3)

        def dense(z: Any, name: str, transposed: bool = False, bias: bool = True) -> Any:
            w = p[f"{name}.weight"]
            out = z @ (w if transposed else w.T)
            return out + p[f"{name}.bias"] if bias else out

        if bug == "ln1_eps_1e-6":
            h = layer_norm(x, p["ln1.weight"], p["ln1.bias"], 1e-6)
        elif bug == "ln1_weight_bias_swapped":
            h = layer_norm(x, p["ln1.bias"], p["ln1.weight"])
        else:
            h = layer_norm(x, p["ln1.weight"], p["ln1.bias"])
        h = tap("ln1", h)
        q = tap("attn.q", heads(dense(h, "attn.q", transposed=bug == "q_weight_transposed")))
        k = tap("attn.k", heads(dense(h, "attn.k")))
        if bug == "v_uses_k_weight":
            v = heads(h @ p["attn.k.weight"].T + p["attn.v.bias"])
        else:
            v = heads(dense(h, "attn.v"))
        v = tap("attn.v", v)
        s = k @ q.swapaxes(-1, -2) if bug == "q_k_swapped" else q @ k.swapaxes(-1, -2)
        if bug == "scores_scaled_by_d":
            s = s / dh
        elif bug == "scores_scaled_by_sqrt_dmodel":
            s = s / math.sqrt(dim)
        else:
            s = s / math.sqrt(dh)
        s = tap("attn.scores", s)
        causal = jnp.tril(
            jnp.ones((t, t), dtype=bool), k=1 if bug == "causal_mask_off_by_one" else 0
        )
        masked = s if bug == "causal_mask_missing" else jnp.where(causal, s, -jnp.inf)
        if bug == "softmax_wrong_axis":
            a = jax.nn.softmax(masked, axis=-2)
        elif bug == "mask_after_softmax":
            a = jax.nn.softmax(s, axis=-1) * causal
        elif bug == "probs_float32":
            a = jax.nn.softmax(masked.astype(jnp.float32), axis=-1).astype(s.dtype)
        elif bug == "softmax_vjp_diagonal_only":
            a = _jax_functions().softmax_diagonal_only(masked)
        else:
            a = jax.nn.softmax(masked, axis=-1)
        a = tap("attn.probs", a)
        c = a @ v
        if bug == "heads_merged_without_transpose":
            c = c.reshape(b, t, dim)
        else:
            c = c.transpose(0, 2, 1, 3).reshape(b, t, dim)
        c = tap("attn.ctx", c)
        o = tap(
            "attn.out",
            dense(
                c,
                "attn.o",
                transposed=bug == "out_weight_transposed",
                bias=bug != "out_bias_missing",
            ),
        )
        if bug == "residual1_missing":
            x1 = o
        elif bug == "residual1_from_normed":
            x1 = h + o
        else:
            x1 = x + o
        x1 = tap("res1", x1)
        if bug == "ln2_vjp_statistics_constant":
            h2 = _jax_functions().layer_norm_statistics_constant(x1, p["ln2.weight"], p["ln2.bias"])
        else:
            h2 = layer_norm(x1, p["ln2.weight"], p["ln2.bias"])
        h2 = tap("ln2", h2)
        f = tap("mlp.fc1", dense(h2, "mlp.fc1"))
        if bug == "gelu_tanh_approximation":
            f = jax.nn.gelu(f)
        elif bug == "gelu_vjp_tanh_derivative":
            f = _jax_functions().gelu_tanh_derivative(f)
        else:
            f = jax.nn.gelu(f, approximate=False)
        f = tap("mlp.act", f)
        f = tap("mlp.fc2", dense(f, "mlp.fc2", bias=bug != "fc2_bias_missing"))
        out = tap("res2", f if bug == "residual2_missing" else x1 + f)
        return 0.5 * ((out - d["y"]) ** 2).sum(-1).mean()

    return loss


# -- LSTM ---------------------------------------------------------------------------------


def lstm(fault: str | None, port: str) -> Loss:
    """A one-layer LSTM in torch's convention (gates i, f, g, o; two biases; zero initial
    state), unrolled over the batch-first sequence and tapped per step (``lstm.gates1``,
    ``lstm.c1``, ``lstm.h1``, ...), then a dense head on the last ``h``; half the squared
    error summed over outputs, mean over rows."""
    bug = _active("lstm", fault, port)
    return _lstm_torch(bug) if port == "torch" else _lstm_jax(bug)


def _lstm_torch(bug: str | None) -> Loss:
    import torch
    import torch.nn.functional as F

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        x = d["x"]
        rows, steps, _ = x.shape
        h = x.new_zeros((rows, LSTM_H))
        c = x.new_zeros((rows, LSTM_H))
        candidate = (
            _torch_functions().tanh_backward_from_input
            if bug == "candidate_tanh_fn_backward_from_input"
            else torch.tanh
        )
        for step in range(1, steps + 1):
            xt = x[:, step - 1]
            gates = F.linear(xt, p["lstm.weight_ih"], p["lstm.bias_ih"]) + F.linear(
                h, p["lstm.weight_hh"], p["lstm.bias_hh"]
            )
            gates = tap(f"lstm.gates{step}", gates)
            i, f, g, o = gates.chunk(4, dim=-1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), candidate(g), torch.sigmoid(o)
            c = tap(f"lstm.c{step}", f * c + i * g)
            h = tap(f"lstm.h{step}", o * torch.tanh(c))
        out = tap("head", F.linear(h, p["head.weight"], p["head.bias"]))
        return 0.5 * ((out - d["y"]) ** 2).sum(-1).mean()

    return loss


def _lstm_jax(bug: str | None) -> Loss:
    import jax
    import jax.numpy as jnp

    sigmoid, tanh = jax.nn.sigmoid, jnp.tanh
    if bug == "sigmoid_vjp_missing_one_minus":
        sigmoid = _jax_functions().sigmoid_missing_one_minus
    cell_tanh = _jax_functions().tanh_one_minus_y if bug == "cell_tanh_vjp_one_minus_y" else tanh

    def loss(p: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
        x = d["x"]
        if bug == "sequence_reversed":
            x = x[:, ::-1]
        rows, steps, _ = x.shape
        h0 = jnp.zeros((rows, LSTM_H), dtype=x.dtype)
        h, c = h0, h0
        for step in range(1, steps + 1):
            recurrent = h0 if bug == "hidden_state_not_carried" else h
            gates = x[:, step - 1] @ p["lstm.weight_ih"].T + p["lstm.bias_ih"]
            gates = gates + recurrent @ p["lstm.weight_hh"].T
            if bug != "bias_hh_missing":
                gates = gates + p["lstm.bias_hh"]
            gates = tap(f"lstm.gates{step}", gates)
            if bug == "gate_order_i_f_swapped":
                f, i, g, o = jnp.split(gates, 4, axis=-1)
            elif bug == "gate_order_tf_i_g_f_o":
                i, g, f, o = jnp.split(gates, 4, axis=-1)
            else:
                i, f, g, o = jnp.split(gates, 4, axis=-1)
            i = sigmoid(i)
            f = sigmoid(f + 1.0 if bug == "forget_bias_plus_one" else f)
            g = sigmoid(g) if bug == "candidate_sigmoid" else tanh(g)
            o = tanh(o) if bug == "output_gate_tanh" else sigmoid(o)
            c = i * g if bug == "cell_state_not_carried" else f * c + i * g
            if bug == "cell_float32":
                c = c.astype(jnp.float32)
            c = tap(f"lstm.c{step}", c)
            h = tap(f"lstm.h{step}", o * c if bug == "h_without_tanh" else o * cell_tanh(c))
        last = c if bug == "head_reads_cell" else h
        out = tap("head", last @ p["head.weight"].T + p["head.bias"])
        per_row = 0.5 * ((out - d["y"]) ** 2).sum(-1)
        return per_row.sum() if bug == "loss_sum_over_rows" else per_row.mean()

    return loss


BUILDERS: dict[str, Callable[[str | None, str], Loss]] = {
    "mlp": mlp,
    "cnn": cnn,
    "transformer": transformer,
    "lstm": lstm,
}


def problem(
    model: str, fault: str | None = None, seed: int = 0
) -> tuple[gradlab.NativeProblem, dict[str, Any], dict[str, Any]]:
    """``(problem, data, params)``: ``model`` ported to torch and jax, ``fault`` (a name in
    ``FAULTS`` for this model, or ``None``) planted in its port, at parameters and data
    drawn from ``seed``."""
    if model not in BUILDERS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    build = BUILDERS[model]
    name = model if fault is None else f"{model}:{fault}"
    native = gradlab.NativeProblem(name=name, torch=build(fault, "torch"), jax=build(fault, "jax"))
    data, params = init(model, seed)
    return native, data, params
