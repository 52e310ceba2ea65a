"""The ``torch`` engine: ``torch.autograd``, in functional style."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError
from gradlab.engines._protocol import HVP, AbstractEngine, Array, Data, Params, ValueAndGrad
from gradlab.problems._base import AbstractProblem


class TorchEngine(AbstractEngine):
    """Reverse-mode autodiff with ``torch.autograd.grad``.

    Functional: each call makes fresh leaf tensors, asks ``torch.autograd.grad`` for the
    gradient and returns it, so no ``.grad`` attribute is ever set and the caller's tensors
    never require grad. Gradient recording is switched on with ``torch.enable_grad()`` for
    the duration of the call only, so a caller inside ``torch.no_grad()`` gets gradients and
    finds grad mode as it left it. gradlab never changes torch's default dtype or thread count.

    Problems see torch through ``array_api_compat.torch``, the array-API namespace, so a loss
    written with ``xp.sum(..., axis=0)`` runs unchanged.

    Args:
        device: Where tensors live (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    """

    name = "torch"

    def __init__(self, *, device: str = "cpu") -> None:
        self._torch = importlib.import_module("torch")
        self.xp = importlib.import_module("array_api_compat.torch")
        try:
            self.device = self._torch.device(device)
            self._torch.empty(0, device=self.device)
        except (RuntimeError, TypeError) as error:
            raise ArgumentError("device", f"torch cannot use device {device!r}: {error}") from None

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A new tensor (a copy, never a view of the caller's array) on the device."""
        return self._torch.tensor(
            np.asarray(array), dtype=getattr(self._torch, dtype), device=self.device
        )

    def to_numpy(self, array: Array) -> np.ndarray:
        """Detach, move to the host, convert."""
        if isinstance(array, self._torch.Tensor):
            out: np.ndarray = array.detach().cpu().numpy()
            return out
        return np.asarray(array)

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``torch.autograd.grad`` of the loss with respect to fresh leaves."""
        torch, xp = self._torch, self.xp

        def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
            leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
            with torch.enable_grad():
                loss = problem.loss(leaves, data, xp)
                # materialize_grads: a parameter the loss ignores gets zeros, not None.
                grads = torch.autograd.grad(
                    loss, tuple(leaves.values()), allow_unused=True, materialize_grads=True
                )
            return loss.detach(), dict(zip(leaves, grads, strict=True))

        return value_and_grad

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad`` of the loss."""
        func, xp = importlib.import_module("torch.func"), self.xp

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
            def gradient(point: Params) -> Any:
                return func.grad(lambda p: problem.loss(p, data, xp))(point)

            with warnings.catch_warnings():
                # torch's first forward-mode call loads its JVP decompositions through
                # torch.jit.script, which torch 2.13 itself deprecates: torch's warning about
                # torch's internals, nothing a gradlab user can act on.
                warnings.filterwarnings(
                    "ignore",
                    message=r"`torch\.jit\.script` is deprecated",
                    category=DeprecationWarning,
                )
                # torch.func transforms trace their own graph, whatever the caller's grad mode.
                _, product = func.jvp(gradient, (dict(params),), (dict(tangent),))
            return dict(product)

        return hvp

    def describe(self) -> dict[str, Any]:
        """torch's version, device and intra-op thread count."""
        return {
            "framework": "torch",
            "torch": self._torch.__version__,
            "device": str(self.device),
            "threads": self._torch.get_num_threads(),
        }
