"""A problem over nested parameters, seen by engines as one over flat ``{path: array}`` dicts.

Engines, optimizers and the loop work on flat dicts of named arrays. A problem whose
parameters (or data) are nests is handed to them as a [`FlatView`][gradlab._flat.FlatView]:
its loss rebuilds the nests from the flat dicts (of the engine's own arrays: torch tensors,
jax arrays) before calling the user's loss, so the user's code sees the structure it was
written for, and every derivative comes back keyed by path (``layers[0].w``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from gradlab._fingerprint import Compiled, Keyed, key
from gradlab._tree import Structure, flatten
from gradlab.problems._base import AbstractProblem, Array


class FlatView(AbstractProblem, Keyed):
    """``problem`` with its parameters and data flattened by path.

    Args:
        problem: The user's problem, whose loss takes nests.
        params: The structure of its parameters.
        data: The structure of its data.
        fingerprint: ``problem``'s cache key when the view was made (``key(problem)``):
            compiled code for the view is keyed on it, without walking ``problem`` again.
    """

    def __init__(
        self,
        problem: AbstractProblem,
        params: Structure,
        data: Structure,
        fingerprint: Hashable,
    ) -> None:
        self.fingerprint = (fingerprint, params, data)
        self.problem = problem
        self.params = params
        self.data = data
        self.name = problem.name
        self.has_hand_gradient = problem.has_hand_gradient
        self.has_hand_hvp = problem.has_hand_hvp
        self.has_hand_jacobian = problem.has_hand_jacobian
        self.probe = problem.probe
        self.reduction = problem.reduction

    def loss(self, params: Mapping[str, Array], data: Mapping[str, Array], xp: Any) -> Array:
        """The user's loss, on the nests rebuilt from flat dicts."""
        return self.problem.loss(self.params.unflatten(params), self.data.unflatten(data), xp)

    def check_namespace(self, xp: Any) -> None:
        """As the user's problem."""
        self.problem.check_namespace(xp)

    def check_params(
        self,
        params: Mapping[str, np.ndarray],
        argument: str,
        structure: Structure | None = None,
    ) -> None:
        """As the user's problem, on parameters in its structure (a refit checks its start
        here: without this, a layout's check would be skipped on every fit but the first)."""
        self.problem.check_params(params, argument, self.params)

    def hand_value_and_grad(
        self, params: Mapping[str, Array], data: Mapping[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        """The user's hand gradient, flattened by path (checked at the boundary)."""
        output = self.problem.hand_value_and_grad(
            self.params.unflatten(params), self.data.unflatten(data)
        )
        if isinstance(output, tuple) and len(output) == 2:
            return output[0], _by_path(output[1])
        return output  # not a pair: refused, as such, where it is checked

    def hand_hvp(
        self, params: Mapping[str, Array], tangent: Mapping[str, Array], data: Mapping[str, Array]
    ) -> Any:
        """The user's hand Hessian-vector product, flattened by path."""
        return _by_path(
            self.problem.hand_hvp(
                self.params.unflatten(params),
                self.params.unflatten(tangent),
                self.data.unflatten(data),
            )
        )

    def hand_jacobian(self, params: Mapping[str, Array], data: Mapping[str, Array]) -> Any:
        """The user's hand Jacobian, its blocks for each output flattened by parameter path."""
        jacobian = self.problem.hand_jacobian(
            self.params.unflatten(params), self.data.unflatten(data)
        )
        return self.params.flatten_within(jacobian)

    def predict(self, params: Mapping[str, Array], x: np.ndarray) -> np.ndarray:
        """The user's prediction, on the rebuilt parameters."""
        return self.problem.predict(self.params.unflatten(params), x)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]] | None:
        """The user's problem's declared shapes (by path)."""
        return self.problem.param_shapes(self.data.unflatten(data))

    def check_data(self, data: object) -> Any:
        """Already checked: the view is made from checked data."""
        return data

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (for data-parallel ranks) as what it views: its fingerprint holds code
        objects, which do not pickle, and is taken afresh where it is unpickled."""
        return (flat_view, (self.problem, self.params, self.data))

    def __repr__(self) -> str:
        return f"FlatView({self.problem!r})"


def _by_path(tree: object) -> Any:
    """A nest of derivatives as ``{path: array}``; anything else as it is, to be refused."""
    if isinstance(tree, (Mapping, tuple, list)):
        return flatten(tree)[0]
    return tree


# One view per problem (as it is now) and pair of structures: compiled code is cached on the
# problem an engine is handed, so the same nests must give the same view object.
_VIEWS: Compiled[FlatView] = Compiled()
_ORDERED: Compiled[FlatView] = Compiled()


class OrderedView(FlatView):
    """``problem``, whose parameters and data are flat dicts, with its loss handed them in
    the caller's key order.

    JAX rebuilds every dict it traces with its keys sorted: a loss that reads its
    parameters in order (``xp.concatenate(list(params.values()))``) would see another order
    on jax than on every other engine, and silently compute another function. Hand
    derivations run on NumPy, in the caller's order already: they pass straight through.
    """

    def __init__(self, *args: Any) -> None:  # FlatView's arguments
        super().__init__(*args)
        problem = self.problem
        self.hand_value_and_grad = problem.hand_value_and_grad  # type: ignore[method-assign]
        self.hand_hvp = problem.hand_hvp  # type: ignore[method-assign]
        self.hand_jacobian = problem.hand_jacobian  # type: ignore[method-assign]
        self.predict = problem.predict  # type: ignore[method-assign]

    def loss(self, params: Mapping[str, Array], data: Mapping[str, Array], xp: Any) -> Array:
        """The user's loss, on dicts in the caller's order."""
        paths = self.data.paths
        if tuple(params) == self.params.paths and tuple(data)[: len(paths)] == paths:
            # In order already (every engine but jax, at every step): passed as they are.
            return self.problem.loss(params, data, xp)
        ordered = {name: data[name] for name in self.data.paths if name in data}
        ordered.update(data)  # then what fit adds (constants), in its order
        return self.problem.loss({name: params[name] for name in self.params.paths}, ordered, xp)

    def constants(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The user's problem's constants."""
        return self.problem.constants(data)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]] | None:
        """The user's problem's declared shapes."""
        return self.problem.param_shapes(data)


def _sorted(structure: Structure) -> bool:
    """Whether a flat dict's keys are in sorted order already (as JAX rebuilds dicts)."""
    try:
        return list(structure.paths) == sorted(structure.paths)
    except TypeError:
        return False


def flat_view(problem: AbstractProblem, params: Structure, data: Structure) -> AbstractProblem:
    """What engines are handed for ``problem``: itself when both structures are flat dicts
    whose keys are sorted; an ``OrderedView`` when they are flat dicts in another order."""
    if params.trivial and (data.trivial or not data.paths):
        if _sorted(params) and _sorted(data):
            return problem
        problem_key = key(problem)
        return _ORDERED.get(
            (problem_key, params, data),
            lambda: OrderedView(problem, params, data, problem_key),
        )
    problem_key = key(problem)
    return _VIEWS.get(
        (problem_key, params, data), lambda: FlatView(problem, params, data, problem_key)
    )
