"""GradBench's nested evals, ``particle`` and ``saddle``: one definition run eagerly (torch)
and compiled (jax).

Oracles, independent of the code under test: the answers GradBench publishes for its
evals (their ``run.py``: w = 0.2071918746486116 from w = 0, and 8.246324826140356e-06 in
all four coordinates from (1, 1)), checked with GradBench's own tolerance; the analytic
gradient of saddle's best response, 2·p₁; central differences of the particle's landing;
Python's own loop for the compiled one's.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import DEEP, require_engine

import gradlab
from gradlab.gradbench import _nested, serve

#: GradBench's answers (python/gradbench/gradbench/evals/{particle,saddle}/run.py).
PARTICLE_W = 0.2071918746486116
SADDLE_POINT = [8.246324826140356e-06] * 4
VARIANTS = ("rr", "ff", "fr", "rf")
#: A full run each: jax's compile (seconds) and torch's eager descent (seconds to minutes
#: in forward mode). By default one of each eval on jax, with each mode outside (reverse
#: mode through the flight is checked below, against finite differences); every one
#: under the deep profile.
FULL_RUNS = [
    (engine, name, variant)
    for engine in ("jax", "torch")
    for name in ("particle", "saddle")
    for variant in VARIANTS
]
DEFAULT_RUNS = [("jax", "particle", "fr"), ("jax", "saddle", "rr")]


def gradbench_difference(got: float, want: float) -> float:
    """GradBench's ``comparison.difference`` (ADBench's): |a − b| / max(1, |a| + |b|)."""
    return abs(got - want) / max(1.0, abs(got) + abs(want))


def operators(engine: str) -> _nested.Ops:
    require_engine(engine)
    return _nested.ops_for(gradlab.get_engine(engine))


def compiled(ops: _nested.Ops, key: str, build: Callable[[], Any]) -> Any:
    """``build()``'s function as the framework runs a procedure (jax: jitted, once)."""
    return ops.control.compile(("test", key), build)


@pytest.mark.parametrize(
    ("engine", "name", "variant"),
    [
        pytest.param(
            *case,
            marks=[]
            if case in DEFAULT_RUNS or DEEP
            else pytest.mark.skip(reason="seconds to minutes a run: GRADLAB_DEEP=1"),
        )
        for case in FULL_RUNS
    ],
)
def test_a_full_run_gives_gradbenchs_answer(engine: str, name: str, variant: str) -> None:
    ops = operators(engine)
    if name == "particle":
        got = [_nested.particle(variant, 0.0, ops)]
        want = [PARTICLE_W]
    else:
        got, want = _nested.saddle(variant, (1.0, 1.0), ops), SADDLE_POINT
    assert all(isinstance(value, float) for value in got)
    # GradBench's validation, and agreement to many more digits than it asks.
    assert max(map(gradbench_difference, got, want)) <= 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_the_outer_gradient_goes_through_the_inner_descent_unconfused(engine: str) -> None:
    # saddle's best response, max over p₂ of |p₁|² − |p₂|², is |p₁|² less a constant that
    # does not depend on p₁ (the inner descent's end point): its gradient is exactly 2·p₁,
    # in every variant, if no derivative leaks between the levels (perturbation confusion).
    ops = operators(engine)
    variants = VARIANTS if engine == "jax" or DEEP else ("rr", "fr")

    def build() -> Callable[[Any], list[Any]]:
        def gradients(p1: Any) -> list[Any]:
            begin = ops.lift([1.0, 1.0])
            pairs = [_nested._variant(variant, ops) for variant in variants]
            return [outer(_nested.best_response(inner, begin, ops))(p1) for outer, inner in pairs]

        return gradients

    with ops.scope():
        got = compiled(ops, f"best-response-{len(variants)}", build)(ops.lift([0.3, -0.2]))
        for gradient in got:
            np.testing.assert_allclose(_nested._host(gradient), [0.6, -0.4], rtol=1e-12)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_the_landings_derivative_matches_finite_differences(engine: str) -> None:
    # d/dw of where the particle lands: through 350 Euler steps, each with the potential's
    # gradient inside; against central differences of the same procedure.
    ops = operators(engine)
    variants = VARIANTS if DEEP else ("rr",)
    w, h = 0.1, 1e-6

    def derivatives() -> Callable[[Any], list[Any]]:
        def each(w: Any) -> list[Any]:
            pairs = [_nested._variant(variant, ops) for variant in variants]
            return [outer(_nested.landing(inner, ops))(w) for outer, inner in pairs]

        return each

    with ops.scope():
        landing = compiled(ops, "landing", lambda: _nested.landing(ops.reverse, ops))
        plus, minus = (float(_nested._host(landing(ops.lift([w + s * h])))) for s in (1, -1))
        got = compiled(ops, f"landing-{len(variants)}", derivatives)(ops.lift([w]))
    for derivative in got:
        assert float(_nested._host(derivative)[0]) == pytest.approx(
            (plus - minus) / (2 * h), rel=1e-6
        )


def test_the_compiled_loop_runs_as_pythons() -> None:
    # jax's loop, a scan of checkpointed chunks of conds (or a while_loop where nothing
    # differentiates it), against Python's: the same steps, the same stop, the bound
    # kept exactly, and reverse mode through it the derivative of its closed form.
    import jax

    ops = operators("jax")
    assert ops.control.compiles
    assert not _nested.EAGER.compiles

    def doubling(x: Any, bound: int, differentiated: bool) -> Any:
        # x ↦ x·2ⁿ, n the first count with x·2ⁿ ≥ 100, or the bound
        return ops.control.loop(
            lambda s: s[0] < 100, lambda s: (2 * s[0], s[1] + 1), (x, 0), bound, differentiated
        )

    with ops.scope():
        for bound in (3, 1000):
            for differentiated in (True, False):
                got = jax.jit(lambda x, b=bound, d=differentiated: doubling(x, b, d))(ops.lift(1.5))
                want = _nested._python_loop(
                    lambda s: s[0] < 100,
                    lambda s: (2 * s[0], s[1] + 1),
                    (1.5, 0),
                    bound,
                    differentiated,
                )
                assert (float(got[0]), int(got[1])) == want
        # 1.5·2⁷ = 192 ≥ 100 after seven steps: d/dx (x·2⁷) = 128
        gradient = jax.jit(jax.grad(lambda x: doubling(x, 1000, True)[0]))(ops.lift(1.5))
    assert float(gradient) == 128.0


def test_a_descent_says_why_it_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    # GradBench's solver on |x − 3|² from 0, in NumPy with the exact gradient: it stops
    # where ‖∇f‖ = 2|x − 3| ≤ 1e-5 or where a step η·‖∇f‖ ≤ 1e-5.
    grad = lambda f: lambda x: 2 * (x - 3)  # noqa: E731
    found, status = _nested.descend(grad, lambda x: float(np.sum((x - 3) ** 2)), np.zeros(1), np)
    assert status == _nested.CONVERGED
    assert 0 < 3 - found[0] <= 1e-5
    # A value that is not finite stops it, and so does the bound on its steps; a nested
    # descent answers NaN, a top-level one raises.
    nan = lambda x: math.nan  # noqa: E731
    assert _nested.descend(grad, nan, np.zeros(1), np)[1] == _nested.NOT_FINITE
    assert np.isnan(_nested.argmin(grad, nan, np.zeros(1), np)).all()
    with pytest.raises(ValueError, match="not finite"):
        _nested._checked(_nested.NOT_FINITE, "saddle")
    monkeypatch.setattr(_nested, "MAX_STEPS", 5)
    far = _nested.descend(grad, lambda x: float(np.sum((x - 3) ** 2)), np.zeros(1), np)
    assert far[1] == _nested.RUNNING
    with pytest.raises(ValueError, match="did not stop within 5 steps"):
        _nested._checked(far[1], "saddle")


def test_a_particle_that_never_lands_is_an_error_not_a_hang() -> None:
    # From w = 10 the moving charge sits below the axis and pushes the particle away: no
    # crossing within MAX_STEPS Euler steps, so no landing to minimise.
    ops = operators("jax")
    with pytest.raises(ValueError, match="particle's descent met a value or gradient"):
        _nested.particle("fr", 10.0, ops)


def test_a_saddle_that_overflows_is_an_error() -> None:
    ops = operators("jax")
    with pytest.raises(ValueError, match="saddle's descent met a value or gradient"):
        _nested.saddle("rr", (1e200, 1e200), ops)


def test_the_tool_answers_saddle_compiling_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # GradBench's messages for saddle, on jax: both answers validate, and the procedure is
    # compiled once at most (not again for the second evaluate, which makes its own ops).
    require_engine("jax")
    import jax

    jits = []
    real_jit = jax.jit

    def counting_jit(function: Any, **options: Any) -> Any:
        jits.append(function)
        return real_jit(function, **options)

    monkeypatch.setattr(jax, "jit", counting_jit)
    evaluate = {
        "kind": "evaluate",
        "module": "saddle",
        "function": "rr",
        "input": {"start": [1.0, 1.0], "min_runs": 2, "min_seconds": 0},
    }
    messages = [
        {"id": 0, "kind": "start", "eval": "saddle"},
        {"id": 1, "kind": "define", "module": "saddle"},
        {"id": 2, **evaluate},
        {"id": 3, **evaluate},
        {"id": 4, "kind": "end"},
    ]
    out = io.StringIO()
    assert serve("jax", io.StringIO("".join(json.dumps(m) + "\n" for m in messages)), out) == 0
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [reply["success"] for reply in replies[1:]] == [True] * 3, replies
    for reply in replies[2:]:
        assert max(map(gradbench_difference, reply["output"], SADDLE_POINT)) <= 1e-4
    assert len(jits) <= 1
