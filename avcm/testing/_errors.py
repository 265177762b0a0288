"""What the race finder raises.

Bad input to the race finder itself (a malformed token, a parameter out of range) is an
:class:`avcm.InvalidError` (``EINVAL``), like bad input anywhere in avcm. What a schedule finds
is an :class:`AssertionError`, so that pytest reports it as a failed test:
:class:`ScheduleFailure` for what the scheduler itself detects (deadlock, step budget, a task
that never yields, I/O that never arrives, a replay that diverged), :class:`RaceFound` for
any failure with the schedule that shows it.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .. import InvalidError, VcmError

if TYPE_CHECKING:
    from ._conformance import ConformanceReport
    from ._explore import Exploration, Failure

__all__ = [
    "ClusterError",
    "ConformanceFailure",
    "DeadlockError",
    "IOWaitError",
    "RaceFound",
    "ReplayDivergedError",
    "RunawayError",
    "ScheduleFailure",
    "StepBudgetError",
    "ThreadWaitError",
    "TokenError",
]


class TokenError(InvalidError):
    """A replay token that is malformed, or not avcm's, or of another version."""


class ClusterError(VcmError):
    """The Dask cluster asked for cannot be had: a scheduler that does not answer, or a local
    cluster that does not start (``ECONNREFUSED``). Nothing has run."""

    default_errno = errno.ECONNREFUSED


class ScheduleFailure(AssertionError):
    """The scheduler found a failure of its own kind in a run."""


class DeadlockError(ScheduleFailure):
    """Every task is blocked, none can be chosen, and no timer is pending."""


class IOWaitError(ScheduleFailure):
    """Every task waits, some of them for I/O with the world outside (another process, a
    socket, a pipe), and nothing arrived for ``Limits.io_timeout`` seconds of real time: a
    peer that never answers, or tasks of the scenario deadlocked through a socket. Not
    called a deadlock: what is outside may still answer, later than the bound."""


class ThreadWaitError(ScheduleFailure):
    """A worker thread the tasks wait for did not report back for ``Limits.thread_timeout``
    seconds of real time, while no task could be chosen and virtual time stood still: a
    thread that never returns (blocked on something the run will never give it). The calls
    waiting for such threads are abandoned (they raise this error in their tasks) so that
    the run ends; the threads themselves run on. Not called a deadlock: the thread may still
    return, later than the bound."""


class StepBudgetError(ScheduleFailure):
    """The run took more scheduling steps than allowed: more than ``Limits.max_steps`` in a
    row with no task waiting for time to pass (virtual time standing still, or moved only by
    the spin rule: a livelock, and the message names the cycle of steps that repeats), or 20
    times as many in all, time passing (a run that does not end), or a bigger scenario than
    the budget. ``steady_progress`` is true when the tasks kept changing state all along (no
    livelock seen: a longer run than the budget, whose verdict is none either way)."""

    steady_progress: bool = False


class RunawayError(ScheduleFailure):
    """Tasks outside the scheduler's control kept running without ever all waiting."""


class ReplayDivergedError(ScheduleFailure):
    """A replay did not follow its recording: the code under test changed."""


class RaceFound(AssertionError):
    """A schedule made the scenario fail. ``failure`` has the token, timeline and replay;
    given the *exploration* that found it on workers, the message begins with what ran there
    (every part that ran, not only the one reported)."""

    def __init__(self, failure: Failure, exploration: Exploration | None = None) -> None:
        report = failure.report()
        if exploration is not None and exploration.parts:
            report = f"{exploration.parts_summary()}\n{report}"
        super().__init__(report)
        self.failure = failure
        self.exploration = exploration


class ConformanceFailure(AssertionError):
    """A driver broke the contract in the conformance suite. ``report`` has every scenario's
    result, and each failure's timeline and replay."""

    def __init__(self, report: ConformanceReport) -> None:
        super().__init__(report.format())
        self.report = report
