"""Rules that end a fit early: [`Stop`][gradlab.Stop]."""

from __future__ import annotations

from dataclasses import dataclass

from gradlab._checks import check_float, check_positive_int


@dataclass(frozen=True)
class Stop:
    """Rules that end a fit early; each is checked at every step, ``None`` switches it off.

    Args:
        loss: Stop at the first point whose loss is at most this.
        grad_norm: Stop at the first point whose gradient's global norm is at most this.
        patience: Stop when the loss has not improved on its best by more than
            ``min_delta`` for this many steps.
        min_delta: The improvement that counts for ``patience`` (≥ 0).
        check_every: Steps run between checks on the host; the stop is still exact to the
            step (the last stretch is replayed). Compiled engines run each stretch as one
            program. Default: 100.

    Examples:
        >>> import gradlab
        >>> recipe = gradlab.recipes.seed_numpy()
        >>> result = gradlab.fit(recipe.problem, recipe.data, engine="numpy",
        ...                      optimizer=recipe.optimizer, steps=800, init=recipe.init,
        ...                      stop=gradlab.Stop(loss=0.2))
        >>> result.status, result.stop_reason, result.final_loss <= 0.2
        ('converged', 'loss', True)
    """

    loss: float | None = None
    grad_norm: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    check_every: int = 100

    def __post_init__(self) -> None:
        for name in ("loss", "grad_norm"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_float(value, name, 0.0))
        if self.patience is not None:
            object.__setattr__(self, "patience", check_positive_int(self.patience, "patience"))
        object.__setattr__(self, "min_delta", check_float(self.min_delta, "min_delta", 0.0))
        object.__setattr__(self, "check_every", check_positive_int(self.check_every, "check_every"))
