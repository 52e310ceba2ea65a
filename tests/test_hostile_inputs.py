"""What a hostile probe of issue 29's fixes found next: each a class, each refused or
answered rightly. Oracles are mathematics and the caller's own values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab

QUADRATIC = gradlab.Quadratic()
DATA = QUADRATIC.make_data(20, seed=1)
POINT = {"w": 1.5, "b": -0.5}


def test_rho_of_numbers_near_the_largest_float_does_not_overflow_to_agreement() -> None:
    # |a − b| / max(1, |a| + |b|) = 2e308 / 2e308 = 1: total disagreement, by hand.
    assert gradlab.max_rho({"w": 1e308}, {"w": -1e308}) == pytest.approx(1.0)
    assert float(gradlab.rho(1e308, 1e308)) == 0.0
    assert float(gradlab.rho(3.0, 1.0)) == 0.5  # the ordinary range is unchanged


@pytest.mark.parametrize(
    "value", ["1", None, 10**400, b"1", object()], ids=["str", "None", "huge", "bytes", "object"]
)
def test_max_rho_refuses_what_is_not_a_real_number(value: Any) -> None:
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.max_rho({"w": value}, {"w": 1.0})
    assert caught.value.argument == "a['w']"


@pytest.mark.parametrize(("first", "second"), [(True, 1.0), (1, 1.0), (1.0, np.int64(1))])
def test_keys_equal_but_written_otherwise_are_not_answered_from_each_others_cache(
    first: Any, second: Any
) -> None:
    problem = gradlab.Problem(
        lambda p, d, xp: sum(xp.sum(v**2) for v in p.values()) + 0.0, name="keys"
    )
    for key in (first, second):
        _, grads = gradlab.value_and_grad(problem, {}, {key: np.array([1.0, 2.0])}, engine="fd")
        np.testing.assert_allclose(grads[key], [2.0, 4.0], rtol=1e-9)  # d(Σv²)/dv = 2v


def test_a_result_whose_keys_would_be_written_alike_is_refused_at_save(tmp_path: Path) -> None:
    problem = gradlab.Problem(
        lambda p, d, xp: sum(xp.sum(v**2) for v in p.values()) + 0.0, name="keys"
    )
    init = {1: np.ones(2), "1": np.full(1, 5.0)}
    result = gradlab.fit(problem, {}, init=init, engine="fd", optimizer=gradlab.sgd(0.1), steps=2)
    with pytest.raises(gradlab.NotSupported, match="both written '1'"):
        result.save(tmp_path / "fit.json")
    assert not (tmp_path / "fit.json").exists()  # nothing half-written


def _tampered(record: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(record))
    node = copy
    for key in where[:-1]:
        node = node[key]
    if value == _DELETE:
        del node[where[-1]]
    else:
        node[where[-1]] = value
    return copy


_DELETE = "(deleted)"


def _records() -> dict[str, Any]:
    report = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd")
    fits = gradlab.compare_fits(
        QUADRATIC, DATA, engines="numpy,fd", optimizer=gradlab.sgd(1e-3), steps=3, init=POINT
    )
    bench = gradlab.benchmark("quadratic", 20, engines="numpy", min_time=0.001, fit_steps=2)
    return {"report": report.to_dict(), "fits": fits.to_dict(), "bench": bench.to_dict()}


RECORDS = _records()
TAMPERINGS: list[tuple[str, tuple[Any, ...], Any]] = [
    ("report", ("outlier",), "x"),
    ("report", ("losses", "fd"), _DELETE),
    ("fits", ("reference",), "torch"),
    ("bench", ("cases", 0, "problem"), None),
    ("bench", ("settings",), []),
]


@pytest.mark.parametrize(("kind", "where", "value"), TAMPERINGS, ids=str)
def test_a_record_whose_fields_do_not_fit_together_is_refused_at_load(
    kind: str, where: tuple[Any, ...], value: Any, tmp_path: Path
) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_tampered(RECORDS[kind], where, value)))
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.load(path)
    assert caught.value.argument == "path"


def test_a_path_with_a_nul_byte_is_refused_naming_it() -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.load("report.json\x00x")
    assert caught.value.argument == "path"


def test_a_loss_that_calls_sys_exit_is_named_not_the_end_of_the_program() -> None:
    def loss(p: Any, d: Any, xp: Any) -> Any:
        raise SystemExit(7)

    with pytest.raises(gradlab.ProblemError, match=r"called sys.exit\(7\)"):
        gradlab.value_and_grad(gradlab.Problem(loss, name="exits"), {}, {"w": 1.0}, engine="fd")


@pytest.mark.parametrize("how", ["bfloat16", "sparse"])
def test_a_torch_tensor_numpy_cannot_read_is_refused_naming_it(how: str) -> None:
    require_engine("torch")
    import torch

    tensor = torch.ones(3, dtype=torch.bfloat16) if how == "bfloat16" else torch.eye(3).to_sparse()
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.value_and_grad(QUADRATIC, DATA, {"w": tensor, "b": 0.0}, engine="fd")
    assert caught.value.argument == "params['w']"


def _hand(p: Any, d: Any) -> tuple[Any, Any]:
    r = d["x"] @ p["w"] - d["y"]
    return np.mean(r**2), {"w": 2 * d["x"].T @ r / len(r)}


def test_two_implementations_that_disagree_both_stand_accused() -> None:
    """numpy (the hand derivation) against fd and complex-step (both the NumPy code, which
    has the bug): either side may be wrong, so neither is acquitted."""
    rng = np.random.default_rng(4)
    data = {"x": rng.standard_normal((12, 2)), "y": rng.standard_normal(12)}
    problem = gradlab.NativeProblem(
        name="line",
        numpy=lambda p, d: np.mean((1.1 * (d["x"] @ p["w"]) - d["y"]) ** 2),
        value_and_grad=_hand,
    )
    report = gradlab.compare_gradients(
        problem, data, {"w": rng.standard_normal(2)}, engines="fd,complex-step,numpy"
    )
    assert not report.ok
    assert set(report.disagreeing) == {"fd", "complex-step", "numpy"}


@pytest.mark.parametrize("engine", ["fd", "torch", "jax", "jax-fwd"])
def test_every_engine_hands_the_loss_its_dicts_in_the_callers_order(engine: str) -> None:
    """JAX rebuilds traced dicts with sorted keys: a loss that reads its parameters in
    order must still see the caller's order, or jax computes another function."""
    require_engine(engine)

    def loss(p: Any, d: Any, xp: Any) -> Any:
        flat = xp.concatenate([xp.reshape(v, (-1,)) for v in p.values()])
        return xp.sum(xp.asarray([1.0, 2.0, 3.0]) * flat**2) * d["scale"][0]

    params = {"w": np.ones(2), "b": np.ones(1)}  # not in sorted order
    data = {"scale": np.ones(1)}
    _, grads = gradlab.value_and_grad(
        gradlab.Problem(loss, name="ordered"), data, params, engine=engine
    )
    # L = 1·w₀² + 2·w₁² + 3·b²: ∂L/∂w = (2, 4), ∂L/∂b = 6, by hand.
    np.testing.assert_allclose(grads["w"], [2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [6.0], rtol=1e-6)


@pytest.mark.parametrize("kernel", [np.ones(3), np.ones((2, 3, 4))], ids=["1-d", "3-d"])
def test_a_layout_without_shapes_still_checks_what_it_permutes(kernel: np.ndarray) -> None:
    layout = gradlab.Layout({"weight": ("fc.kernel", (1, 0)), "bias": "fc.bias"})
    with pytest.raises(gradlab.ArgumentError, match="the layout permutes 2") as caught:
        layout.check({"fc.kernel": kernel, "fc.bias": np.ones(2)})
    assert caught.value.argument == "init"
