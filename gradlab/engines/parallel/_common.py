"""Data-parallel engines: a problem's rows spread over processes or devices.

Why an engine, and not an option of ``fit``: a data-parallel gradient is still a
``(params, data) -> (loss, grads)`` function, the same numbers as one process gives, so it
belongs behind the protocol's ``value_and_grad`` (and ``run``, where a framework compiles
the loop). Every loop, comparison and report then takes it unchanged: ``fit`` with its
mini-batches, stop rules, callbacks, resume and trajectories, ``compare_gradients`` beside
single-process engines, ``gradlab compare --engines torch,torch-dp2``.

How the rows reduce is the problem's to say (``AbstractProblem.reduction``): a sum over
rows is summed across shards; a mean is each shard's mean weighted by its share of the
rows, so unequal shards (and shards of one row, or none) give the single-process number.
A problem that declares no reduction is refused, as its loss may not be a sum over rows
(a prior term added once would be added once per shard).

The frameworks do the spreading: ``torch.distributed`` (``_torch_parallel``) and JAX's
sharding (``_jax_parallel``); ``_data_parallel`` makes them. This module holds what they
share.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError, NotSupported
from gradlab.engines._protocol import (
    AbstractEngine,
    Array,
    Carry,
    Data,
    Objective,
    Step,
    loop_xp_of,
    objective_of,
)
from gradlab.problems._base import REDUCTIONS, AbstractProblem


def reduction_of(problem: AbstractProblem) -> str:
    """The problem's declared reduction over rows, or ``NotSupported`` naming it."""
    reduction = getattr(problem, "reduction", None)
    if reduction is None:
        error = NotSupported(
            f"problem {problem.name!r} does not declare how its loss reduces over rows, so it "
            "cannot run data-parallel: set reduction='mean' or 'sum' if its loss is the mean "
            "or the sum over rows of one loss per row"
        )
        error.argument = "problem"
        raise error
    if reduction not in REDUCTIONS:
        raise ArgumentError("problem", f"declares reduction={reduction!r}, not 'mean' or 'sum'")
    return str(reduction)


def rows_of(data: Mapping[str, Any]) -> int:
    """The number of rows every data array has (what is spread), or an error naming
    the array that has none or another number."""
    if not data:
        raise ArgumentError("data", "is empty: a data-parallel run spreads the rows of its data")
    counts = {}
    for name, value in data.items():
        shape = tuple(getattr(value, "shape", np.shape(value)))
        if not shape:
            raise ArgumentError(
                f"data[{name!r}]", "is a scalar: a data-parallel run spreads rows of arrays"
            )
        counts[name] = int(shape[0])
    if len(set(counts.values())) != 1:
        raise ArgumentError(
            "data", f"arrays have different numbers of rows, which cannot be spread: {counts}"
        )
    rows = next(iter(counts.values()))
    if rows == 0:
        raise ArgumentError("data", "has no rows")
    return rows


def shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """Shard ``i``'s rows ``[start, stop)``: contiguous, in order, sizes differing by at
    most one (the first ``rows % shards`` one larger), some empty when rows < shards."""
    edges = [0]
    for shard in range(shards):
        edges.append(edges[-1] + rows // shards + (shard < rows % shards))
    return list(itertools.pairwise(edges))


def share(rows: int, total: int, reduction: str) -> float:
    """The weight of a shard's loss of ``rows`` rows in the loss of all ``total``: its
    share of a mean, all of itself in a sum."""
    return rows / total if reduction == "mean" else 1.0


class DataParallel(AbstractEngine, abstract=True):
    """A data-parallel engine: ``base``'s arrays and loop, with a ``value_and_grad`` that
    spreads rows. Subclasses (one per framework) supply ``value_and_grad``.

    Args:
        base: The single-process engine each rank computes with.
        shards: How many shards the rows are spread over.
        launch: How the shards were made, for ``describe``.
    """

    # Set by __init__: the base engine's name and namespace, spread.
    name: str
    xp: Any

    def __init__(self, base: AbstractEngine, shards: int, launch: str) -> None:
        self.base, self.shards, self.launch = base, shards, launch
        self.name = f"{base.name}-dp{shards}"
        self.xp = base.xp
        self.loop_xp = loop_xp_of(base)
        self.compiled_loop = base.compiled_loop

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """As the base engine."""
        return self.base.asarray(array, dtype)

    def asarrays(self, arrays: Sequence[np.ndarray], dtype: str) -> list[Array]:
        """As the base engine."""
        return self.base.asarrays(arrays, dtype)

    def to_numpy(self, array: Array) -> np.ndarray:
        """As the base engine."""
        return self.base.to_numpy(array)

    def to_numpy_all(self, arrays: Sequence[Array]) -> list[np.ndarray]:
        """As the base engine."""
        return self.base.to_numpy_all(arrays)

    def block(self, tree: Any) -> Any:
        """As the base engine."""
        return self.base.block(tree)

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, as the base engine computes it, in this process (benchmarks
        divide the gradient's time by it; the value needs no reduction)."""
        return objective_of(self.base, problem)

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The base engine's loop around this engine's gradient."""
        return self.base.run(step, carry, data, steps)

    def describe(self) -> dict[str, Any]:
        """The base engine's facts, and how the rows are spread."""
        return {
            **self.base.describe(),
            "data_parallel": {"shards": self.shards, "launch": self.launch},
        }

    def close(self) -> None:
        """Release the processes or devices (nothing to release by default)."""

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
