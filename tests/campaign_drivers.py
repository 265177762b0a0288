"""Drivers for the campaign tests: one that kills the worker process running it, once."""

from __future__ import annotations

import os
import signal

import avcm
from tests import broken_drivers

# the file whose creation claims the one kill; set by the test, inherited by the workers
KILL_MARKER = "AVCM_TEST_KILL_MARKER"


def leaky_killing_once(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """The leaky driver; but the first run of all (the first process to create the marker
    file) kills its own worker process, as an out-of-memory killer or a crash would."""
    marker = os.environ.get(KILL_MARKER)
    if marker is not None:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return broken_drivers.leaky(memory)
