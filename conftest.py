"""Runs for every test; keeps the Markdown examples (README and docs/, run as doctests) tidy."""

from __future__ import annotations

from pathlib import Path

import pytest


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
