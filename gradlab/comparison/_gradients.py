"""Gradients and second derivatives, compared across engines: thin calls of the kernel."""

from __future__ import annotations

from typing import Any

from gradlab.comparison._kernel import Engines, compare
from gradlab.comparison._kinds import GRADIENT, HESSIAN, HVP
from gradlab.comparison._report import GradientReport
from gradlab.engines._protocol import GradientEngine
from gradlab.problems._base import AbstractProblem


def compare_gradients(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's gradient at ``params``, compared pairwise and against a reference.

    Args:
        problem: The problem.
        data: Its data (copied, never modified).
        params: Where to take the gradient (copied, never modified).
        engines: Engine names or objects (or one comma-separated string). Default: every
            known engine, skipping with a note those not installed or unable to run this
            problem. An engine named explicitly that cannot run is an error.
        dtype: ``"float32"`` or ``"float64"``: every engine computes in it.
        reference: The engine the verdicts are against. Default ``"numpy"`` (the hand
            derivation) when the problem has one, else ``"fd"``, added to ``engines`` if
            absent; where that default cannot run the problem, the first engine that can.
        tolerance: One largest rho for every pair, instead of gradlab's table
            ([`tolerance`][gradlab.tolerance]: exact pairs 1e-9 in float64 and 1e-4 in float32;
            pairs with an approximate engine such as fd 1e-6 and 1e-4). Or ``"derived"``:
            each pair's from this computation, 8 times how far either engine's own result
            moves when the parameters move by 4 ulps, and never under 32 ulps (a pair with an
            approximate engine keeps the table's where that is larger). It costs each
            engine a second evaluation, and catches what the table's margin hides (a
            derivation off by 1e-11) without calling an ill-conditioned problem's round-off
            a disagreement (the bounds of [`locate`][gradlab.locate]).
        atol: Judge pairs instead in the familiar form, element by element:
            |a − b| ≤ atol + rtol·max(|a|, |b|) (symmetric, unlike ``numpy.isclose``).
            ``atol = rtol = τ`` is within a factor 2 of ``tolerance = τ``: it accepts all
            that rho ≤ τ/2 accepts, and rho ≤ 2τ accepts all it accepts. Either alone means
            the other is 0; not with ``tolerance``.
        rtol: See ``atol``.
        progress: Show a progress bar (needs tqdm) while engines run.

    Returns:
        A [`GradientReport`][gradlab.GradientReport]: ``str()`` it, assert on ``.ok``, or
        ``raise_if_disagree()``.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.Quadratic()
        >>> report = gradlab.compare_gradients(problem, problem.make_data(50),
        ...                                    {"w": 0.5, "b": -1.0}, engines="numpy,fd")
        >>> report.ok, report.reference, report.verdicts["fd"].rho < 1e-9
        (True, 'numpy', True)
    """
    return compare(
        GRADIENT,
        problem,
        data,
        params,
        engines=engines,
        dtype=dtype,
        reference=reference,
        tolerance=tolerance,
        atol=atol,
        rtol=rtol,
        progress=progress,
    )


def compare_hessians(
    problem: AbstractProblem,
    data: Any,
    params: Any,
    *,
    tangent: Any = None,
    engines: Engines = None,
    dtype: str = "float64",
    reference: str | GradientEngine | None = None,
    tolerance: float | str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    progress: bool = False,
) -> GradientReport:
    """Every engine's second derivatives at ``params``: the full Hessian, or H·``tangent``.

    Like [`compare_gradients`][gradlab.compare_gradients], with the same tolerance table and
    overrides (``tolerance``, ``atol``, ``rtol``). Without
    ``tangent`` each engine builds the full Hessian (one Hessian-vector product per parameter
    element, so for small problems); with it, each computes the Hessian-vector product H·tangent.
    Engines without second derivatives are skipped with a note. The default reference is ``"numpy"``
    when the problem has a hand-derived Hessian-vector product, else ``"fd"`` (where that cannot
    run the problem, the first engine that can).

    Examples:
        >>> import gradlab
        >>> problem = gradlab.LinearRegression()
        >>> data = problem.make_data(30, d=2)
        >>> report = gradlab.compare_hessians(problem, data, {"w": [1.0, -1.0], "b": 0.0},
        ...                                   engines=["numpy", "fd"])
        >>> report.ok, report.values["numpy"]["hessian"].shape
        (True, (3, 3))
    """
    # A tangent asks for one Hessian-vector product per engine, none for the full Hessian.
    return compare(
        HESSIAN if tangent is None else HVP,
        problem,
        data,
        params,
        tangent=tangent,
        engines=engines,
        dtype=dtype,
        reference=reference,
        tolerance=tolerance,
        atol=atol,
        rtol=rtol,
        progress=progress,
    )
