"""A progress bar for runs that take more than a moment, when tqdm is installed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from gradlab._checks import check_bool

#: Seconds before a bar appears: runs shorter than this show nothing at all.
DELAY = 0.5


@contextmanager
def progress_bar(
    total: int, description: str, enabled: bool, file: TextIO | None = None, delay: float = DELAY
) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(label)``, which moves a tqdm bar on by one item after ``label`` ran.

    Without tqdm, or when not ``enabled``, ``advance`` does nothing: progress is a nicety,
    never a reason to fail.
    """
    bar: Any = None
    if check_bool(enabled, "progress"):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(
                total=total,
                desc=description,
                unit="run",
                delay=delay,
                leave=False,
                file=file if file is not None else sys.stderr,
            )

    def advance(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.close()
