"""compare_fits and fit(trajectory=True): paths, steps to a tolerance, formats, bad input.

Oracles: the seed tutorial's own loop (its path and losses, recorded step by step), bugs
planted at a known size, and divergence that the seed's loop shows too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _helpers import PlantedBug, default_engines, recipe_fits

import gradlab
from gradlab import recipes

RECIPE = recipes.seed_numpy()


def seed_loop_path(lr: float = 0.001, steps: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """The seed's NumPy loop on the recipe's data and start: (w, b) at every step, and losses."""
    x = RECIPE.data["x"].reshape(100, 1)
    y = RECIPE.data["y"].reshape(100, 1)
    w1, b1 = float(RECIPE.init["w"]), float(RECIPE.init["b"])
    path, losses = [(w1, b1)], []
    for _ in range(steps):
        y_pred = np.power(x, 2) * w1 + b1
        losses.append(0.5 * np.sum((y_pred - y) ** 2))
        grad_w = np.sum((y_pred - y) * np.power(x, 2))
        grad_b = np.sum(y_pred - y)
        w1 -= lr * grad_w
        b1 -= lr * grad_b
        path.append((w1, b1))
    return np.array(path), np.array(losses)


def test_fit_trajectory_is_the_seed_loops_path(engine: str) -> None:
    result = RECIPE.run(engine, trajectory=True)
    path, _ = seed_loop_path()
    assert result.trajectory is not None
    assert result.trajectory["w"].shape == (801,)
    got = np.column_stack([result.trajectory["w"], result.trajectory["b"]])
    limit = gradlab.tolerance("float64", against_fd=engine == "fd")
    assert float(np.max(gradlab.rho(got, path))) <= limit
    assert result.trajectory["w"][-1] == result.params["w"]
    assert RECIPE.run(engine).trajectory is None


def test_a_diverged_fit_keeps_the_path_up_to_the_bad_step() -> None:
    result = gradlab.fit(
        RECIPE.problem,
        RECIPE.data,
        engine="numpy",
        optimizer=gradlab.sgd(0.5),
        steps=400,
        init=RECIPE.init,
        trajectory=True,
    )
    assert result.status == "diverged"
    assert result.trajectory is not None
    assert len(result.trajectory["w"]) == len(result.losses) + 1
    assert result.trajectory["w"][-1] == result.params["w"]
    with np.errstate(all="ignore"):
        path, _ = seed_loop_path(lr=0.5, steps=len(result.losses))
    np.testing.assert_allclose(result.trajectory["w"], path[:, 0], rtol=1e-12)


def test_engines_follow_the_seed_path_and_reach_the_tolerance_together() -> None:
    comparison = gradlab.compare_fits(
        RECIPE.problem,
        RECIPE.data,
        optimizer=RECIPE.optimizer,
        steps=RECIPE.steps,
        init=RECIPE.init,
        loss_tol=0.2,
    )
    _, seed_losses = seed_loop_path()
    first_below = int(np.flatnonzero(seed_losses <= 0.2)[0])
    assert comparison.ok, str(comparison)
    assert comparison.engines == default_engines()
    for i, name in enumerate(comparison.engines):
        assert comparison.steps_to_tol[name] == first_below
        assert comparison.results[name].ok
        assert comparison.times[name] > 0
        assert comparison.divergence[i, 0] <= comparison.tolerances[i, 0]
    assert comparison.outlier is None
    assert "follow the same path" in comparison.summary()


def test_a_planted_bug_is_seen_in_the_path_and_blamed() -> None:
    bug = PlantedBug(param="b", factor=1 + 1e-3)
    comparison = gradlab.compare_fits(
        RECIPE.problem,
        RECIPE.data,
        optimizer=RECIPE.optimizer,
        steps=RECIPE.steps,
        init=RECIPE.init,
        engines=["numpy", "fd", bug],
    )
    index = comparison.engines.index("planted")
    assert comparison.divergence[index, 0] > gradlab.tolerance("float64")
    assert 0 < comparison.peak_step[index, 0] <= RECIPE.steps
    assert comparison.outlier == "planted"
    assert comparison.disagreeing == ("planted",)
    assert not comparison.ok
    # What `assert comparison.ok, comparison` prints: where the path parts, and by how much.
    assert repr(comparison).startswith(
        f"FitComparison('quadratic', float64, {RECIPE.steps} steps: planted's path is "
        f"{comparison.divergence[index, 0]:.1e} from numpy's at step "
        f"{int(comparison.peak_step[index, 0])} (tolerance 1e-09"
    )


def test_two_engines_whose_paths_part_blame_neither() -> None:
    comparison = recipe_fits(["numpy", PlantedBug(param="b", factor=1 + 1e-3)])
    assert not comparison.ok
    assert comparison.outlier is None
    assert "cannot tell which is wrong" in comparison.summary()
    agreeing = recipe_fits("numpy,fd")
    assert (
        repr(agreeing) == "FitComparison('quadratic', float64, 50 steps: numpy, fd follow one path)"
    )


def test_an_explicit_path_tolerance_replaces_the_table() -> None:
    bug = PlantedBug(param="b", factor=1 + 1e-3)
    strict = recipe_fits(["numpy", "fd", bug])
    index = strict.engines.index("planted")
    parted = float(strict.divergence[index, 0])
    assert not strict.ok
    loose = recipe_fits(["numpy", "fd", bug], tolerance=2 * parted)
    assert loose.ok, loose
    assert np.all(loose.tolerances == 2 * parted)
    with pytest.raises(gradlab.ArgumentError) as caught:
        recipe_fits("numpy", steps=5, tolerance=-1.0)
    assert caught.value.argument == "tolerance"


def test_fits_that_all_diverge_agree_and_say_so() -> None:
    comparison = gradlab.compare_fits(
        RECIPE.problem,
        RECIPE.data,
        optimizer=gradlab.sgd(0.5),
        steps=400,
        init=RECIPE.init,
        engines="numpy,fd",
    )
    assert {r.status for r in comparison.results.values()} == {"diverged"}
    assert comparison.results["numpy"].diverged_at == comparison.results["fd"].diverged_at
    assert comparison.ok
    assert "diverged at the same step" in comparison.summary()


def test_loss_tolerance_never_reached_is_reported_as_such() -> None:
    comparison = gradlab.compare_fits(
        RECIPE.problem,
        RECIPE.data,
        optimizer=RECIPE.optimizer,
        steps=10,
        init=RECIPE.init,
        engines="numpy",
        loss_tol=1e-9,
    )
    assert comparison.steps_to_tol["numpy"] is None
    assert "never" in str(comparison)


def test_formats_str_json_frame(tmp_path: Path) -> None:
    comparison = gradlab.compare_fits(
        RECIPE.problem,
        RECIPE.data,
        optimizer=RECIPE.optimizer,
        steps=50,
        init=RECIPE.init,
        engines="numpy,fd",
        loss_tol=100.0,
    )
    text = str(comparison)
    assert text.startswith("Fit comparison: quadratic, float64, 50 steps from w=")
    assert "path rho vs numpy" in text
    assert "steps to 100" in text
    record = json.loads(comparison.to_json())
    assert record == comparison.to_dict()
    assert record["engines"] == ["numpy", "fd"]
    assert len(record["engine_results"]["fd"]["losses"]) == 50
    assert len(record["engine_results"]["fd"]["trajectory"]["w"]) == 51
    assert record["engine_results"]["fd"]["path_rho"] == comparison.divergence[1, 0]
    assert "time" in record["provenance"]
    pandas = pytest.importorskip("pandas")
    frame = comparison.to_frame()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.index) == ["numpy", "fd"]
    assert frame.loc["fd", "w"] == float(comparison.results["fd"].params["w"])


def test_plot_has_the_three_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    comparison = gradlab.compare_fits(
        RECIPE.problem,
        RECIPE.data,
        optimizer=RECIPE.optimizer,
        steps=100,
        init=RECIPE.init,
        engines="numpy,fd",
    )
    figure = comparison.plot(str(tmp_path / "fit.png"))
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == [
        "Data and each engine's fitted curve",
        "Loss per step",
        "How far each path lies from numpy's",
    ]
    curves, losses, paths = figure.axes
    assert curves.get_xlabel() == "x"
    assert losses.get_yscale() == "log"
    # One legend under the panels names each engine once (the reference marked) for all.
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:2] == ["numpy (reference)", "fd"]
    assert paths.get_yscale() == "log"
    assert (tmp_path / "fit.png").stat().st_size > 10_000


def test_many_features_plot_predicted_against_observed() -> None:
    pytest.importorskip("matplotlib")
    problem = gradlab.LinearRegression()
    comparison = gradlab.compare_fits(
        problem,
        problem.make_data(50, d=3),
        optimizer=gradlab.adam(0.05),
        steps=50,
        init={"w": [0.0, 0.0, 0.0], "b": 0.0},
        engines="numpy,fd",
    )
    axes = comparison.plot().axes[0]
    assert axes.get_xlabel() == "observed y"
    assert axes.get_ylabel() == "predicted y"


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"repeats": 0}, "repeats"),
        ({"loss_tol": float("nan")}, "loss_tol"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"init": {"w": 0.0}}, "missing parameter"),
        ({"engines": "numpy,nope"}, "unknown engine"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments: dict[str, object], match: str) -> None:
    options: dict[str, object] = {
        "optimizer": RECIPE.optimizer,
        "steps": 10,
        "init": RECIPE.init,
        "engines": "numpy",
    }
    options.update(arguments)
    with pytest.raises(gradlab.ArgumentError, match=match):
        gradlab.compare_fits(RECIPE.problem, RECIPE.data, **options)  # type: ignore[arg-type]


def test_trajectory_flag_must_be_a_bool() -> None:
    with pytest.raises(gradlab.ArgumentTypeError, match="trajectory"):
        RECIPE.run("numpy", trajectory="yes")  # type: ignore[arg-type]


def test_paths_can_be_judged_with_atol_and_rtol() -> None:
    bug = PlantedBug(param="b", factor=1 + 1e-3)
    strict = recipe_fits(["numpy", bug], rtol=1e-12)
    assert not strict.ok
    # The planted path's largest relative departure, from the trajectories themselves.
    planted, reference = strict.results["planted"].trajectory, strict.results["numpy"].trajectory
    relative = max(
        float(
            np.max(
                np.abs(planted[k] - reference[k]) / np.maximum(abs(planted[k]), abs(reference[k]))
            )
        )
        for k in ("w", "b")
    )
    assert recipe_fits(["numpy", bug], rtol=relative * 1.01).ok
    assert not recipe_fits(["numpy", bug], rtol=relative * 0.99).ok
    with pytest.raises(gradlab.ArgumentError) as caught:
        recipe_fits("numpy", steps=5, tolerance=1.0, atol=1.0)
    assert caught.value.argument == "tolerance"
