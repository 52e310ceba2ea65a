"""Engines: dtypes, global framework state, the protocol, and an engine written from the docs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab.engines import AbstractEngine


@pytest.mark.parametrize("problem", [gradlab.Quadratic(), gradlab.LinearRegression()])
def test_results_have_the_requested_dtype(engine: str, dtype: str, problem: Any) -> None:
    data = problem.make_data(20, seed=0)
    init = {
        name: np.zeros(shape)
        for name, shape in problem.param_shapes(problem.check_data(data)).items()
    }
    result = gradlab.fit(
        problem, data, engine=engine, optimizer=gradlab.sgd(1e-2), steps=5, init=init, dtype=dtype
    )
    assert result.losses.dtype == np.dtype(dtype)
    assert all(value.dtype == np.dtype(dtype) for value in result.params.values())
    loss, grads = gradlab.value_and_grad(problem, data, init, engine=engine, dtype=dtype)
    assert loss.dtype == np.dtype(dtype)
    assert all(value.dtype == np.dtype(dtype) for value in grads.values())


def jax_x64_flag() -> bool:
    """JAX's global 64-bit flag, as the user left it."""
    import jax

    # Config.read is untyped in jax's stubs; it is the documented way to read a flag.
    return bool(jax.config.read("jax_enable_x64"))  # type: ignore[no-untyped-call]


def test_jax_float64_is_real_float64_and_global_x64_flag_is_untouched() -> None:
    require_engine("jax")

    before = bool(jax_x64_flag())
    problem = gradlab.Quadratic()
    data = problem.make_data(30, seed=0)
    # 1 + 2^-40 is representable in float64 only: a float32 computation would lose it.
    params = {"w": 1 + 2.0**-40, "b": 0.0}
    _, grads = gradlab.value_and_grad(problem, data, params, engine="jax", dtype="float64")
    _, hand = gradlab.value_and_grad(problem, data, params, engine="numpy", dtype="float64")
    assert grads["w"].dtype == np.float64
    assert gradlab.max_rho(grads, hand) <= 1e-13
    assert bool(jax_x64_flag()) == before
    engine = gradlab.get_engine("jax")
    assert engine.describe()["jax_enable_x64_global"] == before


def test_jax_engine_respects_a_user_who_turned_x64_on() -> None:
    require_engine("jax")
    import jax

    with jax.enable_x64(True):
        result = gradlab.recipes.seed_numpy().run("jax", dtype="float32", steps=3)
        assert result.params["w"].dtype == np.float32
        assert bool(jax_x64_flag())


def test_torch_leaves_grad_mode_default_dtype_and_threads_as_found() -> None:
    require_engine("torch")
    import torch

    threads, default_dtype = torch.get_num_threads(), torch.get_default_dtype()
    with torch.no_grad():
        result = gradlab.recipes.seed_numpy().run("torch", steps=5)
        assert not torch.is_grad_enabled()
    assert result.ok
    assert torch.is_grad_enabled()
    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == default_dtype


def test_torch_engine_is_functional() -> None:
    """No .grad left on anything, and the caller's tensors never start requiring grad."""
    require_engine("torch")
    import torch

    engine = gradlab.get_engine("torch")
    problem = gradlab.Quadratic()
    data = {k: engine.asarray(v, "float64") for k, v in problem.make_data(10).items()}
    params = {
        "w": engine.asarray(np.array(1.0), "float64"),
        "b": engine.asarray(np.array(0.0), "float64"),
    }
    loss, grads = engine.value_and_grad(problem)(params, data)
    assert all(not p.requires_grad and p.grad is None for p in params.values())
    assert not loss.requires_grad
    assert all(isinstance(g, torch.Tensor) and not g.requires_grad for g in grads.values())


def test_torch_gives_zeros_for_a_parameter_the_loss_ignores() -> None:
    require_engine("torch")
    # Declared: b is the problem's parameter even though this loss ignores it (an undeclared
    # parameter the loss never reads is refused instead; see test_boundary.py).
    problem = gradlab.Problem(
        lambda p, d, xp: xp.sum(p["a"] * d["x"]), name="ignores-b", params={"a": (), "b": ()}
    )
    _, grads = gradlab.value_and_grad(
        problem, {"x": [1.0, 2.0]}, {"a": 1.0, "b": 5.0}, engine="torch"
    )
    assert float(grads["a"]) == 3.0
    assert float(grads["b"]) == 0.0


def test_engines_accept_a_device_option_and_refuse_a_bad_one() -> None:
    require_engine("torch")
    assert gradlab.get_engine("torch", device="cpu").describe()["device"] == "cpu"
    with pytest.raises(gradlab.ArgumentError, match="device"):
        gradlab.get_engine("torch", device="no-such-device")


def test_jax_device_option() -> None:
    require_engine("jax")
    assert gradlab.get_engine("jax", device="cpu").describe()["device"].startswith("cpu")
    with pytest.raises(gradlab.ArgumentError, match="device"):
        gradlab.get_engine("jax", device="no-such-platform")


def test_builtin_engines_satisfy_the_protocol(engine: str) -> None:
    instance = gradlab.get_engine(engine)
    assert isinstance(instance, gradlab.GradientEngine)
    assert instance.name == engine
    facts = instance.describe()
    assert {"framework", "device"} <= set(facts)


def test_numpy_engine_refuses_a_problem_without_hand_gradient() -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.sum((p["a"] * d["x"]) ** 2), name="nohand")
    with pytest.raises(gradlab.HandGradientMissing, match="nohand"):
        gradlab.fit(
            problem,
            {"x": [1.0]},
            engine="numpy",
            optimizer=gradlab.sgd(0.1),
            steps=1,
            init={"a": 1.0},
        )


def test_fd_stencils_are_exact_on_polynomials_of_their_order() -> None:
    """Mathematics: a central difference of order k is exact for polynomials of degree ≤ k."""
    cubic = gradlab.Problem(lambda p, d, xp: xp.sum(p["a"] ** 3 + d["c"] * p["a"] ** 2), name="c")
    data, at = {"c": [2.0]}, {"a": 1.5}
    exact = 3 * 1.5**2 + 2 * 2.0 * 1.5
    for order in (2, 4):
        engine = gradlab.get_engine("fd", order=order)
        _, grads = gradlab.value_and_grad(cubic, data, at, engine=engine)
        # order 2 leaves h²·f'''/6 for the cubic term; order 4 is exact up to round-off.
        limit = 1e-9 if order == 4 else 1e-5
        assert abs(float(grads["a"]) - exact) <= limit * abs(exact)
    with pytest.raises(gradlab.ArgumentError, match="order"):
        gradlab.get_engine("fd", order=3)


# --- An engine written from docs/engines.md alone, without touching gradlab. -------------


class ComplexStepEngine(AbstractEngine):
    """The complex-step derivative: f'(p) = Im f(p + ih) / h, exact to round-off.

    It needs nothing but NumPy, and its own array kind is complex128, so it exercises every
    part of the protocol: conversion in and out, a gradient function, the default loop.
    """

    name = "complex-step"
    xp = np

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        return np.array(array, dtype=np.complex128)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.real(np.asarray(array)).astype(np.float64)

    def value_and_grad(self, problem: gradlab.AbstractProblem) -> Any:
        h = 1e-30

        def value_and_grad(params: dict[str, Any], data: dict[str, Any]) -> Any:
            grads = {}
            for name, value in params.items():
                flat = value.reshape(-1)
                grad = np.empty(flat.shape, dtype=np.complex128)
                for i in range(flat.size):
                    moved = flat.copy()
                    moved[i] += 1j * h
                    shifted = dict(params, **{name: moved.reshape(value.shape)})
                    grad[i] = np.imag(problem.loss(shifted, data, np)) / h
                grads[name] = grad.reshape(value.shape)
            return problem.loss(params, data, np), grads

        return value_and_grad


@pytest.fixture
def complex_step() -> Any:
    gradlab.register_engine("complex-step-example", ComplexStepEngine)
    yield "complex-step-example"
    gradlab.unregister_engine("complex-step-example")


def test_a_third_party_engine_works_everywhere_an_engine_does(complex_step: str) -> None:
    assert complex_step in gradlab.available_engines()
    problem = gradlab.LinearRegression()
    data = problem.make_data(40, d=3, seed=2)
    params = {"w": np.array([0.1, -0.2, 0.3]), "b": 0.4}
    _, grads = gradlab.value_and_grad(problem, data, params, engine=complex_step)
    _, hand = gradlab.value_and_grad(problem, data, params, engine="numpy")
    assert gradlab.max_rho(grads, hand) <= 1e-9
    recipe = gradlab.recipes.seed_numpy()
    theirs, ours = recipe.run(complex_step), recipe.run("numpy")
    assert theirs.ok
    assert theirs.engine == "complex-step"
    assert gradlab.max_rho(theirs.params, ours.params) <= 1e-9
