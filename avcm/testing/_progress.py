"""The progress bar every long avcm job shows on a terminal (stress, conformance, bench)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["ProgressCallback", "progress_bar"]

ProgressCallback = Callable[..., None]
"""``update(completed, detail="")``: how far the job is (out of the bar's total), and a few
words on where it is."""

# how often the bar is updated at most (rich redraws it from its own thread)
_INTERVAL = 0.1


@contextmanager
def progress_bar(
    label: str, total: float, *, enabled: bool = True, count: bool = True
) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr while the block runs, if *enabled* and stderr is a terminal;
    otherwise ``None`` (nothing is printed: output piped to a file or a CI log stays clean).

    The block feeds it with ``update(completed, detail)``; updates are cheap, drawn at most
    ten times a second, and the last one (``completed >= total``) is always drawn. *count*
    shows "done/total" (for counted work); without it the bar is for time (``--duration``)
    and *detail* says what was done. The bar is removed when the block ends.
    """
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns: list[str | ProgressColumn] = [TextColumn(label), BarColumn()]
    if count:
        columns.append(MofNCompleteColumn())
    columns += [TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
    progress = Progress(*columns, console=Console(file=sys.stderr), transient=True)
    next_update = time.monotonic()

    def update(completed: float, detail: str = "") -> None:
        nonlocal next_update
        now = time.monotonic()
        if now < next_update and completed < total:
            return
        next_update = now + _INTERVAL
        progress.update(task, completed=min(completed, total), detail=detail)

    with progress:
        task = progress.add_task(label, total=total, detail="")
        yield update
