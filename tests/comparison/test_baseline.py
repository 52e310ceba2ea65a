"""Results you can keep: every report and result saved and loaded exactly, and compared with a
baseline saved earlier, through the API and the command line."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import first_installed
from _strategies import CASES
from hypothesis import given, settings
from hypothesis import strategies as st

import gradlab

QUADRATIC = gradlab.Quadratic()
DATA = QUADRATIC.make_data(40, seed=1)
POINT = {"w": 1.5, "b": -0.5}
AUTODIFF = first_installed(("torch", "jax"))


def _quadratic(scale: float = 1.0, name: str = "quad") -> gradlab.Problem:
    """y ≈ w·x² + b with a hand gradient that is off by the factor ``scale`` on w: the same
    problem before and after a change to its hand derivation."""

    def loss(p: Any, d: Any, xp: Any) -> Any:
        return xp.mean((p["w"] * d["x"] ** 2 + p["b"] - d["y"]) ** 2)

    def hand(p: Any, d: Any) -> Any:
        r = p["w"] * d["x"] ** 2 + p["b"] - d["y"]
        grads = {"w": scale * np.mean(2 * r * d["x"] ** 2), "b": np.mean(2 * r)}
        return np.mean(r**2), grads

    return gradlab.Problem(loss, hand, name=name)


def _same(a: Any, b: Any) -> None:
    """Two results equal field by field: arrays in value, dtype and shape; nests in structure."""
    if isinstance(a, str):  # torch's version is a str subclass, saved as a str
        assert str(a) == b
        return
    if hasattr(a, "_fields"):  # a NamedTuple comes back as one of the same name and fields
        assert type(a).__name__ == type(b).__name__
    else:
        assert type(a) is type(b)
    if dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            if field.compare and field.name != "state":
                _same(getattr(a, field.name), getattr(b, field.name))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        assert getattr(type(a), "_fields", None) == getattr(type(b), "_fields", None)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (a != a and b != b), (a, b)  # NaN equals NaN here


# -- Saving and loading ------------------------------------------------------------------------


def _reports() -> dict[str, Any]:
    linear = gradlab.LinearRegression()
    data = linear.make_data(6, d=2, seed=3)
    point = {"w": [0.5, -1.0], "b": 0.25}

    def vector(p: Any, d: Any, xp: Any) -> Any:
        return {"y": xp.tanh(d["A"] @ p["x"]), "z": [p["x"] * p["x"]]}

    return {
        "gradient": lambda dtype: gradlab.compare_gradients(
            linear, data, point, engines=f"numpy,fd,{AUTODIFF}", dtype=dtype
        ),
        "hessian": lambda dtype: gradlab.compare_hessians(
            linear, data, point, engines="numpy,fd", dtype=dtype
        ),
        "hvp": lambda dtype: gradlab.compare_hessians(
            linear,
            data,
            point,
            tangent={"w": [1.0, 0.0], "b": 2.0},
            engines="numpy,fd",
            dtype=dtype,
        ),
        "jacobian": lambda dtype: gradlab.compare_jacobians(
            vector,
            {"A": np.arange(6.0).reshape(3, 2)},
            {"x": np.array([0.5, -1.0])},
            engines=f"fd,{AUTODIFF}",
            dtype=dtype,
            atol=1e-5,
            rtol=1e-4,
        ),
        "per-example": lambda dtype: gradlab.compare_per_example_grads(
            linear, data, point, engines="numpy,fd", dtype=dtype, tolerance=1e-3
        ),
        "nested": lambda dtype: gradlab.compare_gradients(
            gradlab.Problem(
                lambda p, d, xp: xp.sum((p["layers"][0]["w"] * d["x"] + p["layers"][1]) ** 2)
            ),
            {"x": np.linspace(-1, 1, 5)},
            {"layers": [{"w": np.array([1.0, 2.0, 3.0, 4.0, 5.0])}, np.array(0.5)]},
            engines=f"fd,{AUTODIFF}",
            dtype=dtype,
        ),
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", list(_reports()))
def test_every_report_is_saved_and_loaded_exactly(kind: str, dtype: str, tmp_path: Path) -> None:
    report = _reports()[kind](dtype)
    loaded = gradlab.GradientReport.from_json(report.to_json())
    _same(report, loaded)
    assert str(loaded) == str(report)
    assert repr(loaded) == repr(report)
    path = tmp_path / "report.json"
    report.save(path)
    _same(report, gradlab.load(path))
    assert report.against(path).ok


def test_a_fit_comparison_and_its_fits_are_saved_and_loaded_exactly() -> None:
    comparison = gradlab.compare_fits(
        QUADRATIC,
        DATA,
        optimizer=gradlab.adam(0.05),
        steps=30,
        init=POINT,
        engines=f"numpy,fd,{AUTODIFF}",
        loss_tol=1.0,
    )
    loaded = gradlab.FitComparison.from_json(comparison.to_json())
    _same(comparison, loaded)
    assert str(loaded) == str(comparison)
    assert loaded.model is None
    assert loaded.data == {}


def test_a_fit_result_keeps_the_structure_of_its_parameters() -> None:
    Pair = collections.namedtuple("Pair", "w b")

    def loss(p: Any, d: Any, xp: Any) -> Any:
        first, (offset,) = p["layers"]
        return xp.mean((first.w[0] * d["x"] ** 2 + offset - d["y"]) ** 2) + xp.sum(first.b**2)

    init = {"layers": (Pair(w=np.array([0.5]), b=np.ones(2)), [np.array(0.0)])}
    result = gradlab.fit(
        gradlab.Problem(loss),
        DATA,
        engine="fd",
        optimizer=gradlab.sgd(0.01),
        steps=15,
        init=init,
        trajectory=True,
        dtype="float32",
    )
    loaded = gradlab.FitResult.from_json(result.to_json())
    _same(result, loaded)
    first = loaded.params["layers"][0]
    assert type(first).__name__ == "Pair"
    assert first._fields == ("w", "b")
    assert isinstance(loaded.params["layers"], tuple)
    assert isinstance(loaded.params["layers"][1], list)
    assert loaded.trajectory["layers"][0].w.shape == (16, 1)
    assert loaded.state is None


class Color(enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    "key",
    [1.5, (1, "a"), None, 3, True, "a.b", "x[0]", float("inf"), Color.RED, ((1, 2), None)],
    ids=repr,
)
def test_parameter_keys_of_any_kind_come_back_as_they_were(key: Any, tmp_path: Path) -> None:
    """A dict key JSON cannot hold (a float, a tuple, None, an Enum) is saved tagged: the
    loaded result has the same keys, names the same paths, and matches its own file."""
    problem = gradlab.Problem(
        lambda p, d, xp: sum(xp.sum(leaf**2) for leaf in p["inner"].values()) + 0.0, name="keys"
    )
    init = {"inner": {key: np.array([0.5, -1.0]), "other": np.array(2.0)}}
    result = gradlab.fit(problem, {}, engine="fd", optimizer=gradlab.sgd(0.1), steps=2, init=init)
    path = tmp_path / "fit.json"
    result.save(path)
    loaded = gradlab.load(path)
    keys = list(loaded.params["inner"])
    assert repr(keys) == repr([key, "other"])  # an Enum comes back as a key of its name
    if not isinstance(key, Color):
        assert keys == [key, "other"]
    np.testing.assert_array_equal(loaded.params["inner"][keys[0]], result.params["inner"][key])
    assert result.against(path).ok


@pytest.mark.parametrize("kind", ["GradientReport", gradlab.GradientReport])
def test_load_takes_the_kind_as_a_class_or_its_name(kind: Any, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd").save(path)
    assert type(gradlab.load(path, kind)) is gradlab.GradientReport
    with pytest.raises(gradlab.ArgumentError, match="holds a GradientReport, not a FitResult"):
        gradlab.load(path, "FitResult")


@pytest.mark.parametrize(
    "kind", ["Report", 3, int, dict, gradlab.GradlabError, gradlab._output.Record]
)
def test_load_refuses_a_kind_that_is_no_saved_class(kind: Any, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd").save(path)
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.load(path, kind)
    assert caught.value.argument == "kind"


def test_non_finite_numbers_survive_the_round_trip() -> None:
    result = gradlab.fit(
        QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(100.0), steps=50, init=POINT
    )
    assert result.status == "diverged"
    text = result.to_json()
    json.loads(text)  # strict JSON: infinities are strings
    _same(result, gradlab.FitResult.from_json(text))


def test_a_loaded_result_cannot_be_resumed_and_says_why() -> None:
    result = gradlab.fit(
        QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(1e-3), steps=5, init=POINT
    )
    loaded = gradlab.FitResult.from_json(result.to_json())
    with pytest.raises(gradlab.ArgumentError, match="resume: has no optimizer state"):
        gradlab.fit(
            QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(1e-3), steps=5, resume=loaded
        )


def test_load_reads_whichever_kind_was_saved(tmp_path: Path) -> None:
    report = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd")
    fit = gradlab.fit(
        QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(1e-3), steps=3, init=POINT
    )
    bench = gradlab.benchmark("quadratic", 50, engines="numpy", min_time=0.001, fit_steps=2)
    for result in (report, fit, bench, report.against(report)):
        path = tmp_path / f"{type(result).__name__}.json"
        result.save(str(path))
        assert type(gradlab.load(path)) is type(result)
        assert json.loads(path.read_text())["kind"] == type(result).__name__


def test_records_saved_before_they_named_their_kind_still_load() -> None:
    bench = gradlab.benchmark("quadratic", 50, engines="numpy", min_time=0.001, fit_steps=2)
    record = bench.to_dict()
    del record["kind"], record["format"]
    assert gradlab.BenchmarkResult.from_dict(record).cases == bench.cases


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "is not JSON"),
        ('{"kind": "Nothing"}', "not a saved gradlab report"),
        ("[1, 2]", "not a saved gradlab report"),
        ('{"kind": "GradientReport", "format": 1}', "is not a saved GradientReport"),
        ('{"kind": "GradientReport", "format": 99}', "format 99; this gradlab reads up to 1"),
        ('{"kind": "FitResult"}', "not a saved FitResult"),
    ],
)
def test_files_that_are_not_saved_results_are_refused_by_name(
    content: str, match: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(gradlab.ArgumentError, match=match) as raised:
        gradlab.load(path)
    assert raised.value.argument == "path"


def test_loaders_name_what_is_wrong() -> None:
    with pytest.raises(gradlab.ArgumentError, match="text: is not JSON"):
        gradlab.GradientReport.from_json("{")
    with pytest.raises(gradlab.ArgumentTypeError, match="text: must be JSON text"):
        gradlab.GradientReport.from_json(3)  # type: ignore[arg-type]
    fit = gradlab.fit(
        QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(1e-3), steps=3, init=POINT
    )
    with pytest.raises(gradlab.ArgumentError, match="record: is a saved FitResult, not a Grad"):
        gradlab.GradientReport.from_dict(fit.to_dict())
    with pytest.raises(gradlab.ArgumentError, match="cannot read"):
        gradlab.load("/no/such/file.json")
    report = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd")
    with pytest.raises(gradlab.ArgumentError, match="holds a FitResult, not a GradientReport"):
        report.against(_saved(fit))


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda text: text.replace('"atol": null', '"atol": 1' + "0" * 400), "401 digits"),
        (lambda text: text.replace('"atol": null', '"atol": 1e400'), "1e400 is not a finite"),
        (lambda text: text.replace('"atol": null', '"atol": NaN'), "NaN is not JSON"),
        (lambda text: text.replace('"atol": null', '"atol": Infinity'), "Infinity is not JSON"),
    ],
)
def test_a_tampered_file_is_refused_naming_the_path_never_a_raw_error(
    change: Any, complaint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd")
    path = tmp_path / "baseline.json"
    text = report.to_json()
    assert '"atol": null' in text
    path.write_text(change(text))
    for read in (gradlab.load, report.against):
        with pytest.raises(gradlab.ArgumentError, match=complaint):
            read(str(path))
    from gradlab.cli import main

    code = main(
        ["compare", "--problem", "quadratic", "--engines", "numpy,fd", "--baseline", str(path)]
    )
    assert code == 2
    assert "--baseline" in capsys.readouterr().err


def test_load_reads_files_only_and_bounded() -> None:
    with pytest.raises(gradlab.ArgumentError, match="'/dev/zero' is not a file"):
        gradlab.load("/dev/zero")


def _saved(result: Any) -> str:
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "saved.json")
    result.save(path)
    return path


# -- Against a baseline ------------------------------------------------------------------------


def test_the_same_computation_again_is_no_change() -> None:
    engines = f"numpy,fd,{AUTODIFF}"
    before = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines=engines)
    after = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines=engines)
    comparison = after.against(gradlab.GradientReport.from_json(before.to_json()))
    assert comparison.ok, comparison
    assert set(comparison.changes) == set(before.engines)
    assert all(change.rho == 0 and change.worst is None for change in comparison.changes.values())
    comparison.raise_if_changed()


def test_a_changed_hand_gradient_is_caught_and_shown_with_its_numbers() -> None:
    before = gradlab.compare_gradients(_quadratic(), DATA, POINT, engines="numpy,fd")
    after = gradlab.compare_gradients(_quadratic(1 + 1e-6), DATA, POINT, engines="numpy,fd")
    assert after.ok  # 1e-6 is within fd's tolerance: only the baseline can see it
    comparison = after.against(before)
    assert comparison.regressions == ("numpy",)
    change = comparison.changes["numpy"]
    assert change.worst == "w"
    assert change.then == pytest.approx(before.values["numpy"]["w"], rel=1e-15)
    assert change.now == pytest.approx(before.values["numpy"]["w"] * (1 + 1e-6), rel=1e-12)
    assert change.rho == pytest.approx(5e-7, rel=1e-3)  # |Δ|/(|a|+|b|) = 1e-6/2 for |w| ≥ 1
    assert not comparison.changes["fd"].changed
    text = str(comparison)
    assert "numpy" in text
    assert f"{change.then:.12g}" in text
    assert "YES" in text
    assert "w:" in repr(comparison) or "at w" in repr(comparison)
    with pytest.raises(gradlab.Regression) as raised:
        comparison.raise_if_changed()
    assert isinstance(raised.value, AssertionError)
    assert "changed on numpy" in str(raised.value)
    assert raised.value.comparison is comparison


def test_the_same_nan_as_before_is_no_change_and_a_new_one_is() -> None:
    root = gradlab.Problem(lambda p, d, xp: xp.sum(xp.sqrt(p["x"])), name="root")
    before = gradlab.compare_gradients(root, {}, {"x": [-1.0, 4.0]}, engines="fd,jax")
    assert np.isnan(before.values["jax"]["x"][0])
    again = gradlab.GradientReport.from_json(before.to_json())
    assert before.against(again).ok
    record = before.to_dict()
    record["values"]["jax"]["x"][0] = 0.5  # the baseline had a number where now is NaN
    comparison = before.against(gradlab.GradientReport.from_dict(record))
    assert comparison.regressions == ("jax",)
    assert comparison.changes["jax"].worst == "x[0]"


def test_a_change_within_round_off_is_no_change() -> None:
    before = gradlab.compare_gradients(_quadratic(), DATA, POINT, engines="numpy,fd")
    after = gradlab.compare_gradients(_quadratic(1 + 1e-13), DATA, POINT, engines="numpy,fd")
    comparison = after.against(before)
    assert comparison.ok, comparison
    assert 0 < comparison.changes["numpy"].rho < 1e-12


def test_the_report_criterion_judges_the_change() -> None:
    before = gradlab.compare_gradients(_quadratic(), DATA, POINT, engines="numpy,fd")
    for scale, verdict in ((1 + 1e-4, True), (1 + 1e-2, False)):
        after = gradlab.compare_gradients(
            _quadratic(scale), DATA, POINT, engines="numpy,fd", atol=0, rtol=1e-3
        )
        comparison = after.against(before)
        assert comparison.ok is verdict
        assert comparison.changes["numpy"].tolerance == "atol 0, rtol 0.001"
    loose = gradlab.compare_gradients(
        _quadratic(1 + 1e-4), DATA, POINT, engines="numpy,fd", tolerance=1e-3
    )
    assert loose.against(before).ok


def test_engines_missing_new_and_not_asked_for_are_told_apart() -> None:
    before = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines=f"numpy,fd,{AUTODIFF}")
    after = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,complex-step")
    comparison = after.against(before)
    assert comparison.ok
    assert comparison.new == ("complex-step",)
    assert comparison.unchecked == ("fd", AUTODIFF)
    # An engine of the baseline that was tried now and could not run is a regression.
    skipped = dataclasses.replace(after, skipped={AUTODIFF: "not installed"})
    comparison = skipped.against(before)
    assert comparison.regressions == (AUTODIFF,)
    assert comparison.missing == {AUTODIFF: "not installed"}
    assert f"no longer ran: {AUTODIFF}" in comparison.summary()


def test_what_changed_in_the_installation_is_named() -> None:
    before = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd")
    record = before.to_dict()
    record["provenance"]["numpy"] = "1.0.0"
    record["provenance"]["engines"]["fd"]["fd_order"] = 2
    comparison = before.against(gradlab.GradientReport.from_dict(record))
    assert comparison.versions["numpy"] == ("1.0.0", np.__version__)
    assert comparison.versions["fd fd_order"] == (2, 4)
    assert f"numpy 1.0.0 → {np.__version__}" in str(comparison)


@pytest.mark.parametrize(
    ("now", "match"),
    [
        (
            lambda: gradlab.compare_gradients(
                QUADRATIC, DATA, POINT, engines="numpy,fd", dtype="float32"
            ),
            "dtype 'float64', not 'float32'",
        ),
        (
            lambda: gradlab.compare_gradients(
                QUADRATIC, DATA, {"w": 1.0, "b": -0.5}, engines="numpy,fd"
            ),
            "other parameters",
        ),
        (
            lambda: gradlab.compare_gradients(
                QUADRATIC, QUADRATIC.make_data(40, seed=2), POINT, engines="numpy,fd"
            ),
            "other data",
        ),
        (
            lambda: gradlab.compare_hessians(QUADRATIC, DATA, POINT, engines="numpy,fd"),
            "derivative 'gradient', not 'hessian'",
        ),
        (
            lambda: gradlab.compare_gradients(
                gradlab.LinearRegression(),
                DATA | {"x": DATA["x"][:, None]},
                {"w": [1.5], "b": -0.5},
                engines="numpy,fd",
            ),
            "problem 'quadratic'",
        ),
    ],
)
def test_a_baseline_of_something_else_is_refused_naming_baseline(now: Any, match: str) -> None:
    before = gradlab.compare_gradients(QUADRATIC, DATA, POINT, engines="numpy,fd")
    with pytest.raises(gradlab.ArgumentError, match=match) as raised:
        now().against(before)
    assert raised.value.argument == "baseline"


def test_a_baseline_at_another_point_of_the_same_shapes_says_where_they_differ() -> None:
    """Another --seed gives a point of the same names and shapes: a summary of the two reads
    alike, so the refusal names the first element that differs and both its values."""
    rng = np.random.default_rng(0)
    first = {"w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)}
    moved = {"w": first["w"].copy(), "b": first["b"].copy()}
    moved["w"][2, 3] += 0.25
    moved["w"][3, 1] -= 0.5
    problem = gradlab.Problem(
        lambda p, d, xp: xp.sum(p["w"] ** 2) + xp.sum(p["b"] ** 2), name="bowl"
    )
    before = gradlab.compare_gradients(problem, {}, first, engines="fd,complex-step")
    now = gradlab.compare_gradients(problem, {}, moved, engines="fd,complex-step")
    with pytest.raises(gradlab.ArgumentError) as raised:
        now.against(before)
    expected = (
        f"w[2, 3] is {float(first['w'][2, 3])!r} there, {float(moved['w'][2, 3])!r} here "
        "(and 1 more of its 20 values)"
    )
    assert expected in str(raised.value)


def test_hessian_vector_products_at_another_tangent_are_refused() -> None:
    before = gradlab.compare_hessians(
        QUADRATIC, DATA, POINT, tangent={"w": 1.0, "b": 0.0}, engines="numpy,fd"
    )
    after = gradlab.compare_hessians(
        QUADRATIC, DATA, POINT, tangent={"w": 0.0, "b": 1.0}, engines="numpy,fd"
    )
    with pytest.raises(gradlab.ArgumentError, match="other tangent"):
        after.against(before)
    with pytest.raises(gradlab.ArgumentTypeError, match="baseline: must be a GradientReport"):
        after.against(3)  # type: ignore[arg-type]


def test_fit_paths_against_a_baseline() -> None:
    def fits(problem: gradlab.AbstractProblem) -> gradlab.FitComparison:
        return gradlab.compare_fits(
            problem, DATA, optimizer=gradlab.sgd(0.01), steps=40, init=POINT, engines="numpy,fd"
        )

    before = fits(_quadratic())
    assert fits(_quadratic()).against(_saved(before)).ok
    comparison = fits(_quadratic(1 + 1e-5)).against(before)
    assert comparison.regressions == ("numpy",)
    change = comparison.changes["numpy"]
    assert change.worst is not None
    assert "after" in change.worst
    assert change.rho > 1e-9
    assert set(comparison.times) == {"numpy", "fd"}
    with pytest.raises(gradlab.ArgumentError, match="steps 40, not 41"):
        gradlab.compare_fits(
            _quadratic(),
            DATA,
            optimizer=gradlab.sgd(0.01),
            steps=41,
            init=POINT,
            engines="numpy,fd",
        ).against(before)


def test_a_fit_that_now_diverges_is_a_change_whatever_its_numbers() -> None:
    def once(lr: float) -> gradlab.FitResult:
        return gradlab.fit(
            QUADRATIC,
            DATA,
            engine="numpy",
            optimizer=gradlab.sgd(lr),
            steps=60,
            init=POINT,
            trajectory=True,
        )

    before, after = once(1e-3), once(100.0)
    comparison = after.against(before)
    assert not comparison.ok
    assert "now diverged" in comparison.changes["numpy"].note
    assert "now diverged" in str(comparison)
    assert once(1e-3).against(before).ok
    assert once(100.0).against(after).ok  # diverging the same way again is no change
    # Without trajectories the final parameters and the losses are compared.
    plain = gradlab.fit(
        QUADRATIC, DATA, engine="numpy", optimizer=gradlab.sgd(1e-3), steps=60, init=POINT
    )
    assert plain.against(gradlab.FitResult.from_json(before.to_json())).ok
    with pytest.raises(gradlab.ArgumentError, match="engine 'numpy', not 'fd'"):
        gradlab.fit(
            QUADRATIC, DATA, engine="fd", optimizer=gradlab.sgd(1e-3), steps=60, init=POINT
        ).against(before)


def test_a_baseline_comparison_is_saved_and_loaded() -> None:
    before = gradlab.compare_gradients(_quadratic(), DATA, POINT, engines="numpy,fd")
    after = gradlab.compare_gradients(_quadratic(1.1), DATA, POINT, engines="numpy,fd")
    comparison = after.against(before)
    loaded = gradlab.BaselineComparison.from_json(comparison.to_json())
    assert loaded == comparison
    assert str(loaded) == str(comparison)


@settings(max_examples=10, deadline=None)
@given(
    case=st.sampled_from(sorted(CASES)).flatmap(lambda name: CASES[name]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_any_report_round_trips_and_matches_itself(case: Any, dtype: str) -> None:
    problem, data, params = case
    report = gradlab.compare_gradients(problem, data, params, engines="numpy,fd", dtype=dtype)
    loaded = gradlab.GradientReport.from_json(report.to_json())
    _same(report, loaded)
    assert report.against(loaded).ok


# -- The command line --------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradlab", *args], capture_output=True, text=True, timeout=600
    )


def test_compare_against_a_baseline_on_the_command_line(tmp_path: Path) -> None:
    common = ["compare", "--engines", "numpy,fd", "--n", "30", "--params", "w=1.5", "b=-0.5"]
    made = _cli(*common, "--json")
    assert made.returncode == 0, made.stderr
    baseline = tmp_path / "baseline.json"
    baseline.write_text(made.stdout)

    same = _cli(*common, "--baseline", str(baseline))
    assert same.returncode == 0, same.stderr
    assert "No change since the baseline" in same.stdout

    record = json.loads(made.stdout)
    record["values"]["numpy"]["w"] *= 1 + 1e-6
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(record))
    out = _cli(*common, "--baseline", str(changed), "--json")
    assert out.returncode == 1
    printed = json.loads(out.stdout)
    assert printed["against_baseline"]["regressions"] == ["numpy"]
    assert gradlab.GradientReport.from_dict(printed).ok  # still a report

    other = _cli(*common[:3], "--n", "31", *common[5:], "--baseline", str(baseline))
    assert other.returncode == 2
    assert "--baseline: was computed on other data" in other.stderr
    missing = _cli("compare", "--baseline", str(tmp_path / "nothing.json"))
    assert missing.returncode == 2
    assert "--baseline: cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr + other.stderr


def test_fit_against_a_baseline_on_the_command_line(tmp_path: Path) -> None:
    common = ["fit", "--steps", "50", "--n", "30"]
    made = _cli(*common, "--json")
    assert made.returncode == 0, made.stderr
    baseline = tmp_path / "fit.json"
    baseline.write_text(made.stdout)
    assert _cli(*common, "--baseline", str(baseline)).returncode == 0
    faster = _cli(*common, "--lr", "0.002", "--baseline", str(baseline))
    assert faster.returncode == 1
    assert "Regression against the baseline" in faster.stdout
    wrong = _cli("compare", "--baseline", str(baseline))
    assert wrong.returncode == 2
    assert "holds a FitResult, not a GradientReport" in wrong.stderr
