"""What to record beside every number: versions, machine, threads, precision and time."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import sys
from typing import Any

import numpy as np

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")


def _version(distribution: str) -> str | None:
    """An installed distribution's version, read from its metadata without importing it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def common_provenance(dtype: str) -> dict[str, Any]:
    """What every result records, whatever the engine: versions, machine, precision, time."""
    # The engine reports its own device and thread count where its framework exposes one
    # (torch); otherwise None, with the environment variables that set BLAS and XLA
    # threading.
    return refreshed({**_static(), "dtype": dtype, "device": None, "threads": None})


@functools.cache
def _static() -> dict[str, Any]:
    """What cannot change under a running process, read once: reading package metadata alone
    costs about a millisecond, which would dominate a short compiled fit."""
    return {
        "gradlab": _version("gradlab"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "jax": _version("jax"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def provenance(engine_facts: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Return a JSON-friendly record of where and how one engine's result was computed.

    Args:
        engine_facts: What the engine says of itself (``GradientEngine.describe()``).
        dtype: The dtype the computation ran in.
    """
    return {**common_provenance(dtype), **engine_facts}


def refreshed(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``provenance`` record made earlier, with what may have changed since
    read again (the time, the thread variables, JAX's flag): a prepared fit takes its
    record once and refreshes it each run, for a few microseconds instead of tens."""
    return {
        **record,
        "thread_env": {
            name: value for name in _THREAD_VARIABLES if (value := os.environ.get(name)) is not None
        },
        "jax_enable_x64": _jax_x64(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _jax_x64() -> bool | None:
    """JAX's global 64-bit flag, read without importing JAX.

    If JAX is loaded, its config; if not, what ``JAX_ENABLE_X64`` would set it to on import
    (off when unset). gradlab's own JAX calls scope 64-bit mode to the dtype asked for.
    """
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "config"):
        return bool(jax.config.jax_enable_x64)
    return os.environ.get("JAX_ENABLE_X64", "0").lower() in ("1", "true", "yes", "on")
