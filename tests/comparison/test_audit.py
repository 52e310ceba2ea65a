"""gradlab.audit: each variation measured against an oracle that does not come from it:
engines planted to change with reruns or threads, a loss that reads its thread count,
a mis-declared reduction, the arithmetic of ulps, and the precisions' round-off."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import cli
from gradlab.comparison._audit import _distance

DATA = gradlab.Quadratic().make_data(40, seed=3)
START = {"w": np.array(0.5), "b": np.array(-0.25)}


def _one_thread() -> bool:
    """Whether this process computes with one thread: what the loss below reads."""
    if os.environ.get("OMP_NUM_THREADS") == "1":
        return True
    torch = __import__("sys").modules.get("torch")
    return torch is not None and torch.get_num_threads() == 1


def thread_sensitive_loss(params: Any, data: Any, xp: Any) -> Any:
    """The quadratic's loss, scaled by 1 + 1e-12 when computed with one thread: a stand-in
    for a reduction whose order follows the thread count (module level, so it pickles)."""
    scale = 1.0 + 1e-12 if _one_thread() else 1.0
    residual = params["w"] * data["x"] ** 2 + params["b"] - data["y"]
    return scale * xp.sum(residual**2)


def mean_loss(params: Any, data: Any, xp: Any) -> Any:
    residual = params["w"] * data["x"] ** 2 + params["b"] - data["y"]
    return xp.mean(residual**2)


class Noisy(gradlab.AbstractEngine):
    """The numpy engine with a gradient that moves by one more ulp at every call: planted
    nondeterminism."""

    name = "noisy-numpy"
    xp = np

    def __init__(self) -> None:
        self.calls = 0
        self._base = gradlab.get_engine("numpy")

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        return np.array(array, dtype=dtype)

    def value_and_grad(self, problem: Any) -> Any:
        function = self._base.value_and_grad(problem)

        def noisy(params: Any, data: Any) -> Any:
            self.calls += 1
            loss, grads = function(params, data)
            moved = {
                k: np.asarray(g) * (1 + self.calls * np.finfo(float).eps) for k, g in grads.items()
            }
            return loss, moved

        return noisy


def test_ulps_and_rho_follow_the_arithmetic() -> None:
    one = np.array([1.0, -2.0, 0.0])
    two_up = np.array([1.0 + 2 * np.finfo(float).eps, -2.0, 0.0])
    ulps, rho = _distance(one, two_up, "float64")
    assert ulps == 1.0  # 2·eps, at the largest magnitude 2, whose ulp is 2·eps
    assert rho == pytest.approx(2 * np.finfo(float).eps / (2 + 2 * np.finfo(float).eps))
    assert _distance(np.array([np.nan, np.inf]), np.array([np.nan, np.inf]), "float64") == (0, 0)
    assert _distance(np.array([np.inf]), np.array([1.0]), "float64") == (np.inf, np.inf)
    # In float32 ulps: 1 + 2**-23 is one float32 ulp above 1.
    assert _distance(np.array(1.0), np.array(1.0 + 2.0**-23), "float32")[0] == 1.0
    # Counted at the quantity's largest magnitude: an element round-off away from zero
    # moves by a fraction of the vector's ulp, not by 1e16 of its own.
    tiny = _distance(np.array([4.0, 0.0]), np.array([4.0, 1e-17]), "float64")[0]
    assert tiny == pytest.approx(1e-17 / np.spacing(4.0))
    # A float64 value beyond float32's range counts in float32's largest ulps, not as NaN.
    huge = _distance(np.array(2e52), np.array(3e38), "float32")[0]
    assert huge == pytest.approx(2e52 / 2.0**104)  # float32's ulp in [2**127, 2**128)


@pytest.mark.parametrize("engine", ["numpy", "torch", "jax", "fd", "complex-step", "torch-func"])
def test_reruns_of_gradlabs_engines_are_bitwise_equal_on_this_cpu(engine: str) -> None:
    require_engine(engine)
    report = gradlab.audit(gradlab.MLP(), engine=engine, variations="rerun", steps=3)
    assert report.deterministic is True, report
    assert report["rerun"].ulps
    assert all(u == 0 for u in report["rerun"].ulps.values())


def test_planted_nondeterminism_is_reported_per_quantity_and_fails_the_cli() -> None:
    report = gradlab.audit(
        gradlab.Quadratic(), DATA, START, engine=Noisy(), variations="rerun", steps=4
    )
    rerun = report["rerun"]
    assert report.deterministic is False
    assert rerun.status == "differs"
    assert rerun.ulps["loss"] == 0  # only the gradient was moved
    assert 0 < rerun.ulps["gradient w"] <= 16
    assert rerun.ulps["fit w"] > 0
    assert "differs" in str(report)
    assert "gradient" in str(report)
    gradlab.register_engine("noisy-numpy", Noisy)
    try:
        status = cli.main(["audit", "--engine", "noisy-numpy", "--variations", "rerun", "-q"])
    finally:
        gradlab.unregister_engine("noisy-numpy")
    assert status == 1


def test_one_thread_runs_in_a_process_with_one_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """The loss reads its thread count; the one-thread process must see 1, this one not."""
    if _one_thread() or (os.cpu_count() or 1) == 1:
        pytest.skip("this process already computes with one thread")
    problem = gradlab.Problem(thread_sensitive_loss, name="threads", reduction="sum")
    report = gradlab.audit(problem, DATA, START, engine="fd", variations="rerun,threads")
    assert report.deterministic is True
    assert report.thread_invariant is False, report
    # 1e-12 relative, in float64 ulps: about 1e-12 / 2.2e-16 = 4500 on the loss.
    assert 1e3 < report["threads"].ulps["loss"] < 1e4


def test_torch_in_one_thread_and_compiled_are_round_off_apart() -> None:
    pytest.importorskip("torch")
    torch = __import__("torch")
    threads = torch.get_num_threads()
    report = gradlab.audit(
        gradlab.MLP(), engine="torch", variations="threads,compiled,precision", steps=3
    )
    assert torch.get_num_threads() == threads  # left as found
    assert report["threads"].status != "skipped", report
    assert report["compiled"].against == "torch-compile"
    for name in ("threads", "compiled"):
        assert report[name].max_rho <= 64 * np.finfo(float).eps, report
    # float32 against float64: float32's round-off, far above float64's.
    assert 1e-9 < report["precision"].max_rho < 1e-5
    assert report["precision"].unit == "float32"


def test_jax_eager_against_jit_and_the_jit_state_left_as_found() -> None:
    jax = pytest.importorskip("jax")
    report = gradlab.audit(gradlab.MLP(), engine="jax", variations="compiled", steps=3)
    assert report["compiled"].against == "jax.disable_jit"
    assert report["compiled"].max_rho <= 64 * np.finfo(float).eps
    assert not jax.config.jax_disable_jit


def test_accumulation_is_the_full_gradient_to_round_off_and_catches_a_wrong_reduction() -> None:
    right = gradlab.Problem(mean_loss, name="mean", reduction="mean")
    report = gradlab.audit(right, DATA, START, engine="fd", variations="accumulation", steps=2)
    assert report["accumulation"].against == "4 mini-batches"
    assert report["accumulation"].max_rho < 1e-9  # fd's own error, not the split
    # A mean declared as a sum: the 4 mini-batches' means add up to 4 times the mean.
    wrong = gradlab.Problem(mean_loss, name="mean", reduction="sum")
    off = gradlab.audit(wrong, DATA, START, engine="fd", variations="accumulation", steps=0)
    assert off["accumulation"].rho["loss"] == pytest.approx(3 / 5, rel=1e-9)  # 4a vs a


def test_the_hand_gradient_accumulates_too() -> None:
    report = gradlab.audit(
        gradlab.MLP(), engine="numpy", variations="accumulation", steps=2, batches=3
    )
    accumulation = report["accumulation"]
    assert accumulation.against == "3 mini-batches"
    assert 0 < accumulation.max_rho <= 64 * np.finfo(float).eps


def test_tapped_points_are_audited_forward_and_backward() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    apply, params = gradlab.torch_module(net.double())
    x = np.random.default_rng(0).standard_normal((8, 3))
    data = {"x": x, "y": x[:, :1] ** 2}

    def loss(p: Any, d: Any) -> Any:
        return ((apply(p, d["x"]) - d["y"]) ** 2).mean()

    problem = gradlab.NativeProblem(name="seq", torch=loss)
    report = gradlab.audit(problem, data, params, engine="torch", variations="rerun,precision")
    assert {"forward 0", "backward 0", "forward 2", "backward 2"} <= set(report.quantities)
    # Parameters are named alike in the gradient and the fit, as paths name them.
    assert {"gradient ['0.weight']", "fit ['0.weight']"} <= set(report.quantities)
    assert report["rerun"].status == "bitwise"
    assert report["precision"].ulps["forward 1"] > 0


def test_fits_that_stop_at_other_steps_are_as_far_apart_as_can_be() -> None:
    """sgd(0.5) on the quadratic diverges: in float32 at another step than in float64, so
    the loss paths differ in length; that is reported, not dropped."""
    report = gradlab.audit(
        gradlab.Quadratic(),
        engine="numpy",
        steps=30,
        optimizer=gradlab.sgd(0.5),
        variations="precision",
    )
    precision = report["precision"]
    assert precision.status == "differs"
    assert precision.ulps["fit losses"] == np.inf
    assert precision.worst == "fit losses"
    assert np.isfinite(precision.ulps["gradient w"])
    assert "precision" in report
    assert "nope" not in report
    with pytest.raises(KeyError, match="no variation 'nope'"):
        report["nope"]


def test_what_cannot_run_is_skipped_with_the_reason() -> None:
    unpicklable = gradlab.Problem(lambda p, d, xp: xp.sum(p["w"] * d["x"]), name="lambda")
    report = gradlab.audit(
        unpicklable,
        DATA,
        {"w": np.array(1.0)},
        engine="fd",
        variations="threads,compiled,accumulation",
        steps=0,
    )
    assert report["threads"].status == "skipped"
    assert "pickle" in report["threads"].reason
    assert "no compiled or eager counterpart of fd" in report["compiled"].reason
    assert "declares no reduction" in report["accumulation"].reason
    # fd differences in float64 whatever the dtype: float32 would only round its result.
    fd = gradlab.audit(gradlab.Quadratic(), DATA, START, engine="fd", variations="precision")
    assert fd["precision"].status == "skipped"
    assert "fd_precision=float64" in fd["precision"].reason
    assert report.thread_invariant is None
    assert "threads not run: the problem" in str(report)


class Float64Only(Noisy):
    """An engine that refuses float32, as some plug-ins do."""

    name = "float64-only"

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "float32":
            raise gradlab.NotSupported("float64-only computes in float64 only")
        return np.array(array, dtype=dtype)

    def value_and_grad(self, problem: Any) -> Any:
        return self._base.value_and_grad(problem)


def test_a_variation_that_raises_is_reported_as_failed() -> None:
    report = gradlab.audit(
        gradlab.Quadratic(), DATA, START, engine=Float64Only(), variations="rerun,precision"
    )
    assert report["rerun"].status == "bitwise"
    assert report["precision"].status == "failed"
    assert "float64 only" in report["precision"].reason
    assert "precision failed: " in str(report)


def test_data_is_not_modified_and_the_report_round_trips(tmp_path: Any) -> None:
    data = {name: value.copy() for name, value in DATA.items()}
    report = gradlab.audit(
        gradlab.Quadratic(), data, START, engine="numpy", variations="rerun,precision"
    )
    for name, value in DATA.items():
        np.testing.assert_array_equal(data[name], value)
    path = tmp_path / "audit.json"
    report.save(path)
    loaded = gradlab.load(path)
    assert isinstance(loaded, gradlab.AuditReport)
    assert loaded == report
    assert str(loaded) == str(report)
    assert "rerun bitwise" in repr(report)
    assert json.loads(report.to_json())["deterministic"] is True


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"variations": "rerun,nope"}, "variations"),
        ({"variations": []}, "variations"),
        ({"variations": 3}, "variations"),
        ({"steps": -1}, "steps"),
        ({"batches": 1}, "batches"),
        ({"engine": "nmupy"}, "engine"),
        ({"dtype": "float16"}, "dtype"),
        ({"optimizer": "sgd"}, "optimizer"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], argument: str) -> None:
    arguments: dict[str, Any] = {"engine": "numpy", **kwargs}
    with pytest.raises(gradlab.GradlabError) as raised:
        gradlab.audit(gradlab.Quadratic(), DATA, START, **arguments)
    assert raised.value.argument == argument


def test_the_cli_prints_the_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "--variations", "rerun,precision", "--steps", "0", "-q"]) == 0
    out = capsys.readouterr().out
    assert "Audit of numpy on quadratic" in out
    assert "precision" in out
    assert cli.main(["audit", "--variations", "rerun", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "AuditReport"
    assert record["deterministic"] is True
    assert cli.main(["audit", "--variations", "bogus"]) == 2
    assert "--variations" in capsys.readouterr().err
