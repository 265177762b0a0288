"""The kernel-vocabulary primitives: Mutex, AtomicCounter and the sync hook."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

import avcm
from avcm import testing
from avcm.lowlevel import sync_hook, sync_point

pytestmark = pytest.mark.anyio


async def test_mutex_excludes_and_is_fair() -> None:
    mutex = avcm.lowlevel.Mutex("m")
    order: list[int] = []
    inside = 0

    async def worker(index: int) -> None:
        nonlocal inside
        async with mutex:
            inside += 1
            assert inside == 1
            order.append(index)
            await anyio.sleep(0.001)
            inside -= 1

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(worker, index)
            await anyio.lowlevel.checkpoint()  # queue them in order
    assert sorted(order) == list(range(5))
    stats = mutex.statistics()
    assert stats.acquisitions == 5 and stats.contended >= 1 and not stats.locked


async def test_mutex_cancelled_while_waiting_is_not_taken() -> None:
    mutex = avcm.lowlevel.Mutex()
    release = anyio.Event()

    async def holder() -> None:
        async with mutex:
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.01) as scope:
            await mutex.lock()
        assert scope.cancelled_caught
        assert mutex.statistics().tasks_waiting == 0
        release.set()
    assert not mutex.is_locked()
    assert mutex.trylock() and not mutex.trylock()
    mutex.unlock()


async def test_atomic_counter_operations() -> None:
    counter = avcm.lowlevel.AtomicCounter(0, "c")
    await counter.inc()
    assert await counter.inc_return() == 2
    assert not await counter.dec_and_test()
    assert await counter.dec_and_test()
    assert await counter.add_unless(1, 0) is False
    await counter.set(5)
    assert await counter.read() == 5 == counter.value
    assert await counter.add_unless(-1, 0) is True and counter.value == 4


async def test_sync_hook_sees_every_point_and_is_per_task() -> None:
    seen: list[tuple[str, object]] = []

    async def hook(point: str, obj: object) -> None:
        seen.append((point, obj))

    mutex = avcm.lowlevel.Mutex()
    counter = avcm.lowlevel.AtomicCounter()
    with sync_hook(hook):
        async with mutex:
            await counter.inc()
        await sync_point("custom", None)
    await counter.inc()  # outside: no hook
    assert seen == [("mutex.lock", mutex), ("atomic.add_return", counter), ("custom", None)]


async def test_sync_hook_reaches_the_core() -> None:
    points: list[str] = []

    async def hook(point: str, obj: object) -> None:
        points.append(point)

    from tests._recording import make_context

    vcm, _ = make_context(avcm.PhysicalMemory(size=8 << 20))
    with sync_hook(hook):
        res = await vcm.make_binding(4096)
        await vcm.activate()
    assert {"mutex.lock", "driver.res", "driver.phys", "driver.bind", "driver.activate"} <= set(
        points
    )
    await vcm.deactivate()
    await res.destroy_binding()


async def test_sync_hooks_nest_the_one_outside_runs_after() -> None:
    """A hook installed around another one (a test's around the race finder's) runs after it,
    at every point; each runs only while its block does."""
    order: list[tuple[str, str]] = []

    def recording(name: str) -> avcm.lowlevel.SyncHook:
        async def hook(point: str, obj: object) -> None:
            order.append((name, point))

        return hook

    with sync_hook(recording("outer")):
        with sync_hook(recording("inner")):
            await sync_point("both", None)
        await sync_point("outer only", None)
    await sync_point("none", None)
    assert order == [("inner", "both"), ("outer", "both"), ("outer", "outer only")]


async def test_a_hook_raising_at_a_driver_point_is_that_driver_call_failing() -> None:
    """What the conformance suite's fault injection relies on: the error reaches the caller
    and the operation had no effect, as if the driver had raised it."""
    from tests._recording import make_context

    class Fault(avcm.VcmError):
        default_errno = 5

    vcm, driver = make_context(avcm.PhysicalMemory(size=8 << 20))
    res = await vcm.reserve(8192)
    phys = await vcm.alloc(8192)

    async def fail_bind(point: str, obj: object) -> None:
        if point == "driver.bind":
            raise Fault("injected")

    with sync_hook(fail_bind), pytest.raises(Fault):
        await res.bind(phys)
    assert res.phys is None and phys.bindings == 0 and "bind" not in driver.calls
    testing.check_quiescent([vcm])
    await res.bind(phys)
    assert res.phys is phys
