"""Worker threads' timed waits on the run's virtual clock.

A worker thread that serves a call of a controlled task (anyio's or trio's ``to_thread``,
``asyncio.to_thread``: each runs the call in a copy of the task's context) and waits with a
timeout in a ``threading`` or ``queue`` primitive (an event, a condition, a semaphore, a
queue, a future's ``result``: all wait in :meth:`threading.Condition.wait`) waits on
the run's clock, not the machine's: its timeout ends only when the run moves virtual time past
it, as a task's sleep does. In real time the scheduler may hold tasks back for a second before
it lets them go on beside a thread that waits (see :mod:`._scheduler`), so a thread that waits
half a second for an event a task sets timed out in a real clock's terms before the task ever
ran (attack47): a verdict the machine's speed decided. The time those primitives read to
count down what is left of a timeout (``threading._time``, ``queue.time``) is the run's clock
in such a thread too, so a queue's ``get(timeout=5)`` ends once 5 virtual seconds passed.

Nothing changes for any other thread, for a wait with no timeout, or once the run ended (a
thread still waiting then counts what is left of its timeout in real time again). A thread
the program starts itself (``threading.Thread``) does not run in a task's context and is not
seen; nor is ``loop.run_in_executor``, which does not copy the context.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadClock", "install", "loop_threads"]

# (its waiting function is named ``wait``, as the one it stands in for: a thread stopped in it
# is seen waiting in a ``threading`` primitive, see _scheduler._waits_in_threading)

_LOOK = 0.02  # seconds of real time between a waiting thread's looks at whether its wait expired


class _TimedWait:
    """One thread's timed wait: ``expired`` once the run's clock passed ``deadline``."""

    __slots__ = ("deadline", "expired", "waiter")

    def __init__(self, deadline: float, waiter: Any) -> None:
        self.deadline = deadline
        self.waiter = waiter  # the condition's waiter lock: released when notified
        self.expired = False


class ThreadClock:
    """The run's clock as its worker threads see it, and their timed waits on it.

    *now* reads the virtual clock from any thread (it must not count as a task's read)."""

    def __init__(self, now: Callable[[], float], loop_thread: int) -> None:
        self._now = now
        self.loop_thread = loop_thread
        self.live = True
        _live.add(self)
        self._lock = threading.Lock()
        self._waits: list[_TimedWait] = []

    def serves(self) -> bool:
        """Whether the calling thread's timed waits are on this clock."""
        return self.live and threading.get_ident() != self.loop_thread

    def time(self) -> float:
        return self._now()

    def begin(self, timeout: float, waiter: Any) -> _TimedWait:
        wait = _TimedWait(self._now() + timeout, waiter)
        with self._lock:
            self._waits.append(wait)
        return wait

    def end(self, wait: _TimedWait) -> None:
        with self._lock:
            self._waits.remove(wait)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a wait that is neither notified nor expired (the loop's
        thread asks)."""
        with self._lock:
            pending = [w.deadline for w in self._waits if not w.expired and w.waiter.locked()]
        return min(pending, default=None)

    def expire(self, now: float) -> int:
        """End every wait not notified whose deadline *now* reached: each returns as timed
        out. How many."""
        with self._lock:
            due = [
                w for w in self._waits if not w.expired and w.deadline <= now and w.waiter.locked()
            ]
            for wait in due:
                wait.expired = True
        return len(due)

    def release(self) -> None:
        """The run ended: threads still waiting count what is left in real time."""
        self.live = False
        _live.discard(self)


_live: weakref.WeakSet[ThreadClock] = weakref.WeakSet()


def loop_threads() -> set[int]:
    """The threads whose event loops runs on a clock of this module's run now (several runs
    may run at once in one process, each in a thread of its own: a Dask worker's)."""
    return {clock.loop_thread for clock in list(_live)}  # (release takes a clock out)


_clock: contextvars.ContextVar[ThreadClock | None] = contextvars.ContextVar(
    "avcm_testing_thread_clock", default=None
)


def current() -> ThreadClock | None:
    """The clock the calling thread's timed waits are on, or None (the machine's)."""
    clock = _clock.get()
    return clock if clock is not None and clock.serves() else None


def set_clock(clock: ThreadClock) -> None:
    """Put the calling task's worker threads, and its children's, on *clock*."""
    _clock.set(clock)


_real_wait = threading.Condition.wait
_real_monotonic = time.monotonic


def _monotonic() -> float:
    clock = current()
    return _real_monotonic() if clock is None else clock.time()


def wait(self: threading.Condition, timeout: float | None = None) -> bool:
    """:meth:`threading.Condition.wait`, with a timeout on the run's clock in a worker thread
    that serves a controlled task (CPython's own code otherwise, and this one's shape)."""
    clock = current()
    # (no timeout, none left, or one the machine's own wait refuses or ends at once: nan,
    # infinity, more than threading.TIMEOUT_MAX: as it does)
    if clock is None or timeout is None or not 0 < timeout <= threading.TIMEOUT_MAX:
        return _real_wait(self, timeout)
    if not self._is_owned():  # type: ignore[attr-defined]
        raise RuntimeError("cannot wait on un-acquired lock")
    started = _real_monotonic()
    waiter = threading.Lock()
    waiter.acquire()
    self._waiters.append(waiter)  # type: ignore[attr-defined]
    saved_state = self._release_save()  # type: ignore[attr-defined]
    gotit = False
    wait = clock.begin(timeout, waiter)
    try:
        while not gotit:
            if waiter.acquire(True, _LOOK):
                gotit = True
            elif wait.expired:
                break
            elif not clock.live:
                left = started + timeout - _real_monotonic()
                gotit = waiter.acquire(True, left) if left > 0 else waiter.acquire(False)
                break
        return gotit
    finally:
        clock.end(wait)
        self._acquire_restore(saved_state)  # type: ignore[attr-defined]
        if not gotit:
            with contextlib.suppress(ValueError):  # (a notify took it out)
                self._waiters.remove(waiter)  # type: ignore[attr-defined]


_installed = False


def install() -> None:
    """Put timed waits of threads that serve a run on its clock (once per process; no change
    for any other thread)."""
    global _installed
    if _installed:
        return
    _installed = True
    threading.Condition.wait = wait  # type: ignore[method-assign]
    threading._time = _monotonic  # type: ignore[attr-defined]
    queue.time = _monotonic  # type: ignore[attr-defined]
