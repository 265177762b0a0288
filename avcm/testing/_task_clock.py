"""The machine's clock as a controlled task reads it: the run's virtual time.

On a plain asyncio loop ``loop.time()`` is ``time.monotonic()``, and on any loop a sleep of
50 ms takes 50 ms of the machine's clock, so code that mixes the two is correct there: a rate
limiter that reads ``time.monotonic()`` and sleeps the rest of its interval, a deadline
``asyncio.timeout_at(time.monotonic() + 0.1)``, a settle loop that yields until half a second
of ``time.monotonic()`` passed. Under the race finder a run's time is virtual: a sleep takes
no machine time, so such code saw no time pass and failed at its first schedule with no
preemption, though no plain run fails (attack66 F4).

So ``time.monotonic()`` and ``time.perf_counter()`` (and their ``_ns`` forms), called in a
controlled task on the event loop's thread, read the run's clock (``anyio.current_time()``:
a read the spin rule counts, as any read of the loop's clock); in any other thread (a
worker thread, which works in machine time), outside a controlled task, or once the run
ended, they are the machine's. What a module took from ``time`` by name before (``from time
import monotonic``) stays the machine's, and so does ``time.time()``, the wall clock.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable

import anyio

__all__ = ["machine_time", "use_loop_clock_in_tasks"]

_machine_monotonic = time.monotonic
_machine_perf_counter = time.perf_counter
_machine_monotonic_ns = time.monotonic_ns
_machine_perf_counter_ns = time.perf_counter_ns

# (the event loop's thread, the run's clock) in a controlled task's context, which its children
# and its worker threads inherit: the thread tells those apart
_task_clock: contextvars.ContextVar[tuple[int, Callable[[], float]] | None] = (
    contextvars.ContextVar("avcm_testing_task_clock", default=None)
)


def machine_time() -> float:
    """The machine's monotonic clock, in seconds, whatever a task reads through ``time``: for
    a harness's own wall-clock bookkeeping (a ``--duration``, how long a run took)."""
    return _machine_monotonic()


def use_loop_clock_in_tasks() -> None:
    """From now on, the calling task and the tasks it spawns, on the event loop's thread, read
    the loop's clock (:func:`anyio.current_time`) through ``time.monotonic()`` and
    ``time.perf_counter()``, as a controlled task of the race finder does: a run on a virtual
    clock where code that mixes the two sees time pass, and the same in every run. Worker
    threads and code outside the tasks read the machine's (:func:`machine_time`)."""
    _install()
    _task_clock.set((threading.get_ident(), anyio.current_time))


_reading = threading.local()  # .now: a read of the run's clock under way in this thread


def _virtual_now() -> float | None:
    clock = _task_clock.get()
    if clock is None or clock[0] != threading.get_ident() or getattr(_reading, "now", False):
        # (the run's clock read on its way: trio's MockClock took time.perf_counter for its
        # real clock when it was made, which may have been this one)
        return None
    _reading.now = True
    try:
        return clock[1]()
    finally:
        _reading.now = False


def _monotonic() -> float:
    now = _virtual_now()
    return _machine_monotonic() if now is None else now


def _perf_counter() -> float:
    now = _virtual_now()
    return _machine_perf_counter() if now is None else now


def _monotonic_ns() -> int:
    now = _virtual_now()
    return _machine_monotonic_ns() if now is None else round(now * 1e9)


def _perf_counter_ns() -> int:
    now = _virtual_now()
    return _machine_perf_counter_ns() if now is None else round(now * 1e9)


_installed = False


def _install() -> None:
    """Let controlled tasks read the run's clock through ``time`` (once per process; nothing
    changes for any other caller)."""
    global _installed
    if _installed:
        return
    _installed = True
    time.monotonic = _monotonic
    time.perf_counter = _perf_counter
    time.monotonic_ns = _monotonic_ns
    time.perf_counter_ns = _perf_counter_ns
