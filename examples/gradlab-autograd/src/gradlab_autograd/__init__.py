"""HIPS autograd as a gradlab engine: reverse mode over NumPy code, registered as a plug-in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import autograd
import autograd.numpy as anp
import numpy as np

import gradlab

__all__ = ["AutogradEngine"]


class AutogradEngine(gradlab.AbstractEngine):
    """``autograd.value_and_grad`` of the problem's loss, written against ``autograd.numpy``.

    Arrays are plain NumPy arrays; autograd traces the loss as it runs, on every call (there
    is nothing to compile), so the loop is ``AbstractEngine``'s Python loop.
    """

    name = "autograd"
    xp = anp

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """A fresh NumPy copy in ``dtype``."""
        return np.array(array, dtype=dtype, copy=True)

    def value_and_grad(self, problem: gradlab.AbstractProblem) -> Any:
        """``autograd.value_and_grad`` of the loss with respect to the parameter dict."""
        # gradlab's checked loss: a loss that returns anything but a 0-d float array of xp
        # is refused with gradlab's message, as on the built-in engines.
        loss = gradlab.engines.checked_loss(problem)
        function = autograd.value_and_grad(lambda params, data: loss(params, data, anp))

        def value_and_grad(params: Mapping[str, Any], data: Mapping[str, Any]) -> Any:
            loss, grads = function(dict(params), data)
            # autograd promotes some float32 results to float64; gradlab reports in the
            # dtype asked for, so each gradient takes its parameter's dtype back.
            dtype = np.result_type(*params.values())
            return np.asarray(loss, dtype), {
                name: np.asarray(grads[name], dtype) for name in params
            }

        return value_and_grad

    def hvp(self, problem: gradlab.AbstractProblem) -> Any:
        """Reverse over reverse: H·v is the gradient of ⟨∇L, v⟩ with respect to the params."""
        gradient = autograd.grad(lambda params, data: problem.loss(params, data, anp))

        def directional(params: Any, tangent: Any, data: Any) -> Any:
            grads = gradient(params, data)
            return sum(anp.sum(grads[name] * tangent[name]) for name in grads)

        product = autograd.grad(directional)

        def hvp(params: Mapping[str, Any], tangent: Mapping[str, Any], data: Any) -> Any:
            dtype = np.result_type(*params.values())
            result = product(dict(params), dict(tangent), data)
            return {name: np.asarray(result[name], dtype) for name in params}

        return hvp

    def describe(self) -> dict[str, Any]:
        """autograd's version; it runs on the host CPU."""
        from importlib.metadata import version

        return {"framework": "autograd", "autograd": version("autograd"), "device": "cpu"}
