"""What a fit returns: [`FitResult`][gradlab.FitResult], saved and loaded like every result."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from gradlab import _output
from gradlab._checks import check_dtype
from gradlab._output import Record
from gradlab._tree import flatten, layout, rebuild
from gradlab.comparison._baseline import BaselineComparison, fit_against

Status = Literal["completed", "converged", "stopped", "diverged"]


@dataclass(frozen=True)
class FitResult(Record):
    """The outcome of [`fit`][gradlab.fit].

    Attributes:
        params: Final parameters, as NumPy arrays of the run's dtype, in the structure of
            ``init`` (a dict, or the nest of dicts, lists and tuples it was). When the fit diverged
            at step k, the parameters after k updates: the point whose loss or gradient was
            first non-finite.
        losses: The loss at every step, *before* that step's update (as in the seed), as a
            NumPy array of the run's dtype: length ``steps``, or k when the fit diverged at
            step k (only the finite losses before it).
        engine: The engine's name.
        dtype: ``"float32"`` or ``"float64"``.
        status: ``"completed"`` (every step ran), ``"converged"`` (a [`Stop`][gradlab.Stop] rule was
            met), ``"stopped"`` (the callback asked to stop), or ``"diverged"`` (a loss or
            gradient became non-finite).
        diverged_at: The index of the first step whose loss or gradient was non-finite, or
            ``None``.
        steps: The number of steps asked for.
        wall_time: Seconds from the start of the loop to the results being on the host,
            including any compilation the engine does on first use.
        problem: The problem's name.
        provenance: Versions, machine, threads, device, precision mode and time of the run.
        trajectory: With ``fit(..., trajectory=True)``, the parameters at every step: for
            each parameter (in the structure of ``params``) an array of shape
            ``(updates + 1, *shape)`` whose row k is the point after k updates of this call
            (row 0 the start, the last row ``params``); else ``None``.
        stop_reason: Why the fit ended: ``"steps"``, ``"loss"``, ``"grad_norm"``,
            ``"patience"`` (the [`Stop`][gradlab.Stop] rules), ``"callback"`` or ``"diverged"``.
        state: The optimizer's state at ``params``, as NumPy arrays (its moments in the
            structure of ``params``): with ``params`` and
            ``step`` what ``fit(..., resume=result)`` continues from.
        step: Updates taken in total, counting those of the fits this one resumed.

    When a [`Stop`][gradlab.Stop] rule is met by the loss or gradient at the point after k updates,
    the fit ends there: ``params`` is that point, and ``losses`` has k + 1 entries, the last
    being the loss that met the rule (``final_loss``).
    """

    params: Any
    losses: np.ndarray
    engine: str
    dtype: str
    status: Status
    diverged_at: int | None
    steps: int
    wall_time: float
    problem: str
    provenance: dict[str, Any] = field(repr=False)
    trajectory: Any = field(default=None, repr=False)
    stop_reason: str = "steps"
    state: Any = field(default=None, repr=False)
    step: int = 0

    @property
    def ok(self) -> bool:
        """Whether the fit ended without diverging (all steps run, or a rule met)."""
        return self.status != "diverged"

    @property
    def time_per_step(self) -> float:
        """Wall time divided by the number of steps run."""
        return self.wall_time / max(1, len(self.losses))

    @property
    def final_loss(self) -> float:
        """The last recorded loss (before the last update), or NaN if none was recorded."""
        return float(self.losses[-1]) if len(self.losses) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record: every field, arrays as lists (trajectory if recorded), and
        the layout of ``params``; [`from_dict`][gradlab.FitResult.from_dict] rebuilds the
        result from it (without the optimizer state)."""
        return _output.stamp(
            self,
            {
                "problem": self.problem,
                "engine": self.engine,
                "dtype": self.dtype,
                "status": self.status,
                "stop_reason": self.stop_reason,
                "step": self.step,
                "diverged_at": self.diverged_at,
                "steps": self.steps,
                "params": self.params,
                "layout": layout(self.params),
                "final_loss": self.final_loss,
                "losses": self.losses,
                "wall_time": self.wall_time,
                "time_per_step": self.time_per_step,
                "trajectory": self.trajectory,
                "provenance": self.provenance,
            },
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FitResult:
        """Rebuild a result from [`to_dict`][gradlab.FitResult.to_dict] (or parsed
        ``to_json``, or ``gradlab fit --json``): parameters in their structure and dtype.

        The optimizer state is not saved, so a loaded result cannot be resumed
        (``fit(..., resume=...)`` needs the result ``fit`` returned).

        Raises:
            ArgumentError: ``record`` is not a saved fit result.
        """
        with _output.reading(cls, record) as saved:
            dtype = check_dtype(saved["dtype"], "record")
            shape = saved["layout"]

            def nest(value: Any) -> Any:
                return rebuild(shape, value, lambda leaf: _output.array(leaf, dtype))

            status = saved["status"]
            if status not in get_args(Status):
                raise ValueError(f"unknown status {status!r}")
            return cls(
                params=nest(saved["params"]),
                losses=_output.array(saved["losses"], dtype).reshape(-1),
                engine=str(saved["engine"]),
                dtype=dtype,
                status=status,
                diverged_at=_output.maybe(saved["diverged_at"], int),
                steps=int(saved["steps"]),
                wall_time=_output.number(saved["wall_time"]),
                problem=str(saved["problem"]),
                provenance=dict(saved["provenance"]),
                trajectory=_output.maybe(saved["trajectory"], nest),
                stop_reason=str(saved["stop_reason"]),
                step=int(saved["step"]),
            )

    def against(self, baseline: FitResult | str | os.PathLike[str]) -> BaselineComparison:
        """Whether this fit's path changed since ``baseline``, the same fit saved earlier:
        its losses step by step and its final parameters (and, when both recorded one, its
        trajectory), judged with gradlab's path tolerance for its engine and dtype. See
        [`FitComparison.against`][gradlab.FitComparison.against] for several engines.

        Args:
            baseline: The earlier result, or the path of its JSON (``save``, ``--json``).

        Raises:
            ArgumentError: ``baseline`` is not a saved fit result, or is of another problem,
                engine, dtype, start or number of steps.
        """
        return fit_against(self, baseline)

    def __repr__(self) -> str:
        params = ", ".join(
            f"{name}={np.array2string(value, precision=6)}"
            for name, value in flatten(self.params)[0].items()
        )
        where = f" at step {self.diverged_at}" if self.diverged_at is not None else ""
        return (
            f"FitResult({self.problem} on {self.engine!r}, {self.dtype}, {self.status}{where}: "
            f"{params}, final loss {self.final_loss:.6g}, {len(self.losses)} steps "
            f"in {self.wall_time:.3g} s)"
        )
