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
import contextlib
import ctypes
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import sniffio

__all__ = ["STALL_TIMEOUT", "Watch", "cut_short", "run_watched"]

T = TypeVar("T")

STALL_TIMEOUT = 60.0  # seconds of wall time with nothing ended before a run is called stalled
STOP_GRACE = 5.0  # seconds of wall time a stopped run gets to end (no more than the timeout)
_POLL = 0.25  # seconds between two looks at the run's progress (no more than a quarter of it)
_PARK_WAIT = 0.5  # seconds of wall time an abandoned loop gets to park before it is interrupted
_RETRACT_CHECKS = 1000  # calls the watching thread makes to take its own exception (one does)

# whether a run of this process was stopped for a stall, or on Ctrl-C
_cut_short = False


def cut_short() -> bool:
    """Whether a run of this process was stopped for a stall or on Ctrl-C: a thread it was
    waiting for (a driver's worker thread stuck for ever, the run's own when abandoned) may
    still be at work, and Python waits at exit for some (an asyncio executor's are joined), so
    a command should end with ``os._exit`` once it said what it has to say."""
    return _cut_short


class _Abandoned(BaseException):
    """Raised in the thread of an abandoned run that keeps its loop busy, so that the loop gets
    control back and parks."""


class _Retracted(BaseException):
    """Raised in the watching thread by itself, to clear the interpreter's mark of a pending
    asynchronous exception (see :func:`_retract_async_exc`)."""


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
        self._parked = threading.Event()
        self.stopped: T | None = None
        self.abandoned = False

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

    def _in_loop(self, callback: Callable[[], object]) -> None:
        """Have the run's loop call *callback* soon; nothing if it never attached or its run
        has ended meanwhile (trio's RunFinishedError, asyncio's closed loop: RuntimeErrors)."""
        if self._call_soon is not None:
            with contextlib.suppress(RuntimeError):
                self._call_soon(callback)

    def request_stop(self) -> None:
        """Ask the loop to record the stall and end the run."""
        global _cut_short
        _cut_short = True
        self._in_loop(lambda: self._stop_once(False))

    def request_interrupt(self) -> None:
        global _cut_short
        _cut_short = True
        if self._interrupt is not None:
            self._in_loop(self._interrupt)

    @property
    def attached(self) -> bool:
        return self._call_soon is not None

    def _park(self) -> None:
        self._parked.set()
        threading.Event().wait()  # for ever: the run's thread waits, taking no core

    def abandon(self, thread: threading.Thread) -> None:
        """The run did not end once asked to: its record is made here if the loop never got to
        it, and its loop is parked in *thread*, so that an abandoned run that spins does not
        take a core for as long as the process lives. A loop kept busy by code that never
        yields (a driver's spin without an await) is interrupted there first (CPython's
        asynchronous exception, :class:`_Abandoned`): it then gets control back to park."""
        self.abandoned = True
        self._stop_once(True)
        self._in_loop(self._park)
        if self._parked.wait(_PARK_WAIT) or thread.ident is None:
            return
        set_async_exc = getattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc", None)
        if set_async_exc is None or not thread.is_alive():
            return
        set_async_exc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned))
        if not self._parked.wait(_PARK_WAIT):
            _retract_async_exc(set_async_exc, thread.ident)


def _retract_async_exc(set_async_exc: Callable[..., int], ident: int) -> None:
    """Take back the exception set for the thread *ident*, which never took it: it is blocked
    in C (a driver's blocking call), not spinning in Python. CPython (3.11, at least) marks
    an asynchronous exception as pending for the whole interpreter until its own thread takes
    it, and with the mark set, a function entered under ``sys.settrace`` (Hypothesis's explain
    phase, coverage, a debugger) checks for it for ever: every later traced call in the process
    hung. Clearing the thread's exception leaves the mark; only a thread that takes one clears
    it, so this thread takes one of its own."""
    set_async_exc(ctypes.c_ulong(ident), None)
    with contextlib.suppress(_Retracted):
        set_async_exc(ctypes.c_ulong(threading.get_ident()), ctypes.py_object(_Retracted))
        for _ in range(_RETRACT_CHECKS):
            _check_pending()  # (taken when a call begins, at the latest)


def _check_pending() -> None:
    pass


def run_watched(body: Callable[[Watch[T]], T], stall_timeout: float) -> tuple[T, bool]:
    """``body(watch)`` in a thread of its own, watched for a stall (none if *stall_timeout* is
    0): its value, or if it stalled, the record its stop made; and whether the run had to be
    abandoned. An exception it raises is raised here; on Ctrl-C (here) the run is asked to end,
    given the grace period, and KeyboardInterrupt raised."""
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
        _watch(watch, done, stall_timeout, grace, thread)
    except BaseException:
        watch.request_interrupt()
        done.wait(grace)
        raise
    if watch.stopped is not None:
        # (also when the run ended once stopped: what it did while being stopped depends on
        # how long it ran on before the stall was seen, a matter of wall time)
        return watch.stopped, watch.abandoned
    value, error = ended[0]  # (a stall is called only once the loop runs, and then recorded)
    if error is not None:
        raise error
    return value, False  # type: ignore[return-value]  # (body returned it)


def _watch(
    watch: Watch[T],
    done: threading.Event,
    stall_timeout: float,
    grace: float,
    thread: threading.Thread,
) -> None:
    """Wait until the run is done, or stalled and then stopped (or abandoned)."""
    if not stall_timeout:
        done.wait()
        return
    poll = min(_POLL, stall_timeout / 4)
    last, since = watch.progress(), time.monotonic()
    while not done.wait(poll):
        progress, now = watch.progress(), time.monotonic()
        if progress != last or not watch.attached:  # (the clock starts once the loop runs)
            last, since = progress, now
        elif now - since >= stall_timeout:
            watch.request_stop()
            if not done.wait(grace):
                watch.abandon(thread)
            return
