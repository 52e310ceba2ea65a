"""Every picture gradlab draws shows all of itself: nothing cut at the figure's edge, no
legend over the data, no labels over one another, for few engines or many with long names.
The fit comparison's path panel draws the tolerance the paths were judged with.

Oracles: the saved PNG's own size (what a reader sees is the figure's box, nothing more),
the extents matplotlib draws each artist at, gradlab's public tolerance table and the
tolerances the tests pass in.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import PlantedBug, recipe_fits

import gradlab
from gradlab import recipes

pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg

# Names as long as real engines' labels get ("torch-compile", "tensorflow-xla", plug-ins).
LONG_NAMES = [
    "torch-compile value+grad",
    "tensorflow-xla value+grad",
    "jax-fwd (forward mode)",
    "numpy hand-derived",
    "complex-step",
    "torch-func",
    "mlx compiled loop",
    "fd central differences",
    "torch-fwd",
    "my-plugin-engine",
]
RECIPE = recipes.seed_numpy()
PROBLEM = gradlab.Quadratic()
DATA = PROBLEM.make_data(20)


def saved_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height in pixels, from its header."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def assert_shows_everything(figure: Any, saved: Path | None = None) -> None:
    """Everything drawn lies inside the figure's box, and no legend covers a panel.

    ``plot(path)`` saves the figure's box as it is (no ``bbox_inches="tight"`` cropping or
    growing it), which the PNG's size confirms where one was ``saved``; so whatever is drawn
    outside that box is cut off in the file.
    """
    if saved is not None:
        # Saved at some dpi, the image has the figure's proportions: nothing was cropped.
        dpi = saved_size(saved)[0] / figure.get_size_inches()[0]
        assert saved_size(saved) == pytest.approx(tuple(figure.get_size_inches() * dpi), abs=1)
    canvas: Any = FigureCanvasAgg(figure)
    renderer = canvas.get_renderer()
    figure.draw(renderer)
    box = figure.bbox
    drawn = figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans)
    assert inside(drawn, box), (drawn, box)
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    legends = list(figure.legends) + [a.get_legend() for a in panels if a.get_legend()]
    for legend in legends:
        extent = legend.get_window_extent(renderer)
        assert inside(extent, box), (extent, box)
        for axes in panels:
            assert not extent.overlaps(axes.get_window_extent(renderer)), "legend over a panel"
    for axes in panels:
        labels = [label for label in axes.get_xticklabels() if label.get_text()]
        for left, right in itertools.pairwise(labels):
            assert apart(left, right, renderer), "tick labels over one another"


def inside(extent: Any, box: Any) -> bool:
    """Whether ``extent`` lies within ``box`` (to a pixel)."""
    return bool(
        extent.x0 >= box.x0 - 1
        and extent.y0 >= box.y0 - 1
        and extent.x1 <= box.x1 + 1
        and extent.y1 <= box.y1 + 1
    )


def apart(left: Any, right: Any, renderer: Any) -> bool:
    """Whether two neighbouring tick labels are clear of each other.

    Slanted labels are parallel strips one line high: they are clear when their anchors lie
    at least a line apart across the slant (their upright boxes overlap regardless).
    """
    slant = np.radians(left.get_rotation())
    if slant == 0:
        return not left.get_window_extent(renderer).overlaps(right.get_window_extent(renderer))
    line = renderer.points_to_pixels(left.get_fontsize()) * 1.2
    (x0, _), (x1, _) = (
        label.get_transform().transform(label.get_position()) for label in (left, right)
    )
    return bool(abs(x1 - x0) * np.sin(slant) >= line)


def legend_texts(figure: Any) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def synthetic_benchmark(engines: list[str], problems: tuple[str, ...]) -> Any:
    """A benchmark result with made-up timings (drawing is what is tested, not timing)."""
    cases = [
        gradlab.BenchmarkCase(
            problem,
            engine,
            n,
            "float64",
            gradient=gradlab.Timing(1e-5 * (index + 1), 2e-5 * (index + 1), 5),
            objective=gradlab.Timing(5e-6 * (index + 1), 6e-6 * (index + 1), 5),
            floor=gradlab.Timing(1e-9 * n, 2e-9 * n, 5),
        )
        for problem in problems
        for n in (100, 1000, 10_000)
        for index, engine in enumerate(engines)
    ]
    return gradlab.BenchmarkResult(cases=cases, settings={}, provenance={})


@pytest.mark.parametrize(
    ("count", "problems"),
    [(2, ("quadratic",)), (5, ("quadratic",)), (10, ("quadratic",)), (10, ("mlp", "gmm"))],
)
def test_benchmark_legend_is_whole_for_any_number_of_engines(
    count: int, problems: tuple[str, ...]
) -> None:
    engines = LONG_NAMES[:count]
    figure = synthetic_benchmark(engines, problems).plot()
    assert_shows_everything(figure)
    texts = legend_texts(figure)
    # Every engine is named once, whole, whichever panels it appears in.
    assert [text for text in texts if text in engines] == engines


def test_a_saved_benchmark_picture_holds_all_of_it(tmp_path: Path) -> None:
    target = tmp_path / "bench.png"
    figure = synthetic_benchmark(LONG_NAMES[:3], ("quadratic",)).plot(target)
    assert_shows_everything(figure, target)


def test_benchmark_legend_names_an_engine_missing_from_the_first_panel() -> None:
    result = synthetic_benchmark(["numpy", "torch"], ("quadratic", "mlp"))
    only_mlp = [c for c in result.cases if not (c.engine == "torch" and c.problem == "mlp")]
    # Panels are sorted by problem: "mlp" comes first and has no torch case.
    figure = gradlab.BenchmarkResult(only_mlp, {}, {}).plot()
    assert {"numpy", "torch"} <= set(legend_texts(figure))


@pytest.mark.parametrize("count", [2, 5, 8])
def test_agreement_heatmap_labels_are_whole_and_apart(count: int) -> None:
    engines: list[Any] = ["numpy"]
    engines += [PlantedBug(name, factor=1.0) for name in LONG_NAMES[: count - 1]]
    report = gradlab.compare_gradients(PROBLEM, DATA, {"w": 1.0, "b": 0.0}, engines=engines)
    assert_shows_everything(report.plot())


def fits(engines: list[Any], **judge: Any) -> gradlab.FitComparison:
    return recipe_fits(engines, steps=60, **judge)


def test_fit_figure_of_many_long_named_engines_shows_everything() -> None:
    engines = ["numpy", *(PlantedBug(name, factor=1.0) for name in LONG_NAMES[:5])]
    assert_shows_everything(fits(engines).plot())


def horizontal_lines(axes: Any) -> list[float]:
    """The heights of the lines drawn across the whole panel (``axhline``)."""
    return [
        float(line.get_ydata()[0])
        for line in axes.get_lines()
        if list(line.get_xdata()) == [0, 1] and len(set(line.get_ydata())) == 1
    ]


def test_path_panel_draws_each_pairs_tolerance_and_marks_the_failing_engine(
    tmp_path: Path,
) -> None:
    comparison = fits(["numpy", "fd", PlantedBug()])
    assert comparison.disagreeing == ("planted",)
    target = tmp_path / "fits.png"
    figure = comparison.plot(str(target))
    assert_shows_everything(figure, target)
    paths = figure.axes[-1]
    # fd's pair with numpy is held to the finite-difference tolerance, planted's to the
    # exact one: a line at each.
    expected = {
        gradlab.tolerance("float64"),
        gradlab.tolerance("float64", against_fd=True),
    }
    assert set(horizontal_lines(paths)) == expected
    texts = legend_texts(figure)
    assert [text for text in texts if "✗" in text] == ["planted ✗ disagrees"]
    # The failing path's peak is marked with an X, and the path does pass the line.
    marks = [line for line in paths.get_lines() if line.get_marker() == "X"]
    assert len(marks) == 1
    assert float(marks[0].get_ydata()[0]) > gradlab.tolerance("float64")


def test_path_panel_draws_a_tolerance_given_to_compare_fits(tmp_path: Path) -> None:
    comparison = fits(["numpy", "fd"], tolerance=1e-20)
    assert comparison.disagreeing == ("fd",)
    figure = comparison.plot()
    assert horizontal_lines(figure.axes[-1]) == [1e-20]
    assert "fd ✗ disagrees" in legend_texts(figure)
    assert "✗" in figure.get_suptitle()


def test_path_panel_judged_by_atol_and_rtol_draws_their_limit(tmp_path: Path) -> None:
    comparison = fits(["numpy", "fd"], atol=1e-12, rtol=1e-9)
    figure = comparison.plot()
    paths = figure.axes[-1]
    # The panel shows |a−b| / (atol + rtol·max(|a|, |b|)): close paths stay at most 1.
    assert horizontal_lines(paths) == [1.0]
    assert "atol" in paths.get_ylabel()
    assert any("atol 1e-12, rtol 1e-09" in text for text in legend_texts(figure))
    assert not any("✗" in text for text in legend_texts(figure))


def test_a_passing_comparison_marks_nothing(tmp_path: Path) -> None:
    comparison = fits(["numpy", "fd"])
    assert comparison.ok
    figure = comparison.plot()
    assert not any("✗" in text for text in legend_texts(figure))
    assert not [line for line in figure.axes[-1].get_lines() if line.get_marker() == "X"]
    assert set(horizontal_lines(figure.axes[-1])) == {gradlab.tolerance("float64", against_fd=True)}


def test_fit_figure_of_plain_results_judges_nothing() -> None:
    results = {
        name: gradlab.fit(
            RECIPE.problem,
            RECIPE.data,
            engine=name,
            optimizer=RECIPE.optimizer,
            steps=20,
            init=RECIPE.init,
            trajectory=True,
        )
        for name in ("numpy", "fd")
    }
    figure = gradlab.plots.fit_figure(results, model=RECIPE.problem, data=RECIPE.data)
    assert horizontal_lines(figure.axes[-1]) == []
    assert np.all([line.get_marker() != "X" for line in figure.axes[-1].get_lines()])
