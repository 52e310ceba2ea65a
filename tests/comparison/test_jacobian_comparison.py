"""Jacobians compared across engines: forward against reverse mode, a broken hand Jacobian
found at its element, outputs matched by name.

The oracle is the tanh layer's Jacobian derived by hand (``tests/_helpers.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _helpers import TANH, installed, tanh_case, tanh_layer, tanh_layer_jacobian

import gradlab


def test_compare_jacobians_finds_forward_and_reverse_agree_and_a_broken_hand_jacobian() -> None:
    data, params = tanh_case(5, 3)
    engines = ",".join(installed(("numpy", "fd", "torch", "torch-fwd", "jax", "jax-fwd")))
    report = gradlab.compare_jacobians(TANH, data, params, engines=engines)
    assert report.ok, report
    assert report.reference == "numpy"
    assert report.values["fd"]["jacobian"].shape == (5, 4)  # 5 outputs; x (3) and c (1)

    def broken(params: Any, data: Any) -> Any:
        J = tanh_layer_jacobian(params, data)
        J["x"][2, 1] *= 1.5
        return J

    wrong = gradlab.Problem(tanh_layer, jacobian=broken, name="broken")
    report = gradlab.compare_jacobians(wrong, data, params, engines="numpy,fd,complex-step")
    assert report.outlier == "numpy"
    element, reference, value, _ = report.largest_differences("fd", 1)[0]
    assert element == "∂f[2]/∂x[1]"
    assert value == pytest.approx(tanh_layer_jacobian(params, data)["x"][2, 1], rel=1e-8)
    assert reference == pytest.approx(1.5 * value, rel=1e-12)
    assert "∂f[2]/∂x[1]" in str(report)


def test_outputs_in_a_dict_are_matched_by_name_whatever_order_an_engine_gives_them() -> None:
    # jax sorts a dict's keys; a hand Jacobian keeps the order it was written in ("out" before
    # "norm"). Rows were once stacked in each engine's own order, and every engine disagreed.
    def function(p: Any, d: Any, xp: Any) -> Any:
        return {"out": xp.tanh(d["A"] @ p["x"] + p["c"]), "norm": xp.sum(p["x"] ** 2)}

    def hand(p: Any, d: Any) -> Any:
        slope = 1 - np.tanh(d["A"] @ p["x"] + p["c"]) ** 2
        return {
            "out": {"x": slope[:, None] * d["A"], "c": slope},
            "norm": {"x": 2 * p["x"], "c": np.zeros_like(p["c"])},
        }

    data, params = tanh_case(5, 3)
    engines = [
        "numpy",
        "fd",
        *(name for name in ("jax", "torch") if name in gradlab.available_engines()),
    ]
    problem = gradlab.Problem(function, jacobian=hand, name="two_outputs")
    report = gradlab.compare_jacobians(problem, data, params, engines=engines)
    assert report.ok, str(report)
    assert max(verdict.rho for verdict in report.verdicts.values()) <= 1e-9
