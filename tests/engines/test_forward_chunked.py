"""Forward-mode gradients and Jacobians in chunks of the one-hot basis.

``torch-fwd`` and ``jax-fwd`` take one JVP per parameter element. They push the basis
through in chunks (``gradlab.engines._forward.chunk_size``) so that memory stays bounded
whatever the number of parameters. Here the chunks are forced small (a chunk of 1, one that
does not divide n, one for all) and the results checked against math: LogSumExp's gradient
is softmax, tanh(A·x + c)'s Jacobian is diag(1 − t²)·A, a GMM's gradient is its hand
derivation and central differences. A large n runs in a subprocess whose peak memory is
far below the n×n basis that ``jacfwd`` would make.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import TANH, require_engine, tanh_case, tanh_layer_jacobian

import gradlab
from gradlab.engines import _forward

FORWARD_ENGINES = ["jax-fwd", "torch-fwd"]

#: Budgets no other test uses: jax-fwd's compiled gradient takes the budget as a static
#: argument, so a new one traces it again and the forced chunk below is seen.
_BUDGETS = itertools.count(12_345)


@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], list[int]]:
    """Force the chunk size: ``force(c)`` makes every forward-mode Jacobian push ``c``
    one-hot tangents at a time (at most all of them), and returns the list in which each
    call's parameter count is recorded."""
    counts: list[int] = []

    def force(size: int) -> list[int]:
        def chunk_size(count: int, itemsize: int, intermediates: int, budget: int) -> int:
            counts.append(count)
            return max(1, min(count, size))

        for framework in ("jax", "torch"):
            monkeypatch.setitem(_forward.CHUNK_BYTES, framework, next(_BUDGETS))
        monkeypatch.setattr(_forward, "chunk_size", chunk_size)
        return counts

    return force


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - np.max(x))
    result: np.ndarray = shifted / np.sum(shifted)
    return result


def _lse(x: np.ndarray) -> float:
    return float(np.max(x) + np.log(np.sum(np.exp(x - np.max(x)))))


TOLERANCE = {"float32": 1e-6, "float64": 1e-14}


# -- The policy --------------------------------------------------------------------------------


def test_chunk_size_keeps_a_chunk_within_the_budget() -> None:
    budget = 1 << 20
    for count, itemsize, intermediates in [(100, 8, 2400), (5000, 4, 60_000), (777, 8, 0)]:
        chunk = _forward.chunk_size(count, itemsize, intermediates, budget)
        per_jvp = count * itemsize + intermediates
        assert 1 <= chunk <= count
        assert chunk * per_jvp <= budget or chunk == 1
        # The largest such chunk: one more JVP would not fit, unless all are in.
        assert chunk == count or (chunk + 1) * per_jvp > budget


def test_chunk_size_is_one_chunk_when_the_basis_fits_and_one_jvp_at_the_least() -> None:
    assert _forward.chunk_size(10, 8, 100, 1 << 20) == 10  # 10 · 180 bytes: one chunk
    assert _forward.chunk_size(10, 8, 0, 3 * 80) == 3  # 80 bytes per JVP: 3 fit
    assert _forward.chunk_size(10**6, 8, 10**9, 1 << 20) == 1  # one JVP is over budget
    assert _forward.chunk_size(0, 8, 0, 1 << 20) == 1  # no parameters: nothing to chunk


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_the_budgets_chunk_forty_thousand_parameters_and_not_a_hundred(framework: str) -> None:
    # LogSumExp in float64: a JVP holds x's tangent and two intermediates of x's shape.
    budget = _forward.CHUNK_BYTES[framework]
    assert _forward.chunk_size(100, 8, 2 * 100 * 8, budget) == 100
    chunk = _forward.chunk_size(40_000, 8, 2 * 40_000 * 8, budget)
    assert 1 <= chunk < 40_000
    assert chunk * 3 * 40_000 * 8 <= 256 << 20  # of a basis of 12.8 GB


# -- Gradients in chunks -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", FORWARD_ENGINES)
@pytest.mark.parametrize(
    ("size", "dtype"),
    # Chunks of 3 over 37 = 12·3 + 1 elements: the last holds one. Chunks of 1: 37 of them.
    [(3, "float32"), (3, "float64"), (1, "float64")],
)
def test_log_sum_exp_gradient_in_chunks_is_softmax(
    engine: str, dtype: str, size: int, chunks: Callable[[int], list[int]]
) -> None:
    require_engine(engine)
    counts = chunks(size)
    n = 37
    x = np.random.default_rng(n).normal(size=n) * 3
    value, grads = gradlab.value_and_grad(
        gradlab.LogSumExp(size=n), {}, {"x": x}, engine=engine, dtype=dtype
    )
    assert counts
    assert set(counts) == {n}
    assert grads["x"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(grads["x"], _softmax(x), rtol=0, atol=TOLERANCE[dtype])
    assert abs(float(value) - _lse(x)) <= 10 * TOLERANCE[dtype] * abs(_lse(x))


@pytest.mark.parametrize("engine", FORWARD_ENGINES)
def test_one_parameter_in_chunks_of_one(engine: str, chunks: Callable[[int], list[int]]) -> None:
    require_engine(engine)
    chunks(1)
    value, grads = gradlab.value_and_grad(
        gradlab.LogSumExp(size=1), {}, {"x": np.array([2.5])}, engine=engine
    )
    assert float(value) == 2.5  # log exp(2.5)
    assert grads["x"].tolist() == [1.0]  # softmax of one element


@pytest.mark.parametrize("engine", FORWARD_ENGINES)
def test_the_budget_alone_chunks_and_the_gradient_is_unchanged(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_engine(engine)
    chosen: list[int] = []
    policy = _forward.chunk_size

    def spy(count: int, itemsize: int, intermediates: int, budget: int) -> int:
        chosen.append(policy(count, itemsize, intermediates, budget))
        return chosen[-1]

    # A budget of a few JVPs (each holds x's tangent and x's intermediates: ~3·n·8 bytes).
    for framework in ("jax", "torch"):
        monkeypatch.setitem(_forward.CHUNK_BYTES, framework, 4 * 3 * 29 * 8)
    monkeypatch.setattr(_forward, "chunk_size", spy)
    x = np.linspace(-2.0, 3.0, 29)
    _, grads = gradlab.value_and_grad(gradlab.LogSumExp(size=29), {}, {"x": x}, engine=engine)
    assert chosen
    assert 1 <= chosen[0] < 29  # several chunks, by the policy itself
    np.testing.assert_allclose(grads["x"], _softmax(x), rtol=0, atol=1e-14)


@pytest.mark.parametrize("engine", FORWARD_ENGINES)
def test_gmm_gradient_in_chunks_is_the_hand_derivation_and_central_differences(
    engine: str, chunks: Callable[[int], list[int]]
) -> None:
    require_engine(engine)
    counts = chunks(7)  # alpha 2, mu 6, q 6, l 6: 20 elements, chunks 7, 7, 6 across them
    problem = gradlab.GradBenchGMM(k=2, d=3)
    data = problem.make_data(15)
    params = problem.initial_params(data, seed=3)
    value, grads = gradlab.value_and_grad(problem, data, params, engine=engine)
    assert counts
    assert set(counts) == {20}
    hand_value, hand = gradlab.value_and_grad(problem, data, params, engine="numpy")
    _, differences = gradlab.value_and_grad(problem, data, params, engine="fd")
    assert gradlab.max_rho(grads, hand) < 1e-12
    assert gradlab.max_rho(grads, differences) < 1e-6
    assert gradlab.max_rho(value, hand_value) < 1e-13


def _sine_without_jvp() -> Callable[[Any, Any], Any]:
    """A torch loss through sin as a ``torch.autograd.Function`` with a backward and no jvp
    (vmappable: ``jacfwd`` vmaps its JVPs)."""
    import torch

    class Sine(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x: Any) -> Any:
            return torch.sin(x)

        @staticmethod
        def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return torch.cos(ctx.saved_tensors[0]) * grad

    sine: Any = Sine  # torch types Function.apply loosely
    return lambda params, data: sine.apply(params["w"]).sum()


def _sine_custom_vjp() -> Callable[[Any, Any], Any]:
    """A jax loss through sin as a ``jax.custom_vjp`` function."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    sine = jax.custom_vjp(jnp.sin)
    sine.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.cos(x) * g,))
    return lambda params, data: jnp.sum(sine(params["w"]))


@pytest.mark.parametrize(
    ("engine", "operation"),
    [
        ("jax-fwd", "a jax.custom_vjp function"),
        ("torch-fwd", "a torch.autograd.Function without a jvp"),
    ],
)
def test_a_refusal_in_chunks_is_still_a_refusal(
    engine: str, operation: str, chunks: Callable[[int], list[int]]
) -> None:
    require_engine(engine)
    chunks(2)
    if engine == "jax-fwd":
        problem = gradlab.NativeProblem(name="sine", jax=_sine_custom_vjp())
    else:
        problem = gradlab.NativeProblem(name="sine", torch=_sine_without_jvp())
    with pytest.raises(gradlab.ForwardModeUnsupported) as caught:
        gradlab.value_and_grad(problem, {}, {"w": np.array([0.1, 0.2, 0.3])}, engine=engine)
    assert caught.value.operation == operation


# -- Jacobians in chunks -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", FORWARD_ENGINES)
def test_jacobian_in_chunks_is_the_hand_jacobian(
    engine: str, chunks: Callable[[int], list[int]]
) -> None:
    require_engine(engine)
    counts = chunks(3)  # x has 7 elements and c one: chunks 3, 3, 2, c in the last
    data, params = tanh_case(m=5, d=7, seed=2)
    jacobian = gradlab.jacobian(TANH, data, params, engine=engine)
    assert counts
    assert set(counts) == {8}
    hand = tanh_layer_jacobian(params, data)
    assert jacobian["x"].shape == (5, 7)
    assert jacobian["c"].shape == (5,)
    for name in ("x", "c"):
        np.testing.assert_allclose(jacobian[name], hand[name], rtol=0, atol=1e-14)


# -- A large n: no n×n basis -------------------------------------------------------------------

#: The child: the resident memory a forward-mode gradient of LogSumExp at n adds to the
#: process (its peak after, less what it held before: warm already, from a gradient at a
#: small n), and its error against softmax. A process of its own, and its peak is Linux's
#: VmHWM, its own memory's: ru_maxrss would start from the parent's (pytest's, with torch
#: and jax in it), which a forked child inherits through exec.
_CHILD = textwrap.dedent(
    """
    import json, re, sys
    import numpy as np
    import gradlab
    from gradlab.engines import _forward

    engine, n, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _forward.CHUNK_BYTES[engine.removesuffix("-fwd")] = budget
    if engine == "torch-fwd":
        # One thread: a chunk's ~30 small kernels each wait for every thread of torch's
        # pool, which a busy machine may not run for milliseconds (4× slower on 2 cores).
        import torch

        torch.set_num_threads(1)

    def gradient(n):
        x = np.random.default_rng(0).normal(size=n)
        problem = gradlab.LogSumExp(size=n)
        return x, gradlab.value_and_grad(problem, {}, {"x": x}, engine=engine)[1]["x"]

    def status(field):  # bytes
        with open("/proc/self/status") as status:
            return int(re.search(field + r":\\s+(\\d+) kB", status.read())[1]) * 1024

    gradient(300)
    before = status("VmRSS")
    x, grad = gradient(n)
    added = status("VmHWM") - before
    shifted = np.exp(x - x.max())
    error = float(np.max(np.abs(grad - shifted / shifted.sum())))
    print(json.dumps({"error": error, "added": added}))
    """
)

#: n and the chunks' budget for each engine: n the largest whose gradient takes a couple of
#: seconds on 2 CPU cores (n² elements of JVPs: jax-fwd runs them in one compiled loop,
#: torch-fwd runs ~30 kernels a chunk); torch-fwd's budget below its default, so that the
#: memory a chunk adds is far below the basis at that n.
LARGE = {"jax-fwd": (20_000, _forward.CHUNK_BYTES["jax"]), "torch-fwd": (8_000, 8 << 20)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("engine", FORWARD_ENGINES)
def test_a_large_gradient_never_holds_the_basis(engine: str) -> None:
    require_engine(engine)
    n, budget = LARGE[engine]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, engine, str(n), str(budget)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] < 1e-15
    basis = n * n * 8  # jacfwd's one-hot basis alone, in float64: 3.2 GB at n = 20,000
    assert result["added"] < basis / 10, f"added {result['added'] / 2**20:.0f} MiB"
