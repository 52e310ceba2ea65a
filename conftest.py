"""Runs for every test; keeps the Markdown examples (README and docs/, run as doctests) tidy."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# torch.compile's inductor caches the libraries it builds in one directory per user
# (/tmp/torchinductor_<user>). A compile killed while writing one leaves it truncated there,
# and every later compile of the same kernel fails to load it ("file too short"): a
# machine's earlier runs could fail this one. The suite compiles into a directory of its
# own (its pytest-xdist workers and subprocesses inherit it), removed when it ends.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="gradlab-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
    atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

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
