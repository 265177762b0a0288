"""What every command line of the project shares (``python -m stress``, ``python -m bench``,
``python -m avcm.testing``): output paths checked before the work, and Ctrl-C as one line and
exit status 130, never a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "interrupted",
    "output_dir_problem",
    "output_file_problem",
    "run_main",
]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def output_file_problem(path: Path) -> str | None:
    """Why *path* could not be written after the work, or ``None``: asked before it starts."""
    if path.is_dir():
        return "is a directory, not a file"
    if not path.parent.is_dir():
        return f"no such directory {path.parent}"
    return _writable(path.parent)


def output_dir_problem(path: Path) -> str | None:
    """Why *path* could not be made (if missing) or written to after the work, or ``None``."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return "is not a directory" if existing == path else f"is under {existing}, a file"
    return _writable(existing)


def _writable(directory: Path) -> str | None:
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    return None


def interrupted(error: BaseException) -> bool:
    """A Ctrl-C, alone or inside an exception group (trio reports it from its task group)."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(KeyboardInterrupt) is not None
    return isinstance(error, KeyboardInterrupt)


def run_main(prog: str, body: Callable[[], int], *, note: str = "") -> int:
    """``body()``'s exit status; on Ctrl-C, ``PROG: interrupted`` (and `` (NOTE)``) on
    stderr, and 130. Output piped into a reader that stops early (``| head``) ends the
    command quietly with 141 (128 + SIGPIPE, as a shell reports it), not with a traceback."""
    try:
        return body()
    except (BrokenPipeError, SystemExit) as error:
        # rich turns a broken pipe into SystemExit(1), which reads as "a violation"
        if not isinstance(error, BrokenPipeError) and not isinstance(
            error.__context__, BrokenPipeError
        ):
            raise
        # Python's recipe: later flushes of stdout (at exit) must not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except BaseException as error:
        if not interrupted(error):
            raise
        print(f"{prog}: interrupted{f' ({note})' if note else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
