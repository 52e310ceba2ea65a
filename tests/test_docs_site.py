"""The documentation site: every public name is in the API reference, and the site builds
strictly (a broken link, an unlisted page or an unresolved reference fails the build)."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import gradlab

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


def reference_directives() -> set[str]:
    """Every ``::: dotted.path`` that the API reference pages render."""
    found: set[str] = set()
    for page in REFERENCE.glob("*.md"):
        found.update(re.findall(r"^::: (\S+)\s*$", page.read_text(), flags=re.MULTILINE))
    return found


def test_every_public_name_has_an_entry_in_the_api_reference() -> None:
    missing = sorted(
        set(gradlab.__all__)
        - {path.removeprefix("gradlab.") for path in reference_directives() if path.count(".") == 1}
    )
    assert not missing, f"add '::: gradlab.NAME' to a page in docs/reference/ for: {missing}"


def test_every_reference_entry_names_something_that_exists() -> None:
    for path in sorted(reference_directives()):
        parts = path.split(".")
        assert parts[0] == "gradlab", path
        target: object = gradlab
        for depth, part in enumerate(parts[1:], start=2):
            if not hasattr(target, part):  # a submodule not imported by gradlab (testing)
                with contextlib.suppress(ImportError):
                    target = importlib.import_module(".".join(parts[:depth]))
                    continue
            assert hasattr(target, part), f"{path} does not exist"
            target = getattr(target, part)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra (in dev) builds the site")
    out = tmp_path_factory.mktemp("site")
    # Material prints an end-of-life banner on every build; it is not a warning of ours.
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr}"
    return out


def test_the_site_builds_strictly_and_renders_every_public_name(site: Path) -> None:
    # objects.inv is the inventory of what mkdocstrings actually rendered: four header
    # lines, then zlib-compressed lines "name domain:role priority uri display-name".
    header, _, body = (
        site.joinpath("objects.inv")
        .read_bytes()
        .partition(b"# The remainder of this file is compressed using zlib.\n")
    )
    assert header.startswith(b"# Sphinx inventory version 2")
    rendered = {line.split()[0] for line in zlib.decompress(body).decode().splitlines()}
    missing = sorted(name for name in gradlab.__all__ if f"gradlab.{name}" not in rendered)
    assert not missing, f"in __all__ but not rendered in the API reference: {missing}"


def test_the_site_has_every_page_the_docs_promise(site: Path) -> None:
    pages = [
        "getting-started",
        "tutorial",
        "agreement",
        "writing-an-engine",
        "writing-a-problem",
        "benchmarking",
        "reference",
    ]
    for page in pages:
        assert site.joinpath(page, "index.html").is_file(), page
    tutorial = site.joinpath("tutorial", "index.html").read_text()
    # The captured output is included, not left as a snippet marker.
    assert "--8&lt;--" not in tutorial
    assert "--8<--" not in tutorial
    assert "grad/obj" in tutorial


def css_rules(text: str) -> dict[str, str]:
    """Each selector of a stylesheet with its declarations (of its last rule, joined)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    rules: dict[str, str] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        for selector in selectors.split(","):
            key = " ".join(selector.split())
            rules[key] = rules.get(key, "") + " ".join(body.split())
    return rules


def test_wide_tables_and_long_code_lines_scroll_visibly_in_their_own_box(site: Path) -> None:
    # At 1280 px the content column is about 740 px: narrower than the 8-column tables of
    # agreement.md and the 100-character lines of engines.md. What overflows must scroll
    # inside its own box with a cue that there is more, not run under the page's edge.
    pages = sorted(site.rglob("index.html"))
    assert len(pages) > 20
    for page in pages:
        links = re.findall(r'<link[^>]*href="([^"]*\.css)"', page.read_text())
        assert any(link.endswith("stylesheets/extra.css") for link in links), page
    rules = css_rules(site.joinpath("stylesheets", "extra.css").read_text())
    for scroller in (".md-typeset__scrollwrap", ".md-typeset pre > code"):
        assert "overflow-x: auto" in rules[scroller], scroller
        # The shadow cue: gradients that scroll with the content cover it at each end.
        assert "no-repeat local" in rules[scroller], scroller
        assert f"{scroller}::-webkit-scrollbar-thumb" in rules, scroller
    # Code in a table cell is never broken inside a name.
    assert "white-space: nowrap" in rules[".md-typeset table:not([class]) code"]
