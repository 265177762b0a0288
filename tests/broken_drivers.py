"""Deliberately broken drivers: the stress harness and the conformance suite must catch each.

Each factory takes the run's physical memory and returns a context, as ``--driver`` expects.
"""

from __future__ import annotations

import os
import signal
import sys

import anyio

import avcm
import drivers


class CheckThenActCarveout(drivers.CarveoutAllocator):
    """Looks for a hole, yields (a latency sleep), then takes the hole it saw: two tasks that
    look at once are handed the same memory."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, 16 << 20, name="check-then-act")
        self.next = self.start

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        start = self.next  # check
        if start + part.size > self.start + self.size:
            self.next = self.start
            raise avcm.NoMemoryError("check-then-act: wrapped around")
        await anyio.sleep(5e-6)  # the yield between the check and the act
        self.next = start + part.size  # act, on a stale check
        part.start = start
        return start

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        pass


class OverlappingCarveout(drivers.CarveoutAllocator):
    """Every fifth allocation is handed memory that overlaps the one before."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, 16 << 20, name="overlapping")
        self.count = 0
        self.last = self.start

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        self.count += 1
        if self.count % 5 == 0:
            part.start = self.last
            return "overlapping"
        token = await super().alloc(vcm, part, flags)
        self.last = part.start
        return token

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        if token != "overlapping":
            await super().free(part, token)


class ForgetfulPageTable(drivers.PageTableMmu):
    """Its page removal forgets every seventh entry: stale translations stay in the hardware."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="forgetful")
        self.removals = 0

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self.removals += 1
        if self.removals % 7 == 0:
            return
        await super().deactivate_page(vaddr, paddr, order, vcm)


class StaleIotlbPageTable(drivers.PageTableMmu):
    """An IOTLB that caches each translation a device uses and invalidates the cache only once
    16 unmapped pages are pending: after an unbind returns (or through the same device address
    bound again) a device still reaches the old page. Its page tables are right: the model
    check alone cannot see it."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="stale-iotlb")
        self.iotlb: dict[int, int] = {}  # device page -> physical page
        self.pending = 0

    def translate(self, addr: int) -> int:
        page = addr & ~(avcm.PAGE_SIZE - 1)
        cached = self.iotlb.get(page)
        if cached is not None and self.enabled:
            return cached + (addr - page)
        physical = super().translate(addr)
        self.iotlb[page] = physical - (addr - page)
        return physical

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        self.pending += 1
        if self.pending == 16:  # the deferred invalidation
            self.iotlb.clear()
            self.pending = 0


class LeakyCarveout(drivers.CarveoutAllocator):
    """Its free forgets every fourth block: pages leak."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, 16 << 20, name="leaky")
        self.frees = 0

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        self.frees += 1
        if self.frees % 4:
            await super().free(part, token)


def _o2o(allocator: drivers.CarveoutAllocator, memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.o2o_init(
        allocator.start, allocator.size, allocator, memory=memory, name=allocator.name
    )


def check_then_act(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(CheckThenActCarveout(memory), memory)


def overlapping(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(OverlappingCarveout(memory), memory)


def leaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(LeakyCarveout(memory), memory)


def forgetful(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, ForgetfulPageTable(memory), memory=memory)


def stale_iotlb(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, StaleIotlbPageTable(memory), memory=memory)


def correct_iommu(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: the sample IOMMU, as a third-party driver author would hand it in."""
    return drivers.create_iommu(memory, name="third-party")


def not_a_context(memory: avcm.PhysicalMemory) -> object:
    return "not a context"


def announced_iommu(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: the sample IOMMU, saying on stderr that the run is starting (a test waits
    for it before it presses Ctrl-C)."""
    # one write(2) of a short line is atomic on a pipe: with --jobs, processes announce at
    # once, and print() writes the text and the newline apart when Python is unbuffered
    os.write(sys.stderr.fileno(), b"driver ready\n")
    return drivers.create_iommu(memory, name="announced")


class SelfInterruptingPageTable(drivers.PageTableMmu):
    """Not broken: its 50th page write presses Ctrl-C (SIGINT to itself) in the middle of the
    write, then says on stderr whether the rest of the write still ran. Ctrl-C must wait for a
    checkpoint, never land inside a driver's or the framework's bookkeeping."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="self-interrupting")
        self.writes = 0

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self.writes += 1
        if self.writes == 50:
            signal.raise_signal(signal.SIGINT)
            print("write went on after Ctrl-C", file=sys.stderr, flush=True)
        await super().activate_page(vaddr, paddr, order, vcm)


def self_interrupting_iommu(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(
        0x1000_0000, 1 << 30, SelfInterruptingPageTable(memory), memory=memory, name="sigint"
    )
