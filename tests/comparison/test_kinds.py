"""Comparison kinds are values, and one kernel runs any of them.

Each public ``compare_*`` function is the kernel called with its kind; the kernel refuses a
kind it does not know by name, and runs a kind it was never written for, given as a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gradlab
from gradlab.comparison._kernel import compare
from gradlab.comparison._kinds import (
    GRADIENT,
    KINDS,
    ON_COMMAND_LINE,
    Computed,
    Kind,
    Setup,
    kind_named,
)

PROBLEM = gradlab.LinearRegression()
DATA = PROBLEM.make_data(8, d=2, seed=3)
PARAMS = {"w": np.array([0.5, -1.0]), "b": np.array(0.25)}
TANGENT = {"w": np.array([1.0, 0.0]), "b": np.array(2.0)}
ENGINES = "numpy,fd"

#: Each kind and the public function that compares it.
PUBLIC: dict[str, tuple[Callable[..., gradlab.GradientReport], dict[str, Any]]] = {
    "gradient": (gradlab.compare_gradients, {}),
    "hessian": (gradlab.compare_hessians, {}),
    "hvp": (gradlab.compare_hessians, {"tangent": TANGENT}),
    "jacobian": (gradlab.compare_jacobians, {}),
    "per-example": (gradlab.compare_per_example_grads, {}),
}


def test_every_kind_has_its_public_function() -> None:
    assert set(PUBLIC) == set(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_public_comparison_is_the_kernel_with_its_kind(name: str) -> None:
    function, extra = PUBLIC[name]
    public = function(PROBLEM, DATA, PARAMS, engines=ENGINES, **extra)
    kernel = compare(name, PROBLEM, DATA, PARAMS, engines=ENGINES, **extra)
    assert public.derivative == kernel.derivative == name
    assert public.ok, public
    assert kernel.ok, kernel
    for engine in ("numpy", "fd"):
        assert public.values[engine].keys() == kernel.values[engine].keys()
        for key, value in public.values[engine].items():
            np.testing.assert_array_equal(value, kernel.values[engine][key])
    kind = KINDS[name]
    assert public.quantity == kind.quantity
    assert str(public).startswith(f"{kind.title} agreement: {PROBLEM.name}")
    # A saved report of every kind reads back as it was.
    again = gradlab.GradientReport.from_json(public.to_json())
    assert again.derivative == name
    assert str(again) == str(public)


def test_the_kernel_refuses_an_unknown_kind_naming_it() -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        compare("hesian", PROBLEM, DATA, PARAMS, engines=ENGINES)
    assert caught.value.argument == "kind"
    message = str(caught.value)
    assert "'hesian'" in message
    assert all(name in message for name in KINDS)
    with pytest.raises(gradlab.ArgumentTypeError) as type_error:
        compare(3, PROBLEM, DATA, PARAMS, engines=ENGINES)  # type: ignore[arg-type]
    assert type_error.value.argument == "kind"


def test_a_tangent_goes_with_hessian_vector_products_only() -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        compare("hvp", PROBLEM, DATA, PARAMS, engines=ENGINES)
    assert caught.value.argument == "tangent"
    assert "Hessian-vector products" in str(caught.value)
    with pytest.raises(gradlab.ArgumentError) as caught:
        compare("gradient", PROBLEM, DATA, PARAMS, tangent=TANGENT, engines=ENGINES)
    assert caught.value.argument == "tangent"


def test_a_new_kind_is_one_value() -> None:
    # Twice the gradient, judged and labelled as a gradient: nothing in the kernel names it.
    def doubled(setup: Setup, engine: gradlab.GradientEngine, dtype: str) -> Computed:
        computed = GRADIENT.compute(setup, engine, dtype)
        return Computed({name: 2 * value for name, value in computed.values.items()})

    kind = Kind(
        name="doubled",  # type: ignore[arg-type]
        title="Doubled gradient",
        quantity="doubled gradients",
        offered=GRADIENT.offered,
        has_hand=GRADIENT.has_hand,
        compute=doubled,
        label=GRADIENT.label,
    )
    report = compare(kind, PROBLEM, DATA, PARAMS, engines=ENGINES)
    gradients = gradlab.compare_gradients(PROBLEM, DATA, PARAMS, engines=ENGINES)
    assert report.ok
    np.testing.assert_array_equal(report.values["numpy"]["w"], 2 * gradients.values["numpy"]["w"])
    assert report.losses == {}  # a kind without a loss reports none


def test_the_command_line_offers_the_kinds_that_name_an_option() -> None:
    assert list(ON_COMMAND_LINE) == ["gradient", "hessian", "jacobian"]
    assert kind_named("jacobian", ON_COMMAND_LINE) is KINDS["jacobian"]
    with pytest.raises(gradlab.ArgumentError, match="known: gradient, hessian, jacobian"):
        kind_named("per-example", ON_COMMAND_LINE, "--kind")
