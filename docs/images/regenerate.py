"""Remake the docs' pictures and captured output from the pages' own code.

Runs every example of ``docs/tutorial.md`` as a doctest with this directory as the working
directory, so the pictures it draws (``plot("tutorial-fits.png")``) land here, then writes
the text the page includes: the fit comparison's table and a longer benchmark. Then runs
``docs/locate.md`` the same way and draws ``locate.png``: its transformer with the forgotten
transpose. Then ``docs/compare.md``, whose chaotic fit draws ``fit-envelope.png``.

    python docs/images/regenerate.py
"""

from __future__ import annotations

import doctest
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TUTORIAL = HERE.parent / "tutorial.md"
LOCATE = HERE.parent / "locate.md"
COMPARE = HERE.parent / "compare.md"


def _run(page: Path) -> dict[str, Any] | None:
    """The page's examples run as a doctest: their names, or ``None`` if one failed."""
    parser = doctest.DocTestParser()
    test = parser.get_doctest(page.read_text(), {}, page.stem, str(page), 0)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    runner.run(test, clear_globs=False)
    return None if runner.failures else test.globs


def main() -> int:
    os.chdir(HERE)
    names = _run(TUTORIAL)
    if names is None:
        return 1
    comparison = str(names["comparison"]).splitlines()
    start = next(i for i, line in enumerate(comparison) if line.startswith("engine"))
    table = comparison[start : start + 2 + len(names["comparison"].engines)]
    (HERE / "tutorial-fits.txt").write_text("\n".join(table) + "\n")
    gradlab = names["gradlab"]
    timings = gradlab.benchmark(
        "quadratic", [100], engines="numpy,torch,jax", min_time=0.2, fit_steps=800
    )
    (HERE / "tutorial-benchmark.txt").write_text(str(timings) + "\n")
    page = _run(LOCATE)
    if page is None:
        return 1
    buggy = gradlab.NativeProblem(
        name="transformer", torch=page["torch_loss"], jax=page["jax_port"](forget_transpose=True)
    )
    gradlab.locate(buggy, page["data"], page["params"]).plot("locate.png")
    if _run(COMPARE) is None:
        return 1
    print(f"wrote the tutorial's and locate's pictures and text to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
