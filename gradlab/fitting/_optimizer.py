"""A fit's optimizer, checked and told apart once: gradlab's (or anything with ``init`` and
``update``), or optax's.

An optax ``GradientTransformation`` has gradlab's shape (``init``, ``update``), and gradlab's
loop runs it unchanged. What differs is where it computes: optax calls ``jax.numpy``, so
it runs where the parameters are jax arrays, the ``jax`` engine; elsewhere it is refused,
naming ``optimizer`` and the gradlab optimizer that matches it. Its state is made in the
64-bit mode of the run (JAX makes float32 state outside it), with the integer step count
optax keeps, and a resumed state is given the dtypes of a fresh one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._boundary import check_optimizer, check_state, check_transformation, on_engine
from gradlab._errors import ArgumentError, NotSupported
from gradlab._tree import tree_map
from gradlab.engines._protocol import GradientEngine
from gradlab.problems._native import framework_of


@dataclass(frozen=True)
class FitOptimizer:
    """The optimizer of a fit, checked, with whose it is decided once.

    Attributes:
        transformation: What the loop calls: ``init`` and ``update``.
        optax: Whether it is optax's (it computes with ``jax.numpy``: its state is made on
            the engine, in the run's 64-bit mode, and a failing update is blamed on it).
    """

    transformation: Any
    optax: bool

    def start_state(
        self,
        params: Mapping[str, np.ndarray],
        resumed: Any,
        engine: GradientEngine,
        dtype: str,
    ) -> Any:
        """The state a fit starts from: fresh, or ``resumed`` (checked). gradlab's own and
        other NumPy-computing optimizers make it from NumPy parameters (moved to the engine
        like them, so no framework arithmetic happens outside the engine); optax on the
        engine."""
        if self.optax:
            return start_state(self.transformation, params, resumed, engine, dtype)
        return check_optimizer(self.transformation, params, resumed)

    def blame(self, params: Any, state: Any, dtype: str) -> None:
        """After a fit failed in user code: name the optimizer if its update is what fails
        (optax's, whose update may need more than gradlab's loop gives it)."""
        if self.optax:
            blame(self.transformation, params, state, dtype)


def fit_optimizer(optimizer: object) -> FitOptimizer:
    """``optimizer`` checked (an error naming ``optimizer`` if it has no ``init`` and
    ``update``), and told apart."""
    transformation = check_transformation(optimizer)
    return FitOptimizer(transformation, is_optax(transformation))


def is_optax(optimizer: object) -> bool:
    """Whether ``optimizer`` is optax's (found from its module, without importing optax)."""
    return type(optimizer).__module__.partition(".")[0] == "optax"


def check_engine(optimizer: object, engine: GradientEngine) -> None:
    """Refuse (``NotSupported``) an optax ``optimizer`` on an engine other than jax; a
    comparison over default engines skips those with this note."""
    if is_optax(optimizer) and framework_of(engine.xp) != "jax":
        raise NotSupported(
            f"optimizer is an optax transformation, which computes with jax.numpy, so it runs "
            f"on the 'jax' engine only, not {engine.name!r}; gradlab's own optimizers "
            "(gradlab.adam, sgd, momentum, ...) match optax's to round-off and run everywhere"
        )


def start_state(
    optimizer: Any,
    params: Mapping[str, np.ndarray],
    resumed: Any,
    engine: GradientEngine,
    dtype: str,
) -> Any:
    """The optax state a fit on ``engine`` starts from: fresh, or ``resumed`` (checked).

    Raises:
        ArgumentError: the engine is not jax (naming ``optimizer``), or ``resumed`` does not
            have the state's structure (naming ``resume``).
    """
    try:
        check_engine(optimizer, engine)
    except NotSupported as error:
        raise ArgumentError("optimizer", str(error).removeprefix("optimizer ")) from None
    jax = importlib.import_module("jax")
    with jax.enable_x64(dtype == "float64"):
        fresh = optimizer.init(on_engine(engine, params, dtype))
        if resumed is None:
            return fresh
        check_state(resumed, fresh, "resume", "resume.state")
        jnp = importlib.import_module("jax.numpy")
        return tree_map(lambda old, new: jnp.asarray(old, dtype=new.dtype), resumed, fresh)


def blame(optimizer: Any, params: Any, state: Any, dtype: str) -> None:
    """After a fit with an optax ``optimizer`` failed: raise an error naming ``optimizer`` if
    its update alone fails on these parameters and state (so the failure is not blamed on
    the loss); else return, and the original error stands.

    It runs only on failure, so a fit that succeeds pays nothing for it. Transformations
    whose update needs more than ``(grads, state, params)`` (``optax.lbfgs``'s ``value``,
    ``grad`` and ``value_fn``) are what this names most often.
    """
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    with jax.enable_x64(dtype == "float64"):
        try:
            optimizer.update(tree_map(jnp.zeros_like, params), state, params)
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ArgumentError(
                "optimizer",
                f"raised {type(error).__name__} in update(grads, state, params): {message}; "
                "gradlab's loop calls update with those three arguments only",
            ) from error
