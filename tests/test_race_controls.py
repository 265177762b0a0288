"""Controls for the race finder: correct programs it must pass under every strategy (no false
timeout, deadlock or livelock), and races through anyio's and asyncio's own primitives it must
find, replay and shrink. Nothing here goes through avcm: every checkpoint is a scheduling point
whatever primitive it belongs to."""

# The programs here are written as users write them: poll loops and sleep(0) included.
# ruff: noqa: ASYNC110, ASYNC115

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import math
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
import sniffio
from anyio.streams.stapled import StapledObjectStream

import avcm
from avcm import testing
from avcm.lowlevel import sync_point
from tests.broken_drivers import in_background
from tests.races import (
    fewest_preemptions,
    queue_overflow,
    replay_as_printed,
    take_and_give_without_finally,
)

BACKENDS = ["asyncio", "trio"]


def strategies() -> dict[str, Callable[[], testing.Strategy]]:
    return {
        "pct": lambda: testing.PCT(0),
        "pct-d1": lambda: testing.PCT(1, depth=1),
        "random": lambda: testing.RandomWalk(0),
        "exhaustive0": lambda: testing.Exhaustive(0),
        "exhaustive1": lambda: testing.Exhaustive(1),
        "exhaustive2": lambda: testing.Exhaustive(2),
    }


# -- correct programs -----------------------------------------------------------------------


# More checkpoints in a row than Limits.fair_bound (32): a task that is the only runnable one
# for that long must not make time pass.
SPIN = 2 * testing.Limits().fair_bound + 8


async def timeout_around_an_event(run: testing.Run) -> None:
    """Waiters with a deadline far beyond what the setter takes never time out, however many
    checkpoints the setter makes (virtual time moves only when no task is runnable)."""
    event = anyio.Event()

    async def waiter() -> None:
        with anyio.fail_after(5):
            await event.wait()

    async def setter() -> None:
        for _ in range(SPIN):
            await anyio.lowlevel.checkpoint()
        event.set()

    for outcome in await run.concurrently(waiter, setter, waiter):
        outcome.unwrap()


async def poll_with_sleep_zero(run: testing.Run) -> None:
    """A poll loop that only yields: the task it waits for gets its turn (fairness)."""
    flag = False

    async def poller() -> None:
        while not flag:
            await anyio.sleep(0)

    async def setter() -> None:
        nonlocal flag
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        flag = True

    for outcome in await run.concurrently(poller, setter):
        outcome.unwrap()


async def poll_naming_the_loop(run: testing.Run) -> None:
    """A poll with ``sleep(0)`` for the bit a unit sets after its latency, in a frame that
    names the event loop's machinery (the asyncio loop, the trio task), whose own counters move
    at every step and every read of the clock: the poll only spins, and time passes for the
    unit. (Reported: it was a false StepBudgetError, the loop's count of clock reads taken for
    the poller's progress.)"""
    bit = [False]

    async def unit() -> None:
        await anyio.sleep(1e-4)
        bit[0] = True

    async def poller() -> None:
        if sniffio.current_async_library() == "asyncio":
            machinery: object = asyncio.get_running_loop()
        else:
            import trio.lowlevel

            machinery = trio.lowlevel.current_task()
        looked_at = anyio.current_time()
        while not bit[0]:
            await anyio.sleep(0)
            looked_at = anyio.current_time()
        assert machinery is not None and looked_at >= 1e-4

    for outcome in await run.concurrently(unit, poller):
        outcome.unwrap()


async def poll_with_backoff(run: testing.Run) -> None:
    """A poll loop with an exponential backoff against a setter that takes time."""
    flag = False

    async def poller() -> int:
        delay, polls = 0.001, 0
        while not flag:
            polls += 1
            await anyio.sleep(delay)
            delay = min(2 * delay, 0.05)
        return polls

    async def setter() -> None:
        nonlocal flag
        await anyio.sleep(0.2)
        flag = True

    polls, done = await run.concurrently(poller, setter)
    done.unwrap()
    assert polls.unwrap() <= 10


class _RateLimiter:
    """At most one pass every *interval* seconds of the loop's clock: a caller that comes early
    sleeps the rest of the interval, and looks again."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: float | None = None

    async def wait(self) -> float:
        while True:
            now = anyio.current_time()
            if self.last is None or now - self.last >= self.interval:
                self.last = now
                return now
            await anyio.sleep(self.interval - (now - self.last))


async def rate_limiter_by_the_loop_clock(run: testing.Run) -> None:
    """Two tasks pass a rate limiter twice each. The rest of an interval it sleeps can be a
    float's residue (0.02 - (0.06 - 0.04) is 3.5e-18): on asyncio that sleep took no virtual
    time, and the limiter slept it for ever (attack66)."""
    limiter = _RateLimiter(0.02)
    passes: list[float] = []

    async def caller() -> None:
        with anyio.fail_after(1):
            for _ in range(2):
                passes.append(await limiter.wait())

    for outcome in await run.concurrently(caller, caller):
        outcome.unwrap()
    assert all(b - a >= 0.02 for a, b in itertools.pairwise(passes)), passes


async def deadline_around_a_spin(run: testing.Run) -> None:
    """One task yields many times inside a deadline: a real loop takes microseconds, so the
    deadline is never reached (virtual time moves only when no task is runnable)."""

    async def worker() -> float:
        start = anyio.current_time()
        with anyio.fail_after(5):
            for _ in range(SPIN):
                await anyio.sleep(0)
        return anyio.current_time() - start

    (outcome,) = await run.concurrently(worker)
    assert outcome.unwrap() == 0


async def deadline_while_a_child_spins(run: testing.Run) -> None:
    """A task the scenario's task spawns runs free (not under control); its checkpoints are
    runnable steps too: however many it makes in a row, the deadline is not reached."""

    async def child() -> None:
        for _ in range(1200):
            await anyio.lowlevel.checkpoint()

    async def parent() -> None:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(child)

    for outcome in await run.concurrently(parent):
        outcome.unwrap()


async def worker_threads(run: testing.Run) -> None:
    """Tasks waiting for worker threads wait for something outside: never a deadlock, and
    virtual time stands still meanwhile (the deadline is not reached)."""

    async def worker() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.001)

    async def with_deadline() -> None:
        with anyio.fail_after(0.0001):  # far less than the thread takes in real time
            await anyio.to_thread.run_sync(time.sleep, 0.002)

    for outcome in await run.concurrently(worker, with_deadline):
        outcome.unwrap()


async def threads_inside_async_generators(run: testing.Run) -> None:
    """A wait for a worker thread in the body of an async generator, a step of which a task
    awaits (an ``asynccontextmanager``'s entry and exit, ``anext``, ``async for``), is the
    task's: never a deadlock, and virtual time stands still meanwhile. (The step awaited has no
    frame: a conformance scenario's run set up in a context manager of its own was a false
    DeadlockError on drivers that write their page tables from worker threads.)"""

    @contextlib.asynccontextmanager
    async def in_a_thread_around() -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(time.sleep, 0.001)
        yield
        await anyio.to_thread.run_sync(time.sleep, 0.001)

    async def from_threads() -> AsyncIterator[int]:
        for value in range(2):
            yield await anyio.to_thread.run_sync(lambda value=value: value)

    async def entered() -> None:
        with anyio.fail_after(0.0001):  # far less than the thread takes in real time
            async with in_a_thread_around():
                await anyio.lowlevel.checkpoint()

    async def iterated() -> None:
        with anyio.fail_after(0.0001):
            async with contextlib.aclosing(from_threads()) as values:
                assert await anext(values) == 0
            assert [value async for value in from_threads()] == [0, 1]

    for outcome in await run.concurrently(entered, iterated):
        outcome.unwrap()


async def threads_through_a_limiter(run: testing.Run) -> None:
    """A thread at work is outside work whatever limiter the call goes through (anyio's, or
    trio's own with trio's call); a task waiting for the limiter's token waits meanwhile."""
    limiter = anyio.CapacityLimiter(1)

    async def holder() -> None:
        async with limiter:
            await anyio.lowlevel.checkpoint()

    async def worker() -> None:
        with anyio.fail_after(0.0001):  # virtual time stands still while the thread works
            await anyio.to_thread.run_sync(time.sleep, 0.001, limiter=limiter)

    functions = [holder, worker, worker]
    if sniffio.current_async_library() == "trio":
        import trio

        native = trio.CapacityLimiter(1)

        async def trio_worker() -> None:
            await trio.to_thread.run_sync(time.sleep, 0.001, limiter=native)

        functions += [trio_worker, trio_worker]
    for outcome in await run.concurrently(*functions):
        outcome.unwrap()


async def a_spawned_task_in_a_thread(run: testing.Run) -> None:
    """A task a controlled task spawns runs free; its thread is outside work too. (One such
    task only: its thread would run alongside one a controlled task starts, and which of two
    threads reports first is up to the machine, not the schedule.)"""
    limiter = anyio.CapacityLimiter(1)

    async def holder() -> None:
        async with limiter:
            await anyio.lowlevel.checkpoint()

    async def spawner() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(partial(anyio.to_thread.run_sync, time.sleep, 0.001, limiter=limiter))

    for outcome in await run.concurrently(holder, spawner):
        outcome.unwrap()


async def threads_calling_back_under_a_lock(run: testing.Run) -> None:
    """A worker thread that calls back into the loop (from_thread.run) for a step under a
    lock another task holds across a checkpoint: a thread blocked in that call waits for the
    loop, not the loop for it, so the task holding the lock must still be chosen (asyncio
    hung here). One thread: two at work at once report in the machine's order."""
    lock = anyio.Lock()
    counter = [0]

    async def bump() -> None:
        async with lock:
            value = counter[0]
            await anyio.sleep(0)
            counter[0] = value + 1

    def blocking() -> None:
        anyio.from_thread.run(bump)
        anyio.from_thread.run_sync(bump.__name__.upper)

    async def worker() -> None:
        await anyio.to_thread.run_sync(blocking)
        await bump()

    async def locker() -> None:
        await bump()
        await bump()

    for outcome in await run.concurrently(worker, locker):
        outcome.unwrap()
    assert counter[0] == 4


async def threads_calling_back_together(run: testing.Run) -> None:
    """Two worker threads at work at once, each calling back into the loop for a step under
    a lock a third task holds across a checkpoint: what the threads hand the loop comes in
    once neither is at work, in the order their calls began, not in the order the machine
    finishes them in (Exhaustive said "not deterministic" on asyncio)."""
    lock = anyio.Lock()
    counter = [0]

    async def bump() -> None:
        async with lock:
            value = counter[0]
            await anyio.sleep(0)
            counter[0] = value + 1

    def blocking() -> None:
        time.sleep(0.001)
        anyio.from_thread.run(bump)
        time.sleep(0.001)

    async def worker() -> None:
        await anyio.to_thread.run_sync(blocking)
        await bump()

    for outcome in await run.concurrently(worker, worker, bump):
        outcome.unwrap()
    assert counter[0] == 5


async def thread_cancelled_while_it_works(run: testing.Run) -> None:
    """A task cancelled while its worker thread works (the thread itself cancels it, so the
    cancellation comes while the task waits for it) still waits for the thread: a call that
    is not abandoned on cancel returns when the thread does. trio left the wait unseen
    (a false deadlock); on asyncio the thread's report never came in while anyio retried
    the cancellation in every loop iteration (a false runaway)."""

    async def worker() -> None:
        with anyio.CancelScope() as scope:

            def blocking() -> None:
                anyio.from_thread.run_sync(scope.cancel)
                time.sleep(0.002)

            await anyio.to_thread.run_sync(blocking)
            await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught

    async def other() -> None:
        await anyio.sleep(0)

    for outcome in await run.concurrently(worker, other):
        outcome.unwrap()


async def locked_counter(run: testing.Run) -> None:
    lock = anyio.Lock()
    count = 0

    async def increment() -> None:
        nonlocal count
        async with lock:
            seen = count
            await anyio.sleep(0)
            count = seen + 1

    await run.concurrently(increment, increment, increment)
    assert count == 3


async def semaphore_bound(run: testing.Run) -> None:
    semaphore = anyio.Semaphore(2)
    inside = peak = 0

    async def user() -> None:
        nonlocal inside, peak
        async with semaphore:
            inside += 1
            peak = max(peak, inside)
            await anyio.sleep(0)
            inside -= 1

    await run.concurrently(user, user, user)
    assert peak <= 2


async def condition_queue(run: testing.Run) -> None:
    condition = anyio.Condition()
    items: list[int] = []

    async def consumer() -> int:
        async with condition:
            while not items:
                await condition.wait()
            return items.pop()

    async def producer() -> None:
        for item in range(2):
            async with condition:
                items.append(item)
                condition.notify()
            await anyio.sleep(0)

    outcomes = await run.concurrently(consumer, consumer, producer)
    assert sorted(outcome.unwrap() for outcome in outcomes[:2]) == [0, 1]


async def memory_stream(run: testing.Run) -> None:
    send, receive = anyio.create_memory_object_stream[int](1)
    received: list[int] = []

    async def producer() -> None:
        async with send:
            for item in range(3):
                await send.send(item)

    async def consumer() -> None:
        async with receive:
            async for item in receive:
                received.append(item)

    for outcome in await run.concurrently(producer, consumer):
        outcome.unwrap()
    assert received == [0, 1, 2]


async def capacity_limiter(run: testing.Run) -> None:
    limiter = anyio.CapacityLimiter(1)
    inside = 0

    async def user() -> None:
        nonlocal inside
        async with limiter:
            inside += 1
            assert inside == 1
            await anyio.sleep(0)
            inside -= 1

    for outcome in await run.concurrently(user, user):
        outcome.unwrap()


async def cancelled_waiter(run: testing.Run) -> None:
    """A cancellation reaches a task at its checkpoint; the task tidies up."""
    event = anyio.Event()
    scope = anyio.CancelScope()
    tidied = False

    async def waiter() -> None:
        nonlocal tidied
        with scope:
            try:
                await event.wait()
            finally:
                tidied = True

    async def canceller() -> None:
        await anyio.sleep(0)
        scope.cancel()

    for outcome in await run.concurrently(waiter, canceller):
        outcome.unwrap()
    assert tidied


# A child process that answers on its standard output, started with -S (no site: faster).
CHILD = [sys.executable, "-S", "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"]


async def another_process(run: testing.Run) -> None:
    """Tasks that wait on another process (its pipes, its exit) wait for something outside:
    never a deadlock, and virtual time stands still meanwhile (the deadline is not reached,
    however long the process takes in real time)."""

    async def run_one() -> None:
        with anyio.fail_after(0.0001):
            done = await anyio.run_process(CHILD, input=b"ping")
        assert done.stdout == b"PING"

    async def talk() -> None:
        async with await anyio.open_process(CHILD) as process:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send(b"pong")
            await process.stdin.aclose()
            answer = b""
            async for chunk in process.stdout:
                answer += chunk
        assert answer == b"PONG"

    for outcome in await run.concurrently(run_one, talk, anyio.lowlevel.checkpoint):
        outcome.unwrap()


def spinners(n: int, spin: Callable[[int], Awaitable[None]]) -> testing.Scenario:
    """*n* tasks, each running ``spin(i)``; each must end."""

    async def scenario(run: testing.Run) -> None:
        functions = [partial(spin, index) for index in range(n)]
        for outcome in await run.concurrently(*functions, names=[f"spin{i}" for i in range(n)]):
            outcome.unwrap()

    return scenario


PROGRESS = {"count": 0, "polls": 0}  # progress where the spin rule's state check does not look


# per control: its runs so far, and what its leftovers did in a later run
_LATER: dict[str, dict[str, int]] = {}


def _run_of(control: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A new run of *control*: what its leftovers call when they act (counted if in a later
    run), and the check that nothing an earlier run left acted in this one."""
    counts = _LATER.setdefault(control, {"runs": 0, "strays": 0})
    counts["runs"] += 1
    this_run, strays = counts["runs"], counts["strays"]

    def acted() -> None:
        if counts["runs"] != this_run:
            counts["strays"] += 1

    def check() -> None:
        assert counts["strays"] == strays, "what an earlier run left acted in this one"

    return acted, check


async def work_left_running_past_the_wait(run: testing.Run) -> None:
    """Background work a run leaves (a driver's, in a task nobody waits for) that would act
    3 s later, past the second the race finder waits for what a run left: it is cancelled
    then, on both backends, and acts in no later run. (Reported, attack20: on trio it acted
    in the next run, whose failure's replay diverged: trio cancels system tasks only all
    together.)"""
    acted, check = _run_of("work_left_running_past_the_wait")

    async def late() -> None:
        await anyio.sleep(3.0)
        acted()

    async def leaves_work() -> None:
        in_background(late)
        await anyio.sleep(1.5)
        check()

    for outcome in await run.concurrently(leaves_work, anyio.lowlevel.checkpoint):
        outcome.unwrap()


async def _look_later(run: testing.Run, check: Callable[[], None]) -> None:
    """Run a task that checks, 1.5 s on, that nothing an earlier run left acted meanwhile,
    beside one that only passes a checkpoint."""

    async def looks() -> None:
        await anyio.sleep(1.5)
        check()

    for outcome in await run.concurrently(looks, anyio.lowlevel.checkpoint):
        outcome.unwrap()


def _tick_for_ever(acted: Callable[[], None]) -> None:
    """A driver's timer that re-arms itself every 0.3 s for ever, calling *acted* at each
    tick: on asyncio a loop callback (``call_later``, no task), on trio a system task."""
    if sniffio.current_async_library() == "asyncio":
        loop = asyncio.get_running_loop()

        def tick() -> None:
            acted()
            loop.call_later(0.3, tick)

        loop.call_later(0.3, tick)
    else:

        async def ticker() -> None:
            while True:
                await anyio.sleep(0.3)
                acted()

        in_background(ticker)


async def timer_left_re_arming_for_ever(run: testing.Run) -> None:
    """A driver's timer that re-arms itself for ever, every 0.3 s, which a run leaves
    ticking: on asyncio a loop callback (``call_later``, no task), on trio a system task. It
    is cancelled after the race finder's wait, on both backends, and ticks in no later run.
    (Reported, attack22: on asyncio it ticked in every later run, and a failure's replay
    diverged.)"""
    acted, check = _run_of("timer_left_re_arming_for_ever")
    _tick_for_ever(acted)

    await _look_later(run, check)


async def threads_their_cancelled_callers_left(run: testing.Run) -> None:
    """A call into a worker thread cancelled while the thread works (asyncio's own
    ``to_thread``, which leaves the thread running; anyio's, told to abandon it on cancel):
    the thread's work ends in no later run. (On asyncio the race finder used not to wait for
    such a thread, and it acted in the next run: a failure no single run can have.)"""
    acted, check = _run_of("threads_their_cancelled_callers_left")
    scope = anyio.CancelScope()

    def work() -> None:
        time.sleep(0.05)
        acted()

    async def caller() -> None:
        with scope:
            if sniffio.current_async_library() == "asyncio":
                await asyncio.to_thread(work)
            else:
                await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def canceller() -> None:
        await anyio.sleep(0)
        scope.cancel()

    async def looker() -> None:
        await anyio.sleep(0.002)
        check()

    for outcome in await run.concurrently(caller, canceller, looker):
        outcome.unwrap()


async def clean_up_that_re_arms(run: testing.Run) -> None:
    """Background work whose clean-up on cancel starts more: on asyncio a timer that re-arms
    itself for ever, armed as the task ends; on trio a system task that ticks for ever, the
    replacement a supervisor starts (an outside attack: both went on in later runs)."""
    acted, check = _run_of("clean_up_that_re_arms")

    async def service() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            _tick_for_ever(acted)

    in_background(service)

    await _look_later(run, check)


async def clean_up_longer_than_the_wait(run: testing.Run) -> None:
    """Background work whose clean-up on cancel takes 5 s of its own (shielded), then acts:
    it is waited for (an outside attack: on trio it acted in later runs)."""
    acted, check = _run_of("clean_up_longer_than_the_wait")

    async def service() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(5.0)
            acted()

    in_background(service)

    await _look_later(run, check)


def _call_soon(callback: Callable[[], None]) -> None:
    """Hand *callback* to the running loop to call soon (no task: a loop callback)."""
    if sniffio.current_async_library() == "asyncio":
        asyncio.get_running_loop().call_soon(callback)
    else:
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(callback)


async def _looked_at(run: testing.Run, control: str) -> Callable[[], None]:
    """A run of *control* whose task checks that nothing an earlier run left acted in it,
    beside one that only passes a checkpoint: what its leftovers call when they act."""
    acted, check = _run_of(control)

    async def looks() -> None:
        check()
        await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(looks, anyio.lowlevel.checkpoint):
        outcome.unwrap()
    return acted


async def callback_posted_last(run: testing.Run) -> None:
    """A callback the scenario hands the loop as its last act (an interrupt's handler): it
    runs before the next run (an outside attack: it ran in the next one)."""
    _call_soon(await _looked_at(run, "callback_posted_last"))


async def callback_handed_back_for_ever(run: testing.Run) -> None:
    """A callback the scenario hands the loop as its last act, which hands a new one like
    it to the loop each time it runs, for ever (no task, no timer: nothing to cancel): it is
    taken out of the loop's queue once the run's leftovers are outlasted, and acts in no
    later run (it ran on in every later one)."""
    acted = await _looked_at(run, "callback_handed_back_for_ever")
    rounds = [0]

    def again() -> None:
        acted()
        rounds[0] += 1
        # a new function each time (attack26: one kept only if the same came back again
        # acted in later runs), and on asyncio every ninth round through a timer due at once
        if rounds[0] % 9 == 0 and sniffio.current_async_library() == "asyncio":
            asyncio.get_running_loop().call_later(0, lambda: again())
        else:
            _call_soon(lambda: again())

    _call_soon(again)


async def progress_the_state_check_cannot_see(run: testing.Run) -> None:
    """A task makes 300 steps of progress kept only in a module's dict, then sets an event
    another task waits for under a deadline: a real loop takes microseconds. The spin rule
    sees no state change, but moves time to no deadline (only to a sleep's timer)."""
    PROGRESS["count"] = 0
    event = anyio.Event()

    async def worker() -> None:
        while PROGRESS["count"] < 300:
            PROGRESS["count"] += 1
            await anyio.sleep(0)
        event.set()

    async def waiter() -> None:
        with anyio.fail_after(1):
            await event.wait()

    for outcome in await run.concurrently(worker, waiter):
        outcome.unwrap()


def spin_for_a_flag(n: int) -> testing.Scenario:
    """Tasks that spin on sleep(0) until a task that sleeps sets a flag: a real loop's time
    passes while they spin, the sleeper wakes and they end."""
    flag = [False]

    async def spin(index: int) -> None:
        if index == 0:
            flag[0] = False
            await anyio.sleep(0.5)
            flag[0] = True
        while not flag[0]:
            await anyio.sleep(0)

    return spinners(n + 1, spin)


async def spin_on_the_clock(index: int) -> None:
    """Waits for time to pass by reading the clock, inside a deadline not much later: time
    passes by small amounts, never over a timer, so the deadline is not reached first."""
    start = anyio.current_time()
    with anyio.fail_after(0.06 + 0.01 * index):
        while anyio.current_time() < start + 0.05:
            await anyio.lowlevel.checkpoint()


def spin_for_tokens(n: int, tokens: int = 12) -> testing.Scenario:
    """Tasks share a token bucket (a token a microsecond, at most one kept) and take 12 (or
    *tokens*) tokens in all, reading the clock between yields, inside a deadline of a
    millisecond: a real loop takes 12 microseconds. Each token needs the clock to move a
    little again, so the spin rule's moves must start small (attack18: moves from a
    millisecond, halving towards the deadline, ran out after 11 tokens: a false
    TimeoutError), and must not halve towards the deadline while they bring tokens (moves
    that did ran out after about 20)."""
    bucket = {"tokens": 1.0, "at": 0.0}

    async def take(index: int) -> None:
        with anyio.fail_after(1e-3):
            for _ in range(tokens // n):
                while True:
                    now = anyio.current_time()
                    refill = (now - bucket["at"]) * 1e6
                    bucket["tokens"], bucket["at"] = min(1.0, bucket["tokens"] + refill), now
                    if bucket["tokens"] >= 1:
                        bucket["tokens"] -= 1
                        break
                    await anyio.lowlevel.checkpoint()

    async def scenario(run: testing.Run) -> None:
        bucket.update(tokens=1.0, at=anyio.current_time())
        await spinners(n, take)(run)

    return scenario


class _Bucket:
    """A token bucket of *rate* tokens a second, at most one kept."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.last = rate, 1.0, anyio.current_time()

    def take(self) -> bool:
        now = anyio.current_time()
        self.tokens = min(1.0, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _consumer(
    wanted: int, *, counted: type[float] = int, deadline: float | None = 1.0, rate: float = 1000
) -> Callable[[], Awaitable[None]]:
    """A task that takes *wanted* tokens of a bucket (*rate* tokens a second) within
    *deadline* seconds (None: no deadline), polling with ``sleep(0)``; what it took so far
    counted as *counted*."""
    bucket = _Bucket(rate)

    async def consumer() -> None:
        taken = counted(0)
        with anyio.fail_after(math.inf if deadline is None else deadline):
            while taken < wanted:
                if bucket.take():
                    taken += counted(1)
                else:
                    await anyio.sleep(0)

    return consumer


async def tokens_counted_in_a_float(run: testing.Run) -> None:
    """Progress kept in a float (bytes sent): 25 tokens within a second, 25 ms on a real
    loop (attack26: a rule that took changed floats for clock reads, not progress, gave a
    false TimeoutError after 20)."""
    (outcome,) = await run.concurrently(_consumer(25, counted=float))
    outcome.unwrap()


async def tokens_beside_a_long_sleep(run: testing.Run) -> None:
    """40 tokens within a second (40 ms on a real loop) while another task sleeps till just
    before the deadline (attack26: the moves halved towards the sleep's end, about 20 tokens
    fitted, a false TimeoutError after 29)."""

    async def sleeper() -> None:
        await anyio.sleep(0.95)

    for outcome in await run.concurrently(_consumer(40), sleeper):
        outcome.unwrap()


async def a_bucket_shared_with_a_hog(run: testing.Run) -> None:
    """A task takes every token it can from a bucket (a token a millisecond) until told to
    stop; another needs 3 within 100 ms (about 6 ms on a real loop, where either may look
    first once a token is due). Both poll without pause. Attack26: the strategy's favourite,
    or the task fairness held for next, looked first after every move of the clock and took
    every token: a false TimeoutError under PCT and Exhaustive."""
    bucket = _Bucket(1000)
    stop = anyio.Event()

    async def hog() -> None:
        taken = 0
        while not stop.is_set() and taken < 100:
            if bucket.take():
                taken += 1
            else:
                await anyio.lowlevel.checkpoint()

    async def needy() -> None:
        taken = 0
        with anyio.fail_after(0.1):
            while taken < 3:
                if bucket.take():
                    taken += 1
                else:
                    await anyio.lowlevel.checkpoint()
        stop.set()

    for outcome in await run.concurrently(hog, needy):
        outcome.unwrap()


class _WholeBucket:
    """A token bucket of *rate* tokens a second that counts whole tokens, at most one kept,
    starting empty: a refill comes in whole tokens, and a full bucket keeps the time it
    filled (a take that finds none leaves it as it was)."""

    def __init__(self, rate: int) -> None:
        self.rate, self.tokens, self.last = rate, 0, anyio.current_time()

    def refill(self) -> int:
        """Add the whole tokens due since the last refill; how many were added."""
        now = anyio.current_time()
        due = int((now - self.last) * self.rate)
        if not due:
            return 0
        before, self.tokens = self.tokens, min(1, self.tokens + due)
        self.last = now if self.tokens == 1 else self.last + due / self.rate
        return self.tokens - before

    def take(self) -> bool:
        self.refill()
        if self.tokens:
            self.tokens -= 1
            return True
        return False


async def a_lock_a_hog_holds_across_a_yield(run: testing.Run) -> None:
    """Three tasks each need 3 whole tokens (a token a millisecond) within 200 ms, taking
    them under an ``anyio.Lock`` and polling with ``sleep(0)``; a fourth takes whatever it
    finds, holding the lock across a checkpoint, and drops it. Attack27: the hog's take left
    the bucket as it was but for the time it filled, which the spin rule blanks out, so the
    moves stopped counting as progress and doubled; and with its look every 64 steps, a
    divisor of the tasks' round through the lock, every move fell where the hog was next:
    a false TimeoutError (then StepBudgetError) under every strategy."""
    bucket = _WholeBucket(1000)
    lock = anyio.Lock()
    done: list[None] = []

    async def hog() -> None:
        while len(done) < 3:
            async with lock:
                bucket.take()
                await anyio.lowlevel.checkpoint()

    async def needy() -> None:
        with anyio.fail_after(0.2):
            taken = 0
            while taken < 3:
                async with lock:
                    took = bucket.take()
                if took:
                    taken += 1
                else:
                    await anyio.sleep(0)
        done.append(None)

    for outcome in await run.concurrently(hog, needy, needy, needy):
        outcome.unwrap()


TAKEN: list[int] = []  # what each task of progress_kept_in_a_global took so far


async def progress_kept_in_a_global(run: testing.Run) -> None:
    """Two tasks each take 20 tokens (a token a millisecond) within a second from one bucket,
    counting what they took in a module's global and polling with ``checkpoint()``: their
    own variables never change. The spin rule's look saw no progress, its moves doubled,
    and a false TimeoutError came under every strategy."""
    bucket = _Bucket(1000)
    TAKEN[:] = [0, 0]

    async def needy(me: int) -> None:
        with anyio.fail_after(1):
            while TAKEN[me] < 20:
                if bucket.take():
                    TAKEN[me] += 1
                else:
                    await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(partial(needy, 0), partial(needy, 1)):
        outcome.unwrap()


async def progress_two_references_away(run: testing.Run) -> None:
    """As :func:`progress_kept_in_a_global`, the bucket and the counts kept two references
    away from the tasks' variables (``shared.books.taken``)."""

    class Books:
        def __init__(self) -> None:
            self.bucket, self.taken = _Bucket(1000), [0, 0]

    class Shared:
        def __init__(self) -> None:
            self.books = Books()

    shared = Shared()

    async def needy(me: int) -> None:
        with anyio.fail_after(1):
            while shared.books.taken[me] < 20:
                if shared.books.bucket.take():
                    shared.books.taken[me] += 1
                else:
                    await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(partial(needy, 0), partial(needy, 1)):
        outcome.unwrap()


async def tokens_polled_counting_failed_tries(run: testing.Run) -> None:
    """Two tasks each take 10 tokens (a token a millisecond) within a second from one bucket,
    counting their failed tries in a variable: their state changes at every round, so the
    spin rule never saw them only spin and never let time pass (a false StepBudgetError
    under every strategy on both backends)."""
    bucket = _Bucket(1000)

    async def needy() -> None:
        taken = tries = 0
        with anyio.fail_after(1):
            while taken < 10:
                if bucket.take():
                    taken += 1
                else:
                    tries += 1
                await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(needy, needy):
        outcome.unwrap()


# -- progress kept where the spin rule's first look does not reach -------------------------
#
# Two tasks each take 20 tokens (a token a millisecond) within a second from one bucket,
# polling with checkpoint(): their own variables never change, what they took is kept
# elsewhere. Unseen, the spin rule's moves of the clock doubled: a false TimeoutError under
# every strategy on both backends (attack29).


class _Tally:
    """Counts kept in a class's attribute."""

    taken: ClassVar[list[int]] = [0, 0]


class _Slotted:
    """Counts kept in a slot: no ``__dict__`` to look in."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken = [0, 0]


class _Holder:
    def __init__(self, held: object) -> None:
        self.held = held


_LEDGER = types.ModuleType("ledger")  # counts kept in another module's global
_POLLS = [0]  # polls of every task, bumped at every round: a metric, no progress
_COUNTED = [0, 0]
_ROOT = _Holder(None)


def _count(me: int) -> None:
    _COUNTED[me] += 1


def _take_twenty(
    taken: Callable[[int], int], took: Callable[[int], None], *, metric: bool = False
) -> Callable[[int], Awaitable[None]]:
    """What each of the two tasks runs (told which it is): counts what it took with *took*,
    reads them with *taken*; *metric*: bumps ``_POLLS`` at every round."""
    bucket = _Bucket(1000)

    async def needy(me: int) -> None:
        with anyio.fail_after(1):
            while taken(me) < 20:
                if bucket.take():
                    took(me)
                if metric:
                    _POLLS[0] += 1
                await anyio.lowlevel.checkpoint()

    return needy


def _beside_a_metric() -> Callable[[int], Awaitable[None]]:
    TAKEN[:] = [0, 0]

    def took(me: int) -> None:
        TAKEN[me] += 1

    return _take_twenty(TAKEN.__getitem__, took, metric=True)


def _in_a_class_attribute() -> Callable[[int], Awaitable[None]]:
    _Tally.taken = [0, 0]

    def took(me: int) -> None:
        _Tally.taken[me] += 1

    return _take_twenty(lambda me: _Tally.taken[me], took)


def _in_a_slot() -> Callable[[int], Awaitable[None]]:
    _ROOT.held = _Slotted()

    def took(me: int) -> None:
        _ROOT.held.taken[me] += 1  # type: ignore[attr-defined]

    return _take_twenty(lambda me: _ROOT.held.taken[me], took)  # type: ignore[attr-defined]


def _three_references_away() -> Callable[[int], Awaitable[None]]:
    _ROOT.held = _Holder(_Holder([0, 0]))

    def took(me: int) -> None:
        _ROOT.held.held.held[me] += 1  # type: ignore[attr-defined]

    return _take_twenty(lambda me: _ROOT.held.held.held[me], took)  # type: ignore[attr-defined]


def _in_another_module() -> Callable[[int], Awaitable[None]]:
    _LEDGER.taken = [0, 0]

    def took(me: int) -> None:
        _LEDGER.taken[me] += 1

    return _take_twenty(lambda me: _LEDGER.taken[me], took)


def _by_a_helper() -> Callable[[int], Awaitable[None]]:
    _COUNTED[:] = [0, 0]
    return _take_twenty(_COUNTED.__getitem__, _count)


_BOOKS: dict[str, dict[str, list[int]]] = {}


def _in_a_dict_in_a_dict() -> Callable[[int], Awaitable[None]]:
    _BOOKS["tokens"] = {"taken": [0, 0]}

    def took(me: int) -> None:
        _BOOKS["tokens"]["taken"][me] += 1

    return _take_twenty(lambda me: _BOOKS["tokens"]["taken"][me], took)


_CLERKS: list[_Holder] = []


def _in_an_object_in_a_list() -> Callable[[int], Awaitable[None]]:
    _CLERKS[:] = [_Holder(0), _Holder(0)]

    def took(me: int) -> None:
        _CLERKS[me].held += 1  # type: ignore[operator]

    return _take_twenty(lambda me: _CLERKS[me].held, took)  # type: ignore[return-value]


PROGRESS_PLACES = {
    "beside_a_metric": _beside_a_metric,
    "in_a_class_attribute": _in_a_class_attribute,
    "in_a_slot": _in_a_slot,
    "three_references_away": _three_references_away,
    "in_another_module": _in_another_module,
    "by_a_helper": _by_a_helper,
    "in_a_dict_in_a_dict": _in_a_dict_in_a_dict,
    "in_an_object_in_a_list": _in_an_object_in_a_list,
}


async def three_share_a_bucket_with_two_yields_a_round(run: testing.Run) -> None:
    """Three tasks each need 4 tokens (a token a millisecond) within a second from one bucket,
    yielding twice a round: once while they take, once more when none came. Attack27: held in
    turn for the fairness bound each, the three came back to the same state every third look
    of the spin rule, never at the next, so the rule never saw them spin: a false
    StepBudgetError under every strategy, where one or two such tasks passed."""
    bucket = _Bucket(1000)
    bucket.tokens = 0.0

    async def needy() -> None:
        taken = 0
        with anyio.fail_after(1):
            while taken < 4:
                await anyio.lowlevel.checkpoint()
                if bucket.take():
                    taken += 1
                else:
                    await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(needy, needy, needy):
        outcome.unwrap()


async def poll_for_whole_ticks(index: int) -> None:
    """Waits for 40,000 ticks of a microsecond to pass, read into a variable, inside a
    deadline of 60 ms: each move of the clock changes the variable, as a token bucket's
    refill does, and the poll must still end before the deadline."""
    with anyio.fail_after(0.060):
        end = int(anyio.current_time() * 1e6) + 40_000
        while True:
            ticks = int(anyio.current_time() * 1e6)
            if ticks >= end:
                break
            await anyio.lowlevel.checkpoint()


SPINS = {
    f"{name}-{n}": scenario
    for n in (1, 2, 3)
    for name, scenario in (
        ("spin_for_a_flag", spin_for_a_flag(n)),
        ("spin_on_the_clock", spinners(n, spin_on_the_clock)),
        ("spin_for_tokens", spin_for_tokens(n)),
        ("spin_for_many_tokens", spin_for_tokens(n, 48)),
        ("spin_for_whole_ticks", spinners(n, poll_for_whole_ticks)),
    )
}


CONTROLS = {
    scenario.__name__: scenario
    for scenario in (
        timeout_around_an_event,
        poll_with_sleep_zero,
        poll_naming_the_loop,
        poll_with_backoff,
        rate_limiter_by_the_loop_clock,
        deadline_around_a_spin,
        deadline_while_a_child_spins,
        worker_threads,
        threads_inside_async_generators,
        threads_through_a_limiter,
        a_spawned_task_in_a_thread,
        threads_calling_back_under_a_lock,
        threads_calling_back_together,
        thread_cancelled_while_it_works,
        locked_counter,
        semaphore_bound,
        condition_queue,
        memory_stream,
        capacity_limiter,
        cancelled_waiter,
        another_process,
        progress_the_state_check_cannot_see,
        work_left_running_past_the_wait,
        timer_left_re_arming_for_ever,
        threads_their_cancelled_callers_left,
        clean_up_that_re_arms,
        clean_up_longer_than_the_wait,
        callback_posted_last,
        callback_handed_back_for_ever,
        tokens_counted_in_a_float,
        tokens_beside_a_long_sleep,
        a_bucket_shared_with_a_hog,
        three_share_a_bucket_with_two_yields_a_round,
        a_lock_a_hog_holds_across_a_yield,
        progress_kept_in_a_global,
        progress_two_references_away,
        tokens_polled_counting_failed_tries,
    )
} | SPINS


# When another process's output and exit arrive, together or apart, is up to that process:
# the steps can differ from run to run, and Exhaustive says so (README), so it is not run there.
# The polls of a clock, a bucket or a global run few schedules of thousands of steps each (see
# the test): Exhaustive's first schedule is the plain order whatever its bound, and depth first
# from the end of such a run its next ones take no second preemption, so Exhaustive(2) runs
# Exhaustive(1)'s schedules again (the same points and steps, checked for these; not so for
# a_lock_a_hog_holds_across_a_yield and spin_for_a_flag-1, which run both). (CI's whole run
# must stay well under 15 minutes.)
_SAME_UNDER_EXHAUSTIVE_1_AND_2 = {
    *(name for name in SPINS if name != "spin_for_a_flag-1"),
    "a_bucket_shared_with_a_hog",
    "three_share_a_bucket_with_two_yields_a_round",
    "progress_kept_in_a_global",
    "progress_two_references_away",
    "tokens_beside_a_long_sleep",
    "tokens_counted_in_a_float",
    "tokens_polled_counting_failed_tries",
}
CONTROL_STRATEGIES = [
    (control, strategy)
    for control in sorted(CONTROLS)
    for strategy in sorted(strategies())
    if not (control == "another_process" and strategy.startswith("exhaustive"))
    and not (control in _SAME_UNDER_EXHAUSTIVE_1_AND_2 and strategy == "exhaustive2")
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("control", "strategy"), CONTROL_STRATEGIES)
def test_a_correct_program_passes_every_strategy(control: str, strategy: str, backend: str) -> None:
    # (CI's whole run must stay well under 15 minutes: 6 strategies x 2 backends of each)
    schedules = 4 if "process" in control else 10
    # (polls of a shared bucket: 10 schedules cost 2 to 3 seconds a strategy)
    buckets = ("a_lock_a_hog", "a_bucket_shared", "three_share_a_bucket")
    schedules = 3 if "spin_" in control or control.startswith(buckets) else schedules
    schedules = (
        2 if control in ("progress_kept_in_a_global", "progress_two_references_away") else schedules
    )
    # (the old rules failed at the first; a poll of whole ticks costs a second a schedule, a
    # poll that counts its tries a whole budget first)
    schedules = 2 if "tokens" in control else schedules
    schedules = 1 if "ticks" in control or "counting" in control else schedules
    result = testing.explore(
        CONTROLS[control],
        strategy=strategies()[strategy](),
        schedules=schedules,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()
    assert result.schedules == schedules or result.exhausted


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["pct", "exhaustive1"])
@pytest.mark.parametrize("place", sorted(PROGRESS_PLACES))
def test_progress_counts_wherever_the_tasks_code_keeps_it(
    place: str, strategy: str, backend: str
) -> None:
    async def scenario(run: testing.Run) -> None:
        needy = PROGRESS_PLACES[place]()
        for outcome in await run.concurrently(partial(needy, 0), partial(needy, 1)):
            outcome.unwrap()

    result = testing.explore(
        scenario, strategy=strategies()[strategy](), schedules=2, backend=backend
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["pct", "exhaustive0"])
@pytest.mark.parametrize("counted", [int, float], ids=["int", "float"])
def test_a_poll_without_a_deadline_takes_what_it_needs(
    counted: type[float], strategy: str, backend: str
) -> None:
    # 60 tokens with no timer pending: the spin rule's moves doubled from the still run's
    # start, so each token came twice as late as the one before, and at about 53 the clock
    # (73,000 years on) no longer moved: a false StepBudgetError (attack30); counted in a
    # float (bytes sent), too
    async def scenario(run: testing.Run) -> None:
        (outcome,) = await run.concurrently(_consumer(60, counted=counted, deadline=None))
        outcome.unwrap()
        assert anyio.current_time() < 1.0  # (60 ms on a real loop)

    result = testing.explore(
        scenario, strategy=strategies()[strategy](), schedules=1, backend=backend
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["pct", "exhaustive0"])
@pytest.mark.parametrize("pollers", ["alone", "eight_share_it", "through_a_lock"])
def test_a_bucket_that_keeps_one_token_gives_what_its_deadline_allows(
    pollers: str, strategy: str, backend: str
) -> None:
    # A refill the clock moved past is lost to such a bucket: the spin rule's moves split
    # the way to the deadline in 128, and no more than about 128 tokens fitted within any
    # deadline (attack30: 200 within 10 s). Here 20 tokens a second within 10 s: 180 taken
    # by one task; 15 by each of 8 (attack32: the bucket's fraction of a token, changing at
    # every move, ended the pacing); 150 taken under an anyio.Lock, yielding in a helper
    # (attack32: where the task stood, in the lock or at its sleep, passed for a count, and
    # the helper's frame, come or gone, for progress)
    async def pause() -> None:
        await anyio.sleep(0)

    async def scenario(run: testing.Run) -> None:
        bucket = _Bucket(20)
        lock = anyio.Lock()
        wanted = {"alone": 180, "eight_share_it": 15, "through_a_lock": 150}[pollers]

        async def poller() -> None:
            taken = 0
            with anyio.fail_after(10):
                while taken < wanted:
                    if pollers == "through_a_lock":
                        async with lock:
                            took = bucket.take()
                    else:
                        took = bucket.take()
                    if took:
                        taken += 1
                    elif pollers == "through_a_lock":
                        await pause()
                    else:
                        await anyio.sleep(0)

        tasks = 8 if pollers == "eight_share_it" else 1
        for outcome in await run.concurrently(*[poller] * tasks):
            outcome.unwrap()

    result = testing.explore(
        scenario, strategy=strategies()[strategy](), schedules=1, backend=backend
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_work_a_run_leaves_that_never_ends_is_refused(backend: str) -> None:
    # every run shares one loop: work that outlives the cancellations (a minute's clean-up)
    # would act in later runs, and no verdict would hold
    async def scenario(run: testing.Run) -> None:
        async def stubborn() -> None:
            end = anyio.current_time() + 60.0
            while anyio.current_time() < end:
                with anyio.CancelScope(shield=True):  # (asyncio's task.cancel: swallowed)
                    try:
                        await anyio.sleep(1.0)
                    except anyio.get_cancelled_exc_class():
                        pass

        in_background(stubborn)
        for outcome in await run.concurrently(anyio.lowlevel.checkpoint):
            outcome.unwrap()

    with pytest.raises(avcm.InvalidError, match="make the scenario end what it starts"):
        testing.explore(scenario, strategy=testing.PCT(0), schedules=2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_that_takes_long_is_waited_for(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        async def worker() -> None:
            with anyio.fail_after(5):
                await anyio.to_thread.run_sync(time.sleep, 0.01)

        for outcome in await run.concurrently(worker, worker):
            outcome.unwrap()

    result = testing.explore(scenario, strategy=testing.Exhaustive(0), backend=backend)
    assert result.exhausted and result.failure is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_stands_still_while_a_cancelled_task_waits_for_another_tasks_thread(
    backend: str,
) -> None:
    # A cancellation injected into one task while another waits for its thread: anyio on
    # asyncio retries delivering it every loop iteration until the cancelled task runs,
    # which is after the thread reports. Those retries resume no task, and after a
    # thousand of them (how many fit in the thread's 0.15 s is up to the machine) virtual
    # time used to jump to the next timer: the deadline, a TimeoutError no real loop gives.
    async def scenario(run: testing.Run) -> None:
        victim_waits = anyio.Event()

        async def holder() -> None:
            with anyio.fail_after(100):
                start = anyio.current_time()
                victim_waits.set()
                await anyio.sleep(0)  # the victim is runnable: it may be cancelled here
                await anyio.to_thread.run_sync(time.sleep, 0.15)
                assert anyio.current_time() == start, "virtual time moved during a thread"
                await anyio.sleep(0)

        async def victim() -> None:
            await victim_waits.wait()
            await anyio.sleep(0)

        for outcome in await run.concurrently(victim, holder):
            if not outcome.cancelled:
                outcome.unwrap()

    result = testing.explore(
        scenario, strategy=testing.Exhaustive(0, cancel=1), schedules=40, backend=backend
    )
    assert result.exhausted and result.failure is None, result.failure and result.failure.report()
    assert result.schedules > 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_passes_only_when_nothing_can_run(backend: str) -> None:
    times: list[float] = []

    async def scenario(run: testing.Run) -> None:
        async def busy() -> None:
            for _ in range(5):
                await anyio.sleep(0)
            times.append(anyio.current_time())

        async def sleeper() -> None:
            await anyio.sleep(1)
            times.append(anyio.current_time())

        start = anyio.current_time()
        await run.concurrently(busy, sleeper)
        times[:] = [moment - start for moment in times]

    testing.explore(scenario, strategy=testing.Exhaustive(0), schedules=1, backend=backend)
    # the busy task's five steps took no time, whoever went first
    assert times == [0.0, 1.0]


# -- true failures --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_true_livelock_names_its_cycle(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        turn = [0, 0]

        async def polite(me: int) -> None:
            # each waits for the other to go first, forever
            while turn[1 - me] == 0:
                await anyio.sleep(0)

        await run.concurrently(lambda: polite(0), lambda: polite(1), names=["a", "b"])

    for strategy in (testing.PCT(0), testing.Exhaustive(0)):
        result = testing.explore(
            scenario, strategy=strategy, backend=backend, limits=testing.Limits(max_steps=400)
        )
        assert result.failure is not None
        error = result.failure.error
        assert isinstance(error, testing.StepBudgetError)
        assert "livelock" in str(error) and "repeat" in str(error)
        assert "task 0 (a) polite sleep" in str(error)
        assert "task 1 (b) polite sleep" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clock", [False, True])
@pytest.mark.parametrize("counting", [False, True], ids=["still", "counting"])
def test_a_true_livelock_is_one_while_time_passes(
    clock: bool, counting: bool, backend: str
) -> None:
    """Two tasks that never let each other go, with a timer pending (and reading the clock,
    or not; counting their tries, or not): the spin rule lets time pass, and still the run is
    a livelock, with its cycle."""

    async def scenario(run: testing.Run) -> None:
        turn = [0, 0]
        seen: list[float] = []

        async def polite(me: int) -> None:
            tries = 0
            while turn[1 - me] == 0:
                if clock:
                    seen[:] = [anyio.current_time()]
                tries += counting
                await anyio.sleep(0)

        await run.concurrently(
            lambda: polite(0), lambda: polite(1), partial(anyio.sleep, 7), names=["a", "b", "c"]
        )

    for strategy in (testing.PCT(0), testing.RandomWalk(0), testing.Exhaustive(0)):
        result = testing.explore(
            scenario, strategy=strategy, backend=backend, limits=testing.Limits(max_steps=600)
        )
        assert result.failure is not None
        error = result.failure.error
        assert isinstance(error, testing.StepBudgetError), result.failure.report()
        if counting:
            # (counting up is all they do: a look at their state cannot tell it from work)
            assert "only by counting up (tries of task 0 (a), tries of task 1 (b))" in str(error)
        else:
            assert "livelock" in str(error)
        assert "task 0 (a) polite sleep" in str(error)
        assert "task 1 (b) polite sleep" in str(error)
        # time passed: by quanta for a clock read, else at once to the sleeper's timer
        assert result.failure.timeline.steps[-1].time >= (1e-6 if clock else 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deadline", [None, 0.01])
def test_a_livelock_that_reads_whole_ticks_is_still_reported(
    deadline: float | None, backend: str
) -> None:
    """Two tasks that never let each other go, reading the clock into whole microseconds:
    each move of the clock changes their state, as a token bucket's refill does, and starts
    their still budget again; still the run never passes: a step budget, or its deadline
    reached, as on a real loop."""

    async def scenario(run: testing.Run) -> None:
        turn = [0, 0]

        async def polite(me: int) -> None:
            with anyio.fail_after(math.inf if deadline is None else deadline):
                while turn[1 - me] == 0:
                    ticks = int(anyio.current_time() * 1e6)  # noqa: F841
                    await anyio.sleep(0)

        for outcome in await run.concurrently(lambda: polite(0), lambda: polite(1)):
            outcome.unwrap()

    for strategy in (testing.PCT(0), testing.Exhaustive(0)):
        result = testing.explore(
            scenario,
            strategy=strategy,
            backend=backend,
            # (with a deadline, its run takes 128 moves of the clock, 16,000 steps, to reach
            # it: more than 20 times a budget of 600)
            limits=testing.Limits(max_steps=600 if deadline is None else 10_000),
            shrink=False,
        )
        assert result.failure is not None
        error = result.failure.error
        if deadline is None:
            # (a livelock, or a run that does not end: the ticks are progress the state
            # check sees, for as long as the budget in all lasts)
            assert isinstance(error, testing.StepBudgetError), result.failure.report()
        else:
            assert isinstance(error, TimeoutError), result.failure.report()
            assert result.failure.timeline.steps[-1].time <= deadline


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spin_lets_time_pass_only_when_nothing_changes(backend: str) -> None:
    """A loop whose variables change at each checkpoint is no spin: time stands still
    however many steps it takes (a real loop takes microseconds), so a deadline around it
    is never reached; a spin with no effect lets time pass to the next timer, in one move."""
    times: list[float] = []

    async def scenario(run: testing.Run) -> None:
        flag = [False]

        async def counting() -> None:
            with anyio.fail_after(0.001):
                for _ in range(20 * testing.Limits().fair_bound):
                    await anyio.lowlevel.checkpoint()
            times.append(anyio.current_time())

        async def spinning() -> None:
            while not flag[0]:
                await anyio.sleep(0)
            times.append(anyio.current_time())

        async def sleeper() -> None:
            await anyio.sleep(3)
            flag[0] = True

        start = anyio.current_time()
        for outcome in await run.concurrently(counting, spinning, sleeper):
            outcome.unwrap()
        times[:] = [moment - start for moment in times]

    result = testing.explore(scenario, strategy=testing.Exhaustive(0), backend=backend)
    assert result.failure is None, result.failure.report()
    assert times[-2:] == [0.0, 3.0]


def poll_until(setter_delay: float, *, poll: float = 0.01) -> testing.Scenario:
    """A fixed-delay poll for a flag that a task sets after *setter_delay* (virtual) seconds
    (never, if infinite)."""

    async def scenario(run: testing.Run) -> None:
        flag = False

        async def poller() -> None:
            while not flag:
                await anyio.sleep(poll)

        async def setter() -> None:
            nonlocal flag
            await anyio.sleep(setter_delay)
            flag = True

        for outcome in await run.concurrently(poller, setter):
            outcome.unwrap()

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", sorted(strategies()))
def test_a_poll_that_lets_time_pass_is_no_livelock(strategy: str, backend: str) -> None:
    """Every repetition of the poll waits for time to pass: its steps do not count towards
    max_steps, however many there are (here ten times as many)."""
    result = testing.explore(
        poll_until(5),
        strategy=strategies()[strategy](),
        schedules=2,
        backend=backend,
        limits=testing.Limits(max_steps=50),
    )
    assert result.failure is None, result.failure.report()
    assert result.max_steps_seen > 500


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_poll_for_what_never_comes_ends_the_run(backend: str) -> None:
    """Time passes, so it is no livelock, but a run that does not end is still reported:
    after 20 times max_steps steps in all."""
    result = testing.explore(
        poll_until(math.inf),
        strategy=testing.Exhaustive(0),
        backend=backend,
        limits=testing.Limits(max_steps=50),
    )
    assert result.failure is not None
    error = result.failure.error
    assert isinstance(error, testing.StepBudgetError)
    assert "more than 1000 steps (20 x max_steps)" in str(error)
    assert "does not end" in str(error) and "livelock" not in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_process_run_in_a_thread_is_waited_for(backend: str) -> None:
    """The way around what is not waited for (I/O with another process, README): a worker
    thread that runs it is outside work, however long the process takes."""

    async def scenario(run: testing.Run) -> None:
        async def child() -> int:
            command = [sys.executable, "-c", "pass"]
            done = await anyio.to_thread.run_sync(partial(subprocess.run, command, check=True))
            return done.returncode

        for outcome in await run.concurrently(child, anyio.lowlevel.checkpoint):
            outcome.unwrap()

    result = testing.explore(scenario, strategy=testing.Exhaustive(0), backend=backend)
    assert result.exhausted and result.failure is None


async def wait_for_a_silent_peer(run: testing.Run, *, within: float | None) -> None:
    """A task waits to read a socket that its peer never writes to (*within* seconds)."""
    mine, peer = socket.socketpair()
    with mine, peer:

        async def reader() -> None:
            with anyio.move_on_after(math.inf if within is None else within):
                await anyio.wait_readable(mine)

        for outcome in await run.concurrently(reader):
            outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_io_that_never_comes_is_reported_as_such(backend: str) -> None:
    """Nothing arrives: after Limits.io_timeout of real time, an IOWaitError naming the
    waiting task, not a deadlock; with a timer pending (a timeout around the read), time
    moves on to it and the program goes on, as a real loop's would."""
    limits = testing.Limits(io_timeout=0.05)
    result = testing.explore(
        partial(wait_for_a_silent_peer, within=None), limits=limits, backend=backend
    )
    assert result.failure is not None
    error = result.failure.error
    assert isinstance(error, testing.IOWaitError) and not isinstance(error, testing.DeadlockError)
    assert "nothing arrived in 0.05 s of real time" in str(error)
    assert "task 0 (reader) waits in reader" in str(error)
    result = testing.explore(
        partial(wait_for_a_silent_peer, within=1), limits=limits, backend=backend, schedules=2
    )
    assert result.failure is None, result.failure.report()


def test_plain_asyncio_subprocesses_are_waited_for() -> None:
    async def scenario(run: testing.Run) -> None:
        async def child() -> bytes:
            process = await asyncio.create_subprocess_exec(
                *CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            answer, _ = await process.communicate(b"hi")
            assert await process.wait() == 0
            return answer

        outcomes = await run.concurrently(child, child)
        assert [outcome.unwrap() for outcome in outcomes] == [b"HI", b"HI"]

    # not Exhaustive: when the children's output and exit arrive, together or apart, is up to
    # them, and Exhaustive would say the scenario is not deterministic (README)
    for name, strategy in strategies().items():
        if name.startswith("exhaustive"):
            continue
        result = testing.explore(scenario, strategy=strategy(), schedules=3, backend="asyncio")
        assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_call_waiting_for_its_limiter_can_deadlock(backend: str) -> None:
    """A task waiting for a limiter's token, not for a thread, waits for another task."""

    async def scenario(run: testing.Run) -> None:
        limiter = anyio.CapacityLimiter(1)
        held, never = anyio.Event(), anyio.Event()

        async def holder() -> None:
            async with limiter:
                held.set()
                await never.wait()

        async def worker() -> None:
            await held.wait()  # (whichever task the loop starts first)
            await anyio.to_thread.run_sync(time.sleep, 0, limiter=limiter)

        await run.concurrently(holder, worker)

    result = testing.explore(scenario, strategy=testing.Exhaustive(0), backend=backend)
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.DeadlockError)
    assert "task 1 (worker) waits in worker" in str(result.failure.error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_true_deadlock_on_anyio_locks(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        first, second = anyio.Lock(), anyio.Lock()

        async def forwards() -> None:
            async with first:
                await anyio.sleep(0)
                async with second:
                    pass

        async def backwards() -> None:
            async with second:
                await anyio.sleep(0)
                async with first:
                    pass

        await run.concurrently(forwards, backwards)

    result = testing.explore(scenario, strategy=testing.Exhaustive(1), backend=backend)
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.DeadlockError)
    assert "forwards Lock.__aenter__" in str(result.failure.error)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", sorted(strategies()))
def test_sleep_forever_is_a_deadlock(strategy: str, backend: str) -> None:
    """``sleep_forever`` waits for no timer that can fall due (on asyncio, one at infinity):
    with nothing else to wake the task, the run is a deadlock, reported, never a hang."""

    async def scenario(run: testing.Run) -> None:
        event = anyio.Event()
        await run.concurrently(anyio.sleep_forever, event.wait)

    result = testing.explore(
        scenario, strategy=strategies()[strategy](), schedules=2, backend=backend
    )
    assert result.failure is not None
    error = result.failure.error
    assert isinstance(error, testing.DeadlockError)
    assert "task 0 (sleep_forever) waits" in str(error)
    assert "task 1 (wait) waits" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scenario_failing_before_any_task_raises_its_own_error(backend: str) -> None:
    """No task ran under the scheduler: no schedule is to blame, so it is no race found but
    the scenario's own error, raised as it is (for a bad call of concurrently too)."""
    ran: list[str] = []

    async def setup_fails(run: testing.Run) -> None:
        raise RuntimeError("no fixture")

    async def not_a_function(run: testing.Run) -> None:
        async def task() -> None:
            ran.append("task")

        await run.concurrently(task, 42)  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="no fixture"):
        testing.check(setup_fails, backend=backend)
    with pytest.raises(avcm.InvalidError, match="42 is not a function") as info:
        testing.explore(not_a_function, backend=backend)
    assert info.value.errno == errno.EINVAL
    assert ran == []
    with pytest.raises(RuntimeError, match="no fixture"):
        testing.replay(setup_fails, "avcm7:pct-d3:0:0:00000000:0", backend=backend)


def lost_update_through(pause: Callable[[], object]) -> testing.Scenario:
    """Read, pause at a checkpoint, write back: two tasks lose an update."""

    async def scenario(run: testing.Run) -> None:
        count = 0

        async def increment() -> None:
            nonlocal count
            seen = count
            await pause()  # type: ignore[misc]
            count = seen + 1

        await run.concurrently(increment, increment)
        assert count == 2, f"lost update: count is {count}"

    return scenario


def lock_released_between(
    run_lock: Callable[[], object], pause: Callable[[], object]
) -> testing.Scenario:
    """Check under a lock, await something, act under the lock again: the check is stale."""

    async def scenario(run: testing.Run) -> None:
        lock = run_lock()
        stock = 1
        sold = 0

        async def buy() -> None:
            nonlocal stock, sold
            async with lock:  # type: ignore[attr-defined]
                available = stock > 0
            await pause()  # type: ignore[misc]
            if available:
                async with lock:  # type: ignore[attr-defined]
                    stock -= 1
                    sold += 1

        await run.concurrently(buy, buy)
        assert stock >= 0, f"sold {sold} of 1"

    return scenario


def if_instead_of_while() -> testing.Scenario:
    """A consumer that waits on a condition with ``if``: another consumer got there first."""

    async def scenario(run: testing.Run) -> None:
        condition = anyio.Condition()
        items: list[int] = []

        async def consumer() -> int:
            async with condition:
                if not items:
                    await condition.wait()
                return items.pop()

        async def producer() -> None:
            async with condition:
                items.append(1)
                condition.notify_all()

        # two items for two consumers: whoever waits is woken by a later item
        for outcome in await run.concurrently(consumer, consumer, producer, producer):
            outcome.unwrap()

    return scenario


def event_set_too_early() -> testing.Scenario:
    """A publisher sets the event before the data is there; the reader trusts the event."""

    async def scenario(run: testing.Run) -> None:
        ready = anyio.Event()
        data: list[int] = []

        async def publisher() -> None:
            ready.set()
            await anyio.sleep(0)
            data.append(1)

        async def reader() -> None:
            await ready.wait()
            assert data, "read before the data was written"

        for outcome in await run.concurrently(publisher, reader):
            outcome.unwrap()

    return scenario


def stream_check_then_receive() -> testing.Scenario:
    """Two consumers see an item in the stream's buffer; only one gets it."""

    async def scenario(run: testing.Run) -> None:
        send, receive = anyio.create_memory_object_stream[int](1)
        await send.send(1)

        async def consumer() -> None:
            if receive.statistics().current_buffer_used:
                await anyio.sleep(0)
                receive.receive_nowait()

        with send, receive:
            for outcome in await run.concurrently(consumer, consumer):
                outcome.unwrap()

    return scenario


RACES_ANYIO = {
    "sleep0": lost_update_through(lambda: anyio.sleep(0)),
    "checkpoint": lost_update_through(anyio.lowlevel.checkpoint),
    "event": event_set_too_early(),
    "lock": lock_released_between(anyio.Lock, anyio.lowlevel.checkpoint),
    "semaphore": lock_released_between(lambda: anyio.Semaphore(1), anyio.lowlevel.checkpoint),
    "condition": if_instead_of_while(),
    "stream": stream_check_then_receive(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("race", sorted(RACES_ANYIO))
def test_a_race_through_anyio_is_found_replayed_and_shrunk(race: str, backend: str) -> None:
    scenario = RACES_ANYIO[race]
    minimum = fewest_preemptions(scenario, backend)
    for strategy in (testing.PCT(0), testing.RandomWalk(0)):
        result = testing.explore(scenario, strategy=strategy, schedules=500, backend=backend)
        failure = result.failure
        assert failure is not None, f"{race} not found by {strategy}"
        assert not isinstance(failure.error, testing.ScheduleFailure), failure.report()
        assert failure.timeline.preemptions == minimum, failure.report()
        for other in BACKENDS:
            again = testing.replay(scenario, failure.token, backend=other)
            assert again is not None and again.timeline.steps == failure.timeline.steps


def asyncio_races() -> dict[str, testing.Scenario]:
    async def queue_race(run: testing.Run) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        queue.put_nowait(1)

        async def consumer() -> None:
            if not queue.empty():
                await asyncio.sleep(0)
                queue.get_nowait()

        for outcome in await run.concurrently(consumer, consumer):
            outcome.unwrap()

    return {
        "asyncio.sleep": lost_update_through(lambda: asyncio.sleep(0)),
        # asyncio's lock does not yield when it is free: the pause is what opens the window
        "asyncio.Lock": lock_released_between(asyncio.Lock, lambda: asyncio.sleep(0)),
        "asyncio.Queue": queue_race,
    }


@pytest.mark.parametrize("race", sorted(asyncio_races()))
def test_a_race_through_plain_asyncio_is_found_and_replayed(race: str) -> None:
    scenario = asyncio_races()[race]
    minimum = fewest_preemptions(scenario, "asyncio")
    result = testing.explore(scenario, strategy=testing.PCT(0), backend="asyncio")
    failure = result.failure
    assert failure is not None, f"{race} not found"
    assert failure.timeline.preemptions == minimum, failure.report()
    again = testing.replay(scenario, failure.token, backend="asyncio")
    assert again is not None and again.timeline.format() == failure.timeline.format()


def woken_last(k: int) -> testing.Scenario:
    """Two tasks of k checkpoints and a third blocked on an event the last step sets:
    C(2k + 2, k + 1) * (2k + 3) schedules."""

    async def scenario(run: testing.Run) -> None:
        event = anyio.Event()
        finished = 0

        async def worker() -> None:
            nonlocal finished
            for _ in range(k):
                await anyio.lowlevel.checkpoint()
            finished += 1
            if finished == 2:
                event.set()

        await run.concurrently(event.wait, worker, worker)

    return scenario


Spawn = Callable[..., Awaitable[Any]]
Log = list[tuple[object, ...]]


async def every_primitive_in_turn(log: Log, spawn: Spawn) -> None:
    """Six tasks through sleep(0), checkpoints, an event, a lock, a memory stream, a
    semaphore, a condition and a timer, logging what each does as it goes; *spawn* runs
    them concurrently (a task group, or the race finder)."""
    event, lock = anyio.Event(), anyio.Lock()
    send, receive = anyio.create_memory_object_stream[int](1)
    semaphore, condition = anyio.Semaphore(1), anyio.Condition()

    async def setter() -> None:
        for i in range(3):
            log.append(("setter", i))
            await anyio.sleep(0)
        event.set()
        log.append(("setter", "set"))
        async with lock:
            log.append(("setter", "locked"))
            await anyio.sleep(0)

    async def waiter() -> None:
        log.append(("waiter", "waits"))
        await event.wait()
        log.append(("waiter", "woke"))
        async with lock:
            log.append(("waiter", "locked"))
            await anyio.lowlevel.checkpoint()

    async def sender() -> None:
        async with send:
            for i in range(5):
                log.append(("sender", i))
                await anyio.lowlevel.checkpoint()
                await send.send(i)

    async def receiver() -> None:
        async with receive:
            async for item in receive:
                log.append(("receiver", item))
                async with semaphore:
                    await anyio.sleep(0)
                    log.append(("receiver", "in", item))

    async def notifier() -> None:
        for i in range(3):
            async with semaphore:
                log.append(("notifier", i))
                await anyio.lowlevel.checkpoint()
        async with condition:
            log.append(("notifier", "notifies"))
            condition.notify_all()

    async def sleeper() -> None:
        async with condition:
            log.append(("sleeper", "waits"))
            await condition.wait()
        await anyio.sleep(0.001)
        log.append(("sleeper", "slept"))

    await spawn(setter, waiter, sender, receiver, notifier, sleeper)


async def in_a_task_group(*functions: Callable[[], Awaitable[None]]) -> None:
    async with anyio.create_task_group() as group:
        for function in functions:
            group.start_soon(function)


def plain_asyncio_log(program: Callable[[Log, Spawn], Awaitable[None]]) -> Log:
    """What *program* logs in a plain asyncio run, its tasks in a task group: on the virtual
    clock the finder runs on, which moves only when nothing is ready, as on a machine fast
    enough (on the real clock, a 1 ms sleep ended before another task's last step in the
    clean-clone CI on a loaded machine, and the plain log was the machine's speed's)."""
    log: Log = []
    options = testing.backend_options("asyncio", 0, virtual=True)
    anyio.run(program, log, in_a_task_group, backend="asyncio", backend_options=options)
    return log


def log_without_preemption(program: Callable[[Log, Spawn], Awaitable[None]], backend: str) -> Log:
    """What *program* logs in Exhaustive(0)'s one schedule, its tasks under the finder."""
    logs: list[Log] = []

    async def scenario(run: testing.Run) -> None:
        log: Log = []
        logs.append(log)
        await program(log, run.concurrently)

    result = testing.explore(scenario, strategy=testing.Exhaustive(0), backend=backend)
    assert result.exhausted and result.failure is None and result.schedules == 1
    return logs[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_without_preemption_runs_what_a_plain_asyncio_run_runs(backend: str) -> None:
    """The schedule with no preemption is the event loop's own order: step for step what a
    plain asyncio run of the same tasks does (trio's own scheduler reverses a batch of
    runnable tasks at random; the finder's order without preemption is the same on both
    here, where no step wakes two tasks out of their index order)."""
    plain = plain_asyncio_log(every_primitive_in_turn)
    assert len(plain) == 29  # (every task ran to its end)
    assert log_without_preemption(every_primitive_in_turn, backend) == plain


async def woken_together(log: Log, spawn: Spawn) -> None:
    """Three tasks woken by one step each, out of their index order: an event's waiters
    that began to wait last to first, then sleeps of one length armed last to first."""
    event = anyio.Event()

    def waiter(index: int) -> Callable[[], Awaitable[None]]:
        async def wait() -> None:
            for _ in range(3 - index):  # (the last task waits first)
                await anyio.sleep(0)
            log.append((index, "waits"))
            await event.wait()
            log.append((index, "woke"))
            for _ in range(3 - index):  # (and arms its timer first)
                await anyio.sleep(0)
            await anyio.sleep(0.01)
            log.append((index, "slept"))

        return wait

    async def setter() -> None:
        for _ in range(5):
            await anyio.sleep(0)
        event.set()

    await spawn(waiter(0), waiter(1), waiter(2), setter)


def test_tasks_woken_together_run_in_the_order_asyncio_woke_them() -> None:
    plain = plain_asyncio_log(woken_together)
    assert [i for i, what in plain if what == "woke"] == [2, 1, 0]
    assert [i for i, what in plain if what == "slept"] == [2, 1, 0]
    assert log_without_preemption(woken_together, "asyncio") == plain
    # trio's own order shuffles each batch of runnable tasks (seeded), wakes a cancel scope's
    # tasks in the order of a set and ends a sleep by cancelling its scope: by index there
    on_trio = log_without_preemption(woken_together, "trio")
    assert [i for i, what in on_trio if what == "woke"] == [0, 1, 2]


def spawning(how: str) -> Callable[[Log, Spawn], Awaitable[None]]:
    """Two tasks that each spawn children (*how*: an anyio task group, or asyncio's
    ``create_task``, ``gather`` or ``shield``), beside a third that only yields; every task
    logs its steps."""

    async def program(log: Log, spawn: Spawn) -> None:
        async def child(parent: int, name: str) -> None:
            log.append((parent, name, "a"))
            await anyio.sleep(0)
            log.append((parent, name, "b"))

        def parent(index: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                log.append((index, "a"))
                if how == "task group":
                    async with anyio.create_task_group() as group:
                        group.start_soon(child, index, "x")
                        group.start_soon(child, index, "y")
                        log.append((index, "b"))
                elif how == "create_task":
                    spawned = asyncio.create_task(child(index, "x"))
                    log.append((index, "b"))
                    await spawned
                elif how == "gather":
                    await asyncio.gather(child(index, "x"), child(index, "y"))
                else:
                    await asyncio.shield(child(index, "x"))
                log.append((index, "end"))

            return run

        async def yielder() -> None:
            for turn in range(4):
                log.append(("yielder", turn))
                await anyio.sleep(0)

        await spawn(parent(0), parent(1), yielder)

    return program


@pytest.mark.parametrize(
    ("how", "backend"),
    [
        ("task group", "asyncio"),
        ("task group", "trio"),
        ("create_task", "asyncio"),
        ("gather", "asyncio"),
        ("shield", "asyncio"),
    ],
)
def test_tasks_a_task_spawns_run_in_the_loop_order_without_preemption(
    how: str, backend: str
) -> None:
    """A task that a controlled task spawns is controlled too: queued behind the tasks already
    runnable, as a plain run queues it (free, it ran ahead of them at once: attack33 F3)."""
    program = spawning(how)
    plain = plain_asyncio_log(program)
    assert plain.index((0, "x", "a")) > plain.index(("yielder", 0))  # (behind the others)
    log = log_without_preemption(program, backend)
    if backend == "asyncio":
        # (a task group's host learns that its last child ended in a done callback, which
        # runs in the loop's next iteration: it wakes behind the yielder's next step)
        assert log == plain
    else:
        # trio wakes the host as its last child ends, in the same batch as the yielder's
        # next step; the finder's order in a batch is by index
        last = plain.index(("yielder", 2)) + 1
        assert log[:last] == plain[:last]
        assert log[last:] == [(0, "end"), (1, "end"), ("yielder", 3)]


async def cancelled_children(log: Log, spawn: Spawn) -> None:
    """Three tasks: two whose children are cancelled at different steps (through a scope
    around a task group, and through the task group's own scope), each child logging its
    clean-up, and one whose child ends normally; each task logs its end."""

    async def child(name: str) -> None:
        log.append((name, "waits"))
        try:
            await anyio.sleep(10)
        finally:
            log.append((name, "cleans up"))

    async def around() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(child, "a0")
                await anyio.sleep(0)
                scope.cancel()
        log.append(("around", "end"))

    async def own() -> None:
        # (one child: a task group cancels its children in the order of a set, by memory
        # address, in a plain run too)
        async with anyio.create_task_group() as group:
            group.start_soon(child, "o0")
            for _ in range(2):
                await anyio.sleep(0)
            group.cancel_scope.cancel()
        log.append(("own", "end"))

    async def ends_normally() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 0)
        log.append(("ends normally", "end"))

    await spawn(around, own, ends_normally)


def test_cancelled_children_clean_up_in_the_order_asyncio_runs_them() -> None:
    # anyio retries a pending cancellation once per loop iteration, and a task group's host
    # learns of a child's end in a done callback: with callbacks run at once, not in the
    # loop's order, the clean-ups and ends came in another order (attack34 F1-F3)
    plain = plain_asyncio_log(cancelled_children)
    assert len(plain) == 7
    assert log_without_preemption(cancelled_children, "asyncio") == plain


def publish_in_a_child(*, reader_expects: object) -> testing.Scenario:
    """Task 0 spawns a child that publishes a value; task 1, made runnable before the child,
    reads it once and checks it is *reader_expects*."""

    async def scenario(run: testing.Run) -> None:
        box: dict[str, object] = {"value": None}
        seen: list[object] = []

        async def publisher() -> None:
            async def child() -> None:
                box["value"] = 1

            async with anyio.create_task_group() as group:
                group.start_soon(child)

        async def reader() -> None:
            seen.append(box["value"])

        for outcome in await run.concurrently(publisher, reader):
            outcome.unwrap()
        assert seen == [reader_expects], f"the reader saw {seen[0]!r}"

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_every_plain_run_does_with_a_child_takes_no_preemption(backend: str) -> None:
    # every plain run: the reader runs before the child, which the loop queued behind it
    misses_the_child = publish_in_a_child(reader_expects=1)
    assert fewest_preemptions(misses_the_child, backend) == 0
    # so a program counting on that order fails only where the child is run ahead: one
    # preemption, not a failure reported as what a plain run does
    counts_on_order = publish_in_a_child(reader_expects=None)
    assert fewest_preemptions(counts_on_order, backend) == 1


async def lost_update_between_children(run: testing.Run) -> None:
    """One controlled task spawns two children that each add 1 to a count through a read, a
    checkpoint and a write; the second starts three checkpoints late, so in the loop's own
    order the first has written before it reads."""
    count = [0]

    async def add(late: int) -> None:
        for _ in range(late):
            await anyio.sleep(0)
        value = count[0]
        await anyio.sleep(0)
        count[0] = value + 1

    async def parent() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(add, 0)
            group.start_soon(add, 3)

    for outcome in await run.concurrently(parent):
        outcome.unwrap()
    assert count[0] == 2, f"an update lost: {count[0]}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_race_between_children_is_found_shrunk_and_replayed(backend: str) -> None:
    # free, the children ran in the loop's order only: never found
    assert fewest_preemptions(lost_update_between_children, backend) == 1
    result = testing.explore(lost_update_between_children, schedules=500, backend=backend)
    failure = result.failure
    assert failure is not None and "an update lost: 1" in str(failure.error)
    assert failure.timeline.preemptions == 1
    assert failure.timeline.tasks == ("parent", "parent/add", "parent/add")
    replayed = testing.replay(lost_update_between_children, failure.token, backend=backend)
    assert replayed is not None and str(replayed.error) == str(failure.error)


def parent_of_two(k: int) -> testing.Scenario:
    """One task that spawns two children of *k* checkpoints each and waits for them."""

    async def scenario(run: testing.Run) -> None:
        async def child() -> None:
            for _ in range(k):
                await anyio.sleep(0)

        async def parent() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(child)
                group.start_soon(child)

        await run.concurrently(parent)

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_counts_the_interleavings_of_spawned_children(backend: str) -> None:
    """The children take k + 1 steps each, interleaved every way; their parent's steps (the
    first, and the last once both ended) are never a choice."""
    for k in (1, 2, 3):
        result = testing.explore(
            parent_of_two(k), strategy=testing.Exhaustive(32), schedules=10_000, backend=backend
        )
        assert result.exhausted and not result.found
        assert result.schedules == math.comb(2 * k + 2, k + 1)


def after_many_children(scenario: testing.Scenario, children: int = 40) -> testing.Scenario:
    """*scenario*, after one task spawned *children* children one at a time and waited for
    each: tasks that ended long before the ones that race, as a driver that spawns a task
    per request has."""

    async def spawned_before(run: testing.Run) -> None:
        async def parent() -> None:
            for _ in range(children):
                async with anyio.create_task_group() as group:
                    group.start_soon(anyio.sleep, 0)

        for outcome in await run.concurrently(parent):
            outcome.unwrap()
        await scenario(run)

    return spawned_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_children_that_ended_long_ago_change_no_count_and_no_race(backend: str) -> None:
    """The finder forgets children once they ended (a run's cost stays linear in the tasks
    it spawns): that changes neither the interleavings Exhaustive counts nor a race found,
    shrunk and replayed after them."""
    result = testing.explore(
        after_many_children(parent_of_two(2)),
        strategy=testing.Exhaustive(32),
        schedules=10_000,
        backend=backend,
    )
    assert result.exhausted and not result.found
    assert result.schedules == math.comb(6, 3)
    late = after_many_children(lost_update_between_children)
    result = testing.explore(late, schedules=500, backend=backend)
    failure = result.failure
    assert failure is not None and "an update lost: 1" in str(failure.error)
    assert failure.timeline.preemptions == 1
    replayed = testing.replay(late, failure.token, backend=backend)
    assert replayed is not None and str(replayed.error) == str(failure.error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pct_finds_a_race_behind_a_long_prefix_of_ended_children(backend: str) -> None:
    """PCT's change points fall among choice points only: a prefix of 400 steps with one
    task runnable at each (a driver spawning a task per request and waiting for it) took
    them all before, and the race after it went unfound in 100 schedules (attack61 F4)."""
    late = after_many_children(lost_update_between_children, children=200)
    result = testing.explore(
        late, strategy=testing.PCT(0), schedules=100, backend=backend, shrink=False
    )
    assert result.failure is not None and "an update lost" in str(result.failure.error)


def a_burst_of_requests(requests: int) -> testing.Scenario:
    """Two tasks each spawn *requests* tasks at once (a task per request), each of which
    takes one checkpoint: with virtual time standing still all along."""

    async def scenario(run: testing.Run) -> None:
        handled = [0]

        async def handle() -> None:
            await anyio.lowlevel.checkpoint()
            handled[0] += 1

        async def spawner() -> None:
            async with anyio.create_task_group() as group:
                for _ in range(requests):
                    group.start_soon(handle)

        for outcome in await run.concurrently(spawner, spawner):
            outcome.unwrap()
        assert handled[0] == 2 * requests

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_tasks_that_end_are_progress_no_livelock(backend: str) -> None:
    """Each of 300 spawned tasks takes two steps and ends, time standing still: 600 steps in
    a row, past a budget of 400, and no livelock (attack61 F2: a StepBudgetError). A task
    that ends starts the budget again; a livelock after such tasks is still one, named so,
    not "steady progress" (attack61 F3)."""
    limits = testing.Limits(max_steps=400)
    result = testing.explore(
        a_burst_of_requests(150), strategy=testing.RandomWalk(0), schedules=3,
        backend=backend, limits=limits,
    )  # fmt: skip
    assert result.failure is None, result.failure.report()

    async def livelock_after_children(run: testing.Run) -> None:
        flags = [False, False]

        async def poll(me: int) -> None:
            while not flags[1 - me]:  # each waits for the other: neither ever sets its own
                await anyio.sleep(0)
            flags[me] = True

        for outcome in await run.concurrently(partial(poll, 0), partial(poll, 1)):
            outcome.unwrap()

    result = testing.explore(
        after_many_children(livelock_after_children, children=40),
        strategy=testing.RandomWalk(0), schedules=1, backend=backend, limits=limits,
        shrink=False,
    )  # fmt: skip
    failure = result.failure
    assert failure is not None and isinstance(failure.error, testing.StepBudgetError)
    assert str(failure.error).startswith("livelock"), failure.error
    assert not failure.error.steady_progress


@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_counts_with_a_blocked_task(backend: str) -> None:
    """Two tasks of k checkpoints each and a third blocked on an event the last step sets:
    the blocked task is never a choice, so the count is that of the two."""
    for k in (1, 2):
        scenario = woken_last(k)
        result = testing.explore(
            scenario, strategy=testing.Exhaustive(32), schedules=10_000, backend=backend
        )
        assert result.exhausted and not result.found
        # the workers take k + 1 steps each, interleaved every way; the blocked task's start
        # goes in any of the 2k + 3 places; its second step, once woken, is always the last
        assert result.schedules == math.comb(2 * k + 2, k + 1) * (2 * k + 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shrinking_gives_the_fewest_preemptions_among_three_tasks(backend: str) -> None:
    scenario = queue_overflow(lead=4)
    minimum = fewest_preemptions(scenario, backend)
    assert minimum == 2
    for seed in range(3):
        result = testing.explore(
            scenario, strategy=testing.RandomWalk(seed), schedules=2000, backend=backend
        )
        failure = result.failure
        assert failure is not None and failure.shrunk_from is not None
        assert failure.shrunk_from[1] > minimum  # found with more preemptions than needed
        assert failure.timeline.preemptions == minimum, failure.report()


async def a_lost_update_in_taking_tokens(run: testing.Run) -> None:
    """Two tasks each take 3 whole tokens (a token a millisecond) from one bucket, reading the
    count, yielding, then writing it less one: a task that reads between another's read and
    write takes a token twice. Attack27 (with a looser invariant): found by every strategy
    but Exhaustive(0); shrinking kept 63 (PCT) and 1,247 (random walk) preemptions of a
    2,400-step run, trying one-preemption schedules from the front while the race is at the
    end. Each try takes four steps and the second task begins two steps late, so that in the
    event loop's own order one's window never overlaps the other's: one preemption."""
    bucket = _WholeBucket(1000)
    granted = taken = 0

    async def take() -> bool:
        nonlocal granted, taken
        granted += bucket.refill()
        count = bucket.tokens
        await anyio.lowlevel.checkpoint()
        if count:
            bucket.tokens = count - 1
            taken += 1
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        return bool(count)

    async def needy(late: int) -> None:
        for _ in range(late):
            await anyio.lowlevel.checkpoint()
        got = 0
        with anyio.fail_after(60):  # (a timer: the spin rule's moves split the way to it)
            while got < 3:
                got += await take()

    await run.concurrently(lambda: needy(0), lambda: needy(2))
    assert taken <= granted, f"{taken} tokens taken, {granted} granted"


# (one strategy on each backend: each exploration shrinks runs of 2,464 steps, half a minute of
# CI's time for the pair)
@pytest.mark.parametrize(
    ("backend", "strategy"),
    [("asyncio", testing.PCT(1)), ("trio", testing.RandomWalk(0))],
    ids=["asyncio-pct", "trio-random"],
)
def test_a_lost_update_late_in_a_long_run_is_shrunk_to_the_fewest_preemptions(
    backend: str, strategy: testing.Strategy
) -> None:
    minimum = fewest_preemptions(a_lost_update_in_taking_tokens, backend)
    assert minimum == 1
    runs = 0

    async def counted(run: testing.Run) -> None:
        nonlocal runs
        runs += 1
        await a_lost_update_in_taking_tokens(run)

    result = testing.explore(counted, strategy=strategy, schedules=50, backend=backend)
    failure = result.failure
    assert failure is not None and failure.shrunk_from is not None
    assert failure.shrunk_from[1] > minimum
    assert failure.timeline.preemptions == minimum, failure.report()
    # the fewest steps are not looked for with the whole default budget (500 runs of
    # 2,464 steps each, a minute) once dozens of tries brought nothing: 56-64 here
    assert runs - result.schedules < 100
    assert testing.replay(counted, failure.token, backend=backend)


# -- cancellation injection -----------------------------------------------------------------


def reference_holder(*, safe: bool) -> testing.Scenario:
    """Two users take a reference, wait, and give it back; without ``finally`` a cancellation
    at the wait leaks the reference."""

    async def scenario(run: testing.Run) -> None:
        references = 0

        async def user() -> None:
            nonlocal references
            references += 1
            try:
                await anyio.lowlevel.checkpoint()
                await anyio.sleep(0.01)
            finally:
                if safe:
                    references -= 1
            if not safe:
                references -= 1

        outcomes = await run.concurrently(user, user)
        assert all(outcome.ok for outcome in outcomes)
        assert references == 0, f"{references} reference(s) leaked"

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_injected_cancellation_finds_a_leak_and_replays(backend: str) -> None:
    leaky = reference_holder(safe=False)
    # without injection nothing cancels: no leak
    assert not testing.explore(leaky, schedules=100, backend=backend).found
    for strategy in (testing.PCT(0, cancel=1), testing.RandomWalk(0, cancel=1)):
        result = testing.explore(leaky, strategy=strategy, schedules=200, backend=backend)
        failure = result.failure
        assert failure is not None, f"not found by {strategy}"
        assert failure.token.strategy.endswith("-c1")
        assert "leaked" in str(failure.error)
        injected = [step for step in failure.timeline.steps if step.injected]
        assert len(injected) == 1
        assert "injected cancel" in failure.timeline.format()
        assert "=> cancelled" in failure.timeline.format()
        cancelled = -1 - injected[0].task
        assert cancelled in failure.token.decisions
        assert f"c{injected[0].task}" in str(failure.token)
        # the token replays (on the backend it was found on: trio and asyncio may deliver a
        # cancellation at different places, both of them real)
        again = testing.replay(leaky, str(failure.token), backend=backend)
        assert again is not None and again.timeline.steps == failure.timeline.steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_code_that_tidies_up_passes_injected_cancellations(backend: str) -> None:
    for strategy in (testing.PCT(0, cancel=2), testing.RandomWalk(0, cancel=2)):
        result = testing.explore(
            reference_holder(safe=True), strategy=strategy, schedules=200, backend=backend
        )
        assert result.failure is None, result.failure.report()


def test_cancellation_tokens_round_trip_and_bad_ones_are_einval() -> None:
    token = testing.ReplayToken("pct-d3-c1", 0, 4, "0000abcd", (0, 1, -2, 1, 0, 0))
    assert str(token) == "avcm7:pct-d3-c1:0:4:0000abcd:0.1.c1.1.0x2"
    assert testing.ReplayToken.parse(str(token)) == token
    for bad in ("avcm7:pct-d3:0:0:00000000:c", "avcm7:pct-d3:0:0:00000000:cc1"):
        with pytest.raises(testing.TokenError):
            testing.ReplayToken.parse(bad)
    for make in (lambda: testing.PCT(cancel=-1), lambda: testing.RandomWalk(cancel=65)):
        with pytest.raises(avcm.InvalidError):
            make()


# -- coverage -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_coverage_counts_distinct_schedules_and_points(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        async def worker() -> None:
            await sync_point("test.work", None)
            await anyio.lowlevel.checkpoint()

        await run.concurrently(worker, worker)

    # two tasks of two steps each: 6 interleavings, all of them found by exhaustive search
    result = testing.explore(scenario, strategy=testing.Exhaustive(32), backend=backend)
    assert result.exhausted and result.distinct_schedules == result.schedules == 6
    assert dict(result.points) == {"task.start": 12, "test.work": 12}
    # a random walk repeats itself: it stops once 50 schedules in a row added nothing
    walk = testing.explore(
        scenario, strategy=testing.RandomWalk(0), schedules=10_000, backend=backend,
        until_covered=50,
    )  # fmt: skip
    assert walk.covered and walk.distinct_schedules == 6 and walk.schedules < 10_000
    with pytest.raises(avcm.InvalidError):
        testing.explore(scenario, until_covered=0)


def _waiting_twice(events: Callable[[], tuple[anyio.Event, anyio.Event]]) -> testing.Scenario:
    """Two tasks that each wait twice on an event already set (a checkpoint in
    ``Event.wait``, no more): the first on the first of *events*, the second on the other."""

    async def scenario(run: testing.Run) -> None:
        def waiter(event: anyio.Event) -> Callable[[], Awaitable[None]]:
            async def wait() -> None:
                await event.wait()
                await event.wait()

            return wait

        pair = events()
        for event in pair:
            event.set()
        await run.concurrently(*(waiter(event) for event in pair))

    return scenario


def _two_events() -> tuple[anyio.Event, anyio.Event]:
    return anyio.Event(), anyio.Event()


def _one_event() -> tuple[anyio.Event, anyio.Event]:
    event = anyio.Event()
    return event, event


@pytest.mark.parametrize("backend", BACKENDS)
def test_coverage_counts_orders_of_conflicting_steps_apart_only(backend: str) -> None:
    # Two tasks of three steps (their start, two waits): C(6, 3) = 20 interleavings. Each on
    # an event of its own, their waits are independent, and only which start ran first
    # tells the orders of conflicting steps apart (a start synchronizes on nothing: it may
    # touch anything): 2.
    apart = testing.explore(
        _waiting_twice(_two_events), strategy=testing.Exhaustive(32), backend=backend
    )
    assert apart.exhausted and apart.schedules == apart.distinct_schedules == 20
    assert apart.distinct_orders == 2
    # On one event, the four waits conflict too: which start first (2), times the places of
    # one task's two waits among the four (C(4, 2) = 6), where they agree with the starts
    # or not: 12 orders (the 20 interleavings differ in 8 only by when a start came)
    shared = testing.explore(
        _waiting_twice(_one_event), strategy=testing.Exhaustive(32), backend=backend
    )
    assert shared.exhausted and shared.schedules == shared.distinct_schedules == 20
    assert shared.distinct_orders == 12
    # and a random walk stops once it met no new order for a while: all 2 of them
    walk = testing.explore(
        _waiting_twice(_two_events), strategy=testing.RandomWalk(0), schedules=10_000,
        backend=backend, until_covered=50,
    )  # fmt: skip
    assert walk.covered and walk.distinct_orders == 2 and walk.schedules < 10_000


def _orders(scenario: testing.Scenario, backend: str) -> int:
    result = testing.explore(scenario, strategy=testing.Exhaustive(32), backend=backend)
    assert result.exhausted
    return result.distinct_orders


def _lock_and_condition(shared: bool) -> testing.Scenario:
    """One task takes a lock twice, another waits twice in ``async with`` of a condition: of
    that lock if *shared*, else of a lock of its own."""

    async def scenario(run: testing.Run) -> None:
        lock = anyio.Lock()
        condition = anyio.Condition(lock if shared else anyio.Lock())

        async def on_the_lock() -> None:
            for _ in range(2):
                async with lock:
                    pass

        async def on_the_condition() -> None:
            for _ in range(2):
                async with condition:
                    pass

        await run.concurrently(on_the_lock, on_the_condition)

    return scenario


def _stapled(send_stapled: bool) -> testing.Scenario:
    """A task sends two items on a memory stream, through a stapled pair if *send_stapled*,
    while another receives them from its other end."""

    async def scenario(run: testing.Run) -> None:
        send, receive = anyio.create_memory_object_stream[int](2)
        stapled = StapledObjectStream(send, receive)

        async def sender() -> None:
            for item in range(2):
                await (stapled if send_stapled else send).send(item)

        async def receiver() -> None:
            for _ in range(2):
                await receive.receive()

        with send, receive:
            await run.concurrently(sender, receiver)

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_through_a_condition_or_a_stapled_stream_conflict_with_those_beneath(
    backend: str,
) -> None:
    # a condition synchronizes on its lock; a stapled stream on the memory stream it sends
    # on (attack65: counted as independent of them)
    assert _orders(_lock_and_condition(True), backend) > _orders(
        _lock_and_condition(False), backend
    )
    assert _orders(_stapled(True), backend) == _orders(_stapled(False), backend) > 2


def test_until_covered_is_for_strategies_that_draw_their_schedules() -> None:
    # depth first, an exhaustive search runs many schedules with no new order before the
    # next one (attack65: covered after 3 schedules with 1 of 2 orders)
    with pytest.raises(avcm.InvalidError, match="until_covered"):
        testing.explore(
            _waiting_twice(_two_events), strategy=testing.Exhaustive(32), until_covered=2
        )


@pytest.mark.parametrize(
    "strategy", [testing.Exhaustive(0), testing.PCT(0), testing.RandomWalk(0)], ids=repr
)
def test_asyncio_to_thread_is_waited_for(strategy: testing.Strategy) -> None:
    async def scenario(run: testing.Run) -> None:
        async def worker() -> None:
            with anyio.fail_after(0.0001):  # virtual time stands still while the thread works
                await asyncio.to_thread(time.sleep, 0.002)

        for outcome in await run.concurrently(worker, worker):
            outcome.unwrap()

    result = testing.explore(scenario, strategy=strategy, schedules=20, backend="asyncio")
    assert result.failure is None, result.failure.report()


async def spin_while_a_process_works(run: testing.Run, *, counting: bool = False) -> None:
    """One task spins under a deadline, the other waits for a process that takes real time:
    virtual time must not move by the spin rule meanwhile (real time passes for the child).
    With *counting*, the spin counts its rounds: it never only spins, and the process's
    end must come in all the same."""
    done = False

    async def worker() -> None:
        nonlocal done
        result = await anyio.run_process([sys.executable, "-c", "import time; time.sleep(0.2)"])
        assert result.returncode == 0
        done = True

    async def spinner() -> None:
        rounds = 0
        with anyio.fail_after(5):
            while not done:
                rounds += counting
                await anyio.sleep(0)

    for outcome in await run.concurrently(worker, spinner):
        outcome.unwrap()


@pytest.mark.parametrize("counting", [False, True], ids=["spin", "counting"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spin_does_not_move_time_while_a_process_works(backend: str, counting: bool) -> None:
    # io_timeout of an hour: a poll the spin rule asked for while the process worked, made
    # after its I/O had ended, waited all of it for nothing (asyncio: the old code hangs
    # here; with the default 10 s, each schedule took about 10 s and one in 20 ended in a
    # false TimeoutError). A spin that counts its rounds kept the process's end out for
    # ever: a false StepBudgetError on both backends.
    result = testing.explore(
        partial(spin_while_a_process_works, counting=counting),
        strategy=testing.PCT(0),
        schedules=3,
        backend=backend,
        limits=testing.Limits(io_timeout=3600),
    )
    assert result.failure is None, result.failure.report()


def failure_in_500_steps(task: Callable[[], Awaitable[None]], backend: str) -> testing.Failure:
    """The StepBudgetError of one schedule of *task* alone, with a budget of 500 steps."""

    async def scenario(run: testing.Run) -> None:
        for outcome in await run.concurrently(task):
            outcome.unwrap()

    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=1,
        backend=backend,
        limits=testing.Limits(max_steps=500),
    )
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.StepBudgetError)
    return result.failure


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spin_only_its_own_deadline_ends_reaches_it_at_the_step_budget(backend: str) -> None:
    """The spin rule never moves time to a deadline, but a spin that lasts the whole step
    budget with a deadline pending does: a real loop's clock reaches it while the task spins
    (this was a StepBudgetError)."""
    ended: list[float] = []

    async def scenario(run: testing.Run) -> None:
        async def spin() -> None:
            start = anyio.current_time()
            with anyio.move_on_after(0.5):
                while True:
                    await anyio.sleep(0)
            ended.append(anyio.current_time() - start)

        for outcome in await run.concurrently(spin):
            outcome.unwrap()

    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=1,
        backend=backend,
        limits=testing.Limits(max_steps=500),
    )
    assert result.failure is None, result.failure.report()
    assert ended == [0.5]
    assert 500 <= result.max_steps_seen < 1000


@pytest.mark.parametrize("backend", BACKENDS)
def test_steady_progress_past_the_budget_is_no_livelock(backend: str) -> None:
    """A task that changes its state at every step for longer than the budget: the error says
    the budget ran out while tasks kept changing state (not 'livelock'), and the report's
    timeline shows the first and last steps only. (Its loop counts up: the budget, spent,
    starts once again, as for a poll that counts its tries.)"""

    async def worker() -> None:
        for _ in range(3_000):
            await anyio.sleep(0)

    failure = failure_in_500_steps(worker, backend)
    message = str(failure.error)
    assert "kept changing state" in message and "livelock" not in message.replace("no livelock", "")
    assert "counting up (_ of task 0 (worker)) for twice the budget" in message
    # a count may be a poll's tries for what never comes: not said to be steady progress
    assert isinstance(failure.error, testing.StepBudgetError)
    assert not failure.error.steady_progress
    report = failure.report()
    assert "... 800 steps ..." in report
    assert len(report.splitlines()) < 300


@pytest.mark.parametrize("backend", BACKENDS)
def test_work_through_items_past_the_budget_is_steady_progress(backend: str) -> None:
    """A task that goes through a list of distinct items (pages to write, say), one step each,
    for longer than the budget: steady progress, which the error says (no verdict either way,
    for a caller such as the conformance suite)."""

    async def worker() -> None:
        for _page in [f"page {index:#x}" for index in range(3_000)]:
            await anyio.sleep(0)

    error = failure_in_500_steps(worker, backend).error
    assert isinstance(error, testing.StepBudgetError) and error.steady_progress
    assert "steady progress, no livelock seen" in str(error)


def watched(work: Callable[[], Awaitable[None]]) -> testing.Scenario:
    """*work* beside a watchdog that fails the run if it has not ended after a second."""

    async def scenario(run: testing.Run) -> None:
        done = anyio.Event()

        async def worker() -> None:
            await work()
            done.set()

        async def watchdog() -> None:
            await anyio.sleep(1.0)
            assert done.is_set(), "the work outlasted its watchdog"

        for outcome in await run.concurrently(worker, watchdog):
            outcome.unwrap()

    return scenario


async def steady_work() -> None:
    for _ in range(800):  # (more than the budget of 500 steps, less than twice)
        await anyio.sleep(0)


async def slow_work() -> None:
    await anyio.sleep(2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_verdict_after_the_budget_moved_the_clock_past_steady_work_says_so(
    backend: str,
) -> None:
    # Attack31: steady work longer than the budget beside a sleeper gets the clock moved to
    # the sleep's end (a poll that counts its tries looks the same), and the watchdog's
    # failure said nothing of it. Work that truly outlasts it gets no such note.
    def failure(work: Callable[[], Awaitable[None]]) -> testing.Failure:
        result = testing.explore(
            watched(work),
            strategy=testing.PCT(0),
            schedules=1,
            backend=backend,
            limits=testing.Limits(max_steps=500),
        )
        assert result.failure is not None
        assert "outlasted its watchdog" in str(result.failure.error)
        return result.failure

    moved = failure(steady_work)
    ((step, before, after),) = moved.timeline.budget_moves[:1]
    assert before == 0 and after == 1.0 and 500 <= step < 800
    report = moved.report()
    assert f"note: the step budget moved the clock on to the end of a sleep at step {step}" in (
        report.replace("\n    ", " ")
    )
    assert "raise Limits.max_steps" in report.replace("\n    ", " ")
    slow = failure(slow_work)
    assert slow.timeline.budget_moves == ()
    assert "note:" not in slow.report()


async def threads_of_a_task_and_its_child(run: testing.Run) -> None:
    """A controlled task and a task it spawns each wait for a worker thread."""

    async def spawner() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, time.sleep, 0.001)
            await anyio.to_thread.run_sync(time.sleep, 0.001)
            await anyio.lowlevel.checkpoint()

    async def worker() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.001)
        await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(spawner, worker):
        if not outcome.cancelled:
            outcome.unwrap()


async def a_child_waiting_when_its_parent_is_cancelled(run: testing.Run) -> None:
    async def parent() -> None:
        event = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(event.wait)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            event.set()

    async def other() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(parent, other):
        if not outcome.cancelled:
            outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("scenario", "cancel", "schedules"),
    [
        # trio: a task whose thread call a cancellation failed to abort was not seen
        # waiting for its thread (a false deadlock); asyncio: anyio retried the
        # cancellation of the spawned task every loop iteration and the threads' reports
        # never came in (a false runaway)
        (threads_of_a_task_and_its_child, 2, 20),
        # trio: the tasks an injected cancellation woke (the child's Event.wait aborted)
        # were put in the run queue while trio was taking its batch, and trio's clear()
        # dropped them: the run never ended (the old code hangs here on trio)
        (a_child_waiting_when_its_parent_is_cancelled, 1, 50),
    ],
    ids=["threads", "a waiting child"],
)
def test_injected_cancellations_are_no_false_alarm(
    scenario: testing.Scenario, cancel: int, schedules: int, backend: str
) -> None:
    result = testing.explore(
        scenario,
        strategy=testing.PCT(0, cancel=cancel),
        schedules=schedules,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_that_never_returns_ends_the_run_with_a_thread_wait_error(backend: str) -> None:
    # the thread blocks until the test lets it go: the run waits thread_timeout (0.2 s of
    # real time here, 60 by default) with nothing moving, then abandons the call (the old
    # code waited for ever)
    gate = threading.Event()

    async def scenario(run: testing.Run) -> None:
        async def worker() -> None:
            await anyio.to_thread.run_sync(gate.wait)

        async def other() -> None:
            await anyio.lowlevel.checkpoint()

        for outcome in await run.concurrently(worker, other):
            outcome.unwrap()

    try:
        result = testing.explore(
            scenario,
            strategy=testing.PCT(0),
            schedules=3,
            backend=backend,
            limits=testing.Limits(thread_timeout=0.2),
        )
    finally:
        gate.set()
    failure = result.failure
    assert failure is not None and result.schedules == 1
    assert isinstance(failure.error, testing.ThreadWaitError)
    assert not isinstance(failure.error, testing.DeadlockError)
    text = str(failure.error)
    assert "Limits.thread_timeout" in text and "task 0 (worker)" in text
    for bad in (0, -1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(avcm.InvalidError, match="thread_timeout"):
            testing.Limits(thread_timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_abandoned_while_it_works_may_still_call_back_into_the_loop(
    backend: str,
) -> None:
    # The thread outlives a small thread_timeout, then calls back into the loop: trio ran
    # the call in the task the run had abandoned, and asserted it was still waiting
    # (TrioInternalError); it now runs as an abandoned thread's call does.
    called = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        try:
            anyio.from_thread.run_sync(called.set)
        except anyio.RunFinishedError:
            called.set()  # the run ended first: the loop is gone, and says so

    async def scenario(run: testing.Run) -> None:
        async def worker() -> None:
            await anyio.to_thread.run_sync(slow)

        async def other() -> None:
            await anyio.sleep(1)

        for outcome in await run.concurrently(worker, other):
            outcome.unwrap()

    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=2,
        backend=backend,
        limits=testing.Limits(thread_timeout=0.05),
    )
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.ThreadWaitError)
    assert "Limits(thread_timeout=0.05)" in result.failure.replay_command
    assert called.wait(10)


NEVER = threading.Event()  # set by the test once it is done: a thread that never returns


async def a_thread_that_never_returns(run: testing.Run) -> None:
    async def worker() -> None:
        await anyio.to_thread.run_sync(NEVER.wait)

    for outcome in await run.concurrently(worker):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_replay_command_of_a_thread_that_never_returns_ends(backend: str) -> None:
    # anyio's worker threads on asyncio are no daemon threads: the replay used to print its
    # ThreadWaitError and then never exit, the interpreter waiting for the thread
    NEVER.clear()
    try:
        result = testing.explore(
            a_thread_that_never_returns,
            strategy=testing.PCT(0),
            schedules=1,
            backend=backend,
            limits=testing.Limits(thread_timeout=0.2),
        )
        assert result.failure is not None
        command = result.failure.replay_command
        assert command.endswith(f"--backend {backend} --thread-timeout 0.2")
        replayed = replay_as_printed(command, timeout=60)
    finally:
        NEVER.set()
    assert replayed.returncode == 1, replayed.stderr
    assert "ThreadWaitError: a worker thread did not report back in 0.2 s" in replayed.stdout


async def as_completed_lost_update(run: testing.Run) -> None:
    """Four workers that ``asyncio.as_completed`` starts, each taking as many steps as its
    number before a read-modify-write of a shared count (the last one yields inside it)."""
    count = [0]

    async def worker(number: int) -> int:
        for _ in range(number):
            await asyncio.sleep(0)
        seen = count[0]
        if number == 3:
            await asyncio.sleep(0)
        count[0] = seen + 1
        return number

    async def gather_as_completed() -> None:
        for next_done in asyncio.as_completed([worker(number) for number in range(4)]):
            await next_done
        assert count[0] == 4, f"lost update: {count[0]} of 4 counted"

    for outcome in await run.concurrently(gather_as_completed):
        outcome.unwrap()


class _Adder:
    """Adds its amount to a shared count, read and written a step apart: alike in its repr
    (the default, without the address) and in its steps to every other one."""

    def __init__(self, count: list[int], amount: int) -> None:
        self.count, self.amount = count, amount

    async def add(self) -> None:
        seen = self.count[0]
        await asyncio.sleep(0)
        self.count[0] = seen + self.amount


async def as_completed_adders_alike(run: testing.Run) -> None:
    """Three adders (1, 10, 100) that ``asyncio.as_completed`` starts, racing a fourth task's
    read-modify-write (1,000): which update is lost is all that tells them apart."""
    count = [0]
    adders = [_Adder(count, amount) for amount in (1, 10, 100)]

    async def drive() -> None:
        for next_done in asyncio.as_completed([adder.add() for adder in adders]):
            await next_done

    async def racer() -> None:
        await _Adder(count, 1000).add()

    for outcome in await run.concurrently(drive, racer):
        outcome.unwrap()
    assert count[0] == 1111, f"lost update: {count[0]} of 1111 counted"


@pytest.mark.parametrize(
    "scenario", [as_completed_lost_update, as_completed_adders_alike], ids=["args", "alike"]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tasks_as_completed_starts_from_a_set_replay_in_a_fresh_process(
    scenario: testing.Scenario, seed: int
) -> None:
    # as_completed makes its tasks in the order of a set of coroutines: memory addresses.
    # Their columns followed it, so the printed replay ran other tasks in a fresh process
    # ("replay diverged at step 7"), and a seed found another token there. Ordered by what
    # they run, adders alike in that were still taken in the set's order, and a replay lost
    # another update, or none and passed (attack40): they go in the order of the list given.
    result = testing.explore(scenario, strategy=testing.PCT(seed), schedules=200, backend="asyncio")
    assert result.failure is not None and "lost update" in str(result.failure.error)
    replayed = replay_as_printed(result.failure.replay_command, hash_seed=1000 + seed)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    # (the message's first line: pytest adds its own account of the assert below it)
    said = str(result.failure.error).splitlines()[0]
    assert said in replayed.stdout and "diverged" not in replayed.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_shrinking_keeps_injections_and_finds_the_fewest_preemptions(backend: str) -> None:
    # Exhaustive with cancellation injection: the fewest preemptions any failing schedule
    # with one injection has (here none)
    search = testing.explore(
        take_and_give_without_finally,
        strategy=testing.Exhaustive(0, cancel=1),
        schedules=1000,
        backend=backend,
    )
    assert search.failure is not None and search.failure.token.strategy == "exhaustive-p0-c1"
    fewest = search.failure.timeline.preemptions
    assert fewest == 0
    # a random walk finds it with preemptions (4); shrinking kept the injection (the old
    # shrinker tried no schedule with it, and stayed at 4) and reached the fewest
    result = testing.explore(
        take_and_give_without_finally,
        strategy=testing.RandomWalk(0, cancel=1),
        schedules=200,
        backend=backend,
    )
    failure = result.failure
    assert failure is not None and failure.shrunk_from is not None
    assert failure.shrunk_from[1] > fewest
    assert failure.timeline.preemptions == fewest
    assert sum(step.injected for step in failure.timeline.steps) == 1
    assert "leaked 1" in str(failure.error)
    again = testing.replay(take_and_give_without_finally, str(failure.token), backend=backend)
    assert again is not None and again.timeline.steps == failure.timeline.steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_injects_cancellations_everywhere_it_can(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        async def worker() -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()

        await run.concurrently(worker)

    plain = testing.explore(scenario, strategy=testing.Exhaustive(0), backend=backend)
    assert plain.exhausted and plain.schedules == 1 and plain.max_steps_seen == 4
    # one task of 4 steps: no injection, or one before any of its steps but the first (its
    # start: it has no cancel scope to cancel yet)
    one = testing.explore(scenario, strategy=testing.Exhaustive(0, cancel=1), backend=backend)
    assert one.exhausted and one.failure is None and one.schedules == 1 + 3
    # no second injection: the task is cancelled already
    two = testing.explore(scenario, strategy=testing.Exhaustive(0, cancel=2), backend=backend)
    assert two.exhausted and two.schedules == 1 + 3
    assert testing.Exhaustive(1, cancel=2).name == "exhaustive-p1-c2"
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(avcm.InvalidError, match="cancel"):
            testing.Exhaustive(0, cancel=bad)  # type: ignore[arg-type]


async def a_call_back_into_a_cancelled_scope(run: testing.Run) -> None:
    """A thread cancels its caller's scope, then calls back into the loop for a step under a
    lock: anyio on asyncio runs the call in a task it adds to that scope after the scope's
    cancellation was delivered, whose checkpoint then yields for ever waiting for a
    cancellation that never comes (a plain asyncio run spins for ever too; trio ends)."""
    lock = anyio.Lock()

    async def bump() -> None:
        async with lock:
            await anyio.sleep(0)

    async def worker() -> None:
        with anyio.CancelScope() as scope:

            def blocking() -> None:
                anyio.from_thread.run_sync(scope.cancel)
                anyio.from_thread.run(bump)

            await anyio.to_thread.run_sync(blocking)

    for outcome in await run.concurrently(worker):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_whose_tasks_spin_after_it_failed_still_ends(backend: str) -> None:
    # the old code reported the RunawayError, then hung for ever tearing the run down
    result = testing.explore(
        a_call_back_into_a_cancelled_scope,
        strategy=testing.PCT(0),
        schedules=2,
        backend=backend,
        limits=testing.Limits(runaway_steps=2000),
    )
    if backend == "trio":
        assert result.failure is None, result.failure.report()
    else:
        assert result.failure is not None
        assert isinstance(result.failure.error, testing.RunawayError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_waiting_for_what_a_task_does_after_another_thread_is_no_failure(
    backend: str,
) -> None:
    # No choice is made while a thread works; a thread blocked on a threading.Event that a
    # task sets only after another thread returned would wait for ever (the old code hung):
    # after a second of real time with nothing moving, choices go on
    async def scenario(run: testing.Run) -> None:
        gate = threading.Event()

        async def setter() -> None:
            await anyio.to_thread.run_sync(time.sleep, 0.001)
            gate.set()

        async def waiter() -> None:
            await anyio.to_thread.run_sync(gate.wait)

        for outcome in await run.concurrently(setter, waiter):
            outcome.unwrap()

    result = testing.explore(scenario, strategy=testing.PCT(0), schedules=1, backend=backend)
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_waiting_for_what_a_task_does_after_a_sleep_is_no_failure(backend: str) -> None:
    # Virtual time stood still for as long as any thread worked, so the sleeper never woke
    # to set the event, and the run ended in a ThreadWaitError after thread_timeout: once
    # the thread is seen waiting in a threading primitive with nothing moving, time passes
    # for the tasks' timers, as a real clock does meanwhile.
    async def scenario(run: testing.Run) -> None:
        gate = threading.Event()

        async def waiter() -> None:
            await anyio.to_thread.run_sync(gate.wait)

        async def sleeper() -> None:
            await anyio.sleep(1)
            gate.set()

        for outcome in await run.concurrently(waiter, sleeper):
            outcome.unwrap()

    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=1,
        backend=backend,
        limits=testing.Limits(thread_timeout=5),
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stalled_thread_with_no_timer_left_still_ends_in_a_thread_wait_error(
    backend: str,
) -> None:
    # time passes for the sleeper's polls, not for ever: once no task's timer is left the
    # run waits for the thread, up to thread_timeout
    gate = threading.Event()
    polls = 0

    async def scenario(run: testing.Run) -> None:
        async def waiter() -> None:
            await anyio.to_thread.run_sync(gate.wait)

        async def poller() -> None:
            nonlocal polls
            for _ in range(2):
                await anyio.sleep(0.5)
                polls += 1

        for outcome in await run.concurrently(waiter, poller):
            outcome.unwrap()

    try:
        result = testing.explore(
            scenario,
            strategy=testing.PCT(0),
            schedules=1,
            backend=backend,
            limits=testing.Limits(thread_timeout=2),
        )
    finally:
        gate.set()
    assert result.failure is not None, "the thread never returns: a ThreadWaitError"
    assert isinstance(result.failure.error, testing.ThreadWaitError)
    assert polls == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stalled_thread_is_seen_while_a_cancellation_is_retried(backend: str) -> None:
    # While the thread waits, a task cancels another that the scheduler holds: anyio on
    # asyncio retries the cancellation every loop iteration. Those retries counted as the
    # loop moving, so the thread never looked stalled: no choice, no time passing, and no
    # thread_timeout either, a run that hung for ever (the old code).
    async def scenario(run: testing.Run) -> None:
        gate = threading.Event()
        scopes: list[anyio.CancelScope] = []

        async def waiter() -> None:
            await anyio.to_thread.run_sync(gate.wait)

        async def spinner() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                while True:
                    await anyio.sleep(0)

        async def sleeper() -> None:
            await anyio.lowlevel.checkpoint()
            scopes[0].cancel()
            try:
                await anyio.sleep(1)
            finally:
                gate.set()

        for outcome in await run.concurrently(waiter, spinner, sleeper):
            outcome.unwrap()

    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=1,
        backend=backend,
        limits=testing.Limits(thread_timeout=10),
    )
    assert result.failure is None, result.failure.report()


def spin_until_a_deadline(kind: str) -> testing.Scenario:
    """A task polls a flag with sleep(0) that another sets once its wait times out: a real
    loop's clock reaches the deadline while the poller spins, and both end."""

    async def scenario(run: testing.Run) -> None:
        flag = [False]
        never = anyio.Event()

        async def poller() -> None:
            while not flag[0]:
                await anyio.sleep(0)

        async def waiter() -> None:
            if kind == "move_on_after":
                with anyio.move_on_after(0.1):
                    await never.wait()
            else:
                try:
                    with anyio.fail_after(0.1):
                        await never.wait()
                except TimeoutError:
                    pass
            flag[0] = True

        for outcome in await run.concurrently(poller, waiter):
            outcome.unwrap()

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["move_on_after", "fail_after"])
def test_a_spin_until_another_tasks_deadline_is_no_livelock(kind: str, backend: str) -> None:
    # the spin rule moves time to a sleep's timer, never to a deadline; the spin went on to
    # the step budget and was reported as a livelock at the first schedule
    for strategy in (testing.PCT(0), testing.Exhaustive(1)):
        result = testing.explore(
            spin_until_a_deadline(kind),
            strategy=strategy,
            schedules=4,
            backend=backend,
            limits=testing.Limits(max_steps=500),
        )
        assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spawned_task_polling_for_a_sleepers_flag_is_no_runaway(backend: str) -> None:
    # a task outside control that polls keeps the loop busy, so time never passed for the
    # sleeper that ends its poll: a RunawayError at the first schedule
    async def scenario(run: testing.Run) -> None:
        flag = [False]

        async def owner() -> None:
            async def helper() -> None:
                while not flag[0]:
                    await anyio.sleep(0)

            async with anyio.create_task_group() as group:
                group.start_soon(helper)

        async def setter() -> None:
            await anyio.sleep(0.1)
            flag[0] = True

        for outcome in await run.concurrently(owner, setter):
            outcome.unwrap()

    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=3,
        backend=backend,
        limits=testing.Limits(runaway_steps=3000),
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_work_a_run_leaves_that_respawns_and_cleans_up_acts_in_no_later_run(
    backend: str,
) -> None:
    # Reported (attack22): on trio the successors a ticker spawned while the race finder
    # waited for what the run left were out of its reach: they piled up from run to run (46 s
    # for 50 schedules) and acted in later runs; and a clean-up that outlasted the cancel
    # (shielded waits) acted in the next run, whose failure's token did not replay
    runs = [0]
    late: list[tuple[int, int]] = []  # (the run a tick belongs to, the run it acted in)

    async def scenario(run: testing.Run) -> None:
        runs[0] += 1
        mine = runs[0]

        def act() -> None:
            if runs[0] != mine:
                late.append((mine, runs[0]))

        async def tick() -> None:
            try:
                await anyio.sleep(7e-6)
                act()
                in_background(tick)  # its successor, a task of its own
            finally:
                with anyio.CancelScope(shield=True):
                    for _ in range(100):
                        await anyio.sleep(7e-6)
                act()

        async def starts_work() -> None:
            in_background(tick)
            await anyio.lowlevel.checkpoint()

        for outcome in await run.concurrently(starts_work, anyio.lowlevel.checkpoint):
            outcome.unwrap()

    result = testing.explore(scenario, strategy=testing.PCT(0), schedules=2, backend=backend)
    assert result.failure is None, result.failure.report()
    assert runs[0] == 2 and late == []


@pytest.mark.parametrize("strategy", ["pct", "exhaustive1"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_poll_counting_its_rounds_sees_what_a_sleeper_brings(backend: str, strategy: str) -> None:
    # Reported (attack21): a bounded retry, `for _ in range(n): if done: return; await
    # sleep(0)`, changes its state every round (its counter), so it never only spins: time
    # stood still for the unit's sleep and the run hit the step budget (StepBudgetError on
    # both backends). At the budget a sleep's end is reached now, as on a real loop.
    async def scenario(run: testing.Run) -> None:
        done = [False]

        async def unit() -> None:
            await anyio.sleep(1e-4)
            done[0] = True

        async def poller() -> None:
            for _ in range(1_000_000):
                if done[0]:
                    return
                await anyio.sleep(0)
            raise AssertionError("the unit never answered")

        for outcome in await run.concurrently(unit, poller):
            outcome.unwrap()

    result = testing.explore(
        scenario, strategy=strategies()[strategy](), schedules=3, backend=backend
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spin_with_no_timer_pending_is_still_a_livelock(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        async def poller() -> None:
            while True:
                await anyio.sleep(0)

        await run.concurrently(poller, poller)

    result = testing.explore(
        scenario, strategy=testing.PCT(0), backend=backend, limits=testing.Limits(max_steps=300)
    )
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.StepBudgetError)
    assert "livelock" in str(result.failure.error)


async def three_locks_in_a_ring(run: testing.Run) -> None:
    """Three tasks each take two of three locks, in a ring: a deadlock if each holds its first
    when the next takes it. Each begins two checkpoints after the one before it, so that in
    the event loop's own order the first holds both before the last takes its first: one or
    two preemptions, as the loop orders their start."""
    locks = [anyio.Lock() for _ in range(3)]

    def take(late: int, first: anyio.Lock, second: anyio.Lock) -> Callable[[], Awaitable[None]]:
        async def task() -> None:
            for _ in range(late):
                await anyio.lowlevel.checkpoint()
            async with first:
                await anyio.lowlevel.checkpoint()
                async with second:
                    await anyio.lowlevel.checkpoint()

        return task

    await run.concurrently(*(take(2 * i, locks[i], locks[(i + 1) % 3]) for i in range(3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deadlock_is_shrunk_to_the_fewest_preemptions(backend: str) -> None:
    minimum = fewest_preemptions(three_locks_in_a_ring, backend)
    assert minimum > 0
    result = testing.explore(
        three_locks_in_a_ring, strategy=testing.RandomWalk(0), schedules=500, backend=backend
    )
    failure = result.failure
    assert failure is not None and isinstance(failure.error, testing.DeadlockError)
    # found with more (the old code reported them as found), shrunk to the fewest it takes
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > minimum
    assert failure.timeline.preemptions == minimum
    again = testing.replay(three_locks_in_a_ring, failure.token, backend=backend)
    assert again is not None and isinstance(again.error, testing.DeadlockError)
    assert again.timeline.steps == failure.timeline.steps


async def a_deadlock_with_one_wait_shielded(run: testing.Run) -> None:
    """A deadlock in which one task waits inside a shielded scope, as avcm's own teardowns
    do: the run's cancellation cannot end that wait."""
    first, second = anyio.Event(), anyio.Event()

    async def shielded() -> None:
        with anyio.CancelScope(shield=True):
            await first.wait()
        second.set()

    async def plain() -> None:
        await second.wait()
        first.set()

    await run.concurrently(shielded, plain)


async def a_livelock_beside_a_shielded_wait(run: testing.Run) -> None:
    """One task waits shielded for a lock the other holds while it spins for ever: the step
    budget ends the run, and the shielded wait must not keep it from ending."""
    lock = anyio.Lock()
    taken = anyio.Event()

    async def spinner() -> None:
        async with lock:
            taken.set()
            while True:
                await anyio.lowlevel.checkpoint()

    async def shielded() -> None:
        await taken.wait()
        with anyio.CancelScope(shield=True):
            async with lock:
                pass

    await run.concurrently(spinner, shielded)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failure_beside_a_shielded_wait_is_reported_and_replays(backend: str) -> None:
    # the run's teardown could not cancel the shielded wait, and the task group waited for
    # it for ever: the exploration hung, with the failure found (an outside attack, attack17)
    for scenario, error in [
        (a_deadlock_with_one_wait_shielded, testing.DeadlockError),
        (a_livelock_beside_a_shielded_wait, testing.StepBudgetError),
    ]:
        result = testing.explore(
            scenario,
            strategy=testing.PCT(1),
            schedules=5,
            backend=backend,
            limits=testing.Limits(max_steps=200),
        )
        failure = result.failure
        assert failure is not None and isinstance(failure.error, error), scenario
        assert result.schedules == 1
        again = testing.replay(
            scenario, failure.token, backend=backend, limits=testing.Limits(max_steps=200)
        )
        assert again is not None and isinstance(again.error, error)
        assert again.timeline.steps == failure.timeline.steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spawned_poller_that_only_yields_lets_time_pass_soon(backend: str) -> None:
    # the spin rule, for tasks outside control: two looks a thousand of their steps apart
    # that see no state change let the sleeper's timer come (before, only the runaway
    # budget did: here a million polls)
    async def scenario(run: testing.Run) -> None:
        flag = [False]

        async def owner() -> None:
            async def helper() -> None:
                while not flag[0]:
                    PROGRESS["polls"] += 1  # a count the state check does not see
                    await anyio.sleep(0)

            async with anyio.create_task_group() as group:
                group.start_soon(helper)

        async def setter() -> None:
            await anyio.sleep(0.1)
            flag[0] = True

        for outcome in await run.concurrently(owner, setter):
            outcome.unwrap()

    PROGRESS["polls"] = 0
    result = testing.explore(
        scenario,
        strategy=testing.PCT(0),
        schedules=1,
        backend=backend,
        limits=testing.Limits(runaway_steps=1_000_000),
    )
    assert result.failure is None, result.failure.report()
    assert PROGRESS["polls"] < 10_000


@pytest.fixture
def contended_cpu() -> Iterator[None]:
    """A thread that never yields the interpreter of its own accord, and a long switch
    interval: every other thread, worker threads included, waits tens of milliseconds for
    each turn, as on a loaded machine."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    interval = sys.getswitchinterval()
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    sys.setswitchinterval(0.02)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        spinner.join()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("contended_cpu")
def test_threads_calling_back_stay_deterministic_on_a_contended_cpu(backend: str) -> None:
    # A thread's call back came in as soon as it arrived, while the loop still ran another
    # thread's (tasks outside control run on while threads work): whether it came before
    # or after that one ended was up to the machine (Exhaustive: "not deterministic", which
    # it checks at every schedule against the runs before)
    result = testing.explore(
        threads_calling_back_together,
        strategy=testing.Exhaustive(1),
        schedules=500,
        backend=backend,
    )
    assert result.exhausted and result.failure is None


async def deadline_tied_with_polls(run: testing.Run) -> None:
    """A deadline 0.3 s away and pollers sleeping 0.05 s at a time: the deadline and a
    poller's sixth wakeup fall due together, in every run."""
    done = False

    async def caller() -> None:
        nonlocal done
        with anyio.move_on_after(0.3):
            await anyio.sleep(1)
        done = True

    async def poller() -> None:
        while not done:
            await anyio.sleep(0.05)

    for outcome in await run.concurrently(caller, poller, poller):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_timers_tie_alike_in_every_run_of_an_exploration(backend: str) -> None:
    # Each run started its timers where the last run's clock stopped (0.3, 0.6,
    # 0.8999999999999999, ...): floating-point sums from there tied in some runs and not in
    # others, and Exhaustive said "not deterministic".
    first = testing.explore(
        deadline_tied_with_polls, strategy=testing.Exhaustive(1), schedules=500, backend=backend
    )
    assert first.exhausted and first.failure is None
    again = testing.explore(
        deadline_tied_with_polls, strategy=testing.Exhaustive(1), schedules=500, backend=backend
    )
    assert again.schedules == first.schedules


async def abandonable_thread_calling_back(run: testing.Run, *, asynchronous: bool) -> None:
    """A thread call abandoned on cancel whose thread calls back into the loop once, then
    returns: trio runs such a call back in its system nursery, not in the waiting task."""
    calls = [0]

    async def count() -> None:
        calls[0] += 1

    def work() -> int:
        if asynchronous:
            anyio.from_thread.run(count)
        else:
            anyio.from_thread.run_sync(calls.__setitem__, 0, calls[0] + 1)
        return 1

    async def caller() -> None:
        assert await anyio.to_thread.run_sync(work, abandon_on_cancel=True) == 1

    async def other() -> None:
        await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(caller, other):
        outcome.unwrap()
    assert calls[0] == 1


@pytest.mark.parametrize("asynchronous", [False, True], ids=["run_sync", "run"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_abandoned_on_cancel_may_call_back(backend: str, asynchronous: bool) -> None:
    # on trio its call back named no task, and the loop waited for the thread for ever
    result = testing.explore(
        partial(abandonable_thread_calling_back, asynchronous=asynchronous),
        strategy=testing.Exhaustive(1),
        limits=testing.Limits(thread_timeout=5),
        backend=backend,
    )
    assert result.exhausted and result.failure is None, result.failure and result.failure.report()


# -- what a run leaves running -----------------------------------------------------------------


def leaves_a_task(events: list[str], *, forever: bool) -> testing.Scenario:
    """A scenario whose run leaves a task of its own running when it ends, as a driver's
    background work does: a lazy timer that fires once 50 ms later, or (*forever*) a poller
    that ticks every 10 us for ever. *events* gets where each run began and ended, and the
    ticks."""
    runs = iter(range(1_000))

    async def scenario(run: testing.Run) -> None:
        number = next(runs)
        events.append(f"begin {number}")

        async def later() -> None:
            if forever:
                while True:
                    await anyio.sleep(10e-6)
                    events.append("tick")
            await anyio.sleep(0.05)
            events.append(f"late {number}")

        async def start() -> None:
            in_background(later)
            await anyio.lowlevel.checkpoint()

        for outcome in await run.concurrently(start, anyio.lowlevel.checkpoint):
            outcome.unwrap()
        events.append(f"end {number}")

    return scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_a_run_left_running_ends_before_the_next_run_begins(backend: str) -> None:
    events: list[str] = []
    scenario = leaves_a_task(events, forever=False)
    result = testing.explore(scenario, strategy=testing.PCT(0), schedules=3, backend=backend)
    assert result.failure is None and result.schedules == 3
    # else the timer fell due among the next run's steps, which a replay does not have
    assert events == [f"{what} {run}" for run in range(3) for what in ("begin", "end", "late")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_poller_a_run_left_running_is_looked_at_a_bounded_number_of_times(
    backend: str,
) -> None:
    # a poller ticking every 10 us for ever was waited for for a whole second of virtual time
    # after each run: 100,000 ticks, a conformance scenario took minutes
    events: list[str] = []
    scenario = leaves_a_task(events, forever=True)
    result = testing.explore(scenario, strategy=testing.PCT(0), schedules=2, backend=backend)
    assert result.failure is None and result.schedules == 2
    between = events[events.index("end 0") : events.index("begin 1")]
    assert 100 < between.count("tick") <= 1_100


async def background_task_made_by_a_task_factory_of_its_own(run: testing.Run) -> None:
    """A correct program (asyncio): a task puts in a task factory of its own for a while,
    which does not chain to the one in place, and makes a background task with it, whose
    thread call ends the others' wait."""
    done = anyio.Event()

    async def worker() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.02)
        done.set()

    def plain_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def starter() -> None:
        loop = asyncio.get_running_loop()
        old = loop.get_task_factory()
        loop.set_task_factory(plain_factory)
        try:
            in_background(worker)
        finally:
            loop.set_task_factory(old)
        await done.wait()

    async def waiter() -> None:
        await anyio.sleep(0)
        await done.wait()

    for outcome in await run.concurrently(starter, waiter):
        outcome.unwrap()


@pytest.mark.parametrize(("strategy", "schedules"), [("pct", 10), ("exhaustive1", 50)])
def test_a_task_made_by_a_task_factory_set_for_a_while_is_seen(
    strategy: str, schedules: int
) -> None:
    # asyncio only (task factories are asyncio's). The race finder keeps the loop's tasks
    # through a task factory of its own: a task made while the program's was in place was
    # not looked at for a wait on a thread, a false DeadlockError (attack20)
    result = testing.explore(
        background_task_made_by_a_task_factory_of_its_own,
        strategy=strategies()[strategy](),
        schedules=schedules,
        backend="asyncio",
    )
    assert result.failure is None, result.failure.report()


async def sleeps_of_one_length(run: testing.Run) -> None:
    """Five tasks each sleep 10 ms, begun one after the other; each notes when it woke. A
    sleep begun later ends later in every plain run (the clock moved meanwhile)."""
    woke: list[int] = []

    async def sleeper(index: int) -> None:
        await anyio.sleep(0.01)
        woke.append(index)

    for outcome in await run.concurrently(*[partial(sleeper, index) for index in range(5)]):
        outcome.unwrap()
    assert woke == list(range(5)), woke


@pytest.mark.parametrize("backend", BACKENDS)
def test_sleeps_of_one_length_end_in_the_order_they_began(backend: str) -> None:
    # On a virtual clock they end at one instant: asyncio's heap of timers took them as 0, 2,
    # 4, 1, 3, and Exhaustive(0), the plain run's order, failed (attack35 F1)
    result = testing.explore(sleeps_of_one_length, strategy=testing.Exhaustive(0), backend=backend)
    assert result.exhausted and result.failure is None, result.failure and result.failure.report()


async def a_task_another_cancels(run: testing.Run) -> None:
    """Task *a* sleeps; task *b* cancels *a*'s asyncio task (``Task.cancel()``: no scope of
    *a*'s is cancelled). Each ends with an outcome of its own."""
    victim: list[asyncio.Task[Any]] = []

    async def a() -> None:
        victim.append(asyncio.current_task())  # type: ignore[arg-type]
        await anyio.sleep(1)

    async def b() -> None:
        while not victim:
            await anyio.sleep(0)
        victim[0].cancel()

    outcomes = await run.concurrently(a, b)
    assert [(o.name, o.cancelled, o.error) for o in outcomes] == [
        ("a", True, None),
        ("b", False, None),
    ]


async def a_cancelled_child_gathered(run: testing.Run) -> None:
    """Two tasks each cancel a child of theirs, then gather it. Injected, a cancellation that
    reaches a task in that gather ends it: the gather's ``CancelledError`` is no error of
    anyio's scope around the task."""

    async def task() -> None:
        child = asyncio.create_task(asyncio.sleep(1))
        await asyncio.sleep(0)
        child.cancel()
        await asyncio.gather(child, return_exceptions=True)

    outcomes = await run.concurrently(task, task)
    assert len(outcomes) == 2 and all(o.error is None for o in outcomes), outcomes


@pytest.mark.parametrize(
    ("scenario", "strategy"),
    [
        (a_task_another_cancels, testing.Exhaustive(2)),
        (a_cancelled_child_gathered, testing.Exhaustive(1, cancel=1)),
    ],
    ids=["task_cancel", "gather_of_a_cancelled_child"],
)
def test_a_cancellation_no_scope_of_the_task_caught_ends_that_task_alone(
    scenario: testing.Scenario, strategy: testing.Strategy
) -> None:
    # asyncio only (trio cancels through scopes alone). Let out of the task, anyio's task
    # group took it for its own cancellation and cancelled the controller: explore() raised
    # CancelledError, or the task's outcome was missing (attack35 F3, F4)
    result = testing.explore(scenario, strategy=strategy, backend="asyncio")
    assert result.exhausted and result.failure is None, result.failure and result.failure.report()
