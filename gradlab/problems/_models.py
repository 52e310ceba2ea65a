"""Models as people write them, in Flax and Equinox, as pure functions of their parameters.

[`torch_module`][gradlab.torch_module] turns a torch ``nn.Module`` into ``(apply,
params)`` for the torch implementation of a [`NativeProblem`][gradlab.NativeProblem];
these are its siblings for the JAX implementation:

- [`flax_module`][gradlab.flax_module]``(module, variables)``: a Flax
  **linen** module with the variables its ``init`` gave, run by ``module.apply``;
- [`nnx_module`][gradlab.nnx_module]``(module)``: a Flax **NNX** module,
  split into its ``nnx.Param`` state and the rest and merged back on every call;
- [`equinox_module`][gradlab.equinox_module]``(module)``: an Equinox
  module, partitioned into its floating-point arrays and the rest and combined back.

Each returns ``apply(params, *inputs, **kwargs)``, which runs the model on the parameters
it is given (never on its own, which are not read or changed), and ``params``, a float64
NumPy copy of the model's parameters **nested** as the framework nests them
(``{"attn": {"query": {"kernel": ...}}}``): gradlab names a nest's leaves by path, so
reports read ``attn.query.kernel``, and a [`Layout`][gradlab.Layout] function returns the
structure a Flax user already knows from ``variables["params"]`` (a flat dict keyed by
dotted names would read ``['attn.query.kernel']``). Sequences (an NNX ``nnx.List``, an
Equinox ``layers`` tuple) are lists, named ``layers[0].kernel``; ``apply`` takes lists or
dicts with integer keys alike, since both have the same paths.

What a gradient comparison cannot hold fixed is refused with an
[`ArgumentError`][gradlab.ArgumentError] naming ``module``: batch-norm state and other
mutable collections, dropout left on, integer parameters, no parameters at all. ``apply``
refuses parameters that are not exactly the model's by name and shape (naming ``init``),
as ``torch_module``'s does: Flax would ignore an unknown one, and Equinox has no names to
check.

Neither Flax nor Equinox is imported until an adapter is called.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from gradlab._checks import META_DEVICE
from gradlab._errors import ArgumentError, ArgumentTypeError, first_line
from gradlab._output import optional
from gradlab._tap import tap, tapping
from gradlab._tree import flatten, named_leaves, nest_of_paths, path

__all__ = ["equinox_module", "flax_module", "nnx_module", "torch_module"]

#: ``apply(params, *inputs, **kwargs)``: the model run on the parameters it is given.
Apply = Callable[..., Any]

#: Linen's variable collections besides ``params``, and what puts them there.
_COLLECTIONS = {
    "batch_stats": "BatchNorm's running statistics",
    "cache": "an autoregressive decoding cache",
    "intermediates": "values sown with self.sow",
}

#: Keywords of ``module.apply`` that are not the call's own: what they would switch on
#: (randomness, returned state, another method) is what the adapter exists to hold fixed.
_APPLY_KEYWORDS = ("rngs", "mutable", "method", "capture_intermediates")


def torch_module(module: Any) -> tuple[Callable[..., Any], dict[str, np.ndarray]]:
    """A ``torch.nn.Module`` as a pure function of its parameters, for a torch implementation.

    Returns ``(apply, params)``: ``apply(params, *inputs, **kwargs)`` runs the module
    through ``torch.func.functional_call`` on the parameters it is given (never on its own,
    which are not read or changed), keywords passed on to its ``forward``
    (``need_weights=False``, a mask), and ``params`` is a float64 NumPy copy of the
    module's parameters by name (``{"0.weight": ...}``): a starting point, or the shapes a
    [`Layout`][gradlab.Layout] checks against (``Layout(..., shapes=...)``). ``apply``
    takes them flat by torch's names, or nested by the same path (``{"0": {"weight":
    ...}}``, what ``NativeProblem(params={"0.weight": ...})`` declares).

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

    def apply(params: Mapping[str, Any], *inputs: Any, **kwargs: Any) -> Any:
        given = check_module_params(
            params,
            shapes,
            floating=lambda value: isinstance(value, torch.Tensor) and value.is_floating_point(),
            array="floating-point torch tensor",
            named=_dotted,
            lacking="functional_call would run the module's own values there, and return no "
            "gradient for them",
        )
        if not tapping():
            return functional_call(module, given, inputs, kwargs)
        with _tapped(module):
            return functional_call(module, given, inputs, kwargs)

    # Widened in torch: NumPy has no bfloat16.
    copies = {
        name: value.detach().to("cpu", torch.float64, copy=True).numpy()
        for name, value in named.items()
    }
    return apply, copies


def _dotted(given: Mapping[Any, Any]) -> dict[str, Any]:
    """Parameters by torch's dotted names, flat (``{"0.weight": w}``) or nested by the same
    path (``{"0": {"weight": w}}``, ``[{"weight": w}]``): the keys joined with dots."""
    return {".".join(map(str, keys)): value for keys, value in named_leaves(given)}


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


def flax_module(module: Any, variables: Any) -> tuple[Apply, dict[str, Any]]:
    """A Flax linen module as a pure function of its parameters, for a jax implementation.

    Why ``variables`` and not the inputs: the variables are what a user holds (from
    ``module.init``, or a checkpoint), and running ``init`` here would need a random key
    and example inputs only to throw its values away.

    Returns ``(apply, params)``: ``apply(params, *inputs, **kwargs)`` is
    ``module.apply({"params": params}, *inputs, **kwargs)`` (keyword arguments go to the
    module's ``__call__``: ``deterministic=True``, a ``mask``), and ``params`` is a
    float64 NumPy copy of ``variables["params"]``, nested as Flax nests it. While
    [`locate`][gradlab.locate] watches, every submodule's ``__call__`` output is tapped,
    named by its path (``"attn"``, ``"attn.query"``), through ``nn.intercept_methods``.

    ``apply`` refuses (an ``ArgumentError`` naming ``init``) parameters that are not
    exactly the module's by path and shape: ``module.apply`` ignores an unknown one.

    Args:
        module: A ``flax.linen.Module`` (unbound: the one ``init`` was called on).
        variables: What ``module.init(key, *inputs)`` returned: ``{"params": ...}``.

    Returns:
        ``(apply, params)``.

    Raises:
        MissingDependency: Flax is not installed (``pip install 'gradlab[flax]'``).
        ArgumentTypeError: ``module`` is not a linen module (an NNX one: use
            [`nnx_module`][gradlab.nnx_module]), or ``variables`` not a
            mapping with ``"params"``.
        ArgumentError: ``variables`` hold collections besides ``params`` (``batch_stats``:
            batch norm), or the parameters are none, abstract or not floating-point
            (naming ``module``). At ``apply``: parameters that are not the module's
            (naming ``init``); a module that draws random numbers (dropout left on) or
            reads or writes a collection besides ``params`` (naming ``module``).

    Examples:
        >>> import jax, numpy as np
        >>> from flax import linen as nn
        >>> import gradlab
        >>> dense = nn.Dense(2)
        >>> variables = dense.init(jax.random.key(0), np.ones((1, 3)))
        >>> apply, params = gradlab.flax_module(dense, variables)
        >>> {name: value.shape for name, value in params.items()}
        {'bias': (2,), 'kernel': (3, 2)}
        >>> apply(params, np.ones((4, 3))).shape
        (4, 2)
    """
    nn = optional("flax.linen", "flax_module", "flax")
    jax = optional("jax", "flax_module", "flax")
    nnx = optional("flax.nnx", "flax_module", "flax")
    if isinstance(module, nnx.Module):
        raise ArgumentTypeError(
            "module", "is a Flax NNX module: use nnx_module(module), which takes no variables"
        )
    if not isinstance(module, nn.Module):
        raise ArgumentTypeError("module", f"must be a flax.linen.Module, got {_describe(module)}")
    if isinstance(variables, Mapping) and not variables:  # what init gives a module without any
        raise ArgumentError("module", "has no parameters: there is nothing to differentiate")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ArgumentTypeError(
            "variables",
            "must be what module.init(key, *inputs) returned, a mapping with 'params' "
            f"({{'params': {{...}}}}), got {_describe(variables)}",
        )
    others = [str(name) for name in variables if name != "params"]
    if others:
        why = "; ".join(f"{name}: {_COLLECTIONS[name]}" for name in others if name in _COLLECTIONS)
        raise ArgumentError(
            "module",
            f"has the variable collection(s) {others} besides 'params'"
            f"{f' ({why})' if why else ''}: state a forward pass may read and change, which "
            "a gradient comparison cannot hold fixed; use a module without it (LayerNorm "
            "rather than BatchNorm), or give only {'params': variables['params']} if the "
            "module does not read it",
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
    names = _checked_leaves(leaves, jax)
    tapped = _linen_interceptor(nn)
    errors = optional("flax.errors", "flax_module", "flax")

    def apply(params: Any, *inputs: Any, **kwargs: Any) -> Any:
        reserved = [name for name in _APPLY_KEYWORDS if name in kwargs]
        if reserved:
            raise ArgumentError(
                "module",
                f"apply passes keyword arguments to the module's __call__; {reserved} are "
                "module.apply's own (randomness, returned state, another method), which a "
                "gradient comparison cannot hold fixed",
            )
        given = jax.tree_util.tree_unflatten(treedef, _leaves(params, names, jax))
        with _flax_errors(errors):
            if not tapping():
                return module.apply({"params": given}, *inputs, **kwargs)
            with nn.intercept_methods(tapped):
                return module.apply({"params": given}, *inputs, **kwargs)

    return apply, _copies(names, leaves)


def nnx_module(module: Any) -> tuple[Apply, dict[str, Any]]:
    """A Flax NNX module as a pure function of its parameters, for a jax implementation.

    Returns ``(apply, params)``: ``apply(params, *inputs, **kwargs)`` merges the module's
    graph with the given ``nnx.Param`` values and the rest of its state (``nnx.merge``,
    a new module each call) and calls it; ``params`` is a float64 NumPy copy of the
    ``nnx.Param`` state, nested as ``state.to_pure_dict()`` nests it (an ``nnx.List`` as
    a list). The module itself is not read again or changed. Submodules are not tapped
    (NNX has no interception hook; its ``nnx.capture`` reads values but cannot carry a
    cotangent): mark points with [`gradlab.tap`][gradlab.tap] in ``__call__``.

    Random state (``nnx.Rngs`` held by a ``Dropout``) is kept as it is and not
    differentiated; it is never drawn from, since dropout must be off.

    Args:
        module: A ``flax.nnx.Module``.

    Returns:
        ``(apply, params)``.

    Raises:
        MissingDependency: Flax is not installed (``pip install 'gradlab[flax]'``).
        ArgumentTypeError: ``module`` is not an NNX module (a linen one: use
            [`flax_module`][gradlab.flax_module]).
        ArgumentError: state besides parameters and random keys (``nnx.BatchStat``,
            ``nnx.Cache``, a plain ``nnx.Variable``), dropout left on (call
            ``module.eval()``), parameters that are none or not floating-point. At
            ``apply``: parameters that are not the module's (naming ``init``).

    Examples:
        >>> import numpy as np
        >>> from flax import nnx
        >>> import gradlab
        >>> apply, params = gradlab.nnx_module(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
        >>> {name: value.shape for name, value in params.items()}
        {'bias': (2,), 'kernel': (3, 2)}
        >>> apply(params, np.ones((4, 3))).shape
        (4, 2)
    """
    nnx = optional("flax.nnx", "nnx_module", "flax")
    jax = optional("jax", "nnx_module", "flax")
    nn = optional("flax.linen", "nnx_module", "flax")
    if isinstance(module, nn.Module):
        raise ArgumentTypeError(
            "module", "is a Flax linen module: use flax_module(module, variables)"
        )
    if not isinstance(module, nnx.Module):
        raise ArgumentTypeError("module", f"must be a flax.nnx.Module, got {_describe(module)}")
    _refuse_nnx_dropout(module, nnx)
    graphdef, state, rest = nnx.split(module, nnx.Param, ...)
    _refuse_nnx_state(rest, nnx, jax)
    # Named by the Variables' paths; rebuilt from their arrays (each Param holds one).
    variables = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda node: isinstance(node, nnx.Variable)
    )[0]
    leaves, treedef = jax.tree_util.tree_flatten(state)
    if len(leaves) != len(variables):
        raise ArgumentError("module", "has parameters that are not one array each")
    named = [(keys, leaf) for (keys, _), leaf in zip(variables, leaves, strict=True)]
    names = _checked_leaves(named, jax)

    def apply(params: Any, *inputs: Any, **kwargs: Any) -> Any:
        given = jax.tree_util.tree_unflatten(treedef, _leaves(params, names, jax))
        return nnx.merge(graphdef, given, rest)(*inputs, **kwargs)

    return apply, _copies(names, named)


def equinox_module(module: Any) -> tuple[Apply, dict[str, Any]]:
    """An Equinox module as a pure function of its parameters, for a jax implementation.

    The parameters are the module's floating-point arrays, as ``eqx.partition(module,
    eqx.is_inexact_array)`` finds them (what ``eqx.filter_grad`` differentiates). Returns
    ``(apply, params)``: ``apply(params, *inputs, **kwargs)`` combines the given arrays
    with the rest of the module (``eqx.combine``) and calls it, as Equinox calls a module:
    on one example (``jax.vmap`` it over a batch); ``params`` is a float64 NumPy copy,
    nested by attribute (``{"layers": [{"weight": ..., "bias": ...}, ...]}``, named
    ``layers[0].weight``). Submodules are not tapped (Equinox has no interception hook):
    mark points with [`gradlab.tap`][gradlab.tap] in ``__call__``.

    Args:
        module: An ``equinox.Module``.

    Returns:
        ``(apply, params)``.

    Raises:
        MissingDependency: Equinox is not installed (``pip install 'gradlab[equinox]'``).
        ArgumentTypeError: ``module`` is not an Equinox module (``(model, state)`` from
            ``eqx.nn.make_with_state`` included).
        ArgumentError: batch-norm or other state (``eqx.nn.BatchNorm``, an
            ``eqx.nn.StateIndex``), dropout left on (``eqx.nn.Dropout(p,
            inference=False)``: ``eqx.nn.inference_mode(module)``), integer or complex
            arrays, no floating-point arrays. At ``apply``: parameters that are not the
            module's (naming ``init``).

    Examples:
        >>> import jax, numpy as np, equinox as eqx
        >>> import gradlab
        >>> apply, params = gradlab.equinox_module(eqx.nn.Linear(3, 2, key=jax.random.key(0)))
        >>> {name: value.shape for name, value in params.items()}
        {'weight': (2, 3), 'bias': (2,)}
        >>> apply(params, np.ones(3)).shape
        (2,)
    """
    eqx = optional("equinox", "equinox_module", "equinox")
    jax = optional("jax", "equinox_module", "equinox")
    if not isinstance(module, eqx.Module):
        stateful = isinstance(module, tuple) and any(isinstance(x, eqx.nn.State) for x in module)
        raise ArgumentTypeError(
            "module",
            "is (model, state) from eqx.nn.make_with_state: a model with state (BatchNorm), "
            "which a gradient comparison cannot hold fixed; use one without (LayerNorm)"
            if stateful
            else f"must be an equinox.Module, got {_describe(module)}",
        )
    _refuse_equinox_parts(module, eqx, jax)
    params, static = eqx.partition(module, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = _checked_leaves(leaves, jax)

    def apply(params: Any, *inputs: Any, **kwargs: Any) -> Any:
        given = jax.tree_util.tree_unflatten(treedef, _leaves(params, names, jax))
        return eqx.combine(given, static)(*inputs, **kwargs)

    return apply, _copies(names, leaves)


def check_module_params(
    given: object,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    floating: Callable[[Any], bool],
    array: str,
    named: Callable[[Mapping[Any, Any]], Mapping[str, Any]] = dict,
    lacking: str = "",
) -> dict[str, Any]:
    """The parameters an adapter's ``apply`` was given, by name, refused unless they are
    exactly the model's: a missing one, an unknown one, one that is not a floating-point
    array of the framework, or one of another shape (one home for every adapter).

    The names ``apply`` is given are ``init``'s (or ``params``'), or those a
    [`Layout`][gradlab.Layout] gives them: errors name ``init``, saying both.

    Args:
        given: What ``apply`` received.
        shapes: The model's parameters' shapes, by name, in the model's order.
        floating: Whether a value is a floating-point array of the framework.
        array: What that is called in a message (``"floating-point jax array"``).
        named: ``{name: value}`` of ``given`` (a flat dict by torch's names is its own;
            a nest is named by path).
        lacking: What the framework would do with a parameter left out, for the message.

    Returns:
        ``{name: value}`` in ``shapes``' order.

    Raises:
        ArgumentTypeError: ``given`` is not a mapping, or holds something other than
            ``array``.
        ArgumentError: names or shapes that are not the model's.
    """
    own = ", ".join(map(repr, shapes))
    fix = (
        f"the module's parameters are {own}: give init (or params) exactly these, or a "
        "Layout that gives exactly these"
    )
    if not isinstance(given, Mapping):
        raise ArgumentTypeError(
            "init", f"init (or params): apply got {type(given).__name__}, not a dict; {fix}"
        )
    try:
        values = named(given)
    except (TypeError, ValueError) as error:
        raise ArgumentTypeError(
            "init", f"init (or params): apply got a nest it cannot read ({error}); {fix}"
        ) from None
    missing = [name for name in shapes if name not in values]
    extra = [name for name in values if name not in shapes]
    if missing or extra:
        parts = [
            f"lack {', '.join(map(repr, missing))}{f' ({lacking})' if lacking else ''}"
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
    for name, value in values.items():
        if not floating(value):
            raise ArgumentTypeError(
                "init",
                f"init (or params): apply got {name!r} as {getattr(value, 'dtype', type(value))}, "
                f"not a {array}",
            )
        shape = tuple(value.shape)
        if shape != shapes[name]:
            # A transposed kernel is the usual mix-up between JAX's layout and torch's.
            hint = (
                " (its transpose: permute its axes (1, 0) in the Layout)"
                if len(shape) == 2 and shape[::-1] == shapes[name]
                else ""
            )
            raise ArgumentError(
                "init",
                f"init (or params): apply got {name!r} of shape {shape}; the module's "
                f"{name!r} has shape {shapes[name]}{hint}",
            )
    return {name: values[name] for name in shapes}


def _leaves(params: object, names: Mapping[str, tuple[int, ...]], jax: Any) -> list[Any]:
    """The arrays of ``params`` (nested as the adapter gave them) in the model's order."""

    def floating(value: Any) -> bool:
        return isinstance(value, (jax.Array, np.ndarray)) and _is_float(value.dtype, jax)

    return list(
        check_module_params(
            params,
            names,
            floating=floating,
            array="floating-point jax (or NumPy) array",
            named=lambda given: flatten(given)[0],
        ).values()
    )


def _checked_leaves(
    leaves: list[tuple[tuple[Any, ...], Any]], jax: Any
) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of a model's parameters (``jax.tree_util`` key paths and
    arrays), in order; refused where there are none, or one is abstract or not
    floating-point."""
    if not leaves:
        raise ArgumentError("module", "has no parameters: there is nothing to differentiate")
    shapes: dict[str, tuple[int, ...]] = {}
    for keys, leaf in leaves:
        name = _path(keys)
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            raise ArgumentError(
                "module",
                f"parameter {name!r} is {_describe(leaf)}, not an array with values "
                "(a jax.ShapeDtypeStruct from jax.eval_shape has a shape only): initialise "
                "it first",
            )
        if not _is_float(leaf.dtype, jax):
            raise ArgumentError(
                "module", f"parameter {name!r} is {leaf.dtype}; it must be floating-point"
            )
        shapes[name] = tuple(int(size) for size in leaf.shape)
    return shapes


def _copies(names: Mapping[str, Any], leaves: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Float64 NumPy copies of the parameters, nested by their paths (sequences as lists).

    Widened by NumPy from what the framework holds (bfloat16 included)."""
    flat = {
        name: np.array(leaf, dtype=np.float64)
        for name, (_, leaf) in zip(names, leaves, strict=True)
    }
    nest: dict[str, Any] = nest_of_paths(flat)
    return nest


def _is_float(dtype: Any, jax: Any) -> bool:
    """Real floating point (bfloat16 too, which NumPy alone does not call floating)."""
    return bool(jax.numpy.issubdtype(dtype, jax.numpy.floating))


def _path(keys: tuple[Any, ...]) -> str:
    """A ``jax.tree_util`` key path as gradlab names it (``layers[0].kernel``)."""
    return path(tuple(_key(entry) for entry in keys))


def _key(entry: Any) -> Any:
    """One entry of a ``jax.tree_util`` key path: a dict key, an attribute or an index."""
    for field in ("key", "name", "idx"):  # DictKey/FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(entry, field):
            return getattr(entry, field)
    return str(entry)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


def _linen_interceptor(nn: Any) -> Callable[..., Any]:
    """A linen method interceptor tapping every submodule's ``__call__`` output, named by
    its path (``"attn.query"``); the root's output is the loss's business."""

    def intercept(call: Any, args: Any, kwargs: Any, context: Any) -> Any:
        output = call(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not module.path or not _tappable(output):
            return output
        return tap(".".join(map(str, module.path)), output)

    return intercept


def _tappable(value: Any) -> bool:
    """Whether ``gradlab.tap`` takes ``value``: an array, ``None``, or a tuple, list or
    dict of them (a module returning anything else is passed over, not refused)."""
    if value is None:
        return True
    if isinstance(value, (tuple, list)):
        return all(map(_tappable, value))
    if isinstance(value, dict):
        return all(map(_tappable, value.values()))
    return hasattr(value, "shape") and hasattr(value, "dtype")


@contextlib.contextmanager
def _flax_errors(errors: Any) -> Iterator[None]:
    """Flax's errors for what ``flax_module`` cannot take, as gradlab's naming ``module``
    (each is raised only once the module runs: linen creates submodules lazily)."""
    try:
        yield
    except errors.InvalidRngError as error:
        raise ArgumentError(
            "module",
            f"draws random numbers ({_flax_message(error)}): dropout left on, which a "
            "gradient comparison cannot hold fixed; build it with deterministic=True "
            "(nn.Dropout(rate, deterministic=True)), or pass deterministic=True to apply "
            "where the module takes it",
        ) from None
    except (
        errors.ScopeCollectionNotFound,
        errors.ScopeVariableNotFoundError,
        errors.ModifyScopeVariableError,
    ) as error:
        raise ArgumentError(
            "module",
            f"reads or changes state besides its parameters ({_flax_message(error)}): "
            "batch norm's statistics or a cache, which a gradient comparison cannot hold "
            "fixed; use a module without it (LayerNorm rather than BatchNorm)",
        ) from None


def _flax_message(error: BaseException) -> str:
    """A Flax error's first line, without the link to its documentation."""
    return first_line(error).split(" (https://", 1)[0]


def _refuse_nnx_dropout(module: Any, nnx: Any) -> None:
    """Refuse dropout that is on: a random mask each call, which no two frameworks share."""
    for keys, submodule in nnx.iter_modules(module):
        if isinstance(submodule, nnx.Dropout):
            rate = submodule.rate
        elif isinstance(submodule, nnx.MultiHeadAttention):
            rate = submodule.dropout_rate
        else:
            continue
        if rate > 0 and submodule.deterministic is not True:
            where = path(tuple(keys)) or "the module"
            raise ArgumentError(
                "module",
                f"has dropout on at {where!r} (rate {rate}, not deterministic): a random "
                "mask each call, which a gradient comparison cannot hold fixed; call "
                "module.eval() first (or build it with deterministic=True)",
            )


def _refuse_nnx_state(rest: Any, nnx: Any, jax: Any) -> None:
    """Refuse state besides parameters, other than random keys (``nnx.RngState``), which
    stay as they are and are never drawn from with dropout off."""
    others = [
        (_path(keys), type(variable).__name__)
        for keys, variable in jax.tree_util.tree_flatten_with_path(
            rest, is_leaf=lambda node: isinstance(node, nnx.Variable)
        )[0]
        if isinstance(variable, nnx.Variable) and not isinstance(variable, nnx.RngState)
    ]
    if others:
        listed = ", ".join(f"{name!r} ({kind})" for name, kind in others)
        raise ArgumentError(
            "module",
            f"has state besides its parameters: {listed}; batch norm's statistics or a cache "
            "change as it runs, which a gradient comparison cannot hold fixed: use a module "
            "without it (LayerNorm rather than BatchNorm), or make a constant an nnx.Param "
            "or a plain array attribute",
        )


def _refuse_equinox_parts(module: Any, eqx: Any, jax: Any) -> None:
    """Refuse state (batch norm), dropout left on, and integer or complex arrays."""
    special = (eqx.nn.BatchNorm, eqx.nn.StateIndex, eqx.nn.Dropout)
    for keys, node in jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda node: isinstance(node, special)
    )[0]:
        where = _path(keys) or "the module"
        if isinstance(node, (eqx.nn.BatchNorm, eqx.nn.StateIndex)):
            raise ArgumentError(
                "module",
                f"has state at {where!r} ({type(node).__name__}: batch norm's statistics or "
                "another eqx.nn.State entry), which a gradient comparison cannot hold fixed; "
                "use a module without it (LayerNorm rather than BatchNorm)",
            )
        if isinstance(node, eqx.nn.Dropout):
            if not node.inference and not (isinstance(node.p, (int, float)) and node.p == 0):
                raise ArgumentError(
                    "module",
                    f"has dropout on at {where!r} (p={node.p}, inference=False): a random "
                    "mask each call, which a gradient comparison cannot hold fixed; give "
                    "eqx.nn.inference_mode(module)",
                )
            continue
        if isinstance(node, (jax.Array, np.ndarray)) and not _is_float(node.dtype, jax):
            raise ArgumentError(
                "module",
                f"has the {node.dtype} array {where!r}: gradlab differentiates every array "
                "of a module it is given, and this one must be floating-point; compute it in "
                "__call__, or hold it as a Python constant",
            )
