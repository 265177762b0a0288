"""The sample drivers: IOMMU, CPU and carve-out, their latency model and their fault plans."""

from __future__ import annotations

import errno
import random

import anyio
import pytest
import trio

import avcm
import drivers
from avcm import testing

pytestmark = pytest.mark.anyio

MiB = 1 << 20
KiB = 1 << 10
ZERO = drivers.Latency.profile("zero")


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory()


async def test_multi_context_example(memory: avcm.PhysicalMemory) -> None:
    """The documentation's example: one phys seen by a one-to-one device, an IOMMU device and
    the CPU; bytes written by any of them are read by the others."""
    vcm_onetoone = drivers.create_carveout(memory)
    vcm_iommu = drivers.create_iommu(memory)
    vcm_vmm = drivers.create_cpu(memory)

    res_onetoone = await vcm_onetoone.make_binding(2 * MiB + 4 * KiB)
    phys = res_onetoone.phys
    assert phys is not None
    res_vmm = await vcm_vmm.map(phys)
    res_iommu = await vcm_iommu.map(phys)
    for vcm in (vcm_vmm, vcm_onetoone, vcm_iommu):
        await vcm.activate()

    cpu, iommu = drivers.hardware(vcm_vmm), drivers.hardware(vcm_iommu)
    onetoone = vcm_onetoone.driver.hw  # type: ignore[attr-defined]
    assert res_onetoone.start == phys.parts[0].start  # one-to-one: device address == physical
    # Each side reads and writes at its own address of the buffer: the CPU and the IOMMU device
    # through their page tables, the one-to-one device at the physical address.
    sides = {
        "CPU": (cpu, res_vmm.start),
        "IOMMU device": (iommu, res_iommu.start),
        "one-to-one device": (onetoone, res_onetoone.start),
    }
    # Each writer its own offsets, some across a page boundary (4 KiB, 64 KiB, 1 MiB, and into
    # the last 4 KiB page), and its own pattern; the other two read it at their own addresses.
    offsets = {
        "CPU": (0, 4 * KiB - 5, MiB - 7, 2 * MiB + 4 * KiB - 32),
        "IOMMU device": (0x100, 64 * KiB - 6, MiB + 4 * KiB - 5, 2 * MiB - 9),
        "one-to-one device": (0x200, 8 * KiB - 5, 2 * MiB - 0x100, 2 * MiB + 0x100),
    }
    written: dict[int, bytes] = {}
    for writer, (device, base) in sides.items():
        for offset in offsets[writer]:
            pattern = f"{writer} wrote {offset:#x}".encode()
            device.write(base + offset, pattern)
            written[offset] = pattern
            for reader, (other, other_base) in sides.items():
                assert other.read(other_base + offset, len(pattern)) == pattern, (
                    f"the {reader} does not read what the {writer} wrote at {offset:#x}"
                )
    for offset, pattern in written.items():  # and no write landed on another one
        for other, other_base in sides.values():
            assert other.read(other_base + offset, len(pattern)) == pattern
    assert memory.read(phys.parts[0].start + 0x100, 24) == b"IOMMU device wrote 0x100"

    await res_vmm.unmap()
    await res_iommu.unmap()
    await res_onetoone.destroy_binding()
    for vcm in (vcm_vmm, vcm_iommu, vcm_onetoone):
        await vcm.deactivate()
        await vcm.destroy()
    assert memory.is_pristine()


async def test_one_mib_binding_uses_one_entry(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_iommu(memory, latency=ZERO)
    res = await vcm.make_binding(MiB)
    assert res.phys is not None and res.phys.parts[0].start % MiB == 0 and res.start % MiB == 0
    async with vcm.activated():
        assert drivers.hardware(vcm).statistics().entries_per_order == {8: 1}


async def test_mixed_page_sizes_and_every_page_boundary(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_iommu(memory, latency=ZERO)
    res = await vcm.make_binding(2 * MiB + 68 * KiB)
    phys = res.phys
    assert phys is not None
    hw = drivers.hardware(vcm)
    async with vcm.activated():
        assert hw.statistics().entries_per_order == {8: 2, 4: 1, 0: 1}
        offset = 0
        for part in phys.parts:
            for inside in (0, part.size - 1):  # first and last byte of every page
                assert hw.translate(res.start + offset + inside) == part.start + inside
            offset += part.size
        with pytest.raises(drivers.IommuFault) as info:
            hw.translate(res.start + phys.size)
        assert info.value.errno == errno.EFAULT
    with pytest.raises(drivers.IommuFault, match="disabled"):
        hw.translate(res.start)
    assert hw.statistics().faults == 2


async def test_statistics_count_activations_and_flushes(memory: avcm.PhysicalMemory) -> None:
    """``activations`` counts the hardware's enables (the first activation, not the nested
    ones), ``flushes`` its disables (the last deactivation); binding and unbinding while active
    write and clear entries but neither enable nor flush."""
    faults = drivers.FaultPlan().fail_nth("enable", 3)
    vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
    hw = drivers.hardware(vcm)

    def counts() -> tuple[bool, dict[int, int], int, int, int]:
        stats = hw.statistics()
        return (
            stats.enabled,
            stats.entries_per_order,
            stats.activations,
            stats.flushes,
            stats.faults,
        )

    assert counts() == (False, {}, 0, 0, 0)
    first = await vcm.make_binding(68 * KiB)  # inactive: nothing reaches the hardware
    assert counts() == (False, {}, 0, 0, 0)
    await vcm.activate()
    assert counts() == (True, {4: 1, 0: 1}, 1, 0, 0)
    await vcm.activate()  # nested: no second enable
    assert counts() == (True, {4: 1, 0: 1}, 1, 0, 0)
    second = await vcm.make_binding(MiB)  # bind while active
    assert counts() == (True, {8: 1, 4: 1, 0: 1}, 1, 0, 0)
    phys = await second.unbind()  # unbind while active
    assert phys is not None
    assert counts() == (True, {4: 1, 0: 1}, 1, 0, 0)
    await second.bind(phys)
    assert counts() == (True, {8: 1, 4: 1, 0: 1}, 1, 0, 0)
    await vcm.deactivate()  # nested: still active
    assert counts() == (True, {8: 1, 4: 1, 0: 1}, 1, 0, 0)
    await vcm.deactivate()
    assert counts() == (False, {}, 1, 1, 0)
    async with vcm.activated():
        assert counts() == (True, {8: 1, 4: 1, 0: 1}, 2, 1, 0)
        await second.destroy_binding()
        assert counts() == (True, {4: 1, 0: 1}, 2, 1, 0)
    assert counts() == (False, {}, 2, 2, 0)
    with pytest.raises(drivers.InjectedFault):  # a failed enable is not an activation
        await vcm.activate()
    assert counts() == (False, {}, 2, 2, 0)
    await vcm.activate()
    assert counts() == (True, {4: 1, 0: 1}, 3, 2, 0)
    await first.destroy_binding()
    assert counts() == (True, {}, 3, 2, 0)
    await vcm.deactivate()
    assert counts() == (False, {}, 3, 3, 0)
    stats = hw.statistics()
    assert stats.pte_writes == stats.pte_clears == 2 + 1 + 1 + 3 + 2
    await vcm.destroy()
    assert memory.is_pristine()


async def test_fault_at_each_page_of_an_activate(memory: avcm.PhysicalMemory) -> None:
    sizes = (2 * MiB + 68 * KiB, 68 * KiB, 4 * KiB)  # 4 + 2 + 1 pages
    for k in range(1, 8):
        faults = drivers.FaultPlan().fail_nth("pte_write", k)
        vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
        for size in sizes:
            await vcm.make_binding(size)
        hw = drivers.hardware(vcm)
        with pytest.raises(drivers.InjectedFault) as info:
            await vcm.activate()
        assert info.value.errno == errno.EIO
        assert hw.hardware_mappings() == [] and not hw.hardware_active()
        assert vcm.activations == 0
        assert hw.statistics().pte_writes == k - 1 == hw.statistics().pte_clears
        testing.check_model(vcm)
        await vcm.activate()  # the fault was only the k-th call
        testing.check_model(vcm)
        await vcm.deactivate()
        with pytest.warns(avcm.VcmWarning):
            await vcm.destroy()
    assert memory.is_pristine()


def hardware_state(vcm: avcm.Vcm) -> tuple[object, ...]:
    hw = drivers.hardware(vcm)
    return hw.hardware_active(), hw.hardware_mappings(), vcm.activations


async def test_fault_at_each_page_of_a_deactivate(memory: avcm.PhysicalMemory) -> None:
    # 7 pages to clear, then the disable: a fault at any of them leaves everything mapped.
    sizes = (2 * MiB + 68 * KiB, 68 * KiB, 4 * KiB)
    for op, k in [("pte_clear", k) for k in range(1, 8)] + [("disable", 1)]:
        faults = drivers.FaultPlan().fail_nth(op, k)
        vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
        for size in sizes:
            await vcm.make_binding(size)
        await vcm.activate()
        before = hardware_state(vcm)
        with pytest.raises(drivers.InjectedFault):
            await vcm.deactivate()
        assert hardware_state(vcm) == before and vcm.activations == 1
        testing.check_model(vcm)
        await vcm.deactivate()  # the fault was only the k-th call
        assert not drivers.hardware(vcm).hardware_active()
        with pytest.warns(avcm.VcmWarning):
            await vcm.destroy()
    assert memory.is_pristine()


@pytest.mark.parametrize("op", ["unbind", "unmap", "unreserve", "destroy_binding"])
async def test_pte_clear_fault_in_a_teardown_changes_nothing(
    memory: avcm.PhysicalMemory, op: str
) -> None:
    faults = drivers.FaultPlan().fail_nth("pte_clear", 2)
    vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
    res = await vcm.make_binding(MiB + 68 * KiB)  # 3 pages: the second clear fails
    phys = res.phys
    await vcm.activate()
    before = hardware_state(vcm), vcm.reservations(), vcm.allocations()
    with pytest.raises(drivers.InjectedFault):
        if op == "unreserve":
            with pytest.warns(avcm.VcmWarning, match="still bound"):
                await res.unreserve()
        else:
            await getattr(res, op)()
    assert (hardware_state(vcm), vcm.reservations(), vcm.allocations()) == before
    assert res.phys is phys and phys is not None and phys.bindings == 1
    testing.check_model(vcm)
    await res.destroy_binding()
    await vcm.deactivate()
    await vcm.destroy()
    assert memory.is_pristine()


async def test_disable_fault_in_destroy_can_be_retried(memory: avcm.PhysicalMemory) -> None:
    faults = drivers.FaultPlan().fail_nth("disable", 1)
    vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
    await vcm.make_binding(68 * KiB)
    await vcm.activate()
    with pytest.warns(avcm.VcmWarning), pytest.raises(drivers.InjectedFault):
        await vcm.destroy()
    # still active (the disable failed), every binding released, and consistent
    assert not vcm.destroyed and vcm.activations == 1 and vcm.reservations() == ()
    assert (
        drivers.hardware(vcm).hardware_active() and drivers.hardware(vcm).hardware_mappings() == []
    )
    testing.check_model(vcm)
    with pytest.warns(avcm.VcmWarning, match="still activated"):
        await vcm.destroy()
    assert vcm.destroyed and memory.is_pristine()


@pytest.mark.parametrize("op", ["free", "unreserve", "destroy_binding", "destroy"])
async def test_carveout_free_fault_is_contained(memory: avcm.PhysicalMemory, op: str) -> None:
    faults = drivers.FaultPlan().fail_nth("free", 1)
    carveout = drivers.create_carveout(memory, size=MiB, latency=ZERO, faults=faults)
    allocator = carveout.driver.hw  # type: ignore[attr-defined]
    res = await carveout.make_binding(8 * KiB)
    phys = res.phys
    assert phys is not None
    if op == "free":
        await res.unmap()  # the reservation goes first: the phys's free releases the block
    elif op == "unreserve":
        await res.unbind()
        await phys.free()  # the phys goes first: the unreserve releases the block
    before = carveout.reservations(), carveout.allocations(), allocator.statistics()
    release = {
        "free": phys.free,
        "unreserve": res.unreserve,
        "destroy_binding": res.destroy_binding,
        "destroy": carveout.destroy,
    }[op]
    with pytest.raises(drivers.InjectedFault):
        if op == "destroy":
            with pytest.warns(avcm.VcmWarning):
                await release()
        else:
            await release()
    if op == "destroy_binding":  # the block goes with the unreserve, after the free
        assert phys.freed and res.phys is None and not res.unreserved
        release = res.unreserve
    elif op == "destroy":  # released all it could: only the phys whose free failed is left
        assert carveout.reservations() == () and carveout.allocations() == (phys,)
    else:
        assert (carveout.reservations(), carveout.allocations(), allocator.statistics()) == before
    assert not carveout.destroyed and allocator.statistics().allocations == 1
    testing.check_model(carveout)
    if op == "destroy":
        with pytest.warns(avcm.VcmWarning):
            await release()
    else:
        await release()
        await carveout.destroy()
    assert memory.is_pristine()


async def test_failing_disable_in_a_failed_activate_is_noted(memory: avcm.PhysicalMemory) -> None:
    # A double fault cannot be contained (the hardware stays enabled), but the caller sees the
    # first fault, with the second noted on it, not the second alone.
    faults = drivers.FaultPlan().fail_nth("pte_write", 1).fail_nth("disable", 1)
    vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
    await vcm.make_binding(4 * KiB)
    with pytest.raises(drivers.InjectedFault, match="pte_write") as info:
        await vcm.activate()
    assert any("disabling again failed" in note for note in info.value.__notes__)
    assert avcm.lowlevel.undo_failed(info.value)  # what no framework can contain: said so
    assert vcm.activations == 0 and drivers.hardware(vcm).hardware_mappings() == []


async def test_failing_unmap_in_a_failed_activate_is_an_undo_that_failed(
    memory: avcm.PhysicalMemory,
) -> None:
    # the second reservation's page write fails; unmapping the first again fails too: the
    # hardware is left half done (the first still mapped), and the error says so
    faults = drivers.FaultPlan().fail_nth("pte_write", 2).fail_nth("pte_clear", 1)
    vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
    await vcm.make_binding(4 * KiB)
    await vcm.make_binding(4 * KiB)
    before = avcm.lowlevel.undo_failures()
    with pytest.raises(drivers.InjectedFault, match="pte_write") as info:
        await vcm.activate()
    assert any(note.startswith("mmu: undoing") for note in info.value.__notes__)
    assert avcm.lowlevel.undo_failed(info.value)
    assert avcm.lowlevel.undo_failures() == before + 1


async def test_a_failure_undone_in_full_is_no_undo_that_failed(
    memory: avcm.PhysicalMemory,
) -> None:
    faults = drivers.FaultPlan().fail_nth("pte_write", 2)
    vcm = drivers.create_iommu(memory, latency=ZERO, faults=faults)
    await vcm.make_binding(4 * KiB)
    await vcm.make_binding(4 * KiB)
    with pytest.raises(drivers.InjectedFault) as info:
        await vcm.activate()
    assert not avcm.lowlevel.undo_failed(info.value)
    assert vcm.activations == 0 and drivers.hardware(vcm).hardware_mappings() == []


async def test_random_faults_spare_teardown_unless_named() -> None:
    plan = drivers.FaultPlan().fail_randomly(1.0)
    for op in drivers.FAULTABLE:
        if op in ("free", "pte_clear", "disable"):
            plan.check(op)
        else:
            with pytest.raises(drivers.InjectedFault):
                plan.check(op)
    named = drivers.FaultPlan().fail_randomly(1.0, "pte_clear")
    with pytest.raises(drivers.InjectedFault):
        named.check("pte_clear")


async def test_concurrent_reserve_unreserve_never_overlaps(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_iommu(memory)
    live: dict[avcm.Res, None] = {}
    overlaps: list[str] = []

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3):
            res = await vcm.reserve(rng.choice([4 * KiB, 64 * KiB, 68 * KiB, MiB]))
            for other in live:
                res_end, other_end = res.start + res.res_size, other.start + other.res_size
                if res.start < other_end and other.start < res_end:
                    overlaps.append(f"{res!r} overlaps {other!r}")
            live[res] = None
            await anyio.sleep(rng.random() * 1e-4)
            del live[res]
            await res.unreserve()

    async with anyio.create_task_group() as tg:
        for seed in range(1000):
            tg.start_soon(worker, seed)
    assert overlaps == []
    wrapper = vcm.driver
    assert isinstance(wrapper, avcm.lowlevel.MmuWrapper) and wrapper.space.is_pristine()
    await vcm.destroy()
    assert memory.is_pristine()


# -- the carve-out ---------------------------------------------------------------------------


async def test_carveout_best_fit_and_coalescing(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_carveout(memory, size=MiB, latency=ZERO)
    a, b, c, d = [await vcm.alloc(size) for size in (64 * KiB, 16 * KiB, 32 * KiB, 16 * KiB)]
    await a.free()  # hole of 64 KiB at the start
    await c.free()  # hole of 32 KiB between b and d
    best = await vcm.alloc(32 * KiB)
    assert best.parts[0].start == c.parts[0].start  # the smallest hole that fits
    await best.free()
    await b.free()  # coalesces a's, b's and c's holes into one of 112 KiB
    big = await vcm.alloc(112 * KiB)
    assert big.parts[0].start == min(p.parts[0].start for p in (a, b, c))  # exactly that hole
    for phys in (big, d):
        await phys.free()
    allocator = vcm.driver.hw  # type: ignore[attr-defined]
    assert allocator.statistics().free_bytes == MiB
    await vcm.destroy()
    assert memory.is_pristine()


async def test_carveout_with_mixed_alignment_aligns_every_other_block_to_a_large_page(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm = drivers.create_carveout(memory, size=4 * MiB, latency=ZERO, mixed_alignment=True)
    sizes = (124 * KiB, 124 * KiB, 8 * KiB, 2 * MiB - 4 * KiB, 68 * KiB, 68 * KiB)
    starts = [(await vcm.alloc(size)).parts[0].start for size in sizes]
    # the 1st, 3rd and 5th at 4 KiB alignment (the top of the best hole, which is never a
    # large page's start for these sizes); the others at the largest page they hold
    assert [start % (64 * KiB) != 0 for start in starts[0::2]] == [True, True, True]
    assert starts[1] % (64 * KiB) == 0 and starts[3] % MiB == 0 and starts[5] % (64 * KiB) == 0
    plain = drivers.create_carveout(memory, size=MiB, latency=ZERO)
    assert all([(await plain.alloc(124 * KiB)).parts[0].start % (64 * KiB) for _ in range(4)])


@pytest.mark.parametrize("value", [1, "yes", None])
async def test_carveout_mixed_alignment_must_be_a_bool(
    memory: avcm.PhysicalMemory, value: object
) -> None:
    before = memory.free_bytes
    with pytest.raises(avcm.InvalidError, match="mixed_alignment") as info:
        drivers.create_carveout(memory, size=MiB, mixed_alignment=value)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL and memory.free_bytes == before


async def test_carveout_enomem_when_full_or_fragmented(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_carveout(memory, size=MiB, latency=ZERO)
    pieces = [await vcm.alloc(64 * KiB) for _ in range(16)]
    with pytest.raises(avcm.NoMemoryError) as info:
        await vcm.alloc(4 * KiB)
    assert info.value.errno == errno.ENOMEM
    for piece in pieces[::2]:
        await piece.free()  # half the region is free, in 64 KiB holes
    with pytest.raises(avcm.NoMemoryError, match="no hole"):
        await vcm.alloc(128 * KiB)
    assert len(vcm.allocations()) == 8


async def test_carveout_region_is_taken_from_memory(memory: avcm.PhysicalMemory) -> None:
    before = memory.free_bytes
    vcm = drivers.create_carveout(memory, size=16 * MiB)
    assert memory.free_bytes == before - 16 * MiB
    other = avcm.phys_alloc(16 * MiB, 0, (8, 0), memory=memory)
    region = range(vcm.start, vcm.start + vcm.size)
    assert all(part.start not in region for part in other.parts)
    await other.free()
    await vcm.destroy()
    assert memory.is_pristine()


async def test_carveout_outlives_destroy_while_its_memory_is_mapped(
    memory: avcm.PhysicalMemory,
) -> None:
    carveout = drivers.create_carveout(memory, size=MiB)
    cpu = drivers.create_cpu(memory)
    phys = await carveout.alloc(8 * KiB)
    res = await cpu.map(phys)
    with pytest.warns(avcm.VcmWarning):
        await carveout.destroy()
    assert not memory.is_pristine()
    await res.unmap()
    await phys.free()  # the last block: the region goes back to the memory
    await cpu.destroy()
    assert memory.is_pristine()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"orders": (0, 8)},
        {"orders": (8, 4)},
        {"orders": ()},
        {"orders": (8, 8, 0)},
        {"orders": (8, 2.5, 0)},  # a page of 4 KiB << 2.5: not a power of two
        {"orders": (True, 0)},
        {"orders": None},
        {"orders": 8},
        {"start": 0x1000_0001},
        {"size": 0},
        {"size": -MiB},
        {"start": (1 << 64) - MiB, "size": 2 * MiB},
    ],
)
async def test_iommu_factory_rejects_bad_arguments(
    memory: avcm.PhysicalMemory, kwargs: dict[str, object]
) -> None:
    before = memory.statistics()
    with pytest.raises(avcm.InvalidError) as info:
        drivers.create_iommu(memory, **kwargs)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert memory.statistics() == before


@pytest.mark.parametrize("size", [0, 12345, -MiB, 3 * MiB])
async def test_carveout_factory_rejects_bad_sizes(memory: avcm.PhysicalMemory, size: int) -> None:
    with pytest.raises(avcm.InvalidError):
        drivers.create_carveout(memory, size=size)
    assert memory.is_pristine()


async def test_carveout_larger_than_memory_is_enomem() -> None:
    memory = avcm.PhysicalMemory(size=8 * MiB)
    with pytest.raises(avcm.NoMemoryError):
        drivers.create_carveout(memory, size=16 * MiB)
    assert memory.is_pristine()


@pytest.mark.parametrize(
    "make",
    [
        lambda: drivers.Latency({"pte_write": -1.0}),
        lambda: drivers.Latency(jitter=2),
        lambda: drivers.Latency.profile("warp"),
        lambda: drivers.FaultPlan().fail_nth("pte_write", 0),
        lambda: drivers.FaultPlan().fail_randomly(1.5),
        lambda: drivers.FaultPlan().fail_randomly(0.5, "flush"),
        lambda: drivers.FaultPlan().fail_nth("alloc", 1, errno=0),
        lambda: drivers.Latency(jitter=True),
        lambda: drivers.Latency({"free": True}),
        lambda: drivers.FaultPlan().fail_randomly(True),
    ],
)
async def test_latency_and_faults_reject_bad_settings(make: object) -> None:
    with pytest.raises(avcm.InvalidError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("access", "message"),
    [
        (lambda hw: hw.translate("x"), "address must be an int"),
        (lambda hw: hw.translate(1.5), "address must be an int"),
        (lambda hw: hw.read(0x1000_0000, 1.5), "length must be an int"),
        (lambda hw: hw.read(0x1000_0000, -1), "negative"),
        (lambda hw: hw.write(0x1000_0000, "text"), "bytes-like"),
    ],
)
async def test_bad_device_access_is_einval(
    memory: avcm.PhysicalMemory, access: object, message: str
) -> None:
    vcm = drivers.create_iommu(memory, latency=ZERO)
    await vcm.make_binding(4 * KiB)
    hw = drivers.hardware(vcm)
    async with vcm.activated():
        with pytest.raises(avcm.InvalidError, match=message):
            access(hw)  # type: ignore[operator]
    assert hw.statistics().faults == 0


async def test_phys_from_another_memory_is_einval(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_iommu(memory, latency=ZERO)
    stranger = avcm.phys_alloc(4 * KiB, 0, (0,), memory=avcm.PhysicalMemory(size=MiB))
    with pytest.raises(avcm.InvalidError, match="another physical memory"):
        await vcm.map(stranger)
    assert vcm.reservations() == () and stranger.bindings == 0
    assert isinstance(vcm.driver, avcm.lowlevel.MmuWrapper) and vcm.driver.space.is_pristine()


async def test_foreign_phys_into_one_to_one_is_eopnotsupp(memory: avcm.PhysicalMemory) -> None:
    carveout = drivers.create_carveout(memory, size=MiB, latency=ZERO)
    iommu = drivers.create_iommu(memory, latency=ZERO)
    foreign = await iommu.alloc(4 * KiB)
    with pytest.raises(avcm.NotSupportedError) as info:
        await carveout.map(foreign)
    assert info.value.errno == errno.EOPNOTSUPP
    assert carveout.reservations() == () and foreign.bindings == 0
    with pytest.raises(avcm.NotSupportedError):
        await carveout.reserve(4 * KiB)
    phys = await carveout.alloc(4 * KiB)
    await carveout.map(phys)
    with pytest.raises(avcm.BusyError):
        await carveout.map(phys)


async def test_injected_fault_reaches_caller_and_changes_nothing(
    memory: avcm.PhysicalMemory,
) -> None:
    faults = drivers.FaultPlan().fail_nth("alloc", 1, errno=errno.ENXIO)
    carveout = drivers.create_carveout(memory, size=MiB, latency=ZERO, faults=faults)
    before = carveout.driver.hw.statistics()  # type: ignore[attr-defined]
    with pytest.raises(drivers.InjectedFault) as info:
        await carveout.make_binding(4 * KiB)
    assert info.value.errno == errno.ENXIO
    assert carveout.driver.hw.statistics() == before  # type: ignore[attr-defined]
    assert carveout.allocations() == () and carveout.reservations() == ()
    assert faults.statistics().injected == {"alloc": 1}
    await carveout.make_binding(4 * KiB)


async def test_random_faults_are_seeded() -> None:
    def pattern(seed: int) -> list[bool]:
        plan = drivers.FaultPlan(seed).fail_randomly(0.5)
        hits = []
        for _ in range(64):
            try:
                plan.check("pte_write")
                hits.append(False)
            except drivers.InjectedFault:
                hits.append(True)
        return hits

    assert pattern(3) == pattern(3) != pattern(4)
    assert 10 < sum(pattern(3)) < 54


# -- latency under trio's MockClock: simulated time, no wall time ------------------------------


@pytest.mark.trio
async def test_slow_latency_runs_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The latency is slept on the event loop's clock: under a MockClock it is simulated time,
    # the same in every run (whatever the machine is doing), and costs no wall time.
    async def simulated_duration() -> float:
        memory = avcm.PhysicalMemory()
        vcm = drivers.create_iommu(memory, latency=drivers.Latency.profile("slow"))
        started = trio.current_time()
        for _ in range(20):
            res = await vcm.make_binding(2 * MiB + 68 * KiB)
            async with vcm.activated():
                pass
            await res.destroy_binding()
        return trio.current_time() - started

    first = await simulated_duration()
    assert first > 0.05  # 20 x (enable + 8 ptes + flush)
    assert await simulated_duration() == pytest.approx(first, rel=1e-12)


# -- the simulated page table: entries, overlaps and translation --------------------------------


async def test_page_table_refuses_overlapping_entries_and_translates_each_page(
    memory: avcm.PhysicalMemory,
) -> None:
    mmu = drivers.PageTableMmu(memory, orders=(8, 4, 0), latency=ZERO)
    ram = memory.base
    vcm = avcm.mmu_init(0x1000_0000, 1 << 30, mmu, memory=memory)
    base = 0x1010_0000  # 1 MiB aligned
    await mmu.activate_page(base + 64 * KiB, ram + 0x20_0000, 4, vcm)  # a 64 KiB page
    await mmu.activate_page(base + 128 * KiB, ram + 0x30_0000, 0, vcm)  # a 4 KiB page after it
    overlapping = [
        (base, ram + 0x40_0000, 8),  # a 1 MiB page over both
        (base + 64 * KiB, ram + 0x50_0000, 4),  # the same start
        (base + 68 * KiB, ram + 0x50_0000, 0),  # inside the 64 KiB page
        (base + 128 * KiB, ram + 0x50_0000, 0),  # the 4 KiB page again
        (base + 128 * KiB, ram + 0x50_0000, 4),  # a 64 KiB page over the 4 KiB one
    ]
    for vaddr, paddr, order in overlapping:
        with pytest.raises(avcm.InvalidError, match="overlaps an entry"):
            await mmu.activate_page(vaddr, paddr, order, vcm)
    with pytest.raises(avcm.InvalidError, match="misaligned"):
        await mmu.activate_page(base + 4 * KiB, ram + 0x50_0000, 4, vcm)
    # next to them, not over them: accepted
    await mmu.activate_page(base + 132 * KiB, ram + 0x31_0000, 0, vcm)
    await mmu.activate_page(base + (1 << 20), ram + 0x40_0000, 8, vcm)
    assert mmu.hardware_mappings() == [
        (base + 64 * KiB, ram + 0x20_0000, 64 * KiB),
        (base + 128 * KiB, ram + 0x30_0000, 4 * KiB),
        (base + 132 * KiB, ram + 0x31_0000, 4 * KiB),
        (base + (1 << 20), ram + 0x40_0000, 1 << 20),
    ]
    mmu.enabled = True
    assert mmu.translate(base + 64 * KiB + 0x123) == ram + 0x20_0123
    assert mmu.translate(base + 127 * KiB) == ram + 0x20_0000 + 63 * KiB
    assert mmu.translate(base + 133 * KiB) == ram + 0x31_0000 + KiB
    assert mmu.translate(base + (2 << 20) - 1) == ram + 0x4F_FFFF
    for unmapped in (base, base + 136 * KiB, base + (2 << 20)):
        with pytest.raises(drivers.IommuFault, match="no entry"):
            mmu.translate(unmapped)
    # an access across two pages is translated page by page
    memory.write(ram + 0x20_0000 + 64 * KiB - 2, b"ab")
    memory.write(ram + 0x30_0000, b"cd")
    assert mmu.read(base + 128 * KiB - 2, 4) == b"abcd"
    with pytest.raises(avcm.InvalidError, match="no entry"):
        await mmu.deactivate_page(base + 64 * KiB, ram + 0x20_0000, 0, vcm)  # wrong order
    await mmu.deactivate_page(base + 64 * KiB, ram + 0x20_0000, 4, vcm)
    # the 64 KiB page gone, a page may take its place, and a 1 MiB page still may not
    await mmu.activate_page(base + 68 * KiB, ram + 0x50_0000, 0, vcm)
    with pytest.raises(avcm.InvalidError, match="overlaps an entry"):
        await mmu.activate_page(base, ram + 0x40_0000 + (1 << 20), 8, vcm)
    for vaddr, paddr, order in [
        (base + 68 * KiB, ram + 0x50_0000, 0),
        (base + 128 * KiB, ram + 0x30_0000, 0),
        (base + 132 * KiB, ram + 0x31_0000, 0),
    ]:
        await mmu.deactivate_page(vaddr, paddr, order, vcm)
    await mmu.activate_page(base, ram + 0x60_0000, 8, vcm)  # the 1 MiB block is empty again
    assert mmu.statistics().entries_per_order == {8: 2}
