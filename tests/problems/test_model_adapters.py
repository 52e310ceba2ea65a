"""Flax (linen, NNX) and Equinox models as pure functions of their parameters.

Each adapter is checked against an oracle it does not share: the same small network
written out in NumPy, differentiated by finite differences (the ``fd`` engine), and its
outputs computed by hand from the parameters the adapter returned. Then every refusal,
``apply``'s own parameter checks, the user's model left as it was, the taps of a linen
module against a torch module's, and the frameworks imported only when an adapter runs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab import equinox_module, flax_module, nnx_module

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 3))
Y = RNG.standard_normal((6, 1))
DATA = {"x": X, "y": Y}


def numpy_mlp(first: str, second: str, *, transposed: bool) -> Callable[[Any, Any], Any]:
    """tanh(x W1 + b1) W2 + b2 and its squared error in NumPy, reading the weights by path
    from a nest (``transposed``: stored (out, in), as torch and Equinox store them)."""

    def leaf(params: Any, name: str) -> Any:
        node = params
        for key in name.replace("[", ".").replace("]", "").split("."):
            node = node[int(key)] if key.isdigit() else node[key]
        return node

    def loss(params: Any, data: Any) -> Any:
        weight = "weight" if transposed else "kernel"
        w1, w2 = leaf(params, f"{first}.{weight}"), leaf(params, f"{second}.{weight}")
        if transposed:
            w1, w2 = w1.T, w2.T
        hidden = np.tanh(data["x"] @ w1 + leaf(params, f"{first}.bias"))
        return np.sum((hidden @ w2 + leaf(params, f"{second}.bias") - data["y"]) ** 2)

    return loss


def agrees_with_finite_differences(jax_loss: Any, numpy_loss: Any, params: Any) -> None:
    problem = gradlab.NativeProblem(name="adapted", jax=jax_loss, numpy=numpy_loss)
    report = gradlab.compare_gradients(problem, DATA, params, engines="jax,fd")
    assert report.ok, report
    assert report.verdicts["jax"].rho < 1e-8, report
    assert abs(report.losses["jax"] - report.losses["fd"]) < 1e-12


# Flax linen.


def linen_mlp() -> tuple[Any, Any]:
    from flax import linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.Dense(1, name="fc2")(jnp.tanh(nn.Dense(4, name="fc1")(x)))

    module = MLP()
    return module, module.init(jax.random.key(0), jnp.ones((1, 3)))


def test_a_linen_module_is_differentiated_as_its_numpy_twin() -> None:
    pytest.importorskip("flax")
    require_engine("jax")
    module, variables = linen_mlp()
    before = jax.tree_util.tree_map(np.array, variables)
    apply, params = flax_module(module, variables)
    assert {name: {k: v.shape for k, v in layer.items()} for name, layer in params.items()} == {
        "fc1": {"bias": (4,), "kernel": (3, 4)},
        "fc2": {"bias": (1,), "kernel": (4, 1)},
    }
    assert all(v.dtype == np.float64 for layer in params.values() for v in layer.values())
    np.testing.assert_array_equal(params["fc1"]["kernel"], variables["params"]["fc1"]["kernel"])

    def loss(p: Any, d: Any) -> Any:
        return jnp.sum((apply(p, d["x"]) - d["y"]) ** 2)

    agrees_with_finite_differences(loss, numpy_mlp("fc1", "fc2", transposed=False), params)
    # The output itself, by hand from the returned parameters (float32: x64 is off here).
    hand = np.tanh(X @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    hand = hand @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    np.testing.assert_allclose(apply(params, X), hand, rtol=1e-5, atol=1e-6)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, variables)  # left as found


def test_linen_parameters_are_copies_widened_from_bfloat16() -> None:
    pytest.importorskip("flax")
    from flax import linen as nn

    module = nn.Dense(2, param_dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
    _, params = flax_module(module, variables)
    assert params["kernel"].dtype == np.float64
    np.testing.assert_array_equal(
        params["kernel"], np.asarray(variables["params"]["kernel"]).astype(np.float64)
    )
    params["kernel"][...] = 7.0  # the copy, not the module's
    assert float(variables["params"]["kernel"][0, 0]) != 7.0


def test_linen_refuses_what_it_cannot_hold_fixed() -> None:
    pytest.importorskip("flax")
    from flax import linen as nn
    from flax import nnx

    class Normed(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.BatchNorm(use_running_average=True)(nn.Dense(2)(x))

    normed = Normed()
    variables = normed.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(gradlab.ArgumentError, match=r"'batch_stats'.*BatchNorm") as caught:
        flax_module(normed, variables)
    assert caught.value.argument == "module"
    # Without its statistics, it is refused when it runs (linen builds submodules lazily).
    apply, params = flax_module(normed, {"params": variables["params"]})
    with pytest.raises(gradlab.ArgumentError, match="state besides its parameters") as caught:
        apply(params, np.ones((2, 3)))
    assert caught.value.argument == "module"

    class Dropped(nn.Module):
        @nn.compact
        def __call__(self, x: Any, deterministic: bool = False) -> Any:
            return nn.Dropout(0.5, deterministic=deterministic)(nn.Dense(2)(x))

    dropped = Dropped()
    apply, params = flax_module(dropped, dropped.init(jax.random.key(0), jnp.ones((2, 3)), True))
    with pytest.raises(gradlab.ArgumentError, match="dropout left on") as caught:
        apply(params, np.ones((2, 3)))
    assert caught.value.argument == "module"
    assert apply(params, np.ones((2, 3)), deterministic=True).shape == (2, 2)
    with pytest.raises(gradlab.ArgumentError, match=r"\['rngs'\]"):
        apply(params, np.ones((2, 3)), rngs={"dropout": jax.random.key(0)})

    dense = nn.Dense(2)
    for variables, words in (
        ({"params": {"kernel": np.zeros((3, 2), np.int32)}}, "'kernel' is int32"),
        ({"params": {}}, "has no parameters"),
        ({}, "has no parameters"),
        (
            jax.eval_shape(lambda: dense.init(jax.random.key(0), jnp.ones((1, 3)))),
            "ShapeDtypeStruct",
        ),
    ):
        with pytest.raises(gradlab.ArgumentError, match=words) as caught:
            flax_module(dense, variables)
        assert caught.value.argument == "module"
    with pytest.raises(gradlab.ArgumentTypeError, match="'params'") as caught:
        flax_module(dense, {"kernel": np.zeros((3, 2))})
    assert caught.value.argument == "variables"
    with pytest.raises(gradlab.ArgumentTypeError, match="use nnx_module") as caught:
        flax_module(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), {"params": {}})
    assert caught.value.argument == "module"
    with pytest.raises(gradlab.ArgumentTypeError, match=r"flax\.linen\.Module"):
        flax_module(lambda x: x, {"params": {}})


# Flax NNX.


def host(value: Any) -> np.ndarray:
    """A NumPy copy of a jax array, a random key's bits included (the dropout's)."""
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    return np.array(value)


def nnx_mlp() -> Any:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: Any) -> None:
            self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)])
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.layers[1](self.dropout(jnp.tanh(self.layers[0](x))))

    return MLP(nnx.Rngs(0))


def test_an_nnx_module_is_differentiated_as_its_numpy_twin_and_left_as_found() -> None:
    pytest.importorskip("flax")
    require_engine("jax")
    from flax import nnx

    model = nnx_mlp()
    with pytest.raises(gradlab.ArgumentError, match=r"dropout on at 'dropout'.*eval\(\)"):
        nnx_module(model)
    model.eval()
    before = jax.tree_util.tree_map(host, nnx.state(model))
    apply, params = nnx_module(model)
    # An nnx.List is a list: the parameters are named layers[0].kernel, ...
    assert isinstance(params["layers"], list)
    assert {k: v.shape for k, v in params["layers"][1].items()} == {"bias": (1,), "kernel": (4, 1)}

    def loss(p: Any, d: Any) -> Any:
        return jnp.sum((apply(p, d["x"]) - d["y"]) ** 2)

    agrees_with_finite_differences(
        loss, numpy_mlp("layers[0]", "layers[1]", transposed=False), params
    )
    # A dict with integer keys has the same paths as the list: apply takes either.
    keyed = {"layers": dict(enumerate(params["layers"]))}
    np.testing.assert_array_equal(apply(keyed, X), apply(params, X))
    after = jax.tree_util.tree_map(host, nnx.state(model))
    for (path, old), (_, new) in zip(
        jax.tree_util.tree_flatten_with_path(before)[0],
        jax.tree_util.tree_flatten_with_path(after)[0],
        strict=True,
    ):
        np.testing.assert_array_equal(old, new, err_msg=str(path))


def test_nnx_refuses_what_it_cannot_hold_fixed() -> None:
    pytest.importorskip("flax")
    from flax import linen as nn
    from flax import nnx

    rngs = nnx.Rngs(0)
    cases: list[tuple[Any, str]] = [
        (nnx.BatchNorm(3, rngs=rngs), r"'mean' \(BatchStat\)"),
        (nnx.MultiHeadAttention(2, 4, dropout_rate=0.1, rngs=rngs), "dropout on at 'the module'"),
    ]

    class Counted(nnx.Module):
        def __init__(self) -> None:
            self.steps = nnx.Param(jnp.zeros(2, jnp.int32))

    class Cached(nnx.Module):
        def __init__(self) -> None:
            self.w = nnx.Param(jnp.ones(2))
            self.cache = nnx.Cache(jnp.zeros(2))

    class Empty(nnx.Module):
        def __call__(self, x: Any) -> Any:
            return x

    cases += [
        (Counted(), "'steps' is int32"),
        (Cached(), r"'cache' \(Cache\)"),
        (Empty(), "has no parameters"),
    ]
    for module, words in cases:
        with pytest.raises(gradlab.ArgumentError, match=words) as caught:
            nnx_module(module)
        assert caught.value.argument == "module"
    with pytest.raises(gradlab.ArgumentTypeError, match=r"flax_module\(module, variables\)"):
        nnx_module(nn.Dense(2))
    with pytest.raises(gradlab.ArgumentTypeError, match=r"flax\.nnx\.Module"):
        nnx_module(object())


# Equinox.


def test_an_equinox_module_is_differentiated_as_its_numpy_twin() -> None:
    eqx = pytest.importorskip("equinox")
    require_engine("jax")
    module = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 4, key=jax.random.key(0)),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Linear(4, 1, key=jax.random.key(1)),
        ]
    )
    before = [np.array(leaf) for leaf in jax.tree_util.tree_leaves(module)]
    apply, params = equinox_module(module)
    # The Lambda holds no array: the second Linear keeps its index, layers[2].
    assert isinstance(params["layers"], dict)
    assert sorted(params["layers"]) == [0, 2]
    assert params["layers"][0]["weight"].shape == (4, 3)  # (out, in), as Equinox holds it

    def loss(p: Any, d: Any) -> Any:
        outputs = jax.vmap(lambda row: apply(p, row))(d["x"])  # Equinox runs one example
        return jnp.sum((outputs - d["y"]) ** 2)

    agrees_with_finite_differences(
        loss, numpy_mlp("layers[0]", "layers[2]", transposed=True), params
    )
    first, second = params["layers"][0], params["layers"][2]
    hand = np.tanh(X[0] @ first["weight"].T + first["bias"]) @ second["weight"].T
    np.testing.assert_allclose(apply(params, X[0]), hand + second["bias"], rtol=1e-5, atol=1e-6)
    for old, new in zip(before, jax.tree_util.tree_leaves(module), strict=True):
        np.testing.assert_array_equal(old, new)


def test_equinox_refuses_what_it_cannot_hold_fixed() -> None:
    pytest.importorskip("equinox")
    import equinox as eqx

    key = jax.random.key(0)

    class Counted(eqx.Module):
        linear: Any
        steps: Any

    class Phased(eqx.Module):
        z: Any

    with_dropout = eqx.nn.Sequential([eqx.nn.Linear(2, 2, key=key), eqx.nn.Dropout(0.5)])
    cases = [
        (eqx.nn.BatchNorm(3, "batch", mode="batch"), "has state at 'the module'"),
        (with_dropout, r"dropout on at 'layers\[1\]'.*inference_mode"),
        (Counted(eqx.nn.Linear(2, 2, key=key), jnp.zeros(2, jnp.int32)), "int32 array 'steps'"),
        (Phased(jnp.ones(2, jnp.complex64)), "complex64 array 'z'"),
        (eqx.nn.Lambda(jnp.tanh), "has no parameters"),
    ]
    for module, words in cases:
        with pytest.raises(gradlab.ArgumentError, match=words) as caught:
            equinox_module(module)
        assert caught.value.argument == "module"
    # Dropout off, or of rate 0 (eqx.nn.MultiheadAttention's own default), is fine.
    equinox_module(eqx.nn.inference_mode(with_dropout))
    equinox_module(eqx.nn.MultiheadAttention(2, 4, key=key))
    stateful = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
    with pytest.raises(gradlab.ArgumentTypeError, match="make_with_state") as caught:
        equinox_module(stateful)
    assert caught.value.argument == "module"
    with pytest.raises(gradlab.ArgumentTypeError, match=r"equinox\.Module"):
        equinox_module(lambda x: x)


# apply's parameter checks, for every adapter.


def adapted(kind: str) -> tuple[Any, Any, Any]:
    """``(apply, params, input)`` of a small model in each framework."""
    if kind == "linen":
        pytest.importorskip("flax")
        return (*flax_module(*linen_mlp()), X)
    if kind == "nnx":
        pytest.importorskip("flax")
        model = nnx_mlp()
        model.eval()
        return (*nnx_module(model), X)
    eqx = pytest.importorskip("equinox")
    return (*equinox_module(eqx.nn.MLP(3, 1, 4, 1, key=jax.random.key(0))), X[0])


@pytest.mark.parametrize("kind", ["linen", "nnx", "equinox"])
def test_apply_refuses_parameters_that_are_not_the_models(kind: str) -> None:
    apply, params, x = adapted(kind)
    flat, structure = gradlab._tree.flatten(params)
    name = next(name for name, value in flat.items() if value.ndim == 2)

    def changed(**edits: Any) -> Any:
        return structure.unflatten({**flat, **edits})

    wrong: list[tuple[Any, type[Exception], str]] = [
        ([params], gradlab.ArgumentTypeError, "not a dict"),
        (
            {key: value for key, value in params.items() if key != next(iter(params))},
            gradlab.ArgumentError,
            "lack",
        ),
        ({**params, "extra": np.ones(2)}, gradlab.ArgumentError, "'extra', which the module"),
        (changed(**{name: flat[name].T}), gradlab.ArgumentError, "its transpose"),
        (changed(**{name: np.ones((7, 7))}), gradlab.ArgumentError, "of shape (7, 7)"),
        (changed(**{name: flat[name].astype(int)}), gradlab.ArgumentTypeError, "int64"),
    ]
    for given, error, words in wrong:
        with pytest.raises(error) as caught:
            apply(given, x)
        assert caught.value.argument == "init"  # type: ignore[attr-defined]
        assert words in str(caught.value)
    assert np.shape(apply(params, x))[-1] == 1


def test_a_layout_giving_other_parameters_is_refused_through_an_engine() -> None:
    pytest.importorskip("flax")
    require_engine("jax")
    apply, params = flax_module(*linen_mlp())
    problem = gradlab.NativeProblem(
        name="misnamed",
        jax=lambda p, d: jnp.sum(apply(p, d["x"])),
        layouts={"jax": lambda p, xp: {"fc1": p["fc1"], "fc3": p["fc2"]}},
    )
    with pytest.raises(gradlab.ArgumentError, match=r"'fc3\.bias', 'fc3\.kernel', which the"):
        gradlab.value_and_grad(problem, DATA, params, engine="jax")


# Taps: a linen module is tapped at every submodule, as a torch module is.


def test_linen_modules_are_tapped_and_located_against_torch() -> None:
    pytest.importorskip("flax")
    require_engine("torch")
    require_engine("jax")
    import torch
    from flax import linen as nn

    class TorchNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.norm, self.fc2 = (
                torch.nn.Linear(3, 4),
                torch.nn.LayerNorm(4),
                torch.nn.Linear(4, 1),
            )

        def forward(self, x: Any) -> Any:
            return self.fc2(torch.tanh(self.norm(self.fc1(x))))

    class FlaxNet(nn.Module):
        epsilon: float = 1e-5

        @nn.compact
        def __call__(self, x: Any) -> Any:
            h = nn.LayerNorm(epsilon=self.epsilon, name="norm")(nn.Dense(4, name="fc1")(x))
            return nn.Dense(1, name="fc2")(jnp.tanh(h))

    torch_apply, params = gradlab.torch_module(TorchNet().double())

    def torch_loss(p: Any, d: Any) -> Any:
        return torch.sum((torch_apply(p, d["x"]) - d["y"]) ** 2)

    def to_flax(p: Any, xp: Any) -> Any:
        dense = {
            name: {
                "kernel": xp.permute_dims(p[f"{name}.weight"], (1, 0)),
                "bias": p[f"{name}.bias"],
            }
            for name in ("fc1", "fc2")
        }
        return {**dense, "norm": {"scale": p["norm.weight"], "bias": p["norm.bias"]}}

    def ported(epsilon: float) -> gradlab.NativeProblem:
        module = FlaxNet(epsilon)
        apply, _ = flax_module(module, module.init(jax.random.key(0), jnp.ones((1, 3))))
        return gradlab.NativeProblem(
            name="net",
            torch=torch_loss,
            jax=lambda p, d: jnp.sum((apply(p, d["x"]) - d["y"]) ** 2),
            layouts={"jax": to_flax},
        )

    report = gradlab.locate(ported(1e-5), DATA, params, engines="torch,jax")
    assert [point.name for point in report.points] == ["fc1", "norm", "fc2"]
    assert report.ok, report
    # Flax's default epsilon, 1e-6: the first point where they part is the layer norm.
    wrong = gradlab.locate(ported(1e-6), DATA, params, engines="torch,jax")
    assert wrong.first is not None
    assert (wrong.first.name, wrong.first.direction) == ("norm", "forward")


# Without the frameworks.


def test_the_adapters_import_no_framework_until_called() -> None:
    code = (
        "import sys, gradlab.problems._models\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) & {"flax", "equinox", "jax", "torch", "keras"} == set()


@pytest.mark.parametrize(
    ("adapter", "module", "extra"),
    [
        (lambda: flax_module(object(), {}), "flax.linen", "flax"),
        (lambda: nnx_module(object()), "flax.nnx", "flax"),
        (lambda: equinox_module(object()), "equinox", "equinox"),
    ],
)
def test_a_missing_framework_names_the_extra(
    adapter: Callable[[], Any], module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import of it now fails
    with pytest.raises(gradlab.MissingDependency, match=rf"pip install 'gradlab\[{extra}\]'"):
        adapter()


def test_torch_modules_take_keywords_and_parameters_nested_by_their_names() -> None:
    """``apply(params, *inputs, **kwargs)`` passes keywords to ``forward`` (attention's
    ``need_weights``), and takes ``{"0": {"weight": ...}}`` as ``{"0.weight": ...}``
    (what ``NativeProblem(params={"0.weight": ...})`` declares)."""
    torch = pytest.importorskip("torch")
    attention = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=torch.float64)
    apply, params = gradlab.torch_module(attention)
    tensors = {name: torch.tensor(value) for name, value in params.items()}
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    out, weights = apply(tensors, x, x, x, need_weights=False)
    assert weights is None
    torch.testing.assert_close(out, attention(x, x, x, need_weights=False)[0])
    net = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    apply, params = gradlab.torch_module(net)
    nested = {"0": {name.split(".")[1]: torch.tensor(v) for name, v in params.items()}}
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(apply(nested, x), net(x))
