"""Nested parameters (pytrees) in every public entry point.

One small model whose parameters nest four deep, mixing a dict, a list, a tuple and a
NamedTuple. The oracles are independent of gradlab's tree code: a hand-derived gradient
(backpropagation written out below), central differences, and the *same* model written
with flat parameter names, which never goes through a nest.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import pytest
from _helpers import require_engine

import gradlab


class Scale(NamedTuple):
    scale: Any


def nested(w: Any, b: Any, scale: Any, v: Any) -> dict[str, Any]:
    """params["enc"][1][1].scale: dict → list → tuple → NamedTuple (depth 4)."""
    return {"head": {"v": v}, "enc": [{"w": w}, (b, Scale(scale))]}


def unpack(p: Any) -> tuple[Any, Any, Any, Any]:
    return p["enc"][0]["w"], p["enc"][1][0], p["enc"][1][1].scale, p["head"]["v"]


def forward(w: Any, b: Any, scale: Any, v: Any, x: Any, tanh: Any) -> tuple[Any, Any]:
    h = tanh(x @ w + b)
    return h, (h * scale) @ v


def loss(p: Any, d: Any, xp: Any) -> Any:
    _, f = forward(*unpack(p), d["x"], xp.tanh)
    return xp.sum((f - d["y"]) ** 2) / 2


def hand(p: Any, d: Any) -> tuple[Any, Any]:
    """Backpropagation of ½Σ((tanh(xw + b)·s)v − y)², in the caller's nest."""
    w, b, scale, v = unpack(p)
    h, f = forward(w, b, scale, v, d["x"], np.tanh)
    r = f - d["y"]
    ds = r[:, None] * v
    dz = ds * scale * (1 - h**2)
    grads = nested(d["x"].T @ dz, dz.sum(axis=0), (ds * h).sum(axis=0), (h * scale).T @ r)
    return np.sum(r**2) / 2, grads


def flat_loss(p: Any, d: Any, xp: Any) -> Any:
    """The same model with flat names: never nested, so an oracle for the nest handling."""
    _, f = forward(p["w"], p["b"], p["scale"], p["v"], d["x"], xp.tanh)
    return xp.sum((f - d["y"]) ** 2) / 2


PROBLEM = gradlab.Problem(loss, hand, name="nested")
FLAT = gradlab.Problem(flat_loss, name="flat")
RNG = np.random.default_rng(7)
DATA = {"x": RNG.standard_normal((30, 3)), "y": RNG.standard_normal(30)}
INIT = nested(
    RNG.standard_normal((3, 2)), RNG.standard_normal(2), 1 + RNG.random(2), RNG.standard_normal(2)
)
FLAT_INIT = dict(zip(("w", "b", "scale", "v"), unpack(INIT), strict=True))
PATHS = ["head.v", "enc[0].w", "enc[1][0]", "enc[1][1].scale"]


def as_flat(tree: Any) -> dict[str, np.ndarray]:
    """The nest's four leaves under the flat model's names (by hand, not by gradlab)."""
    return dict(zip(("w", "b", "scale", "v"), unpack(tree), strict=True))


def same_structure(a: Any, b: Any) -> None:
    """Containers of the same types and keys (in order), leaves of the same shapes."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            same_structure(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for left, right in zip(a, b, strict=True):
            same_structure(left, right)
    else:
        assert np.shape(a) == np.shape(b)


def test_value_and_grad_keeps_the_nest_and_matches_the_hand_gradient(engine: str) -> None:
    loss_value, grads = gradlab.value_and_grad(PROBLEM, DATA, INIT, engine=engine)
    expected_loss, expected = hand(INIT, DATA)
    same_structure(grads, INIT)
    assert isinstance(grads["enc"][1][1], Scale)
    limit = 1e-6 if engine == "fd" else 1e-12
    assert gradlab.max_rho(as_flat(grads), as_flat(expected)) < limit
    assert float(loss_value) == pytest.approx(float(expected_loss), rel=1e-12)


def test_compare_gradients_names_elements_by_path() -> None:
    report = gradlab.compare_gradients(PROBLEM, DATA, INIT, engines="numpy,fd")
    assert report.ok
    assert list(report.params) == PATHS  # the caller's order, not sorted
    assert set(report.values["fd"]) == set(PATHS)
    worst = report.verdicts["fd"].worst
    assert worst is not None
    assert worst.split("[")[0].split(".")[0] in {"head", "enc"}
    assert "enc[1][1].scale" in str(report) or worst in str(report)
    assert report.to_dict()["params"]["enc[0].w"] == INIT["enc"][0]["w"].tolist()


def test_compare_gradients_agrees_with_the_flat_model() -> None:
    nested_report = gradlab.compare_gradients(PROBLEM, DATA, INIT, engines="numpy,fd")
    flat_report = gradlab.compare_gradients(FLAT, DATA, FLAT_INIT, engines="fd")
    names = dict(zip(PATHS, ("v", "w", "b", "scale"), strict=True))
    for path, name in names.items():
        np.testing.assert_allclose(
            nested_report.values["fd"][path], flat_report.values["fd"][name], rtol=1e-9
        )


@pytest.mark.parametrize("engine", ["torch", "jax", "fd"])
def test_hvp_with_a_nested_tangent(engine: str) -> None:
    require_engine(engine)
    tangent = copy.deepcopy(INIT)
    product = gradlab.hvp(PROBLEM, DATA, INIT, tangent, engine=engine)
    same_structure(product, INIT)
    flat = gradlab.hvp(FLAT, DATA, FLAT_INIT, as_flat(tangent), engine="fd")
    limit = 1e-6 if engine == "fd" else 1e-7
    assert gradlab.max_rho(as_flat(product), flat) < limit


@pytest.mark.parametrize(
    ("tangent", "where", "how"),
    [
        (
            {"enc": [{"w": np.zeros((3, 2))}, [np.zeros(2), Scale(np.zeros(2))]], "head": {}},
            "tangent['head']",
            "lacks key(s) ['v']",
        ),
        (
            {"head": {"v": 0}, "enc": [{"w": 0}, [np.zeros(2), Scale(np.zeros(2))]]},
            "tangent['enc'][1]",
            "is a list where a tuple is expected",
        ),
        (
            {"head": {"v": 0}, "enc": [{"w": 0}, (np.zeros(2), (np.zeros(2),))]},
            "tangent['enc'][1][1]",
            "is a tuple where a Scale is expected",
        ),
        (
            {"head": {"v": 0}, "enc": [{"w": 0}]},
            "tangent['enc']",
            "has 1 items where 2 are expected",
        ),
    ],
    ids=["missing-key", "list-for-tuple", "tuple-for-namedtuple", "short-list"],
)
def test_hvp_names_the_container_of_the_tangent_that_differs(
    tangent: Any, where: str, how: str
) -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.hvp(PROBLEM, DATA, INIT, tangent, engine="fd")
    assert caught.value.argument == where
    assert how in str(caught.value)


def test_a_tangent_matches_by_key_whatever_the_order_of_its_dicts() -> None:
    """``jax.tree_util.tree_map`` sorts dict keys: its tangent is still a tangent of INIT."""
    shuffled = {"enc": [{"w": INIT["enc"][0]["w"]}, INIT["enc"][1]], "head": INIT["head"]}
    assert list(shuffled) != list(INIT)  # the order differs, the keys do not
    product = gradlab.hvp(PROBLEM, DATA, INIT, shuffled, engine="fd")
    same_structure(product, INIT)  # the result has the parameters' order
    flat = gradlab.hvp(FLAT, DATA, FLAT_INIT, as_flat(INIT), engine="fd")
    assert gradlab.max_rho(as_flat(product), flat) < 1e-6


def test_a_tangent_made_by_jax_tree_map_is_accepted() -> None:
    jax = pytest.importorskip("jax")
    tangent = jax.tree_util.tree_map(np.ones_like, INIT)
    report = gradlab.compare_hessians(PROBLEM, DATA, INIT, tangent=tangent, engines="fd")
    assert report.ok


def test_hessian_blocks_nest_twice_and_match_the_flat_model() -> None:
    H = gradlab.hessian(PROBLEM, DATA, INIT, engine="fd")
    assert list(H) == list(INIT)
    assert isinstance(H["enc"][1][1], Scale)
    inner = H["enc"][0]["w"]
    assert list(inner) == list(INIT)
    assert isinstance(inner["enc"][1][1], Scale)
    assert inner["head"]["v"].shape == (3, 2, 2)  # shape(a) + shape(b)
    flat = gradlab.hessian(FLAT, DATA, FLAT_INIT, engine="fd")
    np.testing.assert_allclose(H["enc"][0]["w"]["head"]["v"], flat["w"]["v"], atol=1e-6)
    np.testing.assert_allclose(H["enc"][1][1].scale["enc"][1][0], flat["scale"]["b"], atol=1e-6)


def test_compare_hessians_with_a_nested_tangent() -> None:
    report = gradlab.compare_hessians(PROBLEM, DATA, INIT, tangent=INIT, engines="fd")
    assert report.ok
    assert set(report.values["fd"]) == set(PATHS)


def test_fit_returns_the_nest_and_follows_the_flat_model(autodiff_engine: str) -> None:
    optimizer = gradlab.adam(0.02)
    before = copy.deepcopy(INIT)
    result = gradlab.fit(
        PROBLEM,
        DATA,
        engine=autodiff_engine,
        optimizer=optimizer,
        steps=60,
        init=INIT,
        trajectory=True,
    )
    flat = gradlab.fit(
        FLAT,
        DATA,
        engine=autodiff_engine,
        optimizer=optimizer,
        steps=60,
        init=FLAT_INIT,
        trajectory=True,
    )
    same_structure(result.params, INIT)
    assert gradlab.max_rho(as_flat(result.params), flat.params) < 1e-12
    assert result.trajectory["enc"][0]["w"].shape == (61, 3, 2)
    assert isinstance(result.trajectory["enc"][1][1], Scale)
    np.testing.assert_allclose(result.losses, flat.losses, rtol=1e-12)
    # Adam's moments have the parameters' structure.
    same_structure(result.state.mu, INIT)
    same_structure(result.state.nu, INIT)
    # The caller's nest is untouched.
    assert gradlab.max_rho(as_flat(before), as_flat(INIT)) == 0


def test_resume_from_a_nested_fit_equals_one_fit(autodiff_engine: str) -> None:
    kwargs: dict[str, Any] = {"engine": autodiff_engine, "optimizer": gradlab.adam(0.02)}
    whole = gradlab.fit(PROBLEM, DATA, steps=40, init=INIT, **kwargs)
    first = gradlab.fit(PROBLEM, DATA, steps=15, init=INIT, **kwargs)
    rest = gradlab.fit(PROBLEM, DATA, steps=25, resume=first, **kwargs)
    assert rest.step == 40
    assert gradlab.max_rho(as_flat(rest.params), as_flat(whole.params)) < 1e-13


def test_callback_receives_the_nest() -> None:
    seen: list[Any] = []
    gradlab.fit(
        PROBLEM,
        DATA,
        engine="numpy",
        optimizer=gradlab.sgd(1e-3),
        steps=4,
        init=INIT,
        callback=lambda step, loss, params: seen.append(params),
        every=2,
    )
    assert len(seen) == 2
    same_structure(seen[0], INIT)


def test_compare_fits_on_a_nest() -> None:
    comparison = gradlab.compare_fits(
        PROBLEM, DATA, optimizer=gradlab.sgd(1e-3), steps=30, init=INIT, engines="numpy,fd"
    )
    assert comparison.ok
    assert list(comparison.init) == PATHS
    same_structure(comparison.results["fd"].params, INIT)
    pytest.importorskip("pandas")
    frame = comparison.to_frame()
    final = comparison.results["fd"].params["enc"][1][1].scale
    assert frame.loc["fd", "enc[1][1].scale[1]"] == final[1]
    assert frame.loc["fd", "enc[0].w[2, 0]"] == comparison.results["fd"].params["enc"][0]["w"][2, 0]


def test_gradlab_optimizers_work_on_nests_as_on_the_flat_dict() -> None:
    for optimizer in (
        gradlab.adam(0.1),
        gradlab.momentum(0.1, nesterov=True),
        gradlab.rmsprop(0.1),
    ):
        state, flat_state = optimizer.init(INIT), optimizer.init(FLAT_INIT)
        grads, flat_grads = hand(INIT, DATA)[1], as_flat(hand(INIT, DATA)[1])
        updates, state = optimizer.update(grads, state, INIT)
        flat_updates, _ = optimizer.update(flat_grads, flat_state, FLAT_INIT)
        same_structure(updates, INIT)
        assert gradlab.max_rho(as_flat(updates), flat_updates) == 0
        moved = gradlab.apply_updates(INIT, updates)
        same_structure(moved, INIT)


class NestedModel(gradlab.AbstractProblem):
    """The nested model as a class with make_data and initial_params, for the benchmark."""

    name = "nested_model"

    def loss(self, params: Any, data: Any, xp: Any) -> Any:
        return loss(params, data, xp)

    def make_data(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {"x": rng.standard_normal((n, 3)), "y": rng.standard_normal(n)}

    def initial_params(self, data: Any, *, seed: int = 0) -> Any:
        return copy.deepcopy(INIT)


def test_benchmark_on_a_nested_user_problem() -> None:
    result = gradlab.benchmark(NestedModel(), [20], engines="fd", min_time=0.001, fit_steps=5)
    assert [case.status for case in result.cases] == ["measured"]


def test_benchmark_refuses_a_problem_it_cannot_start_visibly() -> None:
    problem = gradlab.Problem(loss, name="no_data")
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.benchmark(problem, [10], engines="fd")
    assert caught.value.argument == "problems"
    assert "make_data" in str(caught.value)


def test_benchmark_notes_are_shown_in_full() -> None:
    result = gradlab.benchmark(NestedModel(), [20], engines="numpy,fd", min_time=0.001, fit_steps=5)
    text = str(result)
    assert [case.status for case in result.cases] == ["skipped", "measured"]
    assert "1 of 2 cases measured" in text
    assert "has no hand-derived gradient, so the 'numpy' engine cannot run it; give one" in text


def test_errors_name_the_leaf_as_python_indexes_it() -> None:
    bad = copy.deepcopy(INIT)
    bad["enc"][0]["w"] = "three"
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.value_and_grad(PROBLEM, DATA, bad, engine="fd")
    assert caught.value.argument == "params['enc'][0]['w']"


def test_probe_names_a_missing_nested_parameter() -> None:
    missing = copy.deepcopy(INIT)
    del missing["enc"][0]["w"]
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.fit(PROBLEM, DATA, engine="fd", optimizer=gradlab.sgd(0.1), steps=1, init=missing)
    assert caught.value.argument == "init['enc'][0]"
    assert "'w'" in str(caught.value)


def test_probe_names_an_unused_nested_parameter() -> None:
    extra = copy.deepcopy(INIT)
    extra["head"]["unused"] = np.zeros(2)
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.value_and_grad(PROBLEM, DATA, extra, engine="fd")
    assert caught.value.argument == "params"
    assert "'head.unused'" in str(caught.value)


def test_a_list_of_numbers_is_one_array_and_a_list_of_arrays_a_container() -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p["w"] ** 2) + xp.sum(p["pair"][1] ** 2))
    params = {"w": [1.0, 2.0], "pair": [np.zeros(2), np.array([3.0])]}
    _, grads = gradlab.value_and_grad(problem, {}, params, engine="fd")
    np.testing.assert_allclose(grads["w"], [2.0, 4.0], rtol=1e-8)
    assert isinstance(grads["pair"], list)
    assert grads["pair"][1].shape == (1,)


def test_nested_data_reaches_the_loss_in_its_structure(engine: str) -> None:
    def split(p: Any, d: Any, xp: Any) -> Any:
        return xp.sum((d["inputs"][0] * p["a"] - d["inputs"][1]["target"]) ** 2)

    problem = gradlab.Problem(split, lambda p, d: hand_split(p, d), name="split")
    data = {"inputs": (np.arange(4.0), {"target": np.ones(4)})}
    _, grads = gradlab.value_and_grad(problem, data, {"a": 0.5}, engine=engine)
    expected = 2 * np.sum((0.5 * np.arange(4.0) - 1) * np.arange(4.0))
    assert float(grads["a"]) == pytest.approx(expected, rel=1e-6)


def hand_split(p: Any, d: Any) -> tuple[Any, Any]:
    x, y = d["inputs"][0], d["inputs"][1]["target"]
    r = p["a"] * x - y
    return np.sum(r**2), {"a": np.sum(2 * r * x)}


def test_a_top_level_tuple_of_arrays_is_a_nest_the_loss_reads_whole() -> None:
    # No dict above the leaves: the NumPy probe cannot see which the loss indexes, and
    # counts them read with the whole (it named them unused before).
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p[0] ** 2) * p[1], name="pair")
    _, grads = gradlab.value_and_grad(problem, {}, (np.array([1.0, 2.0]), 3.0), engine="fd")
    assert isinstance(grads, tuple)
    np.testing.assert_allclose(grads[0], [6.0, 12.0], rtol=1e-8)
    np.testing.assert_allclose(grads[1], 5.0, rtol=1e-8)


@pytest.mark.parametrize("root", [np.ones(3), [1.0, 2.0], 2.5])
def test_one_unnamed_array_is_refused_with_a_hint(root: Any) -> None:
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p**2))
    with pytest.raises(gradlab.ArgumentTypeError, match=r"give it a name: \{'theta'") as caught:
        gradlab.value_and_grad(problem, {}, root, engine="fd")
    assert caught.value.argument == "params"


def test_the_callers_mapping_type_comes_back() -> None:
    # A torch state_dict is an OrderedDict; results keep that type (and the order).
    init = OrderedDict(b=np.array(0.5), w=np.array([1.0, -1.0]))
    problem = gradlab.Problem(
        lambda p, d, xp: xp.sum((p["w"] - 2) ** 2) + p["b"] ** 2, name="ordered"
    )
    _, grads = gradlab.value_and_grad(problem, {}, init, engine="fd")
    assert type(grads) is OrderedDict
    assert list(grads) == ["b", "w"]
    result = gradlab.fit(problem, {}, engine="fd", optimizer=gradlab.adam(0.1), steps=3, init=init)
    assert type(result.params) is OrderedDict
    assert type(result.state.mu) is OrderedDict


def test_max_rho_reads_nests_and_names_what_differs() -> None:
    moved = copy.deepcopy(INIT)
    moved["enc"][1][1].scale[0] += 1e-3
    a, b = INIT["enc"][1][1].scale[0], moved["enc"][1][1].scale[0]
    expected = abs(a - b) / max(1.0, abs(a) + abs(b))  # rho by hand, at the one moved element
    assert gradlab.max_rho(INIT, moved) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(gradlab.ArgumentError, match=r"has the leaves \['x'\], where a has"):
        gradlab.max_rho(INIT, {"x": 1.0})


def test_max_rho_of_two_arrays() -> None:
    a, b = np.array([1.0, 2.0, -3.0]), np.array([1.0, 2.5, -3.0])
    assert gradlab.max_rho(a, b) == pytest.approx(0.5 / 4.5, rel=1e-12)  # rho by hand at [1]
    assert gradlab.max_rho(2.0, 2.0) == 0.0
    with pytest.raises(gradlab.ArgumentError, match=r"shape \(2,\), expected \(3,\)"):
        gradlab.max_rho(a, b[:2])
    with pytest.raises(gradlab.ArgumentTypeError, match="real numbers") as caught:
        gradlab.max_rho(a, b + 1j)  # complex: refused, not cast with a warning
    assert caught.value.argument == "b"


def _self_dict() -> Any:
    tree: dict[str, Any] = {"w": np.ones(2)}
    tree["again"] = tree
    return tree


def _self_list() -> Any:
    inner: list[Any] = [np.ones(2)]
    inner.append(inner)
    return inner


def _deep(levels: int) -> Any:
    tree: Any = np.ones(2)
    for _ in range(levels):
        tree = {"in": tree} if levels % 2 else [tree, np.ones(2)]
    return tree


def _shared(levels: int) -> Any:
    tree: Any = np.ones(1)
    for _ in range(levels):
        tree = [tree, tree]  # 2**levels leaves, in a few bytes
    return tree


UNWALKABLE = {
    "holds-itself-dict": (_self_dict, "contains itself"),
    "holds-itself-list": (_self_list, "contains itself"),
    "3000-deep-list": (lambda: _deep(3000), "deeper than"),
    "3001-deep-dict": (lambda: _deep(3001), "deeper than"),
    "2**60-leaves": (lambda: _shared(60), "more than"),
}
READ_ALL = gradlab.Problem(lambda p, d, xp: xp.sum(p["v"] ** 2) + 0.0, name="reads-v")


def _entry(name: str) -> Any:
    """Each public entry point that takes user nests, as ``(params, data) -> None``."""
    return {
        "value_and_grad": lambda p, d: gradlab.value_and_grad(READ_ALL, d, p, engine="fd"),
        "fit": lambda p, d: gradlab.fit(
            READ_ALL, d, init=p, engine="fd", optimizer=gradlab.sgd(0.1), steps=1
        ),
        "compare_gradients": lambda p, d: gradlab.compare_gradients(
            READ_ALL, d, p, engines=["fd", "fd"]
        ),
        "hvp": lambda p, d: gradlab.hvp(READ_ALL, d, p, p, engine="fd"),
        "max_rho": lambda p, d: gradlab.max_rho(p, p),
    }[name]


@pytest.mark.parametrize("entry", ["value_and_grad", "fit", "compare_gradients", "hvp", "max_rho"])
@pytest.mark.parametrize("where", ["params", "data"])
@pytest.mark.parametrize("case", list(UNWALKABLE))
def test_a_nest_that_cannot_be_walked_is_refused_naming_where(
    entry: str, where: str, case: str
) -> None:
    """A nest holding itself, 3000 levels deep, or sharing a subtree into 2**60 leaves: a
    gradlab error naming the argument and where, never a RecursionError or a hang."""
    if entry == "max_rho" and where == "data":
        pytest.skip("max_rho takes no data")
    make, message = UNWALKABLE[case]
    bad = make()
    params, data = {"v": np.ones(2)}, {"w": bad}
    if where == "params":
        params, data = {**params, "w": bad}, {}
    with pytest.raises(gradlab.ArgumentError, match=message) as caught:
        _entry(entry)(params, data)
    argument = caught.value.argument or ""
    named = {"params": ("init", "params", "a"), "data": ("data",)}[where]
    assert argument.startswith(tuple(f"{name}['w']" for name in named)), argument


def test_a_nest_as_deep_as_real_models_go_is_walked() -> None:
    """The depth limit is far above real models: 60 levels of data reach the loss intact."""
    problem = gradlab.Problem(
        lambda p, d, xp: xp.sum(p["v"] ** 2) * xp.sum(_innermost(d["w"])), name="deep"
    )
    data = {"w": _deep(60)}
    value, grads = gradlab.value_and_grad(problem, data, {"v": np.ones(2)}, engine="fd")
    assert float(value) == pytest.approx(2.0 * 2.0)  # Σv² · Σ(innermost ones(2))
    np.testing.assert_allclose(grads["v"], 2.0 * 2.0 * np.ones(2), rtol=1e-9)


def _innermost(tree: Any) -> Any:
    while not hasattr(tree, "shape"):
        tree = tree["in"] if isinstance(tree, dict) else tree[0]
    return tree


@pytest.mark.parametrize(
    "tree",
    [
        {"w": np.zeros(3), "b": 0.5, "n": 2},
        {"not an identifier": np.ones(2), "x2": np.float32(1.0)},
        {},
        {"w": [1.0, 2.0]},  # a list of numbers: a leaf, by the general walk
        {"w": True, "b": np.float64(1.0)},  # a bool: the general walk
        OrderedDict(w=np.zeros(1)),  # another mapping type: the general walk
    ],
    ids=["arrays-and-numbers", "odd-names", "empty", "list-leaf", "bool", "ordered"],
)
def test_the_flat_dict_fast_path_builds_the_structure_the_walk_builds(tree: Any) -> None:
    """``structure`` takes a shortcut for flat dicts of arrays and numbers; it must give what
    walking the nest gives: the same node, keys, paths and flat dict."""
    from gradlab._tree import _node, _walk, path, structure

    keys = tuple(k for k, _ in _walk(tree))
    walked = gradlab._tree.Structure(_node(tree), keys, tuple(path(k) for k in keys))
    fast = structure(tree)
    assert fast == walked
    assert fast.paths == walked.paths
    assert fast.trivial == walked.trivial
    assert list(fast.flatten(tree)) == list(walked.flatten(tree))
