"""Worker threads that outlast timers (``slow_threads``).

A worker thread's work takes no virtual time: by default it returns before any timer falls due,
so a deadline around a thread call never fires first, whatever the thread does. With
``slow_threads=k`` a strategy also lets the threads at work outlast the next timer, up to *k*
times a schedule: the timer falls due first (a real loop's does when the thread takes longer),
as a decision of its own, in the timeline (``thread outlasts timer``) and the token (``t``).
"""

from __future__ import annotations

import errno
import itertools
import math
import operator
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings

import avcm
from avcm import testing
from avcm.testing import hypothesis as race

BACKENDS = ["asyncio", "trio"]


class Slots:
    def __init__(self) -> None:
        self.free = 1


async def slot_around_a_thread_call(
    run: testing.Run, *, abandon: bool, others: int = 1, right: bool = False
) -> None:
    """A user takes a slot and gives it back after a thread call with a deadline; on the
    timeout path it forgets to (the bug), unless written *right* (every path gives it back).
    Other tasks only pass checkpoints."""
    slots = Slots()

    async def user() -> None:
        slots.free -= 1
        try:
            with anyio.fail_after(0.05):
                await anyio.to_thread.run_sync(time.sleep, 0.001, abandon_on_cancel=abandon)
                await anyio.lowlevel.checkpoint()
        except TimeoutError:
            if not right:
                return  # the slot is not given back
        slots.free += 1

    async def other() -> None:
        for _ in range(2):
            await anyio.lowlevel.checkpoint()

    await run.concurrently(user, *[other] * others)
    assert slots.free == 1, "slot leaked on the timeout path"


@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deadline_around_a_thread_falls_due_first_only_with_slow_threads(
    backend: str, abandon: bool
) -> None:
    scenario = partial(slot_around_a_thread_call, abandon=abandon)
    without = testing.explore(scenario, strategy=testing.Exhaustive(2), backend=backend)
    assert without.exhausted and without.failure is None

    found = testing.explore(
        scenario, strategy=testing.Exhaustive(0, slow_threads=1), backend=backend
    )
    failure = found.failure
    assert failure is not None
    assert isinstance(failure.error, AssertionError)
    timeline = failure.timeline
    assert timeline.preemptions == 0
    assert timeline.outlasted == 1
    (step,) = [step for step in timeline.steps if step.outlasted]
    assert (step.task, step.operation, step.point) == (0, "thread outlasts", "timer")
    # decided when the call began, the other task runnable: it runs on, then the deadline
    # falls due and the user goes on from its call
    assert step.time == 0
    later = timeline.steps[step.index + 1 :]
    assert [s.task for s in later if s.time == 0] == [1] * len([s for s in later if s.time == 0])
    assert any(s.task == 0 and s.time == pytest.approx(0.05) for s in later)
    assert testing.TIMER_FIRST in failure.token.decisions
    assert ".t." in str(failure.token)
    assert "1 timer(s) outlasted by a thread" in failure.report()
    assert "thread outlasts timer" in timeline.format()

    replayed = testing.replay(scenario, failure.token, backend=backend)
    assert replayed is not None and isinstance(replayed.error, AssertionError)
    assert replayed.token.decisions == failure.token.decisions


@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_path_that_gives_back_passes_with_every_timer_outlasted(
    backend: str, abandon: bool
) -> None:
    result = explored_clean(
        partial(slot_around_a_thread_call, abandon=abandon, right=True),
        strategy=testing.Exhaustive(2, slow_threads=2),
        backend=backend,
    )
    assert result.distinct_schedules > 1


def explored_clean(scenario: Any, **options: Any) -> testing.Exploration:
    """``testing.explore(scenario, **options)`` to its end: the whole search ran, no
    schedule failed."""
    result = testing.explore(scenario, **options)
    assert result.exhausted and result.failure is None, result.failure and result.failure.report()
    return result


def strategies_with_slow_threads(
    slow: int = 1, exhaustive: int = 1
) -> dict[str, Callable[[], testing.Strategy]]:
    """Each strategy, with *slow* slow threads (Exhaustive with *exhaustive* preemptions)."""
    return {
        "pct": lambda: testing.PCT(0, slow_threads=slow),
        "random": lambda: testing.RandomWalk(0, slow_threads=slow),
        f"exhaustive{exhaustive}": lambda: testing.Exhaustive(exhaustive, slow_threads=slow),
    }


@pytest.mark.parametrize("strategy", list(strategies_with_slow_threads()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_strategy_finds_it_and_shrinks_it_to_no_preemption(
    backend: str, strategy: str
) -> None:
    scenario = partial(slot_around_a_thread_call, abandon=True, others=2)
    result = testing.explore(
        scenario,
        strategy=strategies_with_slow_threads()[strategy](),
        schedules=50,
        backend=backend,
    )
    failure = result.failure
    assert failure is not None
    assert failure.timeline.preemptions == 0
    assert failure.timeline.outlasted == 1
    replayed = testing.replay(scenario, failure.token, backend=backend)
    assert replayed is not None and type(replayed.error) is type(failure.error)


async def calls_in_a_row(run: testing.Run, *, calls: int, abandon: bool) -> None:
    """One task makes *calls* thread calls in a row, each under its own deadline, while
    another passes a checkpoint first: each call is one chance for its thread to outlast
    that deadline."""

    async def caller() -> None:
        for _ in range(calls):
            with anyio.move_on_after(1):
                await anyio.to_thread.run_sync(time.sleep, 0, abandon_on_cancel=abandon)

    async def other() -> None:
        await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(caller, other):
        outcome.unwrap()


@pytest.mark.parametrize("slow_threads", [0, 1, 2, 3])
@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_tries_every_way_of_outlasting_up_to_the_bound(
    backend: str, abandon: bool, slow_threads: int
) -> None:
    # Exhaustive(0): the event loop's own order, in which the caller's three calls are three
    # chances, every set of at most slow_threads of them outlasted
    calls = 3
    result = testing.explore(
        partial(calls_in_a_row, calls=calls, abandon=abandon),
        strategy=testing.Exhaustive(0, slow_threads=slow_threads),
        schedules=1000,
        backend=backend,
    )
    assert result.exhausted and result.failure is None
    ways = sum(math.comb(calls, outlasted) for outlasted in range(slow_threads + 1))
    assert result.schedules == result.distinct_schedules == ways


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_seed_lets_the_same_threads_outlast_the_same_timers(backend: str) -> None:
    def tokens() -> list[str]:
        found = []
        for seed in range(3):
            result = testing.explore(
                partial(slot_around_a_thread_call, abandon=False, others=2),
                strategy=testing.RandomWalk(seed, slow_threads=1),
                schedules=200,
                backend=backend,
                shrink_budget=0,
            )
            assert result.failure is not None
            found.append(f"{result.schedules} {result.failure.token}")
        return found

    assert tokens() == tokens()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_token_that_outlasts_a_timer_where_no_thread_works_diverges(backend: str) -> None:
    async def no_threads(run: testing.Run) -> None:
        async def sleeper() -> None:
            await anyio.sleep(1)

        await run.concurrently(sleeper)

    found = testing.explore(no_threads, strategy=testing.Exhaustive(0), backend=backend)
    assert found.failure is None
    for decisions in ((0, testing.TIMER_FIRST, 0), (testing.TIMER_FIRST, 0)):
        token = testing.ReplayToken("exhaustive-p0-s1", 0, 0, "00000000", decisions)
        with pytest.raises(testing.ReplayDivergedError, match="outlast the next timer"):
            testing.replay(no_threads, token, backend=backend)


def test_tokens_write_and_read_a_timer_outlasted() -> None:
    decisions = (0, 0, testing.TIMER_FIRST, -2, testing.TIMER_FIRST, testing.TIMER_FIRST, 1)
    token = testing.ReplayToken("random-s1", 3, 7, "0123abcd", decisions)
    assert str(token) == "avcm7:random-s1:3:7:0123abcd:0x2.t.c1.tx2.1"
    assert testing.ReplayToken.parse(str(token)) == token


@pytest.mark.parametrize("value", [-1, 65, 1.5, "1", None])
@pytest.mark.parametrize(
    "make",
    [
        lambda value: testing.PCT(0, slow_threads=value),
        lambda value: testing.RandomWalk(0, slow_threads=value),
        lambda value: testing.Exhaustive(1, slow_threads=value),
        lambda value: race.schedules(slow_threads=value),
    ],
    ids=["PCT", "RandomWalk", "Exhaustive", "schedules"],
)
def test_slow_threads_must_be_a_small_count(
    make: Callable[[object], object], value: object
) -> None:
    with pytest.raises(avcm.InvalidError) as caught:
        make(value)
    assert caught.value.errno == errno.EINVAL
    assert "slow_threads" in str(caught.value)


def test_strategies_with_slow_threads_say_so_in_their_names() -> None:
    assert testing.PCT(0, slow_threads=2).name == "pct-d3-s2"
    assert testing.RandomWalk(0, cancel=1, slow_threads=1).name == "random-c1-s1"
    assert testing.Exhaustive(1, slow_threads=1).name == "exhaustive-p1-s1"
    assert testing.PCT(0).name == "pct-d3"
    assert testing.RandomWalk(5, slow_threads=2).with_seed(6).name == "random-s2"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_hypothesis_route_finds_it_and_shrinks_it(backend: str) -> None:
    scenario = partial(slot_around_a_thread_call, abandon=True, others=2)

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(schedule=race.schedules(slow_threads=1))
    def check(schedule: race.Schedule) -> None:
        race.run_schedule(scenario, schedule, backend=backend)

    with pytest.raises(testing.RaceFound) as caught:
        check()
    timeline = caught.value.failure.timeline
    assert (timeline.preemptions, timeline.outlasted) == (0, 1)


class SlotMachine(race.RaceMachine):
    """A rule that takes a slot around a thread call with a deadline and leaks it on the
    timeout path; the invariant: every slot is back after a round."""

    async def setup(self) -> None:
        self.slots = Slots()

    @race.race_rule
    async def use(self) -> None:
        self.slots.free -= 1
        try:
            with anyio.fail_after(0.05):
                await anyio.to_thread.run_sync(time.sleep, 0.001, abandon_on_cancel=True)
        except TimeoutError:
            return
        self.slots.free += 1

    async def invariant(self) -> None:
        assert self.slots.free == 1, "slot leaked"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_race_machine_with_slow_threads_finds_it(backend: str) -> None:
    race.run_race_machine(SlotMachine, backend=backend, max_examples=30, max_parallel=1)
    with pytest.raises(AssertionError, match="1 timer\\(s\\) outlasted by a thread"):
        race.run_race_machine(
            SlotMachine,
            backend=backend,
            max_examples=100,
            max_parallel=1,
            slow_threads=1,
            hypothesis_settings=settings(deadline=None, database=None),
        )


# -- what a real loop does while threads work: never more -----------------------------------


async def call_back_under_a_deadline(run: testing.Run) -> None:
    """A thread that calls back into the loop (``from_thread.run_sync``) under a deadline far
    beyond what it takes: its call comes in and runs before any time passes."""

    def work() -> None:
        time.sleep(0.002)
        anyio.from_thread.run_sync(lambda: None)
        time.sleep(0.002)

    async def user() -> None:
        start = anyio.current_time()
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(work)
        assert anyio.current_time() == start, "virtual time moved while a thread worked"

    for outcome in await run.concurrently(user, user):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_calling_back_under_a_deadline_makes_no_time_pass(backend: str) -> None:
    # A call back that came in while the loop asked about the threads at work was left
    # waiting while virtual time moved on to the deadline (asyncio, most runs)
    for seed in range(3):
        result = testing.explore(
            call_back_under_a_deadline, strategy=testing.PCT(seed), schedules=8, backend=backend
        )
        assert result.failure is None, result.failure.report()


async def threads_of_spawned_tasks(run: testing.Run, *, tasks: int = 2) -> None:
    """Each task runs three thread calls of different speeds in a task group of its own (its
    children, under control too)."""

    async def user() -> None:
        async with anyio.create_task_group() as group:
            for seconds in (0.0, 0.001, 0.003):
                group.start_soon(anyio.to_thread.run_sync, time.sleep, seconds)

    for outcome in await run.concurrently(*[user] * tasks):
        outcome.unwrap()


def assert_exhausted_alike(scenario: testing.Scenario, backend: str) -> None:
    """Three explorations of *scenario* with one preemption at most exhaust it, with no
    failure, in as many schedules each: a deterministic run."""
    counts = set()
    for _ in range(3):
        result = testing.explore(scenario, strategy=testing.Exhaustive(1), backend=backend)
        assert result.exhausted and result.failure is None
        counts.add(result.schedules)
    assert len(counts) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_of_spawned_tasks_report_in_the_order_their_calls_began(
    backend: str,
) -> None:
    # on trio, their reports came in as the threads finished, and what the woken tasks did
    # next with them followed: Exhaustive found "not deterministic" in most explorations
    assert_exhausted_alike(threads_of_spawned_tasks, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_of_spawned_tasks_are_waited_for(backend: str) -> None:
    # trio serves call after call on one worker thread: waiting for as many reporting threads
    # as calls waited for the second report of a thread for ever (a DeadlockError)
    result = testing.explore(
        threads_of_spawned_tasks, strategy=testing.RandomWalk(0), schedules=6, backend=backend
    )
    assert result.failure is None, result.failure.report()


async def threads_outside_control(run: testing.Run) -> None:
    """The scenario's own tasks (outside control) make three thread calls of different speeds
    while two controlled tasks take turns."""

    async def user() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        for seconds in (0.0, 0.001, 0.003):
            group.start_soon(anyio.to_thread.run_sync, time.sleep, seconds)
        for outcome in await run.concurrently(user, user):
            outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_of_tasks_outside_control_change_no_schedule(backend: str) -> None:
    assert_exhausted_alike(threads_outside_control, backend)


async def deadline_after_others_started(run: testing.Run, *, others: int) -> None:
    """A waits at most 0.3 s for a thread; on the timeout path it counts on the other tasks
    having run their first step, which a real loop runs long before any deadline: a timer
    falls due only once every task waits."""
    started = [False] * others

    def other(index: int) -> Callable[[], object]:
        async def go() -> None:
            started[index] = True
            await anyio.lowlevel.checkpoint()

        return go

    async def user() -> None:
        try:
            with anyio.fail_after(0.3):
                await anyio.to_thread.run_sync(time.sleep, 0.001, abandon_on_cancel=True)
        except TimeoutError:
            assert all(started), "a deadline fell due while a task was runnable"

    for outcome in await run.concurrently(user, *map(other, range(others))):
        outcome.unwrap()


@pytest.mark.parametrize("others", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_timer_falls_due_while_a_task_is_runnable(backend: str, others: int) -> None:
    scenario = partial(deadline_after_others_started, others=others)
    for strategy in (
        testing.Exhaustive(1, slow_threads=1),
        testing.PCT(0, slow_threads=1),
        testing.RandomWalk(0, slow_threads=2),
    ):
        result = testing.explore(scenario, strategy=strategy, schedules=60, backend=backend)
        assert result.failure is None, result.failure.report()
        assert any(name == "timer" for name, _ in result.points), "no timer was outlasted"


async def abandoned_call_still_runs(run: testing.Run) -> None:
    """A thread call abandoned on cancel whose deadline fell due first still runs: a thread
    that outlasts a timer is one at work."""
    ran = threading.Event()

    def work() -> None:
        ran.set()
        time.sleep(0.005)

    async def user() -> None:
        try:
            with anyio.fail_after(0.5):
                await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            assert await anyio.to_thread.run_sync(ran.wait, 5), "the slow thread never ran"

    (outcome,) = await run.concurrently(user)
    outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_that_outlasts_its_deadline_was_taken_by_its_thread(backend: str) -> None:
    # anyio's worker on asyncio skips a call whose waiter was cancelled before it took it:
    # the deadline used to fall due before the worker took the call, which then never ran
    result = explored_clean(
        abandoned_call_still_runs, strategy=testing.Exhaustive(0, slow_threads=1), backend=backend
    )
    assert result.schedules == 2


async def poll_for_the_caller(run: testing.Run, *, right: bool) -> None:
    """A user takes a slot and waits at most 0.3 s for a thread; on the timeout path it
    forgets to give the slot back (the bug), unless written *right*. Another task polls,
    passing checkpoints, until the user is done: it is runnable for the whole thread call,
    so the deadline can fall due first only while it polls (as in a real loop, whose clock
    runs on while a task spins)."""
    slots = Slots()
    done = False

    async def user() -> None:
        nonlocal done
        slots.free -= 1
        try:
            with anyio.fail_after(0.3):
                await anyio.to_thread.run_sync(time.sleep, 0.001, abandon_on_cancel=True)
        except TimeoutError:
            if not right:
                done = True
                return
        slots.free += 1
        done = True

    async def poller() -> None:
        while not done:
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(user, poller):
        outcome.unwrap()
    assert slots.free == 1, "slot leaked on the timeout path"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deadline_falls_due_while_another_task_polls_through_the_thread_call(
    backend: str,
) -> None:
    scenario = partial(poll_for_the_caller, right=False)
    without = testing.explore(scenario, strategy=testing.Exhaustive(1), backend=backend)
    assert without.exhausted and without.failure is None

    for strategy in (
        testing.Exhaustive(0, slow_threads=1),
        testing.PCT(0, slow_threads=1),
        testing.RandomWalk(0, slow_threads=1),
    ):
        found = testing.explore(scenario, strategy=strategy, schedules=50, backend=backend)
        failure = found.failure
        assert failure is not None, strategy.name
        assert isinstance(failure.error, AssertionError)
        assert failure.timeline.preemptions == 0
        assert failure.timeline.outlasted == 1
        replayed = testing.replay(scenario, failure.token, backend=backend)
        assert replayed is not None and isinstance(replayed.error, AssertionError)
        assert replayed.token.decisions == failure.token.decisions

    right = testing.explore(
        partial(poll_for_the_caller, right=True),
        strategy=testing.Exhaustive(0, slow_threads=1),
        backend=backend,
    )
    assert right.exhausted and right.failure is None, right.failure and right.failure.report()
    assert right.schedules == 2  # the call outlasting its deadline or not


async def poll_what_the_thread_did(run: testing.Run) -> None:
    """A correct program: a thread sets a flag and then works on (a slow call); another task
    polls the flag, passing checkpoints, under a long deadline of its own. Whenever the thread is
    slow, what it did before is seen: the run does not depend on how fast it is."""
    flag = threading.Event()

    def work() -> None:
        flag.set()
        time.sleep(0.002)

    async def worker() -> None:
        with anyio.move_on_after(0.5):
            await anyio.to_thread.run_sync(work)

    async def poller() -> None:
        with anyio.fail_after(5):
            while not flag.is_set():
                await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(worker, poller):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tasks_that_run_on_while_a_thread_outlasts_a_timer_replay(backend: str) -> None:
    def explore() -> tuple[int, list[str]]:
        result = testing.explore(
            poll_what_the_thread_did,
            strategy=testing.Exhaustive(1, slow_threads=2),
            schedules=400,
            backend=backend,
        )
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        assert any(name == "timer" for name, _ in result.points), "no timer was outlasted"
        return result.schedules, [f"{point}" for point in result.points]

    assert explore() == explore() == explore()


async def poll_counting_for_the_caller(run: testing.Run) -> None:
    """A correct program: a caller waits at most 0.3 s for a thread and is done either way;
    another task polls until it is done, counting its polls (its state changes at every
    poll: steady progress as far as the spin rule can see)."""
    done = False
    polls = 0

    async def caller() -> None:
        nonlocal done
        with anyio.move_on_after(0.3):
            await anyio.to_thread.run_sync(time.sleep, 0.001, abandon_on_cancel=True)
        done = True

    async def poller() -> None:
        nonlocal polls
        while not done:
            await anyio.lowlevel.checkpoint()
            polls += 1

    for outcome in await run.concurrently(caller, poller):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timer_threads_outlast_falls_due_within_the_step_budget(backend: str) -> None:
    # the poller kept changing state, so the spin rule never moved the clock on to the
    # deadline the thread outlasts: a StepBudgetError, however large the budget; then the
    # deadline came at the budget, every such schedule 10,000 steps long
    for limits in (testing.Limits(max_steps=500), testing.Limits()):
        result = testing.explore(
            poll_counting_for_the_caller,
            strategy=testing.Exhaustive(0, slow_threads=1),
            limits=limits,
            backend=backend,
        )
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        points = dict(result.points)
        assert points["timer"] == 1  # the thread outlasting the deadline
        assert points["checkpoint"] < 2 * min(limits.max_steps, 1000) + 200


async def deadline_left_before_it_fell_due(run: testing.Run) -> None:
    """A thread outlasts the next timer, a deadline of another task, which leaves its scope
    before the timer falls due: the thread then outlasts nothing, and its report comes in
    when no task can run, at the time the run had reached."""
    reported: list[float] = []
    start = anyio.current_time()

    async def caller() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.001)
        reported.append(anyio.current_time() - start)

    async def other() -> None:
        with anyio.move_on_after(0.1):
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(caller, other):
        outcome.unwrap()
    assert reported == [0], f"the thread reported at virtual time {reported}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_outlast_no_timer_that_is_gone(backend: str) -> None:
    # the report was held till the clock passed the vanished timer: it came at the
    # controller's own idle timer, 3600 s on
    result = explored_clean(
        deadline_left_before_it_fell_due,
        strategy=testing.Exhaustive(1, slow_threads=1),
        backend=backend,
    )
    assert any(name == "timer" for name, _ in result.points), "no timer was outlasted"


async def second_call_while_the_first_outlasts(run: testing.Run, *, right: bool) -> None:
    """A waits at most 0.3 s for a thread; B, once A's thread has begun, waits at most 0.1 s
    for a thread of its own. On its timeout path A assumes B timed out too (the bug, unless
    written *right*): a real loop whose first thread is slow and second fast says no."""
    began = threading.Event()
    b_done = False

    def first() -> None:
        began.set()
        time.sleep(0.001)

    async def a() -> None:
        try:
            with anyio.fail_after(0.3):
                await anyio.to_thread.run_sync(first, abandon_on_cancel=True)
        except TimeoutError:
            if not right:
                assert not b_done, "B's call did not time out"

    async def b() -> None:
        nonlocal b_done
        while not began.is_set():
            await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(0.1):
            await anyio.to_thread.run_sync(time.sleep, 0.001, abandon_on_cancel=True)
            b_done = True

    for outcome in await run.concurrently(a, b):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_begun_while_a_thread_outlasts_a_timer_may_be_fast(backend: str) -> None:
    # it could only report after that timer, so its own earlier deadline always fell due
    # first: "the first thread slow, the second fast" was never tried
    found = testing.explore(
        partial(second_call_while_the_first_outlasts, right=False),
        strategy=testing.Exhaustive(0, slow_threads=1),
        backend=backend,
    )
    failure = found.failure
    assert failure is not None
    assert isinstance(failure.error, AssertionError)
    assert failure.timeline.outlasted == 1
    replayed = testing.replay(
        partial(second_call_while_the_first_outlasts, right=False), failure.token, backend=backend
    )
    assert replayed is not None and isinstance(replayed.error, AssertionError)

    right = testing.explore(
        partial(second_call_while_the_first_outlasts, right=True),
        strategy=testing.Exhaustive(1, slow_threads=2),
        backend=backend,
    )
    assert right.exhausted and right.failure is None, right.failure and right.failure.report()


async def calls_back_then_returns(
    run: testing.Run,
    *,
    calls: int = 3,
    abandon: bool = True,
    right: bool = False,
    seen: list[int] | None = None,
) -> None:
    """A thread under a deadline calls back into the loop *calls* times, then returns; on the
    timeout path the caller counts on none or all of its calls back having run (the bug),
    unless written *right*. *seen* gets, per schedule, how many calls back ran before the
    deadline fell due (*calls*: none fell due while the thread worked)."""
    done = [0]
    deadline = math.inf

    def called_back() -> None:
        if anyio.current_time() < deadline:
            done[0] += 1

    def work() -> None:
        for _ in range(calls):
            time.sleep(0.0005)
            anyio.from_thread.run_sync(called_back)

    async def caller() -> None:
        nonlocal deadline
        try:
            with anyio.fail_after(0.3) as scope:
                deadline = scope.deadline
                await anyio.to_thread.run_sync(work, abandon_on_cancel=abandon)
        except TimeoutError:
            assert right or done[0] in (0, calls), (
                f"timed out after {done[0]} of {calls} calls back"
            )
        if seen is not None:
            seen.append(done[0])

    (outcome,) = await run.concurrently(caller)
    outcome.unwrap()


@pytest.mark.parametrize("strategy", list(strategies_with_slow_threads()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deadline_may_fall_due_between_two_calls_back(backend: str, strategy: str) -> None:
    # a thread that calls back had one chance, before its first call back: a timeout after
    # some but not all of them was never tried, and Exhaustive said exhausted
    result = testing.explore(
        calls_back_then_returns,
        strategy=strategies_with_slow_threads()[strategy](),
        schedules=50,
        backend=backend,
    )
    failure = result.failure
    assert failure is not None
    assert "calls back" in str(failure.error) and " 0 of" not in str(failure.error)
    assert failure.timeline.preemptions == 0 and failure.timeline.outlasted == 1
    # each call back is a step of the caller, which waits for its thread
    assert "calls back thread" in failure.timeline.format()
    calls_back = [step for step in failure.timeline.steps if step.operation == "calls back"]
    assert calls_back and all(step.task == 0 for step in calls_back)
    replayed = testing.replay(calls_back_then_returns, failure.token, backend=backend)
    assert replayed is not None and str(replayed.error) == str(failure.error)


@pytest.mark.parametrize("calls", [1, 3])
@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_tries_the_deadline_before_each_call_back_and_the_return(
    backend: str, abandon: bool, calls: int
) -> None:
    # one schedule with no timer outlasted, and one for each place the deadline can fall
    # due: before the first call back, between two, and after the last (before the return)
    seen: list[int] = []
    for _ in range(2):  # a second exploration: the same schedules, in the same order
        result = testing.explore(
            partial(calls_back_then_returns, calls=calls, abandon=abandon, right=True, seen=seen),
            strategy=testing.Exhaustive(0, slow_threads=1),
            backend=backend,
        )
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        assert result.schedules == result.distinct_schedules == calls + 2
    assert seen[: calls + 2] == seen[calls + 2 :]
    assert sorted(seen[: calls + 2]) == [*range(calls + 1), calls]


def test_tokens_write_and_read_a_call_back_of_a_thread_whose_caller_left() -> None:
    decisions = (0, 0, testing.CALLED_BACK, testing.CALLED_BACK, testing.TIMER_FIRST, 0)
    token = testing.ReplayToken("pct-d3-s1", 0, 1, "0123abcd", decisions)
    assert str(token) == "avcm7:pct-d3-s1:0:1:0123abcd:0x2.bx2.t.0"
    assert testing.ReplayToken.parse(str(token)) == token


async def abandonable_call_back_while_another_outlasts(run: testing.Run) -> None:
    """A correct program: A waits at most 0.3 s for a thread; B, meanwhile, at most 0.05 s
    for a thread abandoned on cancel that calls back into the loop (on trio that call names
    no task: it is known by the call its thread runs)."""

    def called_back() -> None:
        time.sleep(0.001)
        anyio.from_thread.run_sync(lambda: None)

    async def a() -> None:
        with anyio.move_on_after(0.3):
            await anyio.to_thread.run_sync(time.sleep, 0.002)

    async def b() -> None:
        with anyio.move_on_after(0.05):
            await anyio.to_thread.run_sync(called_back, abandon_on_cancel=True)

    for outcome in await run.concurrently(a, b):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_back_from_a_thread_begun_meanwhile_comes_in(backend: str) -> None:
    # held till the timer the first thread outlasts, while time stood still for its thread:
    # a ThreadWaitError (trio)
    explored_clean(
        abandonable_call_back_while_another_outlasts,
        strategy=testing.Exhaustive(1, slow_threads=1),
        limits=testing.Limits(thread_timeout=5),
        backend=backend,
    )


ABANDONED_THREAD_CALLS_BACK = """
import anyio
from avcm import testing

async def scenario(run):
    def work():
        for _ in range(3):
            anyio.from_thread.run_sync(lambda: None)

    async def caller():
        with anyio.move_on_after(0.3):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def other():
        for _ in range(3):
            await anyio.lowlevel.checkpoint()

    await run.concurrently(caller, other)

result = testing.explore(
    scenario, strategy=testing.Exhaustive(0, slow_threads=1), backend="asyncio"
)
print("explored", result.schedules, result.failure is None)
"""


def test_a_process_whose_last_run_abandoned_a_thread_calling_back_exits() -> None:
    # the last schedule's abandoned thread called back while the loop shut down; the loop
    # took the call and never ran it, and the thread (no daemon) kept the process alive
    done = subprocess.run(
        [sys.executable, "-c", ABANDONED_THREAD_CALLS_BACK],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("explored") and done.stdout.split()[-1] == "True"


async def call_back_that_sleeps(run: testing.Run, *, abandon: bool) -> None:
    """A correct program: a thread calls back into the loop with an async function that
    sleeps (virtual time) and takes a lock another task holds for a while."""
    lock = anyio.Lock()

    async def called_back() -> int:
        await anyio.sleep(0.01)
        async with lock:
            return 1

    def work() -> int:
        return anyio.from_thread.run(called_back)

    async def caller() -> None:
        assert await anyio.to_thread.run_sync(work, abandon_on_cancel=abandon) == 1

    async def holder() -> None:
        async with lock:
            await anyio.sleep(0.02)

    for outcome in await run.concurrently(caller, holder):
        outcome.unwrap()


@pytest.mark.parametrize("slow_threads", [0, 1])
@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_time_passes_for_what_a_call_back_awaits(
    backend: str, abandon: bool, slow_threads: int
) -> None:
    # trio runs a call back of a call abandoned on cancel in its system nursery, and its
    # thread waits for the answer: time stood still for that thread, the call back's sleep
    # never ended, and the run failed with ThreadWaitError
    explored_clean(
        partial(call_back_that_sleeps, abandon=abandon),
        strategy=testing.Exhaustive(1, slow_threads=slow_threads),
        limits=testing.Limits(thread_timeout=5),
        backend=backend,
    )


async def watcher_between_calls_back(
    run: testing.Run, *, abandon: bool, right: bool = False, seen: list[int] | None = None
) -> None:
    """A thread does its work in two halves, each a call back into the loop, under a 0.3 s
    deadline; a watcher wakes at 0.3 s and must not see the work half done (the bug: a thread
    slower than the deadline is still between its halves then), unless written *right*.
    *seen* gets what the watcher saw, per schedule."""
    done = [0]

    def half() -> None:
        done[0] += 1

    def work() -> None:
        for _ in range(2):
            time.sleep(0.0005)
            anyio.from_thread.run_sync(half)

    async def caller() -> None:
        with anyio.move_on_after(0.3):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=abandon)

    async def watcher() -> None:
        await anyio.sleep(0.3)
        if seen is not None:
            seen.append(done[0])
        if done[0] == 1 and not right:
            raise AssertionError("saw the work half done")

    for outcome in await run.concurrently(caller, watcher):
        outcome.unwrap()


FIRST_AND_LATER_EXPLORATIONS = """
import sys
from functools import partial
sys.path.insert(0, {tests!r})
from avcm import testing
from test_race_slow_threads import watcher_between_calls_back

for _ in range(2):
    result = testing.explore(
        partial(watcher_between_calls_back, abandon={abandon!r}),
        strategy=testing.PCT(0, slow_threads=1),
        schedules=50,
        backend={backend!r},
    )
    print(result.failure and result.failure.token)
"""


@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_first_exploration_of_a_process_finds_what_later_ones_do(
    backend: str, abandon: bool
) -> None:
    # a thread whose caller left (its deadline fell due) calls back: the first worker
    # thread of a process, slower to start, had its call back come in before the watcher
    # looked (the loop waited for it, then let it in), a warm one after (the watcher was
    # chosen once it had handed it in): another failure in a fresh process, as a replay is
    code = FIRST_AND_LATER_EXPLORATIONS.format(
        tests=os.path.dirname(__file__), abandon=abandon, backend=backend
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    first, later = done.stdout.split()
    scenario = partial(watcher_between_calls_back, abandon=abandon)
    found = testing.explore(
        scenario, strategy=testing.PCT(0, slow_threads=1), schedules=50, backend=backend
    )
    assert found.failure is not None
    assert first == later == str(found.failure.token)


@pytest.mark.parametrize("strategy", list(strategies_with_slow_threads()))
@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_tasks_a_timer_wakes_look_before_a_thread_that_outlasted_it(
    backend: str, abandon: bool, strategy: str
) -> None:
    # on asyncio the thread's next call back came in the moment the deadline fell due, before
    # the watcher it woke: the bug was never seen, and Exhaustive said exhausted
    scenario = partial(watcher_between_calls_back, abandon=abandon)
    result = testing.explore(
        scenario, strategy=strategies_with_slow_threads()[strategy](), schedules=50, backend=backend
    )
    failure = result.failure
    assert failure is not None
    assert str(failure.error) == "saw the work half done"
    assert failure.timeline.preemptions == 0 and failure.timeline.outlasted == 1
    replayed = testing.replay(scenario, failure.token, backend=backend)
    assert replayed is not None and str(replayed.error) == str(failure.error)
    assert replayed.token.decisions == failure.token.decisions


@pytest.mark.parametrize("abandon", [True, False], ids=["abandon-on-cancel", "waited-for"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_watcher_sees_every_stage_of_a_thread_that_outlasts_its_timer(
    backend: str, abandon: bool
) -> None:
    # Exhaustive's schedules: the thread done before the timer (2), or outlasting it before
    # its first call back (0), between the two (1), or after both (2), in the loop's own
    # order; the same in a second exploration
    seen: list[int] = []
    for _ in range(2):
        result = testing.explore(
            partial(watcher_between_calls_back, abandon=abandon, right=True, seen=seen),
            strategy=testing.Exhaustive(0, slow_threads=1),
            backend=backend,
        )
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        assert result.schedules == result.distinct_schedules == 4
    assert seen[:4] == seen[4:]
    assert sorted(seen[:4]) == [0, 1, 2, 2]


async def count_while_a_thread_outlasts(run: testing.Run) -> None:
    """A correct program: a poller changes its state at every step (it counts) until the
    other task, whose thread call has a deadline, is done with it either way."""
    state = {"done": False, "polls": 0}

    async def caller() -> None:
        with anyio.move_on_after(1):
            await anyio.to_thread.run_sync(time.sleep, 0)
        state["done"] = True

    async def poller() -> None:
        while not state["done"]:
            state["polls"] += 1
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(caller, poller):
        outcome.unwrap()


@pytest.mark.parametrize("strategy", list(strategies_with_slow_threads()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_late_past_its_timer_comes_in_within_the_step_budget(
    backend: str, strategy: str
) -> None:
    # asyncio: once the deadline fell due, the thread's report waited for no task to run,
    # and a poller whose state changes at every step runs all along: StepBudgetError. (Each
    # schedule is a thousand steps of polling; in the first 6 of each strategy the thread
    # outlasts the deadline 3 or 4 times, on both backends.)
    result = testing.explore(
        count_while_a_thread_outlasts,
        strategy=strategies_with_slow_threads()[strategy](),
        schedules=6,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()


async def nested_deadlines(run: testing.Run, *, seen: list[str]) -> None:
    """One thread call under two deadlines, 1 s and 2 s: *seen* gets, per schedule, when the
    call returned and which deadlines fell due."""

    async def caller() -> None:
        with anyio.move_on_after(2) as outer, anyio.move_on_after(1) as inner:
            await anyio.to_thread.run_sync(time.sleep, 0.0005)
        seen.append(f"{anyio.current_time():g} {inner.cancel_called:d}{outer.cancel_called:d}")

    (outcome,) = await run.concurrently(caller)
    outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_may_outlast_a_second_timer_after_the_first(backend: str) -> None:
    # asyncio: the thread, late past the first deadline, was never asked about the second
    seen: list[str] = []
    result = testing.explore(
        partial(nested_deadlines, seen=seen),
        strategy=testing.Exhaustive(0, slow_threads=2),
        backend=backend,
    )
    assert result.exhausted and result.failure is None
    assert sorted(seen) == ["0 00", "1 10", "2 11"]


async def thread_call_in_a_call_back(run: testing.Run) -> None:
    """A correct program: a thread calls back into the loop, and the call back waits for a
    thread call of its own."""

    async def inner() -> int:
        return await anyio.to_thread.run_sync(lambda: 7)

    def work() -> int:
        return anyio.from_thread.run(inner)

    async def caller() -> None:
        assert await anyio.to_thread.run_sync(work) == 7

    async def other() -> None:
        await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(caller, other):
        outcome.unwrap()


@pytest.mark.parametrize("strategy", list(strategies_with_slow_threads()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_back_may_wait_for_a_thread_of_its_own(backend: str, strategy: str) -> None:
    # trio: the task, running the call back, was taken as waiting for trio's answer to its
    # first thread, not for the second thread: DeadlockError at schedule 0
    for make in (lambda: testing.PCT(0), strategies_with_slow_threads()[strategy]):
        result = testing.explore(
            thread_call_in_a_call_back, strategy=make(), schedules=10, backend=backend
        )
        assert result.failure is None, result.failure.report()


# -- what a run abandoned stays in that run -------------------------------------------------


async def abandoned_thread_calls_back(
    run: testing.Run, *, tasks: int = 1, sleeps: bool = True, seen: list[int] | None = None
) -> None:
    """A correct program: a caller waits at most 1 s for a thread abandoned on cancel that
    calls back into the loop three times (an async call back that sleeps, or a plain one),
    while other tasks sleep past the deadline and look at what the call backs did. *seen*
    gets, per schedule, how many call backs had run when the tasks ended."""
    done = [0]

    async def sleeping() -> None:
        await anyio.sleep(0.01)
        done[0] += 1

    def plain() -> None:
        done[0] += 1

    def work() -> None:
        for _ in range(3):
            time.sleep(0.001)
            if sleeps:
                anyio.from_thread.run(sleeping)
            else:
                anyio.from_thread.run_sync(plain)

    async def caller() -> None:
        with anyio.move_on_after(1):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def other() -> None:
        for _ in range(3):
            await anyio.sleep(0.6)
            assert 0 <= done[0] <= 3

    for outcome in await run.concurrently(caller, *[other] * (tasks - 1)):
        outcome.unwrap()
    if seen is not None:
        seen.append(done[0])


@pytest.mark.parametrize("sleeps", [True, False], ids=["sleeping-call-back", "plain-call-back"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_abandoned_on_cancel_that_calls_back_is_no_false_alarm(
    backend: str, sleeps: bool
) -> None:
    # its calls back came in at steps the machine's speed decided, and in later runs:
    # Exhaustive raised "not deterministic" on a correct program
    result = testing.explore(
        partial(abandoned_thread_calls_back, tasks=3, sleeps=sleeps),
        strategy=testing.Exhaustive(1, slow_threads=1),
        schedules=300,
        limits=testing.Limits(thread_timeout=5),
        backend=backend,
    )
    assert result.failure is None, result.failure.report()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_ends_once_the_threads_it_abandoned_on_cancel_returned(backend: str) -> None:
    # a thread whose call was abandoned on cancel went on calling back after the run ended:
    # in the next run, at a step the machine's speed decided
    seen: list[int] = []
    result = explored_clean(
        partial(abandoned_thread_calls_back, seen=seen),
        strategy=testing.Exhaustive(0, slow_threads=1),
        backend=backend,
    )
    assert result.schedules > 1 and seen == [3] * result.schedules


async def thread_that_never_returns(run: testing.Run) -> None:
    """A thread that outlives the run's thread_timeout (0.1 s), then returns."""

    async def caller() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.3)

    await run.concurrently(caller)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_given_up_on_is_waited_for_in_a_later_call_abandoned_on_cancel(
    backend: str,
) -> None:
    # a worker thread serves call after call: one a run gave up on (ThreadWaitError) was
    # never known as an orphan again, in any later run of the process (trio's thread cache
    # hands it the next call): its calls back came in after the run that left them ended
    given_up = testing.explore(
        thread_that_never_returns,
        strategy=testing.PCT(0),
        schedules=1,
        limits=testing.Limits(thread_timeout=0.1),
        backend=backend,
    )
    assert given_up.failure is not None
    assert isinstance(given_up.failure.error, testing.ThreadWaitError)
    time.sleep(0.5)  # it returns, idle in its pool
    seen: list[int] = []
    result = testing.explore(
        partial(abandoned_thread_calls_back, seen=seen),
        strategy=testing.Exhaustive(0, slow_threads=1),
        backend=backend,
    )
    assert result.exhausted and result.failure is None
    assert seen == [3] * result.schedules


def test_a_call_back_handed_to_a_run_queue_already_uninstalled_runs() -> None:
    # asyncio only: trio's worker threads hand their jobs to trio's entry queue, which the
    # scheduler swaps under its lock. A thread that looked up the loop's ready queue before a
    # run ended appended its call back there after the run uninstalled it: the call back was
    # lost and the thread (no daemon) blocked for ever, the process unable to exit.
    async def main() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        stale: list[object] = []
        ran = anyio.Event()

        async def scenario(run: testing.Run) -> None:
            async def look() -> None:
                stale.append(loop._ready)  # type: ignore[attr-defined]

            await run.concurrently(look)

        await testing.explore_async(scenario, strategy=testing.Exhaustive(0), schedules=1)
        handle = asyncio.Handle(ran.set, (), loop)
        thread = threading.Thread(target=stale[0].append, args=(handle,))  # type: ignore[attr-defined]
        thread.start()
        thread.join()
        with anyio.fail_after(1):
            await ran.wait()

    testing.run_on_virtual_time("asyncio", main)


async def call_back_takes_a_lock(run: testing.Run) -> None:
    """A thread abandoned on cancel calls back three times into the loop for a lock another
    task holds for a while. On asyncio, once the caller left, anyio runs such a call back in
    a task that waits at its first checkpoint for the caller's cancellation, which never
    comes: it spins for ever, and the thread waits for it as long."""
    lock = anyio.Lock()

    async def take() -> None:
        async with lock:
            pass

    def work() -> None:
        for _ in range(3):
            time.sleep(0.001)
            anyio.from_thread.run(take)

    async def caller() -> None:
        with anyio.move_on_after(0.05):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def holder() -> None:
        async with lock:
            await anyio.sleep(0.1)

    for outcome in await run.concurrently(caller, holder):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_back_that_spins_for_ever_fails_the_run(backend: str) -> None:
    # asyncio: each schedule left a thread blocked in from_thread.run and its call back
    # spinning, outside control, into every later run; they piled up and explore slowed to a
    # halt. trio runs such a call back in its system nursery, uncancelled: it passes there.
    result = testing.explore(
        call_back_takes_a_lock,
        strategy=testing.Exhaustive(1, slow_threads=1),
        limits=testing.Limits(thread_timeout=5),
        backend=backend,
    )
    if backend == "trio":
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        return
    failure = result.failure
    assert failure is not None
    assert isinstance(failure.error, testing.RunawayError)
    assert "spins for ever" in str(failure.error)
    assert failure.timeline.outlasted == 1
    replayed = testing.replay(call_back_takes_a_lock, failure.token, backend=backend)
    assert replayed is not None and str(replayed.error) == str(failure.error)
    assert not threads_calling_back()  # no thread of any run is left calling back


def threads_calling_back() -> list[int]:
    """The threads blocked in a call back into an event loop (anyio's, on asyncio)."""
    calling = []
    for ident, frame in sys._current_frames().items():
        current: FrameType | None = frame
        while current is not None:
            if current.f_code.co_name in ("run_async_from_thread", "run_sync_from_thread"):
                calling.append(ident)
                break
            current = current.f_back
    return calling


async def children_calling_threads(run: testing.Run) -> None:
    """A correct program: two tasks each start two children (under control too) that call a
    thread and then take a lock the four share."""
    lock = anyio.Lock()

    async def child() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.0005)
        async with lock:
            pass

    async def parent() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(child)
        await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(parent, parent):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_of_children_alike_report_in_an_order_the_run_decides(backend: str) -> None:
    # asyncio: children of one name waiting for threads were ordered as the loop's set of
    # tasks iterates, by memory address: Exhaustive said "not deterministic"
    assert_exhausted_alike(children_calling_threads, backend)


async def calls_back_under_nested_deadlines(run: testing.Run, *, seen: list[str]) -> None:
    """One thread call, under deadlines of 1 s and 2 s, whose thread calls back twice: *seen*
    gets, per schedule, when each call back and the return came in."""
    times: list[str] = []

    def work() -> None:
        for _ in range(2):
            anyio.from_thread.run_sync(lambda: times.append(f"{anyio.current_time():g}"))

    async def caller() -> None:
        with anyio.move_on_after(2), anyio.move_on_after(1):
            await anyio.to_thread.run_sync(work)
            times.append(f"{anyio.current_time():g}")
        seen.append(" ".join(times))

    (outcome,) = await run.concurrently(caller)
    outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_tries_every_stage_of_a_thread_under_two_deadlines(backend: str) -> None:
    # each call back and the return comes in at 0, 1 or 2 s, in order: C(5, 3) = 10 ways.
    # asyncio: once a thread outlasted a timer, the loop still waited for it, up to a second
    # of real time, while the thread waited for the loop: a question the next run did not
    # ask ("not deterministic"), or 8 ways
    seen: list[str] = []
    for _ in range(2):
        result = testing.explore(
            partial(calls_back_under_nested_deadlines, seen=seen),
            strategy=testing.Exhaustive(0, slow_threads=3),
            backend=backend,
        )
        assert result.exhausted and result.failure is None
        assert result.schedules == result.distinct_schedules == 10
    assert seen[:10] == seen[10:]
    expected = {f"{a} {b} {c}" for a in range(3) for b in range(a, 3) for c in range(b, 3)}
    assert set(seen) == expected


async def publish_with_timeouts(run: testing.Run) -> None:
    """A correct program: a thread writes data, then calls back to set an event; a consumer
    that waits at most 1 s for the event sees the data whenever the event is set."""
    event = anyio.Event()
    data = [0]

    def work() -> None:
        data[0] = 42
        anyio.from_thread.run_sync(event.set)

    async def producer() -> None:
        with anyio.move_on_after(2):
            await anyio.to_thread.run_sync(work)

    async def consumer() -> None:
        with anyio.move_on_after(1):
            await event.wait()
        assert not event.is_set() or data[0] == 42

    for outcome in await run.concurrently(producer, consumer):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_correct_program_passes_with_its_thread_outlasting_both_timers(backend: str) -> None:
    # once the thread outlasted a timer, the loop's poll still waited for it (up to a second
    # of real time per schedule; in one attack's process, on trio, for ever) while it waited
    # for the loop
    result = testing.explore(
        publish_with_timeouts, strategy=testing.Exhaustive(2, slow_threads=2), backend=backend
    )
    assert result.exhausted and result.failure is None


# -- a call back is a step of the task waiting for the thread ------------------------------


def _setting_a_then_b(state: dict[str, int], *, apart: bool) -> Callable[[], None]:
    """A worker thread's work: set ``a`` then ``b`` in *state*, each in a call back into the
    loop (both in one, unless *apart*)."""

    def set_both() -> None:
        state["a"] = state["b"] = 1

    def work() -> None:
        if apart:
            anyio.from_thread.run_sync(state.__setitem__, "a", 1)
            anyio.from_thread.run_sync(state.__setitem__, "b", 1)
        else:
            anyio.from_thread.run_sync(set_both)

    return work


async def looks_between_calls_back(
    run: testing.Run,
    *,
    abandon: bool,
    looks: int = 3,
    apart: bool = True,
    seen: set[tuple[tuple[int, int], ...]] | None = None,
) -> None:
    """A writer's thread sets ``a`` then ``b``, each in a call back into the loop (in one,
    unless *apart*); a watcher looks *looks* times, a checkpoint apart, and expects both or
    neither set (the bug, if *apart*). *seen* gets what the watcher saw, per schedule."""
    state = {"a": 0, "b": 0}
    looked: list[tuple[int, int]] = []

    work = _setting_a_then_b(state, apart=apart)

    async def writer() -> None:
        await anyio.to_thread.run_sync(work, abandon_on_cancel=abandon)

    async def watcher() -> None:
        for _ in range(looks):
            looked.append((state["a"], state["b"]))
            assert seen is not None or state["a"] == state["b"], f"half written: {state}"
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(writer, watcher):
        outcome.unwrap()
    if seen is not None:
        seen.add(tuple(looked))


def strategies_between_calls_back() -> dict[str, Callable[[], testing.Strategy]]:
    return {
        "pct": lambda: testing.PCT(0),
        "random": lambda: testing.RandomWalk(0),
        "exhaustive2": lambda: testing.Exhaustive(2),
    }


@pytest.mark.parametrize("abandon", [False, True], ids=["waited", "abandonable"])
@pytest.mark.parametrize("strategy", list(strategies_between_calls_back()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_may_look_between_two_calls_back(backend: str, strategy: str, abandon: bool) -> None:
    # the loop runs a call back whenever the thread hands it over: on asyncio (and on trio
    # for a call abandonable on cancel, run in trio's system nursery) both came in together,
    # when no task could run, and the half-written state was never seen: "exhausted"
    result = testing.explore(
        partial(looks_between_calls_back, abandon=abandon),
        strategy=strategies_between_calls_back()[strategy](),
        schedules=300,
        backend=backend,
    )
    failure = result.failure
    assert failure is not None, result
    assert "half written: {'a': 1, 'b': 0}" in str(failure.error)
    assert "calls back thread" in failure.timeline.format()
    replayed = testing.replay(
        partial(looks_between_calls_back, abandon=abandon), failure.token, backend=backend
    )
    assert replayed is not None and str(replayed.error) == str(failure.error)


@pytest.mark.parametrize("abandon", [False, True], ids=["waited", "abandonable"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_place_of_two_calls_back_among_a_watchers_looks_is_run(
    backend: str, abandon: bool
) -> None:
    # The watcher's 3 looks and the 2 calls back interleave in C(5, 2) = 10 ways, each a
    # different sequence of what the watcher sees: all are run, on both backends.
    seen: set[tuple[tuple[int, int], ...]] = set()
    result = testing.explore(
        partial(looks_between_calls_back, abandon=abandon, seen=seen),
        strategy=testing.Exhaustive(5),
        schedules=2000,
        backend=backend,
    )
    assert result.exhausted and result.failure is None
    states = [(0, 0), (1, 0), (1, 1)]
    monotone = {
        tuple(states[i] for i in looks)
        for looks in ((x, y, z) for x in range(3) for y in range(x, 3) for z in range(y, 3))
    }
    assert len(monotone) == 10
    assert seen == monotone


@pytest.mark.parametrize("abandon", [False, True], ids=["waited", "abandonable"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_call_back_that_writes_both_is_no_false_alarm(backend: str, abandon: bool) -> None:
    explored_clean(
        partial(looks_between_calls_back, abandon=abandon, apart=False),
        strategy=testing.Exhaustive(5),
        schedules=2000,
        backend=backend,
    )


async def reports_progress(run: testing.Run, *, calls: int) -> None:
    """A correct program: a thread reports its progress into the loop *calls* times."""
    progress = [0]

    def work() -> None:
        for _ in range(calls):
            anyio.from_thread.run_sync(progress.__setitem__, 0, progress[0] + 1)

    async def caller() -> None:
        await anyio.to_thread.run_sync(work)
        assert progress[0] == calls

    (outcome,) = await run.concurrently(caller)
    outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_may_call_back_more_often_than_the_step_budget(backend: str) -> None:
    # each call back is a step of the waiting task: 10,500 of them were a StepBudgetError
    # ("the tasks kept changing state"), though the thread made progress all along
    result = testing.explore(
        partial(reports_progress, calls=1500),
        strategy=testing.PCT(0),
        schedules=1,
        limits=testing.Limits(max_steps=1000),
        backend=backend,
    )
    assert result.failure is None, result.failure.report()


async def cancellation_injected_between_calls_back(run: testing.Run) -> None:
    """A correct program: one task's thread, abandoned on cancel, calls back twice; the
    strategy may cancel the task while a call back waits to come in."""

    def work() -> None:
        anyio.from_thread.run_sync(lambda: None)
        anyio.from_thread.run_sync(lambda: None)

    async def caller() -> None:
        await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    (outcome,) = await run.concurrently(caller)
    if not outcome.cancelled:
        outcome.unwrap()


@pytest.mark.parametrize(
    "strategy",
    [
        lambda: testing.PCT(1, cancel=1),
        lambda: testing.RandomWalk(1, cancel=1),
        lambda: testing.Exhaustive(1, cancel=1),
    ],
    ids=["pct", "random", "exhaustive"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancellation_injected_while_a_call_back_waits_is_no_crash(
    backend: str, strategy: Callable[[], testing.Strategy]
) -> None:
    # asyncio: the cancelled task's wakeup is run by the loop's next iteration, and the
    # chooser was asked to choose among no task (ValueError, or "not deterministic")
    result = testing.explore(
        cancellation_injected_between_calls_back,
        strategy=strategy(),
        schedules=100,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()
    assert result.schedules == 100 or result.exhausted


async def reads_its_cancellation(run: testing.Run, *, seen: list[tuple[bool, bool]]) -> None:
    """A thread under a deadline works a while, then asks whether its call was cancelled,
    calls back, and asks again: *seen* gets, per schedule, what each question found."""
    found: list[bool] = []

    def ask() -> None:
        try:
            anyio.from_thread.check_cancelled()
        except BaseException:
            found.append(True)
        else:
            found.append(False)

    def work() -> None:
        time.sleep(0.005)
        ask()
        anyio.from_thread.run_sync(lambda: None)
        ask()

    async def caller() -> None:
        with anyio.move_on_after(1):
            await anyio.to_thread.run_sync(work)

    (outcome,) = await run.concurrently(caller)
    outcome.unwrap()
    seen.append((found[0], found[1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_that_outlasts_a_timer_reads_the_loop_as_it_was_till_it_hands_in(
    backend: str,
) -> None:
    # The timer a thread outlasts falls due once the thread handed in what it has (its call
    # back): what it read before, its cancellation, is what it was before the timer. It fell
    # due as soon as no task could run, while the thread worked: the first question saw the
    # cancellation or not as fast as the thread was, and runs did not repeat.
    seen: list[tuple[bool, bool]] = []
    result = testing.explore(
        partial(reads_its_cancellation, seen=seen),
        strategy=testing.Exhaustive(0, slow_threads=1),
        backend=backend,
    )
    assert result.exhausted and result.failure is None
    assert sorted(set(seen)) == [(False, False), (False, True)]


async def calls_back_after_its_caller_was_cancelled(run: testing.Run) -> None:
    """A correct program: a task's thread, abandoned on cancel, calls back twice; another
    task cancels it first."""

    def work() -> None:
        anyio.from_thread.run_sync(lambda: None)
        anyio.from_thread.run_sync(lambda: None)

    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def canceller() -> None:
        await anyio.lowlevel.checkpoint()
        scope.cancel()

    for outcome in await run.concurrently(caller, canceller):
        outcome.unwrap()


def test_a_thread_handing_trio_its_call_back_is_at_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # A thread inside trio.from_thread's hand-over (run_sync_soon, before its request is in
    # trio's queue) was taken to wait for trio's answer already: no thread at work, no task
    # runnable, and the run ended in a DeadlockError (or, with the thread abandoned on
    # cancel, the run ended without waiting for it). A slow hand-over widens that moment.
    import trio

    hand_over = trio.lowlevel.TrioToken.run_sync_soon

    def slowly(self: trio.lowlevel.TrioToken, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.02)
        hand_over(self, *args, **kwargs)

    monkeypatch.setattr(trio.lowlevel.TrioToken, "run_sync_soon", slowly)
    for scenario in (calls_back_then_returns, calls_back_after_its_caller_was_cancelled):
        result = testing.explore(
            partial(scenario, right=True) if scenario is calls_back_then_returns else scenario,
            strategy=testing.Exhaustive(1),
            backend="trio",
        )
        assert result.exhausted and result.failure is None, result.failure.report()


async def abandoned_thread_halfway_at_a_later_timer(
    run: testing.Run, *, apart: bool = True
) -> None:
    """A writer waits at most 1 s for a thread abandoned on cancel that sets ``a``, then
    ``b``, each in a call back (in one, unless *apart*); a watcher wakes at 1.5 s and expects
    both or neither set (the bug, if *apart*: the thread may still be between them then)."""
    state = {"a": 0, "b": 0}

    work = _setting_a_then_b(state, apart=apart)

    async def writer() -> None:
        with anyio.move_on_after(1):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def watcher() -> None:
        await anyio.sleep(1.5)
        assert state["a"] == state["b"], f"half written: {state}"

    for outcome in await run.concurrently(writer, watcher):
        outcome.unwrap()


@pytest.mark.parametrize("strategy", list(strategies_with_slow_threads(2, exhaustive=0)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_whose_caller_left_may_outlast_a_later_timer(backend: str, strategy: str) -> None:
    # once its caller left (its deadline fell due while it worked), the thread had no chance
    # to outlast the watcher's later timer: its calls back came in before it, and the state
    # between them was never seen (Exhaustive said exhausted)
    found = [
        testing.explore(
            abandoned_thread_halfway_at_a_later_timer,
            strategy=strategies_with_slow_threads(2, exhaustive=0)[strategy](),
            schedules=100,
            backend=backend,
        ).failure
        for _ in range(2)
    ]
    failure = found[0]
    assert failure is not None and found[1] is not None
    assert str(failure.error).startswith("half written: {'a': 1, 'b': 0}")
    assert failure.timeline.outlasted == 2 and failure.timeline.preemptions == 0
    assert str(found[1].token) == str(failure.token)
    replayed = testing.replay(
        abandoned_thread_halfway_at_a_later_timer, failure.token, backend=backend
    )
    assert replayed is not None and str(replayed.error) == str(failure.error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_whose_caller_left_writing_in_one_call_back_is_no_false_alarm(
    backend: str,
) -> None:
    counts = [
        testing.explore(
            partial(abandoned_thread_halfway_at_a_later_timer, apart=False),
            strategy=testing.Exhaustive(1, slow_threads=2),
            backend=backend,
        )
        for _ in range(2)
    ]
    for result in counts:
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
    assert counts[0].schedules == counts[1].schedules


async def two_calls_abandoned_on_cancel(
    run: testing.Run, *, delays: tuple[float, float], seen: list[tuple[int, ...]]
) -> None:
    """Two tasks each wait at most 1 s for a thread abandonable on cancel; thread *i* works
    ``delays[i]`` seconds of real time, then calls back to note *i*. Which calls back came in,
    in which order, is appended to *seen*."""
    noted: list[int] = []

    def work(i: int) -> None:
        time.sleep(delays[i])
        anyio.from_thread.run_sync(noted.append, i)

    def caller(i: int) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            with anyio.move_on_after(1):
                await anyio.to_thread.run_sync(work, i, abandon_on_cancel=True)

        return call

    for outcome in await run.concurrently(caller(0), caller(1)):
        outcome.unwrap()
    seen.append(tuple(noted))


@pytest.mark.parametrize(
    ("backend", "slow_threads"),
    [("asyncio", 0), ("trio", 0), ("asyncio", 1), ("trio", 1)],
)
def test_which_thread_is_faster_changes_no_run(backend: str, slow_threads: int) -> None:
    # A cancellation injected as a task handed its call to a thread: the call ran or not
    # (asyncio: anyio skips one cancelled before its thread took it) and its thread was
    # waited for as an orphan or not (trio: not known till it began), as fast as the thread
    # started; an orphan that handed in a call back or its report between two looks of the
    # loop was asked about or not. With the threads' speeds swapped, 17 of 202 runs (asyncio)
    # had other calls back, or Exhaustive said "not deterministic". And the question whether
    # a thread outlasts a timer was asked while an orphan was at work, or after (asyncio
    # then held what that orphan handed in as the slow thread's): 4 schedules of 174 had
    # the calls back in another order (30 ms is slow enough to show it on an idle machine).
    explored = []
    for delays in ((0.0, 0.03), (0.03, 0.0)):
        seen: list[tuple[int, ...]] = []
        result = testing.explore(
            partial(two_calls_abandoned_on_cancel, delays=delays, seen=seen),
            strategy=testing.Exhaustive(0, cancel=2, slow_threads=slow_threads),
            backend=backend,
        )
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        explored.append((result.schedules, seen))
    assert explored[0] == explored[1]
    assert {(0, 1), (1, 0)} <= set(explored[0][1])  # (both orders of the calls back are run)


async def orphan_sets_an_event_awaited_later(run: testing.Run) -> None:
    """A task waits at most 1 s for a thread abandonable on cancel whose call back sets an
    event; then it sleeps 4 s and, if the thread ran, waits for the event (no timer left)."""
    event = anyio.Event()
    started: list[int] = []

    def work() -> None:
        started.append(1)
        anyio.from_thread.run_sync(event.set)

    async def task() -> None:
        with anyio.move_on_after(1):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        await anyio.sleep(4)
        if started:  # (a call abandoned before its thread took it never runs)
            await event.wait()

    for outcome in await run.concurrently(task):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_an_orphan_late_past_a_later_timer_hands_in_comes_in(backend: str) -> None:
    # trio: the call back of a thread whose caller left, once it had outlasted a later timer,
    # was held for as long as the run went on: time passed instead (a false DeadlockError)
    result = explored_clean(
        orphan_sets_an_event_awaited_later,
        strategy=testing.Exhaustive(2, slow_threads=2),
        backend=backend,
    )
    assert result.schedules > 1


async def orphan_counting_under_a_watcher(
    run: testing.Run, *, calls_back: int, seen: set[tuple[int, ...]]
) -> None:
    """A thread abandoned on cancel at 0.5 s counts *calls_back* times, each in a call back;
    a watcher wakes at 1, 2 and 3 s and notes the count it sees: into *seen*."""
    count = [0]

    def work() -> None:
        for _ in range(calls_back):
            anyio.from_thread.run_sync(count.__setitem__, 0, count[0] + 1)

    async def caller() -> None:
        with anyio.move_on_after(0.5):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def watcher() -> None:
        noted = []
        for _ in range(3):
            await anyio.sleep(1)
            noted.append(count[0])
        seen.add(tuple(noted))

    for outcome in await run.concurrently(caller, watcher):
        outcome.unwrap()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_orphan_may_be_between_any_two_calls_back_at_each_later_timer(backend: str) -> None:
    # trio: once the thread had outlasted one later timer nothing more it handed in came in
    # while the watcher lived: it saw 4 of the 10 counts it can
    seen: set[tuple[int, ...]] = set()
    explored_clean(
        partial(orphan_counting_under_a_watcher, calls_back=2, seen=seen),
        strategy=testing.Exhaustive(3, slow_threads=4),  # (the deadline and 3 timers)
        backend=backend,
    )
    assert seen == {t for t in itertools.product(range(3), repeat=3) if list(t) == sorted(t)}


def abandon_a_blocked_thread(backend: str, release: threading.Event) -> None:
    """A plain run (outside any exploration) that abandons on cancel a worker thread blocked
    until *release* is set, and ends: the thread stays at work on its call."""

    async def main() -> None:
        with anyio.move_on_after(0.05):  # (0: cancelled before the thread is started)
            await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_another_run_abandoned_is_no_orphan_of_this_one(backend: str) -> None:
    # trio: any worker thread whose call was abandoned on cancel counted as this run's orphan
    # at work, however it came to be; one of an earlier run still handing in its report (under
    # load) took the chances of this run's own: Exhaustive said "not deterministic"
    alone = testing.explore(
        partial(abandoned_thread_halfway_at_a_later_timer, apart=False),
        strategy=testing.Exhaustive(1, slow_threads=2),
        backend=backend,
    )
    release = threading.Event()
    try:
        abandon_a_blocked_thread(backend, release)
        beside = testing.explore(
            partial(abandoned_thread_halfway_at_a_later_timer, apart=False),
            strategy=testing.Exhaustive(1, slow_threads=2),
            limits=testing.Limits(thread_timeout=2),
            backend=backend,
        )
    finally:
        release.set()
    for result in (alone, beside):
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
    assert beside.schedules == alone.schedules


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_replay_whose_call_back_comes_in_elsewhere_diverges(backend: str) -> None:
    found = testing.explore(
        abandoned_thread_halfway_at_a_later_timer,
        strategy=testing.Exhaustive(0, slow_threads=2),
        backend=backend,
    )
    assert found.failure is not None
    recorded = found.failure.token
    decisions = recorded.decisions
    first = decisions.index(testing.CALLED_BACK)
    for changed, match in (
        # a task's step where the call back came in
        ((*decisions[:first], 1, *decisions[first + 1 :]), "which the recording does not have"),
        # a call back where a task was chosen
        ((testing.CALLED_BACK, *decisions[1:]), "call back from a thread whose caller left"),
    ):
        token = testing.ReplayToken(recorded.strategy, 0, 0, recorded.digest, changed)
        with pytest.raises(testing.ReplayDivergedError, match=match):
            testing.replay(abandoned_thread_halfway_at_a_later_timer, token, backend=backend)


async def orphans_in_a_row(
    run: testing.Run, *, delays: tuple[float, ...], seen: list[tuple[int, ...]]
) -> None:
    """One task waits at most 1 s, twice in a row, for a thread abandonable on cancel that
    calls back twice; then it sleeps 1 s. Thread *i* works ``delays[3 * i + j]`` seconds of
    real time before its call back *j* (and, *j* = 2, before it returns). The run's
    decisions are appended to *seen*."""

    def work(i: int) -> None:
        for j in range(3):
            time.sleep(delays[3 * i + j])
            if j < 2:
                anyio.from_thread.run_sync(lambda: None)

    async def task() -> None:
        for i in range(2):
            with anyio.move_on_after(1):
                await anyio.to_thread.run_sync(work, i, abandon_on_cancel=True)
        await anyio.sleep(1)

    try:
        for outcome in await run.concurrently(task):
            outcome.unwrap()
    finally:
        seen.append(run.decisions)


@pytest.mark.parametrize("backend", BACKENDS)
def test_where_an_orphan_is_slow_changes_no_run(backend: str) -> None:
    # trio: a thread whose caller left took a moment more, or less, to hand in its call back
    # (or its report) than the thread the task called next: its call back came in before
    # the task's next step or after it, and Exhaustive said "not deterministic" in 3 to 7 of
    # 10 processes (and, with one thread slower on purpose, ran other schedules). Then one
    # that handed in right after the question whether threads outlast the next timer was put
    # off (it was at work) came in unasked about: 1 run in about 10,000 on a loaded machine.
    # asyncio: about 1 exploration in 1,500 said "not deterministic" on a loaded machine (7 in
    # 100 with sys.setswitchinterval(2e-5)): an orphan's report handed in between the two reads
    # of _Queue.orphans had its call forgotten while the report waited to come in, and one
    # handed in after a poll found it at work was let in by that poll, before the held task.
    explored = []
    for slow in (None, 0, 1, 2, 3, 4, 5):
        delays = tuple(0.01 if place == slow else 0.0 for place in range(6))
        seen: list[tuple[int, ...]] = []
        result = testing.explore(
            partial(orphans_in_a_row, delays=delays, seen=seen),
            strategy=testing.Exhaustive(1, cancel=1, slow_threads=2),
            backend=backend,
        )
        assert result.exhausted and result.failure is None, (
            result.failure and result.failure.report()
        )
        explored.append(seen)
    assert all(seen == explored[0] for seen in explored[1:])


async def poll_for_an_orphan(run: testing.Run, *, steps: list[int]) -> None:
    """A thread abandoned on cancel at 1 s calls back 25 times to count, then once more to
    say it is done; another task polls for that with ``checkpoint()`` (at most 50 s). The run's
    steps are appended to *steps*."""
    state = {"count": 0, "done": False}

    def work() -> None:
        for _ in range(25):
            anyio.from_thread.run_sync(state.__setitem__, "count", state["count"] + 1)
        anyio.from_thread.run_sync(state.__setitem__, "done", True)

    async def caller() -> None:
        with anyio.move_on_after(1):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def poller() -> None:
        with anyio.move_on_after(50):
            while not state["done"]:
                await anyio.lowlevel.checkpoint()

    try:
        for outcome in await run.concurrently(caller, poller):
            outcome.unwrap()
    finally:
        steps.append(run.steps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_always_runnable_does_not_keep_an_orphans_calls_back_out(backend: str) -> None:
    # trio: what an orphan handed in came in only when no task could run, and the poller
    # always could; the spin rule's poll did not let it in either (the poller, held till
    # that poll looked at the orphan, ran first): ~10000 steps a run, 2-3 s a schedule
    # from the sixth on, and a false StepBudgetError whenever the caller's deadline could
    # beat the thread (an outside attack: every time)
    schedules = 20
    steps: list[int] = []
    result = testing.explore(
        partial(poll_for_an_orphan, steps=steps),
        strategy=testing.Exhaustive(1, slow_threads=2),
        schedules=schedules,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()
    assert result.schedules == schedules
    assert max(steps) < 1000


async def poll_for_what_an_orphan_sets(run: testing.Run, *, pause: str) -> None:
    """A correct program: a caller gives up on its thread (abandoned on cancel) after 2 ms;
    the thread sleeps 4 ms, then sets a flag through ``from_thread.run_sync``; another task
    polls for the flag with ``sleep(0)`` (or ``checkpoint()``; or ``sleep(0)`` counting its
    rounds, so that it never only spins), and stops if the caller left before the thread
    began (a cancellation injected before the call)."""
    state = {"set": False, "began": False, "left": False}

    def work() -> None:
        state["began"] = True
        time.sleep(0.004)
        anyio.from_thread.run_sync(state.__setitem__, "set", True)

    async def caller() -> None:
        try:
            with anyio.move_on_after(0.002):
                await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        finally:
            state["left"] = True

    async def poller() -> None:
        rounds = 0
        while not state["set"] and not (state["left"] and not state["began"]):
            if pause == "counting":
                rounds += 1
            if pause == "checkpoint":
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(0)  # noqa: ASYNC115 - the attack's poll: trio.sleep's path

    for outcome in await run.concurrently(caller, poller):
        if not outcome.cancelled:
            outcome.unwrap()


ORPHAN_BEATEN = {
    "pct-slow2": lambda: testing.PCT(1, slow_threads=2),
    "pct-cancel1": lambda: testing.PCT(1, cancel=1),
    "exhaustive1-slow1": lambda: testing.Exhaustive(1, slow_threads=1),
}


@pytest.mark.parametrize("strategy", list(ORPHAN_BEATEN))
@pytest.mark.parametrize("pause", ["sleep0", "checkpoint", "counting"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_poll_for_what_an_orphan_sets_is_no_livelock(
    backend: str, pause: str, strategy: str
) -> None:
    # trio: the orphan's call back never came in while the poller could run, and it always
    # could: a false StepBudgetError (livelock) in every exploration whose caller's deadline
    # could beat the thread (an outside attack, attack15: schedule 0 of PCT(1,
    # slow_threads=2), 15 of Exhaustive(1, slow_threads=1), 3 of PCT(1, cancel=1)). A poll
    # that counts its rounds is never only spinning, and kept it out on both backends
    # whatever the step budget (attack17): such a call back comes in within _SLOW_STEPS.
    # (a counting poll keeps each call back out for 1,000 steps: fewer schedules of it)
    schedules = 8 if pause == "counting" else 20
    result = testing.explore(
        partial(poll_for_what_an_orphan_sets, pause=pause),
        strategy=ORPHAN_BEATEN[strategy](),
        schedules=schedules,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()
    assert result.schedules == schedules or result.exhausted


@pytest.mark.parametrize("when", ["before", "in", "past"])
def test_a_thread_in_trios_call_back_waits_for_trio_only_in_its_wait_for_the_answer(
    when: str,
) -> None:
    # A thread in trio.from_thread's own frame (_send_message_to_trio) with no answer yet was
    # taken to wait for trio's answer even before it handed its request over (between two of
    # that frame's lines, as a loaded machine leaves it for a while): no thread at work, and,
    # the tasks ended, virtual time ran to idle_timeout: a false DeadlockError (trio, now and
    # then). So it was once it had its answer, out of the queue, but had yet to leave the
    # frame (attack17: 1 exploration of 10 under load, a token that replayed as a pass). A
    # thread stands still here in a frame of that name and module: before its request, in
    # the wait for the answer, or past it with the answer taken (the queue empty again).
    import queue

    from avcm.testing._scheduler import _waits_for_answer  # avcm-private: the predicate

    release = threading.Lock()
    release.acquire()
    source = (
        "def _send_message_to_trio(message_to_trio, release, when):\n"
        "    if when == 'before':\n"
        "        release.acquire()\n"
        "    answer = message_to_trio.queue.get()\n"
        "    if when == 'past':\n"
        "        release.acquire()\n"
        "    return answer\n"
    )
    namespace: dict[str, Any] = {"__name__": "trio._threads"}
    exec(compile(source, "<trio>", "exec"), namespace)
    message = type("Message", (), {"queue": queue.SimpleQueue()})()
    if when == "past":
        message.queue.put(None)
    thread = threading.Thread(
        target=namespace["_send_message_to_trio"], args=(message, release, when)
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(thread.ident or -1)
            if frame is not None and frame.f_code.co_name == "_send_message_to_trio":
                break
            time.sleep(0.001)
        time.sleep(0.01)  # (in the C call it blocks in by now)
        assert message.queue.empty()
        assert _waits_for_answer(thread) is (when == "in")
    finally:
        message.queue.put(None)  # (the wait it reaches, or stands in)
        if when != "in":
            release.release()
        thread.join(5)
    assert not thread.is_alive()


def test_a_thread_blocked_in_trios_call_back_is_seen_waiting_for_the_answer() -> None:
    # the wait is told by where trio's own frame stands (the call of its queue's get)
    import trio

    from avcm.testing._scheduler import _waits_for_answer  # avcm-private: the predicate

    seen: list[bool] = []

    async def main() -> None:
        token = trio.lowlevel.current_trio_token()
        answer = trio.Event()

        def work() -> None:
            trio.from_thread.run(answer.wait, trio_token=token)

        thread = threading.Thread(target=work)
        thread.start()
        deadline = time.monotonic() + 5
        # (a poll: nothing tells when another thread reaches a frame)
        while not _waits_for_answer(thread) and time.monotonic() < deadline:  # noqa: ASYNC110
            await trio.sleep(0.001)
        seen.append(_waits_for_answer(thread))
        answer.set()
        await trio.to_thread.run_sync(thread.join, 5)
        seen.append(_waits_for_answer(thread))

    trio.run(main)
    assert seen == [True, False]


async def poll_for_an_orphans_call_back(run: testing.Run, *, asynchronous: bool) -> None:
    """A correct program (attack18's ``c_orph_async``): a caller gives up on its thread
    (abandoned on cancel) after 2 ms; the thread sleeps 4 ms, then calls back into the loop
    (``from_thread.run`` of a coroutine with a checkpoint, or ``run_sync``), which counts;
    another task polls for the count with ``sleep(0)``."""
    state = {"n": 0}

    async def count() -> None:
        await anyio.lowlevel.checkpoint()
        state["n"] += 1

    def work() -> None:
        time.sleep(0.004)
        if asynchronous:
            anyio.from_thread.run(count)
        else:
            anyio.from_thread.run_sync(state.__setitem__, "n", 1)

    async def caller() -> None:
        with anyio.move_on_after(0.002):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def poller() -> None:
        while not state["n"]:  # noqa: ASYNC110 - what the attack wrote
            await anyio.sleep(0)  # noqa: ASYNC115 - the attack's poll

    for outcome in await run.concurrently(caller, poller):
        outcome.unwrap()


_TAKE_ANSWER_STALL = 0.1  # seconds of real time a thread stands still having taken its answer


def stall_past_the_answer(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Make each worker thread's call back into the loop stand still for a while right after
    it took the loop's answer, where the machine may keep it: in the very call that took it.
    trio: its ``_send_message_to_trio`` as trio 0.35 writes it, but the answer is taken out
    of the call's queue by C calls alone that then sleep (no frame of their own), so the
    thread's frame stands at that call with the queue empty again (as one does that drops
    the interpreter lock right as its ``get`` returns). asyncio: anyio's wait for the answer
    (a concurrent future's ``result()``) sleeps once it returned."""
    if backend == "trio":
        from trio import _threads

        def slowly(answers: Any) -> Any:
            held = threading.Lock()
            held.acquire()
            stall = partial(held.acquire, True, _TAKE_ANSWER_STALL)  # (C: returns False)
            taking = zip(iter(answers.get, None), iter(stall, None), strict=False)
            return type("Answers", (), {"get": staticmethod(partial(next, taking))})

        source = (
            "def _send_message_to_trio(trio_token, message_to_trio):\n"
            "    if trio_token is None:\n"
            "        trio_token = PARENT_TASK_DATA.token\n"
            "        system = PARENT_TASK_DATA.abandon_on_cancel\n"
            "    else:\n"
            "        system = True\n"
            "    if system:\n"
            "        message_to_trio.run_in_system_nursery(trio_token)\n"
            "    else:\n"
            "        message_to_trio.run_in_host_task(trio_token)\n"
            "    answers = slowly(message_to_trio.queue)\n"
            "    return answers.get()[0].unwrap()\n"
        )
        namespace: dict[str, Any] = {
            "__name__": "trio._threads",
            "PARENT_TASK_DATA": _threads.PARENT_TASK_DATA,
            "slowly": slowly,
        }
        exec(compile(source, "<trio>", "exec"), namespace)
        monkeypatch.setattr(_threads, "_send_message_to_trio", namespace["_send_message_to_trio"])
    else:
        import concurrent.futures

        result = concurrent.futures.Future.result

        def slow_result(future: Any, timeout: float | None = None) -> Any:
            answer = result(future, timeout)
            if threading.current_thread() is not threading.main_thread():
                time.sleep(_TAKE_ANSWER_STALL)
            return answer

        monkeypatch.setattr(concurrent.futures.Future, "result", slow_result)


@pytest.mark.parametrize("asynchronous", [True, False], ids=["run", "run_sync"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_thread_that_took_the_answer_to_its_call_back_is_at_work(
    monkeypatch: pytest.MonkeyPatch, backend: str, asynchronous: bool
) -> None:
    # trio: a thread whose caller left, having taken trio's answer to its call back out of
    # the call's queue, still stood at the call of the queue's get (CPython moves a frame on
    # at the next instruction; a thread that drops the interpreter lock right as the call
    # returns stands there for milliseconds on a loaded machine): taken for one waiting for
    # the answer, no thread at work; the tasks ended, virtual time ran to idle_timeout, and
    # the run failed with a false DeadlockError whose token replayed as a pass (attack18
    # finding 5: 1 exploration in 4 under load). Here the thread stands there 0.1 s each time.
    from avcm.testing import _scheduler  # avcm-private: how often a thread at work is looked at

    stall_past_the_answer(monkeypatch, backend)
    # (the loop looks at a thread at work every 10 ms, not every second: several looks fall
    # within each stall, the first of which went wrong, whatever the machine's speed)
    monkeypatch.setattr(_scheduler, "_THREAD_POLL", 0.01)
    result = testing.explore(
        partial(poll_for_an_orphans_call_back, asynchronous=asynchronous),
        strategy=testing.Exhaustive(1, slow_threads=1),
        schedules=4,
        backend=backend,
    )
    assert result.failure is None, result.failure.report()
    assert result.schedules == 4


async def stream_to_a_thread_whose_caller_is_cancelled(run: testing.Run, *, by: str) -> None:
    """A task sends items to a worker thread, which receives them with
    ``from_thread.run(receive.receive)``; the thread's caller (not abandoned on cancel) is
    cancelled meanwhile, *by* the thread itself before it receives, or by a deadline that
    falls due while the thread sleeps between two receives (with ``slow_threads``). anyio on
    asyncio puts each call back in the caller's cancelled scope without ever cancelling it,
    and a memory stream's send passes a receiver with a cancellation pending over: the
    call back waits for ever, and so does a plain run (a lost wake-up). trio cancels the call
    back: the thread's call raises, and the run ends."""
    send, receive = anyio.create_memory_object_stream[int](math.inf)
    scope = anyio.CancelScope()

    def consumer() -> None:
        if by == "thread":
            anyio.from_thread.run_sync(scope.cancel)
        try:
            while True:
                anyio.from_thread.run(receive.receive)
                time.sleep(0.001)
        except anyio.EndOfStream:
            pass

    async def producer() -> None:
        with send:
            for item in range(2):
                await anyio.sleep(0.01)
                await send.send(item)

    async def caller() -> None:
        with scope:
            if by == "deadline":
                scope.deadline = anyio.current_time() + 0.005
            await anyio.to_thread.run_sync(consumer)

    await run.concurrently(producer, caller)


LOST_WAKE_UP = """
import sys
sys.path.insert(0, {tests!r})
from functools import partial
from avcm import testing
from test_race_slow_threads import stream_to_a_thread_whose_caller_is_cancelled

result = testing.explore(
    partial(stream_to_a_thread_whose_caller_is_cancelled, by={by!r}),
    strategy=testing.{strategy},
    schedules=20,
    backend={backend!r},
    limits=testing.Limits(thread_timeout=2),
)
print(type(result.failure.error).__name__ if result.failure else "passed")
if result.failure:
    print(result.failure.report())
"""


@pytest.mark.parametrize(
    ("by", "strategy"),
    [("thread", "PCT(0)"), ("deadline", "PCT(0, slow_threads=1)")],
    ids=["cancelled-by-the-thread", "deadline-while-the-thread-sleeps"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_back_that_waits_for_ever_under_a_cancelled_caller_is_reported(
    backend: str, by: str, strategy: str
) -> None:
    # asyncio: the run found the deadlock, then cancelled its tasks and waited for them; the
    # caller waited for its thread, the thread for its call back, and the call back for a
    # wake-up that never comes: the exploration hung, past thread_timeout (in a process of
    # its own here, so that a hang fails the test instead of hanging it)
    code = LOST_WAKE_UP.format(
        tests=os.path.dirname(__file__), by=by, strategy=strategy, backend=backend
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    verdict, _, report = done.stdout.partition("\n")
    if backend == "trio":
        assert verdict == "passed", report
        return
    assert verdict == "DeadlockError", report
    words = " ".join(report.split())  # (the report wraps its lines)
    assert "call back into the loop (from_thread.run) waits in" in words
    assert "MemoryObjectReceiveStream.receive" in words
    assert "a wake-up lost" in words


async def orphan_calling_back_to_a_poller(run: testing.Run) -> None:
    """A correct program: the caller gives up (after 2 ms) on a thread abandoned on cancel
    that calls back into the loop three times after 4 ms; a poller spins until the last call
    back came in (attack18's ``c_orph_3cb``, smaller)."""
    state = {"n": 0}

    def work() -> None:
        time.sleep(0.004)
        for _ in range(3):
            anyio.from_thread.run_sync(state.__setitem__, "n", state["n"] + 1)

    async def caller() -> None:
        with anyio.move_on_after(0.002):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def poller() -> None:
        while state["n"] < 3:
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(caller, poller):
        outcome.unwrap()


def test_what_was_found_of_abandoned_calls_is_given_again_only_while_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # trio: the threads whose calls were abandoned on cancel are asked about at every question
    # of every step, and what was found is given again while nothing it was found from
    # changed: each time it is, a fresh look finds the same (unless a thread moved meanwhile)
    from avcm.testing import _scheduler  # avcm-private: the cache of _orphan_calls

    seen_class = _scheduler._OrphansSeen  # avcm-private: the cache under test
    same = seen_class.same
    checked: list[bool] = []

    def moves(queue: Any) -> list[Any]:
        # what threads change: what they handed the loop, and where their calls stand
        calls = [(call, call.thread, call.begun, call.delivered) for call in queue.at_work]
        return [*queue.arrived_now(), *itertools.chain.from_iterable(calls)]

    def same_as_fresh(seen: Any, queue: Any, arrived: list[Any]) -> bool:
        if not same(seen, queue, arrived):
            return False
        before = moves(queue)
        queue.orphans_seen = None
        fresh = queue._orphan_calls()
        after = moves(queue)
        if len(before) == len(after) and all(map(operator.is_, before, after)):
            checked.append(
                len(fresh) == len(seen.found)
                and all(a is c and b is d for (a, b), (c, d) in zip(fresh, seen.found, strict=True))
            )
        queue.orphans_seen = seen
        return True

    monkeypatch.setattr(seen_class, "same", same_as_fresh)
    result = testing.explore(
        orphan_calling_back_to_a_poller,
        strategy=testing.PCT(1, slow_threads=1),
        schedules=3,
        backend="trio",
    )
    assert result.failure is None, result.failure.report()
    assert checked and all(checked), checked.count(False)
