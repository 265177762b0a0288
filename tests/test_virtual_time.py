"""Virtual time: a simulated driver's latency takes the same virtual time, and interleaves with
other tasks the same way, whether its sleep goes through the event loop or moves the virtual
clock in place (``VirtualTimeEventLoop.sleep_in_place``)."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import avcm
import drivers
import stress
from avcm import testing
from avcm.testing import _clock as clock_module  # avcm-private: its trio sleep in place

MiB = 1 << 20
KiB = 1 << 10


def _run_virtual(backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(
        main, backend=backend, backend_options=testing.backend_options(backend, 0, virtual=True)
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_driver_latency_interleaves_by_virtual_time(backend: str) -> None:
    # two contexts whose page writes take 2 us and 3 us (no jitter), mapped at once: each
    # page is written after its own delay, and the two walks interleave by virtual time
    events: list[tuple[float, str]] = []

    class Recording(drivers.PageTableMmu):
        async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
            await super().activate_page(vaddr, paddr, order, vcm)
            events.append((round(anyio.current_time() * 1e6, 6), self.name))

    async def main() -> None:
        memory = avcm.PhysicalMemory()
        vcms = []
        for name, delay in (("a", 2e-6), ("b", 3e-6)):
            latency = drivers.Latency({"pte_write": delay}, jitter=0.0)
            mmu = Recording(memory, orders=(0,), latency=latency, name=name)
            vcm = avcm.mmu_init(0x1000_0000, 1 << 30, mmu, memory=memory, name=name)
            await vcm.activate()
            vcms.append(vcm)
        physes = [await vcm.alloc(3 * 4 * KiB) for vcm in vcms]
        start = anyio.current_time()
        events.clear()
        async with anyio.create_task_group() as group:
            for vcm, phys in zip(vcms, physes, strict=True):
                group.start_soon(vcm.map, phys)
        assert anyio.current_time() - start == pytest.approx(9e-6)

    _run_virtual(backend, main)
    at = [(round(when - events[0][0] + 2, 6), name) for when, name in events]
    # in the order of virtual time (the tie at 6 us either way), each after its own delays
    assert [when for when, _ in at] == [2, 3, 4, 6, 6, 9]
    assert [when for when, name in at if name == "a"] == [2, 4, 6]
    assert [when for when, name in at if name == "b"] == [3, 6, 9]


async def _on_virtual_loop(body: Callable[[Any], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, testing.VirtualTimeEventLoop)
    await body(loop)


def _asyncio_virtual(body: Callable[[Any], Awaitable[None]]) -> None:
    _run_virtual("asyncio", lambda: _on_virtual_loop(body))


def test_sleep_in_place_moves_the_clock_when_nothing_could_run_first() -> None:
    async def body(loop: testing.VirtualTimeEventLoop) -> None:
        start = loop.time()
        assert loop.sleep_in_place(5e-6)
        assert loop.time() == start + 5e-6
        # a timer due later than the sleeper's wake-up does not stop it
        handle = loop.call_later(1.0, lambda: None)
        assert loop.sleep_in_place(5e-6)
        handle.cancel()

    _asyncio_virtual(body)


def test_timers_due_at_one_instant_run_in_the_order_they_were_armed() -> None:
    # (on a real clock a timer armed later with the same delay is due later; asyncio's heap
    # took tied timers in an order of its own: attack35 F1)
    async def body(loop: testing.VirtualTimeEventLoop) -> None:
        ran: list[int] = []
        start = loop.time()
        handles = [loop.call_at(start + 1.0 + index % 2, ran.append, index) for index in range(12)]
        handles[4].cancel()
        loop.call_later(1.0, ran.append, 12)
        await asyncio.sleep(3)
        assert ran == [0, 2, 6, 8, 10, 12, 1, 3, 5, 7, 9, 11]

    _asyncio_virtual(body)


def test_sleep_in_place_declines_when_something_could_run_first() -> None:
    async def body(loop: testing.VirtualTimeEventLoop) -> None:
        start = loop.time()
        # a ready callback runs before a sleeper wakes
        handle = loop.call_soon(lambda: None)
        assert not loop.sleep_in_place(5e-6)
        handle.cancel()
        await anyio.lowlevel.checkpoint()
        # a timer due before the sleeper's, or with it
        for due in (1e-6, 5e-6):
            timer = loop.call_later(due, lambda: None)
            assert not loop.sleep_in_place(5e-6)
            timer.cancel()
            await anyio.lowlevel.checkpoint()
        # a cancellation pending for the task is delivered at the sleep
        with anyio.CancelScope() as scope:
            scope.cancel()
            assert not loop.sleep_in_place(5e-6)
            await anyio.sleep(5e-6)
        assert scope.cancelled_caught
        # the race finder watching work outside the loop (it owns the steps), or I/O waited for
        loop.count_reads = True
        assert not loop.sleep_in_place(5e-6)
        loop.count_reads = False
        reader, writer = socket.socketpair()
        loop.add_reader(reader.fileno(), lambda: None)
        assert not loop.sleep_in_place(5e-6)
        loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()
        assert loop.time() == start  # nothing declined moved the clock

    _asyncio_virtual(body)


def _trace(config: stress.StressConfig) -> list[tuple[object, ...]]:
    result = stress.run(config)
    assert result.violation is None
    return [(o.seq, o.task, o.op, o.target, o.result, o.vtime) for o in result.trace]


@pytest.mark.parametrize(
    "options",
    [
        {"tasks": 3, "seed": 2, "ops": 1500},
        {"tasks": 16, "seed": 6, "ops": 1500, "cancel": 0.2, "faults": 0.05},
    ],
)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_stress_run_is_the_same_with_sleeps_in_place(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], backend: str
) -> None:
    config = stress.StressConfig(backend=backend, **options)
    in_place = _trace(config)
    if backend == "asyncio":
        monkeypatch.setattr(testing.VirtualTimeEventLoop, "sleep_in_place", lambda self, d: False)
    else:
        monkeypatch.setattr(clock_module, "_trio_sleep_in_place", lambda clock, frame, delay: False)
    assert _trace(config) == in_place


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lone_drivers_latency_moves_the_clock_in_place(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    in_place: list[float] = []
    owner: Any = testing.VirtualTimeEventLoop if backend == "asyncio" else clock_module
    name = "sleep_in_place" if backend == "asyncio" else "_trio_sleep_in_place"
    sleep_in_place = getattr(owner, name)

    def counted(*args: Any) -> bool:  # (the loop or the clock, ..., the delay)
        done: bool = sleep_in_place(*args)
        if done:
            in_place.append(args[-1])
        return done

    monkeypatch.setattr(owner, name, counted)

    async def main() -> float:
        memory = avcm.PhysicalMemory()
        latency = drivers.Latency({"pte_write": 2e-6, "enable": 20e-6}, jitter=0.0)
        vcm = drivers.create_cpu(memory, latency=latency)
        phys = await vcm.alloc(64 * KiB)
        start = anyio.current_time()
        await vcm.activate()
        await vcm.map(phys)
        alone = anyio.current_time() - start
        # with another task due first, a sleep is a sleep: the other runs at its own time
        woke: list[float] = []

        async def other() -> None:
            await anyio.sleep(1e-6)
            woke.append(anyio.current_time())

        async with anyio.create_task_group() as group:
            group.start_soon(other)
            await anyio.lowlevel.checkpoint()  # other's deadline set
            before = anyio.current_time()
            await (await vcm.map(phys)).unmap()
        assert woke == [pytest.approx(before + 1e-6)]
        return alone

    assert _run_virtual(backend, main) == pytest.approx(20e-6 + 16 * 2e-6)
    assert in_place[:17] == [20e-6] + [2e-6] * 16


def test_a_signal_handler_runs_while_tasks_sleep_in_virtual_time() -> None:
    # A signal reaches a loop's handler through its self-pipe. The virtual loop does not poll
    # that pipe while only it is registered, unless the loop has had a signal handler: with
    # one, a loop kept busy by timers must still run the handler.
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        got: list[str] = []
        loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
        try:
            signal.raise_signal(signal.SIGUSR1)
            for _ in range(1000):  # each a loop iteration moving virtual time
                if got:
                    break
                await asyncio.sleep(1)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return got

    with asyncio.Runner(loop_factory=testing.VirtualTimeEventLoop) as runner:
        assert runner.run(main()) == ["usr1"]


# -- the spin rule: a poll of the clock with a checkpoint between reads sees time pass ----------

SPIN = clock_module._SPIN_READS  # avcm-private: the spin rule's count
QUANTUM = clock_module._SPIN_QUANTUM  # avcm-private: and its least move
# a bound on a poll's reads, so that a clock that never moves fails the test instead of hanging
POLL_BOUND = 100 * SPIN
CHECKPOINTS: dict[str, Callable[[], Awaitable[None]]] = {
    "sleep(0)": lambda: anyio.sleep(0),  # noqa: ASYNC115 - what a driver writes
    "checkpoint": anyio.lowlevel.checkpoint,
}


async def _poll(
    seconds: float,
    checkpoint: Callable[[], Awaitable[None]],
    trace: list[float] | None = None,
    *,
    bound: int = POLL_BOUND,
) -> float:
    """Wait *seconds* by reading the clock with *checkpoint* between reads (a driver waiting
    for its hardware), at most *bound* reads: the time the deadline was seen passed at."""
    deadline = anyio.current_time() + seconds
    for _ in range(bound):
        now = anyio.current_time()
        if now >= deadline:
            return now
        if trace is not None and (not trace or trace[-1] != now):
            trace.append(now)
        await checkpoint()
    raise AssertionError(f"the clock stood still at {now} for {bound} reads")


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("seconds", [1e-4, 5.0])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_poll_of_the_clock_sees_its_deadline_pass(
    backend: str, seconds: float, checkpoint: str
) -> None:
    # Reported (F5): a correct driver waiting for a deadline with sleep(0) between reads of
    # the clock never saw virtual time move (it moved only when every task waited), and a
    # stress run of it stalled
    async def main() -> tuple[float, float]:
        start = anyio.current_time()
        return start, await _poll(seconds, CHECKPOINTS[checkpoint])

    start, seen = testing.run_on_virtual_time(backend, main)
    assert seen >= start + seconds
    # by quanta of a millisecond doubling while the poll goes on: a far deadline costs a few
    # thousand reads a doubling, not a read a millisecond
    assert seen < start + 2 * seconds + QUANTUM


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_clock_moves_for_a_poll_after_as_many_reads_from_one_place_as_the_rule_counts(
    backend: str,
) -> None:
    async def main() -> list[float]:
        await anyio.sleep(1.0)  # the count starts again where the clock moved
        start = anyio.current_time()
        seen = []
        for _ in range(SPIN + 1):
            seen.append(anyio.current_time() - start)
            await anyio.lowlevel.checkpoint()
        return seen

    seen = testing.run_on_virtual_time(backend, main)
    # SPIN - 1 reads from the poll's place see it still; the SPIN-th moves it
    assert seen[: SPIN - 1] == [0.0] * (SPIN - 1)
    assert seen[SPIN - 1 :] == [pytest.approx(QUANTUM, abs=1e-12)] * 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_reads_from_two_places_in_turn_do_not_move_the_clock(backend: str) -> None:
    # the stress harness reads the clock where an operation starts and where it ends: no poll
    async def main() -> set[float]:
        start = anyio.current_time()
        seen = set()
        for _ in range(4 * SPIN):
            seen.add(anyio.current_time() - start)
            await anyio.lowlevel.checkpoint()
            seen.add(anyio.current_time() - start)
        return seen

    assert testing.run_on_virtual_time(backend, main) == {0.0}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_harness_reading_its_clock_from_one_place_does_not_move_it(backend: str) -> None:
    # what a poll of anyio.current_time from one place moves (above), harness_clock does not:
    # a harness's bookkeeping is no task waiting for the clock
    async def main() -> tuple[set[float], float]:
        clock = testing.harness_clock()
        start = clock()
        seen = set()
        for _ in range(4 * SPIN):
            seen.add(clock() - start)
            await anyio.lowlevel.checkpoint()
        return seen, anyio.current_time() - start

    seen, now = testing.run_on_virtual_time(backend, main)
    assert seen == {0.0}
    assert now == 0.0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_harness_clock_is_the_loops_own_off_avcms_virtual_clocks(backend: str) -> None:
    async def main() -> tuple[float, float]:
        await anyio.sleep(0.01)
        return testing.harness_clock()(), anyio.current_time()

    harness, loop = anyio.run(main, backend=backend)
    assert harness == pytest.approx(loop, abs=0.01)


def test_a_sleep_is_no_read_of_the_clock_for_the_spin_rule() -> None:
    # asyncio.sleep arms its timer from the task, through call_later: a read by the loop
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, testing.VirtualTimeEventLoop)
        loop.count_reads = True
        for _ in range(3):
            await asyncio.sleep(1e-3)
        sleeping = loop.task_reads
        anyio.current_time()
        return sleeping, loop.task_reads

    assert testing.run_on_virtual_time("asyncio", main) == (0, 1)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_each_wait_of_a_poll_moves_the_clock_from_a_quantum_again(
    backend: str, checkpoint: str
) -> None:
    # Reported (attack16): a first spin rule kept growing its moves from one wait to the
    # next, so that 20 waits of 2 us each took 17 virtual minutes, and 200 of them 173 days
    async def main() -> float:
        start = anyio.current_time()
        for _ in range(200):
            await _poll(2e-6, CHECKPOINTS[checkpoint])
        return anyio.current_time() - start

    elapsed = testing.run_on_virtual_time(backend, main)
    # each wait overshoots its deadline by less than the wait itself
    assert 200 * 2e-6 <= elapsed < 200 * 4e-6


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_poll_moves_the_clock_no_further_than_the_next_timer(backend: str) -> None:
    # a sleeper wakes at its own time, not later, while another task polls past it; a
    # timeout around a poll that never ends falls due at its deadline, not later (nor
    # sooner than a microsecond a read: 10,500 reads)
    async def main() -> tuple[float, float, float, bool]:
        start = anyio.current_time()
        woke: list[float] = []

        async def sleeper() -> None:
            await anyio.sleep(3e-3)
            woke.append(anyio.current_time() - start)

        async with anyio.create_task_group() as group:
            group.start_soon(sleeper)
            polled = await _poll(0.01, CHECKPOINTS["sleep(0)"]) - start
        with anyio.move_on_after(0.0105) as scope:
            await _poll(math.inf, CHECKPOINTS["checkpoint"], bound=11_000)
        return woke[0], polled, anyio.current_time() - start - polled, scope.cancelled_caught

    woke, polled, timed_out, cancelled = testing.run_on_virtual_time(backend, main)
    assert woke == pytest.approx(3e-3, abs=1e-12)
    assert 0.01 <= polled < 0.02
    assert cancelled and timed_out == pytest.approx(0.0105, abs=1e-12)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_work_reading_the_clock_under_a_timeout_reaches_it_no_sooner_than_a_real_loop(
    backend: str,
) -> None:
    # Reported (attack21): a computation of 5,000 rounds under fail_after(1) that reads the
    # clock each round (one place: the spin rule's poll) timed out after 169 rounds, the
    # moves doubling up to the deadline; a real loop's round takes a microsecond at least
    async def main() -> tuple[int, float]:
        rounds = 0
        with anyio.fail_after(1):
            start = anyio.current_time()
            for _ in range(5_000):
                elapsed = anyio.current_time() - start
                await anyio.lowlevel.checkpoint()
                rounds += 1
        return rounds, elapsed

    rounds, elapsed = testing.run_on_virtual_time(backend, main)
    assert rounds == 5_000
    assert elapsed <= rounds * QUANTUM


def _polls_and_sleeps(backend: str) -> list[tuple[str, float]]:
    """A run of three tasks polling the clock and one sleeping, with what each saw when."""
    seen: list[tuple[str, float]] = []

    async def poller(name: str, seconds: float, checkpoint: str) -> None:
        trace: list[float] = []
        done = await _poll(seconds, CHECKPOINTS[checkpoint], trace)
        seen.extend((name, when) for when in [*trace, done])

    async def sleeper() -> None:
        for _ in range(5):
            await anyio.sleep(7e-4)
            seen.append(("sleeper", anyio.current_time()))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(poller, "a", 1e-4, "sleep(0)")
            group.start_soon(poller, "b", 2.5e-3, "checkpoint")
            group.start_soon(sleeper)
            group.start_soon(poller, "c", 0.1, "sleep(0)")

    testing.run_on_virtual_time(backend, main)
    return seen


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_run_that_polls_the_clock_replays_the_same(backend: str) -> None:
    first = _polls_and_sleeps(backend)
    assert {name for name, _ in first} == {"a", "b", "c", "sleeper"}
    assert _polls_and_sleeps(backend) == first


# -- the busy-loop rule: a loop that runs and runs at one instant takes time ---------------------

BUSY = clock_module._BUSY_ITERATIONS  # avcm-private: the busy-loop rule's count


async def _look_for_a_sleepers_bit(
    sleeps: float, checkpoint: Callable[[], Awaitable[None]], *, reads_the_clock: bool = False
) -> tuple[int, float, float]:
    """Poll with *checkpoint* between looks for the bit a task sets after sleeping *sleeps*
    (a unit answering a command), reading no clock or (*reads_the_clock*) reading it from two
    places in turn: the looks it took, when the bit was set, when the poll saw it."""
    bit: list[float] = []

    async def unit() -> None:
        await anyio.sleep(sleeps)
        bit.append(anyio.current_time())

    looks = 0
    async with anyio.create_task_group() as group:
        group.start_soon(unit)
        while not bit:
            looks += 1
            if looks > BUSY + 10 * sleeps / QUANTUM:
                raise AssertionError(f"the bit never came in {looks} looks")
            if reads_the_clock:
                anyio.current_time()
            await checkpoint()
            if reads_the_clock:
                anyio.current_time()
        return looks, bit[0], anyio.current_time()


@pytest.mark.parametrize("reads_the_clock", [False, True])
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_poll_for_what_a_sleeper_brings_sees_it_come(
    backend: str, checkpoint: str, reads_the_clock: bool
) -> None:
    # Reported (attack17): a correct driver polling a status bit with sleep(0), reading no
    # clock (or reading it from two places in turn), never saw the unit answer on the virtual
    # clock, and a stress run of it was called stalled
    async def main() -> tuple[int, float, float]:
        return await _look_for_a_sleepers_bit(
            1e-3, CHECKPOINTS[checkpoint], reads_the_clock=reads_the_clock
        )

    looks, answered, seen = testing.run_on_virtual_time(backend, main)
    # (on asyncio the sleeper's task runs an iteration after its timer fell due: a quantum)
    assert answered == pytest.approx(1e-3, abs=QUANTUM)
    assert seen == pytest.approx(answered, abs=QUANTUM)
    # the rule waits for its count of busy iterations, then each one takes a quantum: time
    # never passes faster than a loop iterates
    assert BUSY <= looks <= BUSY + 1e-3 / QUANTUM + 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_loop_busy_for_fewer_iterations_than_the_rule_counts_keeps_the_clock_still(
    backend: str,
) -> None:
    # ordinary work at one instant (the stress harness's: at most about 1,400 iterations) is
    # the same as without the rule
    async def main() -> float:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 1e-6)
            for _ in range(BUSY - 10):
                await anyio.lowlevel.checkpoint()
            now = anyio.current_time()
            group.cancel_scope.cancel()
        return now

    assert testing.run_on_virtual_time(backend, main) == 0.0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_run_that_polls_a_sleepers_bit_replays_the_same(backend: str) -> None:
    async def main() -> list[tuple[int, float, float]]:
        return [
            await _look_for_a_sleepers_bit(sleeps, anyio.lowlevel.checkpoint, reads_the_clock=True)
            for sleeps in (1e-5, 3e-4, 2e-5)
        ]

    first = testing.run_on_virtual_time(backend, main)
    assert testing.run_on_virtual_time(backend, main) == first


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_race_finder_spins_its_own_way_and_the_spin_rule_is_back_after(backend: str) -> None:
    # Under the race finder's control its own spin rule moves the clock (steps, not reads);
    # once control ends, the clock's is back: on trio both count reads through the clock's
    # own read, which the race finder's wraps and puts back
    seen: list[float] = []

    async def scenario(run: testing.Run) -> None:
        async def poller() -> None:
            # (its state unchanged from poll to poll: what the race finder calls a spin)
            deadline = anyio.current_time() + 1e-4
            while anyio.current_time() < deadline:
                await anyio.lowlevel.checkpoint()
            seen.append(anyio.current_time())

        outcomes = await run.concurrently(poller)
        assert [outcome.ok for outcome in outcomes] == [True]
        seen.append(await _poll(1e-4, CHECKPOINTS["sleep(0)"]))

    exploration = testing.explore(scenario, schedules=2, backend=backend)
    assert exploration.failure is None, exploration.failure.error
    assert len(seen) == 4 and seen[0::2] == seen[0:1] * 2 and seen[1::2] == seen[1:2] * 2


@pytest.mark.anyio
async def test_pending_timers_are_the_sleeps_and_deadlines_that_can_fall_due() -> None:
    """What a harness compares to see the timers some code left behind: a sleep's and a
    deadline's, each once, earliest first; none once they are gone, nor sleep_forever's."""
    before = testing.pending_timers()
    assert before == sorted(before)
    async with anyio.create_task_group() as group:
        group.start_soon(anyio.sleep, 5)
        group.start_soon(anyio.sleep_forever)
        await anyio.wait_all_tasks_blocked()
        now = anyio.current_time()
        with anyio.move_on_after(7):
            during = testing.pending_timers()
            await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    left = list(during)
    for when in before:
        left.remove(when)
    assert left == [pytest.approx(now + 5, abs=0.5), pytest.approx(now + 7, abs=0.5)]
    await anyio.lowlevel.checkpoint()
    assert testing.pending_timers() == before


@pytest.mark.parametrize("steps", [0, 3, 6, 40])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_timers_left_sees_a_timer_a_background_task_arms_after_some_steps(
    backend: str, steps: int
) -> None:
    # a power-down task that takes a few steps (a lock, sync points) before it sleeps: its
    # timer is one the code left behind (attack22: one armed after six steps was missed)
    async def power_down() -> None:
        for _ in range(steps):
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(1e-4)

    async def main() -> tuple[list[float], float]:
        before = testing.pending_timers()
        async with anyio.create_task_group() as group:
            group.start_soon(power_down)
            left = await testing.timers_left(before)
            now = anyio.current_time()
        return left, now

    left, now = testing.run_on_virtual_time(backend, main)
    assert left == [pytest.approx(now + 1e-4, abs=1e-9)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_timers_left_looks_behind_a_task_that_polls_for_ever(backend: str) -> None:
    async def poller() -> None:
        while True:
            await anyio.lowlevel.checkpoint()

    async def main() -> list[float]:
        async with anyio.create_task_group() as group:
            group.start_soon(poller)
            left = await testing.timers_left(testing.pending_timers())
            group.cancel_scope.cancel()
        return left

    assert testing.run_on_virtual_time(backend, main) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sleep_past_a_timer_lets_the_task_it_wakes_run_first(backend: str) -> None:
    # sleeping till the timer itself ties with it; whichever the loop runs first, the task
    # the timer wakes has run once sleep_past returns
    woke: list[float] = []

    async def sleeper() -> None:
        await anyio.sleep(1e-3)
        woke.append(anyio.current_time())

    async def main() -> tuple[list[float], float]:
        async with anyio.create_task_group() as group:
            group.start_soon(sleeper)
            (deadline,) = await testing.timers_left([])
            await testing.sleep_past(deadline)
            seen = list(woke)
        return seen, deadline

    seen, deadline = testing.run_on_virtual_time(backend, main)
    assert seen == [deadline]


_FAR_SLEEP = """
import sys, anyio
from avcm import testing

async def main() -> float:
    await anyio.sleep(1e15)
    with anyio.fail_after(1):
        await anyio.sleep(0.5)
    return anyio.current_time()

async def scenario(run: testing.Run) -> None:
    (outcome,) = await run.concurrently(main)
    outcome.unwrap()

print(testing.run_on_virtual_time(sys.argv[1], main))
found = testing.explore(scenario, strategy=testing.PCT(0), schedules=1, backend=sys.argv[1])
print(found.failure)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_timer_far_into_virtual_time_falls_due(backend: str) -> None:
    # From about 97 days on, a nanosecond (asyncio's clock resolution) no longer changes a
    # float of the clock: a timer due at the clock's very time was never due, and the loop
    # spun for ever. In a process of its own, so that a hang is a failure.
    done = subprocess.run(
        [sys.executable, "-c", _FAR_SLEEP, backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["1000000000000000.5", "None"]


def _tied_timers_order(stale: int, forget: bool) -> list[int]:
    """The order six timers due at one instant fire in, on a loop whose heap holds *stale*
    cancelled timers (forgotten first if *forget*)."""

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, testing.VirtualTimeEventLoop)
        for index in range(stale):
            loop.call_at(3600.0 + 0.3 * (index % 2), lambda: None).cancel()
        if forget:
            loop.forget_cancelled_timers()
        fired: list[int] = []
        for index in range(6):
            loop.call_at(1.0, fired.append, index)
        await asyncio.sleep(2.0)
        return fired

    return testing.run_on_virtual_time("asyncio", main)


def test_cancelled_timers_in_the_heap_change_no_order_of_tied_ones() -> None:
    # The race finder runs every schedule on one loop, its clock back at 0, and cancels the
    # timers a run left: asyncio keeps cancelled timers in its heap, where they changed the
    # order of timers due together (an outside attack: replays diverged, and Exhaustive said
    # "not deterministic"). Tied timers run in the order they were armed, forgotten or not.
    orders = {
        tuple(_tied_timers_order(stale, forget=forget))
        for stale in range(8)
        for forget in (False, True)
    }
    assert orders == {tuple(range(6))}
