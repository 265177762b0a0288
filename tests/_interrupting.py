"""Pressing Ctrl-C on a command, as on a terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ctrl_c_as_on_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited
    # "ignore": the command must react to Ctrl-C however pytest itself was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_stress(
    args: Sequence[str], *, ready: int = 0, after: float = 0.3
) -> tuple[int, str, str]:
    """Run ``python -m stress ARGS``, wait for *ready* "driver ready" lines on its stderr and
    *after* seconds more, press Ctrl-C; its exit status, stdout and the rest of its stderr."""
    command = [sys.executable, "-m", "stress", *args]
    # a session of its own: Ctrl-C on a terminal signals the whole process group; `with`
    # closes the pipes whatever happens: an unclosed one is a ResourceWarning, raised (warnings
    # are errors) in whichever later test the garbage collector runs
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=ctrl_c_as_on_a_terminal,
    ) as process:  # fmt: skip
        try:
            assert process.stderr is not None
            for _ in range(ready):
                assert process.stderr.readline() == "driver ready\n"
            time.sleep(after)
            os.killpg(process.pid, signal.SIGINT)
            out, err = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return process.returncode, out, err
