"""Shared fixtures: one ``engine`` fixture over every engine, and hypothesis profiles."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _helpers import AUTODIFF_ENGINES, BUILTIN_ENGINES, PLUGIN_ENGINES, require_engine
from hypothesis import HealthCheck, settings

import gradlab

# Deadlines off: the first example on a new shape pays for jax tracing and compilation.
# 10 examples per property: 40 until the conformance suite of issue 16 (with cold
# compilation caches the suite took 7:41 on 2 cores against the 8 minutes it is allowed),
# 30 until GradBench's evals of issue 17 (8:18 cold), 20 until GradBench complete (issue
# 34: 8:11 with the other cuts; the suite is CPU-bound, 192 % of 2 cores). The deep
# profile below runs 400.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=10,
    suppress_health_check=[HealthCheck.too_slow],
)
# CI: a fixed, derandomised sequence so that a red run is reproducible from its log.
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    derandomize=True,
    print_blob=True,
)
# On demand (HYPOTHESIS_PROFILE=deep): 400 examples, and no per-test caps
# (_helpers.examples), for a thorough run before a release.
settings.register_profile("deep", parent=settings.get_profile("default"), max_examples=400)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)


@pytest.fixture(params=BUILTIN_ENGINES + PLUGIN_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every built-in engine (skipping those whose framework is missing), and every
    installed plug-in engine."""
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture(params=AUTODIFF_ENGINES)
def autodiff_engine(request: pytest.FixtureRequest) -> str:
    """The automatic-differentiation engines, skipping those not installed."""
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def seed_data() -> dict[str, np.ndarray]:
    """A small deterministic Quadratic data set."""
    return gradlab.Quadratic().make_data(50, seed=1)
