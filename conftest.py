"""Runs for every test; keeps the Markdown examples (README and docs/, run as doctests) tidy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)  # tests/test_pytest_plugin.py runs pytest on files it writes
# TensorFlow's array namespace imports TensorFlow, which is not in `all`: its module's
# doctests (--doctest-modules) are collected only where TensorFlow is installed.
collect_ignore = [] if importlib.util.find_spec("tensorflow") else ["gradlab/engines/_tf_numpy.py"]


@pytest.fixture(autouse=True)
def _markdown_examples_run_in_a_scratch_directory(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The docs' examples write their pictures to the working directory
    # (``plot("tutorial-fits.png")``): in the test run that is a scratch directory, and
    # docs/images/regenerate.py runs the same examples in docs/images to make the committed
    # pictures.
    if request.node.path.suffix == ".md":
        monkeypatch.chdir(tmp_path)
