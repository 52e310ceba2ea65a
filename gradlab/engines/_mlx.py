"""The ``mlx`` engine: Apple's MLX, ``mx.value_and_grad``; the loop under ``mx.compile``."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._fingerprint import Compiled, fingerprint, key
from gradlab._loss import checked_loss
from gradlab._tree import leaves as tree_leaves
from gradlab.engines._forward import falling_back
from gradlab.engines._protocol import (
    HVP,
    AbstractEngine,
    Array,
    Carry,
    Data,
    Objective,
    Params,
    PerExample,
    Step,
    ValueAndGrad,
    float_dtype,
    numbers_as_arrays,
)
from gradlab.problems._base import AbstractProblem

# Compiled functions for the life of the process, keyed as the other compiling engines key
# theirs (see ``gradlab._fingerprint``): a changed problem is traced again.
_COMPILED: Compiled[Callable[..., Any]] = Compiled()


def _without_derivative(name: str) -> Callable[..., Any]:
    def search(self: _Namespace, *args: Any, **kwargs: Any) -> Any:
        return self._mx.stop_gradient(getattr(self._mx, name)(*args, **kwargs))

    search.__name__ = name
    return search


class _Namespace:
    """``mlx.core`` as losses see it, with the indices its searches return cut from
    differentiation.

    An index has no derivative, but MLX differentiates a gather with respect to indices
    computed from the parameters, and refuses ("Cannot calculate VJP with respect to
    indices"): k-means' nearest centroid, ``c[argmin(...)]``, failed every second
    derivative. ``mx.stop_gradient`` on ``argmin``, ``argmax``, ``argsort`` and
    ``argpartition`` says what other frameworks read from the integer dtype.
    """

    gradlab_framework = "mlx"

    def __init__(self, mx: Any) -> None:
        self._mx = mx

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # Python's own probes (copy, pickle): not there
            raise AttributeError(name)
        return getattr(self._mx, name)

    argmin = _without_derivative("argmin")
    argmax = _without_derivative("argmax")
    argsort = _without_derivative("argsort")
    argpartition = _without_derivative("argpartition")


@functools.cache
def _namespace(mx: Any) -> _Namespace:
    """One namespace for every engine: compiled functions are found again by what they
    close over (``gradlab._fingerprint``), the namespace among it."""
    return _Namespace(mx)


class MlxEngine(AbstractEngine):
    """Reverse-mode autodiff with MLX's ``mx.value_and_grad``; the loop compiled by ``mx.compile``.

    MLX (Apple's array framework) runs on Apple silicon's GPU and, through its CPU package
    (``mlx[cpu]``), on any Linux or macOS CPU. ``mlx.core`` is an array-API namespace, so
    problems written against ``xp`` run unchanged. float32 and float64 are both real:
    MLX computes float64 on the CPU only (its GPU has no float64), so ``device="gpu"``
    refuses float64 arrays when they are made.

    MLX evaluates lazily: an operation records a graph, computed when a value is needed.
    ``block`` and the loop call ``mx.eval``; the loop does so after every step, so a long
    fit never builds one graph of all its steps. Every call runs on the engine's device
    through ``mx.stream``, so MLX's default device is never changed.

    Where ``mx.compile`` helps: the loop. Its body (gradient and optimizer update) is
    compiled once per shape and dtype and reused by every step; a single gradient, a loss
    or a derivative is computed eagerly. Why: on the CPU ``mx.compile`` generates C++ and
    builds it with the system's compiler, so the first call of each new computation takes
    about half a second (0.55 s for the seed's gradient, measured), hundreds of eager
    calls' worth; a fit of many steps earns it back, since compiling halves a step here
    (seed model, float32: 98 → 56 µs at n = 10², 10.3 → 5.2 ms at n = 10⁶).
    ``compile=False`` runs the loop eagerly too (and needs no compiler).

    Args:
        device: ``"cpu"`` (default) or ``"gpu"`` (Apple silicon).
        compile: Compile the loop body with ``mx.compile`` (default).
    """

    name = "mlx"
    xp: Any  # set by __init__, which imports mlx
    compiled_loop = True

    def __init__(self, *, device: str = "cpu", compile: bool = True) -> None:
        self._mx = importlib.import_module("mlx.core")
        self.xp = _namespace(self._mx)
        if not isinstance(compile, bool):
            raise ArgumentTypeError("compile", f"must be True or False, got {compile!r}")
        self.compiled_loop = self._compile = compile
        if not isinstance(device, str):
            raise ArgumentTypeError("device", f"must be 'cpu' or 'gpu', got {device!r}")
        if device not in ("cpu", "gpu"):
            raise ArgumentError("device", f"MLX has devices 'cpu' and 'gpu', not {device!r}")
        self.device = getattr(self._mx, device)
        self._device_name = device
        if device == "gpu" and not self._mx.is_available(self.device):
            raise ArgumentError("device", "this MLX build has no GPU (Apple silicon only)")

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """An MLX array of ``dtype`` (a copy), evaluated on the engine's device."""
        if dtype == "float64" and self.device == self._mx.gpu:
            raise ArgumentError("dtype", "MLX computes float64 on the CPU only, not on its GPU")
        with self._mx.stream(self.device):
            # The dtype is explicit: MLX turns float64 NumPy arrays into float32 otherwise.
            out = self._mx.array(np.asarray(array), dtype=getattr(self._mx, dtype))
            self._mx.eval(out)
        return out

    def to_numpy(self, array: Array) -> np.ndarray:
        """A NumPy copy (``numpy.array`` evaluates the array first)."""
        return np.array(array)

    def block(self, tree: Any) -> Any:
        """``mx.eval`` of every array: nothing is computed until asked for."""
        self._mx.eval([leaf for leaf in tree_leaves(tree) if isinstance(leaf, self._mx.array)])
        return tree

    def _on_device(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, run on the engine's device (MLX's default device left alone)."""
        mx, device = self._mx, self.device

        def on_device(*args: Any) -> Any:
            with mx.stream(device):
                return function(*args)

        return on_device

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``mx.value_and_grad(loss)`` with respect to the parameters (compiled in the loop)."""
        mx, xp, loss = self._mx, self.xp, checked_loss(problem)

        def make() -> Callable[..., Any]:
            gradient = mx.value_and_grad(lambda params, data: loss(params, data, xp))

            def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
                value, grads = gradient(dict(params), dict(data))
                return value, dict(grads)

            return value_and_grad

        return self._cached("value_and_grad", problem, make)

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, eagerly."""
        xp, loss = self.xp, checked_loss(problem)

        def make() -> Callable[..., Any]:
            return lambda params, data: loss(dict(params), dict(data), xp)

        return self._cached("objective", problem, make)

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Forward-over-reverse: ``mx.jvp`` of ``mx.grad`` of the loss; where MLX has no
        forward-mode rule for an operation (a scatter, the derivative of a gather),
        reverse-over-reverse, ``mx.vjp`` of ``mx.grad``, noted (``gradlab.engines._forward``)."""
        mx, xp, loss = self._mx, self.xp, checked_loss(problem)

        def gradient_of(params: Params, data: Data) -> tuple[list[str], Callable[..., Any]]:
            names = list(params)  # mx.jvp and mx.vjp take and give lists, not dicts

            def gradient(*values: Array) -> list[Array]:
                grads = mx.grad(lambda p: loss(p, data, xp))(dict(zip(names, values, strict=True)))
                return [grads[name] for name in names]

            return names, gradient

        def forward(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
            names, gradient = gradient_of(params, data)
            _, products = mx.jvp(
                gradient, [params[name] for name in names], [tangent[name] for name in names]
            )
            return dict(zip(names, products, strict=True))

        def reverse(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
            names, gradient = gradient_of(params, data)
            _, products = mx.vjp(
                gradient, [params[name] for name in names], [tangent[name] for name in names]
            )
            return dict(zip(names, products, strict=True))

        return self._on_device(
            falling_back(forward, reverse, "mx.jvp of mx.grad", "mx.vjp of mx.grad")
        )

    def per_example_grads(self, problem: AbstractProblem) -> PerExample:
        """``mx.vmap`` of ``mx.grad`` of one row's loss."""
        mx, xp, loss = self._mx, self.xp, checked_loss(problem)

        def row_loss(params: Params, row: Data) -> Array:
            return loss(params, {name: value[None] for name, value in row.items()}, xp)

        vectorised = mx.vmap(mx.grad(row_loss), in_axes=(None, 0))

        def per_example(params: Params, data: Data) -> dict[str, Array]:
            return dict(vectorised(dict(params), dict(data)))

        return self._on_device(per_example)

    def _cached(
        self, what: str, problem: AbstractProblem, make: Callable[[], Callable[..., Any]]
    ) -> Callable[..., Any]:
        """``make()`` on the engine's device, made once per problem state: the same function
        object for an unchanged problem, so the loop body built around it compares equal from
        one fit to the next and its compiled code is found again."""
        return _COMPILED.get(
            (what, self._device_name, key(problem)),
            lambda: self._on_device(make()),
        )

    def _compiling(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``mx.compile(function)``, or ``function`` itself with ``compile=False``."""
        if not self._compile:
            return function
        return self._mx.compile(function)  # type: ignore[no-any-return]

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """A Python loop over the compiled loop body, evaluated after every step.

        Python numbers in the carry (Adam's step count) become 0-d arrays first: compiled
        code would otherwise be specialised on each value of the count.
        """
        mx = self._mx
        if steps == 0:
            return carry, ()
        dtype = float_dtype(carry, mx, mx.float32)
        carry = numbers_as_arrays(carry, lambda number: mx.array(number, dtype=dtype))
        optimizer = fingerprint(getattr(step, "optimizer", None))
        body = _COMPILED.get(
            ("step", self._compile, step, optimizer), lambda: self._compiling(step)
        )
        outputs = []
        with mx.stream(self.device):
            for _ in range(steps):
                carry, out = body(carry, data)
                # Evaluated now, so that the graph of a long fit stays one step deep.
                mx.eval(carry, out)
                outputs.append(out)
            stacked = tuple(mx.stack(list(column)) for column in zip(*outputs, strict=True))
        return carry, stacked

    def describe(self) -> dict[str, Any]:
        """MLX's version and device."""
        return {
            "framework": "mlx",
            "mlx": self._mx.__version__,
            "device": self._device_name,
            "compiled": "mx.compile (loop body)" if self._compile else "eager",
        }
