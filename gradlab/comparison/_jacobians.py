"""Jacobians and per-example gradients, compared across engines: thin calls of the kernel."""

from __future__ import annotations

from typing import Any

from gradlab._derivatives import as_function
from gradlab.comparison._kernel import Engines, compare
from gradlab.comparison._kinds import JACOBIAN, PER_EXAMPLE
from gradlab.comparison._report import GradientReport
from gradlab.engines._protocol import GradientEngine
from gradlab.problems._base import AbstractProblem


def compare_jacobians(
    function: Any,
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
    """Every engine's Jacobian of a vector-valued function at ``params``, compared pairwise.

    Like [`compare_gradients`][gradlab.compare_gradients] (the same report, tolerances and
    overrides, outlier logic), over the Jacobian as one (outputs × parameters) matrix.
    Engines without Jacobians are skipped with a note. The default reference is ``"numpy"``
    when the problem has a hand-derived Jacobian (or, for a scalar loss, a hand-derived
    gradient), else ``"fd"``. Forward mode against reverse mode is one call:
    ``engines="jax,jax-fwd"``.

    Examples:
        >>> import numpy as np, gradlab
        >>> f = lambda p, d, xp: xp.tanh(d["A"] @ p["x"])
        >>> data = {"A": np.arange(6.0).reshape(3, 2) / 6}
        >>> report = gradlab.compare_jacobians(f, data, {"x": np.array([0.5, -1.0])},
        ...                                    engines="fd,jax,jax-fwd")
        >>> report.ok, report.values["fd"]["jacobian"].shape
        (True, (3, 2))
    """
    return compare(
        JACOBIAN,
        as_function(function),
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


def compare_per_example_grads(
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
    """Every engine's per-example gradients at ``params``, compared pairwise.

    Like [`compare_gradients`][gradlab.compare_gradients], over each row's gradient (see
    [`per_example_grads`][gradlab.per_example_grads]); elements are named ``w[1] of row 3``.

    Examples:
        >>> import gradlab
        >>> problem = gradlab.LinearRegression()
        >>> report = gradlab.compare_per_example_grads(problem, problem.make_data(8, d=2),
        ...     {"w": [1.0, -1.0], "b": 0.0}, engines="numpy,fd")
        >>> report.ok, report.values["numpy"]["w"].shape
        (True, (8, 2))
    """
    return compare(
        PER_EXAMPLE,
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
