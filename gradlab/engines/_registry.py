"""Finding engines by name: built-ins, ``register_engine`` and ``gradlab.engines`` entry points."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gradlab._errors import (
    ArgumentError,
    ArgumentTypeError,
    EngineUnavailable,
    GradlabError,
    UnknownEngine,
)
from gradlab.engines._protocol import (
    REQUIRED,
    AbstractEngine,
    GradientEngine,
    check_engine,
    is_approximate,
    missing_members,
)

ENTRY_POINT_GROUP = "gradlab.engines"

EngineFactory = Callable[..., GradientEngine]


@dataclass(frozen=True)
class _Entry:
    factory: Callable[[], EngineFactory]  # imports lazily: the factory's module may be heavy
    requires: tuple[str, ...]  # modules that must be importable
    extra: str | None  # the gradlab extra that installs them
    source: str  # "builtin", "registered" or "entry point"
    # Left out of the engines a comparison uses by default (compiling costs seconds).
    opt_in: bool = False


def _builtin(module: str, name: str) -> Callable[[], EngineFactory]:
    def load() -> EngineFactory:
        factory: EngineFactory = getattr(importlib.import_module(module), name)
        return factory

    return load


_REGISTRY: dict[str, _Entry] = {
    "numpy": _Entry(_builtin("gradlab.engines._numpy", "NumpyEngine"), (), None, "builtin"),
    "fd": _Entry(_builtin("gradlab.engines._fd", "FiniteDifferenceEngine"), (), None, "builtin"),
    "torch": _Entry(
        _builtin("gradlab.engines._torch", "TorchEngine"),
        ("torch", "array_api_compat"),
        "torch",
        "builtin",
    ),
    "jax": _Entry(_builtin("gradlab.engines._jax", "JaxEngine"), ("jax",), "jax", "builtin"),
    "torch-compile": _Entry(
        _builtin("gradlab.engines._torch", "TorchCompileEngine"),
        ("torch", "array_api_compat"),
        "torch",
        "builtin",
        opt_in=True,
    ),
}
_REGISTRY.update(
    {
        "torch-fwd": _Entry(
            _builtin("gradlab.engines._torch", "TorchForwardEngine"),
            ("torch", "array_api_compat"),
            "torch",
            "builtin",
            opt_in=True,
        ),
        "complex-step": _Entry(
            _builtin("gradlab.engines._complex_step", "ComplexStepEngine"),
            (),
            None,
            "builtin",
            opt_in=True,
        ),
        "jax-fwd": _Entry(
            _builtin("gradlab.engines._jax", "JaxForwardEngine"),
            ("jax",),
            "jax",
            "builtin",
            opt_in=True,
        ),
        "torch-func": _Entry(
            _builtin("gradlab.engines._torch", "TorchFuncEngine"),
            ("torch", "array_api_compat"),
            "torch",
            "builtin",
            opt_in=True,
        ),
        "mlx": _Entry(
            _builtin("gradlab.engines._mlx", "MlxEngine"), ("mlx",), "mlx", "builtin", opt_in=True
        ),
        "tensorflow": _Entry(
            _builtin("gradlab.engines._tensorflow", "TensorFlowEngine"),
            ("tensorflow",),
            "tensorflow",
            "builtin",
            opt_in=True,
        ),
        "tensorflow-xla": _Entry(
            _builtin("gradlab.engines._tensorflow", "TensorFlowXlaEngine"),
            ("tensorflow",),
            "tensorflow",
            "builtin",
            opt_in=True,
        ),
    }
)
_entry_points_loaded = False
# The hand-derived reference first, then the autodiff engines, then finite differences, then
# the opt-in variants.
_BUILTIN_ORDER = {
    "numpy": 0,
    "torch": 1,
    "jax": 2,
    "fd": 3,
    "torch-compile": 4,
    "torch-fwd": 5,
    "jax-fwd": 6,
    "complex-step": 7,
    "torch-func": 8,
    "mlx": 9,
    "tensorflow": 10,
    "tensorflow-xla": 11,
}


def register_engine(
    name: str,
    factory: EngineFactory,
    *,
    requires: Sequence[str] = (),
    overwrite: bool = False,
) -> None:
    """Make an engine available to [`get_engine`][gradlab.get_engine] under ``name``.

    Args:
        name: The registry name (what users pass as ``engine=``).
        factory: A callable taking the engine's options as keywords and returning an object that
            satisfies [`GradientEngine`][gradlab.GradientEngine] (usually the engine class itself).
        requires: Modules the engine imports; while one is missing the engine is left out of
            [`available_engines`][gradlab.available_engines] and [`get_engine`][gradlab.get_engine]
            raises ``EngineUnavailable``.
        overwrite: Replace an engine already registered under ``name``.

    Raises:
        ArgumentError: ``name`` is taken (and ``overwrite`` is false) or not a valid name.

    Examples:
        >>> import gradlab
        >>> class Doubled(gradlab.engines.NumpyEngine):
        ...     name = "doubled-example"
        >>> gradlab.register_engine("doubled-example", Doubled)
        >>> gradlab.get_engine("doubled-example").name
        'doubled-example'
        >>> gradlab.unregister_engine("doubled-example")
    """
    if not isinstance(name, str) or not name or name.strip() != name or "," in name:
        raise ArgumentError("name", f"must be a non-empty name without commas, got {name!r}")
    if not callable(factory):
        raise ArgumentTypeError("factory", f"must be callable, got {factory!r}")
    if isinstance(factory, type) and not issubclass(factory, AbstractEngine):
        # A class that is not an AbstractEngine was not checked when it was defined: its
        # methods are checked now, its values (set by __init__, perhaps) when it is made.
        lacks = [
            member
            for member in REQUIRED
            if member not in ("name", "xp") and not callable(getattr(factory, member, None))
        ]
        if lacks:
            raise ArgumentTypeError(
                "factory",
                f"the engine class {factory.__name__} lacks {', '.join(lacks)} of the "
                "GradientEngine protocol (subclass gradlab.AbstractEngine for the defaults)",
            )
    _load_entry_points()
    if name in _REGISTRY and not overwrite:
        raise ArgumentError(
            "name", f"an engine named {name!r} is already registered; pass overwrite=True"
        )
    _REGISTRY[name] = _Entry(lambda: factory, tuple(requires), None, "registered")


def unregister_engine(name: str) -> None:
    """Remove an engine registered under ``name`` (a no-op for unknown names)."""
    _REGISTRY.pop(name, None)


def known_engines() -> tuple[str, ...]:
    """Every registered engine name, installed or not: the built-ins first, then the rest sorted."""
    _load_entry_points()
    return tuple(
        sorted(_REGISTRY, key=lambda name: (_BUILTIN_ORDER.get(name, len(_BUILTIN_ORDER)), name))
    )


def available_engines() -> tuple[str, ...]:
    """The registered engines whose frameworks are installed, in
    [`known_engines`][gradlab.known_engines] order.

    Installation is checked without importing anything heavy (``importlib.util.find_spec``).

    Examples:
        >>> import gradlab
        >>> {"numpy", "fd"} <= set(gradlab.available_engines())
        True
    """
    return tuple(name for name in known_engines() if _missing(_REGISTRY[name]) is None)


def get_engine(name: str | GradientEngine, **options: Any) -> GradientEngine:
    """Return a ready engine: a registered one built with ``options``, or ``name`` itself.

    Args:
        name: A registry name (see [`known_engines`][gradlab.known_engines]), or an engine object,
            which is checked against the protocol and returned as is.
        **options: Passed to the engine's factory (``device="cuda"`` for torch, ``order=2``
            for fd, ...).

    Raises:
        UnknownEngine: no engine has that name; the message lists the known names and
            suggests the closest.
        EngineUnavailable: the engine is known but its framework is not installed; the
            message names the pip extra.

    Examples:
        >>> import gradlab
        >>> gradlab.get_engine("numpy").name
        'numpy'
        >>> gradlab.get_engine("nmupy")
        Traceback (most recent call last):
        ...
        gradlab.UnknownEngine: engine: unknown engine 'nmupy'; did you mean 'numpy'? ...
    """
    if not isinstance(name, str):
        # Not a runtime-protocol isinstance, which costs tens of microseconds a short
        # compiled fit would notice: an AbstractEngine's methods were checked when its class
        # was made, and check_engine names any member an object lacks.
        engine = check_engine(name)
        if options:
            raise ArgumentError("options", "cannot be given with an engine object")
        return engine
    _load_entry_points()
    entry = _REGISTRY.get(name)
    if entry is None:
        # "torch-dp2", "jax-dp4": a data-parallel engine, named as it names itself.
        parallel = importlib.import_module("gradlab.engines.parallel._data")
        spread = parallel.engine_from_name(name, **options)
        if spread is not None:
            return spread  # type: ignore[no-any-return]
        known = known_engines()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        raise UnknownEngine(name, known, close[0] if close else None)
    missing = _missing(entry)
    if missing is not None:
        raise EngineUnavailable(name, missing, entry.extra)
    try:
        factory = entry.factory()
    except ImportError as error:
        raise EngineUnavailable(name, str(error.name or error), entry.extra) from error
    try:
        engine = factory(**options)
    except GradlabError:
        raise  # the engine checked its options and named the bad one
    except ImportError as error:
        # Installed, but a part it loads is not: MLX without its CPU backend (``pip install
        # mlx`` on Linux instead of ``mlx[cpu]``), a framework's broken native library.
        raise EngineUnavailable(name, str(error.name or error), entry.extra) from error
    except TypeError as error:
        raise ArgumentError("options", f"engine {name!r} rejected its options: {error}") from None
    lacks = missing_members(engine)
    if lacks:
        raise ArgumentTypeError(
            "factory",
            f"engine {name!r}'s factory returned {engine!r}, not a GradientEngine (it lacks "
            f"{', '.join(lacks)})",
        )
    return engine


def approximates(name: str) -> bool:
    """Whether the engine registered under ``name`` declares its derivatives approximate
    (finite differences), read from its spec without making the engine.

    A built-in or registered engine class answers with its ``approximate`` attribute: its
    framework is not imported (making a torch or jax engine imports torch or jax, seconds
    for a question about a class attribute). A factory that is not a class says nothing
    until it is called, so that engine is made.

    Args:
        name: A registry name.

    Returns:
        ``True`` for an engine whose derivatives are approximations; ``False`` for any other,
        and for a name that is not registered (a data-parallel name, ``"torch-dp2"``, runs
        an engine that differentiates) or whose engine cannot be made here.

    Examples:
        >>> from gradlab.engines._registry import approximates
        >>> approximates("fd"), approximates("jax")
        (True, False)
    """
    _load_entry_points()
    entry = _REGISTRY.get(name)
    if entry is None:
        return False
    try:
        factory = entry.factory()
    except ImportError:  # a plug-in whose module does not import: it cannot run here
        return False
    if isinstance(factory, type):
        return is_approximate(factory)  # type: ignore[arg-type]
    try:
        return is_approximate(get_engine(name))
    except GradlabError:  # not installed, or its factory refused to make it
        return False


def default_engines() -> tuple[str, ...]:
    """The engines comparisons use when none are named: every known one but the opt-in ones.

    ``"torch-compile"`` is opt-in: it is torch again, and compiling costs seconds per shape;
    so are ``"torch-fwd"`` and ``"jax-fwd"``, torch and jax again in forward mode, and
    ``"complex-step"``, which refuses losses that are not analytic (max, abs, ...);
    ``"torch-func"`` is torch again through ``torch.func``; ``"mlx"``, ``"tensorflow"`` and
    ``"tensorflow-xla"`` are frameworks outside ``gradlab[all]`` (TensorFlow alone takes
    seconds to import), compared when named.
    """
    return tuple(name for name in known_engines() if not _REGISTRY[name].opt_in)


def installed_opt_in() -> list[str]:
    """The opt-in engines installed here: left out of the default set, run when named."""
    installed = available_engines()
    return [name for name in known_engines() if _REGISTRY[name].opt_in and name in installed]


def engine_list(
    engines: object, argument: str = "engines", *, installed_only: bool = False
) -> tuple[list[str | GradientEngine], bool]:
    """The engines a caller asked for, checked, and whether they are the default set.

    The one place where an engine list is read, for the comparisons, the benchmark and the
    command line alike.

    Args:
        engines: ``None`` (the default set), a comma-separated string of names, or a
            sequence of names and engine objects.
        argument: The argument's name, for errors.
        installed_only: For the default set, only the engines installed here (else every
            known one, so that a report can say which were skipped).

    Returns:
        ``(engines, default)``. The default set leaves out opt-in engines
        (``"torch-compile"``), which must be named.
    """
    if engines is None:
        installed = available_engines() if installed_only else known_engines()
        return [name for name in default_engines() if name in installed], True
    if isinstance(engines, str):
        items: list[Any] = [name.strip() for name in engines.split(",")]
        if not engines.strip():
            raise ArgumentError(argument, "is empty: name at least one engine")
        if not all(items):
            raise ArgumentError(argument, f"has an empty name in {engines!r}")
    elif isinstance(engines, (list, tuple)):
        items = list(engines)
    else:
        raise ArgumentTypeError(
            argument,
            f"must be a list of engine names or engines, or a comma-separated string, "
            f"got {type(engines).__name__}",
        )
    if not items:
        raise ArgumentError(argument, "is empty: name at least one engine")
    for item in items:
        if isinstance(item, str) and item:
            continue
        if isinstance(item, (str, type, int, float, bool)) or item is None:
            raise ArgumentTypeError(
                argument, f"holds {item!r}, which is neither an engine name nor an engine object"
            )
        check_engine(item, argument)
    names = [item if isinstance(item, str) else item.name for item in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ArgumentError(argument, f"lists {', '.join(duplicates)} more than once")
    return items, False


def _missing(entry: _Entry) -> str | None:
    """The first required module that is not installed, if any.

    Built-in and registered engines declare their modules, found without importing them.
    A plug-in from an entry point declares nothing, so its module is imported: it is
    available if that import succeeds.
    """
    for module in entry.requires:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    if entry.source == "entry point":
        try:
            entry.factory()
        except ImportError as error:
            return str(error.name or error)
    return None


def _load_entry_points() -> None:
    """Register third-party engines from the ``gradlab.engines`` entry-point group, once.

    An entry point names an engine factory (``my_package:MyEngine``). It is imported only
    when the engine is first requested; if that import fails, the engine is unavailable.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in _REGISTRY:
            _REGISTRY[point.name] = _Entry(point.load, (), None, "entry point")


def _reload_entry_points() -> None:
    """Forget and re-read the entry points (for tests that install a plug-in on the fly)."""
    global _entry_points_loaded
    for name in [name for name, entry in _REGISTRY.items() if entry.source == "entry point"]:
        del _REGISTRY[name]
    _entry_points_loaded = False
