"""The quiescence gate: operations start in windows of ``--check-every``, a check between two.

An operation takes a ticket to start and says when it is done. Once a window's tickets are all
taken, later arrivals wait in a first-in first-out queue the harness owns, each parked on its
own; once the window's last operation is done, nothing is in flight (a quiescent point):
the harness checks, then opens the next window by handing its tickets to the first waiters, in
the order they came, and waking those only. A waiter left without a ticket is not woken, so a
check costs the same with 4,096 tasks as with 64.

The order is the queue's, on every backend and in every process: one shared ``anyio.Event``
would not do (trio wakes an event's waiters in the iteration order of a set of tasks, which
follows their memory addresses, and a replay then diverges).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any

__all__ = ["Gate"]


class _Waiter:
    """One operation waiting for a place: parked on a future of its own (asyncio) or as a
    trio task, with what ``anyio.Event`` would do for one waiter (the same wake-ups, in the
    same order), without making an event and its list of waiters for each."""

    __slots__ = ("_future", "_task", "admitted", "number", "ticketed")

    def __init__(self, ticketed: bool) -> None:
        self.ticketed = ticketed
        self.admitted = False
        self.number = 0  # its ticket's, once admitted
        loop = asyncio._get_running_loop()
        self._future: asyncio.Future[None] | None = None
        self._task: Any = None
        if loop is not None:
            self._future = loop.create_future()
        else:
            self._task = _trio().current_task()

    async def wait(self) -> None:
        if self._future is not None:
            await self._future
        else:
            await _trio().wait_task_rescheduled(_aborted)

    def wake(self) -> None:
        self.admitted = True
        if self._future is not None:
            if not self._future.done():  # cancelled meanwhile: its task learns at its wait
                self._future.set_result(None)
        else:
            _trio().reschedule(self._task)


@functools.cache
def _trio() -> Any:
    """``trio.lowlevel``, imported when first needed: only a run on trio needs it."""
    import trio

    return trio.lowlevel


def _aborted(raise_cancel: object) -> Any:
    return _trio().Abort.SUCCEEDED  # a waiter not yet woken leaves the queue itself


class Gate:
    """Admits *window* ticketed operations between two quiescent points.

    :meth:`enter` and :meth:`leave` bracket each operation; after every :meth:`leave` the
    caller asks :meth:`quiescent`, and if so checks and calls :meth:`open`. Entries without a
    ticket (the harness's own release at the end of a task) take none of a window's places but
    still wait while a check is due or under way.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._tickets = window
        self.in_flight = 0
        self.checking = False
        self._waiters: deque[_Waiter] = deque()
        self.woken = 0  # waiters woken in all: one per admitted waiter, none for the others

    @property
    def closed(self) -> bool:
        """Whether a new operation would wait: the window's tickets are all taken."""
        return not self._tickets

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self, *, ticketed: bool = True) -> int:
        """Return once admitted: the number of the window's ticket taken (1 for its first
        operation; 0 without a ticket). If cancelled while waiting, nothing is taken (a place
        given to this waiter meanwhile goes to the next one)."""
        if self._tickets and not self._waiters:
            return self._admit(ticketed)
        waiter = _Waiter(ticketed)
        self._waiters.append(waiter)
        try:
            await waiter.wait()
        except BaseException:
            if waiter.admitted:  # admitted, then cancelled before it ran
                self.in_flight -= 1
                if ticketed:
                    self._tickets += 1
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise
        return waiter.number

    def leave(self) -> None:
        self.in_flight -= 1

    def quiescent(self) -> bool:
        """Whether the window is over and nothing is in flight: the caller that sees it, and
        only that one, checks and then calls :meth:`open`."""
        if self._tickets or self.in_flight or self.checking:
            return False
        self.checking = True
        return True

    def open(self) -> None:
        """Start the next window: its tickets go to the waiters first, in the order they came."""
        self.checking = False
        self._tickets = self.window
        self._wake()

    def _admit(self, ticketed: bool) -> int:
        self.in_flight += 1
        if not ticketed:
            return 0
        self._tickets -= 1
        return self.window - self._tickets

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and not self.checking and (self._tickets or not waiters[0].ticketed):
            waiter = waiters.popleft()
            waiter.number = self._admit(waiter.ticketed)
            self.woken += 1
            waiter.wake()
