"""Forward mode meeting an operation without a forward-mode derivative (issue 33, item 5).

Each failure is reproduced with the framework's own operation: torch's
``scaled_dot_product_attention`` (its flash kernel on the CPU, for 4-d inputs) and
``grid_sample``, jax's ``custom_vjp`` and ``pure_callback``. Where forward mode refuses,
the error names the operation and what to do; a Hessian-vector product falls back to
reverse-over-reverse where that works, equals a finite-difference oracle (differences of
the reverse-mode gradient, which no fallback touches), and the report says so. The
forward-mode engines' gradients never fall back: they refuse, with the hint.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import ForwardModeUnsupported
from gradlab.engines._forward import refusal

TORCH_HVP_ENGINES = ["torch", "torch-func", "torch-fwd"]
JAX_HVP_ENGINES = ["jax", "jax-fwd"]


def _oracle_hvp(
    problem: gradlab.NativeProblem,
    data: dict[str, np.ndarray],
    params: dict[str, np.ndarray],
    tangent: dict[str, np.ndarray],
    engine: str,
) -> dict[str, np.ndarray]:
    """H·v by fourth-order central differences of ``engine``'s reverse-mode gradient along
    v: truncation O(h⁴) ≈ 1e-12 at h = 1e-3, independent of any HVP code."""
    h = 1e-3

    def gradient(step: float) -> dict[str, np.ndarray]:
        moved = {name: params[name] + step * tangent[name] for name in params}
        _, grads = gradlab.value_and_grad(problem, data, moved, engine=engine)
        return {name: np.asarray(value) for name, value in grads.items()}

    g2, g1, m1, m2 = gradient(2 * h), gradient(h), gradient(-h), gradient(-2 * h)
    return {
        name: (-g2[name] + 8 * g1[name] - 8 * m1[name] + m2[name]) / (12 * h) for name in params
    }


# -- Reading the frameworks' messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "framework", "operation", "reverse"),
    [
        (
            "Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu that "
            "does not support it because it has not been implemented yet.",
            "torch",
            "_scaled_dot_product_flash_attention_for_cpu",
            True,
        ),
        (
            "You must implement the jvp function for custom autograd.Function to use it with "
            "forward mode AD.",
            "torch",
            "a torch.autograd.Function without a jvp",
            True,
        ),
        (
            "can't apply forward-mode autodiff (jvp) to a custom_vjp function.",
            "jax",
            "a jax.custom_vjp function",
            True,
        ),
        (
            "Pure callbacks do not support JVP. Please use `jax.custom_jvp` to use callbacks "
            "while taking gradients.",
            "jax",
            "jax.pure_callback",
            False,
        ),
    ],
)
def test_a_refusal_is_read_from_the_framework_s_message(
    message: str, framework: str, operation: str, reverse: bool
) -> None:
    refused = refusal(RuntimeError(message))
    assert refused is not None
    assert (refused.framework, refused.operation, refused.reverse) == (
        framework,
        operation,
        reverse,
    )


@pytest.mark.parametrize(
    "message",
    [
        "derivative for aten::_cdist_backward is not implemented",  # reverse mode's, not forward
        "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x4)",
        "Reverse-mode differentiation does not work for lax.while_loop",
    ],
)
def test_other_errors_are_no_refusal(message: str) -> None:
    assert refusal(RuntimeError(message)) is None


# -- torch: scaled_dot_product_attention (no forward mode, no double backward) ----------------


def _attention(flash: bool) -> Callable[[Any, Any], Any]:
    """A one-head attention loss through ``scaled_dot_product_attention``; 4-d inputs, so
    that torch picks its flash kernel on the CPU. ``flash=False`` runs it on the math
    backend, as the hint says."""
    torch = pytest.importorskip("torch")
    attention = pytest.importorskip("torch.nn.attention")

    def backend() -> Any:
        if flash:
            return contextlib.nullcontext()
        return attention.sdpa_kernel(attention.SDPBackend.MATH)

    def loss(params: Any, data: Any) -> Any:
        x = data["x"]
        q, k, v = (x @ params[name] for name in ("wq", "wk", "wv"))
        with backend():
            out = torch.nn.functional.scaled_dot_product_attention(
                q[:, None], k[:, None], v[:, None]
            )
        return (out**2).mean()

    return loss


def _numpy_attention(params: Any, data: Any) -> Any:
    """The same loss in NumPy (softmax(QKᵀ/√d)V), for ``fd``."""
    x = data["x"]
    q, k, v = (x @ params[name] for name in ("wq", "wk", "wv"))
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.mean((weights @ v) ** 2)


ATTENTION_DATA = {"x": np.random.default_rng(0).normal(size=(2, 3, 4))}
ATTENTION_PARAMS = {
    name: 0.5 * np.random.default_rng(i).normal(size=(4, 4))
    for i, name in enumerate(("wq", "wk", "wv"))
}
ATTENTION_TANGENT = {
    name: np.random.default_rng(10 + i).normal(size=(4, 4))
    for i, name in enumerate(("wq", "wk", "wv"))
}


@pytest.mark.parametrize("engine", TORCH_HVP_ENGINES)
def test_sdpa_hvp_names_the_kernel_and_the_math_backend(engine: str) -> None:
    require_engine(engine)
    problem = gradlab.NativeProblem(name="attention", torch=_attention(flash=True))
    with pytest.raises(ForwardModeUnsupported) as caught:
        gradlab.compare_hessians(
            problem,
            ATTENTION_DATA,
            ATTENTION_PARAMS,
            tangent=ATTENTION_TANGENT,
            engines=[engine],
            reference=engine,
        )
    error = caught.value
    assert isinstance(error, gradlab.NotSupported)
    assert error.operation == "_scaled_dot_product_flash_attention_for_cpu"
    message = str(error)
    assert "_scaled_dot_product_flash_attention_for_cpu" in message
    assert "sdpa_kernel(torch.nn.attention.SDPBackend.MATH)" in message
    # Reverse-over-reverse was tried: the flash kernel has no double backward either.
    assert "reverse-over-reverse (torch.autograd.grad twice) failed too" in message
    # Where the user's code called it: this file, the loss, the line.
    assert error.where is not None
    assert "test_forward_hints.py" in error.where
    assert "scaled_dot_product_attention" in error.where
    # It crosses a process boundary whole (data-parallel ranks, pytest-xdist).
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ForwardModeUnsupported
    assert again.operation == error.operation


def test_sdpa_forward_gradient_refuses_with_the_hint_rather_than_reverse_mode() -> None:
    require_engine("torch-fwd")
    problem = gradlab.NativeProblem(name="attention", torch=_attention(flash=True))
    with pytest.raises(ForwardModeUnsupported, match=r"torch\.func\.jacfwd") as caught:
        gradlab.compare_gradients(
            problem, ATTENTION_DATA, ATTENTION_PARAMS, engines=["torch-fwd"], reference="torch-fwd"
        )
    message = str(caught.value)
    assert "_scaled_dot_product_flash_attention_for_cpu" in message
    assert "SDPBackend.MATH" in message
    assert "use engine 'torch'" in message


@pytest.mark.parametrize("engine", TORCH_HVP_ENGINES)
def test_following_the_hint_gives_the_hvp(engine: str) -> None:
    """On the math backend the HVP runs forward-over-reverse, as usual (no note), and is
    the HVP of the flash kernel's loss: differences of its reverse-mode gradient."""
    require_engine(engine)
    flash = gradlab.NativeProblem(name="attention", torch=_attention(flash=True))
    math = gradlab.NativeProblem(name="attention", torch=_attention(flash=False))
    report = gradlab.compare_hessians(
        math,
        ATTENTION_DATA,
        ATTENTION_PARAMS,
        tangent=ATTENTION_TANGENT,
        engines=[engine],
        reference=engine,
    )
    assert report.notes == {}
    oracle = _oracle_hvp(flash, ATTENTION_DATA, ATTENTION_PARAMS, ATTENTION_TANGENT, "torch")
    assert gradlab.max_rho(report.values[engine], oracle) < 1e-9


def test_a_default_comparison_skips_the_engine_with_the_reason() -> None:
    """An engine of the default list that refuses is skipped, as one that is not installed
    is: the report runs, and says why."""
    require_engine("torch")
    problem = gradlab.NativeProblem(
        name="attention", torch=_attention(flash=True), numpy=_numpy_attention
    )
    report = gradlab.compare_hessians(
        problem, ATTENTION_DATA, ATTENTION_PARAMS, tangent=ATTENTION_TANGENT
    )
    assert report.reference == "fd"
    assert "torch" not in report.engines
    assert "_scaled_dot_product_flash_attention_for_cpu" in report.skipped["torch"]
    assert "SDPBackend.MATH" in str(report)


# -- torch: grid_sample (no forward mode; reverse-over-reverse works) -------------------------


def _warp(params: Any, data: Any) -> Any:
    """A spatial-transformer loss: an image sampled (bilinearly) at a learnt warp."""
    import torch

    grid = torch.tanh(data["grid"] @ params["warp"])
    sampled = torch.nn.functional.grid_sample(
        data["image"] * params["gain"], grid, align_corners=False
    )
    return (sampled**2).mean()


_rng = np.random.default_rng(3)
WARP_DATA = {"image": _rng.normal(size=(2, 1, 4, 4)), "grid": _rng.normal(size=(2, 3, 3, 2))}
WARP_PARAMS = {"warp": _rng.normal(size=(2, 2)), "gain": np.array(1.3)}
WARP_TANGENT = {"warp": _rng.normal(size=(2, 2)), "gain": np.array(0.7)}
WARP_NOTE = "HVP by reverse-over-reverse (forward mode unsupported by grid_sampler_2d)"


@pytest.mark.parametrize("engine", TORCH_HVP_ENGINES)
def test_grid_sample_hvp_falls_back_to_reverse_over_reverse_and_says_so(engine: str) -> None:
    require_engine(engine)
    problem = gradlab.NativeProblem(name="warp", torch=_warp)
    report = gradlab.compare_hessians(
        problem, WARP_DATA, WARP_PARAMS, tangent=WARP_TANGENT, engines=[engine], reference=engine
    )
    oracle = _oracle_hvp(problem, WARP_DATA, WARP_PARAMS, WARP_TANGENT, "torch")
    assert gradlab.max_rho(report.values[engine], oracle) < 1e-9
    # Never silent: in the report, its table, and its JSON (which loads back with it).
    assert report.notes == {engine: WARP_NOTE}
    assert f"note: {engine}: {WARP_NOTE}" in str(report)
    assert report.to_dict()["notes"] == {engine: WARP_NOTE}
    assert gradlab.GradientReport.from_json(report.to_json()).notes == report.notes


def test_a_hessian_built_by_the_fallback_says_so_too() -> None:
    require_engine("torch")
    problem = gradlab.NativeProblem(name="warp", torch=_warp)
    report = gradlab.compare_hessians(
        problem, WARP_DATA, WARP_PARAMS, engines=["torch"], reference="torch"
    )
    hessian = report.values["torch"]["hessian"]
    np.testing.assert_allclose(hessian, hessian.T, rtol=0, atol=1e-12)
    assert report.notes == {"torch": WARP_NOTE}
    assert "note" in report.to_frame().columns


def test_grid_sample_forward_gradient_refuses_rather_than_falls_back() -> None:
    require_engine("torch-fwd")
    problem = gradlab.NativeProblem(name="warp", torch=_warp)
    with pytest.raises(ForwardModeUnsupported) as caught:
        gradlab.compare_gradients(
            problem, WARP_DATA, WARP_PARAMS, engines=["torch-fwd"], reference="torch-fwd"
        )
    assert caught.value.operation == "grid_sampler_2d"
    assert "use engine 'torch'" in str(caught.value)


def test_a_loss_forward_mode_handles_gets_no_note() -> None:
    require_engine("torch")
    problem = gradlab.LinearRegression()
    data = problem.make_data(20, d=2)
    point = {"w": np.array([1.0, -1.0]), "b": np.array(0.5)}
    report = gradlab.compare_hessians(
        problem, data, point, tangent=point, engines=["torch", "numpy"]
    )
    assert report.ok
    assert report.notes == {}
    assert "note:" not in str(report)
    assert "note" not in report.to_frame().columns


# -- jax: custom_vjp ---------------------------------------------------------------------------


def _nested_custom_vjp() -> Callable[[Any, Any], Any]:
    """A loss through a ``jax.custom_vjp`` sine whose backward pass calls a ``custom_vjp``
    cosine: jax's forward-over-reverse meets the cosine under its JVP and refuses; its
    reverse-over-reverse differentiates the backward pass in reverse mode, which works."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")

    # jax.custom_vjp called rather than used as a decorator, which mypy calls untyped.
    cosine = jax.custom_vjp(jnp.cos)
    cosine.defvjp(lambda x: (jnp.cos(x), x), lambda x, g: (-jnp.sin(x) * g,))
    sine = jax.custom_vjp(jnp.sin)
    sine.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (cosine(x) * g,))

    def loss(params: Any, data: Any) -> Any:
        return jnp.mean(sine(data["x"] @ params["w"]) ** 2)

    return loss


SINE_DATA = {"x": np.random.default_rng(4).normal(size=(6, 3))}
SINE_PARAMS = {"w": np.array([0.3, -0.8, 1.1])}
SINE_TANGENT = {"w": np.array([1.0, 0.5, -2.0])}


def _sine_hessian_vector() -> np.ndarray:
    """H·v of mean(sin(Xw)²) by hand: ∇ = Xᵀ sin(2Xw) / n, H = Xᵀ diag(2 cos(2Xw)) X / n."""
    x, w, v = SINE_DATA["x"], SINE_PARAMS["w"], SINE_TANGENT["w"]
    z = x @ w
    result: np.ndarray = x.T @ (2 * np.cos(2 * z) * (x @ v)) / len(z)
    return result


@pytest.mark.parametrize("engine", JAX_HVP_ENGINES)
def test_custom_vjp_hvp_falls_back_to_reverse_over_reverse_and_says_so(engine: str) -> None:
    require_engine(engine)
    problem = gradlab.NativeProblem(name="sines", jax=_nested_custom_vjp())
    report = gradlab.compare_hessians(
        problem, SINE_DATA, SINE_PARAMS, tangent=SINE_TANGENT, engines=[engine], reference=engine
    )
    assert gradlab.max_rho(report.values[engine], {"w": _sine_hessian_vector()}) < 1e-12
    oracle = _oracle_hvp(problem, SINE_DATA, SINE_PARAMS, SINE_TANGENT, "jax")
    assert gradlab.max_rho(report.values[engine], oracle) < 1e-9
    note = "HVP by reverse-over-reverse (forward mode unsupported by a jax.custom_vjp function)"
    assert report.notes == {engine: note}
    assert f"note: {engine}: {note}" in str(report)
    assert gradlab.GradientReport.from_json(report.to_json()).notes == report.notes


def test_custom_vjp_forward_gradient_refuses_with_the_hint() -> None:
    require_engine("jax-fwd")
    problem = gradlab.NativeProblem(name="sines", jax=_nested_custom_vjp())
    with pytest.raises(ForwardModeUnsupported, match=r"jax\.jacfwd") as caught:
        gradlab.compare_gradients(
            problem, SINE_DATA, SINE_PARAMS, engines=["jax-fwd"], reference="jax-fwd"
        )
    error = caught.value
    assert error.operation == "a jax.custom_vjp function"
    assert "jax.custom_jvp" in str(error)
    assert "use engine 'jax'" in str(error)
    assert error.where is not None
    assert "test_forward_hints.py" in error.where


def test_a_callback_refuses_both_modes_and_no_reverse_engine_is_offered() -> None:
    """``jax.pure_callback`` has no derivative in either mode: the HVP does not fall back,
    and the forward engine's error does not send the user to the reverse one."""
    require_engine("jax-fwd")
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")

    def loss(params: Any, data: Any) -> Any:
        shape = jax.ShapeDtypeStruct(params["w"].shape, params["w"].dtype)
        return jnp.sum(jax.pure_callback(np.sin, shape, params["w"]))

    problem = gradlab.NativeProblem(name="callback", jax=loss)
    with pytest.raises(ForwardModeUnsupported) as caught:
        gradlab.compare_gradients(
            problem, SINE_DATA, SINE_PARAMS, engines=["jax-fwd"], reference="jax-fwd"
        )
    message = str(caught.value)
    assert "jax.pure_callback" in message
    assert "forward or reverse mode" in message
    assert "engine 'jax'" not in message
    with pytest.raises(ForwardModeUnsupported, match=r"jax\.pure_callback") as hvp:
        gradlab.compare_hessians(
            problem, SINE_DATA, SINE_PARAMS, tangent=SINE_TANGENT, engines=["jax"], reference="jax"
        )
    assert "reverse-over-reverse" not in str(hvp.value)


# -- torch: a custom autograd.Function without jvp ----------------------------------------------


def _cube_function(style: str) -> Any:
    """x³ as a ``torch.autograd.Function`` with a backward and no jvp: ``"functorch"`` style
    (``setup_context``), or the old style (``forward(ctx, x)``), which ``torch.func``
    refuses in any mode while ``torch.autograd`` differentiates it."""
    import torch

    if style == "functorch":

        class Cube(torch.autograd.Function):
            @staticmethod
            def forward(x: Any) -> Any:
                return x**3

            @staticmethod
            def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
                ctx.save_for_backward(inputs[0])

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:
                (x,) = ctx.saved_tensors
                return 3 * x**2 * grad

        return Cube

    class OldCube(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (x,) = ctx.saved_tensors
            return 3 * x**2 * grad

    return OldCube


@pytest.mark.parametrize(
    ("style", "operation"),
    [
        ("functorch", "a torch.autograd.Function without a jvp"),
        ("old", "a torch.autograd.Function without setup_context"),
    ],
)
def test_an_autograd_function_without_jvp_falls_back(style: str, operation: str) -> None:
    require_engine("torch")
    cube = _cube_function(style)

    def loss(params: Any, data: Any) -> Any:
        return cube.apply(data["x"] * params["w"]).mean()

    problem = gradlab.NativeProblem(name="cube", torch=loss)
    data, point, tangent = (
        {"x": np.array([0.5, -1.0, 2.0])},
        {"w": np.array(0.7)},
        {"w": np.array(1.5)},
    )
    report = gradlab.compare_hessians(
        problem, data, point, tangent=tangent, engines=["torch"], reference="torch"
    )
    # L = mean((x w)³): ∂²L/∂w² = 6 w mean(x³).
    exact = 6 * 0.7 * np.mean(data["x"] ** 3) * 1.5
    assert gradlab.max_rho(report.values["torch"], {"w": np.array(exact)}) < 1e-12
    assert report.notes == {
        "torch": f"HVP by reverse-over-reverse (forward mode unsupported by {operation})"
    }
