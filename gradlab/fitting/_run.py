"""A fit in stretches: each run by the engine, checked on the host, ended where it must."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError
from gradlab._tree import leaves, tree_map
from gradlab.engines._protocol import Carry, Data, GradientEngine, to_numpy_all_of
from gradlab.fitting._step import Step
from gradlab.fitting._stop import Stop


class Run:
    """A fit in stretches: runs each, checks it on the host, and ends it where it must."""

    def __init__(
        self,
        engine: GradientEngine,
        body: Step,
        batch: Data,
        stop: Stop | None,
        names: tuple[str, ...],
    ) -> None:
        self.engine, self.body, self.batch, self.stop = engine, body, batch, stop
        self.names = names
        self.losses: list[np.ndarray] = []
        self.visited: dict[str, list[np.ndarray]] = {name: [] for name in body.record}
        self.updates = 0
        self.reason: str | None = None
        self.diverged_at: int | None = None
        self.best = np.inf
        self.best_at = 0
        self.last_loss = float("nan")
        self._host: tuple[Carry, dict[str, np.ndarray], Any] | None = None

    def stretch(self, carry: Carry, length: int, done: int, last: bool = False) -> Carry:
        """Run ``length`` steps from ``carry``; return the carry where this stretch ends.

        ``last``: the fit ends with this stretch unless a rule stops it earlier, so the
        optimizer state it returns comes back with the stretch's own results.
        """
        engine = self.engine
        end, stacked = engine.run(self.body, carry, self.batch, length)
        outputs = self.body.read(stacked)
        # Everything this stretch checks on the host (and, in the last, the optimizer state
        # the fit returns), brought back in one transfer: on a GPU, one wait.
        state = _state_arrays(end[1]) if last else []
        wanted = [outputs.losses, *(end[0][name] for name in self.names), *state]
        if outputs.norms is not None:
            wanted.append(outputs.norms)
        host = to_numpy_all_of(engine)(wanted)
        losses = host[0]
        _check_losses(engine, losses, length)
        norms = host[-1] if outputs.norms is not None else None
        path = outputs.path
        at = 1 + len(self.names)
        params_end = dict(zip(self.names, host[1:at], strict=True))
        if not (_finite(losses) and all(map(_finite, params_end.values()))):
            checked = dataclasses.replace(
                self.body, check_gradients=True, record=(), grad_norms=False
            )
            at = _locate_divergence(engine, checked, carry, self.batch, length)
            self.diverged_at = done + at
            self.reason = "diverged"
            return self._cut(carry, losses, path, at, at)
        hit = self._rule(losses, norms, done)
        if hit is not None:
            # Stop at the point after `hit` updates of this stretch: its loss is kept.
            return self._cut(carry, losses, path, hit, hit + 1)
        self._keep(losses, path, length)
        self.updates = done + length
        self.last_loss = float(losses[-1])
        # Already on the host: not converted again at the end.
        on_host = _state_on_host(end[1], host[at : at + len(state)]) if last else None
        self._host = (end, params_end, on_host)
        return end

    def _rule(self, losses: np.ndarray, norms: np.ndarray | None, done: int) -> int | None:
        """The first step of this stretch whose point meets a stop rule, if any."""
        stop = self.stop
        if stop is None:
            return None
        for j, loss in enumerate(losses):
            if stop.loss is not None and loss <= stop.loss:
                self.reason = "loss"
                return j
            if (
                norms is not None
                and stop.grad_norm is not None
                and norms[j] ** 0.5 <= stop.grad_norm
            ):
                self.reason = "grad_norm"
                return j
            if stop.patience is not None:
                if loss < self.best - stop.min_delta:
                    self.best, self.best_at = float(loss), done + j
                elif done + j - self.best_at >= stop.patience:
                    self.reason = "patience"
                    return j
        return None

    def _cut(
        self, carry: Carry, losses: np.ndarray, path: dict[str, Any], updates: int, kept: int
    ) -> Carry:
        """End the fit after ``updates`` updates of this stretch, keeping ``kept`` losses."""
        self._keep(losses, path, updates)
        self.losses[-1] = losses[:kept]
        # The stretch's own body (its outputs unused): the loop it compiled runs the cut, where
        # a body without the gradient norms would be a second program to compile.
        plain = self.body.without_record()
        if updates > 0:
            carry, _ = self.engine.run(plain, carry, self.batch, updates)
        self.updates += updates
        if kept:
            self.last_loss = float(losses[kept - 1])
        return carry

    def _keep(self, losses: np.ndarray, path: dict[str, Any], count: int) -> None:
        self.losses.append(losses[:count])
        for name, values in path.items():
            self.visited[name].append(self.engine.to_numpy(values)[:count])

    def host_state(self, carry: Carry) -> Any:
        """The optimizer state of ``carry`` on the host."""
        if self._host is not None and self._host[0] is carry and self._host[2] is not None:
            return self._host[2]
        return _to_numpy_tree(carry[1], self.engine)

    def host_params(self, carry: Carry) -> dict[str, np.ndarray]:
        if self._host is not None and self._host[0] is carry:
            return {name: self._host[1][name].copy() for name in self.names}
        # By the caller's names, in the caller's order: jax hands dicts back with sorted keys.
        return {name: self.engine.to_numpy(carry[0][name]) for name in self.names}

    def results(
        self, carry: Carry
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        losses = np.concatenate(self.losses) if self.losses else np.zeros(0)
        visited = {
            name: np.concatenate(values) if values else np.zeros((0,))
            for name, values in self.visited.items()
        }
        return losses, self.host_params(carry), visited


def stops(answer: object) -> bool:
    """Whether a callback's answer asks to stop: its truth value, as ``if answer:`` reads it."""
    try:
        return bool(answer)
    except Exception as error:  # an array of several values has no single truth value
        raise ArgumentError(
            "callback", f"returned {type(answer).__name__}, whose truth value is unclear: {error}"
        ) from None


def _check_losses(engine: GradientEngine, losses: np.ndarray, length: int) -> None:
    """An engine's ``run`` must give one loss per step."""
    if np.shape(losses) != (length,):
        raise ArgumentError(
            "engine",
            f"engine {engine.name!r}: run returned losses of shape {np.shape(losses)} for "
            f"{length} steps, expected ({length},)",
        )


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())  # the method: a third of np.all's overhead


def _locate_divergence(
    engine: GradientEngine, checked: Step, carry: Carry, batch: Data, steps: int
) -> int:
    """Replay a failed stretch with gradient checks; return the first bad step.

    ``steps`` when no loss or gradient was bad: the last update itself overflowed the
    parameters.
    """
    _, stacked = engine.run(checked, carry, batch, steps)
    outputs = checked.read(stacked)
    losses, probes = engine.to_numpy(outputs.losses), engine.to_numpy(outputs.probes)
    bad = ~(np.isfinite(losses) & np.isfinite(probes))
    return int(np.argmax(bad)) if bad.any() else steps


def _to_numpy_tree(tree: Any, engine: GradientEngine) -> Any:
    """The optimizer state back on the host, in one transfer: NumPy arrays; counts as Python
    ints."""
    return _state_on_host(tree, to_numpy_all_of(engine)(_state_arrays(tree)))


def _is_array(leaf: Any) -> bool:
    """Whether an optimizer state's leaf is an engine array (not a Python number or None)."""
    return not (leaf is None or isinstance(leaf, (int, float)))


def _state_arrays(tree: Any) -> list[Any]:
    """The engine arrays of an optimizer state, in order."""
    return [leaf for leaf in leaves(tree) if _is_array(leaf)]


def _state_on_host(tree: Any, arrays: Sequence[np.ndarray]) -> Any:
    """``tree`` with its engine arrays replaced, in order, by ``arrays`` (their host copies);
    0-d integer arrays (counts) as Python ints."""
    brought = iter(arrays)

    def bring(leaf: Any) -> Any:
        if not _is_array(leaf):
            return leaf
        array = next(brought)
        if array.ndim == 0 and not np.issubdtype(array.dtype, np.floating):
            return int(array)
        return array

    return tree_map(bring, tree)
