"""The race finder itself: scheduling, strategies, tokens, replay, shrinking, bad input."""

from __future__ import annotations

import errno
import json
import math
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import avcm
from avcm import testing
from avcm.lowlevel import sync_point
from avcm.testing.pytest_plugin import RaceFixture
from tests.races import AVCM, SEED, AvcmWorld, queue_overflow, replay_as_printed

ROOT = Path(__file__).resolve().parent.parent


def counting_tasks(k: int, schedules: list[tuple[int, ...]] | None = None) -> testing.Scenario:
    """Two tasks, each passing *k* checkpoints; *schedules* collects each run's decisions."""

    async def scenario(run: testing.Run) -> None:
        counter = avcm.lowlevel.AtomicCounter()

        async def worker() -> None:
            for _ in range(k):
                await anyio.lowlevel.checkpoint()
                await counter.inc()

        await run.concurrently(worker, worker)
        assert counter.value == 2 * k
        if schedules is not None:
            schedules.append(run.decisions)

    return scenario


# -- the scheduler --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_task_at_a_time_from_checkpoint_to_checkpoint(backend: str) -> None:
    trace: list[str] = []

    async def scenario(run: testing.Run) -> None:
        async def worker(name: str) -> None:
            for index in range(3):
                await anyio.lowlevel.checkpoint()
                trace.append(f"{name}{index}")

        await run.concurrently(lambda: worker("a"), lambda: worker("b"))

    # a schedule that switches at every step interleaves exactly
    token = testing.ReplayToken("manual", 0, 0, "00000000", (0, 1, 0, 1, 0, 1, 0, 1))
    with pytest.raises(testing.ReplayDivergedError, match="other sync points"):
        testing.replay(scenario, token, backend=backend)
    assert trace == ["a0", "b0", "a1", "b1", "a2", "b2"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_exhaustive_search_enumerates_every_interleaving_once(backend: str) -> None:
    for k in (1, 2, 3):
        seen: list[tuple[int, ...]] = []
        strategy = testing.Exhaustive(preemption_bound=32)
        result = testing.explore(
            counting_tasks(k, seen), strategy=strategy, schedules=10_000, backend=backend
        )
        assert result.exhausted and not result.found
        # each task takes k + 1 steps (its start and k checkpoints): every way to interleave
        # them, each once
        assert result.schedules == len(set(seen)) == math.comb(2 * k + 2, k + 1)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_exhaustive_without_preemption_runs_the_loops_own_order(backend: str) -> None:
    # one schedule: the event loop's own run-queue order, the tasks taking turns at each
    # checkpoint as a plain run's do
    decisions: list[tuple[int, ...]] = []
    result = testing.explore(
        counting_tasks(3, decisions), strategy=testing.Exhaustive(0), schedules=100, backend=backend
    )
    assert result.exhausted and result.schedules == 1
    (schedule,) = decisions
    first = schedule[0]
    assert schedule == tuple(first if i % 2 == 0 else 1 - first for i in range(len(schedule)))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_task_blocked_on_a_held_mutex_is_never_chosen(backend: str) -> None:
    contended: list[int] = []

    async def scenario(run: testing.Run) -> None:
        mutex = avcm.lowlevel.Mutex("m")
        inside = 0

        async def worker() -> None:
            nonlocal inside
            async with mutex:
                inside += 1
                assert inside == 1
                await anyio.lowlevel.checkpoint()
                inside -= 1

        for outcome in await run.concurrently(worker, worker, worker):
            outcome.unwrap()
        contended.append(mutex.statistics().contended)

    result = testing.explore(
        scenario, strategy=testing.RandomWalk(3), schedules=300, backend=backend
    )
    assert not result.found, result.failure and result.failure.report()
    # tasks did wait for the held mutex (they are blocked, not choices), and never deadlocked
    assert max(contended) >= 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_deadlock_is_a_failure_of_its_own(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        first, second = avcm.lowlevel.Mutex("first"), avcm.lowlevel.Mutex("second")

        async def forwards() -> None:
            async with first, second:
                pass

        async def backwards() -> None:
            async with second, first:
                pass

        await run.concurrently(forwards, backwards)

    result = testing.explore(scenario, strategy=testing.PCT(0), schedules=500, backend=backend)
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.DeadlockError)
    assert "waits at mutex.lock <Mutex first locked>" in str(result.failure.error)
    # the event loop's own order deadlocks: found in the first schedule, nothing to shrink
    assert result.schedules == 1 and result.failure.shrunk_from == (4, 0)
    assert result.failure.timeline.preemptions == 0 and len(result.failure.timeline.steps) == 4
    assert "shrunk" not in result.failure.report()


@pytest.mark.parametrize("seed", range(4))
def test_the_report_gives_the_real_size_before_and_after_shrinking(seed: int) -> None:
    # a random walk preempts at almost every step: its failures always have something to shrink
    result = testing.explore(
        SEED["deactivate_underflow"], strategy=testing.RandomWalk(seed), schedules=1000
    )
    failure = result.failure
    assert failure is not None and failure.shrunk_from is not None
    steps, preemptions = len(failure.timeline.steps), failure.timeline.preemptions
    before_steps, before_preemptions = failure.shrunk_from
    # fewer preemptions first, then fewer steps: never larger than as found
    assert (preemptions, steps) <= (before_preemptions, before_steps)
    report = failure.report()
    header = " ".join(report[: report.index("\nAssertionError")].split())
    after = f"{steps} steps, {preemptions} preemption(s)"
    if (steps, preemptions) == (before_steps, before_preemptions):
        assert header.endswith(after)
    else:
        assert header.endswith(
            f"{after}, shrunk from {before_steps} steps, {before_preemptions} preemption(s)"
        )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_uncontrolled_tasks_that_never_wait_are_reported_not_hung(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        async def spinner() -> None:
            while True:
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as group:
            group.start_soon(spinner)  # the scenario's own: not under control
            await run.concurrently(anyio.Event().wait)

    limits = testing.Limits(runaway_steps=2_000)
    result = testing.explore(scenario, schedules=1, backend=backend, limits=limits)
    assert result.failure is not None
    error = result.failure.error
    assert isinstance(error, BaseExceptionGroup)  # (raised through the scenario's task group)
    assert [type(inner) for inner in error.exceptions] == [testing.RunawayError]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_task_a_controlled_task_spawns_is_controlled_and_its_spin_a_livelock(
    backend: str,
) -> None:
    async def scenario(run: testing.Run) -> None:
        async def spinner() -> None:
            while True:
                await anyio.lowlevel.checkpoint()

        async def spawner() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(spinner)

        await run.concurrently(spawner)

    result = testing.explore(scenario, schedules=1, backend=backend)
    assert result.failure is not None
    error = result.failure.error
    assert isinstance(error, testing.StepBudgetError)
    assert "livelock" in str(error) and "task 1 (spawner/spinner) spinner" in str(error)
    assert result.failure.timeline.tasks == ("spawner", "spawner/spinner")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_step_budget(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        counter = avcm.lowlevel.AtomicCounter()

        async def forever() -> None:
            while True:
                await counter.inc()
                await anyio.lowlevel.checkpoint()

        await run.concurrently(forever)

    result = testing.explore(
        scenario, schedules=1, backend=backend, limits=testing.Limits(max_steps=100)
    )
    assert result.failure is not None
    assert isinstance(result.failure.error, testing.StepBudgetError)
    assert len(result.failure.timeline.steps) == 100
    # a livelock: the cycle that repeats is named
    assert "livelock" in str(result.failure.error)
    assert "1 step(s) repeat" in str(result.failure.error)
    assert "task 0 (forever) forever atomic.add_return" in str(result.failure.error)


def test_a_scenario_that_runs_no_task_is_bad_input() -> None:
    async def scenario(run: testing.Run) -> None:
        pass

    with pytest.raises(avcm.InvalidError, match=r"run\.concurrently"):
        testing.explore(scenario, schedules=1)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_simulated_latency_is_virtual_time(backend: str) -> None:
    slept: list[float] = []

    async def scenario(run: testing.Run) -> None:
        async def sleeper() -> None:
            await sync_point("test.before", None)
            start = anyio.current_time()
            await anyio.sleep(3600)  # a driver's own sleep: a choice, not a sync point
            slept.append(anyio.current_time() - start)

        await run.concurrently(sleeper, sleeper)

    # twenty schedules of two one-hour sleeps: this test would take 40 hours on a real clock
    result = testing.explore(scenario, schedules=20, backend=backend)
    assert not result.found and result.schedules == 20
    assert len(slept) == 40 and min(slept) >= 3600


# -- replay tokens ------------------------------------------------------------------------------


def test_token_round_trip() -> None:
    token = testing.ReplayToken("pct-d3", 7, 12, "1a2b3c4d", (0, 0, 0, 1, 2, 2, 2, 2, 2, 0))
    assert str(token) == "avcm7:pct-d3:7:12:1a2b3c4d:0x3.1.2x5.0"
    assert testing.ReplayToken.parse(str(token)) == token
    empty = testing.ReplayToken("random", 0, 0, "00000000", ())
    assert testing.ReplayToken.parse(str(empty)) == empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not an avcm replay token"),
        ("hello", "not an avcm replay token"),
        ("shuttle:abc", "not an avcm replay token"),
        ("avcm9:pct-d3:0:0:00000000:0", "version 'avcm9'"),
        ("avcm6:pct-d3:0:0:00000000:0", "version 'avcm6'"),  # the version before
        ("avcm7:pct-d3:0:0:00000000", "malformed"),
        ("avcm7:pct-d3:0:0:0000000g:0", "malformed"),
        ("avcm7:pct-d3:-1:0:00000000:0", "malformed"),
        ("avcm7:pct-d3:0:0:00000000:0x", "malformed"),
        ("avcm7:pct-d3:0:0:00000000:0x0", "zero steps"),
        ("avcm7:PCT:0:0:00000000:0", "malformed"),
    ],
)
def test_bad_tokens_are_einval(text: str, message: str) -> None:
    with pytest.raises(testing.TokenError, match=message) as info:
        testing.ReplayToken.parse(text)
    assert info.value.errno == errno.EINVAL


def test_a_token_that_is_not_a_string() -> None:
    with pytest.raises(testing.TokenError, match="must be a str"):
        testing.ReplayToken.parse(42)  # type: ignore[arg-type]


def test_a_token_from_other_code_diverges_loudly() -> None:
    found = testing.explore(SEED["two_binds_win"], schedules=100)
    assert found.failure is not None
    with pytest.raises(testing.ReplayDivergedError, match="diverged"):
        testing.replay(AVCM["two_binds_win"], found.failure.token)


# -- bad parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: testing.PCT(depth=0),
        lambda: testing.PCT(depth=65),
        lambda: testing.PCT(seed=-1),
        lambda: testing.PCT(steps=0),
        lambda: testing.RandomWalk(seed="1"),  # type: ignore[arg-type]
        lambda: testing.RandomWalk(seed=True),
        lambda: testing.Exhaustive(preemption_bound=-1),
        lambda: testing.Limits(max_steps=0),
        lambda: testing.Limits(idle_timeout=0),
        lambda: testing.Limits(runaway_steps=1.5),  # type: ignore[arg-type]
        lambda: testing.Limits(io_timeout=0),
        lambda: testing.Limits(io_timeout=math.inf),
        lambda: testing.Limits(io_timeout=True),
        lambda: testing.Limits(io_timeout="1"),  # type: ignore[arg-type]
        lambda: testing.explore(counting_tasks(1), schedules=0),
        lambda: testing.explore(counting_tasks(1), backend="curio"),
        lambda: testing.explore(counting_tasks(1), strategy="pct"),  # type: ignore[arg-type]
    ],
)
def test_parameters_out_of_range_are_einval(make: object) -> None:
    with pytest.raises(avcm.InvalidError) as info:
        make()  # type: ignore[operator]
    assert info.value.errno == errno.EINVAL


# -- timelines ------------------------------------------------------------------------------------


def many_tasks_one_loses(tasks: int) -> testing.Scenario:
    """*tasks* tasks with long names count up; the last one to finish fails."""

    async def scenario(run: testing.Run) -> None:
        counter = avcm.lowlevel.AtomicCounter()

        async def worker() -> None:
            await sync_point("test.arrive", counter)  # names the step of the checkpoint
            await anyio.lowlevel.checkpoint()
            if await counter.inc_return() == tasks:
                raise AssertionError("the last of the workers to arrive " + "at the counter " * 9)

        names = [f"worker number {index} with a long name" for index in range(tasks)]
        outcomes = await run.concurrently(*[worker] * tasks, names=names)
        for outcome in outcomes:
            outcome.unwrap()

    return scenario


@pytest.mark.parametrize("tasks", [2, 3, 9])
def test_a_timeline_fits_in_a_100_column_terminal(tasks: int) -> None:
    found = testing.explore(many_tasks_one_loses(tasks), schedules=10)
    assert found.failure is not None
    report = found.failure.report()
    # all but the replay lines, which stay whole so that they can be copied
    lines = [line for line in report.splitlines() if not line.startswith("replay")]
    assert max(map(len, lines)) <= 100, report
    # every step is shown, and the whole error (wrapped, not cut)
    text = found.failure.timeline.format()
    assert text.count("test.arrive") == tasks
    assert " ".join(text.split()).count("at the counter") == 9


def test_the_timeline_shows_each_task_in_its_column(tmp_path: Path) -> None:
    found = testing.explore(SEED["two_binds_win"], schedules=100)
    assert found.failure is not None
    timeline = found.failure.timeline
    text = timeline.format()
    header, _, *rows, end = text.splitlines()
    assert "0 bind a" in header and "1 bind b" in header
    assert len(rows) == len(timeline.steps)
    assert "SeedRes.bind seed.bind" in text
    assert end.count("=> ok") == 2
    report = found.failure.report()
    assert "replay token: avcm7:" in report
    assert (
        f"replay: {sys.executable} -m avcm.testing replay tests.races:seed_two_binds_win" in report
    )

    path = tmp_path / "trace.json"
    timeline.write_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    slices = [event for event in trace["traceEvents"] if event["ph"] == "X"]
    assert [event["tid"] for event in slices] == [step.task for step in timeline.steps]
    assert {event["name"] for event in trace["traceEvents"] if event["ph"] == "M"} == {
        "thread_name"
    }


# -- the command line, in a fresh process -------------------------------------------------------


def replay_in_a_fresh_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avcm.testing", "replay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_same_token_same_interleaving_in_a_fresh_process() -> None:
    found = testing.explore(SEED["activate_deactivate_mismatch"], schedules=1000)
    assert found.failure is not None
    token = str(found.failure.token)
    first = replay_in_a_fresh_process("tests.races:seed_activate_deactivate_mismatch", token)
    second = replay_in_a_fresh_process(
        "tests.races:seed_activate_deactivate_mismatch", token, "--backend", "asyncio"
    )
    assert first.returncode == second.returncode == 1, first.stderr + second.stderr
    assert found.failure.timeline.format() in first.stdout
    assert found.failure.timeline.format() in second.stdout


async def jittered_lost_update(run: testing.Run) -> None:
    """Two tasks start after a jitter drawn from the module ``random`` (unseeded, as real code
    draws it), then read a count, take a step and write it plus one; a third starts them."""
    count = [0]
    go = anyio.Event()

    async def add() -> None:
        await anyio.sleep(random.uniform(0, 0.01))
        await go.wait()
        seen = count[0]
        await anyio.lowlevel.checkpoint()
        count[0] = seen + 1

    async def starter() -> None:
        await anyio.sleep(0.02)
        go.set()

    for outcome in await run.concurrently(add, add, starter):
        outcome.unwrap()
    assert count[0] == 2, f"lost update: {count[0]} of 2"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_run_drawing_from_random_replays_in_another_process(backend: str) -> None:
    # attack66 F8: the jitter decided the order the tasks woke in, so a replay in another
    # process (another draw) diverged, 4 times in 7
    before = random.getstate()
    found = testing.explore(jittered_lost_update, strategy=testing.RandomWalk(0), backend=backend)
    assert random.getstate() == before  # (the program's own stream goes on untouched)
    assert found.failure is not None
    for _ in range(3):
        replayed = replay_as_printed(found.failure.replay_command)
        assert replayed.returncode == 1, replayed.stdout + replayed.stderr
        assert "lost update: 1 of 2" in replayed.stdout


async def lost_update_on_a_slow_path(run: testing.Run) -> None:
    """Two tasks each add one to a count, atomically, except one time in five (a draw from
    ``random``) through a slow path that reads, takes a step and writes."""
    count = [0]

    async def add() -> None:
        if random.random() < 0.2:
            seen = count[0]
            await anyio.lowlevel.checkpoint()
            count[0] = seen + 1
        else:
            count[0] += 1
            await anyio.lowlevel.checkpoint()

    for outcome in await run.concurrently(add, add):
        outcome.unwrap()
    assert count[0] == 2, f"lost update: {count[0]} of 2"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("strategy", [testing.PCT(0), testing.RandomWalk(0)], ids=["pct", "random"])
def test_each_schedule_draws_from_random_a_stream_of_its_own(
    strategy: testing.Strategy, backend: str
) -> None:
    # attack67: with random seeded alike in every run the slow path was never drawn, and the
    # race behind it never found (500 schedules, both strategies, both backends)
    found = testing.explore(
        lost_update_on_a_slow_path, strategy=strategy, schedules=500, backend=backend
    )
    assert found.failure is not None
    replayed = replay_as_printed(found.failure.replay_command)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr


def _lost_update_among(tasks: int) -> testing.Scenario:
    """A scenario a factory makes: *tasks* tasks each read a count, take a step and write it
    plus one."""

    async def scenario(run: testing.Run) -> None:
        count = [0]

        async def add() -> None:
            seen = count[0]
            await anyio.lowlevel.checkpoint()
            count[0] = seen + 1

        for outcome in await run.concurrently(*[add] * tasks):
            outcome.unwrap()
        assert count[0] == tasks, f"lost update: {count[0]} of {tasks}"

    return scenario


lost_update_a_factory_made = _lost_update_among(2)


def test_a_scenario_a_factory_made_replays_by_the_name_its_module_binds_it_to() -> None:
    # Its qualname (_lost_update_among.<locals>.scenario) imports nothing: the failure said
    # to replay it from Python, though its module binds it to a name (attack43).
    found = testing.explore(lost_update_a_factory_made, strategy=testing.PCT(0), schedules=100)
    assert found.failure is not None
    assert found.failure.scenario == f"{__name__}:lost_update_a_factory_made"
    command = found.failure.replay_command
    assert " -m avcm.testing replay " in command
    replayed = replay_as_printed(command)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "lost update: 1 of 2" in replayed.stdout
    # one its module binds to no name: from Python, as before
    unbound = testing.explore(_lost_update_among(3), strategy=testing.PCT(0), schedules=100)
    assert unbound.failure is not None
    assert unbound.failure.replay_command.startswith("avcm.testing.replay(<scenario>, ")


def test_command_line_bad_input() -> None:
    bad_token = replay_in_a_fresh_process("tests.races:seed_two_binds_win", "nonsense")
    assert bad_token.returncode == 2
    assert bad_token.stderr.strip().startswith("avcm.testing: [EINVAL] not an avcm replay token")
    missing = replay_in_a_fresh_process("tests.nowhere:scenario", "avcm7:x:0:0:00000000:-")
    assert missing.returncode == 2 and "cannot import" in missing.stderr
    assert "Traceback" not in bad_token.stderr + missing.stderr
    found = testing.explore(SEED["two_binds_win"], schedules=100)
    assert found.failure is not None
    diverged = replay_in_a_fresh_process("tests.races:avcm_two_binds_win", str(found.failure.token))
    assert diverged.returncode == 3 and "diverged" in diverged.stderr
    # a function that is no scenario is never called to find that out (os.remove would
    # have been called with the run)
    not_a_scenario = replay_in_a_fresh_process("os:remove", "avcm7:x:0:0:00000000:-")
    assert not_a_scenario.returncode == 2
    assert "'os:remove' is not a scenario (an async function)" in not_a_scenario.stderr
    assert "Traceback" not in not_a_scenario.stderr


def test_imports_stay_light() -> None:
    """``import avcm`` leaves the race finder out; the race finder leaves Hypothesis and pytest
    out until asked (Hypothesis would make trio's scheduling deterministic process-wide)."""
    code = (
        "import sys, avcm\n"
        "assert 'avcm.testing' not in sys.modules\n"
        "import avcm.testing\n"
        "heavy = [m for m in ('hypothesis', 'pytest') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.anyio
async def test_the_race_fixture_on_either_backend(race: RaceFixture) -> None:
    with pytest.raises(testing.RaceFound):
        await race.check(SEED["two_binds_win"], schedules=200)
    result = await race.check(AVCM["two_binds_win"], schedules=200)
    assert result is not None and not result.found and result.schedules == 200


class ChooserGaveUp(BaseException):
    """What Hypothesis raises when it runs out of data (StopTest): not an Exception."""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_chooser_that_gives_up_mid_run_leaves_nothing_parked(backend: str) -> None:
    """Even tasks parked inside a shielded teardown are let go, and the run ends cleanly."""

    class GivesUp:
        def __init__(self, at: int) -> None:
            self.at = at

        def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
            if step == self.at:
                raise ChooserGaveUp
            return 0

    async def main(at: int) -> int:
        world = AvcmWorld()
        res = await world.vcm.make_binding(avcm.PAGE_SIZE)
        other = await world.vcm.make_binding(avcm.PAGE_SIZE)
        run = testing.Run(GivesUp(at))
        try:
            await run.concurrently(res.destroy_binding, other.unmap)
        except ChooserGaveUp:
            assert run.steps == at
        testing.check_quiescent([world.vcm])  # no lock held, nothing half done
        return run.steps

    at = 0
    while testing.run_on_virtual_time(backend, partial(main, at)) == at:
        at += 1
    assert at > 5  # it gave up at every step of both teardowns in turn, then ran through


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_task_that_polls_moves_one_poll_per_step(backend: str) -> None:
    """A poll loop is a task blocked on a timer: choosing it lets time pass to its next poll,
    choosing another lets that one go first. Never a stall, never a false deadlock."""

    async def scenario(run: testing.Run) -> None:
        flag = avcm.lowlevel.AtomicCounter()

        async def poller() -> int:
            polls = 0
            while not flag.value:
                polls += 1
                await anyio.sleep(0.01)
            return polls

        async def setter() -> None:
            await anyio.sleep(0.1)
            await flag.inc()

        polls, _ = await run.concurrently(poller, setter)
        # the setter, parked at its inc, gets its turn within a few polls however long the
        # strategy prefers the poller (a run that never ended would be a StepBudgetError)
        assert polls.unwrap() <= 10 + 2 * 8

    result = testing.explore(scenario, schedules=200, backend=backend)
    assert not result.found, result.failure and result.failure.report()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_tasks_spawned_by_a_controlled_task_run_free(backend: str) -> None:
    async def scenario(run: testing.Run) -> None:
        counter = avcm.lowlevel.AtomicCounter()

        async def spawner() -> None:
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(counter.inc)
            await counter.inc()

        await run.concurrently(spawner, counter.inc)
        assert counter.value == 5

    result = testing.explore(scenario, schedules=100, backend=backend)
    assert not result.found, result.failure and result.failure.report()


def test_concurrently_is_not_nested_and_runs_something() -> None:
    async def nested(run: testing.Run) -> None:
        async def inner() -> None:
            await run.concurrently(anyio.lowlevel.checkpoint)

        outcome = (await run.concurrently(inner))[0]
        assert isinstance(outcome.error, avcm.InvalidError), outcome
        with pytest.raises(avcm.InvalidError, match="2 functions but 1 names"):
            await run.concurrently(inner, inner, names=["one"])
        with pytest.raises(avcm.InvalidError, match="no function"):
            await run.concurrently()

    assert not testing.explore(nested, schedules=3).found


def test_more_bad_input() -> None:
    with pytest.raises(testing.TokenError, match="more than"):
        testing.ReplayToken.parse("avcm7:pct-d3:0:6:ca8e3356:0x99999999999")
    token = testing.ReplayToken.parse("avcm7:pct-d3:0:6:CA8E3356:0")
    assert token.digest == "ca8e3356"
    for not_a_scenario in (42, testing.Run):
        with pytest.raises(avcm.InvalidError, match="scenario"):
            testing.explore(not_a_scenario, schedules=1)  # type: ignore[arg-type]

    def not_async(run: testing.Run) -> None:
        pass

    with pytest.raises(avcm.InvalidError, match="async def"):
        testing.explore(not_async, schedules=1)  # type: ignore[arg-type]
    with pytest.raises(avcm.InvalidError, match="shrink_budget"):
        testing.explore(counting_tasks(1), shrink_budget=-1)
    for limits in ({}, 5, testing.Limits):
        with pytest.raises(avcm.InvalidError, match=r"limits must be an avcm\.testing\.Limits"):
            testing.explore(counting_tasks(1), limits=limits)  # type: ignore[arg-type]
        with pytest.raises(avcm.InvalidError, match=r"limits must be an avcm\.testing\.Limits"):
            testing.replay(counting_tasks(1), "avcm7:x:0:0:00000000:-", limits=limits)  # type: ignore[arg-type]

    def raises(memory: avcm.PhysicalMemory) -> avcm.Vcm:
        raise RuntimeError("no hardware here")

    with pytest.raises(avcm.InvalidError, match="factory raised RuntimeError: no hardware"):
        testing.check_conformance(raises)
    bad_path = replay_in_a_fresh_process(
        "tests.races:seed_two_binds_win", "avcm7:x:0:0:00000000:-", "--chrome-trace", "/no/dir/x"
    )
    assert bad_path.returncode == 2 and "cannot write" in bad_path.stderr


def test_exploration_reports_progress_after_each_schedule() -> None:
    seen: list[int] = []
    result = testing.explore(counting_tasks(2), schedules=7, on_progress=seen.append)
    assert result.schedules == 7 and seen == [1, 2, 3, 4, 5, 6, 7]


async def always_fails_after_many_steps(run: testing.Run) -> None:
    """Sixteen tasks passing twenty checkpoints each, then a failure whatever the schedule,
    but the event loop's own order (the tasks in turn)."""
    order: list[int] = []

    def worker(index: int) -> Callable[[], Awaitable[None]]:
        async def steps() -> None:
            for _ in range(20):
                order.append(index)
                await anyio.lowlevel.checkpoint()

        return steps

    await run.concurrently(*[worker(index) for index in range(16)])
    if order != list(range(16)) * 20:
        raise AssertionError("fails in every schedule but the loop's own order")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_failure_with_more_preemptions_than_exhaustive_takes_is_still_reported(
    backend: str,
) -> None:
    # shrinking searched every bound below the failure's preemptions with Exhaustive, which
    # takes at most 32: an InvalidError out of explore, and the failure lost
    result = testing.explore(
        always_fails_after_many_steps,
        strategy=testing.RandomWalk(0),
        schedules=2,  # (the first is the loop's own order)
        shrink_budget=0,
        backend=backend,
    )
    assert result.failure is not None
    assert result.failure.timeline.preemptions > 33
    assert "fails in every schedule" in str(result.failure.error)
    assert result.failure.fewest is False  # (no budget to search fewer)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_report_says_when_shrinking_did_not_rule_out_fewer_preemptions(backend: str) -> None:
    # three tasks, two preemptions at the fewest: one shrink run cannot rule out fewer
    scenario = queue_overflow(lead=0)
    for budget, fewest in ((1, False), (500, True)):
        result = testing.explore(
            scenario, strategy=testing.RandomWalk(0), schedules=100, shrink_budget=budget,
            backend=backend,
        )  # fmt: skip
        failure = result.failure
        assert failure is not None and failure.fewest is fewest
        note = "fewer preemptions not ruled out within the shrink budget"
        assert (note in " ".join(failure.report().split())) is not fewest
    assert failure.timeline.preemptions == 2
    # not shrunk: nothing to say
    unshrunk = testing.explore(
        scenario, strategy=testing.RandomWalk(0), schedules=100, shrink=False, backend=backend
    )
    assert unshrunk.failure is not None and unshrunk.failure.fewest is None


async def started_child_publishes_late(run: testing.Run) -> None:
    """Task ``a`` starts a child that says it started, then publishes ``x`` after a checkpoint;
    task ``b``, told by ``a`` once the child started, reads ``x`` after one checkpoint. Six
    more tasks only pass two checkpoints each. One preemption fails it: ``b`` (the fifth
    task) run before ``a``'s child publishes."""
    state: dict[str, int] = {}
    told = anyio.Event()

    async def a() -> None:
        async def child(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()
            await anyio.lowlevel.checkpoint()
            state["x"] = 1

        async with anyio.create_task_group() as group:
            await group.start(child)
            told.set()

    async def b() -> None:
        await told.wait()
        await anyio.lowlevel.checkpoint()
        assert state.get("x") == 1, "read before the child published"

    async def bystander() -> None:
        for _ in range(2):
            await anyio.lowlevel.checkpoint()

    tasks = [a, bystander, bystander, bystander, b, bystander, bystander, bystander]
    for outcome in await run.concurrently(*tasks):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("seed", [0, 2])
def test_a_preemption_of_any_of_eight_tasks_is_found_by_shrinking(backend: str, seed: int) -> None:
    # The shrinker's schedules with one preemption took out of turn no task further down the
    # run queue than the failing run had: PCT(2)'s failure, 12 preemptions, shrank to 6 with
    # "fewer not ruled out" (attack35 F2)
    result = testing.explore(
        started_child_publishes_late, strategy=testing.PCT(seed, depth=3), backend=backend
    )
    failure = result.failure
    assert failure is not None and "read before the child published" in str(failure.error)
    assert failure.timeline.preemptions == 1 and failure.fewest is True


async def last_of_eight_first_then_second(run: testing.Run) -> None:
    """The last of eight tasks notes 9 at its first step and, two checkpoints later, checks
    that task 1 (which notes 1 after one checkpoint) did not come right after it. Two
    preemptions fail it: the last task before task 0, then task 1 before task 0."""
    noted: list[int] = []

    async def first() -> None:
        noted.append(0)
        await anyio.lowlevel.checkpoint()

    async def second() -> None:
        await anyio.lowlevel.checkpoint()
        noted.append(1)
        await anyio.lowlevel.checkpoint()

    async def bystander() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()

    async def last() -> None:
        noted.append(9)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        assert noted[:2] != [9, 1], "task 1 came right after the last task"

    for outcome in await run.concurrently(first, second, *[bystander] * 5, last):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_of_the_failing_runs_own_preemptions_are_tried_together(backend: str) -> None:
    # PCT(0) finds it with 9 preemptions; the pairs of schedules that switch to the next task
    # alone never take the last task first, and on trio the report kept all 9 (attack36 N1)
    result = testing.explore(
        last_of_eight_first_then_second, strategy=testing.PCT(0), backend=backend
    )
    failure = result.failure
    assert failure is not None and "came right after" in str(failure.error)
    assert failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2 and failure.fewest is True


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "strategy", [testing.PCT(2), testing.RandomWalk(3)], ids=["PCT(2)", "RandomWalk(3)"]
)
def test_a_task_run_ahead_for_no_part_of_the_race_runs_in_its_turn_again(
    backend: str, strategy: testing.Strategy
) -> None:
    # found behind a bystander run ahead first (PCT(2): 8 preemptions) or with the tasks
    # shuffled throughout (RandomWalk(3): 23): taking a position back makes every later one
    # point at another task, and the report kept 8 and 23 on trio, 3 on asyncio (attack36 N1).
    # The order of the tasks is what the race needs: shrinking keeps it, with fewer turns.
    result = testing.explore(
        last_of_eight_first_then_second, strategy=strategy, schedules=500, backend=backend
    )
    failure = result.failure
    assert failure is not None and "came right after" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2 and failure.fewest is True


def _stepper(steps: int) -> Callable[[], Awaitable[None]]:
    """A task that takes *steps* steps and does nothing else."""

    async def step() -> None:
        for _ in range(steps):
            await anyio.lowlevel.checkpoint()

    return step


def _clearer(flags: list[bool], flag: int, after: int = 4) -> Callable[[], Awaitable[None]]:
    """A task that clears ``flags[flag]`` after *after* steps."""
    steps = _stepper(after)

    async def clear() -> None:
        await steps()
        flags[flag] = False

    return clear


_bystander = _stepper(3)


def _shrunk(
    scenario: testing.Scenario,
    strategy: testing.Strategy,
    backend: str,
    schedules: int = 500,
    shrink_budget: int = 500,
) -> testing.Failure:
    """The failure *strategy* finds in *scenario* within *schedules*, shrunk."""
    failure = testing.explore(
        scenario,
        strategy=strategy,
        schedules=schedules,
        backend=backend,
        shrink_budget=shrink_budget,
    ).failure
    assert failure is not None
    return failure


async def two_clear_in_a_window_among_thirteen(run: testing.Run) -> None:
    """A watcher sees two flags set, takes one step, and must not find both cleared; each of
    two clearers clears its flag after four steps, and ten bystanders take three steps each.
    Two preemptions fail it: the watcher's look, then each clearer run ahead in turn."""
    flags = [True, True]

    async def watcher() -> None:
        if all(flags):
            await anyio.lowlevel.checkpoint()
            assert any(flags), "both flags cleared between two steps of the watcher"

    tasks = [watcher, _clearer(flags, 0), _clearer(flags, 1), *[_bystander] * 10]
    for outcome in await run.concurrently(*tasks):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "strategy", [testing.PCT(0), testing.RandomWalk(0)], ids=["PCT(0)", "RandomWalk(0)"]
)
def test_with_thirteen_tasks_single_preemptions_leave_budget_for_the_order_of_tasks(
    backend: str, strategy: testing.Strategy
) -> None:
    # the schedules with one preemption are as many as the run's choices times its tasks:
    # tried first and to the end, they took the whole budget, and 15 to 44 preemptions were
    # reported where 2 fail (attack37). Whether none fails with fewer may take more runs than
    # the budget to prove: the report says when it did not.
    failure = _shrunk(two_clear_in_a_window_among_thirteen, strategy, backend)
    assert "both flags cleared" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2
    assert (failure.fewest is False) == ("not ruled out" in failure.report())


async def a_window_late_in_a_long_run(run: testing.Run) -> None:
    """A watcher takes 150 steps, sees the flag set, takes one more and must not find it
    cleared; the clearer clears it after 154 steps; two bystanders take 200. One preemption
    fails it, the clearer run ahead right after the watcher's look: about 100 choices before
    the end of the run with none (709 steps)."""
    flags = [True]
    lead_in = _stepper(150)

    async def watcher() -> None:
        await lead_in()
        if flags[0]:
            await anyio.lowlevel.checkpoint()
            assert flags[0], "the flag was cleared between two steps of the watcher"

    tasks = [watcher, _clearer(flags, 0, after=154), _stepper(200), _stepper(200)]
    for outcome in await run.concurrently(*tasks):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_race_late_in_a_long_run_shrinks_to_its_one_preemption(backend: str) -> None:
    # Random walk finds it with about 500 preemptions. The schedules of one preemption were
    # tried from both ends of the run with none: 100 choices from its end, the race was past
    # half the budget, and 174 were reported (attack37 F1). They are tried outwards from where
    # that run has the failing task take the step it failed at too, in turns.
    failure = _shrunk(a_window_late_in_a_long_run, testing.RandomWalk(0), backend)
    assert "cleared between two steps" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 100
    assert failure.timeline.preemptions == 1 and failure.fewest is True


def a_lost_update_seen_by_another(
    *, racers_steps: int, read_at: int, checker: bool, bystanders: int
) -> Callable[[testing.Run], Awaitable[None]]:
    """A scenario: one task reads a counter after *read_at* steps and writes it back one
    more two steps later; another adds one to it four steps after that read (in the loop's
    own order, after the write). Both take *racers_steps* steps. What fails is not either of
    them: a *checker* task that waits for both and finds one update lost, else the scenario
    itself once they are done. One preemption fails it: the adder run ahead right after the
    read."""

    async def scenario(run: testing.Run) -> None:
        counter = [0]
        both_done = anyio.Event()
        done = [0]

        def finished() -> None:
            done[0] += 1
            if done[0] == 2:
                both_done.set()

        async def reader() -> None:
            await _stepper(read_at)()
            seen = counter[0]
            await _stepper(2)()
            counter[0] = seen + 1
            await _stepper(racers_steps - read_at - 2)()
            finished()

        async def adder() -> None:
            await _stepper(read_at + 4)()
            counter[0] += 1
            await _stepper(racers_steps - read_at - 4)()
            finished()

        async def check() -> None:
            await _stepper(racers_steps + 5)()
            await both_done.wait()
            assert counter[0] == 2, "the checker found an update lost"

        tasks = [
            reader,
            adder,
            *([check] if checker else []),
            *[_stepper(racers_steps)] * bystanders,
        ]
        for outcome in await run.concurrently(*tasks):
            outcome.unwrap()
        assert counter[0] == 2, "the scenario found an update lost"

    return scenario


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("racers_steps", "read_at", "checker", "bystanders", "found_by"),
    [(300, 150, False, 0, "the scenario"), (150, 142, True, 2, "the checker")],
    ids=["the scenario fails mid-run", "a checker fails late in the run"],
)
def test_a_race_another_task_fails_at_the_end_shrinks_to_its_one_preemption(
    backend: str, racers_steps: int, read_at: int, checker: bool, bystanders: int, found_by: str
) -> None:
    # The task that fails takes its last step at the end of the run, far from the race:
    # outwards from there and from both ends, the one preemption that fails was past the
    # budget, and 124 to 167 were reported where Exhaustive(1) fails it (attack40). The
    # shortest prefix of the failing run that fails, bisected, ends at the choice that made
    # the failure certain: the one preemption is looked for where the tasks have taken as
    # many steps as they had there.
    scenario = a_lost_update_seen_by_another(
        racers_steps=racers_steps, read_at=read_at, checker=checker, bystanders=bystanders
    )
    failure = _shrunk(scenario, testing.RandomWalk(0), backend)
    assert f"{found_by} found an update lost" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 100
    assert failure.timeline.preemptions == 1 and failure.fewest is True


async def a_window_two_clearers_must_enter(run: testing.Run) -> None:
    """A watcher takes 20 steps, sees both flags set, takes one more and must not find both
    cleared; each of two clearers clears its flag after 24 steps; six bystanders take 50.
    Two preemptions fail it, each clearer run ahead into the watcher's window in turn."""
    flags = [True, True]

    async def watcher() -> None:
        await _stepper(20)()
        if all(flags):
            await anyio.lowlevel.checkpoint()
            assert any(flags), "both flags cleared between two steps of the watcher"

    clearers = [_clearer(flags, 0, after=24), _clearer(flags, 1, after=24)]
    for outcome in await run.concurrently(watcher, *clearers, *[_stepper(50)] * 6):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_window_two_tasks_must_enter_in_turn_shrinks_to_two_preemptions(backend: str) -> None:
    # Random walk finds it with about 300 preemptions. The generic two-preemption schedules
    # start from the front of the run, and many more than 2 were kept (attack37 F2: 315 for
    # such a window 150 steps in). Shrinking tries the schedules of two preemptions in a row
    # too, near the failing run's decisive choice: the second where the task the first ran
    # ahead stops.
    failure = _shrunk(a_window_two_clearers_must_enter, testing.RandomWalk(0), backend)
    assert "both flags cleared" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2


async def a_torn_read_logged_out_of_order(run: testing.Run) -> None:
    """A writer sets two halves of a pair two steps apart; a reader reads the pair and logs
    what it saw two steps later; a logger logs a mark. A checker, once all three are done,
    fails on a torn pair logged after the mark: the reader run ahead into the writer's
    window, and the logger into the reader's, two preemptions."""
    pair = [0, 0]
    log: list[object] = []
    done = anyio.Event()
    left = [3]

    def finished() -> None:
        left[0] -= 1
        if not left[0]:
            done.set()

    async def writer() -> None:
        await _stepper(2)()
        pair[0] = 1
        await _stepper(2)()
        pair[1] = 1
        await _stepper(20)()
        finished()

    async def reader() -> None:
        await _stepper(8)()
        seen = tuple(pair)
        await _stepper(2)()
        log.append(seen)
        await _stepper(14)()
        finished()

    async def logger() -> None:
        await _stepper(14)()
        log.append("mark")
        await _stepper(10)()
        finished()

    async def checker() -> None:
        await done.wait()
        assert not ((1, 0) in log and log[0] == "mark"), f"a torn pair logged late: {log}"

    for outcome in await run.concurrently(writer, reader, logger, checker):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "strategy", [testing.RandomWalk(4), testing.PCT(0)], ids=["RandomWalk(4)", "PCT(0)"]
)
def test_a_race_of_two_preemptions_is_proven_fewest_within_the_budget(
    backend: str, strategy: testing.Strategy
) -> None:
    # Proving two the fewest takes every schedule of one preemption. Exhaustive(1) ran them
    # all again after the searches before it, and the budget ran out: here 4 of 24
    # explorations (random walk and PCT, seeds 0-5) were proven fewest, and random walk's
    # seed 4 kept 5 (attack41's such race: 2 of 12). The schedules of one preemption run
    # before are not run again, only those left: 24 of 24 now.
    one = testing.explore(
        a_torn_read_logged_out_of_order,
        strategy=testing.Exhaustive(1),
        schedules=2000,
        backend=backend,
    )
    assert one.exhausted and not one.found
    failure = _shrunk(a_torn_read_logged_out_of_order, strategy, backend, schedules=1000)
    assert "a torn pair logged late" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2 and failure.fewest is True


async def two_lost_updates_among_four(run: testing.Run) -> None:
    """Four workers each read a counter, take two steps and write what they read plus one,
    each starting five steps after the one before; a checker, once all are done, lets one
    update be lost. Two lost updates fail it: two separate windows, a preemption in each."""
    counter = [0]

    def worker(index: int) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            await _stepper(2 + 5 * index)()
            seen = counter[0]
            await _stepper(2)()
            counter[0] = seen + 1
            await _stepper(30 - 5 * index)()

        return work

    def check() -> None:
        assert counter[0] >= 3, f"{4 - counter[0]} updates lost"

    await _workers_then_check(run, [worker(index) for index in range(4)], check)


async def _workers_then_check(
    run: testing.Run, workers: list[Callable[[], Awaitable[None]]], check: Callable[[], None]
) -> None:
    """Run *workers*, and a checker task that waits till all are done and calls *check*."""
    done = anyio.Event()
    left = [len(workers)]

    def counted(work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def work_then_count() -> None:
            await work()
            left[0] -= 1
            if not left[0]:
                done.set()

        return work_then_count

    async def checker() -> None:
        await done.wait()
        check()

    for outcome in await run.concurrently(*(counted(work) for work in workers), checker):
        outcome.unwrap()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_lost_updates_among_four_need_two_preemptions(backend: str) -> None:
    one = testing.explore(
        two_lost_updates_among_four,
        strategy=testing.Exhaustive(1),
        schedules=2000,
        backend=backend,
    )
    assert one.exhausted and not one.found


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("strategy", [testing.PCT(0), testing.PCT(2)], ids=["PCT(0)", "PCT(2)"])
def test_races_in_two_separate_windows_shrink_to_two_preemptions(
    backend: str, strategy: testing.Strategy
) -> None:
    # Each window needs a preemption of its own, far apart: the generic pairs start from the
    # front and reach the second window past the budget; 4 and 5 were kept (attack41's
    # two_lost: 3 to 7). Shrinking places each of two preemptions where one of the decisive
    # run's is, in turn: one before its decisive choice, then the decisive choice.
    failure = _shrunk(two_lost_updates_among_four, strategy, backend)
    assert "2 updates lost" in str(failure.error)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2


async def a_bounded_counter_taken_twice_past_its_bound(run: testing.Run) -> None:
    """Five holders, each starting three steps after the one before, take a counter bounded
    at 2 if it is below 2 (a step between the check and the increment), wait till all have
    tried, and give it back; the scenario lets the bound be overrun by one. Overrun by two
    fails it: two holders must each run ahead into the window between the others' checks
    and increments."""
    count, peak = [0], [0]
    all_tried = anyio.Event()
    tried = [0]

    def holder(index: int) -> Callable[[], Awaitable[None]]:
        async def hold() -> None:
            await _stepper(1 + 3 * index)()
            took = count[0] < 2
            if took:
                await anyio.lowlevel.checkpoint()
                count[0] += 1
                peak[0] = max(peak[0], count[0])
            tried[0] += 1
            if tried[0] == 5:
                all_tried.set()
            await all_tried.wait()
            if took:
                count[0] -= 1

        return hold

    for outcome in await run.concurrently(*(holder(index) for index in range(5))):
        outcome.unwrap()
    assert peak[0] <= 3, f"a counter bounded at 2 held {peak[0]} times at once"


async def two_appends_past_a_full_list(run: testing.Run) -> None:
    """Four workers, each starting four steps after the one before, append to a list of
    room 2 if it has room (two steps between the check and the append); a checker, once all
    are done, lets one append past the room pass. Two fail it: two windows to get into."""
    items: list[int] = []

    def worker(index: int) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            await _stepper(1 + 4 * index)()
            if len(items) < 2:
                await _stepper(2)()
                items.append(index)
            await _stepper(6)()

        return work

    def check() -> None:
        assert len(items) <= 3, f"{len(items)} items in a list of room 2"

    await _workers_then_check(run, [worker(index) for index in range(4)], check)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "scenario", [a_bounded_counter_taken_twice_past_its_bound, two_appends_past_a_full_list]
)
def test_check_then_act_races_need_two_preemptions(
    backend: str, scenario: testing.Scenario
) -> None:
    one = testing.explore(scenario, strategy=testing.Exhaustive(1), schedules=2000, backend=backend)
    assert one.exhausted and not one.found


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("scenario", "seed"),
    [
        (a_bounded_counter_taken_twice_past_its_bound, 1),
        (a_bounded_counter_taken_twice_past_its_bound, 2),
        (two_appends_past_a_full_list, 4),
        (two_appends_past_a_full_list, 5),
    ],
)
def test_tasks_run_ahead_early_shrink_to_those_run_ahead_into_the_window(
    backend: str, scenario: testing.Scenario, seed: int
) -> None:
    # PCT runs tasks ahead from their start, each needing another's preemption to meet the
    # others in the window; the searches of one and two preemptions placed by the decisive
    # choice kept 3 or 4 where 2 fail (attack43's list and bounded counter: 5 to 16 and 4
    # to 8). Shrinking then takes the best run's preemptions out one at a time, the others
    # kept after the same steps of the same tasks, and one out while another's task runs
    # ahead from a later step of its own: two, and every schedule of one run and passed.
    # (Since PCT places its change points among choice points only, the list's failures it
    # finds first take 5 or 6 preemptions: 500 runs shrink them to 3, not proven fewest;
    # the budget below, 4 s, to 2, proven.)
    failure = _shrunk(scenario, testing.PCT(seed), backend, shrink_budget=3000)
    assert failure.shrunk_from is not None and failure.shrunk_from[1] > 2
    assert failure.timeline.preemptions == 2 and failure.fewest is True


async def two_bugs_in_a_task_group(run: testing.Run) -> None:
    """A checker, in a task group of its own, sees two flags set and takes one step: both
    cleared meanwhile is one bug (``ValueError``, two preemptions), the first alone another
    (``KeyError``, one preemption). Either fails the scenario with an exception group."""
    flags = [True, True]

    async def check() -> None:
        if all(flags):
            await anyio.lowlevel.checkpoint()
            if not any(flags):
                raise ValueError("both flags cleared")
            if flags == [False, True]:
                raise KeyError("the first flag alone cleared")

    async def checker() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(check)

    for outcome in await run.concurrently(
        checker, _clearer(flags, 0), _clearer(flags, 1), _bystander
    ):
        outcome.unwrap()


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_shrinking_keeps_the_bug_inside_an_exception_group(backend: str) -> None:
    # by its type alone, an exception group of the two-preemption bug was the same failure as
    # one of the one-preemption bug: that one was reported, proven fewest (attack37 F3)
    shrunk = 0
    for seed in range(30):
        strategy = testing.RandomWalk(seed)
        found = testing.explore(
            two_bugs_in_a_task_group,
            strategy=strategy,
            schedules=2000,
            backend=backend,
            shrink=False,
        ).failure
        if found is None or not isinstance(_leaf(found.error), ValueError):
            continue
        failure = testing.explore(
            two_bugs_in_a_task_group, strategy=strategy, schedules=2000, backend=backend
        ).failure
        assert failure is not None and isinstance(_leaf(failure.error), ValueError)
        assert failure.timeline.preemptions == 2
        shrunk += 1
        if shrunk == 3:
            return
    pytest.fail(f"random walk found the two-preemption bug with {shrunk} seeds of 30")


# -- the default strategy: PCT and a random walk in turns --------------------------------------


async def three_past_a_bound_of_two(run: testing.Run) -> None:
    """Three tasks pass a lock, then each checks a count below 2, yields, raises it and yields
    again: all three inside at once is one preemption from the loop's own order, but PCT
    depth 4 (attack53: depths 1 to 3 missed it in thousands of schedules)."""
    lock = anyio.Lock()
    count = [0]
    peak = [0]

    async def task() -> None:
        async with lock:
            pass
        if count[0] < 2:
            await anyio.lowlevel.checkpoint()
            count[0] += 1
            peak[0] = max(peak[0], count[0])
            await anyio.lowlevel.checkpoint()
            count[0] -= 1

    await run.concurrently(task, task, task)
    assert peak[0] <= 2, f"{peak[0]} inside a bound of 2"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_default_strategy_finds_a_race_pct_needs_depth_four_for(backend: str) -> None:
    assert not testing.explore(
        three_past_a_bound_of_two, strategy=testing.Exhaustive(0), backend=backend
    ).found
    result = testing.explore(three_past_a_bound_of_two, schedules=400, backend=backend)
    assert result.strategy == "portfolio"
    assert result.failure is not None, "missed"
    assert "3 inside a bound of 2" in str(result.failure.error)
    assert result.failure.timeline.preemptions == 1 and result.failure.fewest
    assert result.failure.token.strategy == "portfolio"
    replayed = testing.replay(three_past_a_bound_of_two, result.failure.token, backend=backend)
    assert replayed is not None
    assert "3 inside a bound of 2" in str(replayed.error)


def test_a_portfolio_takes_turns_after_the_loops_own_order() -> None:
    portfolio = testing.Portfolio(5, cancel=1)
    assert [part.name for part in portfolio.parts] == [
        "pct-d1-c1",
        "pct-d2-c1",
        "pct-d3-c1",
        "random-c1",
    ]
    assert all(part.seed == 5 for part in portfolio.parts)
    assert portfolio.name == "portfolio-c1"
    assert portfolio.part(0) == (portfolio.parts[0], 0)  # the loop's own order, once
    assert [portfolio.part(schedule) for schedule in range(1, 10)] == [
        (portfolio.parts[index % 4], index // 4 + 1) for index in range(9)
    ]
    again = portfolio.with_seed(6)
    assert isinstance(again, testing.Portfolio) and again.seed == 6 and again.cancel == 1
    with pytest.raises(avcm.InvalidError):
        testing.Portfolio(-1)
