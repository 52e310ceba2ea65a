"""Declared parameter shapes: by path or nested as ``init`` is, they name the same leaves.

A problem declares its parameters' shapes by path (``"embed.kernel"``: what reports call
``init["embed"]["kernel"]``), or as a nest of the same structure; every entry point, the
default starting point (``initial_params``), the benchmark and the command line read the
declaration the same way.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import pytest

import gradlab

KERNEL = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]])
X = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0], [2.0, 0.5, -0.5], [1.0, 1.0, 1.0]])


def embed_loss(params: Any, data: Any, xp: Any) -> Any:
    """½‖x K‖², K = params["embed"]["kernel"]: its gradient is xᵀ x K."""
    return 0.5 * xp.sum((data["x"] @ params["embed"]["kernel"]) ** 2)


def embed_numpy(params: Any, data: Any) -> Any:
    return embed_loss(params, data, np)


def make_x(n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(n, 3))}


class Embedding(gradlab.Problem):
    """The loss as a Problem that draws data, so that the benchmark can time it."""

    def make_data(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        return make_x(n, seed=seed)


class NativeEmbedding(gradlab.NativeProblem):
    """The loss as a NativeProblem (NumPy implementation) that draws data."""

    def make_data(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        return make_x(n, seed=seed)


def build(kind: str, shapes: Any) -> gradlab.AbstractProblem:
    if kind == "Problem":
        return Embedding(embed_loss, name="embedding", params=shapes)
    return NativeEmbedding(name="embedding", numpy=embed_numpy, params=shapes)


KINDS = ["Problem", "NativeProblem"]

#: One parameter, init["embed"]["kernel"] of shape (3, 2), declared every way there is.
DECLARATIONS = [
    {"embed.kernel": (3, 2)},
    {"embed": {"kernel": (3, 2)}},
    {"embed['kernel']": [3, 2]},
    {"['embed'].kernel": (np.int64(3), np.int32(2))},
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shapes", DECLARATIONS, ids=str)
def test_a_declaration_by_path_or_nest_names_the_nested_parameter(kind: str, shapes: Any) -> None:
    problem = build(kind, shapes)
    data = {"x": X}
    assert problem.param_shapes(data) == {"embed.kernel": (3, 2)}
    start = problem.initial_params(data)
    assert list(start) == ["embed"]
    assert list(start["embed"]) == ["kernel"]
    np.testing.assert_array_equal(start["embed"]["kernel"], np.zeros((3, 2)))
    _, grads = gradlab.value_and_grad(problem, data, {"embed": {"kernel": KERNEL}}, engine="fd")
    np.testing.assert_allclose(grads["embed"]["kernel"], X.T @ X @ KERNEL, rtol=1e-7, atol=1e-9)
    result = gradlab.fit(
        problem, data, engine="fd", optimizer=gradlab.sgd(0.01), steps=2, init=start
    )
    assert result.params["embed"]["kernel"].shape == (3, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_the_benchmark_starts_from_declared_nested_shapes(kind: str) -> None:
    result = gradlab.benchmark(
        build(kind, {"embed.kernel": (3, 2)}), [8], engines="fd", min_time=0.001, fit_steps=2
    )
    assert [(case.engine, case.status) for case in result.cases] == [("fd", "measured")]


def test_indices_in_declared_paths_start_from_lists() -> None:
    def loss(params: Any, data: Any, xp: Any) -> Any:
        return sum(xp.sum(layer["w"] ** 2) for layer in params["layers"])

    problem = gradlab.Problem(loss, params={"layers[1].w": (2,), "layers[0].w": (3,)})
    start = problem.initial_params({})
    assert isinstance(start["layers"], list)
    assert [layer["w"].shape for layer in start["layers"]] == [(3,), (2,)]
    point = {"layers": [{"w": np.ones(3)}, {"w": np.array([1.0, -2.0])}]}
    _, grads = gradlab.value_and_grad(problem, {}, point, engine="fd")
    np.testing.assert_allclose(grads["layers"][1]["w"], [2.0, -4.0], rtol=1e-8)


def test_a_flat_key_spelled_like_a_declared_path_is_named_plainly() -> None:
    problem = gradlab.Problem(embed_loss, params={"embed.kernel": (3, 2)})
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.value_and_grad(problem, {"x": X}, {"embed.kernel": KERNEL}, engine="fd")
    assert caught.value.argument == "params"
    message = str(caught.value)
    assert "params['embed']['kernel']" in message
    assert "not params['embed.kernel']" in message
    assert "\"['embed.kernel']\"" not in message  # a path quoted as a repr: unreadable

    # A key that does hold a dot is declared in brackets, as Python indexes it.
    def flat_loss(params: Any, data: Any, xp: Any) -> Any:
        return 0.5 * xp.sum((data["x"] @ params["embed.kernel"]) ** 2)

    flat = gradlab.Problem(flat_loss, params={"['embed.kernel']": (3, 2)})
    assert list(flat.initial_params({"x": X})) == ["embed.kernel"]
    _, grads = gradlab.value_and_grad(flat, {"x": X}, {"embed.kernel": KERNEL}, engine="fd")
    np.testing.assert_allclose(grads["embed.kernel"], X.T @ X @ KERNEL, rtol=1e-7, atol=1e-9)


#: Declarations that are not shapes, with the argument the error must name.
BAD_DECLARATIONS: list[tuple[object, str]] = [
    ({"w": 3}, "params['w']"),
    ({"w": "3"}, "params['w']"),
    ({"w": (2.5,)}, "params['w']"),
    ({"w": (True,)}, "params['w']"),
    ({"w": (-1, 2)}, "params['w']"),
    ({"embed": {"kernel": (3, -2)}}, "params['embed']['kernel']"),
    ({"embed": {"kernel": None}}, "params['embed']['kernel']"),
    ({"embed": {}}, "params['embed']"),
    ({"a..b": (1,)}, "params['a..b']"),
    ({"a[": (1,)}, "params['a[']"),
    ({"a.b": (1,), "a": {"b": (1,)}}, "params['a']['b']"),
    ({"a.b": (1,), "a['b']": (1,)}, "params[\"a['b']\"]"),
    ({"a": (1,), "a.b": (1,)}, "params"),
    ([("w", (1,))], "params"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("shapes", "argument"), BAD_DECLARATIONS, ids=str)
def test_declarations_that_are_not_shapes_are_refused_naming_where(
    kind: str, shapes: object, argument: str
) -> None:
    with pytest.raises(gradlab.ArgumentError) as caught:
        build(kind, shapes)
    assert caught.value.argument == argument


def test_a_subclass_may_declare_its_shapes_nested() -> None:
    class Nested(gradlab.AbstractProblem):
        def loss(self, params: Any, data: Any, xp: Any) -> Any:
            return embed_loss(params, data, xp)

        def param_shapes(self, data: Any) -> Any:
            return {"embed": {"kernel": (data["x"].shape[1], 2)}}

    problem = Nested()
    start = problem.initial_params({"x": X})
    assert start["embed"]["kernel"].shape == (3, 2)
    _, grads = gradlab.value_and_grad(problem, {"x": X}, {"embed": {"kernel": KERNEL}}, engine="fd")
    np.testing.assert_allclose(grads["embed"]["kernel"], X.T @ X @ KERNEL, rtol=1e-7, atol=1e-9)
    with pytest.raises(gradlab.ArgumentError, match=r"params\['embed'\]\['kernel'\]: has shape"):
        gradlab.value_and_grad(problem, {"x": X}, {"embed": {"kernel": KERNEL.T}}, engine="fd")


class Colour(enum.Enum):
    RED = 1


def test_keys_python_cannot_read_back_from_a_path_still_name_their_parameter() -> None:
    # The path of an enum key, [<Colour.RED: 1>], is no Python literal: the tangent's
    # check, which compares it with the parameters' paths, takes it as written.
    problem = gradlab.Problem(lambda p, d, xp: xp.sum(p[Colour.RED] ** 3))
    point = {Colour.RED: np.array([1.0, -2.0])}
    product = gradlab.hvp(problem, {}, point, {Colour.RED: np.array([1.0, 1.0])}, engine="fd")
    np.testing.assert_allclose(product[Colour.RED], [6.0, -12.0], rtol=1e-6)
    with pytest.raises(gradlab.ArgumentError, match=r"tangent\[<Colour.RED: 1>\]: has shape"):
        gradlab.hvp(problem, {}, point, {Colour.RED: np.ones(3)}, engine="fd")
