"""The contract's concurrency rules 1-9 for the core, with a driver that sleeps in every op."""

from __future__ import annotations

import errno
import random
import warnings

import anyio
import pytest

import avcm
import drivers
from avcm import testing
from tests._recording import DriverFault, RecordingDriver, make_context

pytestmark = pytest.mark.anyio

DELAY = 0.0005


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=64 << 20)


async def test_rule1_activate_returns_only_when_active(memory: avcm.PhysicalMemory) -> None:
    """100 tasks doing random activate/deactivate pairs: no activate returns while the hardware
    is inactive, and the count ends at zero with the hardware inactive (rules 1, 3, 4)."""
    vcm, driver = make_context(memory, delay=DELAY)
    await vcm.make_binding(64 << 10)
    seen_inactive: list[int] = []

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(5):
            await anyio.sleep(rng.random() * DELAY * 4)
            await vcm.activate()
            if not driver.active:
                seen_inactive.append(seed)
            await anyio.sleep(rng.random() * DELAY * 4)
            await vcm.deactivate()

    async with anyio.create_task_group() as tg:
        for seed in range(100):
            tg.start_soon(worker, seed)
    assert seen_inactive == []
    assert vcm.activations == 0 and not driver.active
    assert driver.calls.count("activate") == driver.calls.count("deactivate") >= 1
    testing.check_quiescent([vcm], activations={vcm: 0})


async def test_rule1_second_activator_waits_for_the_first(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=0.01)
    order: list[str] = []

    async def activator(name: str) -> None:
        await vcm.activate()
        order.append(f"{name} returned, active={driver.active}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(activator, "first")
        await anyio.sleep(0.001)  # the first is inside the driver's activate now
        tg.start_soon(activator, "second")
    assert order == ["first returned, active=True", "second returned, active=True"]
    assert vcm.activations == 2 and driver.calls.count("activate") == 1


async def test_rule2_failed_activate_changes_nothing(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=DELAY)
    driver.fail["activate"] = DriverFault(errno.EIO, "activate failed")
    results: list[str] = []

    async def activator() -> None:
        try:
            await vcm.activate()
        except DriverFault:
            results.append("failed")
        else:
            results.append("ok")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(activator)
    # the first fails and leaves the count alone; the next one calls the driver again
    assert sorted(results) == ["failed", "ok", "ok"]
    assert vcm.activations == 2 and driver.active
    assert driver.calls.count("activate") == 2


async def test_rule3_deactivates_never_underflow(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=DELAY)
    await vcm.activate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(vcm.deactivate)
    assert vcm.activations == 0 and not driver.active
    assert driver.calls.count("deactivate") == 1
    assert len(caught) == 4 and all(w.category is avcm.VcmWarning for w in caught)


async def test_rule5_one_bind_wins(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=DELAY)
    res = await vcm.reserve(16 << 10)
    physes = [await vcm.alloc(4096) for _ in range(10)]
    outcomes: dict[int, int] = {}

    async def binder(phys: avcm.Phys) -> None:
        try:
            await res.bind(phys)
        except avcm.VcmError as error:
            outcomes[error.errno or 0] = outcomes.get(error.errno or 0, 0) + 1
        else:
            outcomes[0] = outcomes.get(0, 0) + 1

    async with anyio.create_task_group() as tg:
        for phys in physes:
            tg.start_soon(binder, phys)
    assert outcomes == {0: 1, errno.EADDRINUSE: 9}
    assert res.phys in physes
    assert [p.bindings for p in physes].count(1) == 1 and sum(p.bindings for p in physes) == 1
    assert driver.mapped == {res: res.phys}


async def test_rule5_same_phys_binds_get_ealready(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory, delay=DELAY)
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    errors: list[int] = []

    async def binder() -> None:
        try:
            await res.bind(phys)
        except avcm.VcmError as error:
            errors.append(error.errno or 0)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(binder)
    assert errors == [errno.EALREADY] * 4
    assert phys.bindings == 1


async def test_rule5_one_unbind_returns_the_phys(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=DELAY)
    res = await vcm.make_binding(4096)
    phys = res.phys
    returned: list[avcm.Phys | None] = []

    async def unbinder() -> None:
        returned.append(await res.unbind())

    with pytest.warns(avcm.VcmWarning, match="not bound"):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(unbinder)
    assert returned.count(phys) == 1 and returned.count(None) == 7
    assert phys is not None and phys.bindings == 0
    assert driver.calls.count("unbind") == 1


async def test_rule5_bindings_count_matches_reservations(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory, delay=DELAY)
    phys = await vcm.alloc(4096)
    reservations = [await vcm.reserve(4096) for _ in range(20)]

    async def churn(res: avcm.Res, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(5):
            await res.bind(phys)
            await anyio.sleep(rng.random() * DELAY)
            await res.unbind()

    async with anyio.create_task_group() as tg:
        for i, res in enumerate(reservations):
            tg.start_soon(churn, res, i)
    assert phys.bindings == 0
    await reservations[0].bind(phys)
    await reservations[1].bind(phys)
    assert phys.bindings == sum(1 for r in reservations if r.phys is phys) == 2


def slow_phys(memory: avcm.PhysicalMemory) -> avcm.Phys:
    """A phys whose free takes a while in the driver (a carve-out's does): a bind can arrive
    while the free is under way, which is the race rule 6 is about."""
    inner = avcm.phys_alloc(4096, 0, (0,), memory=memory)

    async def free(phys: avcm.Phys) -> None:
        await anyio.sleep(DELAY)
        await inner.free()

    return avcm.lowlevel.create_phys(inner.parts, free=free, memory=memory)


async def test_rule6_free_racing_bind(memory: avcm.PhysicalMemory) -> None:
    """Either the bind wins (free gets EBUSY) or the free wins (bind gets EINVAL); freed
    memory is never mapped. The binds start before, during and after the free's driver call."""
    vcm, driver = make_context(memory, delay=DELAY)
    await vcm.activate()
    outcomes: set[tuple[str, str]] = set()

    async def bind(res: avcm.Res, phys: avcm.Phys, at: float, result: dict[str, str]) -> None:
        await anyio.sleep(at)
        try:
            await res.bind(phys)
            result["bind"] = "ok"
        except avcm.InvalidError:
            result["bind"] = "EINVAL"

    async def free(phys: avcm.Phys, at: float, result: dict[str, str]) -> None:
        await anyio.sleep(at)
        try:
            await phys.free()
            result["free"] = "ok"
        except avcm.BusyError:
            result["free"] = "EBUSY"

    for seed in range(40):
        res = await vcm.reserve(4096)
        phys = slow_phys(memory)
        result: dict[str, str] = {}
        rng = random.Random(seed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(bind, res, phys, rng.random() * DELAY * 2, result)
            tg.start_soon(free, phys, rng.random() * DELAY, result)
        outcomes.add((result["bind"], result["free"]))
        assert (result["bind"], result["free"]) in {("ok", "EBUSY"), ("EINVAL", "ok")}
        if phys.freed:
            assert res.phys is None and all(p is not phys for p in driver.mapped.values())
        testing.check_quiescent([vcm], physes=[phys])
        if res.phys is not None:
            await res.destroy_binding()
        else:
            await res.unreserve()
    assert outcomes == {("ok", "EBUSY"), ("EINVAL", "ok")}  # both sides won sometimes
    await vcm.deactivate()
    assert memory.is_pristine()


async def test_rule6_a_bind_waits_for_a_free_in_its_driver(memory: avcm.PhysicalMemory) -> None:
    """A free holds the phys's lock (made at its first use) while its driver call runs; a bind
    of that phys in its own context, which takes no lock when nobody holds it, comes meanwhile:
    it waits for the free, then fails with EINVAL. Freed memory is never bound."""
    in_free, release = anyio.Event(), anyio.Event()

    class SlowFree(RecordingDriver):
        async def phys(self, vcm: avcm.Vcm, size: int, flags: int) -> avcm.Phys:
            inner = avcm.phys_alloc(size, flags, memory=self.memory)

            async def free(phys: avcm.Phys) -> None:
                in_free.set()
                await release.wait()
                await inner.free()

            return avcm.lowlevel.create_phys(inner.parts, free=free, memory=self.memory)

    driver = SlowFree(memory)
    vcm = avcm.Vcm(0x1000_0000, 64 << 20, driver)
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    await res.bind(phys)  # claimed and released without the phys's lock
    await res.unbind()
    bound: list[str] = []

    async def bind() -> None:
        with pytest.raises(avcm.InvalidError, match="was freed") as info:
            await res.bind(phys)
        assert info.value.errno == errno.EINVAL
        bound.append("EINVAL")

    async with anyio.create_task_group() as tg:
        tg.start_soon(phys.free)
        await in_free.wait()
        assert phys.statistics().locked
        tg.start_soon(bind)
        try:
            await anyio.wait_all_tasks_blocked()
            assert bound == []  # waiting for the phys's lock
        finally:
            release.set()  # the free completes, shielded, whatever happened
    assert bound == ["EINVAL"] and phys.freed and phys.bindings == 0
    assert res.phys is None and driver.mapped == {}
    testing.check_quiescent([vcm])
    await res.unreserve()
    assert memory.is_pristine()


async def test_destroy_racing_free_warns_only_about_what_is_true(
    memory: avcm.PhysicalMemory,
) -> None:
    """A phys whose free is in the driver when destroy comes is freed, not "bound in another
    context"."""
    vcm = drivers.create_carveout(memory, size=1 << 20, latency=drivers.Latency({"free": 0.01}))
    phys = await vcm.alloc(4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with anyio.create_task_group() as tg:
            tg.start_soon(phys.free)
            await anyio.sleep(0.002)  # the free is in the driver now
            tg.start_soon(vcm.destroy)
    assert phys.freed and vcm.destroyed
    messages = [str(w.message) for w in caught]
    assert not any("another context" in message for message in messages), messages
    assert memory.is_pristine()


async def test_rule9_nothing_leaks_after_concurrent_churn(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=DELAY)

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(10):
            res = await vcm.make_binding(rng.choice([4096, 64 << 10, 1 << 20]))
            if rng.random() < 0.5:
                async with vcm.activated():
                    await anyio.sleep(rng.random() * DELAY)
            await res.destroy_binding()

    async with anyio.create_task_group() as tg:
        for seed in range(30):
            tg.start_soon(worker, seed)
    testing.check_quiescent([vcm])
    await vcm.destroy()
    assert memory.is_pristine() and driver.space.is_pristine()


async def test_destroy_waits_for_creations_in_flight(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory, delay=0.01)
    made: list[avcm.Res] = []

    async def maker() -> None:
        made.append(await vcm.make_binding(4096))

    async with anyio.create_task_group() as tg:
        tg.start_soon(maker)
        await anyio.sleep(0.002)
        with pytest.warns(avcm.VcmWarning, match="1 reservation"):
            await vcm.destroy()
    assert len(made) == 1 and made[0].unreserved
    assert memory.is_pristine() and driver.space.is_pristine()
