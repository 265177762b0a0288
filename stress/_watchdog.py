"""Watching a run for a stall, so that a run that stops making progress still ends with a verdict.

A driver can deadlock (a lost wake-up: every task waits for something no task will do), spin
without end, or block the event loop's thread; the run would then never end. So the run's event
loop runs in a thread of its own, and the calling thread watches how much the run got done: when
nothing ends for ``stall_timeout`` seconds of wall time, the run is stopped with a violation that
names what was in flight. A task stuck where cancellation cannot reach it (a shielded teardown:
avcm finishes what it started, rule 7) keeps the run from ending; after a grace period the run
is abandoned, its loop parked in its (daemon) thread, and its record as the stall found it is
returned.

This is the one place where wall time decides anything, and only whether a run that stopped
making progress is called stalled: where a run on the virtual clock stops is fixed by its seed,
so what is in flight then, and so the violation, is the same in its replay.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import sniffio

__all__ = ["STALL_TIMEOUT", "Watch", "run_watched"]

T = TypeVar("T")

STALL_TIMEOUT = 60.0  # seconds of wall time with nothing ended before a run is called stalled
STOP_GRACE = 5.0  # seconds of wall time a stopped run gets to end (no more than the timeout)
_POLL = 0.25  # seconds between two looks at the run's progress (no more than a quarter of it)


class Watch(Generic[T]):
    """What a run's event loop and the thread watching it share.

    The run calls :meth:`attach` from its event loop, first thing: how far it got, and how to
    stop it. Stopping records what the run got to and returns it (a *T*), once: in the loop,
    which then ends the run, or, if the loop is blocked, in the watching thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call_soon: Callable[[Callable[[], object]], object] | None = None
        self._progress: Callable[[], int] = lambda: 0
        self._stop: Callable[[bool], T] | None = None
        self._interrupt: Callable[[], None] | None = None
        self.stopped: T | None = None

    def attach(
        self,
        progress: Callable[[], int],
        stop: Callable[[bool], T],
        interrupt: Callable[[], None],
    ) -> None:
        """From the run's event loop: *progress()* grows as the run gets things done;
        *stop(blocked)* records that the run stalled (*blocked*: its loop did not run; then
        it is called from the watching thread) and returns the run's record, and unless
        *blocked*, makes the run end; *interrupt()* makes the run end (Ctrl-C)."""
        if sniffio.current_async_library() == "trio":
            import trio

            self._call_soon = trio.lowlevel.current_trio_token().run_sync_soon
        else:
            self._call_soon = asyncio.get_running_loop().call_soon_threadsafe
        self._progress, self._stop, self._interrupt = progress, stop, interrupt

    def progress(self) -> int:
        return self._progress()

    def _stop_once(self, blocked: bool) -> None:
        with self._lock:
            if self.stopped is None and self._stop is not None:
                self.stopped = self._stop(blocked)

    def request_stop(self) -> None:
        """Ask the loop to record the stall and end the run (nothing if it never attached)."""
        if self._call_soon is not None:
            self._call_soon(lambda: self._stop_once(False))

    def request_interrupt(self) -> None:
        if self._call_soon is not None and self._interrupt is not None:
            self._call_soon(self._interrupt)

    def abandon(self) -> None:
        """The run did not end once asked to: its record is made here if the loop never got to
        it, and its loop is parked, so that an abandoned run that spins does not take a core
        for ever."""
        self._stop_once(True)
        if self._call_soon is not None:
            self._call_soon(threading.Event().wait)


def run_watched(body: Callable[[Watch[T]], T], stall_timeout: float) -> T:
    """``body(watch)`` in a thread of its own, watched for a stall (none if *stall_timeout* is
    0): its value, or if it stalled, the record its stop made. An exception it
    raises is raised here; on Ctrl-C (here) the run is asked to end, given the grace period,
    and KeyboardInterrupt raised."""
    watch: Watch[T] = Watch()
    ended: list[tuple[T | None, BaseException | None]] = []
    done = threading.Event()

    def target() -> None:
        try:
            ended.append((body(watch), None))
        except BaseException as error:  # handed to the caller's thread
            ended.append((None, error))
        finally:
            done.set()

    thread = threading.Thread(target=target, name="stress run", daemon=True)
    thread.start()
    grace = min(STOP_GRACE, stall_timeout) if stall_timeout else STOP_GRACE
    try:
        _watch(watch, done, stall_timeout, grace)
    except BaseException:
        watch.request_interrupt()
        done.wait(grace)
        raise
    if watch.stopped is not None:
        # (also when the run ended once stopped: what it did while being stopped depends on
        # how long it ran on before the stall was seen, a matter of wall time)
        return watch.stopped
    if not ended:
        raise RuntimeError("the run stalled before its event loop started")
    value, error = ended[0]
    if error is not None:
        raise error
    return value  # type: ignore[return-value]  # (body returned it)


def _watch(watch: Watch[T], done: threading.Event, stall_timeout: float, grace: float) -> None:
    """Wait until the run is done, or stalled and then stopped (or abandoned)."""
    if not stall_timeout:
        done.wait()
        return
    poll = min(_POLL, stall_timeout / 4)
    last, since = watch.progress(), time.monotonic()
    while not done.wait(poll):
        progress, now = watch.progress(), time.monotonic()
        if progress != last:
            last, since = progress, now
        elif now - since >= stall_timeout:
            watch.request_stop()
            if not done.wait(grace):
                watch.abandon()
            return
