"""The main job: the seed recipe on every installed engine, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradlab._agreement import max_rho, tolerance
from gradlab._checks import check_positive_int
from gradlab._derivatives import value_and_grad
from gradlab._output import table
from gradlab._progress import progress_bar
from gradlab.engines._protocol import is_approximate
from gradlab.engines._registry import get_engine
from gradlab.fitting._result import FitResult
from gradlab.recipes import Recipe


@dataclass(frozen=True)
class DemoRow:
    """One engine's line in the demo table."""

    result: FitResult
    #: Largest rho between the engine's gradient and the hand-derived one, at the starting
    #: point and at the engine's final point.
    gradient_rho: float
    tolerance: float

    @property
    def agrees(self) -> bool:
        """The fit completed and its gradients agree with the hand-derived ones."""
        return self.result.ok and self.gradient_rho <= self.tolerance


def run_demo(
    recipe: Recipe, engines: Sequence[str], repeats: int = 3, progress: bool = False
) -> list[DemoRow]:
    """Run ``recipe`` on each engine from the same start; compare gradients with the hand's.

    Each engine runs the recipe once to warm up (imports, tracing, compilation, allocator),
    then ``repeats`` times; the fastest of those is reported, since on a shared machine the
    minimum is the least noisy estimate of what the engine itself costs.
    """
    repeats = check_positive_int(repeats, "repeats")
    rows = []
    with progress_bar(len(engines), "demo", progress) as advance:
        for engine in engines:
            rows.append(_row(recipe, engine, repeats))
            advance(engine)
    return rows


def _row(recipe: Recipe, engine: str, repeats: int) -> DemoRow:
    """One engine: warm up, keep the fastest run, check its gradients at both ends."""
    recipe.run(engine)  # warm-up
    result = min((recipe.run(engine) for _ in range(repeats)), key=lambda r: r.wall_time)
    worst = 0.0
    for point in (recipe.init, result.params):
        _, hand = value_and_grad(
            recipe.problem, recipe.data, point, engine="numpy", dtype="float64"
        )
        _, grads = value_and_grad(
            recipe.problem, recipe.data, point, engine=engine, dtype=recipe.dtype
        )
        worst = max(worst, max_rho(hand, grads))
    # Judged like the comparisons judge a pair with the hand gradient (see pair_tolerances):
    # an engine that declares itself approximate (fd, or a plug-in) gets the fd tolerance.
    approximate = is_approximate(get_engine(engine))
    limit = tolerance(recipe.dtype, against_fd=approximate)
    return DemoRow(result, worst, limit)


def format_table(recipe: Recipe, rows: Sequence[DemoRow]) -> str:
    """A plain-text table of the demo's rows."""
    names = list(recipe.init)
    header = [
        "engine",
        *(f"final {name}" for name in names),
        "final loss",
        "µs/step",
        "max rho vs hand",
        "agrees",
    ]
    lines = [header]
    for row in rows:
        result = row.result
        lines.append(
            [
                result.engine,
                *(f"{float(result.params[name]):.9f}" for name in names),
                f"{result.final_loss:.9f}",
                f"{result.time_per_step * 1e6:.1f}",
                f"{row.gradient_rho:.1e}",
                ("yes" if row.agrees else "NO") + ("" if result.ok else f" ({result.status})"),
            ]
        )
    return table(header, lines[1:])


def run_frameworks_demo(
    recipe: Recipe,
    engines: str | None,
    repeats: int,
    progress: bool = False,
    plot: str | None = None,
) -> int:
    """The same model in several frameworks: gradients, Hessian-vector products and fits.

    Prints the three comparisons (each engine differentiating its own framework's
    implementation) and returns the exit status: 0 when every engine agrees in all three.
    """
    import numpy as np

    from gradlab._tree import tree_map
    from gradlab.comparison._fits import compare_fits
    from gradlab.comparison._gradients import compare_gradients, compare_hessians

    repeats = check_positive_int(repeats, "--repeats")
    problem, data, init = recipe.problem, recipe.data, recipe.init
    print(
        f"Recipe {recipe.name!r}: {problem!r}, {recipe.dtype}; each engine differentiates "
        "its own framework's implementation.\n"
    )
    gradients = compare_gradients(
        problem, data, init, engines=engines, dtype=recipe.dtype, progress=progress
    )
    print(gradients, end="\n\n")
    rng = np.random.default_rng(0)
    tangent = tree_map(lambda value: rng.standard_normal(np.shape(value)), init)
    # The hand derivation has no Hessian-vector product: 'numpy' sits this one out.
    with_products = engines
    if engines is not None and not problem.has_hand_hvp:
        with_products = ",".join(
            name for name in (part.strip() for part in engines.split(",")) if name != "numpy"
        )
    products = compare_hessians(
        problem,
        data,
        init,
        tangent=tangent,
        engines=with_products or None,
        dtype=recipe.dtype,
        progress=progress,
    )
    print(products, end="\n\n")
    fits = compare_fits(
        problem,
        data,
        optimizer=recipe.optimizer,
        steps=recipe.steps,
        init=init,
        engines=engines,
        dtype=recipe.dtype,
        repeats=repeats,
        progress=progress,
    )
    print(fits)
    if plot:
        from gradlab._output import save_figure

        save_figure(fits.plot(), plot)
        print(f"\nPlot written to {plot}")
    return 0 if gradients.ok and products.ok and fits.ok else 1
