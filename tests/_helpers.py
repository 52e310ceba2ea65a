"""Helpers shared by the tests."""

from __future__ import annotations

import pytest

import gradlab

BUILTIN_ENGINES = ("numpy", "torch", "jax", "fd")
AUTODIFF_ENGINES = ("torch", "jax")


def require_engine(name: str) -> None:
    """Skip the test when the engine's framework is not installed."""
    if name not in gradlab.available_engines():
        pytest.skip(f"engine {name!r} is not installed")


def relative_error(a: float, b: float) -> float:
    """|a − b| / |b|."""
    return abs(float(a) - float(b)) / abs(float(b))
