"""The controlled scheduler: tasks run one at a time, from one checkpoint to the next.

The scheduler owns the event loop's run queue while :meth:`Run.concurrently` runs: trio's
``runner.runq``, asyncio's ``loop._ready``. When a task under control becomes runnable (it
reached a checkpoint, or what it waited for happened), the queue holds it back instead of
queueing it. Everything else (the scenario itself, tasks a controlled task spawns, the event
loop's own callbacks) runs as usual. When nothing else is runnable, the queue asks the chooser
which held task goes next and releases exactly that one, for one step: up to its next
checkpoint. The sequence of choices is the whole schedule: the same choices give the same run.

What this sees, with no change to the code under test: every checkpoint of every controlled
task, whatever primitive it goes through (anyio, trio or asyncio locks, events, semaphores,
conditions, memory streams, ``sleep(0)``, ``checkpoint()``, a driver's latency sleep). It
switches tasks only there, where the real event loop can switch, and a cancellation reaches a
task only there, as it does in the real loop. avcm's own sync points
(:func:`avcm.lowlevel.sync_point`) do not yield: they name the step in which they are passed.

Time: the clock, if virtual, moves only when no task is runnable (a task the scheduler holds
back is runnable, and so is a task that just yielded with ``sleep(0)``), or when the runnable
tasks only spin. A loop of checkpoints that changes something (a counter, a cursor, a queue)
never makes time pass, however long it runs: a real loop takes microseconds, and a deadline
around it is never reached by the loop itself. The spin rule (:meth:`Run._spin`, after
CHESS's reading of a yield as "I cannot make progress"): when for ``2 * fair_bound`` steps in
a row no task waited, no task outside control ran and no controlled task's own state changed,
the tasks only yield while they wait for time to pass, which in a real loop it does: virtual
time moves to the next timer if that timer ends a sleep (never to a deadline of a cancel
scope or any other timeout), or, when a task reads the clock, by a growing quantum that stays
before the next timer; while I/O with another process is outstanding it waits for the I/O
instead and moves no clock. A spin that waits for a sleeper or for the clock therefore ends;
a true livelock (a spin that time does not end) is still one, reported by the step budget
with the cycle of steps that repeats. The state check cannot see all progress (globals,
objects two references away, C state): that is why no deadline is ever reached by this rule
(a false timeout); its limit is that a spin only its own deadline would end is reported by
the step budget instead.

Outside the loop: a task waiting for a worker thread waits for something outside: no choice
is made meanwhile, the clock stands still and the scheduler waits for the thread, up to
``thread_timeout`` seconds of real time with nothing moving; then the calls waiting for it
are abandoned and the run ends with a :class:`ThreadWaitError`. A thread that waits in a
``threading`` or ``queue`` primitive with nothing moving for ``_THREAD_STALL`` seconds may
wait for what a task must do first: choices then go on without it, and virtual time passes
for the tasks' timers (a sleep that ends before the task sets what it waits for). Such a
wait's timeout is on the run's clock (:mod:`._thread_clock`): it ends when virtual time
passes it, which :meth:`_Queue.expire_thread_wait` moves there when nothing else can. A task
whose cancellation could not abort its wait (a thread's call not abandoned on cancel) still
waits for the thread. On asyncio, what threads hand the loop (``call_soon_threadsafe``)
comes in once no thread the tasks wait for is at work any more, all together, in the order
their calls began: not in the order the machine finishes them.

A program thread (begun since the scenario began, serving no task's call: one the program
starts itself, a job of a pool of its own) is waited for the same way while it is at work
(:meth:`_Queue.program_threads_hold`): no choice is made, the clock stands still, and what
it hands the loop (``from_thread``, ``call_soon_threadsafe``, trio's ``run_sync_soon``)
comes in once neither it nor a thread the tasks wait for is at work, after what those hand
in, by the order the run first saw each program thread (:meth:`_Queue.seen_rank`): where
its call back lands among the tasks' steps does not depend on the machine. A program thread
that keeps a choice waiting for ``_THREAD_STALL`` seconds of real time with no step may
poll for what a task must do first (a flag a task sets): choices go on, and no choice waits
for it again in that run. There determinism ends: where what it hands the loop from then on
lands among the tasks' steps depends on its speed (and so for a thread that works longer
than that for real while a task can run).

I/O waited for (another process's pipes or exit, a socket) is outside too: it is looked at
only when no task can run (or the tasks only spin, or ran ``_SLOW_STEPS`` steps in a row with
time standing still: a poll that counts its rounds never only spins), so that the step at
which it arrives does not depend on how fast the other side is, and the clock stands still
while the scheduler waits for it, up to ``io_timeout`` seconds of real time; then virtual
time moves on to the next timer (a timeout around the I/O), or, with none, the run ends with
an :class:`IOWaitError` (never called a deadlock). Threads' reports (``call_soon_threadsafe``)
come in on the same terms.

Fairness (after CHESS's fair scheduler, Musuvathi and Qadeer, PLDI 2008): a runnable task is
passed over at most ``fair_bound`` times in a row; then the tasks that kept it waiting are
disabled until it has run. A poll loop therefore cannot starve the task it waits for under any
strategy, and a program whose plain runs terminate terminates here; a true livelock runs into
the step budget and is reported with the cycle of steps that repeats.

Preemptions: the order the event loop's own run queue runs the runnable tasks in (first come,
first run; a task that yields goes behind the tasks it woke) is none, so a bug a plain run
shows is found with none. A task chosen out of that turn (one preemption) runs on ahead until
it blocks, as when the others' wakeups come late; a task blocked, or disabled by fairness, is
no choice (:meth:`Run._in_turn`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dis
import functools
import gc
import inspect
import itertools
import math
import operator
import os
import re
import sys
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from types import FrameType
from typing import Any, NamedTuple, NoReturn, overload

import anyio
import anyio.lowlevel
import sniffio

from .. import InvalidError, NotSupportedError
from ..lowlevel import sync_hook
from . import _thread_clock
from ._clock import _SPIN_QUANTUM, _await_frames, _next_sleep, restart_clock, trio_timers
from ._errors import (
    DeadlockError,
    IOWaitError,
    RunawayError,
    StepBudgetError,
    ThreadWaitError,
)
from ._strategies import Chooser
from ._thread_clock import ThreadClock, set_clock
from ._timeline import Step, TaskOutcome, Timeline
from ._token import CALLED_BACK, TIMER_FIRST

__all__ = ["TRIO_VERSIONS", "Run"]


TRIO_VERSIONS = ("0.35.",)
"""The trio releases whose run queue (``runner.runq``) the scheduler is tested against."""

# Frames of these modules are the machinery, not the operation a step belongs to.
_MACHINERY = ("avcm.testing", "avcm._sync", "anyio", "trio", "asyncio", "contextlib", "outcome")


_THREAD_CALLS = frozenset({"run_sync_in_worker_thread", "to_thread_run_sync"})
# What the innermost call to a thread awaits while the thread works: a future (asyncio, no
# frame) or trio's wait for the thread's report. Anything else (a limiter's acquire, a
# checkpoint, trio running a from_thread.run request in the task) is no thread at work.
_THREAD_WAITS = frozenset({"wait_task_rescheduled"})


def _waits_for_thread(coro: Any) -> threading.Thread | bool:
    """Whether a suspended task waits for a worker thread to finish its call: it is in
    anyio's or trio's call to a thread, past the limiter, whatever limiter it is (the thread,
    where the call names it: anyio's on asyncio). A task waiting for a limiter's token waits
    for another task, which can deadlock."""
    frames = _await_frames(coro)
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].f_code.co_name in _THREAD_CALLS:
            inner = frames[index + 1 : index + 2]
            if inner and inner[0].f_code.co_name not in _THREAD_WAITS:
                return False
            worker = frames[index].f_locals.get("worker")
            return worker if isinstance(worker, threading.Thread) else True
    return False


# anyio's calls from a worker thread into the event loop (asyncio backend): the thread has
# handed the loop its request and blocks in a concurrent future's result() for the answer
_FROM_THREAD_CALLS = frozenset({"run_async_from_thread", "run_sync_from_thread"})


@functools.cache
def _anyio_worker_call_line() -> int | None:
    """The line of anyio's asyncio worker thread (``WorkerThread.run``) that runs a call, past
    its check that the call's future was not cancelled; None if this anyio has no such line."""
    from anyio._backends import _asyncio

    run = getattr(getattr(_asyncio, "WorkerThread", None), "run", None)
    code = getattr(run, "__code__", None)
    if code is None:
        return None
    previous = None
    for instruction in dis.get_instructions(code):
        if previous is not None and (previous.argval, instruction.argval) == ("context", "run"):
            return instruction.positions.lineno if instruction.positions else None
        previous = instruction
    return None


def _current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()``, with the garbage collector held off meanwhile: CPython
    3.11 may collect inside it while it holds the interpreter's list of threads, and a
    finalizer that then waits for a lock (one a thread ending needs) deadlocks the loop
    (seen once in CI, in gc_collect_main under _PyThread_CurrentFrames)."""
    if not gc.isenabled():
        return sys._current_frames()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        gc.enable()


def _call_into(thread: threading.Thread, loop: object) -> int:
    """Where *thread* stands in a call into *loop* (``anyio.from_thread.run`` and
    ``run_sync``): 0, in none; 1, in one, handing its request over; 2, blocked in the
    answer's ``result()`` with no answer given. Only then does it wait for the loop (which
    must go on choosing tasks, not wait for it): its request has reached the loop
    (``call_soon_threadsafe`` comes first), and it cannot go on before the loop answers, so
    what the loop does meanwhile is no race with the thread. Once the answer is given it is
    at work again, though it may not have left ``result()`` yet."""
    frame = _current_frames().get(thread.ident or -1)
    waiting = False
    while frame is not None:
        code = frame.f_code
        if code.co_name == "result" and code.co_filename.endswith(_FUTURES_BASE):
            future = frame.f_locals.get("self")
            waiting = isinstance(future, concurrent.futures.Future) and not future.done()
        elif code.co_name in _FROM_THREAD_CALLS and frame.f_locals.get("loop") is loop:
            return 2 if waiting else 1
        frame = frame.f_back
    return 0


def _trio_frame(
    thread: threading.Thread, function: str, frames: dict[int, FrameType] | None = None
) -> FrameType | None:
    """The frame of trio's *function* that *thread* is in, if any (in *frames*, a
    :func:`_current_frames` taken for several questions; else in the threads' frames now)."""
    frame = (_current_frames() if frames is None else frames).get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function and frame.f_globals.get("__name__", "").startswith(
            "trio."
        ):
            return frame
        frame = frame.f_back
    return None


def _calls_back(job: Any) -> bool:
    """Whether a job a thread handed trio is a call back into trio (``trio.from_thread.run``
    or ``run_sync``, anyio's too), not a report of a thread's work: the job is one of the
    call's message's (its method, or a function of its in the closure). A worker thread runs
    call after call, so the thread being in a call back now says nothing of a job it handed
    trio earlier (the result of a call abandoned in an earlier run)."""
    function = job[0] if isinstance(job, tuple) and job else None
    if _is_call_message(getattr(function, "__self__", None)):
        return True
    for cell in getattr(function, "__closure__", None) or ():
        try:
            owner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _is_call_message(owner):
            return True
    return False


def _is_call_message(owner: object) -> bool:
    """Whether *owner* is the message of a call back into trio (``trio.from_thread``'s)."""
    kind = type(owner)
    return kind.__name__ in ("Run", "RunSync") and kind.__module__ == "trio._threads"


@functools.cache
def _answer_wait(code: types.CodeType) -> int | None:
    """Where trio's ``_send_message_to_trio`` (*code*) waits for the answer: the offset of
    the call of its queue's ``get``, past the request handed over; None if it has none."""
    getting = False
    for instruction in dis.get_instructions(code):
        if instruction.argval == "get":
            getting = True
        elif getting and instruction.opname.startswith("CALL"):
            return instruction.offset
    return None


# the messages of calls back into trio (trio.from_thread.run and run_sync) that trio answered
_answered: weakref.WeakSet[Any] = weakref.WeakSet()
_answers_watched: list[bool] = []


def _watch_answers() -> None:
    """Have each answer trio gives a call back into it (``trio.from_thread.run`` and
    ``run_sync``, anyio's too) known from the moment it is given: its message is in
    ``_answered`` from then on (see :func:`_waits_for_answer`). trio gives it in the loop's
    thread, the last thing the message's ``run``, ``run_system`` or ``run_sync`` does, so
    nothing the loop's thread looks at after it can miss it. Done once."""
    if _answers_watched:
        return
    _answers_watched.append(True)
    from trio import _threads

    def answering(method: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        @functools.wraps(method)
        async def answer(message: Any) -> None:
            await method(message)
            _answered.add(message)

        return answer

    def answering_sync(method: Callable[[Any], None]) -> Callable[[Any], None]:
        @functools.wraps(method)
        def answer(message: Any) -> None:
            method(message)
            _answered.add(message)

        return answer

    for name in ("run", "run_system"):
        setattr(_threads.Run, name, answering(getattr(_threads.Run, name)))
    _threads.RunSync.run_sync = answering_sync(  # type: ignore[method-assign,assignment]
        _threads.RunSync.run_sync
    )


def _waits_for_answer(thread: threading.Thread, frames: dict[int, FrameType] | None = None) -> bool:
    """Whether *thread* blocks in a call into trio (``trio.from_thread.run`` or ``run_sync``,
    anyio's too) for an answer trio has not given yet: it waits for trio, not trio for it.
    Only once it has handed trio its request (the call's own frame is where it stands: at the
    call of its queue's ``get``, C code, in which it waits); till then it is at work, handing
    it over (a matter of microseconds), and no task waiting for it is one that waits for trio.
    Once trio gave the answer it is at work again, though it may not have left the call yet:
    not told by the queue, which is empty again once the thread took the answer out, while
    the frame still stands at that call (CPython leaves it there till the next instruction
    begins, and a thread that drops the interpreter lock right as the call returns, as a
    loaded machine has it do, stays there for milliseconds); told by trio's own act of
    answering (:func:`_watch_answers`), which the loop's thread, the one that asks, saw.
    (*frames*: as for :func:`_trio_frame`.)"""
    frame = (_current_frames() if frames is None else frames).get(thread.ident or -1)
    if frame is None or frame.f_code.co_name != "_send_message_to_trio":
        return False
    if not frame.f_globals.get("__name__", "").startswith("trio."):
        return False
    if frame.f_lasti != _answer_wait(frame.f_code):
        return False  # (in its own frame, but before the wait or past it: at work)
    message = frame.f_locals.get("message_to_trio")
    if message in _answered:
        return False
    answers = getattr(message, "queue", None)
    empty = getattr(answers, "empty", None)
    return callable(empty) and bool(empty())


def _thread_task(thread: threading.Thread) -> Any:
    """The trio task whose call a trio worker *thread* runs (the call's task register, in
    the thread's frame), or None."""
    frame = _trio_frame(thread, "worker_fn")
    register = None if frame is None else frame.f_locals.get("task_register")
    return register[0] if isinstance(register, list) and register else None


def _innermost_register(coro: Any) -> list[Any] | None:
    """The task register of the innermost thread call a trio task's coroutine awaits (a call
    back may itself call a thread), or None."""
    calls = [call for call in _await_frames(coro) if call.f_code.co_name in _THREAD_CALLS]
    register = calls[-1].f_locals.get("task_register") if calls else None
    return register if isinstance(register, list) else None


def _register_of(
    thread: threading.Thread, frames: dict[int, FrameType] | None = None
) -> list[Any] | None:
    """The task register of the call a trio worker *thread* runs, or hands its report of in
    (the register its call's task is in, ``[None]`` once the call was abandoned on cancel), or
    None. (*frames*: as for :func:`_trio_frame`; the two looks are at one moment with them.)"""
    frame = _trio_frame(thread, "worker_fn", frames)
    if frame is not None:
        register = frame.f_locals.get("task_register")
    else:
        frame = _trio_frame(thread, "deliver_worker_fn_result", frames)
        report = frame and frame.f_locals.get("report_back_in_trio_thread_fn")
        register = next(
            (
                cell.cell_contents
                for cell in getattr(report, "__closure__", None) or ()
                if isinstance(cell.cell_contents, list)
            ),
            None,
        )
    return register if isinstance(register, list) else None


def _job_register(job: Any) -> list[Any] | None:
    """The task register of the call a job a thread handed trio belongs to (a call's result,
    a call back: held in the job's closure), or None."""
    function = job[0] if isinstance(job, tuple) and job else None
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if (
            isinstance(value, list)
            and len(value) == 1
            and (value[0] is None or type(value[0]).__name__ == "Task")
        ):
            return value
    return None


def _job_task(job: Any) -> Any:
    """The trio task a job a thread handed trio wakes (a call's result, a call back), or None:
    the task its call registered (None too once the call was abandoned on cancel)."""
    register = _job_register(job)
    return None if register is None else register[0]


def _anyio_workers(loop: object) -> list[threading.Thread]:
    """anyio's worker threads of asyncio *loop*."""
    return [
        thread
        for thread in threading.enumerate()
        if getattr(thread, "loop", None) is loop
        and type(thread).__module__ == "anyio._backends._asyncio"
    ]


def _untaken(worker: threading.Thread) -> bool:
    """Whether anyio's asyncio *worker* thread was handed a call it has yet to take past its
    check that the call's future was not cancelled (a call cancelled before is skipped)."""
    queue: Any = getattr(worker, "queue", None)  # the worker's queue.Queue
    if queue is None or not queue.unfinished_tasks or not worker.is_alive():
        return False  # (at most one call at a time: anyio hands calls to idle workers)
    with queue.mutex:
        if any(job is not None for job in queue.queue):
            return True
    # between taking it and the check is a few instructions, but the thread may lose the GIL
    # there for a switch interval, and the loop may cancel the future meanwhile
    frame = _current_frames().get(worker.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "run" and frame.f_globals.get("__name__") == (
            "anyio._backends._asyncio"
        ):
            line = _anyio_worker_call_line()
            taking = frame.f_locals.get("item") is not None  # (from get() to the next)
            return taking and line is not None and frame.f_lineno < line
        frame = frame.f_back
    return False


_FUTURES_BASE = os.path.join("concurrent", "futures", "_base.py")
_SYNC_WAITS = frozenset({"wait", "acquire", "get", "put", "join"})
# A pool thread's frame while it runs a call (trio's to_thread, asyncio's executor); anyio's
# worker threads on asyncio are known by the waits that name them
_SERVING = frozenset({("trio._threads", "worker_fn"), ("concurrent.futures.thread", "run")})


def _waits_in_threading(frame: FrameType) -> bool:
    """Whether a thread stopped at *frame* waits in a ``threading`` or ``queue`` primitive
    (an event, a condition, a queue): for another thread, maybe for the event loop's."""
    return frame.f_code.co_name in _SYNC_WAITS and frame.f_globals.get("__name__") in (
        "threading",
        "queue",
        _thread_clock.__name__,
    )


# Where a thread waits with nothing to do: trio's idle worker, one ending a join, and a
# concurrent.futures pool's idle worker (its innermost frame: it blocks in a SimpleQueue's
# get, which is C; a job it runs has frames of its own below)
_IDLE = frozenset(
    {
        ("trio._core._thread_cache", "_work"),
        ("threading", "_wait_for_tstate_lock"),
        ("concurrent.futures.thread", "_worker"),
    }
)


def _idles(frame: FrameType) -> bool:
    """Whether a thread stopped at *frame* idles (see ``_IDLE``)."""
    return (frame.f_globals.get("__name__"), frame.f_code.co_name) in _IDLE


# A threading wait's frame, and its local that is the lock it blocks on
_BLOCKS_ON = {"wait": "waiter", "_wait_for_tstate_lock": "lock"}


def _about_to_run(frame: FrameType) -> bool:
    """Whether a thread stopped in a ``threading`` wait at *frame* is at work all the same:
    its condition's waiter lock was released (it was notified, and has yet to be scheduled
    by the machine: attack54, a pool's worker answered by the loop, with a job still queued
    for it, looked blocked; or, joining a thread, that one ended), or it waits in
    ``Thread.start`` for the thread it starts, which has no frame to look at yet (attack54: a
    thread starting another and joining it), or its wait has a timeout, on the machine's clock
    for a thread the program started: it ends by itself (a poller waiting 2 ms on an event).
    Or it idles in a pool whose queue holds a job: it takes it once the machine schedules it
    (a job a task handed a pool's idle worker looked not begun for as long as the loop kept
    the interpreter lock, and a task polling for its result took a virtual second or more of
    steps meanwhile, as many as the machine's speed gave it)."""
    if _idles(frame) and frame.f_code.co_name == "_worker":
        empty = getattr(frame.f_locals.get("work_queue"), "empty", None)
        return callable(empty) and not empty()
    if frame.f_code.co_name == "wait" and frame.f_locals.get("timeout") is not None:
        return True  # a timed wait on the machine's clock: it ends by itself (attack54)
    # the lock it blocks on: a condition's waiter, or in a join the ended thread's own
    held = _BLOCKS_ON.get(frame.f_code.co_name)
    lock = frame.f_locals.get(held) if held is not None else None
    if lock is not None and hasattr(lock, "locked") and not lock.locked():
        return True
    caller = frame
    for _ in range(3):  # Condition.wait <- Event.wait <- Thread.start
        caller = caller.f_back  # type: ignore[assignment]
        if caller is None:
            return False
        if caller.f_code.co_name == "start" and caller.f_globals.get("__name__") == "threading":
            return True
    return False


def _thread_wait_first(deadline: float, timer: float | None) -> bool:
    """Whether a thread's timed wait ending at *deadline* ends before the loop's next *timer*
    (None: none), or with it: a thread's timed wait is more punctual than an event loop's
    timer (see :meth:`_Queue.expire_thread_wait`)."""
    return timer is None or deadline <= timer


def _runs(thread: threading.Thread, module: str) -> bool:
    """Whether *thread* was started to run a method of an object of *module*'s (``Thread``
    drops its target once it returned)."""
    owner = getattr(getattr(thread, "_target", None), "__self__", None)
    return owner is not None and type(owner).__module__ == module


def _serves_a_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) in _SERVING:
            return True
        frame = frame.f_back
    return False


def _coro_of(native: Any) -> Any:
    """The coroutine a trio or asyncio task runs: where it is suspended."""
    coro = getattr(native, "coro", None)  # trio
    if coro is None and hasattr(native, "get_coro"):  # asyncio
        coro = native.get_coro()
    return coro


def _turn(task: _Task, steps: int) -> tuple[int, ...]:
    """*task*'s place in the loop's run queue (see :meth:`Run._in_turn`) at *steps*: where it
    was held, or, held with no place (for a thread's call back), by index after the others."""
    return task.ready or (steps, 1, task.index)


def _as_completed_place(coro: Any) -> tuple[object, ...] | None:
    """Where a task being made now for *coro* goes among those ``asyncio.as_completed`` starts
    from the set it makes of the awaitables it was given (None: not one of them): by the
    coroutine's place in the list or tuple it was given (the program's order), else (a set, an
    iterator, a wrapped awaitable) by what it runs (:func:`_awaitable_key`)."""
    frame: FrameType | None = sys._getframe(2)
    inside = False
    for _ in range(8):
        if frame is None:
            break
        code = frame.f_code
        if code.co_filename == asyncio.tasks.__file__ and "s_completed" in code.co_qualname:
            inside = True  # (as_completed, its set comprehension, or 3.13's _AsCompleted...)
            given = frame.f_locals.get("fs", frame.f_locals.get("aws"))
            if isinstance(given, (list, tuple)):
                place = next((at for at, each in enumerate(given) if each is coro), None)
                if place is not None:
                    return (0, place)
        frame = frame.f_back
    return (1, _awaitable_key(coro)) if inside else None


def _awaitable_key(coro: Any) -> tuple[str, ...]:
    """What a coroutine about to start runs, the same in every process: its function's name
    and its arguments, each as its ``repr`` without memory addresses."""
    code = getattr(coro, "cr_code", None)
    frame = getattr(coro, "cr_frame", None)
    if code is None or frame is None:
        return (type(coro).__qualname__,)
    arguments = [
        re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value)) for value in frame.f_locals.values()
    ]
    return (code.co_qualname, *arguments)


def _spawned_name(native: Any) -> str:
    """What a spawned task runs, as a column's name: the function its spawner named it by
    (anyio and trio name a task so), else its coroutine's; without modules and classes."""
    name: object = getattr(native, "name", None)  # trio
    if name is None and hasattr(native, "get_name"):  # asyncio
        name = native.get_name()
        if re.fullmatch(r"Task-\d+", str(name)):  # (asyncio's count: any task of the process)
            name = None
    if not isinstance(name, str):
        name = str(getattr(_coro_of(native), "__qualname__", "task"))
    return name.rsplit("<locals>.", 1)[-1].rsplit(".", 1)[-1]


def _finished(native: Any) -> bool:
    """Whether a trio or asyncio task ended."""
    done = getattr(native, "done", None)
    if callable(done):
        return bool(done())
    return inspect.getcoroutinestate(native.coro) == inspect.CORO_CLOSED


def _unstarted(native: Any) -> bool:
    """Whether a trio task has yet to take its first step (its coroutine not begun)."""
    try:
        return inspect.getcoroutinestate(native.coro) == inspect.CORO_CREATED
    except (AttributeError, TypeError):
        return False


def _qualname(frame: FrameType) -> str:
    # "outer.<locals>.inner" reads better as "inner"
    return frame.f_code.co_qualname.rsplit("<locals>.", 1)[-1]


def _where(coro: Any) -> tuple[str, str, object]:
    """``(operation, checkpoint, waits_on)`` of a suspended task: the outermost function on
    its stack from another module than the task's own code (``Res.bind``, a port's
    ``SeedRes.bind``), else the innermost of its own code; the machinery function its code
    awaits in (``sleep``, ``Event.wait``, ``Lock.acquire``); and the object that function is
    a method of (the lock, the event: :func:`_synchronizes`), or None (``sleep``)."""
    frames = _await_frames(coro)
    for index, frame in enumerate(frames):
        if frame.f_code is _run_task_code:
            frames = frames[index + 1 :]
            break
    own: list[tuple[str, FrameType]] = []
    checkpoint = "await"
    waits_on: object = None
    for frame in frames:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_MACHINERY) or frame.f_code.co_name == "<lambda>":
            if own and checkpoint == "await":
                checkpoint = _qualname(frame)
                waits_on = _synchronizes(frame)
            continue
        own.append((module, frame))
        checkpoint, waits_on = "await", None
    if not own:
        return "", checkpoint, waits_on
    first = own[0][0]
    for module, frame in own:
        if module != first:
            return _qualname(frame), checkpoint, waits_on
    return _qualname(own[-1][1]), checkpoint, waits_on


def _synchronizes(frame: FrameType) -> object:
    """What the machinery method running in *frame* synchronizes on: its ``self`` (a lock, an
    event, a queue), for one end of a memory stream (anyio's, trio's, also through a stapled
    pair) the state both ends share, for a condition its lock (attack65: a task on the
    condition and one on its lock conflict); None for a plain function (``sleep``,
    ``checkpoint``)."""
    code = frame.f_code
    if not code.co_argcount or code.co_varnames[0] != "self":
        return None
    owner = frame.f_locals.get("self")
    kind = type(owner).__name__
    if kind.startswith("Stapled"):  # (anyio's: the end of the pair the method goes through)
        end = "send_stream" if code.co_name.startswith("send") else "receive_stream"
        owner = getattr(owner, end, owner)
        kind = type(owner).__name__
    if "Memory" in kind:  # (anyio's MemoryObject*Stream, trio's Memory*Channel)
        return getattr(owner, "_state", owner)
    if "Condition" in kind:  # (anyio's, trio's, asyncio's: waits that take its lock)
        return getattr(owner, "_lock", owner)
    return owner


def _frames_state(coro: Any, keep: dict[int, object], *, deep: bool = False) -> tuple[object, ...]:
    """A suspended task's own state, as far as it can be seen cheaply: for each frame of its
    code (not the machinery's), where it stands and a shallow fingerprint of its variables.
    *deep*: also of the globals its code names, and those of the functions it calls by a
    global name (a helper that keeps the count), following further the attributes all that
    code names (``h.inner.got``, ``Books.taken``, ``other_module.TAKEN``): where a poll keeps
    its progress (a count in a module's global, a bucket two references away) is what it
    reads."""
    state: list[object] = []
    for frame in _await_frames(coro):
        module_globals = frame.f_globals
        if _is_machinery(module_globals.get("__name__", "")):
            continue
        code = frame.f_code
        if not deep:
            values = tuple(
                (name, _fingerprint(value, keep)) for name, value in frame.f_locals.items()
            )
            state.append((code, frame.f_lasti, values))
            continue
        reads, named = _reads(code, module_globals, frame.f_locals.values())
        values = tuple(
            (name, _fingerprint(value, keep, follow=named))
            for name, value in frame.f_locals.items()
        )
        read = tuple((name, _fingerprint(value, keep, follow=named)) for name, value in reads)
        state.append((code, frame.f_lasti, values, read))
    return tuple(state)


def _is_machinery(module: str) -> bool:
    return module.startswith(_MACHINERY)


def _reads(
    code: types.CodeType, module_globals: dict[str, Any], local_values: Iterable[object]
) -> tuple[list[tuple[str, object]], frozenset[str]]:
    """What *code* reads beyond its variables, by name: the globals it names (a function's
    in its own module's namespace), and those of the functions it calls by a global name
    or holds in a variable (not the machinery's: a helper that keeps the count, a lambda
    that reads it), with what their closures hold, ``_HELPERS`` calls deep; and the names
    all that code reads as globals or attributes."""
    reads: list[tuple[str, object]] = []
    named = set(code.co_names)
    seen = {code}
    functions = [
        (value, _HELPERS) for value in local_values if isinstance(value, types.FunctionType)
    ]
    pending = [(code, module_globals, _HELPERS)]
    while functions or pending:
        while functions:
            function, further = functions.pop()
            called = function.__code__
            if not further or called in seen or _is_machinery(function.__module__ or ""):
                continue
            seen.add(called)
            named.update(called.co_names)
            pending.append((called, function.__globals__, further - 1))
            for name, cell in zip(called.co_freevars, function.__closure__ or (), strict=True):
                with contextlib.suppress(ValueError):  # (a cell not filled yet)
                    held = cell.cell_contents
                    if isinstance(held, types.FunctionType):
                        functions.append((held, further - 1))
                    else:
                        reads.append((name, held))
        if pending:
            code, module_globals, further = pending.pop()
            for name in code.co_names:
                if name in module_globals:
                    value = module_globals[name]
                    if isinstance(value, types.FunctionType):
                        functions.append((value, further))
                    else:
                        reads.append((name, value))
    return reads, frozenset(named)


_HELPERS = 2


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)
# what a class or a module holds that is code, not data
_CODE = (*_OPAQUE, staticmethod, classmethod, property, types.MethodDescriptorType)


def _fingerprint(
    value: object,
    keep: dict[int, object],
    depth: int = 1,
    follow: frozenset[str] = frozenset(),
    further: int = 3,
) -> object:
    """A value's identity, with its size and, one level down, what its attributes or first
    items are (by identity): enough to see a counter, a cursor or a queue move. An attribute
    named in *follow* is looked into one level more, *further* times along a chain; so are
    the first items of a container, those of a class or a module (not the machinery's), and
    the slots of an object that has them, only then (they move with the machinery's state at
    every step, or hold code)."""
    if isinstance(value, (type, types.ModuleType)):
        if not (follow and further) or _is_machinery(_module_of(value)):
            return _identity(value, keep)
        namespace = vars(value)
        return (
            _identity(value, keep),
            *(
                (name, _fingerprint(namespace[name], keep, depth, follow, further - 1))
                for name in _ordered(follow)
                if name in namespace and not isinstance(namespace[name], _CODE)
            ),
        )
    if isinstance(value, (*_OPAQUE, Run, asyncio.AbstractEventLoop)):
        # a Run, an event loop: the machinery's own counters and queues move at every step
        return _identity(value, keep)
    if isinstance(value, (int, float, str, bytes, bool, type(None))):
        return value
    parts: list[object] = [_identity(value, keep)]
    if isinstance(value, (list, tuple, dict, set, frozenset, collections.deque, bytearray)):
        parts.append(len(value))
        if depth > 0 and not isinstance(value, bytearray):
            items = itertools.islice(value.values() if isinstance(value, dict) else value, 16)
            if follow and further:
                # (the deeper look: an item is looked into as a followed attribute is, a dict
                # in a dict or an object at an index of a list holding the count)
                parts.extend(_fingerprint(item, keep, depth, follow, further - 1) for item in items)
            else:
                parts.extend(_fingerprint(item, keep, depth - 1) for item in items)
    if depth <= 0:
        return tuple(parts)
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        members: Iterable[tuple[str, object]] = itertools.islice(attributes.items(), 32)
    elif follow and further and not _is_machinery(type(value).__module__):
        members = _slots(value)
    else:
        return tuple(parts)
    for name, item in members:
        if further and name in follow:
            parts.append((name, _fingerprint(item, keep, depth, follow, further - 1)))
        else:
            parts.append((name, _fingerprint(item, keep, depth - 1)))
    return tuple(parts)


def _identity(value: object, keep: dict[int, object]) -> int:
    """*value*'s identity, *value* kept alive in *keep* for as long as what holds the identity
    is compared with what comes: an object that died, and another made at its address, would
    look the same, as the heap's history decides (a look of the spin rule that saw no change
    in one process saw one in another: a replay diverged)."""
    identity = id(value)
    keep[identity] = value
    return identity


def _module_of(value: type | types.ModuleType) -> str:
    name = value.__name__ if isinstance(value, types.ModuleType) else value.__module__
    return name if isinstance(name, str) else ""


@functools.lru_cache(maxsize=1024)
def _ordered(names: frozenset[str]) -> tuple[str, ...]:
    # (a set's order follows the hash seed; the fingerprint must not)
    return tuple(sorted(names))


def _slots(value: object) -> list[tuple[str, object]]:
    """An object's slots that hold a value, by name (its class's own first)."""
    members: list[tuple[str, object]] = []
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                with contextlib.suppress(AttributeError):
                    members.append((name, getattr(value, name)))
    return members[:32]


_Location = tuple[object, ...]
_GONE = object()  # what a place holds where it is no more, or not yet


def _leaves(state: object) -> dict[_Location, object]:
    """*state* (a task's, of :meth:`Run._state`) place by place: the path to each value it
    holds, by name where it names one (a variable, an attribute), else by position, so that
    a place keeps its path when others come and go."""
    leaves: dict[_Location, object] = {}
    pending: list[tuple[_Location, object]] = [((), state)]
    while pending:
        path, value = pending.pop()
        if not isinstance(value, tuple):
            leaves[path] = value
            continue
        for position, part in enumerate(value):
            if isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], str):
                pending.append(((*path, part[0]), part[1]))
            else:
                pending.append(((*path, position), part))
    return leaves


def _named(place: _Location) -> bool:
    """Whether *place* is a variable's or an attribute's (or within one), not where a task
    stands in its code."""
    return any(isinstance(part, str) for part in place)


def _by_place(tasks: Iterable[tuple[int, object]]) -> dict[_Location, object]:
    """The state of each of *tasks* (its index, what the spin rule looks at of it) place by
    place (:func:`_leaves`), each path led by the task's index."""
    return {
        (task, *place): value for task, state in tasks for place, value in _leaves(state).items()
    }


def _whole(value: object) -> bool:
    """Whether *value* is a whole number (a count of tries, in an int or a float)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _counted(old: object, new: object) -> bool:
    """Whether a place's change from *old* to *new* may be a count of work done (a token
    taken, bytes sent counted in a float), not a float read off the clock, which changes
    whenever it moves (and is a whole number at most by chance, not at both ends)."""
    floats = [value for value in (old, new) if isinstance(value, float)]
    return all(value.is_integer() for value in floats) and len(floats) != 1


def _count_move(old: object, new: object) -> float:
    """How far a count moved from *old* to *new*: 1 for a token taken, more for ticks read
    off the clock; 0 if either is no whole number (a flag, a float read off the clock, a
    place that came or went with the frame that holds it)."""
    return abs(new - old) if _whole(old) and _whole(new) else 0  # type: ignore[operator]


def _but_time(state: object, now: float) -> object:
    """*state* (of :meth:`Run._state`) with the time *now* blanked out wherever it is held:
    what stays the same when the only change is the time the tasks read into a variable."""
    if isinstance(state, float) and state == now:
        return float
    if isinstance(state, tuple):
        return tuple(_but_time(part, now) for part in state)
    return state


class _Counting:
    """What the spin rule learnt of a still run's counting (:meth:`Run._counting`)."""

    __slots__ = ("blanked", "counted", "fell", "fresh", "moved", "only", "places", "run", "whole")

    def __init__(self, run: int) -> None:
        self.run = run  # the still run
        self.places: dict[_Location, object] = {}  # the last look's state, place by place
        self.counted: set[_Location] = set()  # the places only counted up
        self.fell: set[_Location] = set()  # the places that changed other than up
        self.only = False  # the last look found no change but counting up
        self.blanked = False  # the looks blank the counted places out
        self.fresh = False  # and the next look is the first to
        self.whole = False  # the last look found a change other than a float's (_counted)
        self.moved = 0.0  # how far the count that moved most moved then (_count_move)


class _Progress:
    """When the spin rule's moves last brought progress of one kind in a still run."""

    __slots__ = ("at", "by_one", "gap", "time")

    def __init__(self) -> None:
        self.at = -1  # the step at which it came
        self.by_one = False  # no count moved by more than one with it
        self.time = math.nan  # the clock then
        # how long it took to come: since the progress before it in the same still run, or
        # since the look before the move that brought it
        self.gap = 0.0

    def came(self, run: int, step: int, now: float, before: float, *, by_one: bool = False) -> None:
        """Progress came at *step* of the still run begun at *run*, the clock at *now*, the
        look before at *before*; *by_one*: no count moved by more than one with it."""
        self.gap = now - (self.time if self.at >= run else before)
        self.time, self.at, self.by_one = now, step, by_one

    def recent(self, run: int, now: float) -> bool:
        """Whether it came in the still run begun at *run*, no longer ago at *now* than twice
        the time it took to come."""
        return self.at >= run and now - self.time <= 2 * self.gap


class _Task:
    __slots__ = (
        "call_backs",
        "done",
        "handles",
        "held",
        "held_at",
        "index",
        "name",
        "native",
        "obj",
        "passed",
        "point",
        "ready",
        "scope",
        "spawned",
    )

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.native: Any = None  # the trio.lowlevel.Task or asyncio.Task
        self.held = False  # runnable, held back by the scheduler
        self.held_at = 0  # asyncio: the loop's iteration in which it was held
        # its place in the loop's run queue (Run._in_turn): the steps taken when it became
        # runnable, then the order the loop made it runnable in, or by index
        self.ready: tuple[int, ...] | None = None
        self.handles: list[Any] = []  # asyncio: the held callbacks that resume it
        # calls back into the loop from the worker thread it waits for, held till it is chosen
        # (the thread, and what it handed the loop: see _Queue.hold_call_back)
        self.call_backs: list[tuple[threading.Thread, Any]] = []
        self.done = False
        self.point: str | None = "task.start"  # the last sync point passed in this step
        self.obj: object = None
        self.passed = 0  # choices that passed it over since it became runnable
        self.scope: anyio.CancelScope | None = None  # what an injected cancellation cancels
        self.spawned = False  # spawned by a controlled task (_Queue.spawned): no outcome

    def native_coro(self) -> Any:
        """The coroutine the task runs: where it is suspended."""
        return _coro_of(self.native)

    def named(self) -> _Task:
        """The task, its name complete: a spawned one's ends with the name its spawner gave
        it, which asyncio sets only after its task factory returned."""
        if self.spawned and self.name.endswith("/"):
            self.name += _spawned_name(self.native)
        return self


class Run:
    """One controlled run of a scenario: ``await run.concurrently(...)`` runs tasks under
    the scheduler. Made by :func:`explore`, :func:`replay` and friends; scenarios receive it.
    """

    def __init__(
        self,
        chooser: Chooser,
        *,
        max_steps: int = 10_000,
        idle_timeout: float | None = None,
        runaway_steps: int = 200_000,
        fair_bound: int = 32,
        io_timeout: float = 10.0,
        thread_timeout: float = 60.0,
    ) -> None:
        self._chooser = chooser
        # threads alive before the scenario began: none of the run's (a thread its setup
        # starts before concurrently() is: see _Queue.program_threads_at_work)
        self.threads_before = frozenset(threading.enumerate())
        self.max_steps = max_steps
        self.idle_timeout = idle_timeout
        self.runaway_steps = runaway_steps
        self.fair_bound = fair_bound
        self.io_timeout = io_timeout
        self.thread_timeout = thread_timeout
        self._loop_steps = 0  # steps of any task so far: the loop moved
        self._tasks: list[_Task] = []
        self._steps: list[Step] = []
        # per step that synchronized on an object, that object (kept alive: named by id)
        self._objects: dict[int, object] = {}
        self._outcomes: list[TaskOutcome] = []
        self._positions: list[int] = []  # position chosen at each step with a choice
        self._choice_steps: list[int] = []  # the step of each of those choices
        self._preemptions = 0
        self._last: _Task | None = None
        self._lead: _Task | None = None  # chosen out of the loop's order: runs on till it blocks
        restart_clock()  # (timers tie as in every other run, and in a replay)
        self._start_time = anyio.current_time()
        self._queue: _Queue | None = None
        self._error: BaseException | None = None
        self._wake: anyio.Event | None = None
        self._free_steps = 0  # steps of uncontrolled work since the last choice
        self._still_steps = 0  # steps in a row at which virtual time stood still
        self._still_time = 0.0  # the time at which the next step finds it standing still
        # the still run of the last check, the states its checks found, and those with the
        # time blanked out
        self._spin_seen: tuple[int, set[object], set[object]] = (-1, set(), set())
        self._spin_free = 0  # uncontrolled steps since the last spin check
        self._spin_reads = 0  # the clock's reads by tasks, at the last spin check
        self._idle_deadline: float | None = None  # the controller's own timer
        self._spinning = False  # the spin rule's last look found the tasks only yielding
        self._free_state: object = None  # what _free_spin saw last
        # what the identities in the spin rule's states stand for, kept alive while those
        # states are compared with what comes (see _identity): _free_spin's last, the deep
        # look's last, the states of this still run
        self._free_kept: dict[int, object] = {}
        self._deep_kept: dict[int, object] = {}
        self._spin_kept: dict[int, object] = {}
        self._progress_run = -1  # the still run in which the spin rule saw tasks change state
        self._progress_step = 0  # and the step at which it last did
        self._spin_moved = False  # the spin rule moved the clock at its last check
        # the last progress the spin rule's move brought (a token bucket's refill): the still
        # budget counts from there; and the last that moved a count (a token taken, not a
        # float refilled by a fraction, nor a frame come or gone): the moves follow its pace
        self._refilled = _Progress()
        self._paced = _Progress()
        self._spin_now = math.nan  # the loop's clock at the last spin check
        # (still run, deep state's leaves with the time blanked out, the noisy ones: None
        # till a look without a move since the run began) at the last spin check: see
        # _unseen_progress
        self._spin_deep: tuple[int, dict[_Location, object], set[_Location] | None] | None = None
        self._counts = _Counting(-1)  # see _counting
        self._budget_from = 0  # the still budget counts no step before this one
        self._moves_made = 0  # the spin rule's moves of the clock, in this run
        # (step, clock before, clock after) of each move of the clock to a sleep's end past
        # the tasks' steady work or counting (_note_budget_move): Timeline.budget_moves
        self._budget_moves: list[tuple[int, float, float]] = []
        # the still run the spin rule last looked in, and its still step of the next look
        self._look_run = -1
        self._next_look = 0
        self._idle_callbacks = 0  # callbacks in a row, since the last choice, that woke no task
        self._chances = 0  # times the chooser was asked whether threads outlast a timer
        self._outlast_chances: list[int] = []  # those it said they do
        self._outliving = False  # the tasks ended: waiting for threads they left (_outlive)

    # -- what the run did -------------------------------------------------------------------

    @property
    def steps(self) -> int:
        return len(self._steps)

    @property
    def decisions(self) -> tuple[int, ...]:
        """The task chosen at each step (``-1 - task`` for an injected cancellation of *task*,
        :data:`TIMER_FIRST` where threads at work outlasted the next timer,
        :data:`CALLED_BACK` where a call back from a thread whose caller left came in): what a
        replay token records."""
        return tuple(
            TIMER_FIRST
            if step.outlasted
            else CALLED_BACK
            if step.called_back
            else -1 - step.task
            if step.injected
            else step.task
            for step in self._steps
        )

    @property
    def outlast_chances(self) -> tuple[int, ...]:
        """The chances (counted from 0 in the order the run had them: moments the run would
        wait for threads a controlled task waited for while a timer was pending, with or
        without other tasks runnable: :meth:`_Queue.outlast_timer`) at which the strategy let the
        threads outlast the next timer: what shrinking keeps (by chance, not by step, so that
        a shorter schedule still lets the same thread outlast the same timer)."""
        return tuple(self._outlast_chances)

    @property
    def preemptions(self) -> int:
        """Choices out of the event loop's own order (a task taken out of its turn, then
        running on ahead until it blocks, is one)."""
        return self._preemptions

    @property
    def positions(self) -> tuple[int, ...]:
        """The position chosen at each step that had a choice: what shrinking works on."""
        return tuple(self._positions)

    @property
    def choice_steps(self) -> tuple[int, ...]:
        """The step of each of :attr:`positions`' choices."""
        return tuple(self._choice_steps)

    def trail(self) -> list[str]:
        """``task:point`` of every step, for the replay digest."""
        return [f"{step.task}:{step.point}" for step in self._steps]

    def conflict_order(self) -> tuple[object, ...]:
        """The order of the run's conflicting steps, for coverage: two runs give equal
        tuples iff each task took the same steps (at the same points) and every two steps that
        conflict came in the same order. Steps conflict when they synchronize on one object
        (a lock, an event, a queue, a memory stream, what an avcm sync point names), or
        neither names one (a plain checkpoint, a step of the run's own): those may touch
        anything. Steps on two different objects, or on one and at a plain checkpoint, are
        independent: for a program whose shared state is guarded by its sync objects that
        does not change what it does. An object is named by the first step that touched it
        (by its task and the task's own count of steps), the same whatever the order."""
        per_task: dict[int, list[str]] = {}
        named: dict[int, tuple[int, int]] = {}  # per object (by id): its name
        orders: dict[int, list[int]] = {}  # per object (by id): the tasks, in order
        plain: list[int] = []
        objects = self._objects
        for step in self._steps:
            task = step.task
            own = per_task.setdefault(task, [])
            obj = objects.get(step.index)
            if obj is None:
                plain.append(task)
            else:
                key = id(obj)
                # (a task's first touch comes first: the least of its own counts)
                name = named.get(key)
                if name is None or task < name[0]:
                    named[key] = (task, len(own))
                orders.setdefault(key, []).append(task)
            own.append(step.point)
        return (
            tuple((task, tuple(points)) for task, points in sorted(per_task.items())),
            tuple(plain),
            tuple(sorted((named[key], tuple(order)) for key, order in orders.items())),
        )

    def timeline(self) -> Timeline:
        return Timeline(
            tasks=tuple(task.named().name for task in self._tasks),
            steps=tuple(self._steps),
            outcomes=tuple(self._outcomes),
            preemptions=self._preemptions,
            budget_moves=tuple(self._budget_moves),
        )

    # -- running tasks ----------------------------------------------------------------------

    async def concurrently(
        self, *functions: Callable[[], Awaitable[Any]], names: Sequence[str] | None = None
    ) -> list[TaskOutcome]:
        """Run each of *functions* as a task under the scheduler; return how each ended.

        A task's exception (other than cancellation of the whole run) is its outcome, not
        raised here: the scenario decides what the contract allows. Tasks start held, so the
        first choice is who starts (in the loop's own order, the first made). If the run
        fails (a deadlock, the step budget, the chooser giving up) or the caller is
        cancelled, every task is cancelled and runs free to its end, and the failure is
        raised here. Tasks they spawn (a task group's children, ``create_task``, a system
        task on trio) are controlled too, in columns of their own after theirs (see
        :meth:`_Queue.spawned`); they have no outcome here: their errors reach the task that
        waits for them, as in any run. :class:`~avcm.InvalidError` (``EINVAL``), with
        nothing run, for no function, one that is not callable, a wrong number of *names*,
        or a call from a task it controls.
        """
        if names is not None and len(names) != len(functions):
            raise InvalidError(f"concurrently: {len(functions)} functions but {len(names)} names")
        if _controlled.get():
            raise InvalidError(
                "concurrently: called from a task it controls; run every racing task from "
                "the scenario itself"
            )
        if not functions:
            raise InvalidError("concurrently: no function to run")
        for function in functions:
            if not callable(function):
                raise InvalidError(
                    f"concurrently: {function!r} is not a function (an async function, or a "
                    f"callable returning an awaitable)"
                )
        tasks: list[_Task] = []
        for offset, function in enumerate(functions):
            name = names[offset] if names is not None else getattr(function, "__name__", "")
            if not name or name == "<lambda>":
                name = f"task {len(self._tasks)}"
            task = _Task(len(self._tasks), name)
            self._tasks.append(task)
            tasks.append(task)
        outcomes: dict[int, TaskOutcome] = {}
        failure: BaseException | None = None
        self._error = None
        self._queue = queue = _install(self)
        try:
            async with anyio.create_task_group() as group:
                for task, function in zip(tasks, functions, strict=True):
                    group.start_soon(self._run_task, task, function, outcomes)
                try:
                    await self._control(tasks)
                except BaseException as error:
                    # A failure found, the chooser giving up (Hypothesis out of data), or the
                    # controller cancelled: the tasks must not stay held, least of all in a
                    # shielded teardown, or the task group would wait for them forever.
                    failure = error
                    queue.release_all()
                    group.cancel_scope.cancel()
                    await self._wind_down(tasks)
            try:
                await self._outlive()
            except BaseException as error:
                failure = failure or error
        finally:
            self._outliving = False
            if queue.thread_clock is not None:
                queue.thread_clock.release()
            queue.uninstall()
            self._queue = None
            self._spin_kept, self._deep_kept, self._free_kept = {}, {}, {}
            self._spin_seen, self._spin_deep, self._free_state = (-1, set(), set()), None, None
        ordered = [outcomes[task.index] for task in tasks if task.index in outcomes]
        self._outcomes.extend(ordered)
        if failure is not None:
            raise failure
        return ordered

    async def _run_task(
        self,
        task: _Task,
        function: Callable[[], Awaitable[Any]],
        outcomes: dict[int, TaskOutcome],
    ) -> None:
        queue = self._queue
        assert queue is not None
        task.native = queue.current()

        async def hook(point: str, obj: object) -> None:
            # A label, not a yield: outside the race finder a sync point is no checkpoint,
            # so switching there would show what no event loop can do. Tasks this task spawns
            # inherit the hook, and label their own steps (_Queue.spawned).
            running = queue.tasks.get(queue.current())
            if running is not None:
                running.point = point
                running.obj = obj

        # This task's own context: its children inherit the hook. A hook installed around
        # the run (a test injecting faults) runs after this one.
        with sync_hook(hook):
            _controlled.set(True)
            if queue.thread_clock is not None:
                set_clock(queue.thread_clock)
            queue.control(task)
            try:
                # held from here on: the first choice is who starts
                await anyio.lowlevel.checkpoint()
                try:
                    with anyio.CancelScope() as task.scope:
                        value = await function()
                except Exception as error:
                    outcomes[task.index] = TaskOutcome(task.index, task.name, error=error)
                except anyio.get_cancelled_exc_class():
                    # A cancellation no scope of the task's caught (asyncio: its Task.cancel(),
                    # or a gather of a cancelled child, whose error anyio's scope does not
                    # take for its own): it ended this task alone. Let out, it cancelled the
                    # task group and with it the controller (explore() raised CancelledError,
                    # and this task's outcome was lost; attack35 F3, F4).
                    outcomes[task.index] = TaskOutcome(task.index, task.name, cancelled=True)
                else:
                    cancelled = task.scope.cancelled_caught
                    outcomes[task.index] = TaskOutcome(
                        task.index,
                        task.name,
                        value=None if cancelled else value,
                        cancelled=cancelled,
                    )
            finally:
                task.done = True
                queue.forget(task)
                self._notify()

    async def _wind_down(self, tasks: Sequence[_Task]) -> None:
        """The run failed and its tasks were cancelled: wait until they ended, as the task
        group will. A task cancelled while its worker thread works (a call not abandoned on
        cancel) still waits for the thread, and the thread may wait in a call back into the
        loop that waits for ever (:meth:`_Queue.calls_back_waiting`: anyio on asyncio loses
        a wake-up so, and a plain run hangs there). Whenever nothing moved for
        ``idle_timeout`` with no timer pending and no thread at work, such calls back are
        cancelled (the thread's call raises, and its own code decides what it does then):
        else the run would never end, and the failure found would never be reported. So is a
        task's own wait that its shields keep from the run's cancellation
        (:meth:`_Queue.abandon_wait`); one that cannot be aborted at all is left to the task
        group."""
        queue = self._queue
        assert queue is not None and self.idle_timeout is not None
        # (shielded: the controller's own cancellation, one cause of the failure, must not
        # end this wait early; the task group would wait for the same tasks anyway)
        with anyio.CancelScope(shield=True):
            while not all(task.done for task in tasks):
                if await self._moved():
                    continue
                stuck = queue.calls_back_waiting()
                for native in stuck:
                    native.cancel()
                if stuck:
                    continue
                # What still waits is shielded from the run's cancellation (avcm's own
                # teardowns wait shielded) and waits for what cannot come: abandoned, so that
                # the run ends and its failure is reported (a plain run hangs there).
                waiting = [task.native for task in tasks if not task.done]
                if not any([queue.abandon_wait(native) for native in waiting]):
                    return
            self._wake = self._idle_deadline = None

    async def _moved(self) -> bool:
        """Wait for the run to move (what wakes the controller); False once ``idle_timeout``
        passed with no timer pending and no thread at work: nothing can move any more."""
        queue = self._queue
        assert queue is not None and self.idle_timeout is not None
        self._wake = wake = anyio.Event()
        self._idle_deadline = anyio.current_time() + self.idle_timeout
        with anyio.CancelScope(deadline=self._idle_deadline):
            await wake.wait()
            return True
        self._wake = self._idle_deadline = None
        return _next_deadline() is not None or queue.threads_busy()

    async def _outlive(self) -> None:
        """Once the tasks ended: wait until the worker threads whose calls they abandoned on
        cancel (:meth:`_Queue.orphans`) handed in their reports, answering their calls back
        meanwhile as in the run (virtual time passes for what those await), so that nothing a
        run left acts in a later one. Up to ``thread_timeout`` of real time with nothing
        moving (:class:`ThreadWaitError`) or ``idle_timeout`` with every call back waiting
        (a :class:`DeadlockError`); a call back that spins for ever is cancelled and the run
        fails with a :class:`RunawayError` (:meth:`_cancel_spinners`)."""
        queue = self._queue
        assert queue is not None
        self._outliving = True
        while queue.orphans():
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if await self._moved():
                continue
            for thread, _ in queue.orphans():
                queue.give_up(thread)
            raise DeadlockError(
                f"deadlock: the tasks ended, but a worker thread whose call they abandoned on "
                f"cancel waits for a call back into the loop that waits, with no timer "
                f"pending, for {self.idle_timeout:g} s (Limits.idle_timeout)"
            )
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _cancel_spinners(self) -> None:
        """Cancel the tasks outside control that spin for ever (:func:`_spins_for_ever`):
        anyio's call back into asyncio from a thread whose call was abandoned on cancel, made
        once its caller's scope was cancelled and left, waits for that cancellation at its
        first checkpoint, which never comes. A real loop spins on till it ends, and the
        thread waits as long: a failure of the run, found once its tasks ended, not a hang."""
        queue = self._queue
        assert queue is not None
        spinners = [native for native in queue.native_tasks() if _spins_for_ever(native)]
        if not spinners:
            return
        for native in spinners:
            native.cancel()
        if self._error is None and not queue.free:
            self._fail(
                RunawayError(
                    f"a call back into the loop from a worker thread whose call was abandoned "
                    f"on cancel spins for ever ({len(spinners)} task(s) outside control): "
                    f"anyio on asyncio runs a call made after its caller's cancel scope was "
                    f"cancelled and left in a task that waits at its first checkpoint for a "
                    f"cancellation that never comes, and the thread waits for it as long"
                )
            )

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _fail(self, error: BaseException) -> None:
        """The run failed with *error*, found where the run queue asked (no place to raise
        it): kept for the controller, which is woken to raise it."""
        self._error = error
        assert self._queue is not None
        self._queue.call_soon(self._notify)

    # -- choosing, called by the run queue ----------------------------------------------------

    def _choose(self, *, inject: bool = True) -> _Task | None:
        """The held task to run next, or None if the run failed (the error is kept for the
        controller, which is woken to raise it). First, unless not to *inject* (done already:
        :meth:`_inject_now`), the cancellation the chooser injects here, if any."""
        try:
            if inject:
                self._inject()
            assert self._queue is not None
            self._queue.order_spawned()
            return self._choose_or_raise(self._queue.choosable())
        except BaseException as error:
            self._fail(error)
            return None

    def _inject_now(self) -> bool:
        """The cancellation the chooser injects before the next choice, if any; False if the
        run failed (as in :meth:`_choose`)."""
        try:
            self._inject()
        except BaseException as error:
            self._fail(error)
            return False
        return True

    def _inject(self) -> None:
        """Cancel the task the chooser names, if any: where the real event loop delivers it,
        at the task's checkpoint (a held task) or in what it waits for (a blocked one)."""
        inject = getattr(self._chooser, "inject", None)
        if inject is None:
            return
        queue = self._queue
        assert queue is not None

        def running() -> list[int]:
            return sorted(
                task.index
                for task in queue.tasks.values()
                if task.scope is not None and not task.scope.cancel_called
            )

        victim = inject(len(self._steps), _Lazily(running))
        if victim is None:
            return
        task = self._tasks[victim]
        self._append(
            Step(
                index=len(self._steps),
                task=victim,
                point="cancel",
                operation="injected",
                time=self._step_time(),
                injected=True,
            )
        )
        assert task.scope is not None
        queue.calls_taken()  # (what the task's thread does next must not be a race)
        task.scope.cancel()

    def _outlast(self, timer: float) -> bool:
        """Whether the chooser lets the threads at work outlast *timer*: then a step of its
        own says so, in the column of the task that waits for a thread. False also if the
        run failed (the error is kept for the controller, as in :meth:`_choose`)."""
        outlast = getattr(self._chooser, "outlast", None)
        queue = self._queue
        if outlast is None or queue is None:
            return False
        chance = self._chances
        self._chances += 1
        try:
            if not outlast(len(self._steps)):
                return False
            self._outlast_chances.append(chance)
            waiter = queue.thread_waiter(fast=queue.slow()) or self._last or self._tasks[0]
            self._append(
                Step(
                    index=len(self._steps),
                    task=waiter.index,
                    point="timer",
                    operation="thread outlasts",
                    time=self._step_time(),
                    outlasted=True,
                )
            )
        except BaseException as error:
            self._fail(error)
            return False
        return True

    def _called_back(self, column: int) -> None:
        """A call back into the loop from a thread whose call was abandoned on cancel and
        whose caller left came in, which the loop runs: a step of its own, in the *column* of
        the task that left. No choice, and none of the step budget's; it tells each chance
        for the thread to outlast the next timer after a call back from the one before it,
        in the run and in its token."""
        step = len(self._steps)
        self._steps.append(
            Step(
                index=step,
                task=column,
                point="thread",
                operation="calls back",
                time=self._step_time(),
                called_back=True,
            )
        )
        self._still_steps = 0  # (progress outside the loop, as any call back's)
        check = getattr(self._chooser, "called_back", None)  # a replay's: was it recorded?
        if check is None or self._error is not None:
            return
        try:
            check(step)
        except BaseException as error:
            self._fail(error)

    def _choose_or_raise(self, held: Sequence[_Task]) -> _Task:
        self._free_steps = self._idle_callbacks = 0
        last = self._last
        if last is not None and last.native is not None and _finished(last.native):
            # A task ended in the last step: progress no livelock makes (its tasks go round
            # for ever), so the still budget starts again. A burst of 5,000 requests, a task
            # each, took two still steps a request and ran out of it (attack61 F2); a run
            # that never ends while tasks keep ending still meets the budget of steps in all.
            self._budget_from = len(self._steps)
        in_turn = self._in_turn(held)
        # the tasks that kept a task waiting too long are disabled until it has run
        choices = [task for task in in_turn if task.passed >= self.fair_bound] or in_turn
        time = self._step_time()
        if self._look_due():
            spun, time = time, self._spin(time)
            if spun != time:
                self._moves_made += 1
                self._next_look += self._look_delay()
                if len(held) > 1:
                    choices = [self._first_after_move(sorted(held, key=lambda task: task.index))]
        lead = self._lead
        if lead is not None and lead not in held:
            lead = self._lead = None  # (it blocked: its lead ended)
        if lead is not None and lead in choices:
            choices.remove(lead)
            choices.insert(0, lead)
        continuing = len(choices) > 1
        if self._still_steps and self._still_steps % _SLOW_STEPS == 0 and not self._spinning:
            self._look_outside()
        # (threads that outlast a timer take longer than _SLOW_STEPS steps of the tasks, and
        # once it fell due, as long again at the most: see _outspun)
        slow = self._queue is not None and self._queue.late()
        still = min(self.max_steps, _SLOW_STEPS) if slow else self.max_steps
        if self._still(time) and self._budget_steps() >= still:
            time = self._outspun(time)
        self._check_budget(time)
        position = self._chooser.choose(
            len(self._steps), [task.index for task in choices], continuing
        )
        if continuing:
            self._positions.append(position)
            self._choice_steps.append(len(self._steps))
        chosen = choices[position].named()
        chosen.ready = None
        if continuing and position:
            self._preemptions += 1
            self._lead = chosen
        for task in held:
            task.passed += 1
        chosen.passed = 0
        calls_back = self._queue is not None and self._queue.calls_back(chosen)
        if calls_back:
            # (the task waits on: what it passed last labels its own next step)
            point, operation = "thread", "calls back"
        else:
            if chosen.point is not None:
                point, obj = chosen.point, chosen.obj
                operation, _, waits_on = _where(chosen.native_coro())
            else:
                operation, point, waits_on = _where(chosen.native_coro())
                obj = None
            chosen.point = None
            if obj is not None or waits_on is not None:
                self._objects[len(self._steps)] = waits_on if obj is None else obj
        self._append(
            Step(
                index=len(self._steps),
                task=chosen.index,
                point=point,
                operation=operation,
                time=time,
            )
        )
        if calls_back:
            # A thread that calls back made progress outside the loop, in real time: no
            # livelock of the tasks (the steps in all are still counted), and the spin rule
            # does not move the clock on for a task whose thread calls back as often as it
            # likes (progress reports) while no task changed its state.
            self._still_steps = 0
        self._last = chosen
        return chosen

    def _queue_now(self) -> float:
        # the run queue calls this outside any task, where anyio cannot tell the backend
        assert self._queue is not None
        return self._queue.now()

    def _step_time(self) -> float:
        """The time of a step starting now, since the run began (to the ns: runs compare)."""
        return round(self._queue_now() - self._start_time, 9)

    def _still(self, time: float) -> bool:
        """Whether a step at *time* finds virtual time where the last step left it, or where
        the spin rule moved it: no task waited for time to pass since."""
        return not self._steps or time == self._still_time

    def _spin(self, time: float) -> float:
        """The spin rule; returns the time of the step about to start.

        Called every ``2 * fair_bound`` steps of a run of steps with virtual time standing
        still (within which fairness has let every runnable task run; after a move, up to as
        many steps later: :meth:`_look_delay`). The tasks spin when,
        since the last such call, no task outside control ran and the controlled tasks' own
        state (where each of their functions stands, their local variables, and the sizes
        and attributes of what they name) is one an earlier call of this still run found (a
        cycle of states is no change either): they only yielded, which a real loop does
        while time passes. Virtual time then moves as it would: to the next timer (not the
        controller's own) if it ends a sleep, never to a deadline (cancel scopes, other
        timeouts: unseen progress would reach it first in a real loop); and, when a task
        read the clock meanwhile, by a quantum that doubles with the spin's length (the
        virtual clock's, a microsecond first: a real poll's round takes about that, and a
        coarser first move is what a token bucket under a deadline cannot outlive, as the
        moves halve towards it) and stays before the next timer (at most half the way to it),
        so that a deadline around a spin that waits for the clock is not reached first;
        while the moves bring progress the state check sees other than the time read into a
        variable (a token bucket's refill taken, a tick: :func:`_but_time`), they split the
        way to the next timer evenly, ``_REFILL_MOVES`` of them (:meth:`_refilling`), or
        finer, at the pace of progress that comes one at a time (:meth:`_pace_step`), and
        the still budget starts again at each (:meth:`_budget_steps`). While I/O is
        outstanding it waits for the I/O and moves nothing, until a whole ``io_timeout``
        brought nothing. With no sleeper's timer and no clock read the spin is a livelock as
        far as this rule goes: at the step budget (its steps count as standing still, moved
        by this rule or not) :meth:`_outspun` moves time to any timer pending, and with none
        the budget reports it."""
        queue = self._queue
        assert queue is not None
        self._spinning = False
        if not self._still(time) or not queue.virtual:
            return time
        run = len(self._steps) - self._still_steps  # the step at which this still run began
        same_run = self._spin_seen[0] == run
        if not same_run:
            self._spin_seen, self._spin_kept = (run, set(), set()), {}
        state = self._counting(run, self._state(self._spin_kept))
        reads = queue.clock_reads()
        previous_now, self._spin_now = self._spin_now, queue.now()
        free, self._spin_free = self._spin_free, 0
        read, self._spin_reads = reads != self._spin_reads, reads
        moved, self._spin_moved = self._spin_moved, False
        _, seen, seen_but_time = self._spin_seen
        # A state an earlier check of this still run found is no change either: the tasks
        # go round a cycle of states whose length does not divide the checks' period (three
        # tasks with two yields a round, held in turn for fair_bound steps each, came back
        # to the same state every third check, never at the next: a false StepBudgetError
        # for a correct poll of a token bucket, attack27).
        cycled = state in seen
        but_time = _but_time(state, self._spin_now)
        seen.add(state)
        new_but_time = but_time not in seen_but_time
        seen_but_time.add(but_time)
        unseen, whole, deep_moved = self._unseen_progress(run, moved)
        if unseen:
            cycled = False  # (they work on what the move brought: the next look moves on)
        if not cycled or free:
            if same_run:
                if not moved:
                    # this still run's tasks change state, and not for a clock this rule moved
                    self._progress_run, self._progress_step = run, len(self._steps)
                elif not free and (
                    (new_but_time or unseen == "progress")
                    if self._next_timer() is not None
                    else self._counts.whole or whole
                ):
                    # The move brought progress other than the time read into a variable
                    # (a token bucket's refill taken, a tick of the clock): each such move is
                    # a round of the tasks' work, and their budget starts again. With no
                    # timer to bound the moves, only a whole number's change or an object's
                    # counts (a token taken: any float read off the clock changes at every
                    # move), and the moves after it start again (:meth:`_spin_step`), so that
                    # they do not double for ever: a poll of 60 tokens without a deadline met
                    # a false StepBudgetError at 73,000 years (attack30), a livelock reading
                    # ticks took the clock to infinity (attack26); such a livelock ends at the
                    # budget in all.
                    self._refilled.came(run, len(self._steps), self._spin_now, previous_now)
                    most = max(self._counts.moved, deep_moved)  # (of either look)
                    if most:
                        self._paced.came(
                            run, len(self._steps), self._spin_now, previous_now, by_one=most == 1
                        )
            return time
        self._spinning = True  # nothing changed since the last look: the tasks only yield
        if self._look_outside():
            return time
        now = queue.now()
        timer = self._next_timer()
        # Only a sleep's timer is one the spin may be waiting for (or one threads outlast:
        # the strategy chose that they take longer). A deadline (fail_after, move_on_after,
        # any other timeout) is never reached by this rule: what the tasks do may be
        # progress the state check cannot see (a global, an object two references away, C
        # state), which a real loop makes in microseconds, long before any deadline.
        sleep = timer is not None and self._ends_spin(timer)
        if read:
            target = now + self._spin_step(run, time, timer)
            if timer is not None:
                gap = timer - now
                if gap > _SPIN_GRAIN:
                    target = min(target, now + gap / 2)
                    if self._refilling(run, now):
                        # The moves bring progress (a token bucket's refills): they split
                        # the way to the next timer evenly, so the tasks get _REFILL_MOVES
                        # rounds of work before it (moves that went half the way gave about
                        # 20: a false TimeoutError for a bucket that needed more within a
                        # deadline, or beside a task that sleeps till just before it), and a
                        # poll for a number of ticks ends after as many moves at the most.
                        span = gap + time - self._steps[run].time
                        target = min(target, now + max(_SPIN_QUANTUM, span / _REFILL_MOVES))
                        pace = self._pace_step(run, time, span)
                        if pace is not None:
                            target = min(target, now + pace)
                elif sleep:
                    target = min(target, timer)
                else:
                    return time
        elif sleep:
            assert timer is not None
            target = timer
        else:
            return time
        counts = self._counts
        if sleep and target == timer and counts.blanked and counts.run == run:
            self._note_budget_move(target)  # (a spin only once counting was blanked out)
        self._reach(target)
        self._still_time = self._step_time()
        return self._still_time

    def _spin_step(self, run: int, time: float, timer: float | None) -> float:
        """How far the spin rule moves the clock the tasks read, at *time*, *timer* the next
        one (which then bounds the move): as far as it went since the still run began (the
        moves double, from a microsecond), or, with no timer pending, after a move brought
        progress, since then, and at least half the time that progress took to come (a token
        bucket's next refill comes after as long again: two moves, not twenty; an eighth took
        four, and 300 tokens did not fit the budget in all, attack31). While every move
        brings progress the moves shrink towards its pace."""
        refilled = self._refilled
        if timer is not None or refilled.at < run:
            return max(_SPIN_QUANTUM, time - self._steps[run].time)
        return max(_SPIN_QUANTUM, time - refilled.time, refilled.gap / 2)

    def _pace_step(self, run: int, time: float, span: float) -> float | None:
        """How far at the most the spin rule moves the clock at *time* while the moves bring
        progress one at a time (no count moved by more than one: a token taken, not ticks of
        the clock read into a variable; a flag is no count), a deadline *span* away from the
        still run's start: a share (``_PACE_FIRST``) of the time the last such progress took
        to come, then steps of ``_PACE_STEP`` of it up to twice that time, never less than a
        ``_PACE_MOVES``-th of the span. A bucket that keeps one token wastes what a move
        goes past its refill: split evenly, 128 moves fitted 128 tokens within any deadline
        (attack30's 200 within 10 s failed); paced, a refill is passed by an eighth of its
        pace at the most, and the least move lets a count that rises with the clock (ticks)
        rise by more than one, which ends the pacing. None: no bound (no such progress, or
        twice its time passed without it: the moves double again)."""
        paced = self._paced
        if paced.at < run or not paced.by_one:
            return None
        since, gap = time - paced.time, paced.gap
        if since < gap * (_PACE_FIRST - _PACE_STEP / 2):
            step = gap * _PACE_FIRST - since
        elif since < 2 * gap:
            step = gap * _PACE_STEP
        else:
            return None
        return max(_SPIN_QUANTUM, span / _PACE_MOVES, step)

    def _unseen_progress(self, run: int, moved: bool) -> tuple[str | None, bool, float]:
        """What the move before this look brought to state the spin rule's own look does not
        see: the module's globals the tasks' code names, objects further along the
        attributes it names (:func:`_frames_state`, *deep*). Judged place by place
        (:func:`_leaves`): a place is noisy when it changed between the last two looks
        without a move between them (a global count of polls, bumped at every round: a
        metric), and stays so across moves till such a look finds it unchanged.
        ``"progress"`` when a place that is not noisy, the time blanked out, changed across
        the move: a poll whose count of what it took is a global, or a bucket two references
        away, took a refill (unseen, the moves doubled: a false TimeoutError; judged as a
        whole, a metric anywhere hid it, attack29). ``"changed"`` when only noisy places
        changed across the move, or before any look without a move told which are. None
        when the move changed nothing there, or at the first look of a still run. And
        whether such progress was a whole number's or an object's (not a float's: one read
        off the clock changes at every move), and how far the count that moved most moved
        (:func:`_count_move`)."""
        kept: dict[int, object] = {}  # (while the next look compares with this one)
        deep = _by_place(
            (task, _but_time((held, frames), self._spin_now))
            for task, held, frames in self._state(kept, deep=True)
        )
        self._deep_kept = kept
        last = self._spin_deep
        if last is None or last[0] != run:
            self._spin_deep = (run, deep, None)
            return None, False, 0
        _, before, noisy = last
        changed = {
            place
            for place in deep.keys() | before.keys()
            if before.get(place, _GONE) != deep.get(place, _GONE)
        }
        if not moved:
            self._spin_deep = (run, deep, changed)
            return None, False, 0
        self._spin_deep = (run, deep, None if noisy is None else noisy | changed)
        if not changed:
            return None, False, 0
        if noisy is None or changed <= noisy:
            return "changed", False, 0
        progress = changed - noisy
        # (where a task stands is no count, and moves by more than one)
        named = [(before.get(place), deep.get(place)) for place in progress if _named(place)]
        return (
            "progress",
            any(_counted(*change) for change in named),
            max((_count_move(*change) for change in named), default=0),
        )

    def _look_due(self) -> bool:
        """Whether the spin rule looks at the step about to start: every ``2 * fair_bound``
        steps of a still run (within which fairness let every runnable task run), or twice
        as many steps as there are live tasks if more (a look costs a walk of each one's
        frames: at every 64 steps, a burst of 2,000 requests, a task each, spent most of its
        run looking), the look after a move later by :meth:`_look_delay`."""
        still = self._still_steps
        if not still:
            return False
        assert self._queue is not None
        period = 2 * max(self.fair_bound, len(self._queue.tasks))
        run = len(self._steps) - still
        if run != self._look_run:
            self._look_run, self._next_look = run, period
        if still < self._next_look:
            return False
        self._next_look = still + period
        return True

    def _look_delay(self) -> int:
        """How many steps later than the period the look after a move comes. A move's refill
        goes to the task that reaches the bucket first, which tasks taking turns through a
        lock decide, not the chooser; with a look every 64 steps and a round of the tasks a
        divisor of that, each move fell at the same point of their round, and one task (a
        hog holding the lock across a checkpoint) took every refill: a false TimeoutError
        for the others (attack27's ``c_lock_spin_bucket``). A real loop's clock passes a
        refill at any point of the round; so the delay follows the multiples of the silver
        ratio's fraction (a Weyl sequence, other than :meth:`_first_after_move`'s), from the
        run's own count of moves, as a replay does."""
        return math.floor((self._moves_made * _SILVER) % 1.0 * 2 * self.fair_bound)

    def _in_turn(self, runnable: Iterable[_Task]) -> list[_Task]:
        """The *runnable* tasks in the order the event loop's own run queue runs them: first
        come, first run (a task that yields goes behind the tasks it woke). What is no
        preemption; position 0 of a choice (after a task chosen out of turn: that one, until
        it blocks). Tasks a cancellation woke (on asyncio, those woken at once: as a batch
        in the loop's order), or that a worker thread's call back made runnable, go by index
        after the others made runnable by the same step: the order the loop has for them
        follows memory addresses (a set of the tasks to cancel) or the machine's speed, and
        this one is the same in every process and in a replay."""
        steps = len(self._steps)
        for task in runnable:
            task.ready = _turn(task, steps)
        return sorted(runnable, key=operator.attrgetter("ready"))

    def _first_after_move(self, held: list[_Task]) -> _Task:
        """Which of the *held* tasks (by index) takes the first step after the spin rule moved
        the clock. The tasks only yielded since the last look, so who looks first at what the
        move brought (a token bucket's refill) is no interleaving of their work but where
        the clock happened to pass in their round, which on a real loop is any task's turn.
        Left to the strategy, or to fairness, the same task took every refill: a task that
        polls a shared bucket without pause starved the other, a false TimeoutError under
        PCT and Exhaustive (attack26); turns taken in order fell in step with a refill every
        other move. So the turn follows the golden ratio's multiples (a Weyl sequence: no
        period for a refill's rhythm to fall in step with), from the run's own count of
        moves, as a replay does. Not a preemption: no choice."""
        turn = math.floor((self._moves_made * _GOLDEN) % 1.0 * len(held))
        return held[turn]

    def _refilling(self, run: int, now: float) -> bool:
        """Whether the spin rule's moves still bring progress, at *now*, in the still run
        begun at step *run*: progress came in it, and no longer ago than twice the time it
        took to come (a token bucket's rate), of either kind: any, or one count at a time
        (the fraction of a token a bucket holds changes at every move, so its gap is the
        last move's; a paced move twice as long ended the refilling, and the next went half
        the way to the deadline: a false TimeoutError for 8 tasks sharing a bucket,
        attack32). A single change a move happened to bring (a
        lock changing hands, a unit's answer) splits the way for a move or two only: while
        it lasted for the rest of a still run, a driver polling its unit's status bit took
        128 moves for each of its unit's latencies and ran out of its budget in all."""
        return self._refilled.recent(run, now) or self._paced.recent(run, now)

    def _budget_steps(self) -> int:
        """The steps the still budget counts: those of the still run since the tasks last
        made progress that the spin rule's move brought (or since it began again:
        :meth:`_outspun`)."""
        steps = len(self._steps)
        return min(self._still_steps, steps - self._refilled.at, steps - self._budget_from)

    def _counting(
        self, run: int, state: tuple[tuple[int, bool, tuple[object, ...]], ...]
    ) -> object:
        """*state* (the spin rule's look) as the rule compares it: as it is, or, once the
        tasks spent a whole still budget only counting (:meth:`_outspun`), with the places
        they counted up blanked out. A poll that counts its failed tries in a variable
        (``tries += 1``) changes its state at every round, so the rule never saw it spin:
        a false StepBudgetError for a correct poll of a token bucket under a deadline,
        where a real loop's clock runs on while it counts. A look counts only when every
        variable or attribute that changed since the last look holds a whole number that
        went up (where a task stands may differ)."""
        counts = self._counts
        if counts.run != run:
            counts = self._counts = _Counting(run)
        places = _by_place((task, frames) for task, _held, frames in state)
        rising = set()
        only = bool(counts.places)
        counts.whole, counts.moved = False, 0
        for place, value in places.items():
            old = counts.places.get(place, _GONE)
            if old == value or not _named(place):
                continue  # (unchanged, or where a task stands)
            # (what they count their tries in is no progress)
            if _counted(old, value) and place not in counts.counted:
                counts.whole = True
                counts.moved = max(counts.moved, _count_move(old, value))
            if _whole(old) and _whole(value) and value > old:  # type: ignore[operator]
                rising.add(place)
            else:
                if old is not _GONE:
                    counts.fell.add(place)  # (a flag that toggles is no count)
                only = False
        counts.places = places
        counts.only = only and bool(rising) and not rising & counts.fell
        if not counts.blanked:
            if counts.only:
                counts.counted |= rising
            counts.counted -= counts.fell
            return state
        blanked = tuple(
            (place, int if place in counts.counted else value) for place, value in places.items()
        ) + tuple((task, held) for task, held, _ in state)
        if counts.fresh:
            # the first look that blanks them out: it compares with none of this still run's
            # before, and they only counted a whole budget long: it is one they spin in
            counts.fresh = False
            assert self._queue is not None
            self._spin_seen[1].add(blanked)
            self._spin_seen[2].add(_but_time(blanked, self._queue.now()))
        return blanked

    def _look_outside(self) -> bool:
        """Let in what the tasks may be polling for from outside the loop, as if no task
        could run: what late threads and threads whose caller left handed in, and I/O.
        Whether a poll for it was asked for (the clock must not move meanwhile). Asked by
        the spin rule, and every ``_SLOW_STEPS`` steps of a still run whatever the tasks do:
        a poll whose every round changes its own state (a counter) is never only spinning,
        and a real loop lets a thread's call back in within microseconds of it, not never."""
        queue = self._queue
        assert queue is not None
        queue.settle(spin=True)  # what they spin for may be what a late thread brings
        if not (queue.io_waits() or queue.reported()):
            return False
        if not queue.io_quiet:
            # What they spin for may be I/O, for which real time passes, not virtual time:
            # wait for it, as if no task could run, and move no clock meanwhile (a
            # deadline around the spin is not reached while another process works).
            queue.wait_io = True
            return True
        # a whole io_timeout of real time brought nothing: time passes, as it does when
        # every task waits for I/O that does not come
        queue.io_quiet = False
        return False

    def _free_spin(self) -> None:
        """The spin rule for tasks outside control (the scenario's own) that keep the
        loop busy while no controlled task can run: when, two looks ``_FREE_IO_STEPS`` of
        their steps apart, no task's state changed (the spin rule's state, of every task
        of the loop), they only yield, and virtual time moves to the next timer if it ends
        a sleep (a controlled task's, which ends what they poll for)."""
        queue = self._queue
        assert queue is not None
        if not queue.virtual:
            return
        controlled = queue.ever
        # a multiset: the loop's tasks come in no order that a run could depend on
        kept: dict[int, object] = {}  # (while the next look compares with this one)
        state = collections.Counter(
            _frames_state(_coro_of(native), kept)
            for native in queue.native_tasks()
            if native not in controlled
        )
        previous, self._free_state = self._free_state, (self._state(kept), state)
        self._free_kept = kept
        if previous != self._free_state:
            return
        timer = self._next_timer()
        if timer is not None and self._ends_spin(timer):
            self._reach(timer)
            self._free_state = None

    def _ends_spin(self, timer: float) -> bool:
        """Whether tasks that only spin may wait for *timer*, the next one, so that the spin
        rule moves virtual time on to it: a sleep's (what ends it may be what they poll for),
        or the one threads outlast (:meth:`_Queue.slow`): they took longer than that, so a
        real loop's clock reached it while the tasks spun."""
        assert self._queue is not None
        return _next_sleep() == timer or self._queue.slow_until == timer

    def _outspun(self, time: float) -> float:
        """At the step budget, a still run whose tasks spin (the spin rule's last look saw no
        task's state change: a livelock as far as steps go) while a timer other than the
        controller's is pending: a real loop's clock runs on while tasks spin, and reaches
        that timer (the deadline of a wait that another task only polls for, a
        ``call_later``), so virtual time moves to it and the budget starts again, instead of
        a :class:`StepBudgetError`. Steady progress still ends at the budget (a real loop
        takes as long as the machine makes it), but when the next timer ends a sleep (a
        poll that counts its rounds while it waits for what a sleeper brings), while
        threads outlast a timer (:meth:`_Queue.slow`: a thread longer than ``_SLOW_STEPS``
        steps of the tasks, when this is asked after as many), and a spin with no timer
        pending is a livelock."""
        queue = self._queue
        assert queue is not None
        counts = self._counts
        if (
            counts.only
            and not counts.blanked
            and counts.run == len(self._steps) - self._still_steps
        ):
            # the tasks only counted up, a whole budget long: they spin, counting (_counting)
            counts.blanked = counts.fresh = True
            self._budget_from = len(self._steps)
            self._progress_run = -1  # (counting is no progress: a livelock may count)
            return time
        if queue.late() and not queue.slow():
            # threads late past a timer they outlasted (_Queue.late) took _SLOW_STEPS steps
            # of the tasks longer, whatever progress those made: what they hand the loop
            # comes in now, and no later timer falls due before it
            queue.settle(spin=True)
            self._still_steps = 0
            return time
        # (threads that outlast a timer took longer than _SLOW_STEPS steps of the tasks: its
        # timer falls due meanwhile, whatever progress they made)
        if not queue.virtual:
            return time
        timer = self._next_timer()
        if timer is None:
            return time
        # a sleep's end is reached too while the tasks make steady progress: a poll that
        # counts its rounds waits for what a sleeper brings (attack21), and a real loop's
        # clock reaches it while the poll goes on; never a timeout's deadline that way
        if not (self._spinning or queue.slow() or _next_sleep() == timer):
            return time
        if not queue.slow() and (counts.blanked or not self._spinning):
            self._note_budget_move(timer)
        self._reach(timer)
        self._still_steps = 0
        self._still_time = self._step_time()
        return self._still_time

    def _next_timer(self) -> float | None:
        """The loop's next timer but the controller's own, if any."""
        return _next_deadline(exclude=self._idle_deadline)

    def _note_budget_move(self, timer: float) -> None:
        """Note in the run's timeline that the clock moves on to *timer*, a sleep's end, while
        the tasks kept changing state, or only counted up once the budget blanked that out:
        steady work and a poll that counts its tries look the same to these rules, and a
        verdict that follows may be one a faster machine would not give (attack31: a
        watchdog's failure beside steady work said nothing of it)."""
        assert self._queue is not None
        self._budget_moves.append((len(self._steps), self._queue.now(), timer))

    def _reach(self, timer: float) -> None:
        """Move virtual time on to *timer*, as the spin rule does."""
        assert self._queue is not None
        self._queue.advance(timer)
        self._spin_moved = True

    def _state(
        self, keep: dict[int, object], *, deep: bool = False
    ) -> tuple[tuple[int, bool, tuple[object, ...]], ...]:
        """What a spin must not change: every live controlled task's own frames, where each
        stands and what its variables hold (*deep*: :func:`_frames_state`'s; what its
        identities are of kept in *keep*)."""
        assert self._queue is not None
        alive = sorted(self._queue.tasks.values(), key=operator.attrgetter("index"))
        return tuple(
            (task.index, task.held, _frames_state(task.native_coro(), keep, deep=deep))
            for task in alive
            if not task.done and not (task.spawned and _finished(task.native))
        )

    def _steady_progress(self) -> bool:
        """Whether the spin rule's looks saw the tasks change state in this still run, the
        last time in the last half of the budget: progress that an earlier part of the run
        made (tasks that ended, 20 of them, before two went round a livelock) is no
        evidence about how it ends (attack61 F3: such a livelock was called steady progress,
        with the advice to raise the budget)."""
        return (
            self._progress_run == len(self._steps) - self._still_steps
            and len(self._steps) - self._progress_step <= self.max_steps // 2
        )

    def _check_budget(self, time: float) -> None:
        """Refuse a step at *time* beyond the budget: more than ``max_steps`` in a row with
        virtual time standing still (a livelock: tasks that only ever find one another
        runnable), or more than ``_ALL_STEPS * max_steps`` in all (a run that does not end,
        though time passes: a poll whose condition never comes true). A poll loop whose
        every repetition waits for time to pass is no livelock: its steps do not count
        towards the first."""
        if self._still(time) and self._budget_steps() >= self.max_steps:
            error = StepBudgetError(self._describe_budget())
            error.steady_progress = self._steady_progress()
            raise error
        if len(self._steps) >= self.max_steps * _ALL_STEPS:
            raise StepBudgetError(
                f"the run took more than {self.max_steps * _ALL_STEPS} steps "
                f"({_ALL_STEPS} x max_steps) while virtual time went on to "
                f"{self._steps[-1].time:g} s: a run that does not end (a poll for what never "
                f"comes), or a bigger scenario than max_steps allows"
            )

    def _append(self, step: Step) -> None:
        self._check_budget(step.time)
        self._still_steps = self._still_steps + 1 if self._still(step.time) else 1
        self._still_time = step.time
        self._steps.append(step)
        self._loop_steps += 1

    def _uncontrolled_step(self, count: int, *, task: bool = True) -> None:
        """*count* steps of uncontrolled work ran: task steps, or (*task* false) one callback
        that resumes no task."""
        self._free_steps += count
        self._spin_free += count
        if task:
            # a callback that resumes no task (anyio retrying a cancellation) is no sign of
            # life: a thread waiting meanwhile is still stalled, and one that never returns
            # still runs out its thread_timeout
            self._loop_steps += count
        if self._free_steps % _FREE_IO_STEPS < count:
            # tasks outside control that run on and on may spin for I/O: let it in
            assert self._queue is not None
            self._queue.wait_io = bool(self._queue.io_waits())
            if task:
                self._free_spin()
                if self._outliving:
                    self._cancel_spinners()
        self._idle_callbacks = 0 if task else self._idle_callbacks + count
        if self._idle_callbacks >= _IDLE_CALLBACKS:
            # Callbacks that wake no task, over and over (anyio's asyncio backend retries a
            # cancellation every iteration while the cancelled task waits in a shielded
            # scope): no task is runnable, so time may pass. A task that runs, controlled or
            # not, is runnable: it never makes time pass, however long it spins. Nor does a
            # thread at work: a real loop spins on for as long as it takes (milliseconds), and
            # how many callbacks that is depends on the machine; its report comes first.
            self._idle_callbacks = 0
            assert self._queue is not None
            if not self._queue.time_waits_for_threads():
                self._queue.let_time_pass()
        if self._free_steps > self.runaway_steps:
            self._free_steps = 0
            queue = self._queue
            assert queue is not None
            if queue.free:
                # The run failed and is being torn down, and tasks run on and on regardless
                # (anyio on asyncio spins in checkpoint_if_cancelled in a task added to a
                # cancel scope whose cancellation was delivered before it came: a thread's
                # from_thread.run call, which a real loop runs for ever too): cancel them,
                # or the run never ends.
                queue.cancel_runaways()
            elif queue.virtual and (timer := self._next_timer()) is not None:
                # as many steps as a real loop takes a second or so for, with no task but
                # those outside control runnable: its clock would have reached the next
                # timer meanwhile (a controlled task's sleep that ends what they poll for)
                self._reach(timer)
            elif self._error is None:
                self._fail(
                    RunawayError(
                        f"tasks outside the scheduler's control (the scenario's own, or spawned "
                        f"by those) ran {self.runaway_steps} steps without ever "
                        f"all waiting"
                    )
                )

    def _counted_places(self, learnt: _Counting) -> str:
        """The variables *learnt* found only counted up, and whose."""
        return ", ".join(
            sorted(
                {
                    f"{'.'.join(part for part in place if isinstance(part, str))} of task "
                    f"{place[0]} ({self._tasks[place[0]].name})"
                    for place in learnt.counted
                    if isinstance(place[0], int)
                }
            )
        )

    def _describe_budget(self) -> str:
        # (the steps the budget counted: a cycle is looked for among those)
        trail = [
            (step.task, step.operation, step.point)
            for step in self._steps[len(self._steps) - self._budget_steps() :]
        ]
        still = (
            f"the run took more than {self.max_steps} steps in a row with no task waiting for "
            f"time to pass"
        )
        if self._steady_progress():
            return (
                f"step budget: {still}, while the tasks kept changing state (their frames, "
                f"variables or what those name): steady progress, no livelock seen; a longer "
                f"run than the budget allows: raise it (Limits(max_steps=...))"
            )
        # what the budget ran out in: a livelock, or (once the tasks' looks blank out what
        # they count: _counting) a poll that counts its tries for what never comes or steady
        # work, which a look at their state cannot tell apart
        learnt = self._counts
        if learnt.blanked and learnt.run == len(self._steps) - self._still_steps:
            what = (
                f"step budget: {still}, while the tasks kept changing state only by counting "
                f"up ({self._counted_places(learnt)}) for twice the budget: a poll that counts "
                f"its tries for what never comes, or steady work longer than the budget "
                f"allows (raise it: Limits(max_steps=...))"
            )
        else:
            what = f"livelock: {still}"
        period = _cycle(trail)
        if period is not None:
            lines = [f"{what}, and its last {period} step(s) repeat over and over:"]
            runs = [(step, len(list(same))) for step, same in itertools.groupby(trail[-period:])]
        else:
            # A strategy that picks at random interleaves the tasks' cycles in no fixed order:
            # the cycle is then the few steps the run keeps going round.
            recent = trail[len(trail) // 2 :]
            counts = collections.Counter(recent)
            if len(counts) > _CYCLE_STEPS or min(counts.values()) < 3:
                if what.startswith("step budget"):
                    return what
                return (
                    f"{still} and no short cycle of steps repeating: a bigger scenario than "
                    f"max_steps allows, or a livelock"
                )
            lines = [
                f"{what}, and its last {len(recent)} steps go round the same "
                f"{len(counts)} step(s), in no fixed order:"
            ]
            runs = sorted(counts.items())
        for (task, operation, point), count in runs[:_CYCLE_STEPS]:
            where = f"{operation} {point}" if operation else point
            times = f" (x{count})" if count > 1 else ""
            lines.append(f"  task {task} ({self._tasks[task].name}) {where}{times}")
        if len(runs) > _CYCLE_STEPS:
            lines.append(f"  ... and {len(runs) - _CYCLE_STEPS} more")
        return "\n".join(lines)

    # -- the controller ---------------------------------------------------------------------

    async def _control(self, tasks: Sequence[_Task]) -> None:
        """Wait until every task ended, raising what the run queue found; a deadlock when
        nothing moved for ``idle_timeout`` (virtual seconds, on a virtual clock: it passes
        only when every task waits and no other timer is pending)."""
        virtual = _virtual_clock()
        if self.idle_timeout is None:
            self.idle_timeout = 3600.0 if virtual else 1.0
        assert self._queue is not None
        seen = -1
        since = time.monotonic()  # real time: when steps last moved
        while True:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if all(task.done for task in tasks):
                return
            self._wake = wake = anyio.Event()
            self._idle_deadline = anyio.current_time() + self.idle_timeout
            with anyio.CancelScope(deadline=self._idle_deadline):
                await wake.wait()
                continue
            self._wake = self._idle_deadline = None
            if self._error is not None or self._queue.held():
                continue
            if seen != len(self._steps):
                seen, since = len(self._steps), time.monotonic()
                moved = True  # on a real clock: something moved within the last idle_timeout
            else:
                moved = False
            if (
                _next_deadline() is not None
                or self._queue.threads_busy()
                or self._queue.program_threads_at_work()
            ):
                continue  # time passes for another timer, or a worker thread is at work
            if self._queue.io_waits():
                # A virtual clock reached this timer only after the loop had waited
                # io_timeout for I/O with nothing arriving; a real clock runs on meanwhile.
                if virtual or time.monotonic() - since >= self.io_timeout:
                    raise IOWaitError(self._describe_stuck(tasks, io=True))
                continue
            if moved:
                continue
            raise DeadlockError(self._describe_stuck(tasks))

    def _describe_stuck(self, tasks: Sequence[_Task], *, io: bool = False) -> str:
        if io:
            lines = [
                f"I/O never came: every task waits, some for I/O with the world outside "
                f"(another process, a socket, a pipe), and nothing arrived in "
                f"{self.io_timeout:g} s of real time (Limits.io_timeout) while virtual time "
                f"stood still; no timer is pending: a peer that never answers, or tasks "
                f"deadlocked through a socket"
            ]
        else:
            lines = [
                "deadlock: every task is blocked, no timer is pending, no thread is at work "
                "and no I/O is waited for"
            ]
        spawned = [task for task in self._tasks if task.spawned and not _finished(task.native)]
        for task in [*tasks, *spawned]:
            task.named()
            if task.done:
                continue
            if task.point is not None:
                lines.append(
                    f"  task {task.index} ({task.name}) waits at {task.point} {task.obj!r}"
                )
            else:
                operation, checkpoint, _ = _where(task.native_coro())
                where = f"{operation} {checkpoint}" if operation else checkpoint
                lines.append(f"  task {task.index} ({task.name}) waits in {where}")
        assert self._queue is not None
        for native in self._queue.calls_back_waiting():
            frames = _await_frames(_coro_of(native))
            called = _qualname(frames[1]) if len(frames) > 1 else "?"
            line = (
                f"  a worker thread's call back into the loop (from_thread.run) waits in {called}"
            )
            if _cancellation_never_delivered(native):
                line += (
                    ": it runs in its thread's caller's cancel scope, cancelled before the "
                    "call began, and anyio on asyncio never delivers that cancellation to "
                    "it, while its primitives pass a task with a cancellation pending over "
                    "(a memory stream's send): a wake-up lost, which hangs a plain run too"
                )
            lines.append(line)
        return "\n".join(lines)


def _spins_for_ever(native: Any) -> bool:
    """Whether an asyncio task spins for ever in anyio's ``checkpoint_if_cancelled``: its
    cancel scope was left (no cancellation is delivered through it any more) and it, or one
    it is nested in before a shield, was cancelled. anyio puts a thread's call back into the
    loop (``from_thread.run``) in the scope of the thread's call: one abandoned on cancel
    whose caller left."""
    module = sys.modules.get("anyio._backends._asyncio")
    if module is None or not any(
        frame.f_code.co_name == "checkpoint_if_cancelled"
        and frame.f_globals.get("__name__") == module.__name__
        for frame in _await_frames(_coro_of(native))
    ):
        return False
    state = getattr(module, "_task_states", {}).get(native)
    scope = getattr(state, "cancel_scope", None)
    if scope is None or getattr(scope, "_active", True):
        return False
    while scope is not None:
        if scope.cancel_called:
            return True
        if scope.shield:
            return False
        scope = scope._parent_scope
    return False


def _runs_a_call_back(native: Any) -> bool:
    """Whether an asyncio task runs a worker thread's call back into the loop (anyio's
    ``from_thread.run``, its ``task_wrapper``): the thread blocks till it ends."""
    frame = getattr(_coro_of(native), "cr_frame", None)
    return (
        frame is not None
        and frame.f_code.co_name == "task_wrapper"
        and frame.f_globals.get("__name__") == "anyio._backends._asyncio"
    )


def _cancellation_never_delivered(native: Any) -> bool:
    """Whether anyio on asyncio takes an asyncio task for cancelled (its cancel scope is)
    that is not being cancelled: asyncio will not raise in it (its scope's cancellation
    was delivered, and ended, before the task joined the scope: a thread's call back,
    which anyio puts in the scope of the thread's caller)."""
    module = sys.modules.get("anyio._backends._asyncio")
    state = getattr(module, "_task_states", {}).get(native)
    scope = getattr(state, "cancel_scope", None)
    return (
        bool(getattr(scope, "_effectively_cancelled", False))
        and getattr(scope, "_cancel_handle", None) is None
        and not getattr(native, "_must_cancel", False)
    )


def _cycle(trail: Sequence[object]) -> int | None:
    """The shortest period with which the second half of *trail* repeats (at least three
    times), or None."""
    window = len(trail) // 2
    for period in range(1, window // 3 + 1):
        if all(trail[-k] == trail[-k - period] for k in range(1, window - period + 1)):
            return period
    return None


_run_task_code = Run._run_task.__code__
_ALL_STEPS = 20  # times max_steps: steps in all, time passing or not, before a StepBudgetError
_IDLE_CALLBACKS = 1000  # callbacks in a row waking no task, after which a virtual clock moves
_FREE_IO_STEPS = 1000  # steps in a row of tasks outside control, after which I/O is looked at
_THREAD_POLL = 1.0  # seconds of real time between looks at a thread that does not report
_THREAD_STALL = 1.0  # seconds of real time threads may keep the run still before it goes on
_PROGRAM_THREAD_POLL = 0.005  # seconds of real time between looks at a thread the program started
_HANDOVER = 1.0  # seconds of real time a thread is given to hand a call over to the loop
_HANDOVER_POLL = 1e-4  # seconds between looks at it
_CYCLE_STEPS = 12  # the most steps a livelock's cycle is shown with
_OUTSIDE = 1 << 32  # a task outside control's place in the order of waits: after every controlled
_SLOW_STEPS = 1000  # steps in a row with time still, after which a timer threads outlast is due
_GOLDEN = (math.sqrt(5) - 1) / 2  # whose turn it is after a move: see _first_after_move
_SILVER = math.sqrt(2) - 1  # how much later the look after a move comes: see _look_delay
# After progress came, the spin rule's next move goes this share of the time it took to come,
# and then moves of _PACE_STEP of it, up to twice that time: a refill of a bucket that keeps one
# token is passed by an eighth of its pace at the most
_PACE_FIRST = 7 / 8
_PACE_STEP = 1 / 8
_PACE_MOVES = 1024
_REFILL_MOVES = 128  # moves of the spin rule that bring progress, at least, before a deadline
_SPIN_GRAIN = 1e-6  # seconds: closer than this to a timer, the spin rule moves onto it
_controlled: ContextVar[bool] = ContextVar("avcm_testing_controlled", default=False)


class _Lazily(Sequence[int]):
    """The ids *compute()* gives, computed at the first look: a chooser asked before every
    step whether to cancel a task mostly answers without looking at the tasks running, and
    that list goes over every task (each scope's ``cancel_called`` reads the clock): with
    thousands of tasks, most of a step's time."""

    __slots__ = ("_compute", "_ids")

    def __init__(self, compute: Callable[[], list[int]]) -> None:
        self._compute = compute
        self._ids: list[int] | None = None

    def _get(self) -> list[int]:
        if self._ids is None:
            self._ids = self._compute()
        return self._ids

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())


def _within_handover(done: Callable[[], bool]) -> None:
    """Wait until *done()*, for at most ``_HANDOVER`` of real time: what a thread does in a
    hand-over takes microseconds, and one that takes longer is not waited for."""
    deadline = time.monotonic() + _HANDOVER
    while not done() and time.monotonic() <= deadline:
        time.sleep(_HANDOVER_POLL)


# -- owning the run queue -------------------------------------------------------------------


class _Queue:
    """The scheduler's hold on one event loop's run queue."""

    def __init__(self, run: Run) -> None:
        self.run = run
        # native task -> controlled task, while it may run: spawned tasks that ended leave
        # at the next prune (see spawned), so that what scans it costs what is alive
        self.tasks: dict[Any, _Task] = {}
        self.alive_at_prune = 0  # how many tasks the last prune kept
        # every native task controlled so far, ended or not (what _free_spin leaves out)
        self.ever: set[Any] = set()
        self.free = False  # released: hold nothing any more
        self.virtual = _virtual_clock()
        self.thread_clock: ThreadClock | None = None  # worker threads' timed waits: install
        self.threads_before = run.threads_before  # (see _no_thread_at_work)
        # task -> (the wait, the thread it waits for: True if unnamed, False if none, and
        # where the wait stands in the order of waits: see waited_threads)
        self.thread_waits: dict[
            Any, tuple[object, threading.Thread | bool, tuple[int, int, str]]
        ] = {}
        self.scans = 0  # looks at the tasks' waits so far
        # tasks outside control, numbered in the order they were first scheduled (in the run's
        # order: the loop's set of tasks iterates in an order memory addresses decide)
        self.births: dict[Any, int] = {}
        self.thread_progress = -1  # the run's loop steps when a thread poll last looked
        self.thread_since = 0.0  # since when (real time) nothing moved while threads work
        self.wait_io = False  # the spin rule asks the next poll to wait for I/O
        self.io_quiet = False  # the last poll the spin rule asked for brought nothing
        self.thread = threading.get_ident()  # the event loop's
        self.readied = itertools.count()  # the order the loop makes tasks runnable in (hold)
        # from other threads: (the thread, what it handed the loop), held till let in
        self.arrived: collections.deque[tuple[threading.Thread, Any]] = collections.deque()
        # (steps, timer) when outlast_timer last asked the chooser
        self.outlast_asked: tuple[int, float] | None = None
        self.orphans_looked = -1  # the last step a poll found no orphan at work at
        # outlast_timer's last question was put off: a thread whose caller left was at work
        self.question_put_off = False
        # the timer that threads outlast while tasks run on (see outlast_timer): till it falls
        # due, nothing they hand the loop comes in, and time passes as if none worked
        self.slow_until: float | None = None
        # the waits for threads that outlast it (and, once it fell due, are late: see late)
        self.slow_waits: dict[Any, object] = {}
        # each wait for a named thread seen (the call's future, asyncio): the thread and where
        # the wait stood in the order of waits, kept after the wait ended (see orphans)
        self.calls: dict[Any, tuple[threading.Thread, tuple[int, int, str]]] = {}
        self.reports: set[Any] = set()  # the calls whose thread handed in its report
        # threads begun since the run began, numbered in the order the run first saw them:
        # what they hand the loop comes in in that order (see arrivals), not the machine's
        self.first_seen: dict[threading.Thread, int] = {}
        # program threads that kept a choice waiting for _THREAD_STALL: taken to wait for what
        # a task does, and held for no more in this run (see program_threads_hold)
        self.program_stalled: set[threading.Thread] = set()
        # (real time, steps) when choices or arrivals began to wait for program threads
        self.program_hold: tuple[float, int] | None = None

    @property
    def io_timeout(self) -> float:
        return self.run.io_timeout

    def io_wait(self, timeout: float) -> float | None:
        """How long the event loop's next poll for I/O waits, in real seconds, asked with
        *timeout*; None: no poll. While a task can run, I/O is not looked at: it is seen
        when no task can run (or when the tasks only spin), so that the step at which it
        arrives does not depend on how fast the process or peer is, and a run replays."""
        if self.wait_io:
            self.wait_io = False
            # asked for when I/O was outstanding; it may have ended since (a process that
            # exited, its pipes read to the end): then there is nothing to wait for
            if self.io_waits() or self.reported():
                return self.run.io_timeout
        if timeout > 0 or self.free or not self.io_waits():
            return timeout
        return None

    def reported(self) -> bool:
        """Whether threads reported what the loop has not let in yet (a worker thread's
        result, a process's exit seen by asyncio's child watcher thread), but what waits for a
        timer the threads outlast (:meth:`held_slow`)."""
        if not self.arrived:
            return False
        if not self.late():
            return True
        return not all(self.held_slow(*arrival) for arrival in self.arrived_now())

    def slow(self) -> bool:
        """Whether threads at work outlast a timer that has yet to fall due while tasks run on
        (:meth:`outlast_timer`): till it does, nothing they hand the loop comes in, no task
        waits for them, and virtual time passes as if no thread worked."""
        if self.slow_until is None:
            return False
        timer = None if self.free else self.run._next_timer()
        if timer is None or self.now() >= self.slow_until or timer > self.slow_until:
            # it fell due, or it is gone (its scope left before it fell due): the threads
            # outlast nothing any more, and what they hand the loop comes in as it would
            # (on asyncio, once it fell due, after the tasks it woke: see late)
            if self.now() < self.slow_until:
                self.slow_waits = {}
            self.slow_until = None
            return False
        return True

    def late(self) -> bool:
        """Whether what threads that outlast a timer hand the loop is held (:meth:`held_slow`):
        till the timer falls due (:meth:`slow`), and after it too, for as long as a task can
        run (:meth:`settle`): a thread that took longer than the timer is not done the moment
        it falls due, so the tasks it woke (a watcher's sleep that ends with a deadline) look
        first, as in a real loop. Virtual time stands still meanwhile, waiting for the
        threads: a later timer falls due only with a chance of its own to be outlasted."""
        if self.slow():
            return True
        if self.slow_waits and (self.free or not self.slow_threads()):
            self.slow_waits = {}  # their waits ended (a call abandoned on cancel): none late
        return bool(self.slow_waits)

    def settle(self, *, spin: bool = False) -> None:
        """Asked where the loop finds nothing ready: if no task can run (none is held back
        either), or the tasks only *spin*, threads late past a timer they outlasted
        (:meth:`late`) are waited for as any: what they hand the loop comes in now."""
        if not self.slow() and (spin or not self.held()):  # (slow: the timer may have fallen due)
            self.slow_waits = {}

    def thread_waiting(
        self,
    ) -> dict[Any, tuple[object, threading.Thread | bool, tuple[int, int, str]]]:
        """Each task (controlled or not) that waits for a worker thread now: its wait, the
        thread (True: not named), and where the wait stands in the order of waits."""
        list(self.waited_threads())  # brings the waits up to date
        return {
            native: seen
            for native, seen in self.thread_waits.items()
            if seen[1] is not False and self.waiting_on(native) is seen[0]
        }

    def fast_threads_busy(self) -> bool:
        """Whether a thread at work is one no slow wait (:meth:`slow`) waits for: a call
        begun since, which returns as fast as any (or outlasts the timer too, at a chance of
        its own): waited for, and what it hands the loop comes in when no task can run. Or a
        thread whose caller left that does not outlast it."""
        return (
            any(
                not isinstance(thread, threading.Thread) or not self.waits_for_loop(thread)
                for native, (_, thread, _) in self.thread_waiting().items()
                if native not in self.slow_waits
            )
            or self.fast_orphans_busy()
        )

    def fast_orphans_busy(self) -> bool:
        """Whether a thread whose caller left, and that does not outlast the timer the slow
        waits outlast, is at work: as fast as any, it is waited for."""
        return any(thread not in self.slow_waits for thread in self.orphans_at_work())

    def slow_threads(self) -> set[threading.Thread | bool]:
        """The threads the slow waits wait for (True: one not named), and the threads whose
        call was abandoned on cancel that outlast the timer too, while they work on it."""
        waiting = self.thread_waiting()
        slow: set[threading.Thread | bool] = {
            waiting[native][1] for native in self.slow_waits if native in waiting
        }
        if any(isinstance(key, threading.Thread) for key in self.slow_waits):
            slow.update(thread for thread, _ in self.orphans() if thread in self.slow_waits)
        return slow

    def held_slow(self, thread: threading.Thread, item: Any) -> bool:
        """Whether what *thread* handed the loop (*item*) is held till the timer the threads
        outlast falls due: it comes from a thread a slow wait waits for."""
        raise NotImplementedError

    def arrived_now(self) -> list[tuple[threading.Thread, Any]]:
        """What is in ``arrived`` now. Threads append to it meanwhile, and iterating a deque
        that changes raises (a set comprehension over it did, now and then, and the run
        ended in a RuntimeError): copied in one go, again if a thread appended during it."""
        while True:
            try:
                return list(self.arrived)
            except RuntimeError:  # mutated during the copy
                continue

    def take_arrivals(self) -> list[tuple[threading.Thread, Any]]:
        """Everything threads handed the loop, taken out of ``arrived``, but what is held for
        a timer threads outlast (:meth:`held_slow`), which stays."""
        taken = []
        while self.arrived:  # threads may append meanwhile: popleft is atomic, iteration not
            taken.append(self.arrived.popleft())
        if self.late():
            held = [self.held_slow(*arrival) for arrival in taken]
            self.arrived.extendleft(reversed([a for a, h in zip(taken, held, strict=True) if h]))
            taken = [arrival for arrival, h in zip(taken, held, strict=True) if not h]
        return taken

    def handed_in(self) -> bool:
        """Whether every thread the tasks wait for has handed the loop what it has for it
        (its report, or a call back into the loop), held back: no thread is at work."""
        raise NotImplementedError

    def let_in(self) -> bool:
        """Let in what threads reported while tasks could run (held back till now), in the
        order their calls began, once no thread the tasks wait for is at work; whether
        anything came in. (asyncio knows a report by its thread, :meth:`report_order`; trio
        by the task it wakes.)"""
        raise NotImplementedError

    def arrivals(self) -> list[tuple[threading.Thread, Any]] | None:
        """What threads reported, with the thread, in the order their calls began, taken out
        of ``arrived``; None (nothing taken) while a thread the tasks wait for has yet to
        report."""
        if not self.reported():
            return None
        order = self.report_order()
        if order is None:
            return None
        reports = self.take_arrivals()
        reports.sort(key=lambda item: (order.get(item[0], len(order)), self.seen_rank(item[0])))
        return reports

    def seen_rank(self, thread: threading.Thread) -> int:
        """Where *thread* stands in the order the run first saw the threads begun since it
        began (:meth:`program_threads_at_work` looks at them before every choice): the order
        what threads no task waits for hand the loop comes in in. A thread never seen (it
        began and ended between two looks) is ranked when what it handed the loop first
        comes in."""
        return self.first_seen.setdefault(thread, len(self.first_seen))

    def hold_call_back(self, thread: threading.Thread, item: Any, native: Any = None) -> bool:
        """Hold a call back into the loop from *thread* (*item*, what it handed the loop) till
        the controlled task waiting for the thread (*native*, if its wait does not name the
        thread) is chosen, as any step of it: whether there is one. The loop would run it
        whenever the thread hands it over, between any two steps of the tasks that can run
        (on trio, a call not abandoned on cancel is a step of that task anyway)."""
        waiter = None
        for waiting, (_, waited, _) in self.thread_waiting().items():
            if (waiting is native) if native is not None else (waited is thread):
                waiter = self.tasks.get(waiting)
                break
        if waiter is None:
            return False
        if not waiter.call_backs:
            self.holding(waiter)
        waiter.held = True
        waiter.call_backs.append((thread, item))
        return True

    def holding(self, task: _Task) -> None:
        """*task* is held from now on."""

    def hold(
        self, task: _Task, *, in_order: bool, yielded: bool = False, batch: int | None = None
    ) -> None:
        """The loop made *task* runnable: held, in its place in the loop's run queue (see
        :meth:`Run._in_turn`): in the order the loop made it runnable if *in_order* (one of
        a *batch* made runnable at once, if given: by index within it), else by index after
        the others made runnable by the same step, and behind them all if it *yielded* in
        that step."""
        if not task.held:
            steps = len(self.run._steps)
            if in_order and batch is not None:
                task.ready = (steps, 0, batch, task.index)
            elif in_order:
                task.ready = (steps, 0, next(self.readied))
            else:
                task.ready = (steps, 1 + yielded, task.index)
        task.held = True

    @staticmethod
    def take_call_back(task: _Task) -> Any:
        """*task* was chosen for the first call back held for it: what its thread handed the
        loop, out of the task's hold."""
        _, item = task.call_backs.pop(0)
        task.held = bool(task.call_backs)
        return item

    def calls_back(self, task: _Task) -> bool:
        """Whether *task*'s next step runs a call back from the worker thread it waits for."""
        return bool(task.call_backs)

    def entry_pending(self) -> bool:
        """Whether what was let in, or a call back chosen, has yet to run: no task is chosen
        and no time passes meanwhile (trio, whose own task runs it: :meth:`_TrioQueue._enter`;
        asyncio runs it in the iteration that let it in)."""
        return False

    def woken(self, task: _Task) -> None:
        """*task*'s own wait ended (it was cancelled: its thread works on, abandoned), or the
        run lets go of its tasks: the calls back held for it are no step of it any more, and
        come in as any other thread's that no task waits for."""
        if task.call_backs:
            self.arrived.extendleft(reversed(task.call_backs))
            task.call_backs = []
            # (held for them only: trio never rescheduled it, it waits on)
            task.held = bool(task.handles)

    def report_order(self, *, every: bool = False) -> dict[threading.Thread, int] | None:
        """When threads' reports may come in: None while a thread the tasks wait for is at
        work and has not reported (nor waits for the loop), or a program thread is
        (:meth:`program_threads_hold`), so that what came in already waits for it and all
        come in together, in an order the machine does not decide; else each waited thread's
        place in that order (the others' come after, by :meth:`seen_rank`). Released: at
        once. Threads that outlast a timer (:meth:`slow`) are not waited for, unless
        *every*."""
        order: dict[threading.Thread, int] = {}
        if self.free:
            return order
        if self.program_threads_hold():
            return None
        if self.thread_stalled():
            return order
        reporters = {thread for thread, _ in self.arrived_now()}
        unnamed = 0
        slow = self.slow_threads() if not every and self.late() else set()
        for thread in self.waited_threads():
            if thread in slow:
                continue  # what it hands the loop waits for the timer it outlasts
            if thread is True:
                unnamed += 1
            elif isinstance(thread, threading.Thread):
                if thread not in reporters and not self.waits_for_loop(thread):
                    return None
                order.setdefault(thread, len(order))
        # a thread not named by its wait (asyncio's executor, trio's) is known by its report only
        if unnamed > len(reporters - order.keys()):
            return None
        return order

    def io_polled(self, came: bool) -> None:
        """A poll for I/O that the spin rule asked for (:meth:`io_wait`) ended: whether
        anything came within it."""
        self.io_quiet = not came

    def current(self) -> Any:
        raise NotImplementedError

    def control(self, task: _Task) -> None:
        self.tasks[task.native] = task
        self.ever.add(task.native)

    def spawned(self, native: Any) -> _Task | None:
        """The loop is about to schedule *native*, a task not seen so far: if a controlled
        task's step spawns it (a task group's child, ``create_task``, ``gather``,
        ``shield``), it is controlled too, from its first step on, in a column of its own
        (numbered after the tasks there are, in the order the run spawns them, as a replay
        does); else None. A plain run queues a new task behind those already runnable: left
        free, it ran ahead of them at once (attack33 F3)."""
        if self.free:
            return None
        parent = self.tasks.get(self.current_running())
        if parent is None or parent.done:
            return None
        run = self.run
        # (named once asyncio named it: after the task factory returned; see _Task.named)
        child = _Task(len(run._tasks), f"{parent.name}/")
        child.native = native
        child.spawned = True
        run._tasks.append(child)
        self.control(child)
        # A program that spawns a task per request (attack59's page writes sent through a
        # stream) spawns thousands in a run; kept after they end, every step's scans of
        # them made the run quadratic in the tasks spawned (600 s against 0.9 s plain).
        if len(self.tasks) > 2 * self.alive_at_prune + 16:
            self.prune()
        return child

    def prune(self) -> None:
        """Forget the spawned tasks that ended (their columns stay in the run's)."""
        for native, task in list(self.tasks.items()):
            if task.spawned and _finished(native):
                task.done = True
                del self.tasks[native]
        self.alive_at_prune = len(self.tasks)

    def current_running(self) -> Any:
        """The task whose step runs now, or None (the loop's own code between steps)."""
        return self.current()

    def order_spawned(self) -> None:
        """Before the next choice, give the tasks spawned since the last one in an order that
        follows memory addresses an order of the program's (asyncio:
        :meth:`_AsyncioQueue.order_spawned`)."""

    def forget(self, task: _Task) -> None:
        self.tasks.pop(task.native, None)

    def held(self) -> list[_Task]:
        return [task for task in self.tasks.values() if task.held]

    def choosable(self) -> list[_Task]:
        """The held tasks that can be chosen now."""
        return self.held()

    def native_tasks(self) -> Iterable[Any]:
        """Every task of the event loop, controlled or not."""
        raise NotImplementedError

    def waiting_on(self, native: Any) -> object:
        """What a task of the event loop waits on (None: it is runnable or running): an
        object that stays the same for as long as that one wait lasts."""
        raise NotImplementedError

    def calls_back_waiting(self) -> list[Any]:
        """The tasks of the loop (outside control) that run a worker thread's call back into
        it and wait, in the order they were first scheduled: the thread waits for them.
        (asyncio only: trio runs such a call in its caller's task, or in its system nursery
        for a call abandoned on cancel.)"""
        return []

    def abandon_wait(self, native: Any) -> bool:
        """Cancel *native*'s wait through any shield (a wait its cancel scopes keep from the
        run's cancellation), as the wind-down of a failed run does once nothing can move any
        more: else the task group waits for it for ever, and the failure is never reported.
        Whether a cancellation was delivered (a wait that cannot be aborted, such as one for
        a thread's call not abandoned on cancel, is left)."""
        raise NotImplementedError

    def threads_busy(self) -> bool:
        """Whether a worker thread is at work: a task, controlled or not, waits in anyio's or
        trio's call to a thread for the thread to report back, whatever limiter it went
        through. Work outside the loop: never a deadlock, and a virtual clock waits for it."""
        # Walking a task's frames is costly and this is asked at every step: a task's
        # answer is kept for as long as the wait it was found in lasts; and with no other
        # thread at all, no thread is at work.
        if threading.active_count() == 1:
            return False
        return any(
            not isinstance(thread, threading.Thread) or not self.waits_for_loop(thread)
            for thread in self.waited_threads()
        )

    def waited_threads(self) -> Iterator[threading.Thread | bool]:
        """The worker thread each task waiting for one waits for (True: not named), in the
        order their calls were first seen (ties: controlled tasks by index, then others in the
        order they were first scheduled), which does not depend on the machine."""
        known = self.thread_waits
        found: list[tuple[tuple[int, int, str], threading.Thread | bool]] = []
        self.scans += 1
        for native in self.native_tasks():
            wait = self.waiting_on(native)
            if wait is None:
                continue
            seen = known.get(native)
            if seen is None or seen[0] is not wait:
                thread = _waits_for_thread(_coro_of(native))
                controlled = self.tasks.get(native)
                if controlled is not None:
                    key = (self.scans, controlled.index, "")
                else:  # (one scheduled before the run began: by name)
                    birth = self.births.get(native)
                    place = sys.maxsize if birth is None else _OUTSIDE + birth
                    key = (self.scans, place, str(getattr(native, "name", "")))
                seen = known[native] = (wait, thread, key)
                if isinstance(thread, threading.Thread):
                    self.calls[wait] = (thread, key)
                elif thread is not False:
                    self.unnamed_call(native)
            if seen[1] is not False:
                found.append((seen[2], seen[1]))
        # a thread whose call was abandoned on cancel works on, its caller gone: waited for as
        # before, in its call's place (see orphans)
        found.extend((key, thread) for thread, key in self.orphans())
        found.sort(key=lambda item: item[0])
        return iter([thread for _, thread in found])

    def unnamed_call(self, native: Any) -> None:
        """*native* was found waiting for a thread its wait does not name."""

    def orphans(self) -> list[tuple[threading.Thread, tuple[int, int, str]]]:
        """The worker threads at work on a call of this run that was abandoned on cancel
        (``abandon_on_cancel=True``; its task left), with where the call stood in the order
        of waits: they have yet to hand in their report. Each is waited for as if its task
        still waited (no choice while it works, what it hands the loop comes in when no task
        can run), and the run does not end before it did (:meth:`Run._outlive`): else its
        calls back came in at steps the machine's speed decided, or in a later run. (asyncio:
        anyio's worker threads, known by the call's future; trio runs what such a thread
        hands in in its system nursery, and its threads report nothing here.) One stays an
        orphan till its report came in, as a thread a task waits for is at work till then:
        one that reported is asked about as one still at work, whatever the machine's
        speed."""
        found = []
        # Which calls' reports were handed in is read before what threads handed in: a
        # thread hands its report in, then marks its call reported (_AsyncioReady.append),
        # so a call read as reported has its report in what is read next, unless it came in
        # already. Read the other way round, a report handed in between the two reads was in
        # neither, and its call forgotten while its report waited to come in: it came in
        # unasked about, as no orphan's, as fast as the thread was (Exhaustive said "not
        # deterministic", about 1 exploration in 1,500 on a loaded machine).
        reported = {id(wait) for wait in list(self.calls) if wait in self.reports}
        held = {id(handle._args[0]) for _, handle in self.arrived_now() if _reports(handle)}
        for wait, (thread, key) in list(self.calls.items()):
            done = getattr(wait, "done", None)
            if not callable(done) or not done():
                continue  # waited for by its task
            if (
                (id(wait) in reported and id(wait) not in held)
                or not getattr(wait, "cancelled", bool)()
                or _given_up(thread, wait)
                or not thread.is_alive()
            ):
                del self.calls[wait]
                continue
            found.append((thread, key))
        return found

    def thread_waiter(self, *, fast: bool = False) -> _Task | None:
        """The first controlled task (by index) that waits for a worker thread, if any (if
        *fast*, for one no slow wait waits for: :meth:`fast_threads_busy`)."""
        waiting = [
            task
            for native, (wait, thread, _) in self.thread_waits.items()
            if thread is not False
            and (task := self.tasks.get(native)) is not None
            and self.waiting_on(native) is wait
            and not (fast and native in self.slow_waits)
        ]
        return min(waiting, key=lambda task: task.index, default=None)

    def outlast_timer(self) -> bool:
        """Asked where the loop would wait for threads a controlled task waits for, virtual
        time standing still for them (:meth:`time_waits_for_threads`): whether the strategy
        lets the threads outlast the next timer (:meth:`Run._outlast`). If it does, what the
        threads hand the loop comes in after that timer (:meth:`slow`); tasks that are
        runnable (held back till the threads report) run on meanwhile, once the threads
        handed in what they have, and the timer falls due when they all wait (or only spin),
        as in a real loop; with none runnable it falls due next. Asked once for as long as
        no step was taken and the next timer is the same: the same run asks the same
        questions, however fast its threads are (and whatever work outside control ran
        meanwhile: a thread abandoned in an earlier run may report in this one). While
        threads outlast a timer, asked of a call begun since, whether it outlasts it too.
        Whether the threads began to outlast a timer now."""
        run = self.run
        self.question_put_off = False
        if self.free or not self.virtual:
            return False
        slow = self.slow()
        if not slow and self.late():
            return False  # asked once they are late no longer (settle): no task can run then
        if self.fast_orphans_busy():
            # asked once a thread whose caller left handed in what it has, as a choice is:
            # else what it handed in came before the timer or was held as the slow threads'
            # (asyncio knows no executor thread by its wait), as fast as it was
            self.question_put_off = True
            return False
        # (not for a thread only tasks outside control wait for: not the strategy's; but for
        # one whose call a controlled task abandoned on cancel, waited for as if it still
        # waited, as long as no other thread outlasts a timer)
        orphans: list[threading.Thread] = []
        if self.thread_waiter(fast=slow) is None:
            # Asked once such threads handed in what they have (it was slow before handing it
            # in: it comes in after the timer) and no task can run (what they handed in comes
            # in then, and the timer can fall due only then): again after each call back of
            # theirs came in (a step of its own).
            if slow or self.held():
                return False
            if self.orphans_at_work():
                self.question_put_off = True
                return False
            orphans = [thread for thread, _ in self.orphans()]
            if not orphans:
                return False
        timer = self.slow_until if slow else run._next_timer()
        if timer is None or timer <= self.now():
            return False  # (a timer already due falls due now, whatever threads do)
        asked = (len(run._steps), timer)
        if asked == self.outlast_asked:
            return False
        self.outlast_asked = asked
        # a thread that outlasts a timer is at work: a call abandoned on cancel when the timer
        # falls due must have been taken by its thread, or it is never run (asyncio) or not
        # known to run (trio: no thread holds its call yet), as fast as the thread was
        self.calls_taken()
        if not run._outlast(timer):
            return False
        self.slow_until = timer
        self.slow_waits.update(
            (native, wait)
            for native, (wait, _, _) in self.thread_waiting().items()
            if native not in self.slow_waits
        )
        self.slow_waits.update((thread, thread) for thread in orphans)  # (no wait: by thread)
        return True

    def put_off_poll(self, timeout: float) -> float:
        """How long a poll asked to wait *timeout* seconds waits once :meth:`outlast_timer`
        put its question off (a thread whose caller left was at work): for that thread, or,
        if it handed in what it has meanwhile, not at all, so that the next poll asks of it.
        Let in at once, what it handed in right after the question came in unasked about, as
        fast as it was (Exhaustive said "not deterministic", about 1 run in 10,000 on a
        loaded machine)."""
        return self.thread_poll(timeout) if self.orphans_at_work() else 0.0

    def look_at_orphans(self) -> None:
        """Asked where the loop polls and asks whether threads outlast the next timer: if
        no thread whose caller left (:meth:`orphans`) is at work, tasks may be chosen at this
        step (:meth:`ready`). Else a choice waits for a poll that finds them handed in (and
        asks about them): one that happens to hand in between that question and the choice
        would have been asked about, or not, as fast as it was."""
        if not self.orphans_at_work():
            self.orphans_looked = len(self.run._steps)

    def orphans_unlooked(self) -> bool:
        """Whether a task is held back till a poll finds the threads whose caller left handed
        in what they have (:meth:`look_at_orphans`): no time passes meanwhile. Not once they
        stalled (:meth:`thread_stalled`): one blocked in a wait may wait for what that task
        does (attack50: a thread whose caller left on a deadline, waiting for an event a
        task sets once its sleep ends, was waited for till ``thread_timeout``)."""
        return (
            self.orphans_looked != len(self.run._steps)
            and any(task.held for task in self.tasks.values())
            and bool(self.orphans())
            and not self.thread_stalled()
        )

    def orphans_called_back(self, arrivals: Iterable[tuple[threading.Thread, Any]]) -> None:
        """What threads handed the loop (*arrivals*) comes in: each call back of a thread whose
        call was abandoned on cancel and whose caller left is a step of the run
        (:meth:`Run._called_back`), in the column of the task that left (else the last
        task's)."""
        if self.free:
            return
        orphans = dict(self.orphans())
        for thread, item in arrivals:
            key = orphans.get(thread)
            if key is None or not self.is_call_back(thread, item):
                continue
            last = self.run._last
            column = key[1] if key[1] < len(self.run._tasks) else (last.index if last else 0)
            self.run._called_back(column)

    def is_call_back(self, thread: threading.Thread, item: Any) -> bool:
        """Whether what *thread* handed the loop (*item*) is a call back into it."""
        raise NotImplementedError

    def orphans_handed_in(self) -> bool:
        """Whether a thread whose call was abandoned on cancel handed the loop what has yet
        to come in (then, before it comes in, it may outlast the next timer)."""
        sent = {thread for thread, _ in self.arrived_now()}
        return bool(sent) and any(thread in sent for thread, _ in self.orphans())

    def orphans_at_work(self) -> list[threading.Thread]:
        """The threads whose call was abandoned on cancel (:meth:`orphans`) that are at work:
        they have not handed the loop a call back or their report, nor wait for its answer."""
        sent = {thread for thread, _ in self.arrived_now()}
        return [
            thread
            for thread, _ in self.orphans()
            if thread not in sent and not self.waits_for_loop(thread)
        ]

    def calls_taken(self) -> None:
        """Wait a moment, at most, until each worker thread the controlled tasks wait for has
        taken its call: asked before a timer that threads outlast falls due and before a
        cancellation is injected. A call cancelled before its thread took it is skipped
        (anyio's worker on asyncio), or runs with no thread known to run it (trio's, still
        idle in trio's thread cache: the run ends without waiting for it); either way it ran
        or not as fast as the thread was. And a thread that outlasts a timer is at work."""
        pending = self.calls_handed_over()

        def all_taken() -> bool:
            nonlocal pending
            pending = [call for call in pending if not self.taken(call)]
            return not pending

        if pending:
            _within_handover(all_taken)
        # (a wait begun since the last look is known, its call's thread with it: one cancelled
        # unseen would not be waited for as abandoned)
        self.waited_threads()

    def calls_handed_over(self) -> list[Any]:
        """The calls handed to worker threads that the threads may have yet to take (for
        :meth:`taken`)."""
        return []

    def taken(self, call: Any) -> bool:
        """Whether the worker thread took *call* (one of :meth:`calls_handed_over`)."""
        return True

    def thread_poll(self, timeout: float) -> float:
        """How long a poll of the event loop, asked to wait *timeout* seconds while a worker
        thread is at work, waits for it in real time: a while at a time, and no longer than
        ``thread_timeout`` in all with nothing moving (no task step, no callback); then the
        calls waiting for threads at work are abandoned and the run fails with
        :class:`ThreadWaitError` (0: poll without waiting)."""
        if self.expire_thread_wait():
            return 0.0
        now = time.monotonic()
        progress = self.run._loop_steps
        if progress != self.thread_progress:
            self.thread_progress, self.thread_since = progress, now
        left = self.thread_since + self.run.thread_timeout - now
        if left <= 0:
            self.thread_since = now
            self.abandon_threads()
            return 0.0
        stall = self.thread_since + _THREAD_STALL - now
        # (a thread the program started may end, or put what a task polls for in a queue,
        # without waking the loop, as a worker thread's report does: look again soon, whether
        # or not a worker thread works too, as choices and reports wait for it; and soon if
        # none is at work any more: one ended since the loop asked)
        look = (
            _THREAD_POLL
            if self.threads_busy() and not self.program_threads_at_work()
            else _PROGRAM_THREAD_POLL
        )
        return min(timeout, look, left, stall if stall > 0 else look)

    def abandon_threads(self) -> None:
        stuck = [
            native
            for native, (wait, thread, _) in list(self.thread_waits.items())
            if thread is not False
            and self.waiting_on(native) is wait
            and (thread is True or not self.waits_for_loop(thread))
        ]
        orphans = [thread for thread, _ in self.orphans() if not self.waits_for_loop(thread)]
        if not stuck and not orphans:
            if self.program_threads_at_work():
                self._fail_run(
                    ThreadWaitError(
                        f"a thread the program started worked for "
                        f"{self.run.thread_timeout:g} s of real time (Limits.thread_timeout) "
                        f"while every task waited, no timer was pending and virtual time "
                        f"stood still: a thread that never gives what the tasks wait for"
                    )
                )
            return
        lines = [
            f"a worker thread did not report back in {self.run.thread_timeout:g} s of real "
            f"time (Limits.thread_timeout) while virtual time stood still: a thread that "
            f"never returns; the calls waiting for it were abandoned"
        ]
        for thread in orphans:
            self.give_up(thread)  # (a non-daemon thread: see threads_holding_exit)
            lines.append(f"  {thread.name}, at work on a call abandoned on cancel")
        for native in stuck:
            controlled = self.tasks.get(native)
            name = (
                f"task {controlled.index} ({controlled.name})"
                if controlled is not None
                else f"task {getattr(native, 'name', '?')} (outside control)"
            )
            operation, checkpoint, _ = _where(_coro_of(native))
            lines.append(f"  {name} waits in {operation} {checkpoint}".rstrip())
        error = ThreadWaitError("\n".join(lines))
        for native in stuck:
            self.abandon(native, error)
        self._fail_run(error)

    def _fail_run(self, error: BaseException) -> None:
        """End the run with *error* (the first such error wins)."""
        if self.run._error is None:
            self.run._error = error
        self.call_soon(self.run._notify)

    def give_up(self, thread: threading.Thread) -> None:
        """Wait no more for *thread*, whose call was abandoned on cancel (:meth:`orphans`):
        it never returns."""
        calls = [wait for wait, (called, _) in self.calls.items() if called is thread]
        _give_up(thread, calls[-1] if calls else None)

    def cancel_runaways(self) -> None:
        """Cancel, as the event loop cancels a task, every task that is runnable: the run
        failed, and they ran ``runaway_steps`` steps since without ever all waiting. (trio:
        a cancelled task's checkpoint raises, so none spins on: nothing to do.)"""

    def abandon(self, native: Any, error: BaseException) -> None:
        """End *native*'s wait for a worker thread now, with *error*; its thread runs on,
        and its report, if it ever comes, is dropped."""
        raise NotImplementedError

    def waits_for_loop(self, thread: threading.Thread) -> bool:
        """Whether a worker thread waits for the event loop, not the loop for it: it called
        back into the loop, its call came in, and it blocks for the answer, which tasks must
        now be chosen to give (a lock the call needs may be held by a task the scheduler
        holds back)."""
        return False

    def io_waits(self) -> int:
        """How many waits for I/O the event loop has registered (a pipe or socket to another
        process, a process's exit): outside the loop too, but with no end known."""
        raise NotImplementedError

    def external_busy(self) -> bool:
        """Whether anything outside the loop may still wake a task: a thread at work, or I/O
        waited for. Never a deadlock, and a virtual clock stands still meanwhile."""
        return self.threads_busy() or self.io_waits() > 0

    def ready(self) -> bool:
        """Whether a held task may be chosen now: a thread at work first reports back (so
        that a run does not depend on how fast a thread is, and replays). I/O does not hold
        choices back: what it waits for may come only after other tasks acted."""
        if not any(task.held for task in self.tasks.values()) or self.entry_pending():
            return False
        if threading.active_count() == 1 and not self.orphans():
            # (no thread to ask the questions below about: each would say go on)
            self.program_hold = None
            return True
        if self.orphans_unlooked():
            # no poll found the threads whose caller left handed in (or waiting) since the
            # last step: one may have handed in its call back or report meanwhile, but whether
            # it outlasts the next timer is asked first (see look_at_orphans)
            return False
        if self.program_threads_hold():
            return False
        if self.thread_stalled() or not self.threads_busy():
            return True
        # threads that outlast a timer: tasks run on once the threads handed in what they
        # have (what they did is then done, however fast the machine is), and the tasks
        # waiting for any other thread have their reports
        return self.late() and self.handed_in() and not self.fast_threads_busy()

    def time_waits_for_threads(self) -> bool:
        """Whether virtual time stands still for threads at work: while one works, unless they
        stalled (:meth:`thread_stalled`) and a task's timer is pending: what a stalled thread
        waits for may be what a task does when its sleep ends (a ``threading.Event`` it sets),
        and a real loop's clock runs on while the thread waits. With no such timer the run
        waits for the thread in real time, up to ``thread_timeout``, unless a stalled thread's
        timed wait ends first (:meth:`expire_thread_wait`). While the threads
        outlast a timer that has yet to fall due (:meth:`slow`), only until they handed in
        what they have, if a task is runnable (held back till then); once it fell due, while
        they are late (:meth:`late`)."""
        if not self.threads_busy():
            return self.program_threads_hold_time()
        if self.slow():
            # (till they handed in what they have, whether or not a task is runnable: what a
            # thread reads of the loop's state before then, a cancellation its caller got when
            # the timer fell due, is read before it, however fast the machine is; but not
            # once they stalled in a wait, which may be for what a task does when the timer
            # they outlast falls due: attack51, a ThreadWaitError on trio)
            if self.thread_stalled() and not self.fast_threads_busy():
                return False
            return not self.handed_in() or self.fast_threads_busy()
        if not self.thread_stalled():
            # (late: they took longer than the timer; no later one falls due before them
            # unless they stalled in a wait, which may be for what a task does once its
            # sleep ends: a thread whose caller left on a deadline, attack50)
            return True
        timer = self.run._next_timer()
        if timer is None:
            return True
        # (a stalled thread's timed wait that ends first: see expire_thread_wait)
        deadline = None if self.thread_clock is None else self.thread_clock.next_deadline()
        return deadline is not None and _thread_wait_first(deadline, timer)

    def expire_thread_wait(self) -> bool:
        """Asked where the loop would wait for threads that stalled (no task can run): if a
        stalled thread's timed wait (:mod:`._thread_clock`) ends before the loop's next timer
        or with it (the machine's timed wait of a thread is more punctual than an event loop's
        timer: plain runs of a wait and a sleep of one second each, begun together, timed the
        wait out first, 6 of 6 in attack51), or no timer is pending, virtual time moves to its
        end and it times out; the thread is at work again, and waited for. Whether it did."""
        clock = self.thread_clock
        if clock is None or self.free or self.held() or not self.thread_stalled():
            return False
        deadline = clock.next_deadline()
        if deadline is None or not self._no_thread_at_work():
            return False
        if not _thread_wait_first(deadline, self.run._next_timer()):
            return False
        self.advance(deadline)
        if not clock.expire(self.now()):
            return False
        self.thread_since = time.monotonic()
        return True

    def thread_stalled(self) -> bool:
        """Whether threads at work kept the run still for ``_THREAD_STALL`` seconds of real
        time and one of them, running a call's code, waits in a ``threading`` or ``queue``
        wait: it may wait for what a task must do first (a ``threading.Event`` a task sets
        once another thread returned), so choices go on (and, on asyncio, what threads
        reported comes in) without waiting for every thread: at a step the machine's speed
        may decide, but the run goes on, as in a real loop. A thread that only works or
        sleeps, however long, is waited for (up to ``thread_timeout``)."""
        return (
            self.thread_progress == self.run._loop_steps
            and time.monotonic() - self.thread_since >= _THREAD_STALL
            and self._threads_wait_on_threads()
        )

    def _no_thread_at_work(self) -> bool:
        """Whether every thread that may end a thread's wait waits itself: each thread serving
        a call of the run, and each begun since the run began (a pool of the program's own,
        a thread it started), waits in a ``threading`` or ``queue`` primitive or idles in a
        pool. A thread that sleeps or computes may yet give what a wait waits for (attack50:
        another call's thread, or a private pool's, at work for a second and a half), so no
        timed wait expires meanwhile. Threads older than the run (a test runner's, a
        cluster's) and other runs' event loops are none of the run's."""
        named = self._waited_idents()
        threads = {thread.ident: thread for thread in threading.enumerate()}
        others = _thread_clock.loop_threads()
        for ident, frame in _current_frames().items():
            thread = threads.get(ident)
            if ident == self.thread or ident in others or thread is None:
                continue
            ours = ident in named or thread not in self.threads_before or _serves_a_call(frame)
            if ours and not (_waits_in_threading(frame) or _idles(frame)):
                return False
        return True

    def program_threads_at_work(self) -> bool:
        """Whether a thread begun since the run began that serves neither a call a task waits
        for nor one abandoned on cancel (a thread the program started itself, a job of a pool
        of its own) is at work: not waiting in a ``threading`` or ``queue`` primitive (a call back
        into the loop waits in one for the answer), not idle. What it does may wake a task (a
        call back through ``from_thread``, ``call_soon_threadsafe``, an event it sets): never
        a deadlock, no choice is made meanwhile (:meth:`program_threads_hold`), and virtual
        time waits for it for a while (see :meth:`program_threads_hold_time`). A thread older
        than the run, or another run's event loop, is none of the run's."""
        return bool(self._program_threads_working())

    def _program_threads_working(self) -> list[threading.Thread]:
        """The program threads at work (:meth:`program_threads_at_work`); every thread begun
        since the run began is ranked on the way (:meth:`seen_rank`), in the order the
        interpreter lists them: the order they started in, for threads one thread starts."""
        if threading.active_count() == 1:
            return []
        begun = [thread for thread in threading.enumerate() if thread not in self.threads_before]
        if not begun:
            return []
        for thread in begun:
            self.seen_rank(thread)
        frames = _current_frames()
        at_work = [
            thread
            for thread in begun
            if (frame := frames.get(thread.ident)) is not None  # type: ignore[arg-type]
            and (not (_waits_in_threading(frame) or _idles(frame)) or _about_to_run(frame))
            # (a call back into trio waits for the answer in C code: no frame of its own)
            and not _waits_for_answer(thread, frames)
            and not self.serves_the_loop(thread)
        ]
        if not at_work:
            return []
        # (only then the threads that are none of the program's: a look at every task's wait)
        known = self._waited_idents()
        known.update(thread.ident for thread, _ in self.orphans())
        known.update(_thread_clock.loop_threads())
        known.add(self.thread)
        return [thread for thread in at_work if thread.ident not in known]

    def serves_the_loop(self, thread: threading.Thread) -> bool:
        """Whether *thread* is one of the loop's own worker threads or runs a call a task
        handed a thread (one whose task no longer waits for it included): no program thread,
        though it began since the run began and no wait names it. (Known without a walk
        through its frames: asked before every choice, such walks through a thread's frames
        as it runs crashed CPython 3.11.)"""
        return False

    def program_threads_hold(self) -> bool:
        """Whether choices, and what threads hand the loop, wait for program threads at work
        (:meth:`program_threads_at_work`), as they wait for the threads the tasks' calls run
        in: where a program thread's call back lands among the tasks' steps, and the order
        of several threads' calls back, then do not depend on the machine's speed (they come
        in once none is at work, by :meth:`seen_rank`). For up to ``_THREAD_STALL`` of real
        time with no step: a thread at work that long may poll for what a task must do first
        (a flag a task sets, a timed wait in a loop); it is held for no more in this run, and
        where what it hands the loop lands depends on its speed from then on."""
        if self.free:
            return False
        working = [
            thread
            for thread in self._program_threads_working()
            if thread not in self.program_stalled
        ]
        if not working:
            self.program_hold = None
            return False
        now, steps = time.monotonic(), len(self.run._steps)
        if self.program_hold is None or self.program_hold[1] != steps:
            self.program_hold = (now, steps)
        elif now - self.program_hold[0] >= _THREAD_STALL:
            self.program_stalled.update(working)
            self.program_hold = None
            return False
        return True

    def program_threads_hold_time(self) -> bool:
        """Whether virtual time stands still for threads the program started that are at work
        (:meth:`program_threads_at_work`), no task waiting for a thread: while a choice waits
        for them (:meth:`program_threads_hold`); else until they wait or end, for up to
        ``_THREAD_STALL`` of real time with nothing moving if a timer is pending (a thread
        that polls for ever, sleeping between its looks, while a task's sleep ends what it
        polls for: each timer waits that long for it), and with none, up to
        ``thread_timeout`` (:class:`ThreadWaitError`). Before, a thread that slept 20 ms and
        then set an event a task waited for within a deadline of 5 s was reported as a
        timeout, and without the deadline as a deadlock: virtual time jumped while the thread
        worked."""
        working = self._program_threads_working()
        if not working:
            return False
        if self.run._next_timer() is None:
            return True
        if self.held() and any(thread not in self.program_stalled for thread in working):
            return True  # (a choice waits for them: program_threads_hold)
        stalled = (
            self.thread_progress == self.run._loop_steps
            and time.monotonic() - self.thread_since >= _THREAD_STALL
        )
        return not stalled

    def _waited_idents(self) -> set[int | None]:
        """The idents of the named threads the tasks wait for (:meth:`waited_threads`)."""
        return {
            thread.ident for thread in self.waited_threads() if isinstance(thread, threading.Thread)
        }

    def _threads_wait_on_threads(self) -> bool:
        named = self._waited_idents()
        return any(
            _waits_in_threading(frame) and (ident in named or _serves_a_call(frame))
            for ident, frame in _current_frames().items()
        )

    def call_soon(self, function: Callable[[], None]) -> None:
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError

    def thread_now(self) -> float:
        """A virtual clock's time, read from any thread (no task's read)."""
        return self.now()

    def let_time_pass(self) -> None:
        """Move a virtual clock to the next timer."""
        raise NotImplementedError

    def advance(self, to: float) -> None:
        """Move a virtual clock on to *to*."""
        raise NotImplementedError

    def clock_reads(self) -> int:
        """How many times tasks read a virtual clock so far (a count that only grows)."""
        raise NotImplementedError

    def release_all(self) -> None:
        """Let go of every task: the run ended, or failed. What threads handed in comes in, and
        each held task is handed to the event loop to run as it would (:meth:`run_held`)."""
        self.free = True
        for task in self.tasks.values():
            self.woken(task)
        self.let_in()
        for task in self.tasks.values():
            if task.held:
                task.held = False
                self.run_held(task)

    def run_held(self, task: _Task) -> None:
        """Hand a held *task* back to the event loop's own queue."""
        raise NotImplementedError

    def uninstall(self) -> None:
        raise NotImplementedError


def _install(run: Run) -> _Queue:
    queue: _Queue
    if sniffio.current_async_library() == "trio":
        queue = _TrioQueue.install(run)
    else:
        queue = _AsyncioQueue.install(run)
    if queue.virtual:
        _thread_clock.install()
        queue.thread_clock = ThreadClock(queue.thread_now, queue.thread)
    return queue


class _TrioRunq(collections.deque):  # type: ignore[type-arg]
    """Stands in for trio's ``runner.runq``: trio appends runnable tasks, takes a batch with
    ``list(runq)`` and clears it. Controlled tasks are held; a batch is the uncontrolled
    tasks, or, when there are none, the one held task the chooser picks."""

    def __init__(self, queue: _TrioQueue, items: Any) -> None:
        super().__init__(items)
        self.queue = queue
        self.taken = 0  # tasks at the front that the batch being run took

    def append(self, task: Any) -> None:
        queue = self.queue
        controlled = None if queue.free else queue.tasks.get(task)
        if controlled is None and task not in queue.births and _unstarted(task):
            controlled = queue.spawned(task)
        if controlled is None:
            if task not in queue.births:
                queue.births[task] = len(queue.births)
            super().append(task)
            return
        queue.woken(controlled)
        # (by index: trio's own order shuffles each batch, seeded; a sleep's end is a
        # cancellation, and cancelling a scope wakes its tasks in the order of a set)
        queue.hold(controlled, in_order=False, yielded=task is _trio_task_running())

    def __len__(self) -> int:
        free = super().__len__()
        if sys._getframe(1).f_code is _trio_codes().run_loop:
            # trio's ``list(runq)`` asking for a size hint, right before it iterates: the
            # batch (and the question whether a held task may run) is __iter__'s, and the
            # clock's autojump was set at the loop's question above
            return free
        queue = self.queue
        ready = queue.ready()
        queue.sync_autojump(runnable=ready or free > 0)
        return free + ready

    def __bool__(self) -> bool:
        if sys._getframe(1).f_code is _trio_codes().reschedule and not self.queue.runner.is_guest:
            # (trio's reschedule asks only to wake a guest run's host loop: its answer is
            # used for nothing else, and the loop asks again before it waits; asked at every
            # wake-up, the full question was a tenth of a schedule's time)
            return True
        return len(self) > 0

    def __iter__(self) -> Iterator[Any]:
        batch = list(super().__iter__())
        self.taken = len(batch)
        if not self.queue.ready():
            self.queue.run._uncontrolled_step(len(batch))
            return iter(batch)
        chosen = self.queue.run._choose()
        if chosen is None:
            self.queue.release_all()
            batch = list(super().__iter__())
            self.taken = len(batch)
            return iter(batch)
        if chosen.call_backs:
            self.queue.run_call_back(chosen)
            return iter(batch)
        chosen.held = False
        batch.append(chosen.native)
        return iter(batch)

    def clear(self) -> None:
        # trio clears the queue after taking its batch. A choice can reschedule tasks
        # meanwhile (an injected cancellation aborts their waits): they were not in the
        # batch, and run in the next, as trio runs what a task step reschedules.
        left = super().__len__() - self.taken
        if left <= 0:
            super().clear()
        else:
            for _ in range(self.taken):
                super().popleft()
        self.taken = 0


class _TrioIO:
    """Stands in for trio's I/O manager: its polls are the queue's (:meth:`_Queue.io_wait`);
    everything else is the manager's own."""

    def __init__(self, queue: _TrioQueue, manager: Any) -> None:
        self.queue = queue
        self.manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self.manager, name)

    def get_events(self, timeout: float) -> Any:
        queue = self.queue
        if queue.entry_pending():
            return self.manager.get_events(0)  # it wakes trio's own task, which runs it
        asked = queue.wait_io
        wait = queue.io_wait(timeout)
        if wait is None:
            return []
        if wait > 0:
            # no task can run (or the spin rule asks for a poll): whether threads outlast
            # the next timer is asked before their reports come in, as on asyncio
            queue.settle()
            unlooked = queue.orphans_unlooked()
            queue.look_at_orphans()
            busy = queue.time_waits_for_threads()
            queue.question_put_off = False
            if (
                (busy or queue.orphans_handed_in())
                and queue.outlast_timer()
                and not queue.time_waits_for_threads()
            ):
                # the threads now outlast the next timer: not waited for, it falls due
                # (trio's clock jumps to it once this poll is over)
                busy, wait = False, 0.0
            if unlooked and queue.ready():
                # a task held till a poll found threads whose caller left handed in what they
                # have runs first; what they handed in comes in when no task can run, or when
                # the tasks only spin (the spin rule asked for this poll: as if none could
                # run, as on asyncio; else a task always runnable kept it out for ever)
                if asked:
                    queue.let_in()
                wait = 0
            elif unlooked and queue.orphans_unlooked():
                # this poll found one at work: it is waited for, and what it hands in
                # meanwhile is looked at by the next poll, which lets that task run first;
                # let in now, it came in before that task's step or after it as fast as the
                # thread was (and the spin rule's request waits for that poll, as fast)
                wait = queue.thread_poll(wait)
                queue.wait_io = queue.wait_io or asked
                asked = False
            elif queue.question_put_off:
                wait = queue.put_off_poll(wait)
            elif queue.let_in():
                wait = 0  # trio's own task takes them in now
            elif busy or queue.threads_busy() or queue.program_threads_at_work():
                # (a program thread may end, or stall, or do what a task polls for, waking
                # nobody: trio set its clock's autojump and asked the run queue before)
                wait = queue.thread_poll(wait)
            elif queue.ready() or queue.autojump_stale():
                # (a program thread ended since trio asked the run queue and set its clock's
                # autojump: a held task runs, or time jumps, in trio's next pass)
                wait = 0
        events = self.manager.get_events(wait)
        if asked:
            queue.io_polled(bool(events))
        return events


class _TrioEntries(collections.deque):  # type: ignore[type-arg]
    """Stands in for the job queue of trio's ``run_sync_soon``: a job a thread hands the loop
    (a worker thread's result, a call back into trio) is held in the run queue's
    ``arrived`` till no task can run, as on asyncio: trio's own task takes in jobs whenever
    it runs, which is at whatever step a poll happens to see the thread's wakeup, so the
    step at which a thread's report came in depended on how fast the thread was."""

    def __init__(self, queue: _TrioQueue, items: Any) -> None:
        super().__init__(items)
        self.queue = queue

    def append(self, job: Any) -> None:
        queue = self.queue
        if threading.get_ident() != queue.thread and not queue.free:
            queue.arrived.append((threading.current_thread(), job))
            return
        super().append(job)


class _Raise:
    """What trio's ``wait_task_rescheduled`` is sent to raise *error*: it unwraps what it is
    sent (an ``outcome.Error`` does the same; avcm does not depend on outcome itself)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def unwrap(self) -> Any:
        raise self.error


class _Send:
    """What trio's ``wait_task_rescheduled`` is sent to return *value* (as ``outcome.Value``)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def unwrap(self) -> object:
        return self.value


# threads whose calls asyncio runs abandoned, and whether any was not named (asyncio's
# executor's); trio's worker threads are daemon threads, which never keep a process alive
_abandoned: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_abandoned_unnamed: list[bool] = []
# each thread given up on, with the call it was given up in (asyncio: the future its task
# awaited; trio: the call's task register): worker threads serve call after call, and one
# given up on in an earlier run (or an exploration before) is no orphan to ignore in a later
# call, once it returned and took that one
_abandoned_calls: weakref.WeakKeyDictionary[threading.Thread, object] = weakref.WeakKeyDictionary()


def _give_up(thread: threading.Thread, call: object) -> None:
    """A run gave up waiting for *thread*, at work on *call*."""
    _abandoned.add(thread)
    _abandoned_calls[thread] = call
    _gave_up[0] += 1


# how many times runs gave up on a thread: what was found from _given_up is stale once it grew
_gave_up = [0]


def _given_up(thread: threading.Thread, call: object) -> bool:
    """Whether a run gave up waiting for *thread* in *call*."""
    return call is not None and _abandoned_calls.get(thread) is call


def threads_holding_exit() -> list[threading.Thread]:
    """The worker threads whose calls runs abandoned (:class:`ThreadWaitError`) and that still
    run and are no daemon threads (anyio's and asyncio's executor's on asyncio): the process
    cannot exit before they return, as a plain asyncio program with such a thread cannot.
    Threads not named by the abandoned wait count as any such thread still running."""
    return [
        thread
        for thread in threading.enumerate()
        if not thread.daemon
        and thread is not threading.main_thread()
        and (thread in _abandoned or _abandoned_unnamed)
    ]


class _HandedOver:
    """A call a run handed to one of trio's worker threads; *begun* once the thread began it
    (trio's thread cache starts a thread, or wakes an idle one, as fast as the machine is),
    *delivered* once the thread handed its report to trio: the *thread* holds the call from
    the one to the other, in trio's own frames too (between the call and its report)."""

    __slots__ = ("begun", "delivered", "register", "thread")

    def __init__(self, register: list[Any]) -> None:
        self.register = register  # the call's task register (see _register_of)
        self.begun = False
        self.delivered = False
        self.thread: threading.Thread | None = None


class _OrphansSeen:
    """What :meth:`_TrioQueue._orphan_calls` found, with everything it found it from, as it
    left it (pruned): asked at every question of every step, it gives the same answer again
    as long as none of that changed. It is an answer from those alone (no thread's frames:
    not kept when it looked at them): the calls' registers and whether each is cleared, the
    calls at work with where each stands (its thread, begun, delivered), how many calls were
    made, what threads handed the loop (the same items), and how many threads were given up
    on. Compared by identity: each object is held here, so none seen now is a new one that
    merely looks the same."""

    __slots__ = ("arrived", "at_work", "cleared", "found", "gave_up", "made", "registers", "stand")

    def __init__(
        self,
        queue: _TrioQueue,
        arrived: list[tuple[threading.Thread, Any]],
        found: list[tuple[threading.Thread, list[Any]]],
    ) -> None:
        self.registers = list(queue.registers)
        self.cleared = _cleared(self.registers)
        self.at_work = list(queue.at_work)
        self.stand = _stand(self.at_work)
        self.made = len(queue.made)
        self.arrived = arrived
        self.gave_up = _gave_up[0]
        self.found = found

    def same(self, queue: _TrioQueue, arrived: list[tuple[threading.Thread, Any]]) -> bool:
        """Whether *queue* stands as it stood when this was found, *arrived* being what is in
        its ``arrived`` now."""
        return (
            self.made == len(queue.made)
            and self.gave_up == _gave_up[0]
            and _same_items(self.arrived, arrived)
            and _same_items(self.registers, queue.registers)
            and _same_items(self.at_work, queue.at_work)
            and self.cleared == _cleared(queue.registers)
            and self.stand == _stand(queue.at_work)
        )


def _same_items(seen: list[Any], now: list[Any]) -> bool:
    return len(seen) == len(now) and all(map(operator.is_, seen, now))


def _cleared(registers: list[list[Any]]) -> list[bool]:
    return [register == [None] for register in registers]


def _stand(calls: list[_HandedOver]) -> list[tuple[threading.Thread | None, bool, bool]]:
    return [(call.thread, call.begun, call.delivered) for call in calls]


_watching: list[bool] = []


def _watch_hand_overs() -> None:
    """Have each call trio hands a worker thread (``trio.to_thread.run_sync``) during a run
    known to that run's queue from the start, and tell it when the thread begins it: a call
    abandoned on cancel in the step that made it (its scope cancelled before) is known, and
    what the run does next does not depend on how fast the thread starts. Done once."""
    if _watching:
        return
    _watching.append(True)
    from trio import _threads
    from trio._core._run import GLOBAL_RUN_CONTEXT

    start = _threads.start_thread_soon  # type: ignore[attr-defined]

    def start_thread_soon(fn: Any, deliver: Any, name: str | None = None) -> None:
        runner = getattr(GLOBAL_RUN_CONTEXT, "runner", None)
        entries = getattr(getattr(runner, "entry_queue", None), "queue", None)
        register = next(
            (
                cell.cell_contents
                for variable, cell in zip(
                    fn.__code__.co_freevars, fn.__closure__ or (), strict=True
                )
                if variable == "task_register"
            ),
            None,
        )
        if not isinstance(entries, _TrioEntries) or not isinstance(register, list):
            start(fn, deliver, name)
            return
        call = entries.queue.handed_over_call(register)

        def begin() -> Any:
            call.thread = threading.current_thread()
            call.begun = True
            return fn()

        def report(result: Any) -> None:
            try:
                deliver(result)
            finally:
                call.delivered = True

        start(begin, report, name)

    _threads.start_thread_soon = start_thread_soon  # type: ignore[attr-defined]


_routed: list[bool] = []


def _route_abandoned_calls_back(trio: Any) -> None:
    """Make a call back into trio (``trio.from_thread.run`` and ``run_sync``) from a thread
    whose waiting task a run abandoned run as one from a thread abandoned on cancel does: in
    the system nursery. trio runs it in the waiting task, which asserts it is still there
    ("guaranteed by abandon_on_cancel semantics"): a TrioInternalError. Done once, on the
    first abandonment; a call from a thread whose task waits is run as before."""
    if _routed:
        return
    _routed.append(True)
    from trio import _threads

    def run_in_host_task(self: Any, token: Any) -> None:
        register = _threads.PARENT_TASK_DATA.task_register

        def in_trio_thread() -> None:
            task = register[0]
            if task is None:
                self.run_in_system_nursery(token)
            else:
                trio.lowlevel.reschedule(task, _Send(self))

        token.run_sync_soon(in_trio_thread)

    for message in (_threads.Run, _threads.RunSync):
        message.run_in_host_task = run_in_host_task  # type: ignore[method-assign]


class _TrioQueue(_Queue):
    def abandon_wait(self, native: Any) -> bool:
        if native._abort_func is None:  # running or runnable: no wait to cancel
            return False
        cancelled = self.trio.Cancelled

        def raise_cancel() -> NoReturn:
            raise cancelled._create(
                source="explicit", reason="avcm.testing: a wait that nothing can end, abandoned"
            )

        # what trio does to deliver a cancellation, but past the shields: the wait's own
        # abort function takes the task off what it waits on (a parking lot, a queue)
        native._attempt_abort(raise_cancel)
        return native._abort_func is None and native._next_send is not None

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        import trio
        from trio._core._run import GLOBAL_RUN_CONTEXT

        if not trio.__version__.startswith(TRIO_VERSIONS):
            raise NotSupportedError(
                f"avcm.testing controls trio's run queue, an internal of trio: it is tested "
                f"with trio {' and '.join(v + 'x' for v in TRIO_VERSIONS)}, not trio "
                f"{trio.__version__}"
            )
        self.trio = trio
        self.runner = GLOBAL_RUN_CONTEXT.runner
        self.context = GLOBAL_RUN_CONTEXT
        self.token = trio.lowlevel.current_trio_token()
        self.clock = trio.lowlevel.current_clock()
        self.runq: _TrioRunq | None = None
        self.reads = -1  # not counted yet
        # the clock's own read, if its instance has one (avcm's MockClock counts the tasks'
        # reads for its own spin rule): put back when control ends
        self.own_read: Any = getattr(self.clock, "__dict__", {}).get("current_time")
        # the task registers of the thread calls seen (trio clears one when the call is
        # abandoned on cancel): while none is cleared, no thread is an orphan to look for
        self.registers: list[list[Any]] = []
        self.handed_over: list[_HandedOver] = []  # calls whose threads have yet to begin them
        self.at_work: list[_HandedOver] = []  # calls whose threads have yet to report
        self.made: list[_HandedOver] = []  # every call handed over, in the order made
        self.orphans_seen: _OrphansSeen | None = None  # what _orphan_calls found last
        self.entering: list[Any] = []  # jobs let in that trio's own task has yet to run
        try:
            self.own_fd = self.runner.entry_queue.wakeup.wakeup_sock.fileno()
        except AttributeError:  # pragma: no cover - a trio that changed
            self.own_fd = -1

    @classmethod
    def install(cls, run: Run) -> _TrioQueue:
        queue = cls(run)
        runq = queue.runner.runq
        if type(runq) is not collections.deque:
            raise NotSupportedError("avcm.testing: trio's run queue is not a deque (nested run?)")
        queue.runq = _TrioRunq(queue, runq)
        queue.runner.runq = queue.runq
        queue.runner.io_manager = _TrioIO(queue, queue.runner.io_manager)  # type: ignore[assignment]
        uncounted = getattr(queue.clock, "uncounted_time", None)
        if uncounted is not None:
            # avcm's clock: its own rules for reads (the spin and busy-loop rules of a plain
            # run) give way to the queue's while it runs, so it is read as the mock clock
            # itself, unwrapped (trio reads it at every loop iteration)
            queue.clock.current_time = uncounted  # type: ignore[method-assign]
        entry_queue = queue.runner.entry_queue
        with entry_queue.lock:
            entry_queue.queue = _TrioEntries(queue, entry_queue.queue)
        _watch_hand_overs()
        _watch_answers()
        return queue

    def handed_over_call(self, register: list[Any]) -> _HandedOver:
        """A call the run hands a worker thread (:func:`_watch_hand_overs`)."""
        self.handed_over = [call for call in self.handed_over if not call.begun]
        call = _HandedOver(register)
        self.handed_over.append(call)
        self.at_work.append(call)
        self.made.append(call)
        self.registers.append(register)
        return call

    def let_in(self) -> bool:
        # trio's worker threads serve call after call, so a report is known by the task its
        # job wakes (the call's task register), not by its thread: what came waits till every
        # task waiting for a thread has its report, then all come in by the order the calls
        # began, as on asyncio.
        if not self.reported() or self.program_threads_hold():
            return False
        order: dict[Any, tuple[int, int, str]] = {}
        if not (self.free or self.thread_stalled()):
            order = {native: seen[2] for native, seen in self.thread_waiting().items()}
            if not self._handed_in(native for native in order if native not in self.slow_waits):
                return False  # a thread at work has yet to report
            if any(thread not in self.slow_waits for thread in self.orphans_at_work()):
                return False  # (one whose call was abandoned on cancel, too)
        arrivals = self.take_arrivals()
        last = (sys.maxsize, sys.maxsize, "")
        # stable: else as they came; what no waiting task names (from threads whose caller
        # left) by the order the calls were made, not the order the threads handed it in
        arrivals.sort(
            key=lambda arrival: (
                order.get(_job_task(arrival[1]), last),
                self._call_rank(*arrival),
                self.seen_rank(arrival[0]),
            )
        )
        jobs: list[Any] = []
        self.orphans_called_back(arrivals)
        for thread, job in arrivals:
            # a call back trio runs in its system nursery, not in the task waiting for the thread
            if not self.free and _job_task(job) is None:
                task = self._arrival_task(thread, job)
                if task is not None and self.hold_call_back(thread, job, task):
                    continue
            jobs.append(job)
        self._enter(jobs)
        if self.run._outliving:
            self.run._notify()  # the run waits for threads its tasks left: see _outlive
        return True

    def _call_rank(self, thread: threading.Thread, job: Any) -> int:
        """Where the call a job *thread* handed trio belongs to stands among the calls this
        run made (by the call's task register: the job's, or the one its thread works on);
        after them all if not known."""
        register = _job_register(job)
        if register is None:
            register = _register_of(thread)
        if register is None:
            register = next((call.register for call in self.at_work if call.thread is thread), None)
        return next(
            (rank for rank, call in enumerate(self.made) if call.register is register),
            len(self.made),
        )

    def handed_in(self) -> bool:
        return self._handed_in(self.thread_waiting())

    def calls_back(self, task: _Task) -> bool:
        # or trio woke it to run one (from_thread.run in a call not abandonable on cancel)
        sent = getattr(getattr(task.native, "_next_send", None), "value", None)
        return bool(task.call_backs) or (
            type(sent).__name__ in ("Run", "RunSync") and type(sent).__module__ == "trio._threads"
        )

    def run_call_back(self, task: _Task) -> None:
        """*task* was chosen for a call back held for it: trio's own task runs it (in its
        system nursery), before any other choice (:meth:`entry_pending`)."""
        self._enter([self.take_call_back(task)])

    def _enter(self, jobs: list[Any]) -> None:
        """Hand *jobs* to trio's own task, which runs them before any choice is made."""
        entry_queue = self.runner.entry_queue
        with entry_queue.lock:
            for job in jobs:
                collections.deque.append(entry_queue.queue, job)
        self.entering.extend(jobs)
        # trio's own task may wait for a wakeup that came when the jobs were held
        entry_queue.wakeup.wakeup_thread_and_signal_safe()

    def entry_pending(self) -> bool:
        # What threads handed in and was let in (a report, a call back), or a call back
        # chosen, waits for trio's own task to run it: it wakes a task (or runs the call
        # back), which then is among the choices, as on asyncio, where the loop runs what
        # comes in before its iteration's choice. Meanwhile no task is chosen, and time does
        # not pass.
        if not self.entering:
            return False
        queued = collections.deque.__iter__(self.runner.entry_queue.queue)
        waiting = {id(job) for job in queued}
        self.entering = [job for job in self.entering if id(job) in waiting]
        return bool(self.entering)

    def unnamed_call(self, native: Any) -> None:
        for frame in _await_frames(native.coro):
            register = frame.f_locals.get("task_register")
            if frame.f_code.co_name == "to_thread_run_sync" and isinstance(register, list):
                if not any(known is register for known in self.registers):
                    self.registers.append(register)
                return

    def orphans(self) -> list[tuple[threading.Thread, tuple[int, int, str]]]:
        if not self.registers:  # (no thread call seen: asked at every step)
            return []
        last = (sys.maxsize, sys.maxsize, "")
        return [(thread, last) for thread, _ in self._orphan_calls()]

    def _orphan_calls(self) -> list[tuple[threading.Thread, list[Any]]]:
        """Each thread at work on (or handing in the report of) a call of this run that was
        abandoned on cancel, with the call's task register (see :meth:`orphans`)."""
        # trio's worker threads serve call after call: one whose call's task register was
        # cleared (abandoned on cancel, the task gone) while it runs the call or hands its
        # report in; in no order but the threads' (their calls back name no task either).
        # Known by the register itself: a thread another run abandoned (still handing in its
        # report as this one goes on, or blocked for good) has a cleared register too.
        cleared = [register for register in self.registers if register == [None]]
        found: list[tuple[threading.Thread, list[Any]]] = []
        if not cleared:
            return found
        # one whose thread has yet to begin it (abandoned as it was made) is waited for: else
        # it is an orphan or not as fast as the thread starts
        unbegun = [call for call in self.handed_over if not call.begun and call.register == [None]]
        if unbegun:
            _within_handover(lambda: all(call.begun for call in unbegun))
            self.handed_over = [call for call in self.handed_over if call not in unbegun]
        # Which calls delivered their report is read before what threads handed in: a thread
        # hands its report in, then marks its call delivered, so a call read as delivered has
        # its report in what is read next. Read the other way round, a report handed in
        # between the two reads was in neither, and its call forgotten for good: asked about
        # or not as fast as the thread was (Exhaustive said "not deterministic", 1 run in
        # about 10,000 on a loaded machine).
        self.at_work = [call for call in self.at_work if not call.delivered]
        arrived = self.arrived_now()
        seen = self.orphans_seen
        if seen is not None and seen.same(self, arrived):
            return list(seen.found)
        self.orphans_seen = None
        held: list[list[Any]] = []
        # (and one that handed its report in: at work till it came in, as a thread a task
        # waits for is, whatever the machine's speed)
        reported = [(thread, _job_register(job)) for thread, job in arrived]
        # (a thread holds its call from its begin to its report, but for a moment in trio's
        # own frames between the two: known by the call too, else it would be no orphan then)
        holders: list[tuple[threading.Thread, list[Any] | None]] = [
            (call.thread, call.register)
            for call in self.at_work
            if call.thread is not None and call.begun
        ]
        # A call handed over under watch is held from its begin to its report, trio's frames
        # in between included (:func:`_watch_hand_overs`): its thread's frames say no more.
        # Looked at only for a call not handed over under watch (one made before the run
        # took control): walking every thread's frames at every question of every step was
        # most of the time of a run with an orphan.
        looked = any(
            not any(register is call.register for call in self.made) for register in cleared
        )
        if looked:
            frames = _current_frames()
            holders += [(thread, _register_of(thread, frames)) for thread in threading.enumerate()]
        for thread, register in holders + reported:
            if (
                register is not None
                and any(register is known for known in cleared)
                and not any(register is other for other in held)
                and not _given_up(thread, register)
            ):
                held.append(register)
                found.append((thread, register))
        # a cleared register no thread holds any more is done with
        self.registers = [
            register
            for register in self.registers
            if register != [None] or any(register is other for other in held)
        ]
        if not looked:
            self.orphans_seen = _OrphansSeen(self, arrived, list(found))
        return found

    def calls_handed_over(self) -> list[Any]:
        self.handed_over = [call for call in self.handed_over if not call.begun]
        return list(self.handed_over)

    def taken(self, call: Any) -> bool:
        return bool(call.begun)

    def give_up(self, thread: threading.Thread) -> None:
        _give_up(thread, _register_of(thread))

    def is_call_back(self, thread: threading.Thread, item: Any) -> bool:
        return _calls_back(item)

    def orphans_at_work(self) -> list[threading.Thread]:
        # By the call, not the thread: a worker thread whose report of one call waits to come
        # in may be at work on the next (trio's thread cache hands it the next call made), and
        # was seen as handed in. A call back names no call: its thread blocks in the call it
        # belongs to till it is answered. (trio's answer to a call back, not the loop's.)
        arrived = self.arrived_now()
        reported = [_job_register(job) for _, job in arrived]
        calling = {thread for thread, job in arrived if _calls_back(job)}
        orphans = self._orphan_calls()
        frames = _current_frames() if orphans else {}
        return [
            thread
            for thread, register in orphans
            if not any(register is done for done in reported)
            and not (
                (thread in calling or _waits_for_answer(thread, frames))
                and _register_of(thread, frames) is register
            )
        ]

    def threads_busy(self) -> bool:
        # A task waiting for a thread that waits for trio's answer to a call back (one trio
        # runs in its system nursery, for a call abandoned on cancel: the task is not woken
        # to run it) waits for trio: time passes for what the call back awaits (a sleep),
        # or the run stood still till thread_timeout and failed with ThreadWaitError.
        if threading.active_count() == 1:
            return False
        waiting = self.thread_waiting()
        if not waiting:
            return bool(self.orphans_at_work())
        answering = self._answering()
        return any(native not in answering for native in waiting) or bool(self.orphans_at_work())

    def fast_threads_busy(self) -> bool:
        # (one that waits for trio's answer to a call back, held for its task: not at work)
        answering = self._answering()
        return (
            any(
                native not in self.slow_waits and native not in answering
                for native in self.thread_waiting()
            )
            or self.fast_orphans_busy()
        )

    def _answering(self) -> set[Any]:
        """The tasks whose worker thread's call back came in and waits for trio's answer: the
        thread of the task's innermost call (a call back may itself call a thread, which the
        task then waits for: no answer till that thread is done)."""
        # (a thread's report of an earlier call in arrived says nothing of this one: trio's
        # worker threads serve call after call)
        sent = {thread for thread, job in self.arrived_now() if _calls_back(job)}
        answering = set()
        frames = _current_frames()  # (one look for all threads: taking it is most of the cost)
        for thread in threading.enumerate():
            if thread in sent or not _waits_for_answer(thread, frames):
                continue
            worker = _trio_frame(thread, "worker_fn", frames)
            register = None if worker is None else worker.f_locals.get("task_register")
            task = register[0] if isinstance(register, list) and register else None
            if task is None:
                continue
            if _innermost_register(task.coro) is register:
                answering.add(task)
        return answering

    def held_slow(self, thread: threading.Thread, item: Any) -> bool:
        # a job known by the task it belongs to; one not known: held
        task = self._arrival_task(thread, item)
        return task is None or task in self.slow_waits

    def _handed_in(self, waits: Iterable[Any]) -> bool:
        # A job names the task it wakes, but for a call back from a thread whose call is
        # abandoned on cancel: trio runs that in its system nursery, the task unnamed. Such
        # a thread blocks for the answer: it stands for one task waiting for a thread.
        # (but a call back of a thread whose caller left: it stands for no waiting task)
        arrived = [
            (thread, job, self._arrival_task(thread, job)) for thread, job in self.arrived_now()
        ]
        missing = set(waits) - {task for _, _, task in arrived}
        if missing:
            missing -= self._answering()
        if not missing:
            return True
        orphans = {thread for thread, _ in self.orphans()}
        calls = sum(
            1
            for thread, job, task in arrived
            if task is None and _calls_back(job) and thread not in orphans
        )
        return len(missing) <= calls

    def _arrival_task(self, thread: threading.Thread, job: Any) -> Any:
        """The task a job a thread handed trio belongs to: the one it wakes, or, for a call
        back that names none, the one whose call the thread runs (None: not known)."""
        task = _job_task(job)
        if task is None and _calls_back(job):
            task = _thread_task(thread)
        return task

    def serves_the_loop(self, thread: threading.Thread) -> bool:
        # trio's thread cache runs to_thread calls only (and delivers their results)
        return _runs(thread, "trio._core._thread_cache")

    def clock_reads(self) -> int:
        if self.reads < 0:
            # Counted from the first question on (a spin rule's check), so that a run that
            # never spins pays nothing. MockClock is no slotted class: the instance's own
            # current_time counts the reads made in a task (trio's loop reads it too).
            self.reads = 0
            read = self.clock.current_time
            context = self.context

            def current_time() -> float:
                if hasattr(context, "task"):
                    self.reads += 1
                return float(read())

            self.clock.current_time = current_time  # type: ignore[method-assign]
        return self.reads

    def advance(self, to: float) -> None:
        now = self.now()
        if to > now:
            self.clock.jump(to - now)  # type: ignore[attr-defined]

    def current(self) -> Any:
        return self.trio.lowlevel.current_task()

    def current_running(self) -> Any:
        return _trio_task_running()

    def native_tasks(self) -> Iterable[Any]:
        return self.runner.tasks

    def waiting_on(self, native: Any) -> object:
        # trio sets the abort function when a task blocks, and clears it when the task is
        # rescheduled, but also when a cancellation tried to abort the wait and could not
        # (a thread's call that is not abandoned on cancel: the task still waits for the
        # thread's result). Then the wait is the frame it blocks in, alive as long as it.
        wait = native._abort_func
        if wait is not None or native._next_send_fn is not None or native.coro.cr_frame is None:
            return wait
        if native is getattr(self.context, "task", None):
            return None  # running now
        frames = _await_frames(native.coro)
        return frames[-1] if frames else None

    def call_soon(self, function: Callable[[], None]) -> None:
        self.token.run_sync_soon(function)

    def abandon(self, native: Any, error: BaseException) -> None:
        for frame in _await_frames(native.coro):
            if frame.f_code.co_name == "to_thread_run_sync":
                # trio drops the thread's late report when the waiting task is gone from
                # here, as for a call abandoned on cancel; its calls back into trio run in
                # the system nursery, as an abandoned thread's do
                _route_abandoned_calls_back(self.trio)
                register = frame.f_locals.get("task_register")
                if isinstance(register, list) and register:
                    register[0] = None
                    # its thread is no orphan to wait for (see orphans): it never returns
                    for thread in threading.enumerate():
                        if _register_of(thread) is register:
                            _give_up(thread, register)
                self.trio.lowlevel.reschedule(native, _Raise(error))  # type: ignore[arg-type]
                return

    def now(self) -> float:
        # the class's own read: the instance's counts the tasks' reads (clock_reads)
        return float(type(self.clock).current_time(self.clock))

    def sync_autojump(self, *, runnable: bool) -> None:
        # trio's MockClock jumps when no task is runnable; a held task is runnable, and a
        # worker thread at work is a reason to wait, not to jump; I/O waited for is one to
        # wait up to io_timeout (real seconds: trio waits that long for I/O, then jumps).
        # trio reads the threshold right after asking the run queue whether it is empty.
        threshold = getattr(self.clock, "autojump_threshold", None)
        if threshold is None:
            return
        if not runnable:
            # (what threads handed in comes in before time passes: a call back of a thread
            # whose call was abandoned on cancel, which no task waits for; once the tasks
            # ended, what such a thread late past a timer handed in, which the poll that
            # follows lets in: see _outlive)
            if self.run._outliving:
                self.settle()
            if self._keeps_time_still():
                threshold = math.inf
            elif self.io_waits():
                threshold = max(threshold, self.run.io_timeout)
        self.runner.clock_autojump_threshold = threshold

    def _keeps_time_still(self) -> bool:
        """Whether trio's clock may not jump though no task can run: threads at work, or
        what they handed in yet to come in."""
        # (what threads late past a timer handed in, held while a task could run, comes in
        # at the poll that follows, which settles: no time passes before)
        return (
            self.time_waits_for_threads()
            or self.reported()
            or self.entry_pending()
            or self.orphans_unlooked()
            or (bool(self.arrived) and not self.slow())
        )

    def autojump_stale(self) -> bool:
        """Whether trio's clock was kept from jumping (:meth:`sync_autojump`) for what keeps
        it still no more: a thread at work then ended or stalled since, waking nobody (a
        program thread that put what a task polls for in a queue). trio then asks the run
        queue again at once, instead of sleeping its day."""
        threshold = getattr(self.clock, "autojump_threshold", None)
        return (
            threshold is not None
            and threshold != math.inf
            and self.runner.clock_autojump_threshold == math.inf
            and not self._keeps_time_still()
        )

    def io_waits(self) -> int:
        manager = self.runner.io_manager
        manager = getattr(manager, "manager", manager)
        registered = getattr(manager, "_registered", None)  # epoll and kqueue: fd -> waiters
        if registered is not None:
            # but for trio's own: the wakeup socket of run_sync_soon's system task
            return len(registered) - (self.own_fd in registered)
        statistics = manager.statistics()  # pragma: no cover - another I/O manager
        return sum(  # pragma: no cover
            getattr(statistics, name, 0)
            for name in ("tasks_waiting_read", "tasks_waiting_write", "tasks_waiting_overlapped")
        )

    def let_time_pass(self) -> None:
        deadline = self.runner.deadlines.next_deadline()
        jump = getattr(self.clock, "jump", None)
        if jump is not None and not math.isinf(deadline):
            jump(max(0.0, deadline - self.now()))

    def run_held(self, task: _Task) -> None:
        assert self.runq is not None
        collections.deque.append(self.runq, task.native)

    def uninstall(self) -> None:
        self.release_all()
        assert self.runq is not None
        self.runner.runq = collections.deque(collections.deque.__iter__(self.runq))
        entry_queue = self.runner.entry_queue
        with entry_queue.lock:
            if isinstance(entry_queue.queue, _TrioEntries):
                entry_queue.queue = collections.deque(collections.deque.__iter__(entry_queue.queue))
        if isinstance(self.runner.io_manager, _TrioIO):
            self.runner.io_manager = self.runner.io_manager.manager
        getattr(self.clock, "__dict__", {}).pop("current_time", None)
        if self.own_read is not None:
            self.clock.current_time = self.own_read  # type: ignore[method-assign]
        threshold = getattr(self.clock, "autojump_threshold", None)
        if threshold is not None:
            self.runner.clock_autojump_threshold = threshold


class _AsyncioReady(collections.deque):  # type: ignore[type-arg]
    """Stands in for asyncio's ``loop._ready``: the loop appends ready callbacks, and each
    iteration pops as many as ``len()`` said. A callback that resumes a controlled task is
    held; when no other callback is ready, one iteration runs the one the chooser picks."""

    def __init__(self, queue: _AsyncioQueue, items: Any) -> None:
        super().__init__(items)
        self.queue = queue
        self.due = 0  # uncontrolled callbacks the current iteration runs before its choice
        self.iteration = 0  # of the loop: a task held during one is chosen from the next on
        self.choose = False  # whether this iteration ends with a chosen task's step
        self.task_ran = True  # whether this iteration (so far) resumed a task
        self.stepped = False  # whether the callback run last resumed a task
        self.successor: collections.deque[Any] | None = None  # the loop's queue once uninstalled
        self.popped = 0  # callbacks and steps run so far
        # the callback or step (steps then, popped then) that last woke tasks by cancelling
        # them, and that batch's place in the loop's order
        self.cancel_batch: tuple[int, int, int] | None = None
        # callbacks scheduled while the run holds the queue, with their place in the loop's
        # order (as a held task's: Run._in_turn), till the tasks queued before them ran
        self.deferred: collections.deque[tuple[tuple[int, int, int], Any]] = collections.deque()

    def append(self, handle: Any) -> None:
        successor = self.successor
        if successor is not None:
            # uninstalled: a thread that looked up the loop's queue before it was swapped
            # appends here after the swap, and its call back would be lost (the thread, no
            # daemon, blocked for ever in it)
            successor.append(handle)
            return
        queue = self.queue
        if threading.get_ident() != queue.thread:
            # (anyio's worker reports from its thread: not looked for in the loop's appends;
            # marked reported once handed in, not before: see _Queue.orphans)
            if not queue.free:
                # call_soon_threadsafe: a thread's report (a worker thread's result, a
                # process's exit) comes in when no task can run, not at whatever step it
                # happens to arrive
                queue.arrived.append((threading.current_thread(), handle))
                if _reports(handle):
                    queue.reports.add(handle._args[0])  # the call's future
                return
            if _reports(handle):
                queue.reports.add(handle._args[0])
        native = None if queue.free else _handle_task(handle)
        controlled = queue.tasks.get(native)
        if controlled is None:
            if native is not None and native not in queue.births:
                queue.births[native] = len(queue.births)
                # (one a task factory of the program's made, set for a while: not tracked)
                queue.loop_tasks.setdefault(native)
            if (
                native is None
                and not queue.free
                and sys._getframe(1).f_code.co_name == "_call_soon"
            ):
                # A callback runs in its place in the loop's order, after the tasks made
                # runnable before it, and so does what it wakes: a task's done callback (how
                # a task group's host, gather or shield learn that a child ended), anyio's
                # retry of a pending cancellation (once an iteration, not once a step: run at
                # once, they ordered the clean-ups of cancelled children as no plain asyncio
                # run does, attack34 F1-F3). Tasks made runnable after it wait for it
                # (choosable): a subprocess's connection_made is never overtaken. (Only what
                # running code schedules: I/O events and timers the loop queues itself come
                # when they come, and waiting for them would make choices depend on it.)
                steps = len(queue.run._steps)
                self.deferred.append(((steps, 0, next(queue.readied)), handle))
                return
            super().append(handle)
            return
        queue.woken(controlled)
        if not controlled.handles:
            controlled.held_at = self.iteration
        batch = None
        if _wakes_cancelled(handle):
            # anyio cancels a task group's tasks in the order of a set (memory addresses):
            # those one callback or step woke so go by index among themselves, their batch
            # in the loop's order
            key = (len(queue.run._steps), self.popped)
            if self.cancel_batch is None or self.cancel_batch[:2] != key:
                self.cancel_batch = (*key, next(queue.readied))
            batch = self.cancel_batch[2]
        queue.hold(controlled, in_order=True, batch=batch)
        controlled.handles.append(handle)

    def __len__(self) -> int:
        # asyncio takes len() as the number of callbacks this iteration runs: the ones ready
        # now, then one chosen task step
        self.iteration += 1
        self.task_ran = False
        self._after_step()
        queue = self.queue
        ready = queue.ready()  # first: it may let in threads' calls, which run before
        # (no choice now, a thread at work first: what the loop has to do meanwhile, its
        # report among it, runs)
        self._release_deferred(every=not ready)
        self.choose = ready and not queue.admitted
        queue.admitted = False
        self.due = super().__len__()
        return self.due + self.choose

    def __bool__(self) -> bool:
        # (a task held till a poll looks at threads whose caller left: polled without waiting)
        queue = self.queue
        return (
            super().__len__() > 0
            or bool(self.deferred)
            or queue.ready()
            or queue.orphans_unlooked()
        )

    def _release_deferred(self, *, every: bool = False) -> None:
        """Queue the deferred callbacks whose turn came (*every*: all): those the loop's own
        order runs before every held task."""
        deferred = self.deferred
        if not deferred:
            return
        queue = self.queue
        steps = len(queue.run._steps)
        turns = [_turn(task, steps) for task in queue.held() if _live(task)]
        # (a task chosen out of the loop's order runs on ahead of the tasks, not of them)
        every = every or queue.free or queue.run._lead is not None
        first = None if every or not turns else min(turns)
        while deferred and (first is None or deferred[0][0] < first):
            collections.deque.append(self, deferred.popleft()[1])

    def _after_step(self) -> None:
        # A task's step that handed a call to a worker thread may also have its wait for it
        # cancelled, in a later callback (anyio delivers a cancellation so, to a scope
        # cancelled before the call): the call is skipped if the thread has yet to take it.
        # The thread takes it first, whatever the machine's speed.
        if self.stepped:
            self.stepped = False
            if self.queue.calls_handed_over():
                self.queue.calls_taken()

    def popleft(self) -> Any:
        self.popped += 1
        self._after_step()
        if self.due > 0 or not (self.choose and self.queue.ready()):
            self.due -= 1
            if not super().__len__():
                return _NOTHING
            handle = super().popleft()
            task = _handle_task(handle) is not None
            self.stepped = task
            self.task_ran = self.task_ran or task
            self.queue.run._uncontrolled_step(1, task=task)
            return handle
        queue = self.queue
        if not queue.choosable():
            return _NOTHING
        # An injected cancellation may wake the task it cancels (its wait for a thread
        # abandoned), which asyncio runs in its next iteration: if no other task can be
        # chosen now, none is, and the choice comes in the next one.
        if not queue.run._inject_now():
            chosen = None
        elif not queue.choosable():
            return _NOTHING
        else:
            chosen = queue.run._choose(inject=False)
        if chosen is None:
            queue.release_all()
            return super().popleft() if super().__len__() else _NOTHING
        self.task_ran = self.stepped = True
        if chosen.call_backs:
            return queue.take_call_back(chosen)
        chosen.held = False
        handles, chosen.handles = chosen.handles, []
        for handle in handles[1:]:  # not seen so far; run them after it, in order
            super().append(handle)
        return handles[0]


def _move_to_front(source: collections.deque[Any], target: collections.deque[Any]) -> None:
    """Move what *source* holds to the front of *target*, in order (plain deque operations,
    each atomic: threads may append to either meanwhile)."""
    moved = []
    while True:
        try:
            moved.append(collections.deque.popleft(source))
        except IndexError:
            break
    collections.deque.extendleft(target, reversed(moved))


def _live(task: _Task) -> bool:
    task.handles = [handle for handle in task.handles if not handle.cancelled()]
    if not task.handles and not task.call_backs:
        task.held = False
    return task.held


def _handle_task(handle: Any) -> Any:
    """The task a ready callback resumes (its step, or its wakeup), or None."""
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    name = getattr(callback, "__name__", "") or type(callback).__name__
    if "step" in name.lower() or "wakeup" in name.lower():
        return task
    return None


class _TrioCodes(NamedTuple):
    run_loop: types.CodeType | None  # trio's event loop (unrolled_run)
    reschedule: types.CodeType | None  # Runner.reschedule


@functools.cache
def _trio_codes() -> _TrioCodes:
    """The code of trio's functions that ask its run queue questions whose answers matter
    for nothing the race finder does (None: a trio without them; each is then asked in
    full)."""
    from trio._core import _run

    def code(function: object) -> types.CodeType | None:
        return getattr(function, "__code__", None)

    return _TrioCodes(
        code(getattr(_run, "unrolled_run", None)),
        code(getattr(getattr(_run, "Runner", None), "reschedule", None)),
    )


def _trio_task_running() -> Any:
    """The trio task whose step runs now, or None (trio's own code between steps: timers
    falling due, I/O)."""
    try:
        return sys.modules["trio"].lowlevel.current_task()
    except RuntimeError:
        return None


def _wakes_cancelled(handle: Any) -> bool:
    """Whether a ready callback wakes its task with a cancelled future (its task cancelled)."""
    args: tuple[Any, ...] = getattr(handle, "_args", None) or ()
    return bool(args) and isinstance(args[0], asyncio.Future) and args[0].cancelled()


def _reports(handle: Any) -> bool:
    """Whether a callback anyio's asyncio worker thread handed the loop is its report."""
    callback = getattr(handle, "_callback", None)
    return getattr(callback, "__name__", "") == "_report_result" and bool(handle._args)


class _Nothing:
    """A cancelled handle: asyncio skips it. Returned when nothing was held after all."""

    _cancelled = True

    def cancelled(self) -> bool:
        return True


_NOTHING = _Nothing()


class _AsyncioQueue(_Queue):
    def abandon_wait(self, native: Any) -> bool:
        if native.done():
            return False
        # asyncio's own cancellation, which anyio's shielded scopes do not hold back (they
        # only keep anyio's cancellations of outer scopes away)
        return bool(native.cancel(msg="avcm.testing: a wait that nothing can end, abandoned"))

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        import asyncio

        self.asyncio = asyncio
        self.loop = asyncio.get_running_loop()
        if (
            not isinstance(self.loop, asyncio.BaseEventLoop)
            or type(getattr(self.loop, "_ready", None)) is not collections.deque
        ):
            raise NotSupportedError(
                f"avcm.testing runs asyncio tasks one at a time through the ready queue of "
                f"asyncio's own event loop, not {type(self.loop).__name__}"
            )
        self.readyq: _AsyncioReady | None = None
        self.admitted = False  # arrivals let in since the last iteration began
        # The loop's tasks, kept here: asyncio.all_tasks() walks every task of the process,
        # done ones of earlier loops that no collection freed yet included, and the scan for
        # waits on threads asks for them several times a step. In the order they were made
        # (the task factory below), or first scheduled (a factory the program set for a while
        # made them).
        self.loop_tasks: dict[Any, None] = dict.fromkeys(asyncio.all_tasks(self.loop))
        self.outer_factory = self.loop.get_task_factory()
        self.track_factory: Any = None
        # tasks asyncio.as_completed started from a set since the last choice, with their
        # place (see order_spawned)
        self.from_a_set: list[tuple[_Task, tuple[object, ...]]] = []

    def order_spawned(self) -> None:
        """Tasks that ``asyncio.as_completed`` started from a set of coroutines were made in
        the set's order, which follows memory addresses: a token found in one process ran
        other tasks in another (a replay diverged at its 7th step, in every fresh process).
        They take their columns and places in the loop's order by :func:`_as_completed_place`:
        the program's order of the list it gave, the same in every process. (By what they
        run alone, objects of default reprs tied, and a replay of a failure passed:
        attack40.)"""
        made = self.from_a_set
        if len(made) > 1:
            ordered = sorted(made, key=operator.itemgetter(1))
            slots = [(task.index, task.ready) for task, _ in made]
            for (task, _), (index, ready) in zip(ordered, slots, strict=True):
                task.index, task.ready = index, ready
                self.run._tasks[index] = task
        made.clear()

    def handed_in(self) -> bool:
        return self.report_order(every=True) is not None

    def is_call_back(self, thread: threading.Thread, item: Any) -> bool:
        return _call_into(thread, self.loop) != 0

    def release_all(self) -> None:
        super().release_all()
        if self.readyq is not None:
            self.readyq._release_deferred(every=True)

    def holding(self, task: _Task) -> None:
        assert self.readyq is not None
        if not task.handles:
            task.held_at = self.readyq.iteration

    def held_slow(self, thread: threading.Thread, item: Any) -> bool:
        # known by its thread; a thread not named by its wait (asyncio's executor) only if
        # a slow wait waits for one
        slow = self.slow_threads()
        if thread in slow:
            return True
        named = {seen[1] for seen in self.thread_waits.values()}
        return True in slow and thread not in named

    def only_callbacks(self) -> bool:
        assert self.readyq is not None
        return not self.readyq.task_ran

    def came_in(self) -> bool:
        return self.admitted

    def let_in(self) -> bool:
        # A thread handing a call over to the loop is let finish handing it over first (a
        # matter of microseconds): its request then comes in with what came before it, not
        # in whichever of two polls the machine's speed puts it.
        self._handovers()
        reports = self.arrivals()
        if reports is None:
            return False
        # a report let in before its thread marked its call reported is marked here: its
        # thread is no orphan at work any more, however fast it was (see orphans)
        self.reports.update(handle._args[0] for _, handle in reports if _reports(handle))
        queued = False
        self.orphans_called_back(reports)
        for thread, handle in reports:
            if (
                not self.free
                and _call_into(thread, self.loop)
                and self.hold_call_back(thread, handle)
            ):
                continue
            collections.deque.append(self.readyq, handle)  # type: ignore[arg-type]
            queued = True
        if self.run._outliving:
            self.run._notify()  # the run waits for threads its tasks left: see _outlive
        # the iteration that runs them makes no choice: whether they came in at a poll or
        # when a thread was found waiting for the loop, the steps after are the same
        self.admitted = self.admitted or queued
        return True

    @classmethod
    def install(cls, run: Run) -> _AsyncioQueue:
        queue = cls(run)
        # swapped first, then what was ready moved in before anything appended since: a
        # thread appending between a copy and the swap was lost
        ready: collections.deque[Any] = queue.loop._ready  # type: ignore[attr-defined]
        queue.readyq = _AsyncioReady(queue, ())
        queue.loop._ready = queue.readyq  # type: ignore[attr-defined]
        _move_to_front(ready, queue.readyq)
        queue.track_factory = queue.make_task
        queue.loop.set_task_factory(queue.track_factory)
        from ._clock import VirtualTimeEventLoop

        if isinstance(queue.loop, VirtualTimeEventLoop):
            queue.loop.watch_outside(queue)
        return queue

    def current(self) -> Any:
        return self.asyncio.current_task()

    def make_task(self, loop: Any, coro: Any, **kwargs: Any) -> Any:
        """The loop's task factory while the run is installed: the task the factory in place
        before (or asyncio's) makes, recorded as one of the loop's."""
        factory = self.outer_factory
        task: Any = (
            self.asyncio.Task(coro, loop=loop, **kwargs)
            if factory is None
            else factory(loop, coro, **kwargs)
        )
        self.loop_tasks[task] = None
        controlled = None if task.done() else self.spawned(task)
        if controlled is not None and (place := _as_completed_place(coro)) is not None:
            self.from_a_set.append((controlled, place))
        if controlled is not None and self.readyq is not None:
            # its first step, scheduled as the task was made, goes through the ready queue
            # again: held now, in its place in the loop's order
            readyq = self.readyq
            queued = collections.deque.__iter__(readyq)
            first = [handle for handle in queued if _handle_task(handle) is task]
            self.births.pop(task, None)
            for handle in first:
                collections.deque.remove(readyq, handle)
                readyq.append(handle)
        return task

    def native_tasks(self) -> Iterable[Any]:
        if self.loop.get_task_factory() is not self.track_factory:
            # the program put in a task factory of its own: the tasks it makes are not seen
            return self.asyncio.all_tasks(self.loop)
        tasks = self.loop_tasks
        for done in [task for task in tasks if task.done()]:
            del tasks[done]
        return list(tasks)

    def waiting_on(self, native: Any) -> object:
        # what the task awaits; it stays set, done, until the task's next step begins
        waiter = getattr(native, "_fut_waiter", None)
        return None if waiter is None or waiter.done() else waiter

    def call_soon(self, function: Callable[[], None]) -> None:
        self.loop.call_soon(function)

    def choosable(self) -> list[_Task]:
        # A task made runnable during this iteration is not chosen in it: asyncio would run
        # its step after the callbacks made ready before it (a subprocess's connection_made
        # before the wakeup that follows it), in the next iteration.
        assert self.readyq is not None
        iteration = self.readyq.iteration
        tasks = [task for task in self.held() if _live(task) and task.held_at < iteration]
        # Nor one made runnable after a callback still deferred (_AsyncioReady.append), unless
        # a task chosen out of turn runs on ahead: then the callbacks run at once.
        deferred = self.readyq.deferred
        if deferred and self.run._lead is None:
            barrier, steps = deferred[0][0], len(self.run._steps)
            tasks = [task for task in tasks if _turn(task, steps) < barrier]
        return tasks

    def calls_back_waiting(self) -> list[Any]:
        waiting = [
            native
            for native in self.native_tasks()
            if self.waiting_on(native) is not None and _runs_a_call_back(native)
        ]
        # (the loop's set of tasks iterates in an order memory addresses decide)
        return sorted(waiting, key=lambda native: self.births.get(native, sys.maxsize))

    def cancel_runaways(self) -> None:
        for native in self.native_tasks():
            if self.waiting_on(native) is None and not native.done():
                native.cancel()

    def abandon(self, native: Any, error: BaseException) -> None:
        # the future the task awaits: anyio's worker and asyncio's executor drop a report
        # for a cancelled future (the task sees a cancellation; the run fails with *error*)
        thread = _waits_for_thread(_coro_of(native))
        waiter = getattr(native, "_fut_waiter", None)
        if isinstance(thread, threading.Thread):
            _give_up(thread, waiter)
        else:
            _abandoned_unnamed.append(True)
        if waiter is not None and not waiter.done():
            waiter.cancel()

    def threads_busy(self) -> bool:
        # asyncio.to_thread and run_in_executor, counted by the virtual-time loop
        return super().threads_busy() or getattr(self.loop, "executor_jobs", 0) > 0

    def _handovers(self) -> None:
        """Let each worker thread handing a call over to the loop finish handing it over (a
        matter of microseconds), or, given its answer, leave the call: where it then stands
        does not depend on the machine's speed."""
        threads = [
            seen[1] for seen in self.thread_waits.values() if isinstance(seen[1], threading.Thread)
        ] + [thread for thread, _ in self.orphans()]
        _within_handover(lambda: all(_call_into(thread, self.loop) != 1 for thread in threads))

    def look_at_orphans(self) -> None:
        self._handovers()  # (one handing its call back over is at work for a moment more)
        super().look_at_orphans()

    def waits_for_loop(self, thread: threading.Thread) -> bool:
        # Only once its call came in: till then the thread is as good as at work, so that
        # nothing (no choice, no other thread's call or report) comes in meanwhile at a
        # moment the machine's speed decides. The loop may still be running another thread's
        # call back when this one arrives (tasks outside control run on while threads
        # work): the call comes in when no task can run, with the other thread's report.
        # A thread whose call was abandoned on cancel, its caller gone, waits for the loop
        # once it handed its call over: like a thread that is late (see late), it took longer
        # than its caller's deadline, so the tasks that can run look first.
        if any(orphan is thread for orphan, _ in self.orphans()):
            return _call_into(thread, self.loop) == 2
        return _call_into(thread, self.loop) == 2 and all(
            sender is not thread for sender, _ in self.arrived_now()
        )

    def outlast_timer(self) -> bool:
        # asked of threads that handed over their calls back, if any, whatever the machine's
        # speed: one that called back already is asked about as one still at work (if it
        # outlasts the timer, its call comes in after it: it was slow before calling back)
        self._handovers()
        return super().outlast_timer()

    def calls_handed_over(self) -> list[Any]:
        # any worker's, whoever waits for it: a step that hands a call over may also cancel
        # it (a cancel scope cancelled before it, delivered in a later callback)
        if threading.active_count() == 1:
            return []
        return [
            worker
            for worker in _anyio_workers(self.loop)
            if getattr(getattr(worker, "queue", None), "unfinished_tasks", 0)
        ]

    def taken(self, call: Any) -> bool:
        return not _untaken(call)

    def io_waits(self) -> int:
        # the selector's readers and writers but the loop's own self-pipe (a subprocess's
        # pipes, a socket, a pidfd child watcher), and asyncio's threaded child watcher
        # waiting for a process to exit
        count = 0
        selector = getattr(self.loop, "_selector", None)
        if selector is not None:
            own = getattr(self.loop, "_ssock", None)
            own_fd = own.fileno() if own is not None else -1
            count = sum(1 for key in selector.get_map().values() if key.fd != own_fd)
        return count + sum(1 for thread in threading.enumerate() if self._waits_for_a_child(thread))

    def serves_the_loop(self, thread: threading.Thread) -> bool:
        # anyio's worker threads run to_thread calls only; a pool's thread runs a task's call
        # while its job is one run_in_executor handed it (avcm's virtual-time loop knows them);
        # the threaded child watcher's thread waits for a process to exit, which is outside
        # (io_waits): held as a program thread, each schedule waited _THREAD_STALL for it
        if getattr(thread, "loop", None) is self.loop and type(thread).__module__ == (
            "anyio._backends._asyncio"
        ):
            return True
        if self._waits_for_a_child(thread):
            return True
        return thread in getattr(self.loop, "serving", ())

    def _waits_for_a_child(self, thread: threading.Thread) -> bool:
        """Whether *thread* is asyncio's threaded child watcher's, waiting for a process of
        this loop's to exit. The watcher's thread reports to the loop it was started for (its
        first argument): one still ending after an earlier run reports to a closed loop, and
        is no wait here."""
        if not thread.name.startswith("asyncio-waitpid-"):
            return False
        arguments = getattr(thread, "_args", None)
        return not isinstance(arguments, tuple) or not arguments or arguments[0] is self.loop

    def now(self) -> float:
        return self.loop.time()

    def thread_now(self) -> float:
        from ._clock import VirtualTimeEventLoop

        assert isinstance(self.loop, VirtualTimeEventLoop)  # (a thread clock only then)
        return self.loop.uncounted_time()

    def let_time_pass(self) -> None:
        from ._clock import VirtualTimeEventLoop

        if isinstance(self.loop, VirtualTimeEventLoop):
            self.loop.advance_to_next_timer()

    def advance(self, to: float) -> None:
        from ._clock import VirtualTimeEventLoop

        if isinstance(self.loop, VirtualTimeEventLoop):
            self.loop.advance(to)

    def clock_reads(self) -> int:
        from ._clock import VirtualTimeEventLoop

        if not isinstance(self.loop, VirtualTimeEventLoop):
            return 0
        self.loop.count_reads = True  # from the first question on: see _TrioQueue
        return self.loop.task_reads

    def run_held(self, task: _Task) -> None:
        assert self.readyq is not None
        for handle in task.handles:
            collections.deque.append(self.readyq, handle)
        task.handles = []

    def uninstall(self) -> None:
        self.release_all()
        readyq = self.readyq
        assert readyq is not None
        ready: collections.deque[Any] = collections.deque()
        readyq.successor = ready  # from here on, what a thread appends goes there
        self.loop._ready = ready  # type: ignore[attr-defined]
        _move_to_front(readyq, ready)
        if self.loop.get_task_factory() is self.track_factory:
            self.loop.set_task_factory(self.outer_factory)
        from ._clock import VirtualTimeEventLoop

        if isinstance(self.loop, VirtualTimeEventLoop):
            self.loop.watch_outside(None)
            self.loop.count_reads = False


def _next_deadline(*, exclude: float | None = None) -> float | None:
    """The earliest timer of the running event loop, if any: one that can fall due (trio has
    no deadline for ``sleep_forever``, asyncio a timer at infinity), and not at *exclude*
    (the controller's own). Neither trio nor asyncio says this publicly: this reads their
    internals, and answers None where they moved."""
    if sniffio.current_async_library() == "trio":
        try:
            from trio._core._run import GLOBAL_RUN_CONTEXT

            deadlines = GLOBAL_RUN_CONTEXT.runner.deadlines
            if exclude is None:
                deadline = deadlines.next_deadline()
            else:
                deadline = min(
                    (when for when in trio_timers() if when != exclude), default=math.inf
                )
        except (ImportError, AttributeError):  # pragma: no cover - a trio that changed
            return None
        return None if math.isinf(deadline) else float(deadline)
    import asyncio

    from ._clock import next_timer

    return next_timer(asyncio.get_running_loop(), exclude=exclude)


def _virtual_clock() -> bool:
    """Whether time is virtual here: trio's ``MockClock``, or avcm's virtual-time loop."""
    if sniffio.current_async_library() == "trio":
        from trio._core._run import GLOBAL_RUN_CONTEXT

        # trio.testing imports pytest: the clock's class is looked up by name
        clock = type(GLOBAL_RUN_CONTEXT.runner.clock)
        return clock.__name__ == "MockClock" and clock.__module__.startswith("trio.")
    import asyncio

    from ._clock import VirtualTimeEventLoop

    return isinstance(asyncio.get_running_loop(), VirtualTimeEventLoop)
