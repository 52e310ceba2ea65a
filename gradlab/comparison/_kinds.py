"""Comparison kinds as values: what each engine computes, how pairs are judged, how a report
names what it compared.

A kind is one small frozen value, and the comparison kernel
(``gradlab.comparison._kernel.compare``) takes one and knows nothing else about it: adding
a kind is one entry in ``KINDS`` and, at most, a thin public wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from gradlab._agreement import Criterion, Label, tolerance
from gradlab._boundary import evaluate, on_engine
from gradlab._derivatives import (
    hessian_blocks,
    hessian_matrix,
    hvp_at,
    jacobian_at,
    per_example_at,
    rows_of,
)
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._tree import element
from gradlab.engines._protocol import (
    GradientEngine,
    hvp_of,
    is_approximate,
    jacobian_of,
    per_example_of,
    value_and_grad_of,
)
from gradlab.problems._base import AbstractProblem

#: The kinds' names: what a [`GradientReport`][gradlab.GradientReport] records as its
#: ``derivative``.
Derivative = Literal["gradient", "hessian", "hvp", "jacobian", "per-example"]


@dataclass(frozen=True)
class Setup:
    """What a comparison checked before computing anything: the engines, the problem as
    engines see it (flat), copies of data and parameters by path, and how to judge.

    Attributes:
        engines: The engines asked for (names or objects), in order.
        default: Whether ``engines`` is gradlab's default list (an engine in it that
            cannot run is skipped with a note, not refused).
        reference: The reference asked for, or ``None`` (the kind's default).
        dtype: The precision every engine computes in.
        problem: The problem as engines are handed it (flat).
        data: The data by path.
        params: The parameters by path (float64 copies).
        judge: In rho, or with ``atol``/``rtol``.
        tangent: For Hessian-vector products, the vector by parameter path; else ``None``.
    """

    engines: list[str | GradientEngine]
    default: bool
    reference: str | GradientEngine | None
    dtype: str
    problem: AbstractProblem
    data: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    judge: Criterion
    tangent: dict[str, np.ndarray] | None = None


class Computed(NamedTuple):
    """One engine's result: its values by name, its loss (gradients only), and the
    function's output shapes by path (Jacobians only)."""

    values: dict[str, np.ndarray]
    loss: float | None = None
    outputs: dict[str, tuple[int, ...]] | None = None


#: The largest rho allowed between each pair of engines: ``(engines by name, dtype, the
#: caller's tolerance or None) -> (E, E) matrix``.
Tolerances = Callable[[Mapping[str, GradientEngine], str, "float | None"], np.ndarray]

#: How a report names the element at ``index`` of its value ``name``, given the parameters
#: and (Jacobians) the output shapes.
Labeler = Callable[[Mapping[str, np.ndarray], Mapping[str, tuple[int, ...]]], Label]


def pair_tolerances(
    engines: Mapping[str, GradientEngine], dtype: str, custom: float | None = None
) -> np.ndarray:
    """The largest rho allowed between each pair of engines: ``custom``, or gradlab's table.

    A pair with an engine that approximates derivatives (fd, or any engine declaring
    ``approximate = True``) gets the finite-difference tolerance.
    """
    approximate = [is_approximate(engine) for engine in engines.values()]
    return np.array(
        [
            [
                custom if custom is not None else tolerance(dtype, against_fd=left or right)
                for right in approximate
            ]
            for left in approximate
        ]
    )


def element_labels(params: Mapping[str, np.ndarray]) -> list[str]:
    """``"w[0]"``, ``"w[1]"``, ``"b"``: one label per parameter element, in flattening order."""
    return [
        element(name, index) for name, value in params.items() for index in np.ndindex(value.shape)
    ]


@dataclass(frozen=True)
class Kind:
    """One kind of comparison, as a value the kernel runs.

    Attributes:
        name: What a report records as its ``derivative``, and what the kernel looks a kind
            up by.
        title: The report's heading: ``"Gradient"`` agreement.
        quantity: What was compared, in a sentence: ``"gradients"``.
        offered: What an engine must offer for it (``value_and_grad_of``, ``hvp_of``, ...):
            raises ``NotSupported`` when the engine cannot, so that it is skipped with a note
            (or, named by the caller, refused).
        has_hand: Whether a problem has the hand derivation the ``numpy`` engine runs for
            it: ``numpy`` is then the default reference, else ``fd``.
        compute: One engine's result on the checked setup, in a dtype.
        label: How the report names the elements of a result: the kind's units (``w[1]``,
            ``∂²/∂w[0]∂b``, ``∂f[2]/∂w[0]``, ``w[0] of row 3``).
        tolerances: The largest rho allowed between each pair of engines.
        output: What the function may return: ``"scalar"`` (a loss) or ``"array"`` (any
            nest of arrays: vector-valued functions).
        takes_tangent: Whether it needs a ``tangent`` (Hessian-vector products).
        check: What to check of the setup before any engine runs (that data has rows, for
            per-example gradients), or ``None``.
        option: What ``gradlab compare --kind`` calls it, or ``None`` where the command
            line does not offer it.
    """

    name: Derivative
    title: str
    quantity: str
    offered: Callable[[GradientEngine, AbstractProblem], object]
    has_hand: Callable[[AbstractProblem], bool]
    compute: Callable[[Setup, GradientEngine, str], Computed]
    label: Labeler
    tolerances: Tolerances = pair_tolerances
    output: Literal["scalar", "array"] = "scalar"
    takes_tangent: bool = False
    check: Callable[[Setup], object] | None = None
    option: str | None = None


# -- What each kind computes on one engine ----------------------------------------------------


def _gradient(setup: Setup, engine: GradientEngine, dtype: str) -> Computed:
    loss, grads = evaluate(engine, setup.problem, setup.data, setup.params, dtype)
    return Computed(grads, float(loss))


def _hessian(setup: Setup, engine: GradientEngine, dtype: str) -> Computed:
    blocks = hessian_blocks(engine, setup.problem, setup.data, setup.params, dtype)
    return Computed({"hessian": hessian_matrix(blocks, setup.params)})


def _hvp(setup: Setup, engine: GradientEngine, dtype: str) -> Computed:
    assert setup.tangent is not None  # the kernel checks it for a kind that takes one
    batch = on_engine(engine, setup.data, dtype)
    product = hvp_of(engine, setup.problem)
    return Computed(
        hvp_at(engine, setup.problem, product, batch, setup.params, setup.tangent, dtype)
    )


def _jacobian(setup: Setup, engine: GradientEngine, dtype: str) -> Computed:
    value, blocks, _ = jacobian_at(engine, setup.problem, setup.data, setup.params, dtype)
    # Outputs in one order for every engine: jax sorts a dict's keys, a hand Jacobian (and
    # torch) keeps the order it was written in.
    paths = sorted(blocks)
    rows = [
        np.concatenate(
            [np.reshape(blocks[path][name], (np.size(value[path]), -1)) for name in setup.params],
            axis=1,
        )
        for path in paths
    ]
    outputs = {path: np.shape(value[path]) for path in paths}
    return Computed({"jacobian": np.concatenate(rows, axis=0)}, outputs=outputs)


def _per_example(setup: Setup, engine: GradientEngine, dtype: str) -> Computed:
    return Computed(per_example_at(engine, setup.problem, setup.data, setup.params, dtype))


# -- How each kind names an element -----------------------------------------------------------


def _by_element(params: Mapping[str, np.ndarray], outputs: Mapping[str, Any]) -> Label:
    return element


def _by_pair(params: Mapping[str, np.ndarray], outputs: Mapping[str, Any]) -> Label:
    wrt = element_labels(params)

    def label(name: str, index: tuple[int, ...]) -> str:
        # A flattened (P, P) matrix: name both elements.
        return f"∂²/∂{wrt[index[0]]}∂{wrt[index[1]]}"

    return label


def _by_output(params: Mapping[str, np.ndarray], outputs: Mapping[str, tuple[int, ...]]) -> Label:
    wrt = element_labels(params)
    of = element_labels({path or "f": np.zeros(shape) for path, shape in outputs.items()})

    def label(name: str, index: tuple[int, ...]) -> str:
        # A flattened (M, P) matrix: outputs down, parameters across.
        return f"∂{of[index[0]]}/∂{wrt[index[1]]}"

    return label


def _by_row(params: Mapping[str, np.ndarray], outputs: Mapping[str, Any]) -> Label:
    def label(name: str, index: tuple[int, ...]) -> str:
        return f"{element(name, index[1:])} of row {index[0]}"

    return label


# -- The kinds ---------------------------------------------------------------------------------

GRADIENT = Kind(
    name="gradient",
    title="Gradient",
    quantity="gradients",
    offered=value_and_grad_of,
    has_hand=lambda problem: problem.has_hand_gradient,
    compute=_gradient,
    label=_by_element,
    option="gradient",
)
HESSIAN = Kind(
    name="hessian",
    title="Hessian",
    quantity="Hessians",
    offered=hvp_of,
    has_hand=lambda problem: problem.has_hand_hvp,
    compute=_hessian,
    label=_by_pair,
    option="hessian",
)
HVP = Kind(
    name="hvp",
    title="Hessian-vector product",
    quantity="Hessian-vector products",
    offered=hvp_of,
    has_hand=lambda problem: problem.has_hand_hvp,
    compute=_hvp,
    label=_by_element,
    takes_tangent=True,
)
JACOBIAN = Kind(
    name="jacobian",
    title="Jacobian",
    quantity="Jacobians",
    offered=jacobian_of,
    # numpy derives a scalar loss's one-row Jacobian from its hand gradient.
    has_hand=lambda problem: problem.has_hand_jacobian or problem.has_hand_gradient,
    compute=_jacobian,
    label=_by_output,
    output="array",
    option="jacobian",
)
PER_EXAMPLE = Kind(
    name="per-example",
    title="Per-example gradient",
    quantity="per-example gradients",
    offered=per_example_of,
    has_hand=lambda problem: problem.has_hand_gradient,
    compute=_per_example,
    label=_by_row,
    check=lambda setup: rows_of(setup.data),
)

#: Every comparison kind, by name.
KINDS: dict[str, Kind] = {
    kind.name: kind for kind in (GRADIENT, HESSIAN, HVP, JACOBIAN, PER_EXAMPLE)
}

#: The kinds ``gradlab compare --kind`` offers, by what it calls them.
ON_COMMAND_LINE: dict[str, Kind] = {
    kind.option: kind for kind in KINDS.values() if kind.option is not None
}


def kind_named(kind: object, kinds: Mapping[str, Kind] = KINDS, argument: str = "kind") -> Kind:
    """The kind called ``kind`` in ``kinds`` (a ``Kind`` is itself), or an error naming
    ``argument`` and the kinds there are.

    Raises:
        ArgumentError: ``kind`` names no kind in ``kinds``.
        ArgumentTypeError: ``kind`` is neither a name nor a ``Kind``.
    """
    if isinstance(kind, Kind):
        return kind
    if not isinstance(kind, str):
        raise ArgumentTypeError(
            argument, f"must be a comparison kind's name, got {type(kind).__name__}"
        )
    try:
        return kinds[kind]
    except KeyError:
        raise ArgumentError(
            argument, f"unknown comparison kind {kind!r}; known: {', '.join(kinds)}"
        ) from None
