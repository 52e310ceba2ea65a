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

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gradlab._checks import Shapes, check_shapes
from gradlab._errors import ArgumentError, ArgumentTypeError, NotSupported
from gradlab._tree import Structure, flatten, named_leaves, nest_of_paths, parse_path, path
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

    Two forms. **A mapping** renames, and optionally transposes, one canonical parameter
    per native one: the implementation receives a flat dict ``{native name: array}`` (what
    ``torch.func.functional_call`` takes), and every canonical parameter is used exactly
    once. **A function** ``layout(params, xp)`` builds the implementation's parameters
    from the canonical ones with any array operations of the namespace ``xp``: reshape,
    split by slicing, ``xp.concat``, ``xp.permute_dims``, reorder an LSTM's gates, tie an
    embedding to an output layer (use a parameter twice). It receives the canonical
    parameters in their own structure and returns whatever the implementation takes.

    Either way the layout runs inside the function an engine differentiates, so
    gradients come back in the canonical layout with no inverse to write: a canonical
    parameter used twice gets the sum of both uses' gradients, as it should.

    Args:
        mapping: ``{native name: canonical path}``, or ``{native name: (canonical path,
            axes)}`` where ``axes`` permutes the canonical array's axes (``(1, 0)``: a
            transpose); paths are written as reports write them (``"layers[0].kernel"``;
            a key with dots in brackets: ``"['fc.kernel']"``). Or a function
            ``(params, xp) -> native parameters``.
        shapes: Optionally, each native parameter's shape: a tuple of non-negative ints by
            native name (``{"0.weight": (8, 4)}``; nested mappings join names with dots,
            ``{"0": {"weight": (8, 4)}}``), checked at the boundary, before any engine
            runs: against the canonical shapes permuted (a mapping), or against what the
            function returns for the caller's parameters (a function).

    Raises:
        ArgumentTypeError: ``mapping`` is neither a non-empty mapping nor callable, or
            ``shapes`` not a mapping of shapes.
        ArgumentError: a source that is not a path, axes that are not a permutation, a
            canonical parameter mapped twice, a negative size, or ``shapes`` naming other
            parameters than the mapping.

    Examples:
        >>> import numpy as np, gradlab
        >>> layout = gradlab.Layout({"fc.weight": ("fc.kernel", (1, 0)), "fc.bias": "fc.bias"})
        >>> native = layout.to_native({"fc": {"kernel": np.ones((3, 2)), "bias": np.zeros(2)}}, np)
        >>> native["fc.weight"].shape
        (2, 3)

        A fused query-key-value projection, as torch's ``nn.MultiheadAttention`` holds it,
        from three canonical ``(d, d)`` matrices:

        >>> fused = gradlab.Layout(
        ...     lambda p, xp: {"in_proj_weight": xp.concat([p["q"], p["k"], p["v"]], axis=0)},
        ...     shapes={"in_proj_weight": (12, 4)},
        ... )
        >>> qkv = {name: np.eye(4) for name in "qkv"}
        >>> fused.to_native(qkv, np)["in_proj_weight"].shape
        (12, 4)
    """

    def __init__(
        self,
        mapping: Mapping[str, str | tuple[str, Sequence[int]]] | Callable[[Any, Any], Any],
        *,
        shapes: Shapes | None = None,
    ) -> None:
        self.function: Callable[[Any, Any], Any] | None = None
        self.mapping: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        if callable(mapping) and not isinstance(mapping, Mapping):
            self.function = mapping
        elif not isinstance(mapping, Mapping) or not mapping:
            raise ArgumentTypeError(
                "mapping",
                "must be a non-empty mapping from native name to path, or a function "
                f"(params, xp) -> native parameters, got {mapping!r}",
            )
        else:
            self.mapping = _checked_mapping(mapping)
        self.shapes = None if shapes is None else check_shapes(shapes, "shapes", paths=False)
        declared = set(self.shapes or ())
        if self.function is None and self.shapes is not None and declared != set(self.mapping):
            raise ArgumentError(
                "shapes",
                f"names {sorted(declared)}, but the mapping names {sorted(self.mapping)}",
            )

    def to_native(self, params: Any, xp: Any) -> Any:
        """The implementation's parameters from canonical ones (arrays of namespace ``xp``).

        The parameters are not checked here (this runs inside every differentiated call):
        entry points check them first, with [`check`][gradlab.Layout.check].
        """
        if self.function is not None:
            return self.function(params, xp)
        flat = flatten(params)[0]
        native = {}
        for name, (source, axes) in self.mapping.items():
            value = flat[source]
            native[name] = value if axes is None else xp.permute_dims(value, axes)
        return native

    def check(
        self,
        flat: Mapping[str, Any],
        argument: str = "init",
        structure: Structure | None = None,
        *,
        framework: str = "",
    ) -> None:
        """Refuse canonical parameters (by path) that do not fit this layout.

        A function is run once, on NumPy copies of the parameters in the caller's
        structure (``structure``; else the nest their paths spell), so that a reshape that
        cannot be done, or a native shape that differs from ``shapes``, is named here and
        not deep inside an engine's trace.

        Raises:
            ArgumentError: the canonical parameters are not those the mapping uses, a
                function that fails on them, or a shape that differs from the declared
                native one (naming ``argument``).
        """
        if self.function is not None:
            self._check_function(flat, argument, structure, framework)
            return
        used = {source for source, _ in self.mapping.values()}
        missing, unused = sorted(used - set(flat)), sorted(set(flat) - used)
        if missing or unused:
            raise ArgumentError(
                argument,
                f"does not fit the layout: it {_lacks_has(missing, unused)}, while the "
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

    def _check_function(
        self,
        flat: Mapping[str, Any],
        argument: str,
        structure: Structure | None,
        framework: str,
    ) -> None:
        assert self.function is not None
        which = f"the {framework} layout" if framework else "the layout"
        given = ", ".join(f"{name} {tuple(np.shape(value))}" for name, value in flat.items())
        copies = {name: np.array(value, dtype=np.float64) for name, value in flat.items()}
        params = structure.unflatten(copies) if structure is not None else nest_of_paths(copies)
        try:
            native = self.function(params, np)
        except Exception as error:  # the user's function: any failure is theirs to see
            raise ArgumentError(
                argument,
                f"{which} fails on these parameters ({given}): {type(error).__name__}: {error}",
            ) from error
        try:
            # Named as ``shapes`` names them: nested keys joined with dots ("0.weight").
            shapes = {
                ".".join(map(str, keys)): tuple(np.shape(value))
                for keys, value in named_leaves(native)
            }
        except (TypeError, ValueError) as error:
            raise ArgumentError(
                argument, f"{which} returned {type(native).__name__}, not a nest of arrays: {error}"
            ) from None
        if self.shapes is None:
            return
        missing = sorted(set(self.shapes) - set(shapes))
        extra = sorted(set(shapes) - set(self.shapes))
        if missing or extra:
            raise ArgumentError(
                argument,
                f"{which} gives parameters that {_lacks_has(missing, extra)}; the "
                f"implementation's are {sorted(self.shapes)}",
            )
        for name, shape in shapes.items():
            if shape != self.shapes[name]:
                raise ArgumentError(
                    argument,
                    f"{which} gives {name!r} the shape {shape} from {given}, but the "
                    f"implementation's {name!r} has shape {self.shapes[name]}",
                )

    def __repr__(self) -> str:
        if self.function is not None:
            return f"Layout({getattr(self.function, '__qualname__', self.function)!r})"
        return f"Layout({self.mapping!r})"


def _lacks_has(missing: list[str], extra: list[str]) -> str:
    """``"lacks [...] and has [...]"``, either part left out when empty."""
    parts = [f"lacks {missing}" if missing else "", f"has {extra}" if extra else ""]
    return " and ".join(part for part in parts if part)


def _checked_mapping(
    layout: Mapping[Any, Any],
) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """``{native name: (canonical path, axes or None)}``, each checked."""
    mapping: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for native, spec in layout.items():
        if not isinstance(native, str):
            raise ArgumentTypeError("mapping", f"native names must be strings, got {native!r}")
        source, axes = (spec, None) if isinstance(spec, str) else _pair(native, spec)
        mapping[native] = (_canonical(native, source), axes)
    sources = [source for source, _ in mapping.values()]
    repeated = sorted({source for source in sources if sources.count(source) > 1})
    if repeated:
        raise ArgumentError(
            "mapping",
            f"uses canonical parameter(s) {repeated} more than once; to tie weights, give a "
            "function: Layout(lambda params, xp: {...})",
        )
    return mapping


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
            laid out (see [`Layout`][gradlab.Layout]); a bare function ``(params, xp) ->
            native parameters`` is taken as ``Layout(function)``.
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
        layouts: Mapping[str, Layout | Callable[[Any, Any], Any]] | None = None,
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
        checked: dict[str, Layout] = {}
        for framework, layout in dict(layouts or {}).items():
            if framework not in implementations:
                raise ArgumentError(
                    "layouts", f"has a layout for {framework!r}, which has no implementation"
                )
            if isinstance(layout, Layout):
                checked[framework] = layout
            elif callable(layout) and not isinstance(layout, Mapping):
                checked[framework] = Layout(layout)
            else:
                raise ArgumentTypeError(
                    f"layouts[{framework!r}]",
                    f"must be a gradlab.Layout or a function (params, xp) -> native parameters, "
                    f"got {layout!r}",
                )
        self.name = name
        self.implementations = dict(implementations)
        self.layouts = checked
        self._value_and_grad = value_and_grad
        self._hvp = hvp
        self.has_hand_gradient = value_and_grad is not None
        self.has_hand_hvp = hvp is not None
        # The NumPy implementation, where there is one, is evaluated once to check ``init``.
        self.probe = "numpy" in implementations and "numpy" not in checked
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

    def check_params(
        self,
        params: Mapping[str, np.ndarray],
        argument: str,
        structure: Structure | None = None,
    ) -> None:
        """Refuse parameters that do not fit every implementation's layout."""
        for framework, layout in self.layouts.items():
            layout.check(params, argument, structure, framework=framework)

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
