"""Helpers shared by the tests."""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

import gradlab
from gradlab.engines import _registry

BUILTIN_ENGINES = ("numpy", "torch", "jax", "fd")
AUTODIFF_ENGINES = ("torch", "jax")
#: Engines installed as plug-ins (the ``gradlab.engines`` entry point), e.g.
#: examples/gradlab-autograd: when present, they run the same agreement tests as the built-ins.
PLUGIN_ENGINES = tuple(
    name
    for name in gradlab.available_engines()
    if _registry._REGISTRY[name].source == "entry point"
)


def default_engines() -> tuple[str, ...]:
    """The installed engines a comparison runs when none are named (opt-in ones left out)."""
    from gradlab.engines._registry import default_engines as defaults

    installed = gradlab.available_engines()
    return tuple(name for name in defaults() if name in installed)


#: Examples per property test where one example is expensive: jax compiles anew for every
#: shape drawn (GMM and MLP draw many), and fd Hessians cost elements² loss evaluations.
#: The deep profile (HYPOTHESIS_PROFILE=deep) lifts these caps.
#: (gmm and mlp at 8 until the suite's time was cut in issue 34.)
EXPENSIVE = {"gmm": 5, "mlp": 5, "log_sum_exp": 15, "rosenbrock": 15, "softmax_regression": 20}


#: Engines that compile anew for every shape a property draws: each example costs a compile.
COMPILES_PER_SHAPE = frozenset({"jax", "jax-fwd", "torch-compile", "mlx", "tensorflow-xla"})
#: Examples per property on those engines: each costs 0.1 to 1 s of compiling on jax (a
#: profile of the GMM Hessian-vector products: compiling and tracing, 4.5 of 8 s), and the
#: same properties run at every draw on the eager engines. Ten until the suite reached
#: 11 minutes against its 8 (issue 34); the deep profile draws them all.
COMPILED_EXAMPLES = 3
#: Hypothesis' deep profile (HYPOTHESIS_PROFILE=deep): every property at 400 examples, no caps.
DEEP_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
#: The project's thorough run: the deep profile, or GRADLAB_DEEP=1 (the full sweeps alone, at
#: the loaded profile's examples).
DEEP = DEEP_PROFILE or os.environ.get("GRADLAB_DEEP") == "1"


def deep(*values: Any) -> Any:
    """``values`` as parameters that run only in the thorough run (``DEEP``):
    for a parametrization on an engine whose every case compiles for seconds (torch-compile,
    1 to 15 s each with a cold cache), where its own conformance class and fast-path tests
    cover it in every run. Skipped otherwise, with the reason in the summary."""
    mark = pytest.mark.skipif(not DEEP, reason="compiles for seconds: runs with GRADLAB_DEEP=1")
    return [pytest.param(value, marks=mark) for value in values]


def examples(problem: str, *, fd_hessian: bool = False, engine: str = "") -> settings:
    """The loaded profile's settings, with fewer examples for an expensive problem (a
    quarter as many again for a full Hessian by finite differences: elements² loss
    evaluations, seconds each for GMM and MLP), and at most ``COMPILED_EXAMPLES`` on an
    engine that compiles for every shape drawn."""
    if DEEP_PROFILE:
        return settings()
    cap = EXPENSIVE.get(problem)
    if engine in COMPILES_PER_SHAPE:
        cap = min(cap or COMPILED_EXAMPLES, COMPILED_EXAMPLES)
    if cap is None:
        return settings()
    if fd_hessian:
        cap = max(1, cap // 4)
    return settings(max_examples=min(cap, settings().max_examples))


def fewer(problem: str, *, fd_hessian: bool = False, engine: str = "") -> settings:
    """Half the default examples (the deep profile: all), for the properties that other
    tests cover at more points: float32 against the float64 truth, symmetry and linearity.
    Keeps the suite's time."""
    base = examples(problem, fd_hessian=fd_hessian, engine=engine)
    if DEEP_PROFILE:
        return base
    return settings(base, max_examples=min(5, base.max_examples))


def first_installed(names: tuple[str, ...]) -> str:
    """The first of ``names`` that is installed; skip the test when none is."""
    installed = gradlab.available_engines()
    for name in names:
        if name in installed:
            return name
    pytest.skip(f"none of {names} is installed")


def require_engine(name: str) -> None:
    """Skip the test when the engine's framework is not installed."""
    if name not in gradlab.available_engines():
        pytest.skip(f"engine {name!r} is not installed")


def relative_error(a: float | np.ndarray, b: float | np.ndarray) -> float:
    """|a − b| / |b|, for scalars (0-d arrays included)."""
    return abs(float(a) - float(b)) / abs(float(b))


class PlantedBug(gradlab.engines.NumpyEngine):
    """The numpy engine with one gradient element scaled: a bug planted where we know it.

    Args:
        name: The engine's name.
        param: The parameter whose gradient is wrong.
        index: Which element of it.
        factor: What the element is multiplied by.
    """

    def __init__(
        self,
        name: str = "planted",
        param: str = "w",
        index: tuple[int, ...] = (),
        factor: float = 1.01,
    ) -> None:
        self.name = name
        self.param, self.index, self.factor = param, index, factor

    def value_and_grad(self, problem: Any) -> Any:
        inner = super().value_and_grad(problem)

        def value_and_grad(params: Any, data: Any) -> Any:
            loss, grads = inner(params, data)
            wrong = np.array(grads[self.param], copy=True)
            wrong[self.index] *= self.factor
            return loss, {**grads, self.param: wrong}

        return value_and_grad


class RequiredMembersOnly:
    """An engine with only the protocol's required members, not an AbstractEngine: no
    ``hvp``, ``objective`` or ``block``, so every optional member's fallback is exercised."""

    name = "required-members-only"
    xp = np

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        return np.array(array, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def value_and_grad(self, problem: Any) -> Any:
        return problem.hand_value_and_grad

    def run(self, step: Any, carry: Any, data: Any, steps: int) -> Any:
        return gradlab.engines.NumpyEngine().run(step, carry, data, steps)

    def describe(self) -> dict[str, Any]:
        return {}


def cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``gradlab ARGS`` run by ``gradlab.cli.main`` in this process, argparse's refusals (which
    exit) included: the status, stdout and stderr. Spares a fresh interpreter's imports (0.5
    to 3 s a command); ``tests/test_cli.py`` runs the command as a user does as well, in a
    subprocess."""
    from gradlab.cli import main

    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return status, out.out, out.err


def free_port() -> int:
    """A TCP port on loopback that is free now (for a launch's rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def recipe_fits(engines: Any, steps: int = 50, **options: Any) -> gradlab.FitComparison:
    """The seed recipe's fit, compared over ``engines`` for ``steps`` steps."""
    from gradlab import recipes

    recipe = recipes.seed_numpy()
    return gradlab.compare_fits(
        recipe.problem,
        recipe.data,
        optimizer=recipe.optimizer,
        steps=steps,
        init=recipe.init,
        engines=engines,
        **options,
    )


def installed(names: tuple[str, ...]) -> list[str]:
    """The engines among ``names`` that are installed, in order."""
    available = gradlab.available_engines()
    return [name for name in names if name in available]


# -- A vector-valued function with a hand-derived Jacobian (derivatives/, comparison/) ------


def tanh_layer(params: Any, data: Any, xp: Any) -> Any:
    """A vector-valued function: tanh(A·x + c), m outputs of d inputs."""
    return xp.tanh(data["A"] @ params["x"] + params["c"])


def tanh_layer_jacobian(params: Any, data: Any) -> Any:
    """By hand: ∂/∂x = diag(1 − t²)·A, ∂/∂c = (1 − t²) (c is a scalar)."""
    t = np.tanh(data["A"] @ params["x"] + params["c"])
    return {"x": (1 - t**2)[:, None] * data["A"], "c": 1 - t**2}


TANH = gradlab.Problem(tanh_layer, jacobian=tanh_layer_jacobian, name="tanh_layer")


def tanh_case(m: int, d: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Data for ``m`` outputs of ``d`` inputs, and a point, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return {"A": rng.normal(size=(m, d))}, {"x": rng.normal(size=d), "c": np.array(0.3)}
