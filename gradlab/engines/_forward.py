"""When forward mode meets an operation it cannot differentiate: say which, and what to do.

Forward mode (a Jacobian-vector product) runs under every Hessian-vector product of the
torch and jax engines (forward-over-reverse: the JVP of the gradient) and under the
gradients of ``torch-fwd`` and ``jax-fwd`` (``jacfwd``). Frameworks lack forward-mode
derivatives for some operations: torch for fused kernels (the flash kernel of
``scaled_dot_product_attention``, ``grid_sample``, ``cdist``) and for a
``torch.autograd.Function`` without ``jvp``; jax for every ``jax.custom_vjp`` function and
for ``jax.pure_callback``. Their errors name a kernel and stop there.

This module is the one home of that knowledge. [`refusal`][gradlab.engines._forward.refusal]
reads such an error: the operation, where the user's code called it, and what to do about
it. ``raise_if_refused`` turns it into a
[`ForwardModeUnsupported`][gradlab.ForwardModeUnsupported] (a
[`NotSupported`][gradlab.NotSupported]) that says all three. For a Hessian-vector product,
[`falling_back`][gradlab.engines._forward.falling_back] takes reverse-over-reverse instead
(the gradient of ⟨∇L, v⟩, which is H·v because a Hessian is symmetric: the same quantity,
to round-off) and notes it; a comparison collects the notes of the engines it runs
([`noting`][gradlab.engines._forward.noting]) and prints them beside the table.

It is also the one home of how many JVPs the forward-mode engines run at once
([`chunk_size`][gradlab.engines._forward.chunk_size]): a gradient or Jacobian by forward
mode is one JVP per parameter element, pushed through in chunks of the one-hot basis so
that memory stays bounded whatever the number of parameters.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gradlab._errors import ForwardModeUnsupported, first_line

if TYPE_CHECKING:
    from gradlab.engines._protocol import HVP, Array, Data, Params


@dataclass(frozen=True)
class Refusal:
    """What a framework's forward mode refused, read from its error.

    Attributes:
        framework: ``"torch"`` or ``"jax"``.
        operation: The operation, as the framework names it.
        advice: What to do about this operation (``""`` when nothing particular is known).
        reverse: Whether reverse mode differentiates it (first order at least), so that a
            reverse-mode engine, or reverse-over-reverse, may succeed where forward mode
            failed.
        where: Where the user's code called it, or ``None``.
    """

    framework: str
    operation: str
    advice: str
    reverse: bool
    where: str | None = None


@dataclass(frozen=True)
class _Rule:
    """One framework message that means "no forward mode for this operation"."""

    framework: str
    pattern: re.Pattern[str]
    #: The operation, from the match (a kernel's name is in the message).
    operation: Callable[[re.Match[str]], str]
    advice: str
    reverse: bool


_CALLBACKS = {"Pure": "jax.pure_callback", "IO": "jax.experimental.io_callback"}

_RULES = (
    # torch's generated code for every ATen kernel without a forward formula.
    _Rule(
        "torch",
        re.compile(r"Trying to use forward AD with (?P<op>[\w.:]+) that does not support it"),
        lambda match: match["op"],
        "",
        True,
    ),
    _Rule(
        "torch",
        re.compile(r"You must implement the jvp function for custom autograd\.Function"),
        lambda match: "a torch.autograd.Function without a jvp",
        "give the Function a jvp staticmethod (torch's 'Extending torch.func with "
        "autograd.Function')",
        True,
    ),
    # An old-style Function (forward takes ctx): torch.func refuses it in any mode, while
    # torch.autograd differentiates it.
    _Rule(
        "torch",
        re.compile(r"must override the setup_context staticmethod"),
        lambda match: "a torch.autograd.Function without setup_context",
        "give the Function a setup_context staticmethod and a jvp (torch's 'Extending "
        "torch.func with autograd.Function')",
        True,
    ),
    _Rule(
        "jax",
        re.compile(r"can't apply forward-mode autodiff \(jvp\) to a custom_vjp function"),
        lambda match: "a jax.custom_vjp function",
        "define its derivative with jax.custom_jvp instead, which forward and reverse mode "
        "both use",
        True,
    ),
    # MLX's primitives without a forward-mode rule (a scatter: the derivative of a gather).
    _Rule(
        "mlx",
        re.compile(r"\[(?P<op>\w+)\] JVP not yet implemented"),
        lambda match: f"mlx's {match['op']}",
        "",
        True,
    ),
    # Reverse mode refuses a callback too (jax derives it from forward mode).
    _Rule(
        "jax",
        re.compile(r"(?P<kind>Pure|IO) callbacks do not support JVP"),
        lambda match: _CALLBACKS[match["kind"]],
        "wrap the callback in a jax.custom_jvp function that gives its derivative",
        False,
    ),
)

#: What to do about particular torch kernels, by a part of their names.
_KERNELS = {
    # The flash, efficient and cuDNN kernels of scaled_dot_product_attention (and of
    # nn.MultiheadAttention, which calls it) have no forward formula, and no double
    # backward either; its math backend, plain matmuls and softmax, has both.
    "scaled_dot_product": "run attention on SDPA's math backend, which has forward-mode "
    "derivatives: in the loss, call the model inside `with torch.nn.attention.sdpa_kernel("
    "torch.nn.attention.SDPBackend.MATH):`",
}


def refusal(error: BaseException) -> Refusal | None:
    """What forward mode refused, if ``error`` (or an error it was raised from) says that a
    framework has no forward-mode derivative for an operation; else ``None``.

    Args:
        error: An exception raised while differentiating in forward mode.

    Returns:
        The operation, the advice for it and where the user's code called it, or ``None``
        for any other error.

    Examples:
        >>> from gradlab.engines._forward import refusal
        >>> refused = refusal(NotImplementedError(
        ...     "Trying to use forward AD with grid_sampler_2d that does not support it"))
        >>> refused.framework, refused.operation, refused.reverse
        ('torch', 'grid_sampler_2d', True)
        >>> refusal(ValueError("shapes do not match")) is None
        True
    """
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        for rule in _RULES:
            match = rule.pattern.search(text)
            if match is not None:
                operation = rule.operation(match)
                advice = rule.advice or _kernel_advice(operation)
                return Refusal(rule.framework, operation, advice, rule.reverse, _called_at(error))
        seen = seen.__cause__
    return None


def _kernel_advice(operation: str) -> str:
    return next((advice for part, advice in _KERNELS.items() if part in operation), "")


def unsupported(
    refused: Refusal, transform: str, instead: str = "", also: str = ""
) -> ForwardModeUnsupported:
    """The error that says what forward mode refused, where, and what to do.

    Args:
        refused: What was refused ([`refusal`][gradlab.engines._forward.refusal]).
        transform: What refused it, in words: ``"torch.func.jacfwd (forward mode)"``.
        instead: Another way, after the operation's own advice: ``"take the gradient in
            reverse mode with engine 'torch'"``.
        also: What else was tried and failed, as a clause: ``"and reverse-over-reverse
            failed too (...)"``.

    Returns:
        A [`ForwardModeUnsupported`][gradlab.ForwardModeUnsupported].
    """
    at = f", called in {refused.where}" if refused.where else ""
    lacks = (
        "forward-mode derivative" if refused.reverse else "derivative, in forward or reverse mode,"
    )
    fixes = [fix for fix in (refused.advice, instead) if fix]
    fix = "; or ".join(fixes) if fixes else "write that step with operations that have one"
    message = (
        f"{transform} cannot differentiate {refused.operation}{at}: {refused.framework} has "
        f"no {lacks} for it{f', {also}' if also else ''}. To fix: {fix}."
    )
    return ForwardModeUnsupported(
        message,
        framework=refused.framework,
        operation=refused.operation,
        where=refused.where,
        advice=refused.advice,
    )


def raise_if_refused(error: Exception, transform: str, instead: str = "") -> None:
    """Raise [`unsupported`][gradlab.engines._forward.unsupported] from ``error`` if it is a
    forward-mode refusal; else return, for the caller to re-raise ``error`` as it is.

    ``instead`` is offered only where reverse mode can do what forward mode could not.
    Called from an ``except`` block, so that a call that succeeds costs nothing.
    """
    refused = refusal(error)
    if refused is not None:
        raise unsupported(refused, transform, instead if refused.reverse else "") from error


# -- Hessian-vector products: reverse-over-reverse where forward mode refuses ---------------

#: The notes of the comparison running in this context (``noting``), or ``None``.
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "gradlab_forward_notes", default=None
)


@contextlib.contextmanager
def noting() -> Iterator[list[str]]:
    """Collect, in order and each once, the notes of the fallbacks taken inside the block.

    Yields:
        The list the notes are added to (``"HVP by reverse-over-reverse (forward mode
        unsupported by grid_sampler_2d)"``).

    Examples:
        >>> from gradlab.engines._forward import noting
        >>> with noting() as notes:
        ...     pass  # an engine's Hessian-vector products, say
        >>> notes
        []
    """
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def _note(text: str) -> None:
    notes = _NOTES.get()
    if notes is not None and text not in notes:
        notes.append(text)


def falling_back(forward: HVP, reverse: HVP, forward_how: str, reverse_how: str) -> HVP:
    """A Hessian-vector product by ``forward``, or by ``reverse`` where forward mode refuses
    an operation of the loss, noted.

    ``reverse`` (reverse-over-reverse, the gradient of ⟨∇L, v⟩) is H·v as ``forward``
    (forward-over-reverse, the JVP of ∇L along v) is, wherever the Hessian is symmetric
    (the second derivatives continuous), to round-off: a fallback that changes how, never
    what. Once taken it is kept for this function (the refusal would recur), and every call
    notes it (``noting``). Where it fails too, the error says both.

    Args:
        forward: Forward-over-reverse.
        reverse: Reverse-over-reverse.
        forward_how: ``forward`` in words (``"torch.func.jvp of torch.func.grad"``).
        reverse_how: ``reverse`` in words (``"torch.autograd.grad twice"``).

    Returns:
        The Hessian-vector product, ``(params, tangent, data) -> H·tangent``.
    """
    taken: list[str] = []  # the note, once reverse-over-reverse is taken
    transform = f"A Hessian-vector product by forward-over-reverse ({forward_how})"
    instead = (
        "compare Hessian-vector products with engine 'fd' (finite differences; a "
        "NativeProblem needs a numpy= implementation for it)"
    )

    def hvp(params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        if taken:
            _note(taken[0])
            return reverse(params, tangent, data)
        try:
            return forward(params, tangent, data)
        except Exception as error:
            refused = refusal(error)
            if refused is None:
                raise
            if not refused.reverse:  # reverse mode refuses it too: nothing to fall back to
                raise unsupported(refused, transform, instead) from error
            try:
                product = reverse(params, tangent, data)
            except Exception as second:
                also = f"and reverse-over-reverse ({reverse_how}) failed too: {first_line(second)}"
                raise unsupported(refused, transform, instead, also) from error
        taken.append(
            f"HVP by reverse-over-reverse (forward mode unsupported by {refused.operation})"
        )
        _note(taken[0])
        return product

    return hvp


# -- Gradients and Jacobians by forward mode: the basis in chunks ------------------------------

#: The bytes one chunk of JVPs may hold (its one-hot tangents and, per JVP, the tangents of
#: one pass's intermediates), by framework: what bounds a forward-mode gradient's memory
#: beside the function's own, whatever the number of parameters (roughly: the tangent
#: formulas' temporaries are not counted; torch-fwd's chunks were seen to take up to 3× it).
#: Two values because a chunk
#: runs two ways. jax-fwd's chunks are iterations of one compiled loop, which cost nothing
#: apart from their arithmetic, and that runs fastest on chunks a CPU's caches hold:
#: LogSumExp in float64 on 2 busy cores took 0.22, 0.15, 0.26 and 0.41 s a gradient at
#: n = 10⁴ with 1, 4, 16 and 64 MiB, and 5.4, 4.5, 4.2 and 9.4 s at n = 40,000. torch-fwd's
#: chunks are ~30 eager kernels each, whose dispatch a small chunk pays too often: 15 s at
#: n = 10⁴ with 16 MiB, 7 with 64 or 256 (``jacfwd``'s whole basis: 7 s in 2.5 GB). Measured
#: on the CPU only. Read at each call: tests shrink them to force many chunks.
CHUNK_BYTES = {"jax": 4 << 20, "torch": 64 << 20}


def chunk_size(count: int, itemsize: int, intermediates: int, budget: int) -> int:
    """How many of the ``count`` one-hot tangents of a forward-mode Jacobian to push
    through the function at once (vectorised), the chunks running one after another.

    One JVP holds its tangent (``count`` elements) and a tangent for each intermediate value
    of the function, of that value's shape: so a chunk of C JVPs holds about
    C·(count·itemsize + intermediates) bytes, kept within ``budget``. All ``count`` at once
    when they fit (one chunk, as ``jacfwd``), one at a time at the least.

    Args:
        count: The parameter elements: one JVP each.
        itemsize: Bytes of one element of a tangent (the parameters' largest).
        intermediates: Bytes of the values one pass of the function computes, as the
            engine estimates them (an upper bound: all of them, as if none were freed).
        budget: The bytes a chunk may hold: the framework's entry of
            [`CHUNK_BYTES`][gradlab.engines._forward.CHUNK_BYTES].

    Returns:
        The chunk's number of JVPs, from 1 to ``count`` (1 when ``count`` is 0).

    Examples:
        >>> from gradlab.engines._forward import chunk_size
        >>> chunk_size(300, 8, 4_800, budget=4 << 20)  # LogSumExp, n = 300: one chunk
        300
        >>> chunk_size(40_000, 8, 640_032, budget=4 << 20)  # n = 40,000: 4 JVPs a chunk
        4
    """
    per_jvp = max(count * itemsize + intermediates, 1)
    return max(1, min(count, budget // per_jvp))


# -- Where the user's code called the operation ------------------------------------------------


def _called_at(error: BaseException) -> str | None:
    """The innermost frame of ``error``'s traceback outside gradlab, the frameworks and
    Python's own library (the user's loss or model), as ``"name at file.py:12 (`line`)"``."""
    stdlib, packages = _library_dirs()
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        filename = os.path.abspath(frame.filename)
        if filename.startswith(packages):
            continue
        # A system Python keeps third-party packages (flax, the user's own) inside its
        # standard library's directory: those are the user's calls, the rest Python's.
        inside = filename.removeprefix(stdlib)
        if inside != filename and not inside.startswith(("site-packages", "dist-packages")):
            continue
        line = (frame.line or "").strip()
        source = f" (`{line}`)" if line else ""
        return f"{frame.name} at {os.path.basename(frame.filename)}:{frame.lineno}{source}"
    return None


#: Packages whose frames are never the user's call: gradlab, the frameworks and what they
#: run through.
_LIBRARIES = ("gradlab", "torch", "functorch", "jax", "jaxlib", "array_api_compat", "numpy")


def _library_dirs() -> tuple[str, tuple[str, ...]]:
    """The standard library's directory, and those of gradlab and the frameworks imported."""
    stdlib = os.path.dirname(os.path.abspath(contextlib.__file__)) + os.sep
    packages = []
    for name in _LIBRARIES:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            packages.append(os.path.dirname(os.path.abspath(file)) + os.sep)
    return stdlib, tuple(packages)
