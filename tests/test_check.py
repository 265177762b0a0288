"""The model check (contract rule 4): :func:`testing.check_model` passes on a consistent context,
returning the number of checks it made, and on an inconsistent one raises
:class:`testing.HardwareMismatch` listing every difference."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

import avcm
import drivers
from avcm import testing
from tests._recording import RecordingDriver, make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20
KiB = 1 << 10
ZERO = drivers.Latency.profile("zero")
HEADER = "rule 4: test: hardware differs from the model:"


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=64 * MiB)


def extent(res: avcm.Res) -> str:
    """How the check names a bound reservation's translation (its phys is one extent here)."""
    assert res.phys is not None
    return f"{res.start:#x}..{res.start + res.phys.size:#x} -> {res.phys.parts[0].start:#x}"


def mismatch(vcm: avcm.Vcm) -> list[str]:
    with pytest.raises(testing.HardwareMismatch) as info:
        testing.check_model(vcm)
    assert isinstance(info.value, testing.InvariantViolation) and info.value.rule == 4
    header, *problems = str(info.value).split("\n  ")
    assert header == HEADER
    return problems


async def bound_and_active(
    memory: avcm.PhysicalMemory, *sizes: int
) -> tuple[avcm.Vcm, RecordingDriver, list[avcm.Res]]:
    vcm, driver = make_context(memory)
    reservations = [await vcm.make_binding(size) for size in sizes]
    await vcm.reserve(4 * KiB)  # unbound: in no translation
    await vcm.activate()
    return vcm, driver, reservations


# -- consistent contexts -----------------------------------------------------------------------


async def test_passes_on_a_consistent_core_context(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    assert testing.check_model(vcm) == 2  # active state, translations
    res = await vcm.make_binding(MiB + 68 * KiB)  # 1 MiB + 64 KiB + 4 KiB parts
    await vcm.reserve(4 * KiB)
    assert testing.check_model(vcm) == 2
    assert testing.expected_mappings(vcm) == []  # inactive: nothing
    await vcm.activate()
    assert testing.check_model(vcm) == 2
    assert res.phys is not None and len(res.phys.parts) == 3
    # the three parts follow each other in both address spaces: one extent
    assert testing.expected_mappings(vcm) == [(res.start, res.phys.parts[0].start, MiB + 68 * KiB)]
    await res.unbind()
    assert testing.check_model(vcm) == 2 and not driver.mapped


async def test_passes_on_consistent_mmu_and_one_to_one_contexts(
    memory: avcm.PhysicalMemory,
) -> None:
    cpu = drivers.create_cpu(memory, latency=ZERO)  # 4 KiB pages only: 273 entries to merge
    carveout = drivers.create_carveout(memory, size=4 * MiB, latency=ZERO)
    res = await carveout.make_binding(MiB + 68 * KiB)
    assert res.phys is not None
    mapped = await cpu.map(res.phys)
    for vcm in (cpu, carveout):
        await vcm.activate()
    assert len(drivers.hardware(cpu).hardware_mappings()) == (MiB + 68 * KiB) // avcm.PAGE_SIZE
    # MMU: wrapper's bound list and activated state, hardware active state and translations
    assert testing.check_model(cpu) == 4
    assert testing.check_model(carveout) == 1  # one-to-one: every reservation at its memory
    await mapped.unmap()
    assert testing.check_model(cpu) == 4


# -- inconsistent ones: every difference, readably ---------------------------------------------


async def test_hardware_that_forgot_a_mapping(memory: avcm.PhysicalMemory) -> None:
    vcm, driver, (kept, forgotten) = await bound_and_active(memory, 8 * KiB, 64 * KiB)
    del driver.mapped[forgotten]
    assert mismatch(vcm) == [f"missing in hardware: {extent(forgotten)}"]
    assert driver.mapped == {kept: kept.phys}


async def test_hardware_that_keeps_a_stale_mapping(memory: avcm.PhysicalMemory) -> None:
    vcm, driver, (_kept, stale) = await bound_and_active(memory, 8 * KiB, 64 * KiB)
    line = f"stale in hardware:   {extent(stale)}"
    phys = await stale.unbind()
    assert phys is not None and testing.check_model(vcm) == 2
    driver.mapped[stale] = phys  # the unbind did not reach the hardware
    assert mismatch(vcm) == [line]


async def test_hardware_active_while_inactive(memory: avcm.PhysicalMemory) -> None:
    vcm, driver, (res,) = await bound_and_active(memory, 8 * KiB)
    await vcm.deactivate()
    assert testing.check_model(vcm) == 2
    driver.active = True  # the deactivate did not reach the hardware
    assert mismatch(vcm) == [
        "hardware active=True but activations=0",
        f"stale in hardware:   {extent(res)}",  # inactive: every translation is stale
    ]


async def test_every_difference_is_listed(memory: avcm.PhysicalMemory) -> None:
    vcm, driver, (a, b, c) = await bound_and_active(memory, 4 * KiB, 8 * KiB, 64 * KiB)
    assert a.phys is not None and c.phys is not None
    stale = [(0x3000_0000, 0x8800_0000, 4 * KiB), (0x3100_0000, 0x8900_0000, 2 * 4 * KiB)]

    def hardware_mappings() -> Iterable[tuple[int, int, int]]:
        # b only, and two translations of nothing; a and c forgotten
        assert b.phys is not None
        return [(b.start, b.phys.parts[0].start, b.phys.size), *stale]

    driver.active = False
    driver.hardware_mappings = hardware_mappings  # type: ignore[method-assign]
    assert mismatch(vcm) == [
        "hardware active=False but activations=1",
        # sorted by device address (reservations are taken from the top of the space)
        *(f"missing in hardware: {extent(r)}" for r in sorted((a, c), key=lambda r: r.start)),
        "stale in hardware:   0x30000000..0x30001000 -> 0x88000000",
        "stale in hardware:   0x31000000..0x31002000 -> 0x89000000",
    ]


async def test_translation_to_the_wrong_memory_is_missing_and_stale(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver, (res, other) = await bound_and_active(memory, 8 * KiB, 8 * KiB)
    assert res.phys is not None and other.phys is not None
    driver.mapped[res] = other.phys  # res's addresses reach other's memory
    wrong = f"{res.start:#x}..{res.start + 8 * KiB:#x} -> {other.phys.parts[0].start:#x}"
    assert mismatch(vcm) == [f"missing in hardware: {extent(res)}", f"stale in hardware:   {wrong}"]


async def test_mmu_wrapper_bookkeeping(memory: avcm.PhysicalMemory) -> None:
    vcm = drivers.create_iommu(memory, latency=ZERO, name="test")
    await vcm.make_binding(8 * KiB)
    await vcm.activate()
    wrapper = vcm.driver
    assert isinstance(wrapper, avcm.lowlevel.MmuWrapper)
    assert testing.check_model(vcm) == 4
    wrapper.bound.clear()
    wrapper.activated = False
    assert mismatch(vcm) == [
        "wrapper's bound list has 0 entries, model has 1",
        "wrapper activated=False but activations=1",
    ]


async def test_one_to_one_reservation_away_from_its_memory(memory: avcm.PhysicalMemory) -> None:
    carveout = drivers.create_carveout(memory, size=MiB, latency=ZERO, name="test")
    first = await carveout.make_binding(8 * KiB)
    second = await carveout.make_binding(8 * KiB)
    assert testing.check_model(carveout) == 1
    second._start = first.start + 4 * KiB  # corrupted: not at its memory, and over the first
    problems = mismatch(carveout)
    assert problems == [
        f"one-to-one {second!r} is not at its memory {second.phys!r}",
        f"one-to-one reservations overlap at {second.start:#x}",
    ]


@pytest.mark.parametrize("change", ["moved", "dropped", "before", "between", "after", "bigger"])
async def test_a_change_where_no_operation_ran_since_the_last_check(
    memory: avcm.PhysicalMemory, change: str
) -> None:
    """The check looks again only at reservations whose entries changed since it last passed:
    an entry changed under a reservation nothing touched (shared hardware, a stray write) is
    found all the same, and worded as a check from scratch words it."""
    cpu = drivers.create_cpu(memory, latency=ZERO, name="test")  # 4 KiB pages: one entry each
    first = await cpu.make_binding(16 * KiB)
    await cpu.reserve(4 * KiB)  # unbound, between the two: in no translation
    second = await cpu.make_binding(16 * KiB)
    await cpu.activate()
    assert testing.check_model(cpu) == 4
    hardware = drivers.hardware(cpu)
    entries = hardware._entries
    page = first.start + 8 * KiB
    _, paddr, size = entries[page]
    if change == "moved":  # to other memory
        entries[page] = (page, paddr + MiB, size)
    elif change == "dropped":
        del entries[page]
    elif change == "bigger":  # a large page over the first reservation and past it
        for vaddr in range(first.start, first.start + 16 * KiB, size):
            del entries[vaddr]
        entries[first.start] = (first.start, entries_start(first), MiB)
    else:
        low, high = sorted((first, second), key=lambda res: res.start)
        vaddr = {
            "before": low.start - size,
            "between": low.start + 16 * KiB,
            "after": high.start + 16 * KiB,
        }[change]
        assert vaddr not in entries and (change != "between" or vaddr < high.start)
        entries[vaddr] = (vaddr, paddr, size)
    hardware._mappings = None  # what the driver's own changes do
    problems = mismatch(cpu)
    assert problems
    avcm.testing._invariants._verified.clear()  # avcm-private: from scratch
    assert mismatch(cpu) == problems


def entries_start(res: avcm.Res) -> int:
    assert res.phys is not None
    return res.phys.parts[0].start
