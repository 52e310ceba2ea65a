"""compare_gradients and compare_hessians: verdicts, outliers, output formats, bad input.

Oracles: engines known to be right (hand derivations checked against fd elsewhere), bugs
planted at a known element by a known factor (whose rho is then known from the definition),
and the definition of rho itself.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import PlantedBug, default_engines, require_engine
from hypothesis import given
from hypothesis import strategies as st

import gradlab

PROBLEM = gradlab.LinearRegression()
DATA = PROBLEM.make_data(40, d=3, seed=5)
PARAMS = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array(0.25)}


def installed(*names: str) -> list[str]:
    return [name for name in names if name in gradlab.available_engines()]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "problem", [gradlab.Quadratic(), gradlab.LinearRegression(), gradlab.LogisticRegression()]
)
def test_every_installed_engine_agrees(problem: Any, dtype: str) -> None:
    data = problem.make_data(60, seed=1)
    shapes = problem.param_shapes(problem.check_data(data))
    params = {name: np.full(shape, 0.3) for name, shape in shapes.items()}
    report = gradlab.compare_gradients(problem, data, params, dtype=dtype)
    assert report.ok, str(report)
    assert report.reference == "numpy"
    assert report.engines == default_engines()
    for name in report.engines:
        verdict = report.verdicts[name]
        assert verdict.tolerance == gradlab.tolerance(dtype, against_fd="fd" in (name, "numpy"))
        assert all(value.dtype == np.dtype(dtype) for value in report.values[name].values())
    report.raise_if_disagree()


def test_rho_matrix_is_the_definition_applied_to_the_values() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS)
    for i, a in enumerate(report.engines):
        for j, b in enumerate(report.engines):
            by_definition = max(
                float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(x) + np.abs(y))))
                for x, y in zip(report.values[a].values(), report.values[b].values(), strict=True)
            )
            assert report.rho[i, j] == pytest.approx(by_definition, rel=1e-12, abs=0.0)
    assert np.array_equal(report.rho, report.rho.T)


def test_a_planted_bug_is_found_at_its_element_with_its_size() -> None:
    bug = PlantedBug(index=(1,), factor=1.01)
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy", "fd", bug])
    truth = report.values["numpy"]["w"][1]
    # rho of g and 1.01·g is 0.01·|g| / max(1, 2.01·|g|): the definition, worked by hand.
    expected = 0.01 * abs(truth) / max(1.0, 2.01 * abs(truth))
    verdict = report.verdicts["planted"]
    assert verdict.rho == pytest.approx(expected, rel=1e-6)
    assert verdict.worst == "w[1]"
    assert not verdict.agrees
    assert report.outlier == "planted"
    assert report.disagreeing == ("planted",)
    assert not report.ok
    assert "suspect planted" in str(report)
    with pytest.raises(gradlab.Disagreement) as caught:
        report.raise_if_disagree()
    assert isinstance(caught.value, AssertionError)
    assert caught.value.report is report


def test_a_wrong_reference_is_named_as_the_outlier() -> None:
    """A bad hand derivation: every other engine agrees, so the reference is to blame."""

    def wrong_hand(params: Any, data: Any) -> Any:
        loss, grads = gradlab.Quadratic().hand_value_and_grad(params, data)
        return loss, {"w": grads["w"], "b": 2 * grads["b"]}

    quadratic = gradlab.Quadratic()
    buggy = gradlab.Problem(quadratic.loss, wrong_hand, name="buggy")
    report = gradlab.compare_gradients(
        buggy,
        quadratic.make_data(30),
        {"w": 1.0, "b": 1.0},
        engines=[*installed("torch", "jax"), "fd"],
    )
    assert report.reference == "numpy"
    assert report.engines[0] == "numpy"
    assert report.outlier == "numpy"
    assert report.disagreeing == ("numpy",)
    assert "numpy (the reference) disagrees with every other engine" in report.summary()


def test_two_engines_cannot_name_an_outlier() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy", PlantedBug()])
    assert report.outlier is None
    assert report.disagreeing == ("planted",)
    # Either could be the wrong one: the summary blames neither.
    assert "cannot tell which is wrong" in report.summary()
    assert "suspect" not in str(report)


def test_a_failed_report_shows_the_numbers_where_engines_part() -> None:
    bug = PlantedBug(index=(1,), factor=1.01)
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy", "fd", bug])
    truth = float(report.values["numpy"]["w"][1])
    worst = report.largest_differences("planted", 3)
    # The planted element first, with both values and rho by the definition.
    element, expected, value, rho = worst[0]
    assert element == "w[1]"
    assert expected == truth
    assert value == pytest.approx(1.01 * truth, rel=1e-12)
    assert rho == pytest.approx(abs(value - expected) / max(1.0, abs(value) + abs(expected)))
    assert [item[3] for item in worst] == sorted((item[3] for item in worst), reverse=True)
    text = str(report)
    assert "Largest differences, planted against numpy (tolerance 1e-09):" in text
    assert f"{expected:.12g}" in text
    assert f"{value:.12g}" in text
    # repr (what `assert report.ok, report` prints) leads with the numbers.
    assert repr(report).startswith(
        f"GradientReport('linear_regression', gradient, float64: planted and numpy differ most "
        f"at w[1]: {value:.10g} vs {expected:.10g}"
    )
    agreeing = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd")
    assert (
        repr(agreeing) == "GradientReport('linear_regression', gradient, float64: numpy, fd agree)"
    )
    assert "Largest differences" not in str(agreeing)
    with pytest.raises(gradlab.ArgumentError):
        report.largest_differences("jax-typo")
    for count in (0, -1, 2.5, "3"):
        with pytest.raises(gradlab.ArgumentError) as caught:
            report.largest_differences("planted", count)  # type: ignore[arg-type]
        assert caught.value.argument == "count"


PYTEST_FAILURE = """
import gradlab


def broken(params, data):
    loss, grads = gradlab.Quadratic().hand_value_and_grad(params, data)
    return loss, {"w": grads["w"], "b": 2 * grads["b"]}


problem = gradlab.Problem(gradlab.Quadratic().loss, broken, name="broken")
data = gradlab.Quadratic().make_data(20)


def test_assert_ok():
    report = gradlab.compare_gradients(problem, data, {"w": 1.0, "b": 0.5}, engines="numpy,fd")
    assert report.ok, report


def test_raise_if_disagree():
    report = gradlab.compare_gradients(problem, data, {"w": 1.0, "b": 0.5}, engines="numpy,fd")
    report.raise_if_disagree()
"""


def test_a_broken_hand_gradient_shows_its_values_in_a_pytest_failure(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(PYTEST_FAILURE)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_user.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert "2 failed" in out.stdout, out.stdout
    quadratic = gradlab.Quadratic()
    _, right = quadratic.hand_value_and_grad({"w": 1.0, "b": 0.5}, quadratic.make_data(20))
    true_b = float(right["b"])
    # assert report.ok, report: the repr, with fd's value (right) beside the hand one (2x).
    shown = re.search(r"fd and numpy differ most at b: (\S+) vs (\S+), rho", out.stdout)
    assert shown is not None, out.stdout
    assert float(shown[1]) == pytest.approx(true_b, rel=1e-8)
    assert float(shown[2]) == pytest.approx(2 * true_b, rel=1e-9)
    # raise_if_disagree: the table of largest differences, both values in full.
    table = out.stdout.split("Largest differences, fd against numpy", 1)[1]
    row = re.search(r"\n\S*\s*b\s+(\S+)\s+(\S+)\s+\S+\n", table)
    assert row is not None, table
    assert row[1] == f"{2 * true_b:.12g}"  # the broken hand value, in full
    assert float(row[2]) == pytest.approx(true_b, rel=1e-8)  # fd's, to fd's accuracy
    # gradlab's own frame is hidden: the failure points at the user's line.
    assert "raise Disagreement" not in out.stdout


def test_problem_without_hand_gradient_uses_fd_and_skips_numpy_with_a_note() -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.sum((p["a"] * d["t"]) ** 2), name="plain")
    report = gradlab.compare_gradients(problem, {"t": [1.0, 2.0]}, {"a": 0.5})
    assert report.reference == "fd"
    assert "numpy" not in report.engines
    assert "hand-derived" in report.skipped["numpy"]
    assert "skipped numpy" in str(report)
    with pytest.raises(gradlab.HandGradientMissing):
        gradlab.compare_gradients(problem, {"t": [1.0]}, {"a": 0.5}, engines=["numpy", "fd"])


def test_uninstalled_engines_are_skipped_with_a_note_unless_asked_for() -> None:
    gradlab.register_engine(
        "not-installed", gradlab.engines.NumpyEngine, requires=["no_such_module_for_gradlab"]
    )
    try:
        report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS)
        assert "no_such_module_for_gradlab" in report.skipped["not-installed"]
        assert "not-installed" not in report.engines
        with pytest.raises(gradlab.EngineUnavailable):
            gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,not-installed")
    finally:
        gradlab.unregister_engine("not-installed")


def test_reference_is_added_first_and_tolerance_can_be_overridden() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy"], reference="fd")
    assert report.engines == ("fd", "numpy")
    assert report.reference == "fd"
    strict = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd", tolerance=1e-18)
    assert not strict.ok  # fd is not exact to 1e-18
    assert strict.verdicts["fd"].tolerance == 1e-18


def test_non_finite_gradients_are_total_disagreement() -> None:
    root = gradlab.Problem(
        lambda p, d, xp: xp.sum(xp.sqrt(p["a"] * d["t"])),
        lambda p, d: (
            np.sum(np.sqrt(p["a"] * d["t"])),
            {"a": np.sum(d["t"] / (2 * np.sqrt(p["a"] * d["t"])))},
        ),
        name="root",
    )
    with np.errstate(divide="ignore"):
        report = gradlab.compare_gradients(root, {"t": [1.0]}, {"a": 0.0}, engines="numpy,fd")
    assert math.isinf(report.verdicts["fd"].rho)
    assert not report.ok
    record = json.loads(report.to_json())  # strict JSON: no bare Infinity
    assert record["verdicts"]["fd"]["rho"] == "inf"


def test_to_dict_and_json_carry_everything() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd")
    record = json.loads(report.to_json())
    assert record == report.to_dict()
    assert record["ok"] is True
    assert record["engines"] == ["numpy", "fd"]
    assert record["values"]["fd"]["w"] == pytest.approx(report.values["fd"]["w"].tolist())
    assert record["rho"]["numpy"]["fd"] == report.verdicts["fd"].rho
    facts = record["provenance"]
    for key in ("gradlab", "numpy", "torch", "jax", "dtype", "platform", "time", "threads"):
        assert key in facts, key
    assert "jax_enable_x64" in facts
    assert facts["engines"]["fd"]["device"] == "cpu"


def test_to_frame_has_a_row_per_engine() -> None:
    pytest.importorskip("pandas")
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd")
    frame = report.to_frame()
    assert list(frame.index) == ["numpy", "fd"]
    assert frame.loc["fd", "rho"] == report.verdicts["fd"].rho
    assert bool(frame.loc["fd", "agrees"]) is True
    assert frame.loc["numpy", "rho_fd"] == report.rho[0, 1]


def test_to_frame_without_pandas_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy")
    with pytest.raises(gradlab.MissingDependency, match=r"needs pandas.*: install pandas"):
        report.to_frame()


def test_str_is_a_readable_table() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd")
    text = str(report)
    assert text.startswith("Gradient agreement: linear_regression, float64, at w=")
    assert "rho vs numpy" in text
    assert "fd " in text
    assert "All 2 engines' gradients agree within tolerance." in text


def test_hessian_report_compares_full_matrices_and_labels_elements() -> None:
    bugged = gradlab.Problem(
        PROBLEM.loss,
        PROBLEM.hand_value_and_grad,
        hvp=lambda p, v, d: {
            **PROBLEM.hand_hvp(p, v, d),
            "b": 1.5 * PROBLEM.hand_hvp(p, v, d)["b"],
        },
        name="bugged",
    )
    report = gradlab.compare_hessians(bugged, DATA, PARAMS, engines="numpy,fd")
    assert report.derivative == "hessian"
    assert report.values["fd"]["hessian"].shape == (4, 4)
    assert not report.ok
    # Only ∂(∇_b)/∂· is wrong: the worst element is in the b row.
    assert report.verdicts["fd"].worst is not None
    assert report.verdicts["fd"].worst.startswith("∂²/∂")
    assert "b" in report.verdicts["fd"].worst
    product = gradlab.compare_hessians(
        PROBLEM, DATA, PARAMS, tangent={"w": [1.0, 0.0, 0.0], "b": 1.0}, engines="numpy,fd"
    )
    assert product.derivative == "hvp"
    assert product.ok
    assert "Hessian-vector products agree" in product.summary()


def test_hessians_skip_engines_without_second_derivatives() -> None:
    class NoSecond(gradlab.engines.NumpyEngine):
        name = "no-second"

        def hvp(self, problem: Any) -> Any:
            raise gradlab.NotSupported("no-second has no second derivatives")

    gradlab.register_engine("no-second", NoSecond)
    try:
        report = gradlab.compare_hessians(PROBLEM, DATA, PARAMS)
        assert "no-second" in report.skipped
        assert report.ok
        with pytest.raises(gradlab.NotSupported):
            gradlab.compare_hessians(PROBLEM, DATA, PARAMS, engines="numpy,no-second")
    finally:
        gradlab.unregister_engine("no-second")


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"engines": []}, "engines"),
        ({"engines": 3}, "engines"),
        ({"engines": "numpy,numpy"}, "more than once"),
        ({"engines": "nmupy"}, "did you mean 'numpy'"),
        ({"reference": 1.5}, "reference"),
        ({"tolerance": -1.0}, "tolerance"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(gradlab.ArgumentError, match=match):
        gradlab.compare_gradients(PROBLEM, DATA, PARAMS, **arguments)


def test_params_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(
        gradlab.ArgumentError, match=r"params\['w'\]: has shape \(2,\), expected \(3,\)"
    ):
        gradlab.compare_gradients(PROBLEM, DATA, {"w": [1.0, 2.0], "b": 0.0})


def test_user_data_is_never_modified() -> None:
    data = {name: value.copy() for name, value in DATA.items()}
    params = {name: np.array(value, copy=True) for name, value in PARAMS.items()}
    gradlab.compare_gradients(PROBLEM, data, params)
    gradlab.compare_hessians(PROBLEM, data, params)
    for name in DATA:
        np.testing.assert_array_equal(data[name], DATA[name])
    for name in PARAMS:
        np.testing.assert_array_equal(params[name], PARAMS[name])


def test_plot_is_a_labelled_heatmap_and_writes_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy", "fd", PlantedBug()])
    figure = report.plot()
    axes = figure.axes[0]
    assert axes.get_title() == "Do the engines agree? gradients, float64"
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["numpy", "fd", "planted"]
    cells = [text.get_text() for text in axes.texts]
    assert sum("✗" in cell for cell in cells) == 4  # planted vs numpy and fd, both ways
    target = tmp_path / "agreement.png"
    assert report.plot(str(target)) is not None
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(gradlab.ArgumentError, match="does not exist"):
        report.plot(str(tmp_path / "missing" / "x.png"))
    with pytest.raises(gradlab.ArgumentError, match=r"\.png, \.pdf or \.svg"):
        report.plot(str(tmp_path / "x.jpeg2"))


def test_plot_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy")
    with pytest.raises(gradlab.MissingDependency, match=r"gradlab\[plot\]"):
        report.plot()


def test_torch_report_records_its_device_and_threads() -> None:
    require_engine("torch")
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="torch")
    facts = report.provenance["engines"]["torch"]
    assert facts["device"] == "cpu"
    assert isinstance(facts["threads"], int)


def test_float32_reports_measure_round_off_against_float64() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd", dtype="float32")
    point = {name: value.astype(np.float64) for name, value in report.params.items()}
    _, truth = gradlab.value_and_grad(PROBLEM, DATA, point, engine="numpy", dtype="float64")
    for name in report.engines:
        assert report.rho_float64[name] == pytest.approx(
            gradlab.max_rho(truth, report.values[name]), rel=1e-12, abs=0.0
        )
        assert report.rho_float64[name] <= gradlab.tolerance("float32")
    assert "rho vs float64 numpy" in str(report)
    assert gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy").rho_float64 == {}


def test_atol_and_rtol_judge_each_element_in_the_familiar_form() -> None:
    # A planted relative error of 1e-6 on w[1]: rtol 2e-6 passes it, rtol 5e-7 does not,
    # whatever rho says; the verdict follows |a − b| ≤ atol + rtol·max(|a|, |b|).
    bug = PlantedBug(param="w", index=(1,), factor=1 + 1e-6)
    exact = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy"])
    true = float(exact.values["numpy"]["w"][1])
    planted = true * (1 + 1e-6)
    limit = abs(planted - true) / max(abs(planted), abs(true))  # the relative error, ~1e-6
    passes = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy", bug], rtol=2e-6)
    fails = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=["numpy", bug], rtol=5e-7)
    assert 5e-7 < limit < 2e-6
    assert passes.ok
    assert passes.verdicts["planted"].close is True
    assert not fails.ok
    assert fails.verdicts["planted"].close is False
    assert (fails.atol, fails.rtol) == (0.0, 5e-7)
    # The worst element is the planted one, with both values, and the criterion is shown.
    element, reference, value, _ = fails.largest_differences("planted", 1)[0]
    assert (element, reference, value) == ("w[1]", true, planted)
    assert "atol 0, rtol 5e-07" in str(fails)
    assert "beyond atol 0, rtol 5e-07" in repr(fails)
    # atol alone: an absolute allowance just above and below the planted difference.
    gap = abs(planted - true)
    loose = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=[bug], atol=gap * 1.5)
    tight = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=[bug], atol=gap / 1.5)
    assert loose.ok
    assert not tight.ok
    assert json.loads(tight.to_json())["atol"] == gap / 1.5


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"tolerance": 1e-6, "atol": 1e-6}, "tolerance"),
        ({"rtol": -1e-6}, "rtol"),
        ({"atol": float("nan")}, "atol"),
        ({"atol": 0.0, "rtol": 0.0}, "atol"),
        ({"rtol": "1e-6"}, "rtol"),
    ],
)
def test_bad_atol_and_rtol_are_refused_by_name(arguments: dict[str, Any], argument: str) -> None:
    with pytest.raises(gradlab.GradlabError) as caught:
        gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines="numpy,fd", **arguments)
    assert caught.value.argument == argument


@given(
    a=st.floats(-1e6, 1e6, allow_nan=False),
    b=st.floats(-1e6, 1e6, allow_nan=False),
    tol=st.floats(1e-12, 1e-1),
)
def test_atol_rtol_and_rho_are_within_a_factor_two_of_each_other(
    a: float, b: float, tol: float
) -> None:
    # The documented relation, from the definitions: excess is symmetric; rho ≤ τ/2 implies
    # closeness at atol = rtol = τ, and closeness implies rho ≤ 2τ.
    from gradlab._agreement import excess

    score = float(excess(a, b, tol, tol))
    assert score == float(excess(b, a, tol, tol))
    manual = abs(a - b) <= tol + tol * max(abs(a), abs(b))
    assert (score <= 1.0) == manual or math.isclose(score, 1.0, rel_tol=1e-9)
    r = abs(a - b) / max(1.0, abs(a) + abs(b))
    if r <= tol / 2:
        assert manual
    if manual:
        assert r <= 2 * tol * (1 + 1e-12)


# Engines that run one implementation are one voice ------------------------------------------

RNG_VOICES = np.random.default_rng(3)
LINE_DATA = {"x": RNG_VOICES.standard_normal((20, 3)), "y": RNG_VOICES.standard_normal(20)}
LINE_INIT = {"w": RNG_VOICES.standard_normal(3)}


def _line_hand(p: Any, d: Any) -> tuple[Any, Any]:
    """The mean squared error and its gradient, derived by hand."""
    r = d["x"] @ p["w"] - d["y"]
    return np.mean(r**2), {"w": 2 * d["x"].T @ r / len(r)}


def _line_numpy_with_a_bug(p: Any, d: Any) -> Any:
    return np.mean((1.01 * (d["x"] @ p["w"]) - d["y"]) ** 2)  # a stray factor: the bug


def test_two_engines_running_one_implementation_do_not_outvote_a_third() -> None:
    """fd and complex-step both differentiate the NumPy implementation: they agree with
    each other because they share its bug, and must not outvote the hand derivation."""
    problem = gradlab.NativeProblem(
        name="line", numpy=_line_numpy_with_a_bug, value_and_grad=_line_hand
    )
    report = gradlab.compare_gradients(
        problem, LINE_DATA, LINE_INIT, engines="numpy,fd,complex-step", reference="fd"
    )
    assert report.implementations == {
        "fd": "numpy implementation",
        "numpy": "hand derivation",
        "complex-step": "numpy implementation",
    }
    assert report.outlier is None  # two voices: nothing can be named
    assert not report.ok
    summary = report.summary()
    assert "between two implementations" in summary
    assert "fd and complex-step ran the numpy implementation" in summary
    assert "suspect" not in summary
    loaded = gradlab.GradientReport.from_json(report.to_json())
    assert loaded.implementations == report.implementations
    assert loaded.summary() == summary


def test_the_implementation_that_stands_alone_is_suspected_with_all_its_engines() -> None:
    require_engine("torch")
    require_engine("jax")
    import jax.numpy as jnp
    import torch

    problem = gradlab.NativeProblem(
        name="line",
        numpy=lambda p, d: np.mean((d["x"] @ p["w"] - d["y"]) ** 2),
        torch=lambda p, d: torch.mean((1.01 * (d["x"] @ p["w"]) - d["y"]) ** 2),
        jax=lambda p, d: jnp.mean((d["x"] @ p["w"] - d["y"]) ** 2),
    )
    report = gradlab.compare_gradients(
        problem, LINE_DATA, LINE_INIT, engines="fd,jax,torch,torch-func"
    )
    assert report.outlier == "torch"
    assert report.disagreeing == ("torch", "torch-func")
    assert "suspect the torch implementation" in report.summary()


@pytest.mark.parametrize(
    ("voices", "expected"),
    [
        ({}, "c"),  # every engine its own voice: c disagrees with a, b, d, which agree
        ({"a": "A", "b": "A"}, "c"),  # a, b one voice; still three: c stands alone
        ({"a": "A", "b": "A", "d": "A"}, None),  # two voices: A and c
        ({"c": "C", "d": "C"}, None),  # c and d share a voice but disagree: no verdict
    ],
)
def test_outlier_counts_voices_not_engines(voices: dict[str, str], expected: Any) -> None:
    from gradlab.comparison._kernel import outlier

    names = ("a", "b", "c", "d")
    agree = np.ones((4, 4), dtype=bool)
    agree[2, [0, 1, 3]] = agree[[0, 1, 3], 2] = False  # c agrees with nobody
    assert outlier(names, agree, voices) == expected
