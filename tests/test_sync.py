"""The kernel-vocabulary primitives: Mutex, AtomicCounter and the sync hook."""

from __future__ import annotations

import contextlib
import errno

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


async def test_mutex_waiters_take_it_in_the_order_they_came() -> None:
    mutex = avcm.lowlevel.Mutex("m")
    order: list[int] = []

    async def worker(index: int) -> None:
        async with mutex:
            order.append(index)

    await mutex.lock()
    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(worker, index)
            await anyio.wait_all_tasks_blocked()  # each one waiting before the next comes
        assert mutex.statistics().tasks_waiting == 5
        mutex.unlock()
    assert order == list(range(5))
    stats = mutex.statistics()
    assert (stats.acquisitions, stats.contended, stats.tasks_waiting) == (6, 5, 0)
    assert not stats.locked


@pytest.mark.parametrize("fast_acquire", [False, True])
async def test_mutex_cancelled_at_its_checkpoint_is_not_taken(fast_acquire: bool) -> None:
    """Free, taking it is still a checkpoint: cancelled there, it was not taken."""
    mutex = avcm.lowlevel.Mutex("m", fast_acquire=fast_acquire)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await mutex.lock()
    assert scope.cancelled_caught
    assert not mutex.is_locked() and mutex.statistics().acquisitions == 0
    async with mutex:
        assert mutex.is_locked()


async def test_mutex_handed_to_a_waiter_cancelled_before_it_ran_goes_on() -> None:
    """The holder hands the mutex to the first waiter and, in the same step, that waiter is
    cancelled: it either runs holding it (the cancellation comes at its next checkpoint) or
    passes it on to the next waiter; the mutex is never left held by nobody running."""
    mutex = avcm.lowlevel.Mutex("m")
    first = anyio.CancelScope()
    held_by: list[str] = []

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with mutex:
                held_by.append(name)

    await mutex.lock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "first", first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter, "second", anyio.CancelScope())
        await anyio.wait_all_tasks_blocked()
        mutex.unlock()
        first.cancel()
    assert held_by in (["first", "second"], ["second"])
    assert not mutex.is_locked() and mutex.statistics().tasks_waiting == 0


async def test_mutex_is_not_recursive_and_only_its_holder_releases_it() -> None:
    mutex = avcm.lowlevel.Mutex("m")
    with pytest.raises(avcm.InvalidError, match="not held by this task") as info:
        mutex.unlock()
    assert info.value.errno == errno.EINVAL
    async with mutex:
        with pytest.raises(avcm.InvalidError, match="held by this task already") as info:
            await mutex.lock()
        assert info.value.errno == errno.EINVAL
        assert not mutex.trylock()

        async def other() -> None:
            with pytest.raises(avcm.InvalidError, match="not held by this task"):
                mutex.unlock()

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
        assert mutex.is_locked()
    assert not mutex.is_locked() and mutex.statistics().acquisitions == 1


async def test_mutex_outside_any_task_is_einval() -> None:
    """A worker thread runs no event loop: there is no task to hold the mutex."""
    mutex = avcm.lowlevel.Mutex("m")

    def in_a_thread() -> None:
        with pytest.raises(avcm.InvalidError, match="asyncio or trio task") as info:
            mutex.trylock()
        assert info.value.errno == errno.EINVAL

    await anyio.to_thread.run_sync(in_a_thread)
    assert not mutex.is_locked()
    assert mutex.trylock()
    mutex.unlock()


async def test_a_hook_stays_with_a_task_spawned_in_its_block_after_the_block_ends() -> None:
    """The hook is in the spawned task's context, which outlives the block: its sync points
    still reach the hook, whatever else is installed or removed meanwhile."""
    seen: list[str] = []
    go_on = anyio.Event()

    async def hook(point: str, obj: object) -> None:
        seen.append(point)

    async def child() -> None:
        await go_on.wait()
        await sync_point("late", None)

    async with anyio.create_task_group() as tg:
        with sync_hook(hook):
            tg.start_soon(child)
        await sync_point("outside", None)  # not in a block: no hook here
        go_on.set()
    assert seen == ["late"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_mutex_handed_to_an_asyncio_task_cancelled_natively_goes_on() -> None:
    """asyncio alone can cancel a task that is already woken (``Task.cancel``, as
    ``asyncio.wait_for`` does): the woken waiter then raises, not holding the mutex, and the
    next waiter gets it. (anyio and trio never cancel a woken task: the test above.)"""
    import asyncio

    mutex = avcm.lowlevel.Mutex("m")
    held_by: list[str] = []
    first_task: asyncio.Task[object] | None = None

    async def first() -> None:
        nonlocal first_task
        first_task = asyncio.current_task()
        try:
            await mutex.lock()
        except asyncio.CancelledError:
            held_by.append("first cancelled")
            assert first_task is not None
            first_task.uncancel()
            return
        held_by.append("first")  # pragma: no cover - the test fails below
        mutex.unlock()  # pragma: no cover

    async def second() -> None:
        async with mutex:
            held_by.append("second")

    await mutex.lock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        mutex.unlock()  # hands it to first, woken next ...
        assert first_task is not None
        first_task.cancel()  # ... with a cancellation
    assert held_by == ["first cancelled", "second"]
    assert not mutex.is_locked() and mutex.statistics().tasks_waiting == 0


class _ZeroHardware:
    orders = (0,)

    async def activate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        pass

    async def deactivate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        pass


@pytest.mark.parametrize("kind", ["core", "mmu"])
async def test_a_hook_installed_mid_run_sees_every_point_of_bind_and_unbind(kind: str) -> None:
    """Without a hook, bind and unbind skip what only a hook could see (the phys's lock, the
    points); installed later, the hook sees every point, in order, as if always there."""
    from tests._recording import make_context

    memory = avcm.PhysicalMemory(size=8 << 20)
    if kind == "core":
        vcm = make_context(memory)[0]
    else:
        vcm = avcm.mmu_init(0x1000_0000, 1 << 24, _ZeroHardware(), memory=memory)
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    await res.bind(phys)
    assert await res.unbind() is phys
    points: list[str] = []

    async def hook(point: str, obj: object) -> None:
        if not point.startswith("test."):  # the recording driver's own
            points.append(point)

    with sync_hook(hook):
        await res.bind(phys)
        assert await res.unbind() is phys
    assert points == [
        *("mutex.lock", "mutex.lock", "atomic.add_return", "driver.bind"),  # context, phys
        *("mutex.lock", "driver.unbind", "atomic.add_return"),
    ]
    assert res.phys is None and phys.bindings == 0
    testing.check_quiescent([vcm])


async def _interleaving(hooked: bool) -> list[str]:
    """Three tasks binding, unbinding and freeing physes they share, in two contexts (one
    active), with a ticker that takes one step at each of its checkpoints: the order in which
    operations end among the ticks is the run's interleaving, checkpoint for checkpoint."""
    import random

    from drivers import Latency, create_iommu

    memory = avcm.PhysicalMemory(size=16 << 20)
    contexts = [
        create_iommu(memory, latency=Latency.profile("zero"), name=f"iommu{i}") for i in (0, 1)
    ]
    await contexts[0].activate()
    physes = [await contexts[i % 2].alloc(4096 << (i % 3)) for i in range(4)]
    trace: list[str] = []
    done = False

    async def ticker() -> None:
        while not done:
            trace.append("tick")
            await anyio.lowlevel.checkpoint()

    async def worker(index: int) -> None:
        rng = random.Random(index)
        for step in range(12):
            vcm = contexts[rng.randrange(2)]
            res = await vcm.reserve(1 << 20)
            phys = physes[rng.randrange(len(physes))]
            try:
                await res.bind(phys)
            except avcm.VcmError as error:  # freed by another worker: rule 6
                trace.append(f"{index}.{step} bind {error.errno}")
            else:
                await res.unbind()
            await res.unreserve()
            if step % 5 == index:
                try:
                    await phys.free()
                except avcm.VcmError as error:  # freed already, or bound elsewhere
                    trace.append(f"{index}.{step} free {error.errno}")
            trace.append(f"{index}.{step}")

    async def nothing(point: str, obj: object) -> None:
        pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        with sync_hook(nothing) if hooked else contextlib.nullcontext():
            async with anyio.create_task_group() as workers:
                for index in range(3):
                    workers.start_soon(worker, index)
        done = True
    await contexts[0].deactivate()
    return trace


@pytest.mark.parametrize("backend", testing.BACKENDS)
def test_a_hook_that_does_nothing_changes_no_interleaving(backend: str) -> None:
    """Without a hook, bind's claim of the phys and an unbind skip the phys's lock and the
    shield; with one, they take them. Either way the tasks checkpoint at the same places: the
    race finder (which installs a hook) explores the interleavings of runs without one."""

    def run(hooked: bool) -> list[str]:
        options = testing.backend_options(backend, 0, virtual=True)  # trio's shuffle seeded
        return anyio.run(_interleaving, hooked, backend=backend, backend_options=options)

    plain = run(hooked=False)
    assert plain.count("tick") > 3 * 12  # the workers did yield, and the ticker saw it
    assert run(hooked=True) == plain
