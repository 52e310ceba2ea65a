"""What every known engine is: installed or not, its version, device, capabilities, and how
to install it (``gradlab engines``)."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gradlab._errors import ArgumentTypeError, GradlabError
from gradlab.engines._protocol import CAPABILITIES, capabilities_of
from gradlab.engines._registry import _REGISTRY, _missing, get_engine, known_engines


@dataclass(frozen=True)
class EngineInfo:
    """One engine, as [`engine_info`][gradlab.engine_info] lists it.

    Attributes:
        name: The registry name.
        installed: Whether its framework is installed here.
        source: ``"builtin"``, ``"registered"`` or ``"entry point"`` (a plug-in).
        default: Whether comparisons use it when no engines are named (else opt-in).
        version: The framework's version (the plug-in's, for a plug-in), if installed.
        device: Where it computes by default, if installed and made (``"cpu"``, ``"cuda:0"``).
        capabilities: ``{capability: bool}`` over ``gradient``, ``hvp``, ``jacobian``,
            ``forward mode``, ``per-example`` (vectorised) and ``compiled loop``; empty
            when it cannot be told.
        install: How to install it, when it is not installed.
        error: Why it could not be made, when installed but broken.
    """

    name: str
    installed: bool
    source: str
    default: bool
    version: str | None = None
    device: str | None = None
    capabilities: dict[str, bool] = field(default_factory=dict)
    install: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


def engine_info(*, load: bool = True) -> tuple[EngineInfo, ...]:
    """Every known engine, installed or not, in [`known_engines`][gradlab.known_engines] order.

    Args:
        load: Make each installed engine to read its device (this imports its framework:
            seconds for TensorFlow). With ``False`` nothing is imported and ``device`` is
            ``None``.

    Examples:
        >>> import gradlab
        >>> numpy = gradlab.engine_info(load=False)[0]
        >>> numpy.name, numpy.installed, numpy.capabilities["hvp"]
        ('numpy', True, True)
    """
    if not isinstance(load, bool):
        raise ArgumentTypeError("load", f"must be True or False, got {load!r}")
    return tuple(_info(name, load) for name in known_engines())


def _info(name: str, load: bool) -> EngineInfo:
    entry = _REGISTRY[name]
    missing = _missing(entry)
    default = not entry.opt_in
    if missing is not None:
        install = (
            f"pip install 'gradlab[{entry.extra}]'" if entry.extra else f"pip install {missing}"
        )
        return EngineInfo(
            name, False, entry.source, default, capabilities=_capabilities(entry), install=install
        )
    version = _version(entry.requires[0] if entry.requires else "numpy", entry.source, name)
    if not load:
        return EngineInfo(
            name, True, entry.source, default, version, capabilities=_capabilities(entry)
        )
    try:
        engine = get_engine(name)
    except (GradlabError, ImportError, RuntimeError, OSError) as error:
        return EngineInfo(name, True, entry.source, default, version, error=str(error))
    device = engine.describe().get("device")
    return EngineInfo(
        name,
        True,
        entry.source,
        default,
        version,
        None if device is None else str(device),
        capabilities_of(engine),
    )


def _capabilities(entry: Any) -> dict[str, bool]:
    """Capabilities read off a built-in engine's class without making it (no import of its
    framework); nothing for a plug-in, whose factory may be anything."""
    if entry.source != "builtin":
        return {}
    return capabilities_of(entry.factory())


def _version(module: str, source: str, name: str) -> str | None:
    """The installed version of the distribution providing ``module`` (for a plug-in, of the
    plug-in's distribution), read from package metadata without importing anything."""
    if source == "entry point":
        for point in importlib.metadata.entry_points(group="gradlab.engines", name=name):
            if point.dist is not None:
                return f"{point.dist.name} {point.dist.version}"
        return None
    top = module.partition(".")[0]
    for distribution in _distributions().get(top, []):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    """Top-level module → distributions providing it (reads every installed package's
    metadata once: 0.1 s)."""
    return importlib.metadata.packages_distributions()


__all__ = ["CAPABILITIES", "EngineInfo", "engine_info"]
