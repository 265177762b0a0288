"""A worker thread's timed wait is on the run's clock: a thread that serves a controlled task
and waits with a timeout in a ``threading`` or ``queue`` primitive times out only once the run's
virtual time passed its timeout, as a task's sleep ends. The run may hold the tasks for a second
of real time before it lets them go on beside a blocked thread: on the machine's clock such a
wait timed out before the task it waited for ever ran (attack47), a false failure."""

from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from avcm import testing
from tests.races import replay_as_printed

BACKENDS = ["asyncio", "trio"]


def passes(scenario: testing.Scenario, backend: str, **options: Any) -> testing.Exploration:
    """``testing.explore`` (one schedule of PCT(0) unless *options* say otherwise), which must
    report no failure."""
    options = {"strategy": testing.PCT(0), "schedules": 1, **options}
    result = testing.explore(scenario, backend=backend, **options)
    assert result.failure is None, result.failure.report()
    return result


class Signal:
    """What a thread waits for, with a timeout, and a task gives."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.queue: queue.Queue[int] = queue.Queue()
        self.condition = threading.Condition()
        self.given = False
        self.semaphore = threading.Semaphore(0)
        self.future: concurrent.futures.Future[bool] = concurrent.futures.Future()


def _queue_get(signal: Signal, timeout: float) -> bool:
    try:
        signal.queue.get(timeout=timeout)
    except queue.Empty:
        return False
    return True


def _wait_for(signal: Signal, timeout: float) -> bool:
    with signal.condition:
        return signal.condition.wait_for(lambda: signal.given, timeout)


def _give_condition(signal: Signal) -> None:
    with signal.condition:
        signal.given = True
        signal.condition.notify_all()


def _future_result(signal: Signal, timeout: float) -> bool:
    try:
        return signal.future.result(timeout)
    except concurrent.futures.TimeoutError:
        return False


# each kind: how a thread waits (True: given within the timeout), how a task gives
KINDS: dict[str, tuple[Callable[[Signal, float], bool], Callable[[Signal], object]]] = {
    "event": (lambda s, t: s.event.wait(t), lambda s: s.event.set()),
    "queue": (_queue_get, lambda s: s.queue.put(1)),
    "condition": (_wait_for, _give_condition),
    "semaphore": (lambda s, t: s.semaphore.acquire(timeout=t), lambda s: s.semaphore.release()),
    "future": (_future_result, lambda s: s.future.set_result(True)),
}


def waits_for_a_task(kind: str, timeout: float, steps: int) -> testing.Scenario:
    """A thread waits *timeout* seconds for what a task gives after a sleep of a tenth of a
    second (it ends only once the thread is blocked: time stands still while one works) and
    *steps* checkpoints."""
    wait, give = KINDS[kind]

    async def scenario(run: testing.Run) -> None:
        signal = Signal()

        async def waiter() -> None:
            given = await anyio.to_thread.run_sync(wait, signal, timeout)
            assert given, f"the thread's {kind} wait of {timeout} s timed out"

        async def giver() -> None:
            await anyio.sleep(0.1)
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            give(signal)

        for outcome in await run.concurrently(waiter, giver):
            outcome.unwrap()

    return scenario


@pytest.mark.parametrize(
    ("kind", "timeout", "steps"),
    [
        # half a second: the tasks go on only after the thread kept the run still for a second
        *((kind, 0.5, 0) for kind in sorted(KINDS)),
        # each step of the task comes a second of real time after the last while the thread
        # stays blocked: three of them outlasted a wait of two seconds on the machine's clock
        ("event", 2, 3),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_threads_timed_wait_for_what_a_task_gives_is_no_failure(
    backend: str, kind: str, timeout: float, steps: int
) -> None:
    passes(waits_for_a_task(kind, timeout, steps=steps), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_threads_timed_wait_ends_in_order_with_the_tasks_timers(backend: str) -> None:
    seen: list[tuple[str, float, object]] = []

    async def scenario(run: testing.Run) -> None:
        never = threading.Event()

        async def waiter() -> None:
            given = await anyio.to_thread.run_sync(never.wait, 0.5)
            seen.append(("thread timed out", anyio.current_time(), given))

        async def sleeper() -> None:
            start = anyio.current_time()
            await anyio.sleep(0.2)
            seen.append(("sleep ended", anyio.current_time() - start, None))
            await anyio.sleep(0.6)
            seen.append(("sleep ended", anyio.current_time() - start, None))

        for outcome in await run.concurrently(waiter, sleeper):
            outcome.unwrap()

    passes(scenario, backend)
    assert seen == [
        ("sleep ended", pytest.approx(0.2), None),
        ("thread timed out", pytest.approx(0.5), False),
        ("sleep ended", pytest.approx(0.8), None),
    ]


async def gives_too_late(run: testing.Run) -> None:
    """A thread waits half a second for what a task gives only after a second's sleep: it
    times out, in any event loop."""
    signal = threading.Event()

    async def waiter() -> None:
        given = await anyio.to_thread.run_sync(signal.wait, 0.5)
        assert given, "the thread timed out: the task gave only after a second"

    async def giver() -> None:
        await anyio.sleep(1)
        signal.set()

    for outcome in await run.concurrently(waiter, giver):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_that_times_out_for_real_is_found_and_replays(backend: str) -> None:
    result = testing.explore(gives_too_late, strategy=testing.PCT(0), schedules=3, backend=backend)
    assert result.failure is not None and result.schedules == 1
    assert "the thread timed out" in str(result.failure.error)
    replayed = replay_as_printed(result.failure.replay_command, hash_seed=7)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "the thread timed out" in replayed.stdout and "diverged" not in replayed.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_the_program_starts_waits_on_the_machines_clock(backend: str) -> None:
    # only threads that serve a task's call run in its context: another thread's wait is
    # untouched (it would otherwise wait for a clock no one moves for it)
    ended: list[bool] = []

    async def scenario(run: testing.Run) -> None:
        async def starter() -> None:
            thread = threading.Thread(target=lambda: ended.append(threading.Event().wait(0.01)))
            thread.start()
            await anyio.to_thread.run_sync(thread.join, 10)

        for outcome in await run.concurrently(starter):
            outcome.unwrap()

    passes(scenario, backend)
    assert ended == [False]


# -- what else may end a thread's wait (attack50) ----------------------------------------------


def _sleep_then(seconds: float, then: Callable[[], object]) -> None:
    time.sleep(seconds)
    then()


@pytest.mark.parametrize("giver", ["another call's thread", "a pool of the program's own"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timed_wait_does_not_end_while_a_thread_that_may_end_it_works(
    backend: str, giver: str
) -> None:
    # the giver works for a second and a half of real time (no virtual time: a thread's work
    # takes none); the waiter stalled after one second, and its wait timed out though the
    # giver was still at work (another call's thread: Exhaustive also said "not
    # deterministic" with a second's work)
    got: list[bool] = []

    async def scenario(run: testing.Run) -> None:
        signal = threading.Event()

        async def waiter() -> None:
            got.append(await anyio.to_thread.run_sync(signal.wait, 5))

        async def worker() -> None:
            await anyio.to_thread.run_sync(_sleep_then, 1.5, signal.set)

        def from_a_pool() -> bool:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(_sleep_then, 1.5, signal.set)
                return signal.wait(5)

        async def pooled() -> None:
            got.append(await anyio.to_thread.run_sync(from_a_pool))

        tasks = [waiter, worker] if giver == "another call's thread" else [pooled]
        for outcome in await run.concurrently(*tasks):
            outcome.unwrap()

    passes(scenario, backend)
    assert got == [True]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_whose_caller_left_may_wait_for_a_tasks_timer(backend: str) -> None:
    # its caller leaves on a deadline (abandon_on_cancel); its timed wait is for an event a
    # task sets once a later sleep ends. The run held that task till the thread handed in its
    # report, and the thread waited for the task: ThreadWaitError after thread_timeout
    got: list[tuple[bool, float]] = []

    async def scenario(run: testing.Run) -> None:
        signal = threading.Event()
        start = anyio.current_time()

        def wait() -> None:
            got.append((signal.wait(5), 0.0))

        async def leaver() -> None:
            with anyio.move_on_after(0.3):
                await anyio.to_thread.run_sync(wait, abandon_on_cancel=True)

        async def setter() -> None:
            await anyio.sleep(1)
            got.append((True, anyio.current_time() - start))
            signal.set()

        for outcome in await run.concurrently(leaver, setter):
            outcome.unwrap()

    passes(scenario, backend, limits=testing.Limits(thread_timeout=10))
    assert sorted(got) == [(True, 0.0), (True, pytest.approx(1.0))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_the_machines_wait_refuses_is_refused_as_there(backend: str) -> None:
    # nan ends at once; infinity and more than threading.TIMEOUT_MAX raise OverflowError
    got: list[object] = []

    def wait(timeout: float) -> object:
        try:
            return threading.Event().wait(timeout)
        except OverflowError:
            return OverflowError

    async def scenario(run: testing.Run) -> None:
        async def waiter() -> None:
            for timeout in (math.nan, math.inf, 1e10):
                got.append(await anyio.to_thread.run_sync(wait, timeout))

        for outcome in await run.concurrently(waiter):
            outcome.unwrap()

    passes(scenario, backend)
    assert got == [False, OverflowError, OverflowError]


@pytest.mark.parametrize("timeout", [2.0, None])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_thread_may_wait_for_the_timer_it_outlasts(
    backend: str, timeout: float | None
) -> None:
    # with the chance that the thread outlasts the sleep taken, time stood still till the
    # thread handed in its report, and the thread waited for what the sleeper sets: a
    # ThreadWaitError on trio (attack51)
    async def scenario(run: testing.Run) -> None:
        signal = threading.Event()

        async def waiter() -> None:
            assert await anyio.to_thread.run_sync(signal.wait, timeout)

        async def sleeper() -> None:
            await anyio.sleep(1)
            signal.set()

        for outcome in await run.concurrently(waiter, sleeper):
            outcome.unwrap()

    result = passes(
        scenario,
        backend,
        strategy=testing.Exhaustive(1, slow_threads=1),
        schedules=4,
        limits=testing.Limits(thread_timeout=10),
    )
    assert result.schedules == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timed_wait_that_ends_with_a_tasks_sleep_ends_first(backend: str) -> None:
    # as in plain runs (attack51: 6 of 6 timed the wait out first), not never
    got: list[bool] = []

    async def scenario(run: testing.Run) -> None:
        signal = threading.Event()

        async def waiter() -> None:
            got.append(await anyio.to_thread.run_sync(signal.wait, 1.0))

        async def sleeper() -> None:
            await anyio.sleep(1.0)
            signal.set()

        for outcome in await run.concurrently(waiter, sleeper):
            outcome.unwrap()

    passes(scenario, backend)
    assert got == [False]
