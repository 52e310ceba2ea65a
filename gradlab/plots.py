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

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradlab._agreement import path_rho
from gradlab._output import optional
from gradlab.problems._base import AbstractProblem

# The results are typed Any here: the result modules import this one (for their ``plot``
# methods), and this module reads only their public attributes, so it imports none of them.
__all__ = ["agreement_figure", "benchmark_figure", "fit_figure"]

#: rho below this is drawn at it: 0 has no logarithm, and float64 round-off sits above it.
RHO_FLOOR = 1e-17
# Engines' curves usually coincide: distinct dashes and shrinking widths keep each visible.
_DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 2))]


def _figure(width: float, height: float) -> Any:
    figure_module = optional("matplotlib.figure", "plotting", "plot")
    return figure_module.Figure(figsize=(width, height), layout="constrained")


def _style(index: int, count: int) -> dict[str, Any]:
    return {
        "color": f"C{index % 10}",
        "linestyle": _DASHES[index % len(_DASHES)],
        "linewidth": 1.2 + 1.6 * (count - 1 - index) / max(1, count - 1),
    }


def agreement_figure(report: Any) -> Any:
    """Heatmap of the largest rho between every pair of engines, against its tolerance.

    Colour is rho / tolerance on a log scale: green is well inside the tolerance, yellow at
    it, red beyond. Each cell is labelled with its rho; a cross marks a pair beyond tolerance.
    """
    colors = optional("matplotlib.colors", "plotting", "plot")
    names = list(report.engines)
    size = len(names)
    figure = _figure(2.6 + 1.1 * size, 1.8 + 1.0 * size)
    axes = figure.add_subplot()
    with np.errstate(divide="ignore"):
        ratio = np.log10(np.maximum(report.rho, RHO_FLOOR) / report.tolerances)
    np.fill_diagonal(ratio, np.nan)
    norm = colors.TwoSlopeNorm(vmin=-12.0, vcenter=0.0, vmax=3.0)
    image = axes.imshow(np.clip(ratio, -12.0, 3.0), cmap="RdYlGn_r", norm=norm)
    for i in range(size):
        for j in range(size):
            if i == j:
                text, weight = "—", "normal"
            else:
                beyond = report.rho[i, j] > report.tolerances[i, j]
                value = report.rho[i, j]
                text = ("0" if value == 0 else f"{value:.0e}") + (" ✗" if beyond else "")
                weight = "bold" if beyond else "normal"
            axes.text(j, i, text, ha="center", va="center", fontsize=9, weight=weight)
    axes.set_xticks(range(size), names)
    axes.set_yticks(range(size), names)
    axes.set_title(f"Do the engines agree? {report.quantity}, {report.dtype}")
    axes.set_xlabel(
        f"{report.problem}. Cell: largest rho = |a−b| / max(1, |a|+|b|)"
        "\nover all elements; ✗ beyond tolerance",
        fontsize=9,
    )
    bar = figure.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label("log₁₀(rho / tolerance): below 0 agrees")
    return figure


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
            step) is drawn when there are at least two results with trajectories.
    """

    names = list(results)
    reference = reference if reference is not None else names[0]
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
    figure.suptitle(f"{first.problem}: the same fit on {len(names)} engine(s), {first.dtype}")

    if curves:
        assert model is not None
        assert data is not None
        _draw_curves(next(grid), model, data, results)

    axes = next(grid)
    for index, name in enumerate(names):
        losses = results[name].losses
        label = name if results[name].ok else f"{name} ({results[name].status})"
        axes.plot(np.arange(len(losses)), losses, label=label, **_style(index, len(names)))
    if all(np.all(r.losses > 0) for r in results.values() if len(r.losses)):
        axes.set_yscale("log")
    axes.set_title("Loss per step")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (before the step's update)")
    axes.legend(title="engine")
    axes.grid(True, alpha=0.3)

    if paths:
        axes = next(grid)
        others = [name for name in names if name != reference]
        for index, name in enumerate(others, start=1):
            trajectories = results[name].trajectory, results[reference].trajectory
            per_step = np.maximum(path_rho(*trajectories), RHO_FLOOR)
            axes.plot(np.arange(len(per_step)), per_step, label=name, **_style(index, len(names)))
        axes.set_yscale("log")
        axes.set_title(f"How far each path lies from {reference}'s")
        axes.set_xlabel("step (updates applied)")
        axes.set_ylabel(f"largest rho vs {reference} (0 drawn at {RHO_FLOOR:.0e})")
        axes.legend(title="engine")
        axes.grid(True, alpha=0.3)
    return figure


def _draw_curves(
    axes: Any, model: AbstractProblem, data: Mapping[str, Any], results: Mapping[str, Any]
) -> None:
    """The data and each engine's fitted curve (1-D inputs), or predicted against observed."""
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    names = list(results)
    if x.ndim == 1 or x.shape[1] == 1:
        flat = x.reshape(-1)
        axes.scatter(flat, y, s=12, color="0.6", label="data", zorder=0)
        grid = np.linspace(flat.min(), flat.max(), 200)
        inputs = grid if x.ndim == 1 else grid[:, None]
        for index, name in enumerate(names):
            fitted = model.predict(results[name].params, inputs)
            axes.plot(grid, fitted, label=name, **_style(index, len(names)))
        axes.set_xlabel("x")
        axes.set_ylabel("y")
        axes.set_title("Data and each engine's fitted curve")
    else:
        for index, name in enumerate(names):
            predicted = model.predict(results[name].params, x)
            style = _style(index, len(names))
            axes.scatter(y, predicted, s=10, color=style["color"], label=name, alpha=0.6)
        low, high = float(np.min(y)), float(np.max(y))
        axes.plot([low, high], [low, high], color="0.3", linewidth=1, label="predicted = observed")
        axes.set_xlabel("observed y")
        axes.set_ylabel("predicted y")
        axes.set_title("Each engine's fit: predicted against observed")
    axes.legend(title="engine")
    axes.grid(True, alpha=0.3)


def benchmark_figure(result: Any) -> Any:
    """Time of value-and-gradient against n, log-log: a column per problem, a row per dtype.

    One line per engine (minimum over the timed calls; the band reaches the median), the
    objective alone dotted in the same colour, and one ``numpy.dot`` over the data in grey:
    the memory floor. Slope 1 is time proportional to n; a flat start is per-call overhead.
    """
    measured = result.select()
    problems = sorted({case.problem for case in measured})
    dtypes = sorted({case.dtype for case in measured})
    if not measured:
        raise ValueError("the benchmark measured no case; there is nothing to plot")
    figure = _figure(4.2 * len(problems), 3.4 * len(dtypes) + 0.8)
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
                ax.plot(sizes, fastest, marker="o", color=color, label=f"{engine} value+grad")
                ax.fill_between(sizes, fastest, typical, color=color, alpha=0.15, linewidth=0)
                objective = [case.objective.min for case in cases if case.objective]
                ax.plot(sizes, objective, linestyle=":", color=color, label=f"{engine} objective")
            floor = sorted(
                {
                    (case.n, case.floor.min)
                    for case in result.select(problem=problem, dtype=dtype)
                    if case.floor is not None
                }
            )
            if floor:
                ax.plot(
                    *zip(*floor, strict=True), color="0.5", linestyle="--", label="np.dot(y, x)"
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{problem}, {dtype}")
            ax.grid(True, which="major", alpha=0.3)
            if row == len(dtypes) - 1:
                ax.set_xlabel("n (data points)")
            if column == 0:
                ax.set_ylabel("seconds per call")
    handles, labels = grid[0][0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize="small"
    )
    return figure


def _n(case: Any) -> int:
    return int(case.n)
