"""The stress harness's checks cost the same however long or wide a run is: the gate wakes only
the operations it admits, and the pools of physes and reservations stay bounded, so a check
late in a run looks at no more objects than an early one. (Nothing here is timed: the bench's
stress rows measure the costs.)"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

import stress
from stress import StressConfig
from stress import _workload as workload
from stress._gate import Gate

BACKENDS = ["asyncio", "trio"]


@pytest.mark.anyio
async def test_gate_wakes_only_the_waiters_it_admits_in_arrival_order() -> None:
    gate = Gate(2)
    admitted: list[int] = []

    async def operation(index: int) -> None:
        await gate.enter()
        admitted.append(index)

    await gate.enter()
    await gate.enter()  # the window's two places taken: the next ones wait
    assert gate.closed
    async with anyio.create_task_group() as group:
        for index in range(5):  # one by one: they arrive in this order (trio shuffles a batch)
            group.start_soon(operation, index)
            await anyio.wait_all_tasks_blocked()
        assert gate.waiting == 5 and not admitted
        gate.leave()
        assert not gate.quiescent()  # one still in flight
        gate.leave()
        assert gate.quiescent() and not gate.quiescent()  # one caller checks
        gate.open()
        await anyio.wait_all_tasks_blocked()
        # the first two admitted and woken (trio runs tasks woken together in an order of its
        # own, seeded in a stress run); the three others never woke
        assert sorted(admitted) == [0, 1] and gate.woken == 2 and gate.waiting == 3
        gate.leave()
        gate.leave()
        assert gate.quiescent()
        gate.open()
        await anyio.wait_all_tasks_blocked()
        assert sorted(admitted[2:]) == [2, 3] and gate.woken == 4
        gate.leave()
        gate.leave()
        assert gate.quiescent()
        gate.open()
    assert admitted[4] == 4 and gate.woken == 5


@pytest.mark.anyio
async def test_gate_entry_without_a_ticket_waits_for_the_check_only() -> None:
    gate = Gate(1)
    await gate.enter()
    assert gate.closed
    entered = False

    async def release() -> None:
        nonlocal entered
        await gate.enter(ticketed=False)
        entered = True

    async with anyio.create_task_group() as group:
        group.start_soon(release)
        await anyio.wait_all_tasks_blocked()
        assert not entered  # a check is due: it waits
        gate.leave()
        assert gate.quiescent()
        gate.open()
        await anyio.wait_all_tasks_blocked()
        assert entered and not gate.closed  # and took no place of the window
    gate.leave()


@pytest.mark.anyio
async def test_cancelled_waiter_takes_no_place() -> None:
    gate = Gate(1)
    await gate.enter()
    admitted: list[int] = []

    scope = anyio.CancelScope()

    async def operation(index: int) -> None:
        with scope if index == 0 else anyio.CancelScope():
            await gate.enter()
            admitted.append(index)

    async with anyio.create_task_group() as group:
        group.start_soon(operation, 0)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(operation, 1)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()  # 0 leaves the queue: the next window's place goes to 1
        await anyio.wait_all_tasks_blocked()
        assert gate.waiting == 1
        gate.leave()
        assert gate.quiescent()
        gate.open()
        await anyio.wait_all_tasks_blocked()
        assert admitted == [1] and gate.woken == 1
        gate.leave()


@pytest.mark.anyio
async def test_waiter_woken_before_its_cancellation_runs_admitted() -> None:
    # as a woken task does on either backend: the cancellation reaches it at its next
    # checkpoint, and the place it was given stays taken (the next waiter still waits)
    gate = Gate(1)
    await gate.enter()
    admitted: list[int] = []
    scopes = [anyio.CancelScope(), anyio.CancelScope()]

    async def operation(index: int) -> None:
        with scopes[index]:
            await gate.enter()
            admitted.append(index)
            gate.leave()
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        for index in range(2):
            group.start_soon(operation, index)
            await anyio.wait_all_tasks_blocked()
        gate.leave()
        assert gate.quiescent()
        gate.open()  # the place goes to 0, woken but not yet run
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        assert admitted == [0] and gate.woken == 1 and gate.waiting == 1
        scopes[1].cancel()  # still waiting: it leaves the queue
        await anyio.wait_all_tasks_blocked()
        assert admitted == [0] and gate.waiting == 0 and gate.in_flight == 0


class _CountingGate(Gate):
    made: ClassVar[list[_CountingGate]] = []

    def __init__(self, window: int) -> None:
        super().__init__(window)
        self.made.append(self)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wide_run_wakes_one_waiter_per_operation_at_most(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: every check woke every waiting task, which mostly found the gate closed again
    monkeypatch.setattr(workload, "Gate", _CountingGate)
    _CountingGate.made.clear()
    result = stress.run(StressConfig(backend=backend, tasks=1024, ops=1500))
    # one per window, and the drain at the end
    assert result.violation is None and result.checks["quiescent"] == 1500 // 50 + 1
    (gate,) = _CountingGate.made
    assert 0 < gate.woken <= 1500 + 1024  # each operation once, each task's last release once


@pytest.mark.parametrize("backend", BACKENDS)
def test_pools_stay_bounded_and_checks_look_at_no_more_objects(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 24
    monkeypatch.setattr(workload, "POOL_LIMIT", limit)
    pools: list[tuple[int, int]] = []
    looked_at: list[int] = []
    original_bounded = workload.bounded_operation
    original_check = workload.World.check

    def bounded(op: str, physes: int, reservations: int) -> str:
        pools.append((physes, reservations))
        return original_bounded(op, physes, reservations)

    async def check(self: workload.World, **kwargs: Any) -> None:
        before = self.result.checks["rule 5 bindings"]
        await original_check(self, **kwargs)
        looked_at.append(self.result.checks["rule 5 bindings"] - before)

    monkeypatch.setattr(workload, "bounded_operation", bounded)
    monkeypatch.setattr(workload.World, "check", check)
    # no drain: before, the pools only grew (15 -> 908 physes over 20,000 operations)
    result = stress.run(StressConfig(backend=backend, ops=3000, drain_every=0))
    assert result.violation is None
    slack = 50  # a window's operations are drawn before any of them returns
    assert max(max(sizes) for sizes in pools) <= limit + slack
    assert max(physes for physes, _ in pools[-1000:]) >= limit  # the limit was reached
    early = max(looked_at[:5])
    assert max(looked_at[-20:]) <= max(early, limit + slack)
