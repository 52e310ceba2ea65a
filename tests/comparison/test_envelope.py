"""compare_fits(..., envelope=k): each path judged step by step against how far round-off
carries the fit, so that a bug stands out where a fixed tolerance cannot tell.

Oracles, none of them the code under test: float64's machine epsilon (a smooth fit's
drift stays at round-off); bugs planted where and when we choose (the step a bug starts
acting is read off the reference's own losses); a chaotic fit whose correct engines part
by far more than gradlab's fixed tolerance (the comparison without an envelope says so);
gradient accumulation, whose gradient is the full batch's up to round-off (checked against
the problem's hand gradient). Every run is deterministic: fixed data, starts and seeds.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from _helpers import first_installed

import gradlab
from gradlab.comparison._divergence import ULPS, moved_data
from gradlab.comparison._kinds import element_labels

EPS = float(np.finfo(np.float64).eps)
#: A smooth fit's envelope stays at round-off: a few hundred ulps at the very most.
ROUND_OFF = 256 * EPS


class Scaled(gradlab.engines.NumpyEngine):
    """The numpy engine with its whole gradient multiplied by ``factor`` wherever the loss it
    computes is at most ``below`` (everywhere by default), and bitwise numpy's elsewhere.

    Stateless (a function of the parameters alone), so every run of a comparison (warm-up,
    timed, recorded, moved) plants the same bug.
    """

    def __init__(self, factor: float, below: float = math.inf, name: str = "scaled") -> None:
        self.name, self.factor, self.below = name, factor, below

    def value_and_grad(self, problem: Any) -> Any:
        inner = super().value_and_grad(problem)

        def value_and_grad(params: Any, data: Any) -> Any:
            loss, grads = inner(params, data)
            if loss <= self.below:
                grads = {name: grad * self.factor for name, grad in grads.items()}
            return loss, grads

        return value_and_grad


class Accumulated(gradlab.engines.NumpyEngine):
    """Gradient accumulation: the numpy engine's loss and gradient on ``chunks`` contiguous
    chunks of the rows, combined as the problem reduces over rows (a mean: each chunk's
    weighted by its share of the rows; a sum: added)."""

    name = "accumulated"

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    def value_and_grad(self, problem: Any) -> Any:
        inner = super().value_and_grad(problem)
        mean = problem.reduction == "mean"

        def value_and_grad(params: Any, data: Any) -> Any:
            rows = len(data["x"])
            loss, grads = np.float64(0.0), {name: np.zeros_like(p) for name, p in params.items()}
            for chunk in np.array_split(np.arange(rows), self.chunks):
                weight = len(chunk) / rows if mean else 1.0
                part = {name: value[chunk[0] : chunk[-1] + 1] for name, value in data.items()}
                chunk_loss, chunk_grads = inner(params, part)
                loss = loss + weight * chunk_loss
                grads = {name: grads[name] + weight * chunk_grads[name] for name in grads}
            return loss, grads

        return value_and_grad


# -- A smooth, convex fit: drift at round-off, and a bug of 1e-6 seen at the first step ----

LINEAR = gradlab.LinearRegression()
LINEAR_DATA = LINEAR.make_data(200, d=3, seed=0)
LINEAR_START = {"w": [0.0, 0.0, 0.0], "b": 0.0}
LINEAR_LR = 0.1


def linear_fits(engines: list[Any], **options: Any) -> gradlab.FitComparison:
    return gradlab.compare_fits(
        LINEAR,
        LINEAR_DATA,
        optimizer=gradlab.sgd(LINEAR_LR),
        steps=300,
        init=LINEAR_START,
        engines=engines,
        **options,
    )


def test_a_smooth_fit_drifts_by_round_off_and_a_planted_bug_leaves_at_once() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    comparison = linear_fits(["numpy", "torch", "jax", Scaled(1 + 1e-6)], envelope=3)
    assert comparison.envelope is not None
    assert comparison.envelope_bound is not None
    for name in ("numpy", "torch", "jax"):
        assert len(comparison.envelope[name]) == 301
        assert float(np.max(comparison.envelope[name])) <= ROUND_OFF, name
    for name in ("torch", "jax"):
        assert comparison.leaves_at[name] is None
        assert comparison.leaving_element[name] is None
        assert float(np.max(comparison.envelope_bound[name])) <= 8 * ROUND_OFF
    # The bug scales the very first update: the parameters differ from step 1 on.
    assert comparison.leaves_at["scaled"] == 1
    # Which element parts most there, from the hand gradient at the start: every element
    # of the update is off by 1e-6 of itself, so rho is largest where lr·|g| / max(1, 2|w|)
    # after one step is.
    start = {name: np.asarray(value, dtype=float) for name, value in LINEAR_START.items()}
    _, grads = LINEAR.hand_value_and_grad(start, LINEAR_DATA)
    scores = {
        f"w[{i}]": abs(grads["w"][i]) / max(1.0, 2 * abs(LINEAR_LR * grads["w"][i]))
        for i in range(3)
    }
    scores["b"] = abs(grads["b"]) / max(1.0, 2 * abs(LINEAR_LR * grads["b"]))
    assert comparison.leaving_element["scaled"] == max(scores, key=scores.__getitem__)
    assert comparison.disagreeing == ("scaled",)
    assert comparison.outlier == "scaled"
    assert not comparison.ok


# -- A chaotic fit: correct paths part by 0.1, and a bug of 1e-9 is found at its step ------

MLP = gradlab.MLP(hidden=(16,))
MLP_DATA = MLP.make_data(64, d=2, seed=0)
MLP_START = MLP.initial_params(MLP_DATA, seed=0)
#: sgd at this rate on this net turns chaotic after about 200 steps: nearby paths part
#: exponentially (by 1e-2 per 10 steps), to rho 0.5 by step 280.
CHAOTIC: dict[str, Any] = {"optimizer": gradlab.sgd(1.0), "steps": 300, "init": MLP_START}
#: The step where the planted bug first acts, while the paths are still near (chosen).
TRIGGER = 100


def test_in_a_chaotic_fit_correct_engines_stay_in_their_envelope_and_a_bug_leaves_at_its_step() -> (
    None
):
    # numpy and a framework whose loop is compiled (jax: a few hundred steps, 9 runs, stay
    # cheap; torch's loop is eager, and the smooth fit above has it).
    correct = ["numpy", first_installed(("jax", "torch"))]
    plain = gradlab.compare_fits(MLP, MLP_DATA, engines=correct, **CHAOTIC)
    # The chaos is real: correct engines part far beyond any fixed tolerance.
    assert not plain.ok
    assert float(np.max(plain.divergence)) > 0.1
    assert all(result.ok for result in plain.results.values())
    # The bug acts from the first step whose loss is at most the threshold: TRIGGER, by
    # the reference's own losses (halfway between two steps', so that round-off-moved
    # runs of the planted engine cross it at the same step).
    losses = plain.results["numpy"].losses
    threshold = (losses[TRIGGER - 1] + losses[TRIGGER]) / 2
    assert int(np.flatnonzero(losses <= threshold)[0]) == TRIGGER
    planted = Scaled(1 + 1e-9, below=threshold, name="triggered")

    comparison = gradlab.compare_fits(
        MLP, MLP_DATA, engines=[*correct, planted], envelope=3, **CHAOTIC
    )
    assert comparison.envelope_bound is not None
    for name in correct[1:]:
        assert comparison.leaves_at[name] is None, comparison
        assert comparison.divergence[comparison.engines.index(name), 0] > 0.1
    # Bitwise numpy's path up to the trigger; its update at step TRIGGER is the first to
    # differ, so the paths first differ after TRIGGER + 1 updates.
    assert np.all(comparison.path_rho("triggered")[: TRIGGER + 1] == 0)
    leaves = comparison.leaves_at["triggered"]
    assert leaves is not None
    assert abs(leaves - (TRIGGER + 1)) <= 1
    assert comparison.leaving_element["triggered"] in element_labels(MLP_START)
    assert comparison.disagreeing == ("triggered",)
    assert "triggered" in comparison.summary()
    assert f"at step {leaves}" in comparison.summary()


# -- Gradient accumulation against the full batch ------------------------------------------


@pytest.mark.parametrize(
    ("problem", "data", "options"),
    [
        (MLP, MLP_DATA, CHAOTIC),
        (
            gradlab.Quadratic(),
            gradlab.recipes.seed_numpy().data,
            {
                "optimizer": gradlab.recipes.seed_numpy().optimizer,
                "steps": 300,
                "init": gradlab.recipes.seed_numpy().init,
            },
        ),
    ],
    ids=["mlp-mean-chaotic", "quadratic-sum"],
)
def test_gradient_accumulation_stays_within_the_full_batch_envelope(
    problem: gradlab.AbstractProblem, data: dict[str, np.ndarray], options: dict[str, Any]
) -> None:
    accumulated = Accumulated(chunks=3)
    # Its gradient is the full batch's up to round-off (64 and 100 rows in chunks of unequal
    # size: the weights matter for a mean).
    start = {name: np.asarray(value, dtype=float) for name, value in options["init"].items()}
    full = problem.hand_value_and_grad(start, data)[1]
    chunked = accumulated.value_and_grad(problem)(start, data)[1]
    assert gradlab.max_rho(full, chunked) <= 64 * EPS
    comparison = gradlab.compare_fits(
        problem, data, engines=["numpy", accumulated], envelope=3, **options
    )
    # Not bitwise the full batch's path, and yet within its natural drift all the way.
    assert comparison.divergence[1, 0] > 0
    assert comparison.leaves_at["accumulated"] is None, comparison
    assert comparison.ok


# -- Moved data: labels kept, nothing written -----------------------------------------------


def test_moved_data_moves_fractions_by_a_few_ulps_and_keeps_labels_and_the_callers_arrays() -> None:
    x = np.linspace(0.1, 2.0, 50)
    labels = np.arange(50) % 3
    one_hot = np.eye(3)[labels]
    data = {"x": x, "labels": labels, "one_hot": one_hot, "nested": {"z": [0.5, 1.25]}}
    copies = {name: np.array(value, copy=True) for name, value in data.items() if name != "nested"}
    moved = moved_data(data, "float64", seed=1)
    # By ULPS units of round-off, relative, each as rounded to the nearest float64.
    change = (moved["x"] - x) / x / EPS
    assert np.all((np.abs(change) >= ULPS / 2) & (np.abs(change) <= 2 * ULPS))
    assert np.any(change > 0)
    assert np.any(change < 0)
    assert moved["labels"] is labels
    assert moved["one_hot"] is one_hot
    assert np.all(moved["nested"]["z"] != np.array([0.5, 1.25]))
    for name, value in copies.items():
        np.testing.assert_array_equal(data[name], value)
    # Another seed, other moves; the same seed, the same.
    assert np.any(moved_data(data, "float64", seed=2)["x"] != moved["x"])
    np.testing.assert_array_equal(moved_data(data, "float64", seed=1)["x"], moved["x"])


def test_labels_in_zero_one_stay_valid_and_the_data_is_not_written() -> None:
    # Logistic regression refuses labels above 1: moved labels would be refused.
    problem = gradlab.LogisticRegression()
    data = problem.make_data(50, d=2, seed=0)
    before = {name: value.copy() for name, value in data.items()}
    comparison = gradlab.compare_fits(
        problem,
        data,
        optimizer=gradlab.sgd(0.5),
        steps=50,
        init={"w": [0.0, 0.0], "b": 0.0},
        engines="numpy",
        envelope=2,
    )
    assert comparison.envelope_runs == 2
    assert comparison.ok
    for name, value in before.items():
        np.testing.assert_array_equal(data[name], value)


# -- Formats, pictures, bad arguments ------------------------------------------------------


@pytest.fixture(scope="module")
def judged() -> gradlab.FitComparison:
    """numpy and fd within their envelope, a bug of 1e-3 leaving it at step 1."""
    return linear_fits(["numpy", "fd", Scaled(1 + 1e-3)], envelope=2)


def test_the_table_summary_and_repr_show_where_a_path_leaves(
    judged: gradlab.FitComparison,
) -> None:
    assert judged.leaves_at == {"numpy": None, "fd": None, "scaled": 1}
    element = judged.leaving_element["scaled"]
    assert element is not None
    text = str(judged)
    assert "envelope: how far each path drifts from itself" in text
    assert "leaves envelope at" in text
    assert "never" in text
    assert element in text
    assert f"(at step 1, {element})" in judged.summary()
    assert repr(judged).startswith(
        f"FitComparison('linear_regression', float64, 300 steps: scaled's path leaves its "
        f"envelope at step 1 ({element}: rho "
    )
    # fd's pair is never held tighter than the table holds it.
    assert judged.envelope_bound is not None
    assert np.all(judged.envelope_bound["fd"] >= gradlab.tolerance("float64", against_fd=True))
    passing = linear_fits(["numpy", "fd"], envelope=1)
    assert repr(passing).endswith("numpy, fd follow one path within their envelopes)")
    assert "within natural drift" in passing.summary()


def test_a_record_round_trips_with_its_envelope(judged: gradlab.FitComparison) -> None:
    record = judged.to_dict()
    assert record["envelope_runs"] == 2
    assert record["engine_results"]["scaled"]["leaves_at"] == 1
    assert record == json.loads(judged.to_json())
    for rebuilt in (
        gradlab.FitComparison.from_dict(record),
        gradlab.FitComparison.from_json(judged.to_json()),
    ):
        assert rebuilt.envelope_runs == 2
        assert rebuilt.leaves_at == judged.leaves_at
        assert rebuilt.leaving_element == judged.leaving_element
        assert rebuilt.envelope is not None
        assert judged.envelope is not None
        assert rebuilt.envelope_bound is not None
        assert judged.envelope_bound is not None
        for name in judged.engines:
            np.testing.assert_array_equal(rebuilt.envelope[name], judged.envelope[name])
        assert set(rebuilt.envelope_bound) == {"fd", "scaled"}
        for name, bound in judged.envelope_bound.items():
            np.testing.assert_array_equal(rebuilt.envelope_bound[name], bound)
        assert rebuilt.disagreeing == judged.disagreeing
        assert str(rebuilt) == str(judged)
        assert repr(rebuilt) == repr(judged)
        assert rebuilt.to_dict() == record
    # against: the same fits, unchanged, each engine judged by its own largest bound.
    assert judged.against(gradlab.FitComparison.from_dict(record)).ok


def test_a_record_saved_before_envelopes_still_loads() -> None:
    plain = linear_fits(["numpy", "fd"])
    record = plain.to_dict()
    del record["envelope_runs"]
    for entry in record["engine_results"].values():
        for key in ("envelope", "envelope_bound", "leaves_at", "leaving_element"):
            del entry[key]
    rebuilt = gradlab.FitComparison.from_dict(record)
    assert rebuilt.envelope_runs is None
    assert rebuilt.envelope is None
    assert rebuilt.leaves_at == {}
    assert str(rebuilt) == str(plain)


def test_the_path_panel_draws_each_bound_and_where_a_path_leaves(
    judged: gradlab.FitComparison,
) -> None:
    pytest.importorskip("matplotlib")
    figure = judged.plot()
    paths = figure.axes[-1]
    assert paths.get_yscale() == "log"
    # A band under each engine's bound (fd's and the planted engine's), and its edge.
    assert len(paths.collections) == 2
    marks = [line for line in paths.get_lines() if line.get_marker() == "X"]
    assert len(marks) == 1
    assert float(marks[0].get_xdata()[0]) == 1
    # A dashed line across the panel at the step where the path leaves.
    verticals = [
        line
        for line in paths.get_lines()
        if len(set(np.ravel(line.get_xdata()))) == 1 and line.get_linestyle() == "--"
    ]
    assert [float(np.ravel(line.get_xdata())[0]) for line in verticals] == [1.0]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    element = judged.leaving_element["scaled"]
    assert f"scaled ✗ disagrees: leaves its envelope at step 1 ({element})" in legend
    assert any("bound vs numpy" in text for text in legend)
    assert "every path" not in figure.get_suptitle()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"envelope": 0}, gradlab.ArgumentError),
        ({"envelope": -1}, gradlab.ArgumentError),
        ({"envelope": "x"}, gradlab.ArgumentTypeError),
        ({"envelope": 2.5}, gradlab.ArgumentTypeError),
        ({"envelope": True}, gradlab.ArgumentTypeError),
        ({"envelope": 3, "tolerance": 1e-9}, gradlab.ArgumentError),
        ({"envelope": 3, "tolerance": "derived"}, gradlab.ArgumentError),
        ({"envelope": 3, "atol": 1e-9}, gradlab.ArgumentError),
        ({"envelope": 3, "rtol": 1e-9}, gradlab.ArgumentError),
    ],
)
def test_bad_envelopes_are_refused_by_name(
    arguments: dict[str, Any], error: type[gradlab.ArgumentError]
) -> None:
    with pytest.raises(error) as caught:
        gradlab.compare_fits(
            LINEAR,
            LINEAR_DATA,
            optimizer=gradlab.sgd(LINEAR_LR),
            steps=5,
            init=LINEAR_START,
            engines="numpy",
            **arguments,
        )
    assert caught.value.argument == "envelope"


def test_the_cli_compares_fits_against_their_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    """`gradlab compare --kind fit`: the chaotic MLP fails the fixed tolerance (exit 1) and
    stays within its envelope (exit 0); --envelope without --kind fit is a usage error."""
    from gradlab import cli

    other = first_installed(("jax", "torch"))
    chaotic = ["compare", "--kind", "fit", "--problem", "mlp", "--engines", f"numpy,{other}"]
    chaotic += ["--n", "64", "--features", "2", "--lr", "1.0", "--steps", "300", "-q"]
    assert cli.main(chaotic) == 1
    assert "beyond tolerance" in capsys.readouterr().out
    assert cli.main([*chaotic, "--envelope", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["envelope_runs"] == 2
    assert record["engine_results"][other]["leaves_at"] is None
    assert cli.main(["compare", "--envelope", "2"]) == 2
    assert "--envelope" in capsys.readouterr().err


def test_a_saturated_envelope_says_up_to_where_it_judged() -> None:
    """Past the step where the bound reaches rho 1 nothing finite can leave it: a gradient
    50 times too large from then on is not caught, and the verdict says so."""
    mlp = gradlab.MLP(hidden=(16,))
    xy = mlp.make_data(64, d=2, seed=0)
    chaotic: dict[str, Any] = {
        "optimizer": gradlab.sgd(1.0),
        "steps": 300,
        "init": mlp.initial_params(xy, seed=0),
    }
    other = first_installed(("jax", "torch"))
    judged = gradlab.compare_fits(mlp, xy, engines=["numpy", other], envelope=2, **chaotic)
    saturated = judged.saturates_at(other)
    assert judged.ok, judged
    assert saturated is not None
    assert 150 < saturated < 300
    assert judged.envelope_bound is not None
    bound = judged.envelope_bound[other]
    assert np.all(bound[saturated:] >= 1.0)
    assert np.all(bound[:saturated] < 1.0)
    assert f"up to step {saturated}, where an envelope reaches rho 1" in judged.summary()
    assert f"not by {saturated}" in str(judged)
