"""What to record beside every number: versions, machine, threads, precision and time."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any

import numpy as np

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")


def _version(distribution: str) -> str | None:
    """An installed distribution's version, read from its metadata without importing it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(engine_facts: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Return a JSON-friendly record of where and how a result was computed.

    Args:
        engine_facts: What the engine says of itself (``GradientEngine.describe()``).
        dtype: The dtype the computation ran in.
    """
    record: dict[str, Any] = {
        "gradlab": _version("gradlab"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "jax": _version("jax"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "dtype": dtype,
        # The engine reports its own thread count where its framework exposes one (torch);
        # otherwise None, with the environment variables that set BLAS and XLA threading.
        "threads": None,
        "thread_env": {name: os.environ[name] for name in _THREAD_VARIABLES if name in os.environ},
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(engine_facts)
    return record
