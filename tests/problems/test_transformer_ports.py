"""The transformer block of examples/transformer_ports.py, in torch, Flax and Equinox.

The oracles: three frameworks' own attention, layer norm and GELU, loaded with the same
canonical weights, give the same loss to 1e-12 and gradients and Hessian-vector products
to rho 1e-10; the NumPy port, written from the mathematics, agrees with all of them
through finite differences; and ports with a planted bug are caught.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import flax_module
from gradlab.testing import assert_same_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformer_ports.py"

#: Exact engines in float64, each on its own framework's code: round-off apart.
ACROSS_FRAMEWORKS = 1e-10


@pytest.fixture(scope="module")
def ports() -> dict[str, Any]:
    for module in ("torch", "jax", "flax", "equinox"):
        pytest.importorskip(module)
    require_engine("torch")
    require_engine("jax")
    return runpy.run_path(str(EXAMPLE))


@pytest.mark.parametrize("problem", ["TORCH_VS_FLAX", "TORCH_VS_EQUINOX"])
def test_each_port_has_torchs_loss_and_gradient(ports: dict[str, Any], problem: str) -> None:
    report = gradlab.compare_gradients(
        ports[problem], ports["DATA"], ports["PARAMS"], engines="torch,jax,fd"
    )
    assert report.ok, report
    assert report.reference == "fd"  # the NumPy port, by finite differences
    assert abs(report.losses["jax"] - report.losses["torch"]) < 1e-12
    assert abs(report.losses["fd"] - report.losses["torch"]) < 1e-12
    assert report.rho[1, 2] < ACROSS_FRAMEWORKS, report  # torch against jax
    assert max(report.verdicts[engine].rho for engine in ("torch", "jax")) < 1e-8
    # Gradients come back by torch's names, however Flax or Equinox holds the weights.
    assert report.values["jax"]["['attn.in_proj_weight']"].shape == (24, 8)


def test_flax_and_equinox_agree_with_each_other(ports: dict[str, Any]) -> None:
    point = (ports["DATA"], ports["PARAMS"])
    flax_loss, flax_grads = gradlab.value_and_grad(ports["TORCH_VS_FLAX"], *point, engine="jax")
    eqx_loss, eqx_grads = gradlab.value_and_grad(ports["TORCH_VS_EQUINOX"], *point, engine="jax")
    assert abs(float(flax_loss) - float(eqx_loss)) < 1e-12
    assert gradlab.max_rho(flax_grads, eqx_grads) < ACROSS_FRAMEWORKS


@pytest.mark.parametrize("problem", ["TORCH_VS_FLAX", "TORCH_VS_EQUINOX"])
def test_hessian_vector_products_agree(ports: dict[str, Any], problem: str) -> None:
    # Forward over reverse in both: torch's attention takes its explicit softmax path
    # (need_weights=True), which forward mode can differentiate.
    rng = np.random.default_rng(1)
    tangent = {name: rng.standard_normal(value.shape) for name, value in ports["PARAMS"].items()}
    report = gradlab.compare_hessians(
        ports[problem],
        ports["DATA"],
        ports["PARAMS"],
        tangent=tangent,
        engines="torch,jax",
        reference="torch",
    )
    assert report.ok, report
    assert report.verdicts["jax"].rho < ACROSS_FRAMEWORKS, report
    assert not report.notes  # no fallback: forward mode ran in both


def test_a_port_with_query_and_key_swapped_is_caught(ports: dict[str, Any]) -> None:
    to_flax = ports["to_flax"]

    def swapped(params: Any, xp: Any) -> Any:
        native = to_flax(params, xp)
        attn = native["attn"]
        return {**native, "attn": {**attn, "query": attn["key"], "key": attn["query"]}}

    wrong = gradlab.NativeProblem(
        name="swapped",
        torch=ports["torch_loss"],
        jax=ports["flax_loss"],
        layouts={"jax": swapped},
    )
    report = gradlab.compare_gradients(wrong, ports["DATA"], ports["PARAMS"], engines="torch,jax")
    assert not report.ok
    assert report.losses_differ is not None  # the forward passes already differ


def test_flaxs_default_layer_norm_epsilon_is_caught_and_located(ports: dict[str, Any]) -> None:
    import jax
    import jax.numpy as jnp

    block = ports["FlaxBlock"](epsilon=1e-6)  # Flax's default, not torch's 1e-5
    apply, _ = flax_module(block, block.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32)))

    def loss(params: Any, data: Any) -> Any:
        return jnp.mean((apply(params, data["tokens"].astype(jnp.int32)) - data["y"]) ** 2)

    wrong = gradlab.NativeProblem(
        name="epsilon", torch=ports["torch_loss"], jax=loss, layouts={"jax": ports["to_flax"]}
    )
    # The linen port is tapped at every submodule, as the torch one: named alike, where
    # torch's attention returns (output, weights) and its MLP is a Sequential.
    names = {"jax": {"attn": "attn[0]", "mlp_in": "mlp.0", "mlp_out": "mlp.2"}}
    with pytest.raises(gradlab.Disagreement, match="forward at 'norm'"):
        assert_same_model(wrong, ports["DATA"], ports["PARAMS"], engines="torch,jax", names=names)
