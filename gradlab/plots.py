"""Pictures of comparisons (matplotlib, from the ``plot`` extra).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing here
opens a window, picks a GUI backend or touches pyplot's global state; save one with
``figure.savefig(path)`` or through the ``plot(path)`` methods of the reports.

- [`agreement_figure`][gradlab.plots.agreement_figure]: a
  [`GradientReport`][gradlab.GradientReport]'s pairwise rho as a heatmap.
- [`benchmark_figure`][gradlab.plots.benchmark_figure]: a
  [`BenchmarkResult`][gradlab.BenchmarkResult] as time against problem size, log-log, per engine,
  with the memory floor.
- [`fit_figure`][gradlab.plots.fit_figure]: fits side by side: the data with each engine's fitted
  curve, the loss per step, and how far each engine's parameter path lies from the reference's.
- [`fit_comparison_figure`][gradlab.plots.fit_comparison_figure]: a
  [`FitComparison`][gradlab.FitComparison] so drawn, with the tolerance each path was judged
  against (or, with an envelope, its bound at every step) and each disagreeing engine marked ✗.

Each figure has one legend under its panels, in as many columns as fit; the figure grows to
hold it, so no label is cut off however many engines, or however long their names.

Examples:
    >>> import gradlab
    >>> problem = gradlab.Quadratic()
    >>> report = gradlab.compare_gradients(problem, problem.make_data(20), {"w": 1.0, "b": 0.0},
    ...                                    engines="numpy,fd")
    >>> figure = report.plot()
    >>> figure.axes[0].get_title()
    'Do the engines agree? gradients, float64'
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradlab._agreement import Criterion, path_rho
from gradlab._output import optional
from gradlab.problems._base import AbstractProblem

# The results are typed Any here: the result modules import this one (for their ``plot``
# methods), and this module reads only their public attributes, so it imports none of them.
__all__ = [
    "agreement_figure",
    "benchmark_figure",
    "divergence_figure",
    "fit_comparison_figure",
    "fit_figure",
]

#: rho below this is drawn at it: 0 has no logarithm, and float64 round-off sits above it.
RHO_FLOOR = 1e-17
# Engines' curves usually coincide: distinct dashes and shrinking widths keep each visible.
_DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 2))]
# Inches kept free around a legend under the panels (its frame and the figure's padding).
_MARGIN = 0.3
# The memory floor's line in the benchmark figure.
_FLOOR: dict[str, Any] = {"color": "0.5", "linestyle": "--"}
# A tolerance line, the mark of a disagreeing engine, and the fit figure's diagonal.
_TOLERANCE: dict[str, Any] = {"color": "black", "linewidth": 1.0, "linestyle": "--"}
_FAILING: dict[str, Any] = {
    "marker": "X",
    "markersize": 11,
    "markeredgecolor": "black",
    "markeredgewidth": 1.0,
}
_IDENTITY: dict[str, Any] = {"color": "0.3", "linewidth": 1}
# An envelope's bound in the path panel: a grey band up to it (the bands of engines whose
# bounds coincide darken it, rather than mixing their colours), and its edge, a thin line in
# the engine's colour (thinner than any path's curve).
_BAND: dict[str, Any] = {"color": "0.5", "alpha": 0.08, "linewidth": 0}
_BOUND: dict[str, Any] = {"linewidth": 0.8, "linestyle": "-", "alpha": 0.8}
# The step where a path leaves its envelope's bound.
_LEAVES: dict[str, Any] = {"linewidth": 1.0, "linestyle": "--", "alpha": 0.7}
# Inches per engine along each side of the agreement heatmap.
_CELL = 1.0


def _figure(width: float, height: float) -> Any:
    figure_module = optional("matplotlib.figure", "plotting", "plot")
    agg = optional("matplotlib.backends.backend_agg", "plotting", "plot")
    figure = figure_module.Figure(figsize=(width, height), layout="constrained")
    # An Agg canvas (no window, no pyplot) so that text can be measured while laying out.
    agg.FigureCanvasAgg(figure)
    return figure


def _inches(figure: Any, artist: Any) -> tuple[float, float]:
    """An artist's drawn width and height, in inches."""
    box = artist.get_window_extent(figure.canvas.get_renderer())
    return box.width / figure.dpi, box.height / figure.dpi


def _text_width(figure: Any, text: str) -> float:
    """The width in inches of ``text`` at the default size, as ``figure`` draws it."""
    probe = figure.text(0, 0, text)
    width = _inches(figure, probe)[0]
    probe.remove()
    return width


def _legend_below(figure: Any, handles: list[Any], labels: list[str]) -> Any:
    """One legend under the panels, in as many columns as fit the figure's width.

    The figure grows to hold it: taller by the legend's height (so the panels keep theirs),
    and wider if even one column is wider than the figure (a long engine name). Nothing is
    cut off, however many entries or however long their labels.
    """
    width, height = figure.get_size_inches()
    legend = None
    for columns in range(min(len(labels), 8), 0, -1):
        if legend is not None:
            legend.remove()
        legend = figure.legend(
            handles, labels, loc="outside lower center", ncols=columns, fontsize="small"
        )
        if _inches(figure, legend)[0] <= width - _MARGIN:
            break
    assert legend is not None
    legend_width, legend_height = _inches(figure, legend)
    figure.set_size_inches(max(width, legend_width + _MARGIN), height + legend_height)
    return legend


def _style(index: int, count: int) -> dict[str, Any]:
    return {
        "color": f"C{index % 10}",
        "linestyle": _DASHES[index % len(_DASHES)],
        "linewidth": 1.2 + 1.6 * (count - 1 - index) / max(1, count - 1),
    }


def _proxy(**style: Any) -> Any:
    """A legend entry drawn with ``style`` that is not drawn in any panel."""
    lines = optional("matplotlib.lines", "plotting", "plot")
    return lines.Line2D([], [], **style)


def agreement_figure(report: Any) -> Any:
    """Heatmap of the largest rho between every pair of engines, against its tolerance.

    Colour is rho / tolerance on a log scale: green is well inside the tolerance, yellow at
    it, red beyond. Each cell is labelled with its rho; a cross marks a pair beyond tolerance.
    Engine names too long to sit side by side under the columns are slanted.
    """
    colors = optional("matplotlib.colors", "plotting", "plot")
    names = list(report.engines)
    size = len(names)
    figure = _figure(1.0, 1.0)
    # Room for the names as well as the cells: the longest name, across and (slanted) down.
    longest = max(_text_width(figure, name) for name in names)
    slant = longest > 0.9 * _CELL
    below = 0.75 * longest if slant else 0.0
    figure.set_size_inches(longest + _CELL * size + 2.2, below + _CELL * size + 1.6)
    axes = figure.add_subplot()
    with np.errstate(divide="ignore"):
        ratio = np.log10(np.maximum(report.rho, RHO_FLOOR) / report.tolerances)
    np.fill_diagonal(ratio, np.nan)
    norm = colors.TwoSlopeNorm(vmin=-12.0, vcenter=0.0, vmax=3.0)
    shown = np.clip(ratio, -12.0, 3.0)
    image = axes.imshow(shown, cmap="RdYlGn_r", norm=norm)
    for i in range(size):
        for j in range(size):
            if i == j:
                text, weight, ink = "—", "normal", "black"
            else:
                beyond = report.rho[i, j] > report.tolerances[i, j]
                value = report.rho[i, j]
                text = ("0" if value == 0 else f"{value:.0e}") + (" ✗" if beyond else "")
                weight = "bold" if beyond else "normal"
                ink = _ink(image.cmap(norm(shown[i, j])))
            axes.text(j, i, text, ha="center", va="center", fontsize=9, weight=weight, color=ink)
    axes.set_xticks(range(size), names)
    axes.set_yticks(range(size), names)
    if slant:
        axes.tick_params(axis="x", labelrotation=40)
        for label in axes.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    axes.set_title(f"Do the engines agree? {report.quantity}, {report.dtype}")
    axes.set_xlabel(
        f"{report.problem}. Cell: largest rho = |a−b| / max(1, |a|+|b|)"
        "\nover all elements; ✗ beyond tolerance",
        fontsize=9,
    )
    bar = figure.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label("log₁₀(rho / tolerance): below 0 agrees")
    return figure


def divergence_figure(report: Any) -> Any:
    """rho at every tapped point, forward (in the order the loss reaches them) and backward,
    against the bound round-off explains there; the first divergence circled.

    One panel per direction, the points along the bottom (named, slanted); per engine against
    the reference one line; the bound dashed in black. A point above its bound that a lower
    precision explains is marked with an open square.
    """
    points = list(report.points)
    others = [name for name in report.engines if name != report.reference]
    figure = _figure(max(6.4, 0.32 * len(points) + 2.5), 5.2)
    panels = figure.subplots(2, 1, sharex=True)
    positions = np.arange(len(points))
    handles: list[Any] = []
    labels: list[str] = []
    first = report.first
    explained = {(e.name, e.direction) for e in report.explained}
    for axes, direction in zip(panels, ("forward", "backward"), strict=True):
        bounds = [point.bound(direction) for point in points]
        bound_values = np.array([np.nan if b is None else b for b in bounds], dtype=float)
        (line,) = axes.step(positions, bound_values, where="mid", **_TOLERANCE)
        if direction == "forward":
            handles.append(line)
            labels.append("round-off bound")
        for index, name in enumerate(others):
            values = np.array(
                [
                    (point.forward if direction == "forward" else point.backward).get(name, np.nan)
                    for point in points
                ],
                dtype=float,
            )
            style = _style(index, len(others))
            (line,) = axes.plot(
                positions, np.maximum(values, RHO_FLOOR), marker="o", markersize=4, **style
            )
            if direction == "forward":
                handles.append(line)
                labels.append(f"{name} against {report.reference}")
        for at, point in enumerate(points):
            if (point.name, direction) in explained:
                axes.plot(
                    at,
                    max(point.rho(direction), RHO_FLOOR),
                    marker="s",
                    markersize=10,
                    markerfacecolor="none",
                    markeredgecolor="0.3",
                )
        if first is not None and first.direction == direction:
            at = [point.name for point in points].index(first.name)
            axes.plot(
                at,
                max(first.rho, RHO_FLOOR),
                marker="o",
                markersize=16,
                markerfacecolor="none",
                markeredgecolor="red",
                markeredgewidth=2,
            )
        axes.set_yscale("log")
        axes.set_ylabel(f"{direction} rho")
        axes.grid(True, which="major", alpha=0.3)
    panels[1].set_xticks(positions, [point.name for point in points])
    panels[1].tick_params(axis="x", labelrotation=40)
    for label in panels[1].get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    title = f"Where do they part? {report.problem}, {report.dtype}"
    if first is not None:
        title += f": first {first.direction} at {first.name!r}"
        handles.append(
            _proxy(
                marker="o",
                markersize=10,
                markerfacecolor="none",
                markeredgecolor="red",
                markeredgewidth=2,
                linestyle="none",
            )
        )
        labels.append("first divergence")
    panels[0].set_title(title)
    panels[1].set_xlabel("tapped points, in the order the forward pass reaches them")
    _legend_below(figure, handles, labels)
    return figure


def _ink(background: tuple[float, ...]) -> str:
    """Black or white, whichever reads on ``background`` (an RGBA colour; a transparent one,
    a cell without a colour, shows the white figure)."""
    red, green, blue, alpha = background
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    return "black" if alpha == 0 or luminance > 0.5 else "white"


def fit_figure(
    results: Mapping[str, Any],
    *,
    model: AbstractProblem | None = None,
    data: Mapping[str, Any] | None = None,
    reference: str | None = None,
) -> Any:
    """Fits side by side: data and fitted curves, losses, and the paths' disagreement.

    Args:
        results: Fit results by engine name (from [`fit`][gradlab.fit] or a
            [`FitComparison`][gradlab.FitComparison]).
        model: The problem, to draw each engine's fitted curve through ``data`` (if it
            predicts y from x).
        data: The data the fits ran on.
        reference: The engine the paths are measured against; the third panel (path rho per
            step) is drawn when there are at least two results with trajectories. Nothing
            judges the paths here: [`fit_comparison_figure`][gradlab.plots.fit_comparison_figure]
            draws a comparison's tolerance and marks the engines that fail it.
    """
    return _fit_panels(results, model, data, reference, None)


def fit_comparison_figure(comparison: Any) -> Any:
    """A [`FitComparison`][gradlab.FitComparison] as [`fit_figure`][gradlab.plots.fit_figure]
    draws its fits, judged as the comparison judged them.

    The path panel draws the tolerance each engine's path was held to against the
    reference's (the comparison's ``tolerances``, or its ``atol``/``rtol``, in which case the
    panel shows each step's largest |a−b| / (atol + rtol·max(|a|, |b|)), judged against 1),
    and every engine the comparison finds disagreeing is marked ✗ in the legend, with an ✗
    where its path lies farthest from the reference's. Judged with an envelope
    (``compare_fits(..., envelope=k)``), it draws each engine's bound at every step instead,
    a thin line in the engine's colour over a shaded band, and the ✗ and a dashed vertical
    line where a path first leaves its bound (the legend names the step and the parameter
    element).
    """
    return _fit_panels(
        comparison.results,
        comparison.model,
        comparison.data or None,
        comparison.reference,
        comparison,
    )


def _fit_panels(
    results: Mapping[str, Any],
    model: AbstractProblem | None,
    data: Mapping[str, Any] | None,
    reference: str | None,
    judged: Any,
) -> Any:
    """The fit figure; with ``judged`` (a FitComparison), its tolerance and verdict drawn."""
    names = list(results)
    reference = reference if reference is not None else names[0]
    failing = set(judged.disagreeing) if judged is not None else set()
    # A problem draws curves if it overrides predict (a model of y given x).
    curves = (
        model is not None
        and data is not None
        and type(model).predict is not AbstractProblem.predict
    )
    paths = len(names) > 1 and all(r.trajectory is not None for r in results.values())
    panels = 1 + int(curves) + int(paths)
    figure = _figure(5.0 * panels, 4.2)
    grid = iter(figure.subplots(1, panels, squeeze=False)[0])
    first = results[names[0]]
    title = f"{first.problem}: the same fit on {len(names)} engine(s), {first.dtype}"
    if judged is not None:
        within = "tolerance" if judged.envelope_bound is None else "its envelope"
        title += "; " + (
            f"✗ disagreeing: {', '.join(judged.disagreeing)}"
            if failing
            else f"every path within {within}"
        )
    # Wrapped to the figure's width (about 9 characters an inch at this size).
    figure.suptitle(textwrap.fill(title, int(9 * 5.0 * panels)))

    # One legend for every panel: an engine has one style throughout.
    entries: dict[str, Any] = {}
    for index, name in enumerate(names):
        label = name if results[name].ok else f"{name} ({results[name].status})"
        if paths and name == reference:
            label += " (reference)"
        style = _style(index, len(names))
        if name in failing:
            leaves = judged.leaves_at.get(name)
            label += " ✗ disagrees"
            if leaves is not None:
                label += f": leaves its envelope at step {leaves} ({judged.leaving_element[name]})"
            style.update(_FAILING)
        entries[label] = _proxy(**style)

    if curves:
        assert model is not None
        assert data is not None
        entries.update(_draw_curves(next(grid), model, data, results))

    axes = next(grid)
    for index, name in enumerate(names):
        losses = results[name].losses
        axes.plot(np.arange(len(losses)), losses, **_style(index, len(names)))
    if all(np.all(r.losses > 0) for r in results.values() if len(r.losses)):
        axes.set_yscale("log")
    axes.set_title("Loss per step")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (before the step's update)")
    axes.grid(True, alpha=0.3)

    if paths:
        entries.update(_draw_paths(next(grid), results, reference, judged))
    _legend_below(figure, list(entries.values()), list(entries))
    return figure


def _draw_paths(
    axes: Any, results: Mapping[str, Any], reference: str, judged: Any
) -> dict[str, Any]:
    """Per step, how far each path lies from the reference's; with ``judged``, against the
    tolerance it was judged with, an ✗ at the peak of each disagreeing engine's path.

    Returns:
        The legend entries this panel adds (the tolerance lines), by label.
    """
    names = list(results)
    measure = None  # rho; with atol/rtol, the judged excess (close at most 1)
    if judged is not None and judged.atol is not None:
        measure = Criterion(atol=judged.atol, rtol=judged.rtol)
    bounds = None if judged is None else judged.envelope_bound
    for index, name in enumerate(names):
        if name == reference:
            continue
        trajectories = results[name].trajectory, results[reference].trajectory
        per_step = np.maximum(path_rho(*trajectories, measure), RHO_FLOOR)
        style = _style(index, len(names))
        axes.plot(np.arange(len(per_step)), per_step, **style)
        if bounds is not None and name in bounds:
            bound = np.maximum(bounds[name], RHO_FLOOR)
            steps = np.arange(len(bound))
            axes.fill_between(steps, RHO_FLOOR, bound, **_BAND)
            axes.plot(steps, bound, color=style["color"], **_BOUND)
        if judged is not None and name in judged.disagreeing and len(per_step):
            mark = int(np.argmax(per_step))
            leaves = judged.leaves_at.get(name)
            if leaves is not None and leaves < len(per_step):
                # The step where the path leaves its bound, across the panel (the legend
                # names the step and the element).
                mark = leaves
                axes.axvline(leaves, color=style["color"], **_LEAVES)
            axes.plot(mark, per_step[mark], color=style["color"], zorder=5, **_FAILING)
    axes.set_yscale("log")
    axes.set_title(f"How far each path lies from {reference}'s")
    axes.set_xlabel("step (updates applied)")
    axes.grid(True, alpha=0.3)
    if measure is not None:
        axes.set_ylabel(
            f"largest |a−b| / (atol + rtol·max(|a|,|b|)) vs {reference}\n"
            f"(0 drawn at {RHO_FLOOR:.0e}; above 1 fails)"
        )
        axes.axhline(1.0, **_TOLERANCE)
        return {f"tolerance: {measure.describe()}": _proxy(**_TOLERANCE)}
    axes.set_ylabel(f"largest rho vs {reference} (0 drawn at {RHO_FLOOR:.0e})")
    if judged is None:
        return {}
    if bounds is not None:
        patches = optional("matplotlib.patches", "plotting", "plot")
        label = f"shaded, thin line: each path's bound vs {reference} (8 × the envelopes)"
        return {label: patches.Patch(facecolor="0.85", edgecolor="0.3", linewidth=0.8)}
    # Each engine's path is held to the tolerance of its pair with the reference: one line
    # per distinct value, naming its engines when they differ (fd's is looser).
    column = judged.engines.index(reference)
    held: dict[float, list[str]] = {}
    for row, name in enumerate(judged.engines):
        if name != reference:
            held.setdefault(float(judged.tolerances[row, column]), []).append(name)
    entries = {}
    for number, (limit, engines) in enumerate(sorted(held.items())):
        style = {**_TOLERANCE, "linestyle": _DASHES[(number + 1) % len(_DASHES)]}
        axes.axhline(limit, **style)
        label = f"tolerance {limit:.3g}"
        if len(held) > 1:
            label += f" ({', '.join(engines)})"
        entries[label] = _proxy(**style)
    return entries


def _draw_curves(
    axes: Any, model: AbstractProblem, data: Mapping[str, Any], results: Mapping[str, Any]
) -> dict[str, Any]:
    """The data and each engine's fitted curve (1-D inputs), or predicted against observed.

    Returns:
        The legend entries this panel adds besides the engines', by label.
    """
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    names = list(results)
    if x.ndim == 1 or x.shape[1] == 1:
        flat = x.reshape(-1)
        axes.scatter(flat, y, s=12, color="0.6", zorder=0)
        grid = np.linspace(flat.min(), flat.max(), 200)
        inputs = grid if x.ndim == 1 else grid[:, None]
        for index, name in enumerate(names):
            fitted = model.predict(results[name].params, inputs)
            axes.plot(grid, fitted, **_style(index, len(names)))
        axes.set_xlabel("x")
        axes.set_ylabel("y")
        axes.set_title("Data and each engine's fitted curve")
        entries = {"data": _proxy(linestyle="", marker="o", markersize=4, color="0.6")}
    else:
        for index, name in enumerate(names):
            predicted = model.predict(results[name].params, x)
            style = _style(index, len(names))
            axes.scatter(y, predicted, s=10, color=style["color"], alpha=0.6)
        low, high = float(np.min(y)), float(np.max(y))
        axes.plot([low, high], [low, high], **_IDENTITY)
        axes.set_xlabel("observed y")
        axes.set_ylabel("predicted y")
        axes.set_title("Each engine's fit: predicted against observed")
        entries = {"predicted = observed": _proxy(**_IDENTITY)}
    axes.grid(True, alpha=0.3)
    return entries


def benchmark_figure(result: Any) -> Any:
    """Time of value-and-gradient against n, log-log: a column per problem, a row per dtype.

    One line per engine (minimum over the timed calls; the band reaches the median), the
    objective alone dotted in the same colour, and one ``numpy.dot`` over the data in grey:
    the memory floor. Slope 1 is time proportional to n; a flat start is per-call overhead.
    The legend under the panels names each engine's colour once and each line style once.
    """
    measured = result.select()
    problems = sorted({case.problem for case in measured})
    dtypes = sorted({case.dtype for case in measured})
    if not measured:
        raise ValueError("the benchmark measured no case; there is nothing to plot")
    figure = _figure(4.2 * len(problems), 3.4 * len(dtypes) + 0.4)
    grid = figure.subplots(len(dtypes), len(problems), squeeze=False, sharex=True)
    engines = list(dict.fromkeys(case.engine for case in measured))
    for row, dtype in enumerate(dtypes):
        for column, problem in enumerate(problems):
            ax = grid[row][column]
            for index, engine in enumerate(engines):
                cases = sorted(result.select(problem=problem, dtype=dtype, engine=engine), key=_n)
                if not cases:
                    continue
                sizes = [case.n for case in cases]
                fastest = [case.gradient.min for case in cases if case.gradient]
                typical = [case.gradient.median for case in cases if case.gradient]
                color = f"C{index % 10}"
                ax.plot(sizes, fastest, marker="o", color=color)
                ax.fill_between(sizes, fastest, typical, color=color, alpha=0.15, linewidth=0)
                objective = [case.objective.min for case in cases if case.objective]
                ax.plot(sizes, objective, linestyle=":", color=color)
            floor = sorted(
                {
                    (case.n, case.floor.min)
                    for case in result.select(problem=problem, dtype=dtype)
                    if case.floor is not None
                }
            )
            if floor:
                ax.plot(*zip(*floor, strict=True), **_FLOOR)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{problem}, {dtype}")
            ax.grid(True, which="major", alpha=0.3)
            if row == len(dtypes) - 1:
                ax.set_xlabel("n (data points)")
            if column == 0:
                ax.set_ylabel("seconds per call")
    # Colour says the engine and line style what was timed: one entry each, so the legend
    # grows with the engines, not with engines × line styles.
    entries = {
        engine: _proxy(color=f"C{index % 10}", marker="o") for index, engine in enumerate(engines)
    }
    entries["value+grad: fastest call (band: to the median)"] = _proxy(color="0.2", marker="o")
    entries["objective alone: fastest call"] = _proxy(color="0.2", linestyle=":")
    if any(case.floor is not None for case in measured):
        entries["np.dot(y, x): the memory floor"] = _proxy(**_FLOOR)
    _legend_below(figure, list(entries.values()), list(entries))
    return figure


def _n(case: Any) -> int:
    return int(case.n)
