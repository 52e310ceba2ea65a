"""One model written natively in several frameworks: each engine runs its own framework's code.

A [`Problem`][gradlab.Problem] is one loss written against ``xp``, so every engine
differentiates the *same* code. A [`NativeProblem`][gradlab.NativeProblem] is the question
users more often have: the same function written with ``torch`` ops (or an ``nn.Module``),
with ``jax.numpy`` (or a Flax-style ``apply``), and maybe by hand in NumPy. Each engine
differentiates its own framework's implementation, so a comparison says whether the
*implementations* agree, not only whether the autodiff does.

Parameters have one canonical structure (what ``init`` is, what reports name). Where an
implementation lays them out differently (torch's ``Linear.weight`` is ``(out, in)``, a JAX
dense kernel ``(in, out)``), a [`Layout`][gradlab.Layout] declares the mapping once; it is
applied inside the differentiated function, so every engine's gradient comes back in the
canonical layout.
"""

from __future__ import annotations

import contextlib
import importlib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from gradlab._checks import META_DEVICE, Shapes, check_shapes
from gradlab._errors import ArgumentError, ArgumentTypeError, NotSupported
from gradlab._tap import tap, tapping
from gradlab._tree import flatten, parse_path, path
from gradlab.problems._base import (
    AbstractProblem,
    Array,
    check_reduction,
    missing_hand_gradient,
    missing_hand_hvp,
)

Implementation = Callable[[Any, Any], Array]


def framework_of(xp: Any) -> str:
    """The framework an array namespace belongs to: ``"numpy"``, ``"torch"``, ``"jax"``, ...

    Read from the namespace's module name, without importing anything
    (``array_api_compat.torch`` is torch's), or from its ``gradlab_framework`` attribute,
    where gradlab adapts a framework's namespace itself (TensorFlow's).
    """
    declared = getattr(xp, "gradlab_framework", None)
    if isinstance(declared, str):
        return declared
    name = str(getattr(xp, "__name__", type(xp).__module__))
    return name.removeprefix("array_api_compat.").partition(".")[0]


class Layout:
    """How one implementation's parameters are laid out, given the canonical ones.

    The implementation receives a flat dict ``{native name: array}`` (what
    ``torch.func.functional_call`` takes). Each native array is one canonical parameter,
    named by its path (``"layers[0].kernel"``), with its axes permuted or not. The mapping
    must use every canonical parameter exactly once, and is applied inside the function an
    engine differentiates, so gradients come back in the canonical layout.

    Args:
        mapping: ``{native name: canonical path}``, or ``{native name: (canonical path,
            axes)}`` where ``axes`` permutes the canonical array's axes (``(1, 0)``: a
            transpose). Paths are written as reports write them (``"layers[0].kernel"``; a
            key with dots in brackets: ``"['fc.kernel']"``).
        shapes: Optionally, each native parameter's shape: a tuple of non-negative ints by
            native name (``{"0.weight": (8, 4)}``; nested mappings join names with dots,
            ``{"0": {"weight": (8, 4)}}``), checked against the canonical shapes permuted
            (see [`torch_module`][gradlab.torch_module]).

    Raises:
        ArgumentTypeError: ``mapping`` is not a non-empty mapping, or ``shapes`` not a
            mapping of shapes.
        ArgumentError: a source that is not a path, axes that are not a permutation, a
            canonical parameter used twice, a negative size, or ``shapes`` naming other
            parameters than ``mapping``.

    Examples:
        >>> import numpy as np, gradlab
        >>> layout = gradlab.Layout({"fc.weight": ("fc.kernel", (1, 0)), "fc.bias": "fc.bias"})
        >>> native = layout.to_native({"fc": {"kernel": np.ones((3, 2)), "bias": np.zeros(2)}}, np)
        >>> native["fc.weight"].shape
        (2, 3)
    """

    def __init__(
        self,
        mapping: Mapping[str, str | tuple[str, Sequence[int]]],
        *,
        shapes: Shapes | None = None,
    ) -> None:
        if not isinstance(mapping, Mapping) or not mapping:
            raise ArgumentTypeError(
                "mapping", f"must be a non-empty mapping from native name to path, got {mapping!r}"
            )
        self.mapping: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        for native, spec in mapping.items():
            if not isinstance(native, str):
                raise ArgumentTypeError("mapping", f"native names must be strings, got {native!r}")
            source, axes = (spec, None) if isinstance(spec, str) else _pair(native, spec)
            self.mapping[native] = (_canonical(native, source), axes)
        sources = [source for source, _ in self.mapping.values()]
        repeated = sorted({source for source in sources if sources.count(source) > 1})
        if repeated:
            raise ArgumentError("mapping", f"uses canonical parameter(s) {repeated} more than once")
        self.shapes = None if shapes is None else check_shapes(shapes, "shapes", paths=False)
        if self.shapes is not None and set(self.shapes) != set(self.mapping):
            raise ArgumentError(
                "shapes",
                f"names {sorted(self.shapes)}, but the mapping names {sorted(self.mapping)}",
            )

    def to_native(self, params: Any, xp: Any) -> dict[str, Array]:
        """The implementation's parameters from canonical ones (arrays of namespace ``xp``).

        The parameters are not checked here (this runs inside every differentiated call):
        entry points check them first, with [`check`][gradlab.Layout.check].
        """
        flat = flatten(params)[0]
        native = {}
        for name, (source, axes) in self.mapping.items():
            value = flat[source]
            native[name] = value if axes is None else xp.permute_dims(value, axes)
        return native

    def check(self, flat: Mapping[str, Any], argument: str = "init") -> None:
        """Refuse canonical parameters (by path) that do not fit this layout.

        Raises:
            ArgumentError: the canonical parameters are not those the mapping uses, or a
                shape differs from the declared native one (naming ``argument``).
        """
        used = {source for source, _ in self.mapping.values()}
        missing, unused = sorted(used - set(flat)), sorted(set(flat) - used)
        if missing or unused:
            parts = [f"lacks {missing}" if missing else "", f"has {unused}" if unused else ""]
            raise ArgumentError(
                argument,
                f"does not fit the layout: it {' and '.join(p for p in parts if p)}, while the "
                f"layout maps {sorted(used)}",
            )
        for name, (source, axes) in self.mapping.items():
            shape = tuple(np.shape(flat[source]))
            if axes is not None:
                # Checked with or without declared shapes: the permutation itself needs it.
                if len(axes) != len(shape):
                    raise ArgumentError(
                        argument,
                        f"{source!r} has {len(shape)} axes; the layout permutes {len(axes)} "
                        f"for {name!r}",
                    )
                shape = tuple(shape[axis] for axis in axes)
            if self.shapes is not None and shape != self.shapes[name]:
                raise ArgumentError(
                    argument,
                    f"{source!r} gives {name!r} the shape {shape}, but the implementation's "
                    f"{name!r} has shape {self.shapes[name]}",
                )

    def __repr__(self) -> str:
        return f"Layout({self.mapping!r})"


def _pair(native: object, spec: object) -> tuple[str, tuple[int, ...]]:
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], (tuple, list))
        and all(isinstance(axis, numbers.Integral) for axis in spec[1])
        and not any(isinstance(axis, (bool, np.bool_)) for axis in spec[1])
        and sorted(spec[1]) == list(range(len(spec[1])))
    ):
        return spec[0], tuple(int(axis) for axis in spec[1])
    raise ArgumentError(
        f"mapping[{native!r}]",
        f"must be a path or (path, axes) with axes a permutation, got {spec!r}",
    )


def _canonical(native: object, source: str) -> str:
    """``source`` in the spelling flattening gives paths (``"fc['kernel']"``: ``"fc.kernel"``),
    so that it names the canonical parameter whatever way it was written."""
    try:
        return path(parse_path(source))
    except ValueError as error:
        raise ArgumentError(
            f"mapping[{native!r}]",
            f"is not a canonical parameter's path ({error}); a key with dots, brackets or "
            "quotes is written in brackets: \"['fc.kernel']\"",
        ) from None


class NativeProblem(AbstractProblem):
    """One function, implemented natively in several frameworks; each engine runs its own.

    Each implementation is ``loss(params, data) -> scalar``, written with its framework's
    own ops: the ``torch`` one receives torch tensors, the ``jax`` one jax arrays, the
    ``numpy`` one NumPy arrays, in the structure of the parameters (or as a flat dict in
    the implementation's own layout, when ``layouts`` gives one). The ``torch`` engines
    differentiate the torch implementation, ``jax`` the jax one, ``fd`` the NumPy one,
    and ``numpy`` runs the hand-derived gradient.

    Args:
        name: A short name for tables and messages.
        value_and_grad: Optional hand-derived ``(params, data) -> (loss, grads)`` in NumPy.
        hvp: Optional hand-derived ``(params, tangent, data) -> H·tangent`` in NumPy.
        params: Optional shapes of the canonical parameters, by path
            (``{"layers[0].kernel": (4, 8)}``) or nested as ``init`` is
            (``{"embed": {"kernel": (4, 8)}}``).
        layouts: Optional ``{framework: Layout}``: how that implementation's parameters are
            laid out (see [`Layout`][gradlab.Layout]).
        reduction: ``"mean"`` or ``"sum"`` when every implementation is the mean or the
            sum over rows of one loss per row (see [`Problem`][gradlab.Problem]); else
            ``None``.
        **implementations: The implementations, by framework: ``torch=``, ``jax=``,
            ``numpy=`` (and any framework a plug-in engine's namespace belongs to).

    Raises:
        ArgumentError: no implementation, one that is not callable, or a layout for a
            framework without one.
    """

    probe = False

    def __init__(
        self,
        *,
        name: str = "problem",
        value_and_grad: Callable[..., Any] | None = None,
        hvp: Callable[..., Any] | None = None,
        params: Shapes | None = None,
        layouts: Mapping[str, Layout] | None = None,
        reduction: str | None = None,
        **implementations: Implementation,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ArgumentError("name", f"must be a non-empty string, got {name!r}")
        if not implementations and value_and_grad is None:
            raise ArgumentError(
                "implementations", "give at least one (torch=..., jax=..., numpy=...)"
            )
        for framework, function in implementations.items():
            if not callable(function):
                raise ArgumentTypeError(framework, f"must be callable, got {function!r}")
        for argument, hand in (("value_and_grad", value_and_grad), ("hvp", hvp)):
            if hand is not None and not callable(hand):
                raise ArgumentTypeError(argument, f"must be callable or None, got {hand!r}")
        layouts = dict(layouts or {})
        for framework, layout in layouts.items():
            if framework not in implementations:
                raise ArgumentError(
                    "layouts", f"has a layout for {framework!r}, which has no implementation"
                )
            if not isinstance(layout, Layout):
                raise ArgumentTypeError(
                    f"layouts[{framework!r}]", f"must be a gradlab.Layout, got {layout!r}"
                )
        self.name = name
        self.implementations = dict(implementations)
        self.layouts = layouts
        self._value_and_grad = value_and_grad
        self._hvp = hvp
        self.has_hand_gradient = value_and_grad is not None
        self.has_hand_hvp = hvp is not None
        # The NumPy implementation, where there is one, is evaluated once to check ``init``.
        self.probe = "numpy" in implementations and "numpy" not in layouts
        self._shapes = None if params is None else check_shapes(params, "params")
        self.reduction = check_reduction(reduction)

    def check_namespace(self, xp: Any) -> None:
        """Refuse an engine whose framework has no implementation here."""
        framework = framework_of(xp)
        if framework not in self.implementations:
            have = ", ".join(sorted(self.implementations)) or "none"
            raise NotSupported(
                f"problem {self.name!r} has no {framework} implementation (it has: {have}); "
                f"give {framework}=... to NativeProblem"
            )

    def check_params(self, params: Mapping[str, np.ndarray], argument: str) -> None:
        """Refuse parameters that do not fit every implementation's layout."""
        for layout in self.layouts.values():
            layout.check(params, argument)

    def loss(self, params: Any, data: Any, xp: Any) -> Array:
        """The implementation for ``xp``'s framework, on parameters in its layout."""
        self.check_namespace(xp)
        framework = framework_of(xp)
        layout = self.layouts.get(framework)
        native = params if layout is None else layout.to_native(params, xp)
        return self.implementations[framework](native, data)

    def hand_value_and_grad(self, params: Any, data: Any) -> tuple[Array, Any]:
        """The hand-derived gradient (checked at the boundary)."""
        if self._value_and_grad is None:
            raise missing_hand_gradient(self)
        return self._value_and_grad(params, data)  # type: ignore[no-any-return]

    def hand_hvp(self, params: Any, tangent: Any, data: Any) -> Any:
        """The hand-derived Hessian-vector product (checked at the boundary)."""
        if self._hvp is None:
            raise missing_hand_hvp(self)
        return self._hvp(params, tangent, data)

    def param_shapes(self, data: Any) -> Mapping[str, tuple[int, ...]] | None:
        """The declared canonical shapes, if any."""
        return self._shapes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {', '.join(self.implementations)})"


def torch_module(module: Any) -> tuple[Callable[..., Any], dict[str, np.ndarray]]:
    """A ``torch.nn.Module`` as a pure function of its parameters, for a torch implementation.

    Returns ``(apply, params)``: ``apply(params, *inputs)`` runs the module through
    ``torch.func.functional_call`` on the parameters it is given (never on its own, which
    are not read or changed), and ``params`` is a float64 NumPy copy of the module's
    parameters by name (``{"0.weight": ...}``): a starting point, or the shapes a
    [`Layout`][gradlab.Layout] checks against (``Layout(..., shapes=...)``).

    ``apply`` refuses (an ``ArgumentError`` naming ``init``) parameters that are not
    exactly the module's, by name and shape: ``functional_call`` alone would run a
    parameter left out on the module's own value, with no gradient for it, ignore an
    unknown name, and broadcast a wrong shape.

    Raises:
        ArgumentTypeError: not an ``nn.Module``.
        ArgumentError: the module has buffers (``BatchNorm``'s running statistics: state
            that a forward pass changes, so the loss would not be a function of the
            parameters alone), non-floating-point parameters, parameters that do not
            require grad (frozen parameters would be differentiated all the same), or
            parameters on the meta device (shapes without values).

    Examples:
        >>> import torch, gradlab
        >>> apply, params = gradlab.torch_module(torch.nn.Linear(3, 2))
        >>> {name: value.shape for name, value in params.items()}
        {'weight': (2, 3), 'bias': (2,)}
    """
    torch = importlib.import_module("torch")
    if not isinstance(module, torch.nn.Module):
        raise ArgumentTypeError("module", f"must be a torch.nn.Module, got {module!r}")
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise ArgumentError(
            "module",
            f"has buffers {buffers}: state a forward pass may change, which a gradient "
            "comparison cannot hold fixed; use a module without them (LayerNorm rather than "
            "BatchNorm), or write the function by hand",
        )
    named = dict(module.named_parameters())
    if not named:
        raise ArgumentError("module", "has no parameters")
    for name, value in named.items():
        if value.is_meta:
            raise ArgumentError("module", f"parameter {name!r} {META_DEVICE}")
        if not value.is_floating_point():
            raise ArgumentError(
                "module", f"parameter {name!r} is {value.dtype}; it must be floating-point"
            )
        if not value.requires_grad:
            raise ArgumentError(
                "module",
                f"parameter {name!r} does not require grad (frozen); gradlab differentiates "
                "every parameter it is given: leave it out of the module, or unfreeze it",
            )
    functional_call = importlib.import_module("torch.func").functional_call
    shapes = {name: tuple(value.shape) for name, value in named.items()}

    def apply(params: Mapping[str, Any], *inputs: Any) -> Any:
        _check_module_params(params, shapes, torch)
        if not tapping():
            return functional_call(module, dict(params), inputs)
        with _tapped(module):
            return functional_call(module, dict(params), inputs)

    # Widened in torch: NumPy has no bfloat16.
    copies = {
        name: value.detach().to("cpu", torch.float64, copy=True).numpy()
        for name, value in named.items()
    }
    return apply, copies


@contextlib.contextmanager
def _tapped(module: Any) -> Iterator[None]:
    """Every submodule's output tapped (``gradlab.tap``), named by its path in ``module``
    (``"blocks.0.attn"``), for the length of one call; the hooks are removed after, so
    the module is left as it was found."""
    handles = [
        submodule.register_forward_hook(
            lambda _module, _inputs, output, name=name: tap(name, output)
        )
        for name, submodule in module.named_modules()
        if name
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_module_params(params: object, shapes: Mapping[str, tuple[int, ...]], torch: Any) -> None:
    """Refuse what ``functional_call`` would take silently: a parameter left out runs on
    the module's own (and gets no gradient), an unknown name is ignored (a zero gradient),
    a wrong shape may broadcast.

    The names ``apply`` is given are ``init``'s (or ``params``'), or those a
    [`Layout`][gradlab.Layout]'s mapping gives them.
    """
    own = ", ".join(map(repr, shapes))
    fix = (
        f"the module's parameters are {own}: give init (or params) exactly these, or a "
        "Layout mapping to exactly these"
    )
    if not isinstance(params, Mapping):
        raise ArgumentTypeError(
            "init", f"init (or params): apply got {type(params).__name__}, not a dict; {fix}"
        )
    missing = [name for name in shapes if name not in params]
    extra = [name for name in params if name not in shapes]
    if missing or extra:
        parts = [
            f"lack {', '.join(map(repr, missing))} (functional_call would run the module's own "
            "values there, and return no gradient for them)"
            if missing
            else "",
            f"include {', '.join(map(repr, extra))}, which the module does not have"
            if extra
            else "",
        ]
        raise ArgumentError(
            "init",
            f"init (or params): the parameters given to the module's apply "
            f"{' and '.join(p for p in parts if p)}; {fix}",
        )
    for name, value in params.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ArgumentTypeError(
                "init",
                f"init (or params): apply got {name!r} as {getattr(value, 'dtype', type(value))}, "
                "not a floating-point torch tensor",
            )
        shape = tuple(value.shape)
        if shape != shapes[name]:
            # A transposed kernel is the usual mix-up between JAX's layout and torch's.
            hint = (
                " (its transpose: map it with axes (1, 0) in a Layout)"
                if len(shape) == 2 and shape[::-1] == shapes[name]
                else ""
            )
            raise ArgumentError(
                "init",
                f"init (or params): apply got {name!r} of shape {shape}; the module's "
                f"{name!r} has shape {shapes[name]}{hint}",
            )
