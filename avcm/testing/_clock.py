"""Virtual time for both backends, so simulated latency costs no wall time and a seed replays.

On trio this is :class:`trio.testing.MockClock` with ``autojump_threshold=0``: when every task is
blocked, the clock jumps to the next deadline; timers due at the same instant wake in the order
they were set (trio's own tie-breaker is a memory address). On asyncio the same idea is an event
loop whose ``time()`` is virtual and whose selector, asked to wait, advances that time instead
of sleeping.
Both loops are then deterministic: which callback runs next depends only on the program and the
seed, never on how fast the machine is.

The spin rule (:class:`_Spin`, both backends, not while the race finder controls the run: it has
its own): a task that reads the clock ``_SPIN_READS`` times from one place at one virtual
instant waits for it to move (a poll with ``sleep(0)`` between reads), which on a real loop it
does while the task spins: virtual time then moves on by as long as the poll has lasted (a
microsecond at least), to the next timer at most (which then falls due). A count of reads
depends only on the program and the seed, so a run that spins still replays.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import gc
import heapq
import inspect
import itertools
import math
import selectors
import sys
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple

import anyio
import anyio.lowlevel
import sniffio

from .. import InvalidError

if TYPE_CHECKING:
    import trio.testing

__all__ = ["BACKENDS", "VirtualTimeEventLoop", "backend_options", "run_on_virtual_time"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Outside(Protocol):
    """What the race finder tells a virtual-time loop about work outside it."""

    @property
    def io_timeout(self) -> float:
        """Seconds of real time to wait for I/O before virtual time may move on."""
        ...

    def threads_busy(self) -> bool:
        """Whether a worker thread is at work: wait for it, however long it takes."""
        ...

    def io_waits(self) -> int:
        """How many waits for I/O are registered (the loop's own self-pipe aside)."""
        ...

    def io_wait(self, timeout: float) -> float | None:
        """How long a poll for I/O asked for with *timeout* (0: a task can run) waits in
        real time; None: no poll now."""
        ...

    def io_polled(self, came: bool) -> None:
        """A poll for I/O that :meth:`io_wait` asked to wait ended: whether anything came."""
        ...

    def let_in(self) -> bool:
        """Make ready the callbacks that threads made ready while tasks could run (held back
        till now); whether there were any."""
        ...

    def reported(self) -> bool:
        """Whether threads made callbacks ready that are held back."""
        ...

    def time_waits_for_threads(self) -> bool:
        """Whether virtual time stands still for a worker thread at work (not one that
        stalled waiting for what a task's timer may bring)."""
        ...

    def settle(self) -> None:
        """Nothing is ready: if no task can run, threads late past a timer they outlasted are
        waited for now."""
        ...

    def thread_poll(self, timeout: float) -> float:
        """How long a poll asked to wait *timeout* seconds waits for a thread at work."""
        ...

    def outlast_timer(self) -> bool:
        """Asked where the loop would wait for threads at work: whether they outlast the next
        timer (what they hand the loop then comes in after it, and time passes for it as if
        they did not work); whether they began to outlast one now."""
        ...

    question_put_off: bool
    """Whether the last :meth:`outlast_timer` put its question off: a thread whose caller left
    was at work (what threads handed in then comes in only once a poll asked it)."""

    def put_off_poll(self, timeout: float) -> float:
        """How long a poll asked to wait *timeout* seconds waits once :meth:`outlast_timer`
        put its question off."""
        ...

    def ready(self) -> bool:
        """Whether a task held back may be chosen now."""
        ...

    def look_at_orphans(self) -> None:
        """A poll that asks whether threads outlast the next timer begins: whether threads
        whose caller left are at work now decides whether a task may be chosen after it."""
        ...

    def orphans_handed_in(self) -> bool:
        """Whether a thread whose call was abandoned on cancel handed in what has yet to come
        in."""
        ...

    def orphans_unlooked(self) -> bool:
        """Whether a task is held back till a poll finds the threads whose caller left handed
        in what they have (:meth:`look_at_orphans`)."""
        ...

    def came_in(self) -> bool:
        """Whether what threads handed the loop came in during this iteration (a thread's
        call into the loop, let in while the loop asked about threads at work): it runs
        before virtual time may move."""
        ...

    def only_callbacks(self) -> bool:
        """Whether the loop's last iteration resumed no task: it only ran callbacks (anyio
        retrying a cancellation every iteration), as good as nothing ready."""
        ...


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that never waits for a timeout: it moves the loop's virtual clock instead,
    unless work outside the loop is under way: a worker thread (it waits for real until the
    thread reports back), or I/O waited for (it waits for real up to ``io_timeout`` seconds,
    then moves the clock if nothing came). The virtual clock stands still while it waits."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.outside: Outside | None = None
        self.signals = False  # whether the loop ever had a signal handler (they use the pipe)
        self.busy = _BusyLoop()
        self.next_timer: Callable[[], float | None] = lambda: None  # (the loop sets it)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        outside = self.outside
        if outside is not None and timeout is not None:
            if timeout <= 0:
                if outside.only_callbacks():
                    outside.settle()
                    # callbacks that resume no task run on (a cancellation retried while
                    # its task waits for a thread), but no task is chosen before the
                    # threads report: their reports come in now, as when nothing is ready,
                    # or those callbacks never end; till then the loop waits for them (the
                    # self-pipe ends the wait) instead of spinning for as long as they work
                    outside.look_at_orphans()
                    waits = outside.time_waits_for_threads()
                    outside.question_put_off = False
                    if waits or outside.orphans_handed_in():  # (as below)
                        outside.outlast_timer()
                        if outside.ready() or outside.came_in():
                            return super().select(0)  # (see below)
                        if outside.question_put_off or outside.orphans_unlooked():
                            # (as below)
                            return super().select(outside.put_off_poll(_THREAD_SPIN_POLL))
                        if outside.reported() and outside.let_in():
                            return super().select(0)
                    if waits:
                        return super().select(outside.thread_poll(_THREAD_SPIN_POLL))
                    if outside.reported() and outside.threads_busy() and outside.let_in():
                        return super().select(0)  # (threads that stalled)
                wait = outside.io_wait(0.0)
                if wait is None:
                    return []
                if wait <= 0:
                    return super().select(wait)
                # asked to wait by the spin rule, as if no task could run: what threads
                # reported comes in now, or the wait is for I/O
                if outside.let_in():
                    outside.io_polled(True)
                    return super().select(0)
                events = super().select(wait)
                outside.io_polled(bool(events))
                return events
            outside.settle()
            outside.look_at_orphans()
            # Whether threads outlast the next timer is asked before their reports come in:
            # a thread that happens to have reported already is asked about as one still at
            # work, so a run asks the same questions however fast its threads are.
            waits = outside.time_waits_for_threads()
            outside.question_put_off = False
            # (and before what threads handed in comes in: a thread whose caller left, which
            # is no wait any more, outlasts a timer before what it handed in comes in)
            if (waits or outside.orphans_handed_in()) and outside.outlast_timer():
                # threads that now outlast the next timer are not waited for: it falls due
                waits = outside.time_waits_for_threads()
            if outside.ready() or outside.came_in():
                # A task held back till threads handed in what they have may be chosen now
                # (they did while the loop asked: threads that now outlast the next timer, a
                # thread whose caller left): it runs first, and what the threads handed in
                # comes in when no task can run, however fast they were; no time passes.
                # (Or a thread's call back came in while the loop asked about it.)
                return super().select(0)
            if outside.question_put_off or outside.orphans_unlooked():
                # (or this poll found a thread whose caller left at work, and it handed in
                # what it has since: the task held till a poll finds it handed in runs first,
                # as when it handed in before this poll; the next poll finds it, as on trio.
                # Let in now, what it handed in came before that task's step or after it as
                # fast as the thread was: Exhaustive said "not deterministic")
                return super().select(outside.put_off_poll(timeout))
            # nothing could run: what threads reported comes in now
            if outside.let_in():
                return super().select(0)
            if waits:
                # the thread reports through the loop's self-pipe, which ends this wait
                return super().select(outside.thread_poll(timeout))
            if outside.io_waits():
                events = super().select(outside.io_timeout)
                if events:
                    return events
        if timeout is not None and timeout > 0:
            self.busy.idle()
            until = self.now + timeout
            if timeout >= _MAXIMUM_SELECT_TIMEOUT:
                # asyncio waits a day at the most, and came back here once a virtual day
                # till a far timer (a sleep of 1e15 s never ended): straight to it, as
                # nothing else can come meanwhile
                timer = self.next_timer()
                if timer is not None and timer > until:
                    until = timer
            self.now = until
            timeout = 0
        elif timeout == 0 and outside is None:
            target = self.busy.iteration(self.now, self.next_timer)
            if target is not None:
                self.now = target
        pipe_only = len(self._fd_to_key) <= 1  # type: ignore[attr-defined]
        if timeout == 0 and outside is None and pipe_only and not self.signals:
            # Only the loop's self-pipe is registered: a poll that does not wait could only
            # find bytes there, which wake a waiting loop and need no reading otherwise (a
            # callback made ready from a thread is ready already; no signal handler of the
            # loop is waiting for them): no system call at every iteration. A wait that blocks
            # still reads them.
            return []
        return super().select(timeout)


_CALLS_INTO_TIMEOUT = 1.0  # seconds of real time a closing loop answers threads' calls for
_THREAD_SPIN_POLL = 0.01  # seconds of real time callbacks that spin wait for a thread at a time
_MAXIMUM_SELECT_TIMEOUT = 24 * 3600  # asyncio's own bound of one wait (base_events)
_SPIN_READS = 8  # reads by one task from one place at one virtual instant that make it move
_SPIN_QUANTUM = 1e-6  # seconds: the spin rule's least move
_BUSY_ITERATIONS = 256  # loop iterations in a row at one instant with a task ready that move it
# the modules a read of the clock goes through on its way from the code that reads it
_CLOCK_PLUMBING = ("anyio.", "asyncio.", "trio.", "sniffio.", __name__)


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR
_SITE_DEPTH = 16  # the most plain (not async) frames a read's place looks through


def _read_site() -> tuple[object, ...]:
    """Where the code that reads the clock reads it: from the first frame outside the event
    loops' and anyio's own, each plain function's code and instruction (an accessor such as
    ``now()``, however many places call it), up to the first async function's frame itself
    and its instruction. That frame is a new one at each call: each ``await udelay(...)`` is a
    poll of its own, and so is each loop that computes its deadline on a line of its own,
    even when every read goes through one accessor."""
    frame: FrameType | None = sys._getframe(2)
    while (
        frame is not None
        and frame.f_back is not None
        and frame.f_globals.get("__name__", "").startswith(_CLOCK_PLUMBING)
    ):
        frame = frame.f_back
    site: list[object] = []
    for _ in range(_SITE_DEPTH):
        if frame is None:
            break
        if frame.f_code.co_flags & _ASYNC_CODE:
            site += [frame, frame.f_lasti]  # (frames compare by identity)
            break
        site += [frame.f_code, frame.f_lasti]
        frame = frame.f_back
    return tuple(site)


# What awaits a step of an async generator (``anext``, ``asend``, ``athrow``, ``aclose``: an
# async context manager's ``__aenter__`` and ``__aexit__``): an object of no frame, which
# names its generator to the garbage collector only.
_ASYNC_GENERATOR_STEPS = frozenset({"async_generator_asend", "async_generator_athrow"})


# Where each kind of awaitable keeps its frame and what it awaits: looked up by type, since a
# step takes these walks (the race finder's labels), and a chain of getattr costs twenty calls.
_AWAIT_ATTRIBUTES: dict[type, tuple[str, str]] = {
    types.CoroutineType: ("cr_frame", "cr_await"),
    types.GeneratorType: ("gi_frame", "gi_yieldfrom"),
    types.AsyncGeneratorType: ("ag_frame", "ag_await"),
}


def _await_attributes(coro: Any) -> tuple[str, str] | None:
    """Which of its attributes hold an awaitable's frame and what it awaits (a coroutine-like
    object of another type: the first of each kind it has), or None if it has no frame."""
    for frame_name, awaits_name in _AWAIT_ATTRIBUTES.values():
        if getattr(coro, frame_name, None) is not None:
            return frame_name, awaits_name
    return None


def _await_frames(coro: Any) -> list[FrameType]:
    """The frames of a suspended coroutine and of everything it awaits, outermost first,
    through the async generators it awaits a step of (an ``asynccontextmanager``'s body: a
    wait for a thread or a sleep there is the task's)."""
    frames: list[FrameType] = []
    attributes = _AWAIT_ATTRIBUTES
    while coro is not None:
        kind = type(coro)
        names = attributes.get(kind) or _await_attributes(coro)
        if names is None:
            break
        frame = getattr(coro, names[0], None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, names[1], None)
        if coro is not None and type(coro).__name__ in _ASYNC_GENERATOR_STEPS:
            coro = next(
                (
                    generator
                    for generator in gc.get_referents(coro)
                    if isinstance(generator, types.AsyncGeneratorType)
                ),
                None,
            )
    return frames


def _next_sleep() -> float | None:
    """The earliest timer of the running event loop that ends a sleep (trio: a task in
    ``trio.sleep_until``, which ``trio.sleep`` and anyio's ``sleep`` go through; asyncio: the
    timer of ``asyncio.sleep``), not a deadline of a cancel scope or any other timeout."""
    if sniffio.current_async_library() == "trio":
        from trio._core._run import GLOBAL_RUN_CONTEXT

        deadlines = [
            frame.f_locals.get("deadline")
            for task in GLOBAL_RUN_CONTEXT.runner.tasks
            for frame in _await_frames(task.coro)
            if frame.f_code.co_name == "sleep_until"
            and frame.f_globals.get("__name__", "").startswith("trio.")
        ]
        return min((float(d) for d in deadlines if isinstance(d, (int, float))), default=None)
    import asyncio
    import asyncio.futures

    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", ())
    whens = [
        handle.when()
        for handle in scheduled
        if not handle.cancelled()
        and getattr(handle, "_callback", None) is asyncio.futures._set_result_unless_cancelled  # type: ignore[attr-defined]
        and math.isfinite(handle.when())
    ]
    return min(whens, default=None)


class _Poll:
    """One task's reads of the clock from one place: a poll, while it goes on."""

    __slots__ = ("at", "began", "reads", "site")

    def __init__(self, site: tuple[object, ...], now: float) -> None:
        self.site = site
        self.began = self.at = now  # when the poll began; the instant its reads are counted at
        self.reads = 0


class _Spin:
    """The spin rule: a task that polls the clock makes it move.

    A task that reads the clock ``_SPIN_READS`` times from one place (one line of its code)
    at one virtual instant, reading it nowhere else meanwhile, polls for it to move, yielding
    between reads (``sleep(0)``, ``checkpoint()``): on a real loop it takes real time to do
    so, and the clock moves while it spins. Only reads are counted (the loop's iterations
    are the busy-loop rule's, :class:`_BusyLoop`, which moves the clock far more slowly):
    ordinary work reads it from several places (the stress harness at the start and the end of each
    operation), which starts the count again. The clock moves on by as long as the poll has
    lasted (``_SPIN_QUANTUM`` at least, a day at most), so that a deadline it waits for is
    passed after a few moves however far it is, and overshot by less than the wait; but no
    further than the next timer, which the move makes due: a sleeper wakes, and a deadline
    around the poll is reached, at its own time, as on a real loop. While that timer is a
    timeout's (a cancel scope's deadline, a ``call_later``), not a sleep's end, the moves
    do not grow: a microsecond a read, as a real loop's rounds take at least, so that work
    reading the clock as it goes under a timeout reaches it no sooner than there. A poll
    ends when its task reads the clock from another place (the next wait's own deadline, or
    the same line of another call of an async function: see :func:`_read_site`), or when
    the clock moved otherwise than by this rule (the task waited): each wait is its own
    poll, so its moves start from a microsecond again."""

    __slots__ = ("moved_to", "polls")

    def __init__(self) -> None:
        # by task: a task's poll ends with it (weakly held: a task is no key for ever)
        self.polls: weakref.WeakKeyDictionary[object, _Poll] = weakref.WeakKeyDictionary()
        self.moved_to = math.nan  # where this rule last moved the clock to

    def read(
        self, task: object, now: float, next_timer: Callable[[], float | None]
    ) -> float | None:
        """*task* read the clock at *now*: where the clock moves to, or None (it stays);
        *next_timer()* is the earliest pending timer that can fall due (None: none)."""
        site = _read_site()
        poll = self.polls.get(task)
        if poll is None or poll.site != site:
            poll = self.polls[task] = _Poll(site, now)
        elif poll.at != now:
            if now != self.moved_to:
                # the loop moved it (the task waited, and a timer fell due): a new wait
                poll.began = now
            poll.at, poll.reads = now, 0
        poll.reads += 1
        if poll.reads < _SPIN_READS:
            return None
        poll.reads = 0
        by = min(max(_SPIN_QUANTUM, now - poll.began), _MAXIMUM_SELECT_TIMEOUT)
        timer = next_timer()
        if timer is not None and timer != _next_sleep():
            # the deadline of a timeout (fail_after, move_on_after, a call_later), not a
            # sleep's end: work that reads the clock as it goes under a timeout reaches it no
            # sooner than on a real loop, whose rounds take a microsecond at least (moves
            # that doubled made 170 rounds of a computation a second: attack21)
            by = min(by, _SPIN_READS * _SPIN_QUANTUM)
        target = _moved_on(now, by, timer)
        if target is not None:
            self.moved_to = target
        return target


def _moved_on(now: float, by: float, timer: float | None) -> float | None:
    """Where a spin moves the clock from *now*: on *by* seconds, no further than the next
    *timer*; None if that timer is due already (the loop runs it at its next iteration)."""
    target = now + by
    if timer is not None and timer < target:
        if timer <= now:
            return None
        target = timer
    return target


class _BusyLoop:
    """The busy-loop rule: a loop that keeps running tasks at one virtual instant makes the
    clock move, as a real loop's iterations take real time.

    The spin rule (:class:`_Spin`) counts one task's reads of the clock from one place. A task
    that polls with ``sleep(0)`` or ``checkpoint()`` for what another task's sleep brings,
    reading no clock (a status bit a simulated unit sets after its latency), or reading it
    from two places in turn, would keep the loop busy at one instant for ever: the sleeper
    never wakes, where on a real loop it wakes once the spin has taken that long. So once the
    loop has run ``_BUSY_ITERATIONS`` iterations in a row at one instant with a task ready,
    each further one takes ``_SPIN_QUANTUM`` (no further than the next timer), until the loop
    waits or the clock moves otherwise. A real iteration takes longer than that: time never
    passes faster than on a real loop, so no deadline falls due that a real one would not
    reach. Ordinary work takes fewer iterations at one instant (the stress harness's longest
    run of them is about 130 at 4,096 tasks), so a run that does not spin is the same as
    without this rule; with no latency at all, where its runs of them reach about 1,400,
    time passes too, as it would on a real loop. Iterations are counted, not wall
    time: a spinning run replays. A livelock still makes no progress (the clock moving changes
    nothing for it) and is still found by what watches for stalls."""

    __slots__ = ("at", "iterations")

    def __init__(self) -> None:
        self.at = math.nan  # the instant of the streak's last iteration
        self.iterations = 0

    def idle(self) -> None:
        """The loop waits (no task is ready): a streak of busy iterations ends."""
        self.at = math.nan

    def iteration(self, now: float, next_timer: Callable[[], float | None]) -> float | None:
        """The loop runs a ready task at *now*: where the clock moves to, or None (it stays)."""
        if now != self.at:  # moved otherwise than by this rule: a new streak
            self.iterations = 0
        self.iterations += 1
        self.at = now
        if self.iterations < _BUSY_ITERATIONS:
            return None
        target = _moved_on(now, _SPIN_QUANTUM, next_timer())
        if target is not None:
            self.at = target
        return target


class _Timer(asyncio.TimerHandle):
    """A timer of :class:`VirtualTimeEventLoop`: ordered by when it is due, then by when it
    was armed (*order*)."""

    __slots__ = ("_order",)
    _when: float  # (asyncio's, which typeshed does not declare)
    _scheduled: bool
    _source_traceback: list[Any] | None

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: Any,
        order: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._order = order

    # (heapq compares with < alone, at every push and pop: kept to two attribute reads)
    def __lt__(self, other: asyncio.TimerHandle) -> bool:
        if not isinstance(other, _Timer):
            return super().__lt__(other)
        return self._when < other._when or (
            self._when == other._when and self._order < other._order
        )

    def __le__(self, other: asyncio.TimerHandle) -> bool:
        return not other < self

    def __gt__(self, other: asyncio.TimerHandle) -> bool:
        return other < self

    def __ge__(self, other: asyncio.TimerHandle) -> bool:
        return not self < other


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: ``loop.time()`` advances only when nothing is ready.

    While the race finder (:meth:`watch_outside`) says that work outside the loop is under
    way, the loop waits for it in real time and virtual time stands still.
    """

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)
        self.executor_jobs = 0  # run_in_executor calls not finished (asyncio.to_thread's)
        # their functions still running in a thread, a cancelled call's too, and who waits
        # for none to be (counted by the threads: under a lock)
        self._threads_lock = threading.Lock()
        self._threads_at_work = 0
        self._threads_waiters: list[asyncio.Future[None]] = []
        # the threads running a job run_in_executor handed a pool: they serve a task's call,
        # not the program's own work (see the race finder's program threads)
        self.serving: set[threading.Thread] = set()
        self.count_reads = False  # whether to count them (the race finder asks for it)
        self.task_reads = 0  # reads of time() made in a task (the loop reads it too)
        self._spin = _Spin()
        self._next_timer = self._virtual.next_timer = functools.partial(next_timer, self)
        self._armed = itertools.count()  # timers armed so far: ties are taken in that order

    @property
    def _clock_resolution(self) -> float:
        """The step below which asyncio takes a timer as due (``_run_once``: due when earlier
        than the clock plus this): never finer than the clock itself. From about 97 days of
        virtual time on, a nanosecond no longer changes a float of the clock, a timer due at
        the clock's very time was never due, and the loop spun at it for ever (a poll that
        took the clock that far, then slept: an outside attack)."""
        return max(self._base_clock_resolution, math.ulp(self._virtual.now))

    @_clock_resolution.setter
    def _clock_resolution(self, resolution: float) -> None:
        # (BaseEventLoop.__init__ sets the monotonic clock's)
        self._base_clock_resolution = resolution

    async def shutdown_default_executor(self, *args: Any) -> None:
        """Before the loop ends: answer the calls worker threads are making into it (for up to
        ``_CALLS_INTO_TIMEOUT`` seconds of real time), then asyncio's own shutdown. A thread
        the race finder abandoned may still be calling back (its calls held till its run
        ended); a call the loop took and then never ran would leave it, a non-daemon thread,
        waiting for ever, and the process could not exit. A call made after the loop closed
        fails in the thread, which ends, as it does after a plain asyncio run."""
        from ._scheduler import _call_into

        deadline = time.monotonic() + _CALLS_INTO_TIMEOUT
        while time.monotonic() < deadline:
            if not any(_call_into(thread, self) for thread in threading.enumerate()):
                break
            await asyncio.sleep(0)  # runs what the threads handed in meanwhile
        await super().shutdown_default_executor(*args)

    def add_signal_handler(self, sig: int, callback: Callable[[*Ts], object], *args: *Ts) -> None:
        self._virtual.signals = True  # its signals come through the self-pipe: poll it
        super().add_signal_handler(sig, callback, *args)

    def time(self) -> float:
        """Virtual time; a task's read counts for the spin rule (:class:`_Spin`), unless the
        race finder controls the run (its queue, and its watch on work outside)."""
        now = self._virtual.now
        task = asyncio.current_task(self)
        if task is None:  # the loop's own read
            return now
        if self.count_reads:
            self.task_reads += 1
        ready = self._ready  # type: ignore[attr-defined]
        if self._virtual.outside is None and type(ready) is collections.deque:
            target = self._spin.read(task, now, self._next_timer)
            if target is not None:
                self.advance(target)
                now = self._virtual.now
        return now

    def call_later(
        self, delay: float, callback: Callable[[*Ts], object], *args: *Ts, context: Any = None
    ) -> asyncio.TimerHandle:
        """asyncio's ``call_later``, reading the clock as the loop does: arming a timer (a
        sleep's) is no read of a task's for the spin rule, which looks for tasks that wait
        for the clock to move by reading it."""
        if delay is None:
            raise TypeError("delay must not be None")
        now = self._virtual.now
        when = now + delay
        if delay > 0 and when <= now:
            # A delay the float sum loses (0.02 - (0.06 - 0.04) is 3.5e-18): on any real
            # clock it ends after the instant it began, so it does here, by the least step
            # there is. Else a rate limiter that sleeps the rest of its interval, reading
            # the clock, slept that remainder for ever at one instant (attack66).
            when = math.nextafter(now, math.inf)
        timer = self.call_at(when, callback, *args, context=context)
        if timer._source_traceback:  # type: ignore[attr-defined]  # (nor this one, as asyncio's)
            del timer._source_traceback[-1]  # type: ignore[attr-defined]
        return timer

    def call_at(
        self, when: float, callback: Callable[[*Ts], object], *args: *Ts, context: Any = None
    ) -> asyncio.TimerHandle:
        """asyncio's ``call_at``, with timers due at one instant run in the order they were
        armed. On a real clock a timer armed later with the same delay is due later (the
        clock moved meanwhile); on a virtual one they tie, and asyncio's heap took tied timers
        in an order of its own: five tasks sleeping 10 ms one after the other woke as 0, 2,
        4, 1, 3 (attack35 F1; under the race finder a check that holds in every plain run
        failed with no preemption)."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self._debug:  # type: ignore[attr-defined]
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        timer = _Timer(when, callback, args, self, context, next(self._armed))
        if timer._source_traceback:  # (_Timer's and this frame are no caller's)
            del timer._source_traceback[-2:]
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True
        return timer

    def uncounted_time(self) -> float:
        """Virtual time, read as the loop reads it: for a harness's own bookkeeping, which no
        rule of this clock should take for a task waiting on it."""
        return self._virtual.now

    def forget_cancelled_timers(self) -> None:
        """Take the cancelled timers out of the loop's heap, as asyncio does once they are
        many: a later run of the race finder on this loop, whose clock starts from 0 again,
        starts from a heap like a fresh loop's. (Before tied timers were taken in the order
        they were armed, those left in the heap changed that order, and such a run differed
        from its replay on a fresh loop.)"""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        live = [handle for handle in scheduled if not handle.cancelled()]
        if len(live) == len(scheduled):
            return
        for handle in scheduled:
            if handle.cancelled():
                handle._scheduled = False
        heapq.heapify(live)
        scheduled[:] = live
        self._timer_cancelled_count = 0

    def advance(self, to: float) -> None:
        """Move virtual time on to *to* (never back)."""
        self._virtual.now = max(self._virtual.now, to)

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        if executor is None:  # asyncio's own way to its default executor, to see the job
            self._check_closed()  # type: ignore[attr-defined]
            executor = self._default_executor  # type: ignore[has-type]
            self._check_default_executor()  # type: ignore[attr-defined]
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        submitted = _Submitted(executor, self.serving)
        with self._threads_lock:
            self._threads_at_work += 1
        try:
            future = super().run_in_executor(submitted, func, *args)
        except BaseException:
            self._thread_done(None)
            raise
        self.executor_jobs += 1
        future.add_done_callback(self._executor_job_done)
        # after asyncio's own callback, which hands the result to the loop: once this one
        # ran, the thread has nothing more to hand in
        submitted.job.add_done_callback(self._thread_done)
        return future

    def _executor_job_done(self, future: asyncio.Future[Any]) -> None:
        self.executor_jobs -= 1

    def _thread_done(self, job: concurrent.futures.Future[Any] | None) -> None:
        """A run_in_executor job ended (in its thread, or here if it never started)."""
        with self._threads_lock:
            self._threads_at_work -= 1
            if self._threads_at_work:
                return
            waiters, self._threads_waiters = self._threads_waiters, []
        for waiter in waiters:
            _wake_soon(self, waiter)

    async def outlast_threads(self, real_seconds: float) -> bool:
        """Wait, in real time and for up to *real_seconds*, until no function a
        ``run_in_executor`` call (``asyncio.to_thread``) handed a thread still runs, a
        cancelled call's included (asyncio leaves those running), and what they handed the
        loop came in: whether none is left. Virtual time moves meanwhile only to timers
        pending (with none, the loop waits for the threads)."""
        with self._threads_lock:
            if not self._threads_at_work:
                return True
            waiter = self.create_future()
            self._threads_waiters.append(waiter)
        timer = threading.Timer(real_seconds, _wake_soon, (self, waiter))
        timer.daemon = True
        timer.start()
        try:
            await waiter
        finally:
            timer.cancel()
        await asyncio.sleep(0)  # (what they handed in before is ready before this: it ran)
        return not self._threads_at_work

    def watch_outside(self, outside: Outside | None) -> None:
        """Wait for outside work instead of moving virtual time, as *outside* says: for as
        long as a thread is at work, and up to ``io_timeout`` seconds of real time at a time
        for I/O; poll for I/O when it says (None: stop watching)."""
        self._virtual.outside = outside

    def sleep_in_place(self, delay: float) -> bool:
        """Let *delay* seconds pass for the running task without leaving it, if a sleep could
        not let anything else run first; False (nothing done) if it could: the caller sleeps.

        A sleep yields to the loop, which runs whatever is ready, then jumps to the earliest
        timer. When nothing is ready, no timer falls due before (or with) the sleeper's, no
        cancellation is pending for the task, no I/O is waited for, and no thread or controlled
        scheduler (the race finder's) is involved, that loop iteration would only move the
        clock and wake the sleeper: this moves the clock as it would, to the same instant, and
        skips the rest. The run is the same, callback for callback; what it saves is two loop
        iterations per sleep of a simulated driver that is alone in its time slot.
        """
        virtual = self._virtual
        if (
            self._ready  # type: ignore[attr-defined]
            or type(self._ready) is not collections.deque  # type: ignore[attr-defined]
            or self._stopping  # type: ignore[attr-defined]
            or virtual.outside is not None  # the race finder, which owns the steps
            or self.count_reads
            or self.executor_jobs
            # I/O waited for, besides the loop's self-pipe (what len(get_map()) counts)
            or len(virtual._fd_to_key) > 1  # type: ignore[attr-defined]
        ):
            return False
        task = asyncio.current_task(self)
        if task is None or task._must_cancel:  # type: ignore[attr-defined]
            return False
        # the arithmetic of call_later and of _run_once, so the clock lands on the same float
        now = virtual.now
        when = now + delay
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            head = scheduled[0]
            # a timer due with the sleeper's (within the clock's resolution) runs in the same
            # iteration, before the sleeper resumes; a cancelled one: keep to the loop's way
            if head._cancelled or head._when < when + self._clock_resolution:
                return False
        timeout = when - now
        if timeout > _MAXIMUM_SELECT_TIMEOUT:  # the loop would wait in several steps
            return False
        if timeout > 0:
            virtual.now = now + timeout
        return True

    def advance_to_next_timer(self) -> None:
        """Move virtual time to the earliest pending timer that can fall due, if any."""
        when = next_timer(self)
        if when is not None:
            self._virtual.now = max(self._virtual.now, when)


class _Submitted(concurrent.futures.Executor):
    """An executor as ``run_in_executor`` sees it, keeping the job it submits; the thread
    that runs the job is in *serving* meanwhile (known without a look at its frames, which
    another thread's walk through may crash CPython 3.11 while they change)."""

    def __init__(
        self, executor: concurrent.futures.Executor, serving: set[threading.Thread]
    ) -> None:
        self.executor = executor
        self.serving = serving
        self.job: concurrent.futures.Future[Any]

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        serving = self.serving

        def serve() -> T:
            thread = threading.current_thread()
            serving.add(thread)
            try:
                return fn(*args, **kwargs)
            finally:
                serving.discard(thread)

        self.job = self.executor.submit(serve)
        return self.job


def _wake_soon(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    """Set *waiter*'s result in *loop*, from any thread (nothing if the loop closed)."""

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop closed
        loop.call_soon_threadsafe(wake)


def next_timer(loop: asyncio.AbstractEventLoop, *, exclude: float | None = None) -> float | None:
    """The earliest pending timer of an asyncio loop that can fall due, or None: a timer at
    infinity (anyio's ``sleep_forever`` on asyncio) never does, and counts as none, as it
    does on trio; nor does one at *exclude*. The timers are private to asyncio: a loop
    without them has none."""
    return min((when for when in _asyncio_timers(loop) if when != exclude), default=None)


def _asyncio_timers(loop: asyncio.AbstractEventLoop) -> Iterator[float]:
    """When each pending timer of an asyncio loop that can fall due falls due."""
    for handle in getattr(loop, "_scheduled", ()):
        if not handle.cancelled() and math.isfinite(handle.when()):
            yield handle.when()


def harness_clock() -> Callable[[], float]:
    """The running event loop's clock, for a harness's own bookkeeping (how long an operation
    took): on avcm's virtual clocks (:func:`backend_options`) it reads the time as the loop
    does, so no rule of the clock takes the harness's reads for a task waiting on the clock
    (the spin rule moves time for tasks that poll it); elsewhere, :func:`anyio.current_time`."""
    if sniffio.current_async_library() == "trio":
        import trio

        return getattr(trio.lowlevel.current_clock(), "uncounted_time", trio.current_time)
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeEventLoop):
        return loop.uncounted_time
    return loop.time


def pending_timers() -> list[float]:
    """The deadlines of the running event loop's pending timers that can fall due, earliest
    first, on its own clock (:func:`anyio.current_time`): sleeps, cancel scopes' deadlines
    (``fail_after``, ``move_on_after``), asyncio's ``call_later``. A harness compares two
    looks to see the timers some code left behind (a driver's lazy power-down), and aims at
    them. Neither trio nor asyncio says this publicly: this reads their internals, and is
    empty where they changed."""
    if sniffio.current_async_library() == "trio":
        try:
            return sorted(trio_timers())
        except AttributeError:  # pragma: no cover - a trio that changed
            return []
    return sorted(_asyncio_timers(asyncio.get_running_loop()))


def trio_timers() -> Iterator[float]:
    """When each pending deadline of the running trio loop that can fall due falls due, in
    no order. Private to trio: AttributeError where it changed."""
    deadlines = _trio_run_module().GLOBAL_RUN_CONTEXT.runner.deadlines
    for when, _, scope in deadlines._heap:
        # trio leaves stale entries in its heap: one is live while its scope still has that
        # deadline
        if when == scope._registered_deadline and math.isfinite(when):
            yield float(when)


async def timers_left(before: list[float], *, within: float = math.inf) -> list[float]:
    """The timers pending now, at most *within* seconds away, that were not in *before* (an
    earlier :func:`pending_timers`), earliest first: those some code left behind meanwhile
    (a driver's lazy power-down). Looked at once tasks spawned meanwhile had their steps: a
    background task starts at the loop's next round (asyncio's ``create_task``, trio's
    ``spawn_system_task``) and may make a few steps before it sleeps (takes a lock, passes
    sync points). After ``_BACKGROUND_STEPS`` checkpoints, it looks once no other task is
    ready to run, or ``_BACKGROUND_MORE`` checkpoints later (a background task that polls is
    always ready: waiting till every task is blocked would hang behind it). Under the race
    finder, whose scheduler owns the steps, after ``_BACKGROUND_STEPS`` only."""
    for _ in range(_BACKGROUND_STEPS):
        await anyio.lowlevel.checkpoint()
    for _ in range(_BACKGROUND_MORE):
        if not others_ready():
            break
        await anyio.lowlevel.checkpoint()
    horizon = anyio.current_time() + within
    left = collections.Counter(when for when in pending_timers() if when <= horizon)
    return sorted((left - collections.Counter(before)).elements())


async def sleep_past(deadline: float) -> None:
    """Sleep till just past *deadline* (a timer :func:`timers_left` gave): the task that timer
    wakes has run by then, where sleeping till *deadline* itself ties with it, and the loop
    breaks the tie. If cancelled, the sleep ended early and nothing else happened."""
    await anyio.sleep(deadline - anyio.current_time() + _PAST_TIMER)


_PAST_TIMER = 1e-7  # (seconds) past a timer: no loop's clock is finer

_BACKGROUND_STEPS = 4  # checkpoints timers_left lets pass before it looks
# and at most as many more while other tasks are ready (a power-down task that arms its timer
# after six steps was missed: attack22)
_BACKGROUND_MORE = 60


def others_ready() -> bool:
    """Whether a task other than the running one (or a callback handed to the loop) is ready
    to run on a loop whose run queue is its own (not the race finder's)."""
    if sniffio.current_async_library() == "trio":
        runner = _trio_run_module().GLOBAL_RUN_CONTEXT.runner
        queue = runner.runq
        if type(queue) is not collections.deque:
            return False
        try:
            entries = runner.entry_queue  # (run_sync_soon's callbacks)
            # (the run generator's frame found anew: a cache would keep the run alive)
            return (
                bool(queue or entries.queue or entries.idempotent_queue)
                or _trio_batch_left([None, None]) is not False
            )
        except AttributeError:  # pragma: no cover - another trio
            return bool(queue)
    queue = asyncio.get_running_loop()._ready  # type: ignore[attr-defined]
    return type(queue) is collections.deque and bool(queue)


_own_clocks: weakref.WeakSet[Any] = weakref.WeakSet()  # the trio clocks made here


def restart_clock() -> None:
    """Put the running loop's virtual clock back to 0, if avcm made it (a
    :class:`VirtualTimeEventLoop`, or trio's ``MockClock`` from :func:`backend_options`) and no
    timer is pending: each run of the race finder starts its timers from the same instant.

    Floating-point sums depend on where they start: a deadline 0.3 s and six 0.05 s sleeps
    after 0 fall due together, after 0.8999999999999999 not, so runs of one exploration that
    started where the last one ended took other steps where timers tie (Exhaustive: "not
    deterministic"), and a replay, which starts at 0, could differ from the run it replays.
    A clock the caller made (pytest-trio's ``autojump_clock``) runs on untouched."""
    if sniffio.current_async_library() == "trio":
        from trio._core._run import GLOBAL_RUN_CONTEXT

        runner = GLOBAL_RUN_CONTEXT.runner
        clock: Any = runner.clock  # one of ours is a MockClock
        if clock not in _own_clocks or clock.rate != 0:
            return
        if not math.isinf(runner.deadlines.next_deadline()):
            return
        clock._virtual_base = 0.0  # MockClock can only jump forward: its own base
        return
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeEventLoop) and next_timer(loop) is None:
        loop._virtual.now = 0.0


def ordered_mock_clock() -> trio.testing.MockClock:
    """trio's ``MockClock`` (autojumping), with timers that fall due at the same instant woken
    in the order they were set.

    trio breaks ties between equal deadlines by the ``id()`` of their cancel scopes, a memory
    address: two drivers sleeping a fixed 5 µs from the same virtual instant would wake in an
    order that changes with the heap layout, and a seed would not replay in another process.
    This clock, when the run starts, gives the run a deadline heap whose tie-breaker is a
    counter of registrations instead. That heap is private to trio; a trio without it keeps
    its own (ties then follow addresses, as before).
    """
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0)
    _own_clocks.add(clock)
    start_mock_clock = clock.start_clock

    def start_clock() -> None:  # MockClock is final: the instance's own start hook, then
        start_mock_clock()
        _order_deadline_ties()

    def autojump() -> None:
        # MockClock._autojump, which the run loop calls whenever it would wait, without
        # making the run's whole statistics record for its seconds_to_next_deadline
        try:
            jump = _trio_run_module().GLOBAL_RUN_CONTEXT.runner.deadlines.next_deadline()
        except AttributeError:  # pragma: no cover - another trio: its own way
            mock_autojump()
            return
        jump -= clock.current_time()
        if 0 < jump < math.inf:
            clock.jump(jump)

    context = _trio_run_module().GLOBAL_RUN_CONTEXT
    mock_current_time = clock.current_time
    spin = _Spin()
    busy = _BusyLoop()

    def next_timer() -> float | None:
        deadline: float = context.runner.deadlines.next_deadline()
        return deadline if math.isfinite(deadline) else None

    def current_time() -> float:
        # a task's read counts for the spin rule; the run loop's, once an iteration, for the
        # busy-loop rule; neither while the race finder's queue is trio's run queue (it has
        # its own rule)
        now = mock_current_time()
        runner = getattr(context, "runner", None)
        if runner is None or type(runner.runq) is not collections.deque or clock.rate != 0:
            return now
        if not hasattr(context, "task"):
            if not runner.runq:
                busy.idle()
                return now
            target = busy.iteration(now, next_timer)
        else:
            target = spin.read(context.task, now, next_timer)
        if target is None:
            return now
        _jump_to(clock, target)
        return mock_current_time()

    mock_autojump = clock._autojump
    clock.start_clock = start_clock  # type: ignore[method-assign]
    clock._autojump = autojump  # type: ignore[method-assign]
    clock.current_time = current_time  # type: ignore[method-assign]
    clock.uncounted_time = mock_current_time  # type: ignore[attr-defined]  # (harness_clock)
    # (with where the run generator's frame is kept once found: the clock's run's)
    clock.sleep_in_place = functools.partial(_trio_sleep_in_place, clock, [None, None])  # type: ignore[attr-defined]
    return clock


@functools.cache
def _trio_run_module() -> Any:
    """trio's run loop module, imported once: an import statement in a function costs a
    look up through importlib's Python code at each call, and a sleep in place is asked at
    every latency sleep of a driver."""
    from trio._core import _run

    return _run


def _trio_sleep_in_place(clock: trio.testing.MockClock, run_frame: list[Any], delay: float) -> bool:
    """:meth:`VirtualTimeEventLoop.sleep_in_place` on trio: let *delay* seconds pass for the
    running task without leaving it, if ``trio.sleep(delay)`` could not let anything else
    run first; False (nothing done) if it could: the caller sleeps.

    Such a sleep parks the task with a deadline; the run loop, finding nothing to run, jumps
    the clock to the earliest deadline, then wakes the task: two iterations that run no other
    task and draw nothing from the scheduler's random (a batch of one is not shuffled, as
    :func:`backend_options` has trio sort and shuffle every batch). When
    no other task is runnable (neither later in this batch nor in the next), no deadline falls
    due before or with the sleeper's, no cancellation or KeyboardInterrupt is pending, no
    thread has queued a call, no I/O is waited for, no instrument watches (the race finder's)
    and nothing waits for the run to be idle, this makes the clock's jumps as the loop would,
    to the same instant, and skips the rest. The run loop's pending batch is a local of trio's
    run generator: it is read from that frame (*run_frame*: the runner and its frame, once
    found), and without it nothing
    is done."""
    try:
        _run = _trio_run_module()
        runner = _run.GLOBAL_RUN_CONTEXT.runner
        task = _run.GLOBAL_RUN_CONTEXT.task
        if (
            runner.runq
            or type(runner.runq) is not collections.deque  # the race finder's: it owns steps
            or runner.instruments.get("_all")  # the instruments installed, by hook
            or runner.waiting_for_idle
            or runner.ki_pending
            or runner.is_guest
            or runner.clock is not clock
            or clock.rate != 0
            or clock.autojump_threshold != 0
            or runner.entry_queue.queue
            or runner.entry_queue.idempotent_queue
            or task._cancel_status.effectively_cancelled
            # else trio draws from its random at every batch, even an empty one
            or not getattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", False)
        ):
            return False
        # trio.sleep's: sleep_until(now + delay), now being what current_time() returns for
        # a clock at rate 0 (checked above) without reading the real clock to scale it by 0
        deadline = clock._virtual_base + delay
        if runner.deadlines.next_deadline() <= deadline:
            return False
        # the run's own wake-up socket is always read (a call queued from a thread)
        registered = getattr(runner.io_manager, "_registered", None)
        if registered is None or len(registered) > 1:
            return False
        if _trio_batch_left(run_frame) is not False:
            return False  # tasks still to run in this batch (or no batch found)
    except (ImportError, AttributeError):  # pragma: no cover - another trio: sleep
        return False
    _jump_to(clock, deadline)
    return True


def _trio_batch_left(run_frame: list[Any]) -> bool | None:
    """Whether tasks of the batch trio's run loop is running are still to run after the
    running one (None: no batch found). The batch is a local of trio's run generator, found
    from the running task's frames once a run and kept in *run_frame* (the runner and that
    frame). Private to trio: AttributeError where it changed."""
    _run = _trio_run_module()
    runner = _run.GLOBAL_RUN_CONTEXT.runner
    frame = run_frame[1] if run_frame[0] is runner else None
    if frame is None:
        run_code = _run.unrolled_run.__code__
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not run_code:
            frame = frame.f_back
        run_frame[:] = [runner, frame]
    if frame is None:
        return None
    return bool(frame.f_locals.get("batch", True))


def _jump_to(clock: trio.testing.MockClock, deadline: float) -> None:
    """Move a MockClock at rate 0 on to *deadline* (the virtual base is its time then) with
    the jumps the run loop's autojump makes: seconds to it, again while a float sum left the
    clock short of it."""
    while clock._virtual_base < deadline:
        clock.jump(deadline - clock._virtual_base)


def _order_deadline_ties() -> None:
    try:
        from trio._core import _run

        runner = _run.GLOBAL_RUN_CONTEXT.runner
        deadlines = runner.deadlines
        heap = deadlines._heap
    except (ImportError, AttributeError):  # pragma: no cover - another trio: keep its order
        return
    registrations = itertools.count()

    class OrderedDeadlines(type(deadlines)):  # type: ignore[misc]
        def add(self, deadline: float, cancel_scope: object) -> None:
            heapq.heappush(self._heap, (deadline, next(registrations), cancel_scope))
            self._active += 1

    ordered = OrderedDeadlines()
    # entries made before the clock started, if any, keep their places
    ordered._heap, ordered._active = list(heap), deadlines._active
    runner.deadlines = ordered


def seed_trio_scheduler(seed: int) -> None:
    # trio shuffles each batch of runnable tasks with a module-level Random; seeding it is the
    # only way to make a trio run repeat. It is private, so a trio without it runs unseeded.
    from trio._core import _run

    scheduler_random = getattr(_run, "_r", None)
    if scheduler_random is not None:
        scheduler_random.seed(seed)
    if hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        # Sort each batch by spawn order before the seeded shuffle (what trio does once
        # Hypothesis is imported): otherwise the order tasks were woken in leaks in, and trio
        # wakes the tasks of a cancelled scope by iterating a set ordered by memory address,
        # so a run recorded in one process did not replay in another.
        setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 - Final in trio


def backend_options(backend: str, seed: int, *, virtual: bool) -> dict[str, Any]:
    """The ``anyio.run`` backend options for a (virtual or real time) run seeded with *seed*."""
    if backend == "trio":
        seed_trio_scheduler(seed)
        # By default trio raises KeyboardInterrupt wherever the signal finds unprotected code,
        # anyio's cancel-scope wrappers included, and a scope left half-exited corrupts trio
        # (TrioInternalError). At a checkpoint it is delivered like a cancellation, cleanly.
        options: dict[str, Any] = {"restrict_keyboard_interrupt_to_checkpoints": True}
        if virtual:
            options["clock"] = ordered_mock_clock()
        return options
    if not virtual:
        return {}
    factory: Callable[[], asyncio.AbstractEventLoop] = VirtualTimeEventLoop
    return {"loop_factory": factory}


BACKENDS = ("asyncio", "trio")


def run_on_virtual_time(backend: str, function: Callable[[], Awaitable[T]]) -> T:
    """``await function()`` in a new event loop of *backend* on virtual time; ``EINVAL`` for
    an unknown backend."""
    if backend not in BACKENDS:
        raise InvalidError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return anyio.run(
        function, backend=backend, backend_options=backend_options(backend, 0, virtual=True)
    )
