"""Remake the tutorial's pictures and captured output from the tutorial's own code.

Runs every example of ``docs/tutorial.md`` as a doctest with this directory as the working
directory, so the pictures it draws (``plot("tutorial-fits.png")``) land here, then writes
the text the page includes: the fit comparison's table and a longer benchmark.

    python docs/images/regenerate.py
"""

from __future__ import annotations

import doctest
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIAL = HERE.parent / "tutorial.md"


def main() -> int:
    os.chdir(HERE)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(TUTORIAL.read_text(), {}, "tutorial", str(TUTORIAL), 0)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    runner.run(test, clear_globs=False)
    if runner.failures:
        return 1
    names = test.globs
    comparison = str(names["comparison"]).splitlines()
    start = next(i for i, line in enumerate(comparison) if line.startswith("engine"))
    table = comparison[start : start + 2 + len(names["comparison"].engines)]
    (HERE / "tutorial-fits.txt").write_text("\n".join(table) + "\n")
    gradlab = names["gradlab"]
    timings = gradlab.benchmark(
        "quadratic", [100], engines="numpy,torch,jax", min_time=0.2, fit_steps=800
    )
    (HERE / "tutorial-benchmark.txt").write_text(str(timings) + "\n")
    print(f"wrote the tutorial's pictures and text to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
