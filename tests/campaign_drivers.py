"""For the campaign tests: a driver that kills the worker process running it, once, a
scenario that always fails and one that never does."""

from __future__ import annotations

import os
import signal

import anyio.lowlevel

import avcm
from avcm import testing
from tests import broken_drivers

# a directory, set by the test and inherited by the workers: once the test creates ARMED in
# it, the first process to make a context kills itself (it claims the kill by creating KILLED)
KILL_DIR = "AVCM_TEST_KILL_DIR"
ARMED, KILLED = "armed", "killed"


def leaky_killing_once(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """The leaky driver; but once armed, one process kills itself as it makes a context, as an
    out-of-memory killer or a crash would."""
    directory = os.environ.get(KILL_DIR)
    if directory is not None and os.path.exists(os.path.join(directory, ARMED)):
        try:
            os.close(os.open(os.path.join(directory, KILLED), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return broken_drivers.leaky(memory)


async def always_fails(run: testing.Run) -> None:
    """A race-finder scenario that fails under every schedule, with a number in its message.
    It runs a task first: a scenario failing before any task runs is no race found, but an
    error of its own, raised as it is."""
    await run.concurrently(anyio.lowlevel.checkpoint)
    raise AssertionError("counter is 42, expected 41")


async def two_counters(run: testing.Run) -> None:
    """Two tasks of three checkpoints each, which always pass: every way to interleave them is
    one schedule, C(8, 4) = 70 of them."""

    async def count() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()

    await run.concurrently(count, count)
