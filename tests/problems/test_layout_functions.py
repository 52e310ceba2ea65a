"""Layouts as functions: fused QKV, OIHW convolutions and LSTM gate orders, checked by hand.

Each case holds canonical parameters, a torch module that lays them out its own way, and
the conversion written out by hand, both ways, in NumPy. The oracle is plain torch
autograd on the module loaded with the hand-converted weights, its gradients converted
back by hand: a layout function that gradlab differentiates must give the same numbers
with no inverse written. A JAX implementation written on the canonical layout then has to
agree with the torch port through ``gradlab.compare_gradients``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab

D, HEADS, SEQ, BATCH = 4, 2, 3, 2
IN, HID = 3, 2


@dataclass
class Case:
    """One port: canonical parameters, data, the torch side and the hand conversions."""

    params: dict[str, np.ndarray]
    data: dict[str, np.ndarray]
    module: Any  # the torch module
    layout: Callable[[Any, Any], Any]
    loss: Callable[[Any], Any]  # (module output) -> scalar, torch
    by_hand: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    back_by_hand: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    jax_loss: Callable[[Any, Any], Any]  # canonical layout, jax
    call: Callable[[Callable[..., Any], Any, Any], Any]  # (apply, params, data) -> output


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def attention_case() -> Case:
    """torch's nn.MultiheadAttention holds q, k, v fused as in_proj (3d, d), rows = outputs;
    the canonical layout is three (d, d) kernels, (in, out), as JAX writes them."""
    torch = pytest.importorskip("torch")
    rng = _rng(0)
    params = {
        name: rng.standard_normal(shape) / 2
        for name, shape in {
            "q": (D, D),
            "k": (D, D),
            "v": (D, D),
            "bq": (D,),
            "bk": (D,),
            "bv": (D,),
            "out": (D, D),
            "bout": (D,),
        }.items()
    }
    data = {"x": rng.standard_normal((BATCH, SEQ, D))}
    module = torch.nn.MultiheadAttention(D, HEADS, batch_first=True, dtype=torch.float64)

    def layout(p: Any, xp: Any) -> Any:
        return {
            "in_proj_weight": xp.concat(
                [xp.permute_dims(p[name], (1, 0)) for name in ("q", "k", "v")], axis=0
            ),
            "in_proj_bias": xp.concat([p["bq"], p["bk"], p["bv"]], axis=0),
            "out_proj.weight": xp.permute_dims(p["out"], (1, 0)),
            "out_proj.bias": p["bout"],
        }

    def by_hand(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "in_proj_weight": np.vstack([p["q"].T, p["k"].T, p["v"].T]),
            "in_proj_bias": np.hstack([p["bq"], p["bk"], p["bv"]]),
            "out_proj.weight": p["out"].T,
            "out_proj.bias": p["bout"],
        }

    def back_by_hand(g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        w, b = g["in_proj_weight"], g["in_proj_bias"]
        return {
            "q": w[:D].T,
            "k": w[D : 2 * D].T,
            "v": w[2 * D :].T,
            "bq": b[:D],
            "bk": b[D : 2 * D],
            "bv": b[2 * D :],
            "out": g["out_proj.weight"].T,
            "bout": g["out_proj.bias"],
        }

    def jax_loss(p: Any, data: Any) -> Any:
        jnp = pytest.importorskip("jax.numpy")
        x = data["x"]

        def heads(t: Any) -> Any:  # (b, s, d) -> (b, h, s, d/h)
            return jnp.transpose(jnp.reshape(t, (BATCH, SEQ, HEADS, D // HEADS)), (0, 2, 1, 3))

        q, k, v = (heads(x @ p[n] + p["b" + n]) for n in ("q", "k", "v"))
        scores = q @ jnp.swapaxes(k, -1, -2) / np.sqrt(D // HEADS)
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        mixed = jnp.reshape(jnp.transpose(weights @ v, (0, 2, 1, 3)), (BATCH, SEQ, D))
        return jnp.sum(jnp.tanh(mixed @ p["out"] + p["bout"]) ** 2)

    return Case(
        params,
        data,
        module,
        layout,
        lambda out: (torch.tanh(out[0]) ** 2).sum(),
        by_hand,
        back_by_hand,
        jax_loss,
        lambda apply, p, d: apply(p, d["x"], d["x"], d["x"]),
    )


def convolution_case() -> Case:
    """torch's Conv2d weight is OIHW; the canonical kernel is HWIO, as Flax and Keras hold it."""
    torch = pytest.importorskip("torch")
    rng = _rng(1)
    params = {"kernel": rng.standard_normal((3, 2, 2, 3)), "bias": rng.standard_normal(3)}
    data = {"x": rng.standard_normal((2, 2, 5, 4))}  # NCHW, as torch takes it
    module = torch.nn.Conv2d(2, 3, (3, 2), dtype=torch.float64)

    def layout(p: Any, xp: Any) -> Any:
        return {"weight": xp.permute_dims(p["kernel"], (3, 2, 0, 1)), "bias": p["bias"]}

    def jax_loss(p: Any, data: Any) -> Any:
        lax = pytest.importorskip("jax.lax")
        out = lax.conv_general_dilated(
            data["x"], p["kernel"], (1, 1), "VALID", dimension_numbers=("NCHW", "HWIO", "NCHW")
        )
        return ((out + p["bias"][None, :, None, None]) ** 2).sum()

    return Case(
        params,
        data,
        module,
        layout,
        lambda out: (out**2).sum(),
        lambda p: {"weight": p["kernel"].transpose(3, 2, 0, 1), "bias": p["bias"]},
        lambda g: {"kernel": g["weight"].transpose(2, 3, 1, 0), "bias": g["bias"]},
        jax_loss,
        lambda apply, p, d: apply(p, d["x"]),
    )


#: The canonical LSTM is ONNX's: gates stacked i, o, f, c; torch stacks them i, f, g(c), o.
ONNX_GATES, TORCH_GATES = "iofc", "ifco"


def _reorder_rows(array: np.ndarray, order_from: str, order_to: str) -> np.ndarray:
    blocks = {gate: array[i * HID : (i + 1) * HID] for i, gate in enumerate(order_from)}
    return np.concatenate([blocks[gate] for gate in order_to])


def lstm_case() -> Case:
    """An LSTM layer: torch's nn.LSTM (gates i, f, g, o; two biases) from ONNX's layout
    (gates i, o, f, c; one input bias W_b and one recurrent bias R_b)."""
    torch = pytest.importorskip("torch")
    rng = _rng(2)
    params = {
        "W": rng.standard_normal((4 * HID, IN)) / 2,
        "R": rng.standard_normal((4 * HID, HID)) / 2,
        "Wb": rng.standard_normal(4 * HID) / 2,
        "Rb": rng.standard_normal(4 * HID) / 2,
    }
    data = {"x": rng.standard_normal((BATCH, 4, IN))}
    module = torch.nn.LSTM(IN, HID, batch_first=True, dtype=torch.float64)

    def layout(p: Any, xp: Any) -> Any:
        def torch_order(array: Any) -> Any:
            i, o, f, c = (array[n * HID : (n + 1) * HID] for n in range(4))
            return xp.concat([i, f, c, o], axis=0)

        return {
            "weight_ih_l0": torch_order(p["W"]),
            "weight_hh_l0": torch_order(p["R"]),
            "bias_ih_l0": torch_order(p["Wb"]),
            "bias_hh_l0": torch_order(p["Rb"]),
        }

    names = {"W": "weight_ih_l0", "R": "weight_hh_l0", "Wb": "bias_ih_l0", "Rb": "bias_hh_l0"}

    def jax_loss(p: Any, data: Any) -> Any:
        jnp = pytest.importorskip("jax.numpy")

        def sig(z: Any) -> Any:
            return 1 / (1 + jnp.exp(-z))

        h = c = jnp.zeros((BATCH, HID))
        total = 0.0
        for t in range(data["x"].shape[1]):
            gates = data["x"][:, t] @ p["W"].T + p["Wb"] + h @ p["R"].T + p["Rb"]
            i, o, f, g = (gates[:, n * HID : (n + 1) * HID] for n in range(4))
            c = sig(f) * c + sig(i) * jnp.tanh(g)
            h = sig(o) * jnp.tanh(c)
            total = total + jnp.sum(h**2)
        return total

    return Case(
        params,
        data,
        module,
        layout,
        lambda out: (out[0] ** 2).sum(),
        lambda p: {names[k]: _reorder_rows(v, ONNX_GATES, TORCH_GATES) for k, v in p.items()},
        lambda g: {k: _reorder_rows(g[names[k]], TORCH_GATES, ONNX_GATES) for k in names},
        jax_loss,
        lambda apply, p, d: apply(p, d["x"]),
    )


CASES = {"fused-qkv": attention_case, "conv-oihw": convolution_case, "lstm-gates": lstm_case}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    require_engine("torch")
    return CASES[request.param]()


def _problem(case: Case, **extra: Any) -> gradlab.NativeProblem:
    apply, native = gradlab.torch_module(case.module)
    return gradlab.NativeProblem(
        name="port",
        torch=lambda p, d: case.loss(case.call(apply, p, d)),
        layouts={
            "torch": gradlab.Layout(case.layout, shapes={k: v.shape for k, v in native.items()})
        },
        **extra,
    )


def _autograd_by_hand(case: Case) -> tuple[float, dict[str, np.ndarray]]:
    """The oracle: torch autograd on the module loaded with hand-converted weights."""
    import torch

    converted = {
        name: torch.tensor(value, requires_grad=True)
        for name, value in case.by_hand(case.params).items()
    }

    def apply(params: Any, *inputs: Any) -> Any:
        return torch.func.functional_call(case.module, params, inputs)

    data = {name: torch.tensor(value) for name, value in case.data.items()}
    out = case.call(apply, converted, data)
    loss = case.loss(out)
    loss.backward()
    grads = {name: np.asarray(value.grad) for name, value in converted.items()}
    return float(loss.detach()), case.back_by_hand(grads)


def test_a_layout_function_gives_canonical_gradients_with_no_inverse(case: Case) -> None:
    expected_loss, expected = _autograd_by_hand(case)
    loss, grads = gradlab.value_and_grad(_problem(case), case.data, case.params, engine="torch")
    assert float(loss) == pytest.approx(expected_loss, rel=1e-13)
    assert set(grads) == set(case.params)
    for name in case.params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-11, atol=1e-13)


def test_the_torch_port_agrees_with_a_jax_implementation_on_the_canonical_layout(
    case: Case,
) -> None:
    require_engine("jax")
    problem = _problem(case, jax=case.jax_loss)
    report = gradlab.compare_gradients(problem, case.data, case.params, engines="torch,jax")
    assert report.ok, report
    assert report.verdicts["jax"].rho < 1e-12, report


def test_a_wrong_gate_order_is_caught() -> None:
    """The layout's whole point: a port with two gates swapped must not agree."""
    require_engine("torch")
    require_engine("jax")
    case = lstm_case()
    right = case.layout

    def swapped(p: Any, xp: Any) -> Any:
        native = right(p, xp)
        w = native["weight_ih_l0"]  # i, f, g, o: swap f and o
        native["weight_ih_l0"] = xp.concat(
            [w[:HID], w[3 * HID :], w[2 * HID : 3 * HID], w[HID : 2 * HID]], axis=0
        )
        return native

    case.layout = swapped
    report = gradlab.compare_gradients(
        _problem(case, jax=case.jax_loss), case.data, case.params, engines="torch,jax"
    )
    assert not report.ok


def test_tied_weights_get_both_uses_gradient() -> None:
    """An embedding tied to the output layer: one canonical parameter used twice; its
    gradient is the sum of both uses' (checked against the untied gradients, summed)."""
    torch = pytest.importorskip("torch")
    require_engine("torch")
    rng = _rng(4)
    embed = rng.standard_normal((5, 3))
    tokens = np.array([0, 3, 1, 4])

    def untied(p: Any, d: Any) -> Any:
        hidden = p["embed_in"][d["tokens"].long()]
        return (torch.tanh(hidden @ p["embed_out"].T) ** 2).sum()

    tied = gradlab.NativeProblem(
        torch=untied,
        layouts={"torch": lambda p, xp: {"embed_in": p["embed"], "embed_out": p["embed"]}},
    )
    data = {"tokens": tokens}
    _, grads = gradlab.value_and_grad(tied, data, {"embed": embed}, engine="torch")
    both = gradlab.NativeProblem(torch=untied)
    _, apart = gradlab.value_and_grad(
        both, data, {"embed_in": embed, "embed_out": embed}, engine="torch"
    )
    np.testing.assert_allclose(grads["embed"], apart["embed_in"] + apart["embed_out"], rtol=1e-13)


# -- Shapes checked at the boundary, naming the parameter ------------------------------------


def test_a_native_shape_that_differs_is_named_before_any_engine_runs() -> None:
    require_engine("torch")
    case = convolution_case()
    problem = _problem(case)
    wrong = {**case.params, "kernel": case.params["kernel"].transpose(1, 0, 2, 3)}  # HW swapped
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.value_and_grad(problem, case.data, wrong, engine="torch")
    message = str(caught.value)
    assert caught.value.argument == "params"
    assert "'weight'" in message
    assert "(3, 2, 2, 3)" in message
    assert "(3, 2, 3, 2)" in message
    assert "torch layout" in message


def test_a_layout_function_that_fails_is_named_with_the_parameters_it_got() -> None:
    def fused(p: Any, xp: Any) -> Any:
        return {"w": xp.reshape(p["w"], (4, 4))}

    problem = gradlab.NativeProblem(
        numpy=lambda p, d: (p["w"] ** 2).sum(), layouts={"numpy": fused}
    )
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.value_and_grad(problem, {}, {"w": np.ones(6)}, engine="fd")
    message = str(caught.value)
    assert caught.value.argument == "params"
    assert "numpy layout fails" in message
    assert "w (6,)" in message
    assert "reshape" in message


def test_declared_native_names_must_all_be_given() -> None:
    layout = gradlab.Layout(lambda p, xp: {"a": p["w"]}, shapes={"a": (2,), "b": (2,)})
    problem = gradlab.NativeProblem(
        numpy=lambda p, d: (p["a"] ** 2).sum(), layouts={"numpy": layout}
    )
    with pytest.raises(gradlab.ArgumentError, match=r"lacks \['b'\]"):
        gradlab.value_and_grad(problem, {}, {"w": np.ones(2)}, engine="fd")


def test_the_function_sees_the_callers_structure() -> None:
    """Nested canonical parameters arrive nested, in the check and in every engine."""
    seen: list[Any] = []

    def layout(p: Any, xp: Any) -> Any:
        seen.append(type(p["enc"]).__name__)
        return {"w": p["enc"]["w"] * 2}

    problem = gradlab.NativeProblem(
        numpy=lambda p, d: (p["w"] ** 2).sum(), layouts={"numpy": layout}
    )
    loss, grads = gradlab.value_and_grad(
        problem, {}, {"enc": {"w": np.array([1.0, 2.0])}}, engine="fd"
    )
    assert float(loss) == pytest.approx(20.0)
    np.testing.assert_allclose(grads["enc"]["w"], [8.0, 16.0], rtol=1e-6)
    assert set(seen) == {"dict"}


def test_what_is_not_a_layout_is_refused_naming_it() -> None:
    with pytest.raises(gradlab.ArgumentTypeError, match="mapping"):
        gradlab.Layout(3)  # type: ignore[arg-type]
    with pytest.raises(gradlab.ArgumentTypeError, match=r"layouts\['torch'\]"):
        gradlab.NativeProblem(torch=lambda p, d: p, layouts={"torch": 3})  # type: ignore[dict-item]
    with pytest.raises(gradlab.ArgumentError, match="to tie weights, give a function"):
        gradlab.Layout({"a": "w", "b": "w"})
