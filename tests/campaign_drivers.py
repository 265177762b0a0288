"""For the campaign tests: a driver that kills the worker process running it, once, and a
scenario that always fails."""

from __future__ import annotations

import os
import signal

import avcm
from tests import broken_drivers

# a directory for the tickets of the runs; set by the test, inherited by the workers
KILL_MARKER = "AVCM_TEST_KILL_MARKER"
# which context made (counting every run's, shrinking runs included) kills its process: late
# enough that each worker of a 2-worker campaign has finished a unit before
KILL_AT = 25


def _ticket(directory: str) -> int:
    """A number no other process gets: the first free name created with O_EXCL."""
    number = 0
    while True:
        try:
            os.close(os.open(f"{directory}/{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            number += 1
        else:
            return number


def leaky_killing_once(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """The leaky driver; but the process that makes the KILL_AT-th context of all kills
    itself there, as an out-of-memory killer or a crash would."""
    directory = os.environ.get(KILL_MARKER)
    if directory is not None and _ticket(directory) == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return broken_drivers.leaky(memory)


async def always_fails(run: object) -> None:
    """A race-finder scenario that fails under every schedule, with a number in its message."""
    raise AssertionError("counter is 42, expected 41")
