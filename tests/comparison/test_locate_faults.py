"""``locate`` finds porting bugs where they are planted, and flags nothing in correct ports.

Oracle: four small models (an MLP, a CNN, a pre-layernorm transformer block, an LSTM) ported
to torch and to jax with the same taps (``ports.py``), and realistic porting bugs planted in
one port, each with the point where it first shows worked out by hand (the tap downstream
of a wrong forward operation; the tap just before a forward-correct operation with a wrong
backward; the last tap for a wrong loss reduction; a parameter's path for a wrong weight
gradient alone). The fault-free ports compute the same function, so any flag on them is a
false alarm.

The normal suite runs three faults per model and the fault-free ports at two seeds (one in
float64, one in float32); ``HYPOTHESIS_PROFILE=deep`` (the project's thorough run) or
``GRADLAB_DEEP=1`` runs every fault and ten seeds per dtype. Each locate compiles the jax
port three or four times (a second to a few on 2 cores): that is what sizes the normal suite.
"""

from __future__ import annotations

from typing import Any

import pytest
from _helpers import DEEP

pytest.importorskip("torch")
pytest.importorskip("jax")

from ports import FAULTS, MODELS, Fault, problem

import gradlab

_DEEP_ONLY = pytest.mark.skipif(
    not DEEP, reason="the full sweep: runs with GRADLAB_DEEP=1 (or HYPOTHESIS_PROFILE=deep)"
)

#: The faults of the normal suite, three per model: a forward fault, a backward-only one
#: (a wrong custom backward) and one that exercises a rule of ``locate`` (a float32 point in
#: a float64 run, a gradient-only fault, a fault that shows a step later than planted).
NORMAL = {
    ("mlp", "act1_float32"),
    ("mlp", "relu_vjp_straight_through"),
    ("mlp", "linear_vjp_weight_grad_transposed"),
    ("cnn", "conv2_same_padding_stride2"),
    ("cnn", "flatten_nhwc_order"),
    ("cnn", "maxpool_fn_avg_backward"),
    ("transformer", "ln1_eps_1e-6"),
    ("transformer", "causal_mask_off_by_one"),
    ("transformer", "softmax_vjp_diagonal_only"),
    ("lstm", "forget_bias_plus_one"),
    ("lstm", "gate_order_i_f_swapped"),
    ("lstm", "sigmoid_vjp_missing_one_minus"),
}

#: The fault-free check, per model: (dtype, seed). Normal suite: one run per dtype (three,
#: two of them in float32, where the bounds are tightest relative to the ports' differences,
#: until the suite's time was cut in issue 34); deep: ten seeds per dtype.
CLEAN = [
    (dtype, seed)
    for dtype in ("float64", "float32")
    for seed in (range(10) if DEEP else (range(1) if dtype == "float64" else range(1, 2)))
]


def _fault_params() -> list[Any]:
    return [
        pytest.param(
            fault, id=fault.id, marks=() if (fault.model, fault.name) in NORMAL else _DEEP_ONLY
        )
        for fault in FAULTS
    ]


def test_the_fault_list_is_what_the_sweep_needs() -> None:
    names = [(fault.model, fault.name) for fault in FAULTS]
    assert len(set(names)) == len(names)
    assert len(FAULTS) >= 40
    assert set(names) >= NORMAL
    for model in MODELS:
        assert sum(fault.model == model for fault in FAULTS) >= 8
        assert sum(model == normal for normal, _ in NORMAL) == 3
    assert {fault.port for fault in FAULTS} == {"torch", "jax"}
    assert {fault.expected_direction for fault in FAULTS} == {"forward", "backward", "gradient"}


@pytest.mark.parametrize("fault", _fault_params())
def test_locate_reports_a_planted_fault_where_it_first_shows(fault: Fault) -> None:
    native, data, params = problem(fault.model, fault.name, seed=0)
    report = gradlab.locate(native, data, params, dtype="float64")
    assert report.first is not None, f"{fault.id}: not found\n{report}"
    where = (report.first.name, report.first.direction)
    assert where == (fault.expected_point, fault.expected_direction), f"{fault.id}\n{report}"
    assert report.first.rho > report.first.bound
    assert not report.ok


@pytest.mark.parametrize(("dtype", "seed"), CLEAN)
@pytest.mark.parametrize("model", MODELS)
def test_fault_free_ports_raise_no_flag(model: str, dtype: str, seed: int) -> None:
    native, data, params = problem(model, None, seed=seed)
    report = gradlab.locate(native, data, params, dtype=dtype, seed=seed)
    assert report.ok, str(report)
    assert not report.unmatched
    assert len(report.points) >= 5
