"""The ``torch`` engine: ``torch.autograd``, in functional style."""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradlab._checks import check_positive_int
from gradlab._errors import ArgumentError, ArgumentTypeError
from gradlab._fingerprint import Compiled, fingerprint, key
from gradlab._loss import checked_loss, checked_output
from gradlab._tree import leaves as tree_leaves
from gradlab._tree import tree_map
from gradlab.engines import _forward
from gradlab.engines._forward import falling_back, raise_if_refused
from gradlab.engines._protocol import (
    HVP,
    JVP,
    VJP,
    AbstractEngine,
    Array,
    Carry,
    Data,
    Jacobian,
    Objective,
    Params,
    PerExample,
    Step,
    Tree,
    ValueAndGrad,
    float_dtype,
    numbers_as_arrays,
    per_row,
    value_and_grad_of,
)
from gradlab.problems._base import AbstractProblem

# Compiled functions live as long as the process, like jit's caches, so that a new engine
# object (``get_engine`` builds one per call) finds what an earlier one compiled. Keys: the
# device, what is compiled (objective, gradient, loop body) and for which problem (its
# cache key) or body; each entry compiles once per shape and dtype of its arguments.
_COMPILED: Compiled[Callable[..., Any]] = Compiled()


class TorchEngine(AbstractEngine):
    """Reverse-mode autodiff with ``torch.autograd.grad``.

    Functional: each call makes fresh leaf tensors, asks ``torch.autograd.grad`` for the
    gradient and returns it, so no ``.grad`` attribute is ever set and the caller's tensors
    never require grad. Gradient recording is switched on (``torch.enable_grad()``, and
    ``torch.inference_mode(False)``) for the duration of each call only, so a caller inside
    ``torch.no_grad()`` or ``torch.inference_mode()`` gets gradients and finds the mode as
    it left it. gradlab never changes torch's default dtype or thread count.

    Problems see torch through ``array_api_compat.torch``, the array-API namespace, so a loss
    written with ``xp.sum(..., axis=0)`` runs unchanged.

    Args:
        device: Where tensors live (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``): a device
            this torch build can compute on, checked when the engine is made.
    """

    name = "torch"
    #: How this engine builds Jacobians: reverse mode (``torch-fwd``: forward).
    mode = "reverse"
    xp: Any  # set by __init__, which imports torch

    def __init__(self, *, device: str = "cpu") -> None:
        self._torch = importlib.import_module("torch")
        self.xp = importlib.import_module("array_api_compat.torch")
        self.device = _checked_device(self._torch, device)

    def _recording(self) -> contextlib.ExitStack:
        """Gradient recording on, whatever grad or inference mode the caller is in."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._torch.inference_mode(False))
        stack.enter_context(self._torch.enable_grad())
        return stack

    def asarray(self, array: np.ndarray, dtype: str) -> Array:
        """A new tensor (a copy, never a view of the caller's array) on the device."""
        # Made outside inference mode: an inference tensor cannot take part in autograd.
        with self._torch.inference_mode(False):
            return self._torch.tensor(
                np.asarray(array), dtype=getattr(self._torch, dtype), device=self.device
            )

    def asinputs(
        self, data: Sequence[np.ndarray], params: Sequence[np.ndarray], dtype: str
    ) -> tuple[list[Array], list[Array]]:
        """The data as tensors on the device, each sharing the memory of an array it was
        lent (see the protocol's ``asinputs``) or of its cast to ``dtype``; the parameters
        as copies.

        Why share: a copy per data array held a fit's data twice, the caller's and
        torch's (a float32 fit at 10⁷ rows). Why not a read-only array: torch has no
        read-only tensors, and a loss that wrote into its data would write the caller's.
        """
        moved = []
        if data:  # a run moves its parameters alone: no mode to enter for them
            with self._torch.inference_mode(False):  # inference tensors take no autograd
                moved = [self._shared(array, dtype) for array in data]
        return moved, [self.asarray(value, dtype) for value in params]

    def _shared(self, array: np.ndarray, dtype: str) -> Array:
        """A CPU tensor on the memory of ``array`` cast to ``dtype``, where that memory is
        lent or made here; else ``asarray``'s copy."""
        host = np.asarray(array)
        if self.device.type != "cpu" or host.dtype.kind != "f":
            return self.asarray(array, dtype)
        if host.dtype != np.dtype(dtype):
            host = host.astype(dtype)  # the cast is the copy: made once, here
        elif not (host.flags.writeable and host.flags.c_contiguous):
            return self.asarray(array, dtype)
        return self._torch.from_numpy(host)

    def to_numpy(self, array: Array) -> np.ndarray:
        """Detach, move to the host, convert."""
        if isinstance(array, self._torch.Tensor):
            out: np.ndarray = array.detach().cpu().numpy()
            return out
        return np.asarray(array)

    def block(self, tree: Any) -> Any:
        """Wait for the device: CUDA and MPS kernels run asynchronously; the CPU does not."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            self._torch.mps.synchronize()
        return tree

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, without recording a graph."""
        torch, xp, loss = self._torch, self.xp, checked_loss(problem)

        def objective(params: Params, data: Data) -> Array:
            with torch.no_grad():
                return loss(params, data, xp)

        return objective

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``torch.autograd.grad`` of the loss with respect to fresh leaves."""
        torch, xp, loss_of = self._torch, self.xp, checked_loss(problem)
        recording = self._recording

        def differentiate(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
            leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
            loss = loss_of(leaves, data, xp)
            grads = torch.autograd.grad(loss, tuple(leaves.values()), allow_unused=True)
            # A parameter the loss ignores gets zeros, not None: filled here, where
            # ``materialize_grads=True`` costs 3 µs a call (measured at n = 10², 70 → 73 µs).
            return loss.detach(), {
                name: torch.zeros_like(leaf) if grad is None else grad
                for (name, leaf), grad in zip(leaves.items(), grads, strict=True)
            }

        def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
            # Entering the two modes costs more than a small problem's step: only when needed.
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                return differentiate(params, data)
            with recording():
                return differentiate(params, data)

        return value_and_grad

    def _transforming(self) -> contextlib.ExitStack:
        """Recording on, for ``torch.func`` transforms, without torch's warning about itself.

        torch's first forward-mode call loads its JVP decompositions through
        torch.jit.script, which torch 2.13 itself deprecates: torch's warning about torch's
        internals, nothing a gradlab user can act on.
        """
        stack = self._recording()
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
        )
        return stack

    def hvp(self, problem: AbstractProblem) -> HVP:
        """Forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad`` of the loss.

        Where forward mode refuses an operation of the loss (``grid_sample``, a
        ``torch.autograd.Function`` without ``jvp``), reverse-over-reverse instead, the
        same H·v to round-off, noted in comparison reports; where that fails too (the flash
        kernel of ``scaled_dot_product_attention`` has no double backward either), a
        ``NotSupported`` naming the operation and what to do (``gradlab.engines._forward``).
        """
        func, xp, loss = importlib.import_module("torch.func"), self.xp, checked_loss(problem)
        transforming = self._transforming

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
            def gradient(point: Params) -> Any:
                return func.grad(lambda p: loss(p, data, xp))(point)

            with transforming():
                _, product = func.jvp(gradient, (dict(params),), (dict(tangent),))
            return dict(product)

        return falling_back(
            hvp,
            self._reverse_over_reverse(problem),
            "torch.func.jvp of torch.func.grad",
            "torch.autograd.grad twice",
        )

    def _reverse_over_reverse(self, problem: AbstractProblem) -> HVP:
        """H·v as the gradient of ⟨∇L, v⟩: ``torch.autograd.grad`` twice, the first keeping
        its graph. ``torch.autograd`` rather than ``torch.func``: it differentiates what
        ``torch.func`` refuses (an old-style ``autograd.Function``) as the gradient does."""
        torch, xp, loss_of, recording = self._torch, self.xp, checked_loss(problem), self._recording

        def hvp(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
            with recording():
                leaves = {
                    name: value.detach().requires_grad_(True) for name, value in params.items()
                }
                inputs = tuple(leaves.values())
                grads = torch.autograd.grad(
                    loss_of(leaves, data, xp), inputs, create_graph=True, allow_unused=True
                )
                # A gradient that does not depend on the parameters (a linear loss) has no
                # graph: its part of H·v is zero.
                inner = [
                    (grad * tangent[name]).sum()
                    for name, grad in zip(leaves, grads, strict=True)
                    if grad is not None and grad.requires_grad
                ]
                products = (
                    torch.autograd.grad(sum(inner), inputs, allow_unused=True)
                    if inner
                    else (None,) * len(inputs)
                )
            return {
                name: torch.zeros_like(leaf) if product is None else product.detach()
                for (name, leaf), product in zip(leaves.items(), products, strict=True)
            }

        return hvp

    #: How this engine builds per-example gradients: reverse mode (``torch-fwd``: forward).
    _jacobian_transform = "jacrev"

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """``torch.func.jacrev`` of the function (``torch-fwd``: ``jacfwd``, in chunks of
        the basis), with its value."""
        func, xp, output = importlib.import_module("torch.func"), self.xp, checked_output(problem)
        transforming, torch = self._transforming, self._torch

        def jacobian(params: Params, data: Data) -> tuple[Tree, Tree]:
            def with_value(point: Params) -> tuple[Tree, Tree]:
                value = output(point, data, xp)
                return value, value

            with transforming():
                full, value = func.jacrev(with_value, has_aux=True)(dict(params))
            return value, _in_dtype(full, _float_dtype(params, torch))

        return jacobian

    def jvp(self, problem: AbstractProblem) -> JVP:
        """``torch.func.jvp``: forward mode, one pass."""
        func, xp, output = importlib.import_module("torch.func"), self.xp, checked_output(problem)
        transforming = self._transforming

        def jvp(params: Params, tangent: Params, data: Data) -> tuple[Tree, Tree]:
            try:
                with transforming():
                    value, product = func.jvp(
                        lambda p: output(p, data, xp), (dict(params),), (dict(tangent),)
                    )
            except Exception as error:
                raise_if_refused(error, "torch.func.jvp (forward mode)")
                raise
            return value, product

        return jvp

    def vjp(self, problem: AbstractProblem) -> VJP:
        """``torch.func.vjp``: reverse mode, one pass."""
        func, xp, output = importlib.import_module("torch.func"), self.xp, checked_output(problem)
        transforming = self._transforming

        def vjp(params: Params, data: Data) -> tuple[Tree, Any]:
            with transforming():
                value, pull = func.vjp(lambda p: output(p, data, xp), dict(params))

            def pullback(cotangent: Tree) -> dict[str, Array]:
                with transforming():
                    return dict(pull(cotangent)[0])

            return value, pullback

        return vjp

    def per_example_grads(self, problem: AbstractProblem) -> PerExample:
        """``torch.func.vmap`` of the gradient of one row's loss; where the loss cannot be
        vmapped (data-dependent Python control flow, ``.item()``), one row at a time."""
        func, xp, loss = importlib.import_module("torch.func"), self.xp, checked_loss(problem)
        transforming, torch = self._transforming, self._torch
        if self._jacobian_transform == "jacrev":
            gradient = func.grad(lambda p, row: loss(p, _one_row(row), xp))
        else:
            gradient = func.jacfwd(lambda p, row: loss(p, _one_row(row), xp))
        vectorised = func.vmap(gradient, in_dims=(None, 0))
        one_at_a_time = per_row(self, value_and_grad_of(self, problem))

        def per_example(params: Params, data: Data) -> dict[str, Array]:
            try:
                with transforming():
                    grads = vectorised(dict(params), dict(data))
                return dict(_in_dtype(grads, _float_dtype(params, torch)))
            except Exception:  # not vmappable: the loop runs it, or raises its own error
                return one_at_a_time(params, data)

        return per_example

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The default Python loop, with gradient recording on for its duration."""
        with self._recording():
            return super().run(step, carry, data, steps)

    def describe(self) -> dict[str, Any]:
        """torch's version, device, intra-op thread count and whether it compiles."""
        return {
            "framework": "torch",
            "torch": self._torch.__version__,
            "device": str(self.device),
            "threads": self._torch.get_num_threads(),
            "torch_compile": False,
        }


class TorchCompileEngine(TorchEngine):
    """The torch engine with the loss, the gradient and the loop body under ``torch.compile``.

    The gradient is ``torch.func.grad_and_value`` of the loss under ``torch.compile``
    (inductor, static shapes), and ``run`` compiles ``unroll`` steps of the loop body
    (gradient and optimizer update) into one graph, as jax's ``scan`` unrolls, and one step
    alone for a remainder. Each new combination of shapes and dtypes compiles once
    (seconds); later calls reuse it. Compiled code is keyed on the problem and everything
    its loss reads (see ``gradlab._fingerprint``), so a changed loss is compiled again,
    never answered from the old program. The Python loop over the graphs stays, with no
    host sync inside it. Registered as ``"torch-compile"``; opt-in in comparisons.

    Args:
        device: As for [`TorchEngine`][gradlab.engines.TorchEngine].
        unroll: Loop steps per compiled graph. A small model's step costs mostly the call
            into compiled code and its guards, paid once per graph: with 8 steps in one
            graph a step at n = 10² took 10 µs against 59 with one (this project's CPU
            machine; see ``benchmarks/expert_baselines.py``). The results
            are the same to round-off; compiling takes longer (the steps are inlined).
    """

    name = "torch-compile"
    compiled_loop = True

    def __init__(self, *, device: str = "cpu", unroll: int = 8) -> None:
        super().__init__(device=device)
        self.unroll = check_positive_int(unroll, "unroll")

    def objective(self, problem: AbstractProblem) -> Objective:
        """The loss alone, compiled."""
        return self._compiling(("objective", key(problem)), super().objective(problem))

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``torch.func.grad_and_value`` of the loss, compiled."""
        xp, loss = self.xp, checked_loss(problem)
        gradient = importlib.import_module("torch.func").grad_and_value(
            lambda params, data: loss(params, data, xp)
        )

        def functional(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
            grads, value = gradient(dict(params), data)
            return value, dict(grads)

        return self._compiling(("value_and_grad", key(problem)), functional)

    def run(
        self, step: Step, carry: Carry, data: Data, steps: int
    ) -> tuple[Carry, tuple[Array, ...]]:
        """The Python loop over the compiled loop body.

        Python numbers in the carry (Adam's step count) become 0-d tensors of the
        parameters' dtype first: compiled code is specialised on the value of a Python
        number, so a count that changes every step would compile every step.
        """
        optimizer = fingerprint(getattr(step, "optimizer", None))
        dtype = _float_dtype(carry, self._torch)
        carry = numbers_as_arrays(
            carry, lambda number: self._torch.tensor(number, dtype=dtype, device=self.device)
        )
        unroll = self.unroll
        if unroll == 1 or steps < unroll:  # a short stretch: no graph of its own length
            return super().run(self._compiling(("step", step, optimizer), step), carry, data, steps)
        many = self._compiling(
            ("steps", unroll, step, optimizer),
            functools.partial(_unrolled, step, unroll, self._torch.stack),
        )
        with self._recording():
            carry, first = many(carry, data)
            buffers = [self._buffer(value[0], steps) for value in first]
            for buffer, value in zip(buffers, first, strict=True):
                buffer[:unroll] = value
            done = unroll
            while done + unroll <= steps:
                carry, out = many(carry, data)
                for buffer, value in zip(buffers, out, strict=True):
                    buffer[done : done + unroll] = value
                done += unroll
            if done < steps:  # the remainder, one step at a time
                one = self._compiling(("step", step, optimizer), step)
                for i in range(done, steps):
                    carry, out = one(carry, data)
                    for buffer, value in zip(buffers, out, strict=True):
                        buffer[i] = value
        return carry, tuple(buffers)

    def _compiling(self, what: tuple[Any, ...], function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, compiled once per combination of argument shapes and dtypes.

        Inside a region that is already being compiled (a loop body calling the gradient),
        the plain function is traced instead, so that dynamo inlines it into one graph.
        """
        torch = self._torch
        where = (str(self.device), *what)

        def make() -> Callable[..., Any]:
            compiled_by_signature: dict[tuple[Any, ...], Callable[..., Any]] = {}

            def call(*args: Any) -> Any:
                if torch.compiler.is_compiling():
                    return function(*args)
                signature = tuple(
                    (tuple(leaf.shape), leaf.dtype) if isinstance(leaf, torch.Tensor) else leaf
                    for leaf in tree_leaves(args)
                )
                compiled = compiled_by_signature.get(signature)
                if compiled is not None:
                    return compiled(*args)
                with warnings.catch_warnings():
                    # torch.compile imports parts of torch that use torch.jit.script_method,
                    # which torch 2.13 itself deprecates: torch's warning about torch.
                    warnings.filterwarnings(
                        "ignore",
                        message=r"`torch\.jit\.script(_method)?` is deprecated",
                        category=DeprecationWarning,
                    )
                    compiled = torch.compile(_own_code(function), dynamic=False)
                    result = compiled(*args)  # the first call compiles
                compiled_by_signature[signature] = compiled
                return result

            return call

        # The same function object for the same problem (or loop body): a loop body built
        # around it then compares equal, and its compilations are found again.
        return _COMPILED.get(where, make)

    def describe(self) -> dict[str, Any]:
        """As the torch engine, with ``torch_compile`` true."""
        return {**super().describe(), "torch_compile": True}


class TorchForwardEngine(TorchEngine):
    """The torch engine in forward mode: gradients and Jacobians by ``torch.func.jacfwd``.

    One forward-mode pass (a JVP) per parameter element, vectorised by ``vmap``: cheaper
    than reverse mode when a function has more outputs than inputs, dearer for a scalar loss
    of many parameters. The JVPs run in chunks of the one-hot basis, one chunk after
    another, so that memory stays bounded whatever the number of parameters
    (``gradlab.engines._forward.chunk_size``). JVPs, VJPs and Hessian-vector products are
    the torch engine's. Registered as ``"torch-fwd"``; opt-in in comparisons.

    An operation torch has no forward-mode derivative for is a
    [`NotSupported`][gradlab.NotSupported] naming it and what to do; the gradient never
    falls back to reverse mode, which would compare the torch engine with itself.

    Args:
        device: As for [`TorchEngine`][gradlab.engines.TorchEngine].
    """

    name = "torch-fwd"
    #: How this engine builds Jacobians: forward mode (as ``jax-fwd``'s ``mode``).
    mode = "forward"
    _jacobian_transform = "jacfwd"

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``torch.func.jacfwd`` of the loss, in chunks: the gradient in forward mode."""
        jacobian = self.jacobian(_Scalar(problem))

        def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
            value, grads = jacobian(params, data)
            return value.detach(), dict(grads)

        return value_and_grad

    def jacobian(self, problem: AbstractProblem) -> Jacobian:
        """``torch.func.jacfwd`` of the function, with its value: its one-hot tangents
        pushed through in chunks (``_forward.chunk_size``), ``torch.func.vmap`` over a
        chunk of the basis's indices, each tangent made from its index inside the map, so
        that no more than a chunk of the basis is ever held (``jacfwd`` vmaps over all of
        it: n² elements). The same layout and dtype as ``jacfwd``'s."""
        func, xp, output = importlib.import_module("torch.func"), self.xp, checked_output(problem)
        transforming, torch = self._transforming, self._torch
        #: Bytes of one pass's values, by the shapes and dtypes of the arguments.
        estimates: dict[tuple[Any, ...], int] = {}

        def jacobian(params: Params, data: Data) -> tuple[Tree, Tree]:
            params = dict(params)

            def function(point: Params) -> Tree:
                return output(point, data, xp)

            signature = tuple(
                (tuple(leaf.shape), leaf.dtype, leaf.device)
                for leaf in _tensors(torch, params, data)
            )
            try:
                with transforming():
                    if signature not in estimates:
                        value, estimates[signature] = _counted(torch, function, params, data)
                    else:
                        with torch.no_grad():
                            value = function(params)
                    full = _jacfwd(torch, func, function, params, estimates[signature])
            except Exception as error:
                raise_if_refused(error, "torch.func.jacfwd (forward mode)", _REVERSE)
                raise
            return value, _in_dtype(full, _float_dtype(params, torch))

        return jacobian

    def describe(self) -> dict[str, Any]:
        """As the torch engine, with the mode."""
        return {**super().describe(), "mode": "forward (torch.func.jacfwd)"}


class TorchFuncEngine(TorchEngine):
    """The torch engine's gradient by ``torch.func.grad_and_value``: no tape state at all.

    ``torch.autograd`` (the ``torch`` engine) records a graph on tensors that require grad
    and walks it back; ``torch.func`` transforms the function itself, as jax does, so
    gradients compose with ``vmap`` (per-example gradients), ``jvp`` and ``jacrev``/
    ``jacfwd`` without any tensor ever requiring grad. Both must give the same numbers;
    which is faster depends on the problem's size (``benchmarks/``). Per-example gradients,
    Jacobians, JVPs, VJPs and Hessian-vector products are ``torch.func`` in both engines.
    Registered as ``"torch-func"``; opt-in in comparisons.

    Args:
        device: As for [`TorchEngine`][gradlab.engines.TorchEngine].
    """

    name = "torch-func"

    def value_and_grad(self, problem: AbstractProblem) -> ValueAndGrad:
        """``torch.func.grad_and_value`` of the loss."""
        func, xp, loss = importlib.import_module("torch.func"), self.xp, checked_loss(problem)
        transform = func.grad_and_value(lambda params, data: loss(params, data, xp))
        torch, transforming = self._torch, self._transforming

        def value_and_grad(params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
            # torch.func ignores an outer no_grad, not inference mode: leave that only if on.
            if not torch.is_inference_mode_enabled():
                grads, value = transform(dict(params), data)
            else:
                with transforming():
                    grads, value = transform(dict(params), data)
            return value, dict(grads)

        return value_and_grad

    def describe(self) -> dict[str, Any]:
        """As the torch engine, with the mode."""
        return {**super().describe(), "mode": "functional (torch.func.grad_and_value)"}


class _Scalar(AbstractProblem):
    """A problem seen through ``checked_loss`` where ``checked_output`` would look: the
    Jacobian of its loss is its gradient, and a loss that is not a scalar is refused."""

    def __init__(self, problem: AbstractProblem) -> None:
        self.problem, self.name = problem, problem.name

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        return checked_loss(self.problem)(params, data, xp)


#: What to do where ``torch-fwd``'s forward mode refuses an operation that reverse mode takes.
_REVERSE = "use engine 'torch', which differentiates in reverse mode"


def _jacfwd(
    torch: Any, func: Any, function: Callable[[Params], Tree], params: Params, intermediates: int
) -> Tree:
    """The Jacobian of ``function`` at ``params`` as ``torch.func.jacfwd`` lays it out, its
    JVPs in chunks of ``_forward.chunk_size`` (``intermediates``: bytes of one pass's
    values)."""
    leaves = list(params.values())
    sizes = [leaf.numel() for leaf in leaves]
    count = sum(sizes)
    itemsize = max((leaf.element_size() for leaf in leaves), default=1)
    chunk = _forward.chunk_size(count, itemsize, intermediates, _forward.CHUNK_BYTES["torch"])
    device = leaves[0].device if leaves else None
    positions = torch.arange(count, device=device)

    def column(index: Any) -> Tree:
        hot = torch.split(positions == index, sizes)
        tangent = {
            name: part.reshape(leaf.shape).to(leaf.dtype)
            for (name, leaf), part in zip(params.items(), hot, strict=True)
        }
        return func.jvp(function, (params,), (tangent,))[1]

    pushed = func.vmap(column)
    columns = pushed(positions[:chunk])
    if chunk < count:
        # The chunks' columns written into buffers made once, not kept and concatenated
        # (``vmap``'s ``chunk_size``): a small tensor kept after each chunk's large ones
        # fragments glibc's heap, which held 1.7 GB at n = 20,000 where this holds 0.3.
        buffers = tree_map(lambda first: first.new_empty((count, *first.shape[1:])), columns)

        def write(start: int, part: Tree) -> None:
            tree_map(lambda buffer, leaf: buffer[start : start + chunk].copy_(leaf), buffers, part)

        write(0, columns)
        for start in range(chunk, count, chunk):
            write(start, pushed(positions[start : start + chunk]))
        columns = buffers

    def unstacked(stacked: Array) -> dict[str, Array]:
        """One output's columns (n, *out) as jacfwd lays them out: (*out, *param) per leaf."""
        rows = stacked.movedim(0, -1)
        parts = torch.split(rows, sizes, dim=-1)
        return {
            name: part.reshape((*rows.shape[:-1], *leaf.shape))
            for (name, leaf), part in zip(params.items(), parts, strict=True)
        }

    return tree_map(unstacked, columns)


def _counted(
    torch: Any, function: Callable[[Params], Tree], params: Params, data: Data
) -> tuple[Tree, int]:
    """``function(params)``, and the bytes of the tensors its pass made (those that share
    a storage counted once; the arguments not at all): a JVP holds a tangent of each one's
    shape. An upper bound: many are freed before the pass ends. Counted by a dispatch mode
    that sees every operation, there being no allocator statistics on the CPU."""
    mode: Any = importlib.import_module("torch.utils._python_dispatch").TorchDispatchMode
    seen = {_storage(leaf)[0] for leaf in _tensors(torch, params, data)}
    made = [0]

    class Counting(mode):  # type: ignore[misc]  # torch's class, imported on first use
        def __torch_dispatch__(
            self, operation: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            out = operation(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    where, size = _storage(leaf)
                    if where not in seen:
                        seen.add(where)
                        made[0] += size
            return out

    with torch.no_grad(), Counting():
        value = function(params)
    return value, made[0]


def _storage(tensor: Any) -> tuple[int, int]:
    """Where a tensor's memory starts, and its bytes (the whole storage where it has one)."""
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, nested)
        return id(tensor), tensor.numel() * tensor.element_size()


def _tensors(torch: Any, *trees: Any) -> list[Any]:
    """The tensors among the leaves of ``trees``."""
    return [leaf for leaf in tree_leaves(trees) if isinstance(leaf, torch.Tensor)]


def _unrolled(
    step: Step, count: int, stack: Callable[..., Any], carry: Carry, data: Data
) -> tuple[Carry, tuple[Array, ...]]:
    """``count`` steps of the loop body, for one compiled graph: the last carry, and each
    output stacked over the steps."""
    outputs = []
    for _ in range(count):
        carry, out = step(carry, data)
        outputs.append(out)
    return carry, tuple(stack(column) for column in zip(*outputs, strict=True))


def _in_dtype(tree: Tree, dtype: Any) -> Tree:
    """Derivatives in the parameters' dtype. Why: ``torch.func.jacfwd`` (torch 2.13) computes
    the tangent of a product with a Python float (``0.5 * mean(r²)``) in float64 even for
    float32 inputs; its values are right, its dtype is not what was asked for."""
    return tree_map(lambda leaf: leaf.to(dtype) if leaf.dtype != dtype else leaf, tree)


def _one_row(row: Data) -> Data:
    """One row of data (as ``vmap`` hands it) as a batch of one: the leading axis restored."""
    return {name: value[None] for name, value in row.items()}


def _checked_device(torch: Any, device: object) -> Any:
    """``device`` as a ``torch.device`` this build can compute on, or an error naming it."""
    if not isinstance(device, (str, torch.device)):
        raise ArgumentTypeError("device", f"must be a device name such as 'cpu', got {device!r}")
    try:
        checked = torch.device(device)
        if checked.type == "meta":
            raise ArgumentError(
                "device", "'meta' tensors hold no values: gradlab cannot compute on it"
            )
        torch.empty(1, device=checked) + 1  # a build without that device fails here
    except ArgumentError:
        raise
    except Exception as error:  # AssertionError on a CPU build asked for CUDA, RuntimeError, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArgumentError("device", f"torch cannot use device {device!r}: {message}") from None
    return checked


def _float_dtype(tree: Any, torch: Any) -> Any:
    """The dtype of the first floating-point tensor in ``tree`` (torch's default if none)."""
    return float_dtype(
        tree, importlib.import_module("array_api_compat.torch"), torch.get_default_dtype()
    )


def _own_code(function: Callable[..., Any]) -> Callable[..., Any]:
    """A trampoline to ``function`` with a code object of its own.

    torch.compile keeps its compilations per *code object* and, after ``recompile_limit`` (8)
    of them, silently runs the function uncompiled. A benchmark over sizes and dtypes needs
    more than 8 for one problem, so each shape and dtype gets its own code object (and its
    own cache) rather than gradlab raising torch's global limit.
    """

    def trampoline(*args: Any) -> Any:
        return function(*args)

    code = trampoline.__code__.replace()
    return types.FunctionType(
        code, trampoline.__globals__, "trampoline", None, trampoline.__closure__
    )
