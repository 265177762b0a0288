"""Deliberately broken drivers: the stress harness and the conformance suite must catch each.

Each factory takes the run's physical memory and returns a context, as ``--driver`` expects.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import math
import os
import random
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import sniffio

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
        # within the carve-out: memory out of it is another bug (avcm refuses it, EINVAL)
        if self.count % 5 == 0 and self.last + part.size <= self.start + self.size:
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


class WrappingTlbPageTable(drivers.PageTableMmu):
    """An IOTLB whose entries are tagged with an 8-bit generation that each page removal moves
    on, rather than being emptied (invalidation by generation, not by entry): an entry hits
    only while its tag is the current one, until the count wraps. 256 removals after a page
    was cached, a device reaches it again though it was unmapped long before. Its page tables
    are right, and a device access right after an unbind faults."""

    GENERATIONS = 256

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="wrapping-tlb")
        self.iotlb: dict[int, tuple[int, int]] = {}  # device page -> (generation, page)
        self.generation = 0

    def translate(self, addr: int) -> int:
        page = addr & ~(avcm.PAGE_SIZE - 1)
        cached = self.iotlb.get(page)
        if cached is not None and cached[0] == self.generation and self.enabled:
            return cached[1] + (addr - page)
        physical = super().translate(addr)
        self.iotlb[page] = (self.generation, physical - (addr - page))
        return physical

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        self.generation = (self.generation + 1) % self.GENERATIONS


class CoalescingTlbPageTable(drivers.PageTableMmu):
    """A TLB that coalesces neighbours: when a device access walks an entry and the *run*
    entries of its size from a boundary of *run* times that size map memory that follows on
    without a gap, it keeps one translation for the whole run. Unmapping a page drops the run
    that covers it if *unfolds* is ``"covering"`` (correct); ``"ends"`` drops it only when
    the page is the run's first or last; ``"never"`` keeps it till translation is switched
    off. Then a device reaches memory through a neighbour unbound since, or the old memory of
    one bound anew. Its page tables are right.

    With *shared*, the TLB is one for all contexts made on the memory (a unit serving several
    devices), its runs tagged with the context that folded them, or, if *shared* is
    ``"untagged"``, not: a device then reaches another context's memory through a run that
    context folded at the same device addresses."""

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        *,
        run: int = 16,
        unfolds: str = "covering",
        shared: str | None = None,
    ) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="coalescing-tlb")
        self.run, self.unfolds = run, unfolds
        # (tag, device base, entry size) -> physical base; the tag is None when untagged
        self.runs: dict[tuple[object, int, int], int] = (
            _SHARED_TLBS.setdefault(memory, {}) if shared else {}
        )
        self.tag: object = None if shared == "untagged" else self

    def translate(self, addr: int) -> int:
        if self.enabled:
            for (tag, base, size), physical in self.runs.items():
                if tag is self.tag and base <= addr < base + self.run * size:
                    return physical + (addr - base)
        physical = super().translate(addr)
        entry = self._covering(addr)
        assert entry is not None  # (translated)
        size = entry[2]
        base = entry[0] & -(self.run * size)
        first = self._entries.get(base)
        if first is not None and all(
            self._entries.get(base + index * size)
            == (base + index * size, first[1] + index * size, size)
            for index in range(self.run)
        ):
            self.runs[(self.tag, base, size)] = first[1]
        return physical

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        size = avcm.PAGE_SIZE << order
        base = vaddr & -(self.run * size)
        ends = vaddr in (base, base + (self.run - 1) * size)
        if self.unfolds == "covering" or (self.unfolds == "ends" and ends):
            self.runs.pop((self.tag, base, size), None)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        for key in [key for key in self.runs if key[0] is self.tag]:
            del self.runs[key]


_SHARED_TLBS: weakref.WeakKeyDictionary[avcm.PhysicalMemory, dict[tuple[object, int, int], int]] = (
    weakref.WeakKeyDictionary()
)


class _TlbPageTable(drivers.PageTableMmu):
    """A page table with a TLB of page translations in front of it while enabled: a miss
    walks the table, caches the page, and tells :meth:`_missed`."""

    def __init__(self, memory: avcm.PhysicalMemory, name: str) -> None:
        super().__init__(memory, orders=(8, 4, 0), name=name)
        self.tlb: dict[int, int] = {}  # device page -> physical page

    def _missed(self, page: int) -> None:
        """A walk for *page* ended (what a walker fetches besides)."""

    def _looking_up(self) -> None:
        """A lookup begins (what lands in the TLB first)."""

    def translate(self, addr: int) -> int:
        if not self.enabled:
            return super().translate(addr)
        self._looking_up()
        page = addr & ~(avcm.PAGE_SIZE - 1)
        cached = self.tlb.get(page)
        if cached is not None:
            return cached + (addr - page)
        physical = super().translate(addr)
        self.tlb[page] = physical - (addr - page)
        self._missed(page)
        return physical

    def walk(self, page: int) -> int | None:
        """The table's translation of *page*, or None if nothing maps it."""
        if self._covering(page) is None:
            return None
        return drivers.PageTableMmu.translate(self, page)


class PrefetchingTlbPageTable(_TlbPageTable):
    """A TLB whose walker, on a miss, also fetches the translation of the page after, ahead
    of use; the fetch lands at the device's next access. An unmap drops the TLB's
    translations of its pages and, if *cancels* (correct), a fetch in flight for them too;
    else that fetch lands after the unmap, and the device reaches the old memory through it.
    Its page tables are right."""

    def __init__(self, memory: avcm.PhysicalMemory, *, cancels: bool) -> None:
        super().__init__(memory, name="prefetching-tlb")
        self.cancels = cancels
        self.in_flight: dict[int, int] = {}

    def _looking_up(self) -> None:
        self.tlb.update(self.in_flight)
        self.in_flight.clear()

    def _missed(self, page: int) -> None:
        after = self.walk(page + avcm.PAGE_SIZE)
        if after is not None:
            self.in_flight[page + avcm.PAGE_SIZE] = after

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        for page in range(vaddr, vaddr + (avcm.PAGE_SIZE << order), avcm.PAGE_SIZE):
            self.tlb.pop(page, None)
            if self.cancels:
                self.in_flight.pop(page, None)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        self.tlb.clear()
        self.in_flight.clear()


class AroundMissTlbPageTable(_TlbPageTable):
    """A TLB whose walker, on a miss, also caches the translations of the pages on either side
    of the one missed. Its page clear waits for the unit between the table write and the TLB
    invalidation: if *clear_first* (correct) it clears the entry, waits, then invalidates;
    else it invalidates, waits, then clears, and a device access beside the page in between
    caches the translation again from the entry still there: the device reaches the old
    memory once the unbind returned. Its page tables are right."""

    def __init__(
        self, memory: avcm.PhysicalMemory, *, clear_first: bool, sides: tuple[int, ...] = (-1, 1)
    ) -> None:
        super().__init__(memory, name="around-miss-tlb")
        self.clear_first = clear_first
        self.sides = sides  # the pages cached with a miss, in pages from it

    def _missed(self, page: int) -> None:
        for side in self.sides:
            beside = page + side * avcm.PAGE_SIZE
            physical = self.walk(beside)
            if physical is not None:
                self.tlb[beside] = physical

    def _invalidate(self, vaddr: int, order: int) -> None:
        for page in range(vaddr, vaddr + (avcm.PAGE_SIZE << order), avcm.PAGE_SIZE):
            self.tlb.pop(page, None)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if self.clear_first:
            await super().deactivate_page(vaddr, paddr, order, vcm)
            await anyio.sleep(UNIT_WAIT)
            self._invalidate(vaddr, order)
        else:
            self._invalidate(vaddr, order)
            await anyio.sleep(UNIT_WAIT)
            await super().deactivate_page(vaddr, paddr, order, vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        self.tlb.clear()


UNIT_WAIT = 50e-6  # seconds AroundMissTlbPageTable's page clear waits for its unit


class StrideFillTlbPageTable(AroundMissTlbPageTable):
    """As :class:`AroundMissTlbPageTable`, but a miss caches nothing of its own: only a stride
    prefetcher fills the TLB, set off by misses of two pages in a row going up, with the page
    after. A read beside a page being unmapped fills nothing; reads of the two pages below
    it, in a row, between its invalidation and its clear, cache it again (attack64's such
    driver was caught in 2 of 4 stress runs before the reads beside swept pages in a row)."""

    def __init__(self, memory: avcm.PhysicalMemory, *, clear_first: bool) -> None:
        super().__init__(memory, clear_first=clear_first)
        self.last_miss: int | None = None

    def translate(self, addr: int) -> int:
        if not self.enabled:
            return drivers.PageTableMmu.translate(self, addr)
        page = addr & ~(avcm.PAGE_SIZE - 1)
        cached = self.tlb.get(page)
        if cached is not None:
            return cached + (addr - page)
        physical = drivers.PageTableMmu.translate(self, addr)
        last, self.last_miss = self.last_miss, page
        if last == page - avcm.PAGE_SIZE:
            ahead = page + avcm.PAGE_SIZE
            fetched = self.walk(ahead)
            if fetched is not None:
                self.tlb[ahead] = fetched
        return physical


class BlockFillTlbPageTable(AroundMissTlbPageTable):
    """As :class:`AroundMissTlbPageTable`, a miss caching every page of its 64 KiB block: once
    a read cached a block, reads beside a page of it hit and cache nothing again; only a
    miss of the page being unmapped itself, between its invalidation and its clear, takes
    the entry still there (attack64's such driver passed walks_in_flight before it read the
    page itself)."""

    BLOCK = 64 * 1024

    def _missed(self, page: int) -> None:
        block = page & ~(self.BLOCK - 1)
        for beside in range(block, block + self.BLOCK, avcm.PAGE_SIZE):
            physical = self.walk(beside)
            if physical is not None:
                self.tlb[beside] = physical


class BurstNextTlbPageTable(drivers.PageTableMmu):
    """A TLB whose entry for a page keeps the translation of the page after it too, which an
    access that goes on from the page into the next one uses. An unmap drops the entries of
    its pages and, if *drops_next* (correct), the translation of its first page that the
    entry of the page below keeps; else a burst from the page below still reaches the old
    memory of the unmapped page, where an access at the page itself faults. Its page tables
    are right."""

    def __init__(self, memory: avcm.PhysicalMemory, *, drops_next: bool) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="burst-next-tlb")
        self.drops_next = drops_next
        self.next_of: dict[int, int] = {}  # device page -> physical page of the next one

    def _chunks(self, addr: int, length: int) -> list[tuple[int, int]]:
        first = avcm.PAGE_SIZE - (addr & (avcm.PAGE_SIZE - 1)) if type(addr) is int else 0
        if type(length) is not int or length <= first or not self.enabled:
            return super()._chunks(addr, length)
        chunks = super()._chunks(addr, first)
        page, left = addr - addr % avcm.PAGE_SIZE, length - first
        while left:
            physical = self.next_of.get(page)
            if physical is None:
                physical = self.next_of[page] = self.translate(page + avcm.PAGE_SIZE)
            chunks.append((physical, min(left, avcm.PAGE_SIZE)))
            page, left = page + avcm.PAGE_SIZE, left - min(left, avcm.PAGE_SIZE)
        return chunks

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        for page in range(vaddr, vaddr + (avcm.PAGE_SIZE << order), avcm.PAGE_SIZE):
            self.next_of.pop(page, None)
            if self.drops_next:
                self.next_of.pop(page - avcm.PAGE_SIZE, None)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        self.next_of.clear()


class LongAccessCachePageTable(drivers.PageTableMmu):
    """A device that translates accesses of 256 bytes or more through a cache of its own (as
    a PCIe device's ATC), filled page by page as they miss. An unmap invalidates the pages'
    translations there if *invalidates* (correct); else a long access still reaches the old
    memory of an unmapped page, where a word or a 64-byte burst faults. Its page tables are
    right."""

    LONG = 256

    def __init__(self, memory: avcm.PhysicalMemory, *, invalidates: bool) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="long-access-cache")
        self.invalidates = invalidates
        self.atc: dict[int, int] = {}  # device page -> physical page

    def _chunks(self, addr: int, length: int) -> list[tuple[int, int]]:
        if type(addr) is not int or type(length) is not int or length < self.LONG:
            return super()._chunks(addr, length)
        if not self.enabled:
            return super()._chunks(addr, length)
        chunks = []
        while length:
            page = addr - addr % avcm.PAGE_SIZE
            physical = self.atc.get(page)
            if physical is None:
                physical = self.atc[page] = self.translate(page)
            chunk = min(length, page + avcm.PAGE_SIZE - addr)
            chunks.append((physical + addr - page, chunk))
            addr, length = addr + chunk, length - chunk
        return chunks

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        if self.invalidates:
            for page in range(vaddr, vaddr + (avcm.PAGE_SIZE << order), avcm.PAGE_SIZE):
                self.atc.pop(page, None)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        self.atc.clear()


class ShortWindowPageTable(drivers.PageTableMmu):
    """A device whose DMA window check is off by one at the end of physical memory (``<``
    where ``<=`` is meant): an access that ends on the memory's last byte faults. Memory is
    handed out lowest first, so only a phys at the very top meets it."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="short-window")

    def _chunks(self, addr: int, length: int) -> list[tuple[int, int]]:
        chunks = super()._chunks(addr, length)
        end = self.memory.base + self.memory.size
        if any(physical + size >= end for physical, size in chunks):
            raise drivers.IommuFault(f"{self.name}: device access at {addr:#x} outside DMA window")
        return chunks

    def read(self, addr: int, length: int) -> bytes:
        return b"".join(self.memory.read(p, n) for p, n in self._chunks(addr, length))


class StaleWriteWalkPageTable(drivers.PageTableMmu):
    """A device whose write engine keeps its own walk of each page it wrote, which a new
    entry there replaces but a page removal never invalidates (only the read engine's is kept
    right): after an unbind returns, a device write still lands in the old page, while a read
    faults as it should, and memory bound there again is reached as it should."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="stale-write-walk")
        self.written: dict[int, int] = {}  # device page -> physical page

    def write(self, addr: int, data: bytes) -> None:
        page = addr & ~(avcm.PAGE_SIZE - 1)
        cached = self.written.get(page)
        if cached is not None and self.enabled and len(data) <= avcm.PAGE_SIZE - (addr - page):
            self.memory.write(cached + (addr - page), data)
            return
        super().write(addr, data)
        if len(data) <= avcm.PAGE_SIZE - (addr - page):
            self.written[page] = self.translate(addr) - (addr - page)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().activate_page(vaddr, paddr, order, vcm)
        for page in range(vaddr, vaddr + (avcm.PAGE_SIZE << order), avcm.PAGE_SIZE):
            self.written.pop(page, None)


class LateEdgePageTable(drivers.PageTableMmu):
    """Its page removal leaves a 4 KiB page just below a MiB boundary, other than the first
    page of its reservation (the last page of a range that ends there, or the page where a
    range crossing it changes page size), in place until its next page is mapped: after an
    unbind returns, a device still reaches that page's old memory."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="late-edge")
        self.late: list[tuple[int, int, int]] = []

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        while self.late:
            await super().deactivate_page(*self.late.pop(), vcm)
        await super().activate_page(vaddr, paddr, order, vcm)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        below_edge = order == 0 and (vaddr + avcm.PAGE_SIZE) % (1 << 20) == 0
        if below_edge and all(res.start != vaddr for res in vcm.reservations()):
            self.late.append((vaddr, paddr, order))
            return
        await super().deactivate_page(vaddr, paddr, order, vcm)

    def hardware_mappings(self) -> list[tuple[int, int, int]]:
        # what it reports is what it will have done: only a device access can tell
        late = {vaddr for vaddr, _, _ in self.late}
        return [mapping for mapping in super().hardware_mappings() if mapping[0] not in late]


class HiddenMiddlePageTable(LateEdgePageTable):
    """Its page removal leaves one 4 KiB page in five that lies inside a range of 1 MiB or
    more (neither the range's first page nor its last, nor on a 64 KiB boundary nor just below
    one) in place until its next page is mapped, hidden from what it reports: after an unbind
    returns, a device still reaches that page's old memory, and only a probe of that page
    shows it."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory)
        self.name = "hidden-middle"
        self.middles = 0

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        block = 64 << 10
        inside = order == 0 and 1 < vaddr % block // avcm.PAGE_SIZE < block // avcm.PAGE_SIZE - 1
        if inside and any(
            res.res_size >= 1 << 20
            and res.start < vaddr < res.start + res.res_size - avcm.PAGE_SIZE
            for res in vcm.reservations()
        ):
            self.middles += 1
            if self.middles % 5 == 0:
                self.late.append((vaddr, paddr, order))
                return
        await drivers.PageTableMmu.deactivate_page(self, vaddr, paddr, order, vcm)


class LateWritebackPageTable(drivers.PageTableMmu):
    """Each page it unmaps leaves a dirty line that it writes back to the page's old memory at
    its next call: by then the memory may have been freed (or handed to someone else)."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="late-writeback")
        self.dirty: list[int] = []

    def _write_back(self) -> None:
        for paddr in self.dirty:
            self.memory.write(paddr, b"dirty!!!")
        self.dirty.clear()

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._write_back()
        await super().activate_page(vaddr, paddr, order, vcm)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._write_back()
        await super().deactivate_page(vaddr, paddr, order, vcm)
        self.dirty.append(paddr)


class ReadOnlyAgainPageTable(drivers.PageTableMmu):
    """A page of memory mapped a second time (a phys with two views) is mapped read-only
    there: a device write through that view faults."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="read-only-again")
        self.read_only: set[int] = set()

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        views = {entry_paddr for _, entry_paddr, _ in self._entries.values()}
        await super().activate_page(vaddr, paddr, order, vcm)
        if paddr in views:
            self.read_only.add(vaddr)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        self.read_only.discard(vaddr)

    def write(self, addr: int, data: bytes) -> None:
        if any(start <= addr < start + (1 << 20) for start in self.read_only):
            entry = self._covering(addr)
            if entry is not None and entry[0] in self.read_only:
                raise drivers.IommuFault(f"{self.name}: write to a read-only page at {addr:#x}")
        super().write(addr, data)


class GroupedTimeoutPageTable(drivers.PageTableMmu):
    """Waits for every fifth page's acknowledgement in a task group of its own, whose child
    times out with ``OSError(ETIMEDOUT)``: what reaches avcm is the task group's
    ``ExceptionGroup``, not the ``OSError`` a driver call may fail with."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="grouped-timeout")
        self.pages = 0

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self.pages += 1
        if self.pages % 5 == 0:
            async with anyio.create_task_group() as group:
                group.start_soon(self._acknowledge)
        await super().activate_page(vaddr, paddr, order, vcm)

    async def _acknowledge(self) -> None:
        await anyio.sleep(1e-6)
        raise TimeoutError(errno.ETIMEDOUT, "page acknowledgement timed out")


FLAKY_WRITES = 40  # a flaky self-walking driver's hardware fails one page write in this many
LAZY_POWER_DOWN = 100e-6  # seconds after its last user left that a lazy unit powers down
LAZY_POWER_DOWN_SEQUENCE = 5e-6  # seconds its power-down sequence takes then
LATE_ARMING_STEPS = 6  # steps a late_armed_power_down's task takes before it arms its timer
POWER_POLL = 500e-6  # seconds between two looks of a polled unit's power watchdog
GRACE_TICK = 50e-6  # seconds between two looks of a grace_power_down unit's watchdog
GRACE = 200e-6  # seconds with no user it waits out before it powers down

_BACKGROUND: set[asyncio.Task[None]] = set()  # (asyncio keeps only weak references to tasks)


def in_background(function: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run *function* in a task of its own that nobody waits for, as a hardware timer or a
    work queue runs the work a driver hands it."""
    if sniffio.current_async_library() == "trio":
        import trio.lowlevel

        trio.lowlevel.spawn_system_task(function)
    else:
        task = asyncio.get_running_loop().create_task(function())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


class SharedUnit:
    """One IOMMU unit serving every context made on one physical memory: page-table pages (one
    4 KiB page of that memory per 2 MiB of device addresses in use, the last one given back
    kept as a spare) and power (on while any context is enabled: a usage count) are the
    unit's, shared by all its contexts. One context's calls are serialised by its mutex; two
    contexts call the unit at once.

    Correct unless a flag makes one of its read-modify-writes yield between the read and the
    write (a latency sleep), which only two contexts racing can show:

    * ``racy_take``: two contexts taking the spare table at once both get it, and write their
      entries into one page-table page;
    * ``racy_give``: two contexts giving a table back at once both make theirs the spare; one
      of the pages is lost (leaked);
    * ``racy_power``: the usage count is read, then written after the sleep: it drifts, and the
      unit powers off while a context is still active;
    * ``early_enable``: the first enabler counts itself, then sleeps through the power-up
      before the unit is on; a second enabler sees the count above zero and returns at once,
      with the unit still off (shows only when two contexts start from cold at once);
    * ``late_power_down``: the last user to leave sleeps through the power-down sequence, then
      switches the unit off without looking at the count again: another context's enable
      from cold meanwhile is undone (shows only when every context is off and one switches
      on again within the power-down's latency);
    * ``lazy_power_down``: the last user to leave starts a lazy power-down in a background
      task of the unit's (a timer, :data:`LAZY_POWER_DOWN`), which, when it falls due, finds
      the count at zero, sleeps through the power-down sequence and switches the unit off
      without looking again: an enable from cold during that sequence is undone, after
      every call returned (shows only when a context switches on again within the sequence
      after the timer). ``noisy_lazy_power_down`` is the same, but a timer only acts if no
      user came and went since it was started, and each switch-off also starts five short
      timers of no consequence (a flush, a log), due before it. ``late_armed_power_down`` is
      ``lazy_power_down`` whose task takes :data:`LATE_ARMING_STEPS` steps (checkpoints: a
      lock, a log) before it arms its timer;
    * ``polled_power_down``: a watchdog task of the unit's, started at power-up, looks at the
      count every :data:`POWER_POLL`; finding it at zero, it sleeps through the power-down
      sequence and switches the unit off without looking again. Its timer was pending before
      the last user left (shows only when a context switches on again within the sequence
      after the watchdog's next look). With ``watchdog`` instead, the same watchdog looks
      again after the sequence: correct;
    * ``grace_power_down``: a watchdog task of the unit's, started at power-up, looks every
      :data:`GRACE_TICK` and powers the unit down at its first look at least :data:`GRACE`
      after the last user left (a grace period), sleeping through the sequence and switching
      it off without looking again. The look that decides is armed only after four others
      fell due since the last user left (shows only when a context switches on again within
      the sequence after that look);
    * ``racy_root``: the count of entries using the unit's root table (one page, needed by every
      translation, freed when no entry uses it) is read, then written after the sleep: two
      contexts mapping at once lose a count, and the root is freed while another context
      still translates through it.

    Other flags are broken without a race:

    * ``power_as_active``: a port's ``hardware_active()`` reports the unit's power, on while any
      context is active, not whether this context translates;
    * ``leaky_zeroing``: a new table page is zeroed (a sleep) before it is recorded anywhere: an
      activation cancelled there leaks the page.

    And two that only one context changing while another goes on can show:

    * ``early_root_free``: the unit's root table, a page of the memory that every walk reads, is
      freed when the *first* context is destroyed, not the last; the others walk a free page;
    * ``stale_clear``: entries are objects the unit recycles (the last one freed is the first
      one taken again), and a disable "makes sure" the last entry its context cleared is
      invalid, through a pointer kept since: once another context took that entry for a
      mapping of its own, which it may while the disable waits for the flush, that mapping dies.

    And those that only hardware shared over time, or by more contexts than two, shows. Each
    context holds a stream id (the lowest free one, given back at its destroy): the unit lets a
    stream translate while its bit in a stream register is set, and with the flags below keeps
    a walk cache tagged by it (which page-table page a stream's walk of a 2 MiB region went
    through last), which survives a switch-off (its tag says whose it is) and is flushed for a
    region whose table its context gives back, and for a stream that is given back:

    * ``stale_walk``: not flushed when a context gives a region's table back to the unit: once
      a context (another, or the same) takes that page for the same region, the first
      context's device walks into its entries;
    * ``private_stale_walk``: the same, but each context keeps the tables it gave back for
      itself, and takes them again for any region: only the same context meets a table its
      device walked for another region;
    * ``wrapping_stream_ids``: a context gets the next stream id of a count that wraps at four
      (no id is looked at for being in use): a fifth context shares the first one's id, its
      bit and its walks;
    * ``stale_stream_reuse``: a context keeps the tables it used till its destroy (as Linux's
      io-pgtable does), which gives them back with its stream but does not flush the stream's
      walks: the next context made gets the id, and walks into tables the unit has handed
      to others since;
    * ``narrow_stream_ids``: the stream register has a bit for ids 0 and 1 only (the id's low
      bit picks it), so stream 2 shares stream 0's bit: with three contexts, one switching off
      switches another one's translation off too.
    """

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        *,
        racy_take: bool = False,
        racy_give: bool = False,
        racy_power: bool = False,
        early_enable: bool = False,
        late_power_down: bool = False,
        lazy_power_down: bool = False,
        polled_power_down: bool = False,
        watchdog: bool = False,
        grace_power_down: bool = False,
        noisy_lazy_power_down: bool = False,
        late_armed_power_down: bool = False,
        racy_root: bool = False,
        power_as_active: bool = False,
        leaky_zeroing: bool = False,
        early_root_free: bool = False,
        stale_clear: bool = False,
        stale_walk: bool = False,
        private_stale_walk: bool = False,
        wrapping_stream_ids: bool = False,
        stale_stream_reuse: bool = False,
        narrow_stream_ids: bool = False,
        walk_cache: bool = False,
        banks: int | None = None,
    ) -> None:
        self.memory = memory
        self.banks = banks  # how many contexts it can serve at once (None: any number)
        self.latency = drivers.Latency.profile("default", seed=7)
        self.racy_take, self.racy_give, self.racy_power = racy_take, racy_give, racy_power
        self.early_enable, self.late_power_down = early_enable, late_power_down
        self.lazy_power_down = lazy_power_down or noisy_lazy_power_down or late_armed_power_down
        self.late_armed = late_armed_power_down
        self.noisy = noisy_lazy_power_down
        self.changes = 0  # noisy_lazy_power_down: how often the count changed
        self.polled_power_down = polled_power_down
        self.grace_power_down = grace_power_down
        self.idle_since = 0.0  # grace_power_down: when the last user left
        self.watchdog = polled_power_down or watchdog or grace_power_down
        self.watching = False  # polled_power_down's watchdog runs
        self.racy_root, self.power_as_active = racy_root, power_as_active
        self.leaky_zeroing = leaky_zeroing
        self.early_root_free, self.stale_clear = early_root_free, stale_clear
        self.stale_walk = stale_walk or private_stale_walk
        self.private_spares = private_stale_walk
        self.wrapping_stream_ids, self.stale_stream_reuse = wrapping_stream_ids, stale_stream_reuse
        self.narrow_stream_ids = narrow_stream_ids
        self.keeps_tables = stale_stream_reuse or walk_cache  # till the context's destroy
        self.caches_walks = self.keeps_tables or self.stale_walk or wrapping_stream_ids
        self.streams: set[int] = set()  # the stream ids the contexts hold
        self.streams_given = 0  # wrapping_stream_ids: how many were given
        self.stream_bits = 0  # the stream register: which streams translate
        self.walks: dict[tuple[int, int], int] = {}  # (stream, region) -> table walked last
        self.root_page: int | None = None  # early_root_free's root table
        self.root_freed = False
        self.tables: dict[int, dict[int, list[int]]] = {}  # page -> {index: [pa, order, valid]}
        self.free_entries: list[list[int]] = []
        self.spare: int | None = None
        self.root: int | None = None
        self.root_users = 0
        self.users = 0
        self.powered = False
        self.ports = 0

    async def _between_read_and_write(self, racy: bool) -> None:
        if racy:
            await self.latency.sleep("alloc", self)

    async def take_table(self) -> int:
        spare = self.spare
        await self._between_read_and_write(self.racy_take)
        self.spare = None
        if spare is None:
            spare = self.memory.alloc_pages(0)
            if spare is None:
                raise avcm.NoMemoryError("shared unit: no page for a page table")
            if self.leaky_zeroing:
                await self.latency.sleep("pte_write", self)  # zeroing it, not yet recorded
        self.tables.setdefault(spare, {})
        return spare

    async def use_root(self, delta: int) -> None:
        """One entry more (+1) or fewer (-1) translating through the root table."""
        users = self.root_users
        await self._between_read_and_write(self.racy_root)
        if not self.racy_root:
            users = self.root_users
        self.root_users = users + delta
        if self.root_users > 0 and self.root is None:
            self.root = self.memory.alloc_pages(0)
            if self.root is None:
                self.root_users -= delta
                raise avcm.NoMemoryError("shared unit: no page for the root table")
        elif self.root_users <= 0 and self.root is not None:
            self.memory.free_pages(self.root, 0)
            self.root = None

    async def give_table(self, table: int) -> None:
        spare = self.spare
        await self._between_read_and_write(self.racy_give)
        self.tables.pop(table, None)
        if spare is None:
            self.spare = table
        else:
            self.memory.free_pages(table, 0)

    async def power(self, delta: int) -> None:
        if self.early_enable:
            self.users += delta
            if not self.users:
                self.powered = False
            elif delta > 0 and self.users == 1:
                await self.latency.sleep("enable", self)  # the power-up sequence
                self.powered = self.users > 0
            return
        if self.late_power_down:
            self.users += delta
            if self.users == 1 and delta > 0:  # the first user powers it up
                self.powered = True
            elif not self.users:
                await self.latency.sleep("enable", self)  # the power-down sequence
                self.powered = False
            return
        if self.lazy_power_down or self.watchdog:  # powered down later, in the background
            self.users += delta
            self.changes += 1
            if not self.users:
                self.idle_since = anyio.current_time()
            if self.users == 1 and delta > 0:
                self.powered = True
                if self.watchdog and not self.watching:
                    self.watching = True
                    in_background(self._watch_power)
            elif not self.users and self.lazy_power_down:
                in_background(partial(self._power_down_later, self.changes))
                for delay in (1e-6, 2e-6, 3e-6, 4e-6, 5e-6) if self.noisy else ():
                    in_background(partial(anyio.sleep, delay))
            return
        users = self.users
        await self._between_read_and_write(self.racy_power)
        if not self.racy_power:
            users = self.users
        self.users = users + delta
        self.powered = self.users > 0

    async def _power_down_later(self, changes: int) -> None:
        for _ in range(LATE_ARMING_STEPS if self.late_armed else 0):
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(LAZY_POWER_DOWN)
        if self.noisy and self.changes != changes:
            return  # (a later switch-off started a timer of its own)
        if not self.users:  # looked at once, acted on after the sequence
            await anyio.sleep(LAZY_POWER_DOWN_SEQUENCE)
            self.powered = False

    async def _watch_power(self) -> None:
        while True:
            await anyio.sleep(GRACE_TICK if self.grace_power_down else POWER_POLL)
            if not self.users and (
                not self.grace_power_down or anyio.current_time() - self.idle_since >= GRACE
            ):
                await anyio.sleep(LAZY_POWER_DOWN_SEQUENCE)
                # (polled_power_down: looked at once, acted on after the sequence)
                if self.polled_power_down or self.grace_power_down or not self.users:
                    self.powered = self.watching = False
                    return

    ROOT_MAGIC = b"rootpage"

    def join(self) -> int:
        """A context of the unit was made: its stream id, the lowest free. With
        ``early_root_free`` the first one makes the unit's root table, in the memory, where each
        walk reads it."""
        if self.banks is not None and self.ports >= self.banks:
            raise OSError(errno.ENODEV, f"shared unit: all {self.banks} context banks in use")
        if self.wrapping_stream_ids:
            stream = self.streams_given % 4
            self.streams_given += 1
        else:
            stream = min(set(range(len(self.streams) + 1)) - self.streams)
        self.streams.add(stream)
        self.ports += 1
        if self.early_root_free and self.ports == 1:  # (again after every context left)
            self.root_page = self.memory.alloc_pages(0)
            if self.root_page is None:
                raise avcm.NoMemoryError("shared unit: no page for the root table")
            self.memory.write(self.root_page, self.ROOT_MAGIC)
            self.root_freed = False
        return stream

    def stream_bit(self, stream: int) -> int:
        """*stream*'s bit in the stream register (``narrow_stream_ids``: ids 0 and 1 only)."""
        return 1 << (stream % 2 if self.narrow_stream_ids else stream)

    def walk_root(self, addr: int) -> None:
        """Read the root table on the way to *addr*'s entry (``early_root_free`` only)."""
        root = self.root_page
        if root is not None and self.memory.read(root, len(self.ROOT_MAGIC)) != self.ROOT_MAGIC:
            raise drivers.IommuFault(f"unit port: root table gone on the way to {addr:#x}")

    def release(self, stream: int) -> None:
        """A context of the unit, holding *stream*, was destroyed; the last one gives the
        spare back."""
        self.streams.discard(stream)
        if not self.stale_stream_reuse:
            for key in [key for key in self.walks if key[0] == stream]:
                del self.walks[key]
        self.ports -= 1
        if self.early_root_free and not self.root_freed and self.root_page is not None:
            # the bug: the first context destroyed frees the root, which the last one should
            # (a new first one makes it again), and the unit goes on with the pointer
            self.memory.free_pages(self.root_page, 0)
            self.root_freed = True
        if not self.ports and self.spare is not None:
            self.memory.free_pages(self.spare, 0)
            self.spare = None
        if not self.ports and self.root is not None:  # a count that drifted up
            self.memory.free_pages(self.root, 0)
            self.root = None


class UnitPort:
    """One context's view of a :class:`SharedUnit`: its own directory of page-table pages
    (2 MiB of device addresses each) and its own enable bit, behind the unit's power."""

    orders = (8, 4, 0)
    REGION = 2 << 20

    def __init__(self, unit: SharedUnit) -> None:
        self.unit = unit
        self.stream = unit.join()
        self.enabled = False
        self.directory: dict[int, int] = {}  # region -> page-table page
        self.spares: list[int] = []  # private_stale_walk: the tables it gave back
        self.used: dict[int, int] = {}  # region -> entries this context wrote there
        self.last_cleared: list[int] | None = None  # the entry it cleared last (stale_clear)

    async def enable(self, vcm: avcm.Vcm) -> None:
        await self.unit.latency.sleep("enable", self)
        await self.unit.power(+1)
        self.enabled = True
        self.unit.stream_bits |= self.unit.stream_bit(self.stream)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await self.unit.latency.sleep("flush", self)
        await self.unit.power(-1)
        self.enabled = False
        self.unit.stream_bits &= ~self.unit.stream_bit(self.stream)
        if self.unit.stale_clear and self.last_cleared is not None:
            self.last_cleared[2] = 0  # invalid

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await self.unit.latency.sleep("pte_write", self)
        region = vaddr // self.REGION
        table = self.directory.get(region)
        if table is None:
            table = self.spares.pop() if self.spares else await self.unit.take_table()
            self.directory[region] = table
        entry = self.unit.free_entries.pop() if self.unit.free_entries else [0, 0, 0]
        entry[:] = paddr, order, 1
        self.unit.tables.setdefault(table, {})[vaddr % self.REGION] = entry
        self.used[region] = self.used.get(region, 0) + 1
        if self.unit.racy_root:  # the only flag whose unit keeps a root table
            await self.unit.use_root(+1)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await self.unit.latency.sleep("pte_clear", self)
        region = vaddr // self.REGION
        table = self.directory[region]
        entry = self.unit.tables.get(table, {}).pop(vaddr % self.REGION, None)
        if entry is not None:
            self.unit.free_entries.append(entry)
            self.last_cleared = entry
        self.used[region] -= 1
        if not self.used[region] and not self.unit.keeps_tables:
            del self.used[region], self.directory[region]
            if not self.unit.stale_walk:
                self.unit.walks.pop((self.stream, region), None)
            if self.unit.private_spares:
                self.unit.tables[table] = {}
                self.spares.append(table)
            else:
                await self.unit.give_table(table)
        if self.unit.racy_root:
            await self.unit.use_root(-1)

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        if self.unit.keeps_tables:  # every table it used, given back only now
            for table in self.directory.values():
                await self.unit.give_table(table)
            self.directory.clear()
        for table in self.spares:
            del self.unit.tables[table]
            self.unit.memory.free_pages(table, 0)
        self.spares.clear()
        self.unit.release(self.stream)

    def _entries(self) -> list[tuple[int, int, int]]:
        return [
            (region * self.REGION + index, paddr, order)
            for region, table in self.directory.items()
            for index, (paddr, order, valid) in self.unit.tables.get(table, {}).items()
            if valid
        ]

    def _translating(self) -> bool:
        unit = self.unit
        return (
            self.enabled and unit.powered and bool(unit.stream_bits & unit.stream_bit(self.stream))
        )

    def hardware_active(self) -> bool:
        if self.unit.power_as_active:
            return self.unit.powered
        return self._translating()

    def hardware_mappings(self) -> list[tuple[int, int, int]]:
        return [(vaddr, paddr, avcm.PAGE_SIZE << order) for vaddr, paddr, order in self._entries()]

    def _translate(self, addr: int) -> int:
        if self.unit.racy_root and self.unit.root is None:
            raise drivers.IommuFault(f"unit port: no root table for {addr:#x}")
        self.unit.walk_root(addr)
        if self._translating():
            region, offset = divmod(addr, self.REGION)
            walks, key = self.unit.walks, (self.stream, region)
            table = walks.get(key, self.directory.get(region))
            if table is not None and self.unit.caches_walks:
                walks[key] = table
            for index, (paddr, order, valid) in self.unit.tables.get(table, {}).items():
                if valid and index <= offset < index + (avcm.PAGE_SIZE << order):
                    return paddr + offset - index
        raise drivers.IommuFault(f"unit port: device access at {addr:#x} faulted")

    def _pieces(self, addr: int, length: int) -> list[tuple[int, int]]:
        """(physical address, length) of an access, page by page, all translated first."""
        pieces = []
        while length:
            chunk = min(length, avcm.PAGE_SIZE - addr % avcm.PAGE_SIZE)
            pieces.append((self._translate(addr), chunk))
            addr += chunk
            length -= chunk
        return pieces

    def read(self, addr: int, length: int) -> bytes:
        return b"".join(self.unit.memory.read(p, n) for p, n in self._pieces(addr, length))

    def write(self, addr: int, data: bytes) -> None:
        offset = 0
        for physical, chunk in self._pieces(addr, len(data)):
            self.unit.memory.write(physical, data[offset : offset + chunk])
            offset += chunk


_UNITS: weakref.WeakKeyDictionary[avcm.PhysicalMemory, dict[str, SharedUnit]] = (
    weakref.WeakKeyDictionary()
)


def _unit_context(
    memory: avcm.PhysicalMemory, flag: str | None, banks: int | None = None
) -> avcm.Vcm:
    """A context on the one unit of *memory* (per flag and number of context banks: each
    variant is a unit of its own)."""
    units = _UNITS.setdefault(memory, {})
    key = f"{flag or 'correct'}{'' if banks is None else f'-{banks}-banks'}"
    if key not in units:
        units[key] = SharedUnit(memory, banks=banks, **({flag: True} if flag else {}))
    return avcm.mmu_init(0x1000_0000, 1 << 30, UnitPort(units[key]), memory=memory, name=key)


def shared_unit(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: contexts sharing one unit, each read-modify-write done without a yield."""
    return _unit_context(memory, None)


def shared_unit_racy_take(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "racy_take")


def shared_unit_racy_give(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "racy_give")


def shared_unit_racy_power(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "racy_power")


def shared_unit_early_enable(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "early_enable")


def shared_unit_late_power_down(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "late_power_down")


def shared_unit_lazy_power_down(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "lazy_power_down")


def shared_unit_noisy_lazy_power_down(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "noisy_lazy_power_down")


def shared_unit_late_armed_power_down(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "late_armed_power_down")


def shared_unit_watchdog(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: a unit powered down by a watchdog task that looks again after the power-down
    sequence."""
    return _unit_context(memory, "watchdog")


def shared_unit_polled_power_down(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "polled_power_down")


def shared_unit_grace_power_down(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "grace_power_down")


def shared_unit_racy_root(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "racy_root")


def shared_unit_power_as_active(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "power_as_active")


def shared_unit_leaky_zeroing(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "leaky_zeroing")


def shared_unit_early_root_free(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "early_root_free")


def shared_unit_stale_clear(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "stale_clear")


def shared_unit_stale_walk(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "stale_walk")


def shared_unit_narrow_stream_ids(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "narrow_stream_ids")


def shared_unit_private_stale_walk(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "private_stale_walk")


def shared_unit_wrapping_stream_ids(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "wrapping_stream_ids")


def shared_unit_stale_stream_reuse(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _unit_context(memory, "stale_stream_reuse")


def shared_unit_four_banks(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: a unit that serves four contexts at once, and refuses a fifth."""
    return _unit_context(memory, None, banks=4)


def shared_unit_one_bank(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: a unit that serves one context at a time."""
    return _unit_context(memory, None, banks=1)


def shared_unit_wrapping_stream_ids_four_banks(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Stream ids from a count that wraps at four, on a unit with four context banks: no five
    contexts live at once, but one made after a destroy gets a live one's id."""
    return _unit_context(memory, "wrapping_stream_ids", banks=4)


def shared_unit_walk_cache(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: a walk cache tagged by stream id; each context keeps its tables till its
    destroy, which gives them back with its stream, flushing the stream's walks."""
    return _unit_context(memory, "walk_cache")


class AliasingPageTable(drivers.PageTableMmu):
    """A two-level walk whose first-level index is masked to 6 bits: 64 second-level tables of
    2 MiB, 128 MiB, in a 1 GiB space. Device addresses 128 MiB apart share a second-level table,
    so a device reaches, at one, what the other maps at the same offset (or faults once the
    other's table went). Its bookkeeping (``hardware_mappings``) is right: only a device access
    far enough from the others shows it."""

    TABLE = 2 << 20

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="aliasing")
        self.tables: dict[int, dict[int, tuple[int, int]]] = {}  # slot -> {offset: (pa, size)}

    def _slot(self, vaddr: int) -> int:
        return (vaddr // self.TABLE) & 63

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().activate_page(vaddr, paddr, order, vcm)
        table = self.tables.setdefault(self._slot(vaddr), {})
        table[vaddr % self.TABLE] = (paddr, avcm.PAGE_SIZE << order)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        slot = self._slot(vaddr)
        table = self.tables.get(slot, {})
        table.pop(vaddr % self.TABLE, None)
        if not table:
            self.tables.pop(slot, None)

    def translate(self, addr: int) -> int:
        table = self.tables.get(self._slot(addr)) if self.enabled else None
        if table is not None:
            offset = addr % self.TABLE
            for size in self._sizes:
                entry = table.get(offset & -size)
                if entry is not None and entry[1] == size:
                    return entry[0] + offset % size
        raise drivers.IommuFault(f"{self.name}: device access at {addr:#x} faulted")


def aliasing(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, AliasingPageTable(memory), memory=memory)


class BurstPageTable(drivers.PageTableMmu):
    """A device that moves each access in one burst: it translates the first byte only and
    goes on in physical memory. Right within a page; across a page boundary the rest lands
    after the first page's memory, not in the next page's (another part of a scattered
    phys). Its page table and bookkeeping are right."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="burst")

    def read(self, addr: int, length: int) -> bytes:
        return self.memory.read(self.translate(addr), length)

    def write(self, addr: int, data: bytes) -> None:
        self.memory.write(self.translate(addr), bytes(data))


def burst_device(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, BurstPageTable(memory), memory=memory)


class LostOffsetBitPageTable(drivers.PageTableMmu):
    """A device whose offset arithmetic inside a 64 KiB page loses bit 10 (a mask typo): an
    access starting in the second quarter of a 4 KiB page within a 64 KiB page lands a KiB
    lower. A whole page accessed from its first byte goes right; its table and bookkeeping are
    right."""

    MEDIUM = 64 << 10

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="lost_bit")

    def translate(self, addr: int) -> int:
        physical = super().translate(addr)
        entry = self._entries.get(addr & -self.MEDIUM)
        if entry is not None and entry[2] == self.MEDIUM:
            return physical & ~(1 << 10)
        return physical


def lost_offset_bit(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, LostOffsetBitPageTable(memory), memory=memory)


class ThirdLargePageTable(drivers.PageTableMmu):
    """Its 1 MiB entries count, in a 2-bit field, the run of 1 MiB pages they continue (device
    address and memory both a page on from the entry before), which overflows: from the third
    page of a run on, an entry reaches the memory of the run's first page. Only a phys of three
    1 MiB pages or more meets it; its bookkeeping is right."""

    LARGE = 1 << 20

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="third_large")

    def translate(self, addr: int) -> int:
        physical = super().translate(addr)
        entry = self._entries.get(addr & -self.LARGE)
        if entry is None or entry[2] != self.LARGE:
            return physical
        vaddr, first_paddr, _ = entry
        first = vaddr
        while self._entries.get(first - self.LARGE) == (
            first - self.LARGE,
            first_paddr - self.LARGE,
            self.LARGE,
        ):
            first, first_paddr = first - self.LARGE, first_paddr - self.LARGE
        if vaddr - first >= 2 * self.LARGE:
            return first_paddr + (addr - vaddr)
        return physical


def third_large_page(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, ThirdLargePageTable(memory), memory=memory)


class LowHolePageTable(drivers.PageTableMmu):
    """A two-level walk that takes a first-level index of 0 for "no table": a device access
    in the lowest 2 MiB of the address space faults, though the pages are in the table and in
    its bookkeeping. The address allocator fills a space from the top: only a run whose
    reservations reach its bottom shows it."""

    BASE = 0x1000_0000

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="low_hole")

    def translate(self, addr: int) -> int:
        if (addr - self.BASE) >> 21 == 0:
            raise drivers.IommuFault(f"{self.name}: device access at {addr:#x} faulted")
        return super().translate(addr)


def low_hole(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(LowHolePageTable.BASE, 1 << 30, LowHolePageTable(memory), memory=memory)


class SelfWalkingMmu:
    """A per-reservation MMU driver (``activate(res, phys)``) that splits the phys into pages
    itself, over the sample page tables; its hardware keeps only the bits of a page's
    physical address above the page size. Correct with no flag; broken with one:

    * ``contiguous``: it maps the phys as if it were one run from its first part, so every
      part after the first is mapped at the wrong memory unless the parts happen to follow
      one another;
    * ``vaddr_alignment``: it picks each page's size from the device address alignment only,
      so a part not aligned to that size in physical memory is mapped at the aligned-down
      address;
    * ``short_tail``: it takes a large page for what is left of a part when that is at most a
      page short of one ("nearly fits"), so a part ending a page before a 64 KiB or 1 MiB
      boundary maps a page past its end;
    * ``forgets_under_pressure``: it keeps the walks of the last 32 reservations it mapped
      and, for one it no longer has, unmaps 4 KiB pages only, so a large page of a reservation
      unmapped after 32 others were mapped stays in the hardware;
    * ``by_whats_left``: it picks each page's size by what is left of the phys, not of the
      part, so a part shorter than a large page that starts on a boundary of one, with more
      of the phys after it, is mapped with a large page over memory that is not the phys's;
    * ``cancel_unsafe``: its activate undoes the pages it mapped when a page write fails, but
      not when it is cancelled, so a cancellation after its first page leaves pages mapped.
      It waits for the hardware itself before each page write (``anyio.sleep``: no sync point
      of avcm's inside its call, as in a driver written outside the project), so only a
      cancellation that comes some time into the call lands after its first page;
    * ``no_undo_on_failure``: its hardware now and then does not acknowledge a page write (one
      in :data:`FLAKY_WRITES`: the driver's own EIO, not one avcm or a test injects), and its
      activate then returns the error without undoing the pages it mapped before it.

    With ``flaky`` alone it is not broken: the same hardware, every failure undone.
    """

    orders = (8, 4, 0)

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        *,
        contiguous: bool = False,
        vaddr_alignment: bool = False,
        short_tail: bool = False,
        forgets_under_pressure: bool = False,
        by_whats_left: bool = False,
        cancel_unsafe: bool = False,
        flaky: bool = False,
        no_undo_on_failure: bool = False,
    ) -> None:
        own_wait = drivers.Latency.profile("zero") if cancel_unsafe else None
        self.tables = drivers.PageTableMmu(
            memory, orders=self.orders, latency=own_wait, name="self-walking"
        )
        # its hardware's own failures: drawn by the driver, raised as its own error
        self.unacknowledged = random.Random(3) if flaky or no_undo_on_failure else None
        self.page_write_wait = 2e-6 if cancel_unsafe else 0.0
        self.undo_on_cancel, self.undo_on_failure = not cancel_unsafe, not no_undo_on_failure
        self.contiguous, self.vaddr_alignment = contiguous, vaddr_alignment
        self.short_tail, self.by_whats_left = short_tail, by_whats_left
        # reservation start -> its pages, the most recently mapped last (forgets_under_pressure)
        self.walks: collections.OrderedDict[int, list[tuple[int, int, int]]] | None = (
            collections.OrderedDict() if forgets_under_pressure else None
        )

    def pages(self, res: avcm.Res, phys: avcm.Phys) -> list[tuple[int, int, int]]:
        if not (self.contiguous or self.vaddr_alignment or self.short_tail or self.by_whats_left):
            return avcm.lowlevel.walk_pages(res.start, phys, self.orders)
        short = avcm.PAGE_SIZE if self.short_tail else 0
        pages = []
        vaddr = res.start
        past = 0  # how far the last large page reached past its part (by_whats_left)
        for start, size in phys.parts:
            end = start + size
            start += past
            if self.contiguous:
                start = phys.parts[0].start + (vaddr - res.start)
            while start < end:
                room = res.start + phys.size - vaddr if self.by_whats_left else end - start
                order = next(
                    order
                    for order in self.orders
                    if (vaddr | (0 if self.vaddr_alignment else start)) % (avcm.PAGE_SIZE << order)
                    == 0
                    and room >= (avcm.PAGE_SIZE << order) - (short if order else 0)
                )
                pages.append((vaddr, start, order))
                vaddr += avcm.PAGE_SIZE << order
                start += avcm.PAGE_SIZE << order
            past = max(0, start - end)
        return pages

    async def enable(self, vcm: avcm.Vcm) -> None:
        await self.tables.enable(vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await self.tables.disable(vcm)

    async def activate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        done: list[tuple[int, int, int]] = []
        if self.walks is not None:
            self.walks[res.start] = self.pages(res, phys)
            self.walks.move_to_end(res.start)
            while len(self.walks) > 32:
                self.walks.popitem(last=False)
        try:
            for vaddr, paddr, order in self.pages(res, phys):
                paddr &= ~((avcm.PAGE_SIZE << order) - 1)  # the bits the hardware keeps
                if self.page_write_wait:
                    await anyio.sleep(self.page_write_wait)
                if self.unacknowledged and self.unacknowledged.random() < 1 / FLAKY_WRITES:
                    raise avcm.VcmError(
                        errno.EIO, f"self-walking: page write at {vaddr:#x} not acknowledged"
                    )
                await self.tables.activate_page(vaddr, paddr, order, res.vcm)
                done.append((vaddr, paddr, order))
        except BaseException as error:
            cancelled = isinstance(error, anyio.get_cancelled_exc_class())
            if self.undo_on_cancel if cancelled else self.undo_on_failure:
                with anyio.CancelScope(shield=True):
                    for page in reversed(done):
                        await self.tables.deactivate_page(*page, res.vcm)
            raise

    async def deactivate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        if self.walks is not None and self.walks.pop(res.start, None) is None:
            # the bug: walked again with 4 KiB pages only, clearing the entries it finds
            mapped = set(self.tables.hardware_mappings())
            for page in avcm.lowlevel.walk_pages(res.start, phys, (0,)):
                if page in mapped:
                    await self.tables.deactivate_page(*page, res.vcm)
            return
        for vaddr, paddr, order in self.pages(res, phys):
            paddr &= ~((avcm.PAGE_SIZE << order) - 1)
            await self.tables.deactivate_page(vaddr, paddr, order, res.vcm)

    def hardware_active(self) -> bool:
        return self.tables.hardware_active()

    def hardware_mappings(self) -> list[tuple[int, int, int]]:
        return self.tables.hardware_mappings()

    def read(self, addr: int, length: int) -> bytes:
        return self.tables.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.tables.write(addr, data)


def _self_walking(memory: avcm.PhysicalMemory, **broken: bool) -> avcm.Vcm:
    driver = SelfWalkingMmu(memory, **broken)
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory)


def self_walking(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: the per-reservation driver with the right walk."""
    return _self_walking(memory)


def self_walking_contiguous(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, contiguous=True)


def self_walking_vaddr_alignment(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, vaddr_alignment=True)


def self_walking_forgetful(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, forgets_under_pressure=True)


def self_walking_short_tail(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, short_tail=True)


def self_walking_by_whats_left(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, by_whats_left=True)


def self_walking_cancel_unsafe(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, cancel_unsafe=True)


def self_walking_flaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: page writes the hardware now and then does not acknowledge, each failed
    activate undone."""
    return _self_walking(memory, flaky=True)


def self_walking_no_undo_on_failure(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _self_walking(memory, no_undo_on_failure=True)


# memory -> [region start, contexts using it]
_BOARD_REGIONS: weakref.WeakKeyDictionary[avcm.PhysicalMemory, list[int]] = (
    weakref.WeakKeyDictionary()
)


class BoardCarveout:
    """A one-to-one driver for a carve-out fixed by the board: every context made on one
    memory uses the same region (taken from the memory by the first, given back by the last).
    Broken: each context allocates in the region with an allocator of its own, so two
    contexts hand out the same memory."""

    SIZE = 4 << 20

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        self.memory = memory
        region = _BOARD_REGIONS.get(memory)
        if region is None:
            start = memory.alloc_pages(10)
            if start is None:
                raise avcm.NoMemoryError("board carve-out: no region")
            region = _BOARD_REGIONS[memory] = [start, 0]
        region[1] += 1
        self.region = region
        self.space = avcm.lowlevel.AddressSpace(region[0], self.SIZE)  # one per context: the bug
        self.closed = False

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        await anyio.sleep(1e-6)
        try:
            part.start = self.space.allocate(part.size, avcm.PAGE_SIZE)
        except avcm.NoSpaceError:
            raise avcm.NoMemoryError("board carve-out: full") from None
        return None

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        self.space.free(part.start, part.size)
        self._release()

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        self.closed = True
        self._release()

    def _release(self) -> None:
        if self.closed and self.space.is_pristine():
            self.closed = False
            self.region[1] -= 1
            if not self.region[1]:
                self.memory.free_pages(self.region[0], 10)
                del _BOARD_REGIONS[self.memory]


def board_carveout(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = BoardCarveout(memory)
    return avcm.o2o_init(driver.region[0], driver.SIZE, driver, memory=memory, name="board")


class LeakyCarveout(drivers.CarveoutAllocator):
    """Its free forgets every fourth block: pages leak."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, 16 << 20, name="leaky")
        self.frees = 0

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        self.frees += 1
        if self.frees % 4:
            await super().free(part, token)


class LateScrubCarveout(drivers.CarveoutAllocator):
    """Scrubs a freed block (zeroes its first 64 bytes) only after it gave the block back to
    its allocator, past an await: an allocation made meanwhile gets the block, and the scrub
    lands in its memory. The block never goes back to physical memory (the carve-out keeps
    it), so page poisoning cannot see the write."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, 16 << 20, name="late-scrub")

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        await super().free(part, token)
        await self.latency.sleep("alloc", self)  # the scrub engine starts...
        self.memory.write(part.start, bytes(min(part.size, 64)))  # ...and writes


class FirstFitCarveout(drivers.CarveoutAllocator):
    """A carve-out allocated first fit from a list of holes, lowest first; every fourth
    allocation is aligned to 64 KiB (a device with an alignment constraint). If *pads*
    (correct), a hole fits when the block fits after the padding its alignment takes; else
    when the block fits from the hole's start, and an aligned block found so overruns the
    hole into the allocation after it, once frees left holes that start off a 64 KiB
    boundary."""

    def __init__(self, memory: avcm.PhysicalMemory, *, pads: bool) -> None:
        super().__init__(memory, 16 << 20, name="first-fit")
        self.pads = pads
        self.holes = [(self.start, self.start + self.size)]  # (start, end), by start
        self.live: dict[int, int] = {}  # start -> size
        self.allocations = 0
        self.cleaned = False

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        await self.latency.sleep("alloc", self)
        self.allocations += 1
        alignment = 64 * 1024 if self.allocations % 4 == 0 else avcm.PAGE_SIZE
        for index, (start, end) in enumerate(self.holes):
            aligned = -(-start // alignment) * alignment
            if (aligned if self.pads else start) + part.size > end:
                continue
            block_end = aligned + part.size
            rest = [(start, aligned)] if aligned > start else []
            if block_end < end:
                rest.append((block_end, end))
            self.holes[index : index + 1] = rest
            self.live[aligned] = part.size
            part.start = aligned
            return aligned
        raise avcm.NoMemoryError(f"first-fit: no hole of {part.size:#x} bytes")

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        await self.latency.sleep("free", self)
        size = self.live.pop(part.start)
        holes = sorted([*self.holes, (part.start, part.start + size)])
        merged: list[tuple[int, int]] = []
        for start, end in holes:
            if merged and merged[-1][1] >= start:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.holes = merged
        if self.cleaned and not self.live:
            self._release_region()

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        self.cleaned = True
        if not self.live:
            self._release_region()


def _o2o(allocator: drivers.CarveoutAllocator, memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.o2o_init(
        allocator.start, allocator.size, allocator, memory=memory, name=allocator.name
    )


def check_then_act(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(CheckThenActCarveout(memory), memory)


def overlapping(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(OverlappingCarveout(memory), memory)


def first_fit_unpadded(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """An aligned block placed in a hole that fits it only unaligned overruns the hole."""
    return _o2o(FirstFitCarveout(memory, pads=False), memory)


def first_fit_padded(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: a hole fits an aligned block only with its padding counted."""
    return _o2o(FirstFitCarveout(memory, pads=True), memory)


def late_scrub(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(LateScrubCarveout(memory), memory)


def leaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _o2o(LeakyCarveout(memory), memory)


def forgetful(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, ForgetfulPageTable(memory), memory=memory)


def grouped_timeout(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, GroupedTimeoutPageTable(memory), memory=memory)


def late_edge(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, LateEdgePageTable(memory), memory=memory)


def hidden_middle(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, HiddenMiddlePageTable(memory), memory=memory)


def late_writeback(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, LateWritebackPageTable(memory), memory=memory)


def read_only_again(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, ReadOnlyAgainPageTable(memory), memory=memory)


def stale_iotlb(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, StaleIotlbPageTable(memory), memory=memory)


class FlakyForgetfulPageTable(drivers.PageTableMmu):
    """Its page clears and switch-offs fail, one in 20, having done nothing (rule 8: a
    correct driver may do so); and one page removal in 31 forgets its entry, a stale
    translation left in the hardware (the bug). Under ``--faults``, undos whose clears fail
    come long before the bug shows: nothing is judged after each till the harness starts over,
    and the bug must still be found in what is judged."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="flaky-forgetful")
        self.failures = random.Random(7)
        self.removals = 0

    def _nack(self, what: str) -> None:
        if self.failures.random() < 0.05:
            raise OSError(errno.EIO, f"{what}: bus error")

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._nack("deactivate_page")
        self.removals += 1
        if self.removals % 31 == 0:
            return
        await super().deactivate_page(vaddr, paddr, order, vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        self._nack("disable")
        await super().disable(vcm)


def flaky_forgetful(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, FlakyForgetfulPageTable(memory), memory=memory)


def wrapping_tlb(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, WrappingTlbPageTable(memory), memory=memory)


def _coalescing_tlb(memory: avcm.PhysicalMemory, **options: Any) -> avcm.Vcm:
    return _in_a_gib(CoalescingTlbPageTable(memory, **options))


def coalescing_tlb(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _coalescing_tlb(memory, unfolds="never")


def coalescing_tlb_ends(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Runs of four, each dropped only when its first or last page goes."""
    return _coalescing_tlb(memory, run=4, unfolds="ends")


def coalescing_tlb_untagged(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """One TLB for every context on the memory, its runs not tagged with a context."""
    return _coalescing_tlb(memory, shared="untagged")


def coalescing_tlb_tagged(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: one TLB for every context on the memory, each run tagged with its context and
    dropped with any entry of it."""
    return _coalescing_tlb(memory, shared="tagged")


def _in_a_gib(hardware: drivers.PageTableMmu) -> avcm.Vcm:
    """A context of *hardware* over a GiB of device addresses, on its memory."""
    return avcm.mmu_init(0x1000_0000, 1 << 30, hardware, memory=hardware.memory)


def prefetching_tlb(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A fetch ahead in flight lands after the unmap of its page."""
    return _in_a_gib(PrefetchingTlbPageTable(memory, cancels=False))


def prefetching_tlb_cancelled(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: an unmap cancels a fetch ahead in flight for its pages."""
    return _in_a_gib(PrefetchingTlbPageTable(memory, cancels=True))


def invalidate_before_clear(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A read beside a page being unmapped caches it again between invalidation and clear."""
    return _in_a_gib(AroundMissTlbPageTable(memory, clear_first=False))


def invalidate_before_clear_ahead(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """As :func:`invalidate_before_clear`, a miss caching the page after it only."""
    return _in_a_gib(AroundMissTlbPageTable(memory, clear_first=False, sides=(1,)))


def invalidate_before_clear_block(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """As :func:`invalidate_before_clear`, a miss caching its whole 64 KiB block."""
    return _in_a_gib(BlockFillTlbPageTable(memory, clear_first=False))


def clear_before_invalidate_block(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: :func:`invalidate_before_clear_block` clearing before it invalidates."""
    return _in_a_gib(BlockFillTlbPageTable(memory, clear_first=True))


def invalidate_before_clear_stride(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """As :func:`invalidate_before_clear`, the TLB filled by a stride prefetcher only."""
    return _in_a_gib(StrideFillTlbPageTable(memory, clear_first=False))


def clear_before_invalidate_stride(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: :func:`invalidate_before_clear_stride` clearing before it invalidates."""
    return _in_a_gib(StrideFillTlbPageTable(memory, clear_first=True))


def clear_before_invalidate(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: the page's entry is cleared before its translations are invalidated."""
    return _in_a_gib(AroundMissTlbPageTable(memory, clear_first=True))


def burst_next_tlb(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A burst from the page below an unmapped one reaches its old memory."""
    return _in_a_gib(BurstNextTlbPageTable(memory, drops_next=False))


def burst_next_tlb_dropped(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: an unmap drops the page below's copy of its first page's translation."""
    return _in_a_gib(BurstNextTlbPageTable(memory, drops_next=True))


def long_access_cache(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A long access reaches an unmapped page's old memory through the device's own cache."""
    return _in_a_gib(LongAccessCachePageTable(memory, invalidates=False))


def long_access_cache_invalidated(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: an unmap invalidates the device's cache for long accesses."""
    return _in_a_gib(LongAccessCachePageTable(memory, invalidates=True))


def short_window(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, ShortWindowPageTable(memory), memory=memory)


def stale_write_walk(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, StaleWriteWalkPageTable(memory), memory=memory)


def correct_iommu(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: the sample IOMMU, as a third-party driver author would hand it in."""
    return drivers.create_iommu(memory, name="third-party")


def not_a_context(memory: avcm.PhysicalMemory) -> object:
    return "not a context"


_ONE: list[tuple[avcm.PhysicalMemory, avcm.Vcm]] = []  # what same_context gave last


def same_context(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A factory that hands out one context again and again (the harness builds two)."""
    if not _ONE or _ONE[0][0] is not memory:
        _ONE[:] = [(memory, drivers.create_iommu(memory))]
    return _ONE[0][1]


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


STALLING_WRITE = 300  # the page write (or removal) of _Stalling that never ends


class _Stalling(drivers.PageTableMmu):
    """Its 300th page write (*teardown*: page removal) never ends, in one of these ways:

    * ``"lost"``: it waits for the unit's completion interrupt, which is lost (a lost
      wake-up: a deadlock, every task ends up waiting behind it);
    * ``"spin"``: it polls a status bit that never comes up, with a checkpoint between reads
      (a livelock: the loop runs, nothing ends);
    * ``"clock"``: so does it, reading the clock at each poll (to time out, but never does):
      the virtual clock's spin rule moves time for it, and still nothing ends;
    * ``"block"``: it waits for the bit without awaiting (the event loop's thread blocks);
    * ``"busy"``: it polls the bit without awaiting (the event loop's thread spins);
    * ``"executor"``: it waits in a worker thread that never returns (asyncio's default
      executor, which Python joins at exit; trio's worker threads on trio).

    A page removal is a teardown call, which avcm runs shielded: no cancellation reaches it.
    """

    def __init__(self, memory: avcm.PhysicalMemory, how: str, teardown: bool) -> None:
        super().__init__(memory, orders=(8, 4, 0), name=f"stalling-{how}")
        self.how, self.teardown = how, teardown
        self.writes = 0
        self.status_ready = False  # the bit a write waits for: it never comes up

    async def _write(self) -> None:
        self.writes += 1
        if self.writes != STALLING_WRITE:
            return
        if self.how == "lost":
            await anyio.Event().wait()
        elif self.how == "spin":
            while not self.status_ready:
                await anyio.lowlevel.checkpoint()
        elif self.how == "clock":
            while not self.status_ready and anyio.current_time() < math.inf:
                await anyio.lowlevel.checkpoint()
        elif self.how == "busy":
            while not self.status_ready:
                pass
        elif self.how == "executor":
            never = threading.Event()
            if sniffio.current_async_library() == "asyncio":
                await asyncio.get_running_loop().run_in_executor(None, never.wait)
            else:
                await anyio.to_thread.run_sync(never.wait, abandon_on_cancel=True)
        else:
            threading.Event().wait()

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().activate_page(vaddr, paddr, order, vcm)
        if not self.teardown:
            await self._write()

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().deactivate_page(vaddr, paddr, order, vcm)
        if self.teardown:
            await self._write()


_NACKS = random.Random(2)


class _NackingLeaky(drivers.PageTableMmu):
    """Loses a page at every switch-on (a leak), and fails one page write in three with a plain
    ``OSError(EIO)`` (rule 8): the leak shows also in attempts whose setup the driver failed,
    before any race."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="nacking-leaky")

    async def enable(self, vcm: avcm.Vcm) -> None:
        await super().enable(vcm)
        self.memory.alloc_pages(0)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if _NACKS.random() < 1 / 3:
            raise OSError(errno.EIO, "activate_page: NACKed by the unit")
        await super().activate_page(vaddr, paddr, order, vcm)


def nacking_leaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _NackingLeaky(memory), memory=memory)


def _stalling(how: str, teardown: bool) -> Callable[[avcm.PhysicalMemory], avcm.Vcm]:
    def factory(memory: avcm.PhysicalMemory) -> avcm.Vcm:
        return avcm.mmu_init(0x1000_0000, 1 << 30, _Stalling(memory, how, teardown), memory=memory)

    return factory


lost_interrupt = _stalling("lost", teardown=False)
lost_interrupt_in_teardown = _stalling("lost", teardown=True)
spinning = _stalling("spin", teardown=False)
spinning_in_teardown = _stalling("spin", teardown=True)
spinning_on_the_clock = _stalling("clock", teardown=False)
blocking = _stalling("block", teardown=False)
busy_in_teardown = _stalling("busy", teardown=True)
executor_hang = _stalling("executor", teardown=False)


def blocking_factory(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A factory that never returns: it waits for hardware that never answers, blocking."""
    threading.Event().wait()
    raise AssertionError("unreachable")


class ClearedOnDemand:
    """A one-to-one allocator that takes each part's memory from the physical memory when
    asked (a pool like CMA's), clears it, and records it. Broken: it records the block only
    after the clear, an await: cancelled there, the block is never given back. Cancelled
    before it took the block (at its first await), nothing leaks. The clear takes a
    microsecond of a call of 200: a cancellation by time rarely lands in it."""

    CLEAR_SECONDS = 1e-6
    COMMAND_SECONDS = 200e-6

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        self.memory = memory
        self.blocks: dict[int, int] = {}

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        await anyio.sleep(self.COMMAND_SECONDS)  # the pool's command
        order = max(0, (part.size - 1).bit_length() - avcm.PAGE_SHIFT)
        start = self.memory.alloc_pages(order)
        if start is None:
            raise avcm.NoMemoryError("cleared on demand: no free block")
        await anyio.sleep(self.CLEAR_SECONDS)  # clearing it, not yet recorded: the bug
        self.blocks[start] = order
        part.start = start
        return start

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        self.memory.free_pages(part.start, self.blocks.pop(part.start))

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        pass


def cleared_on_demand(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = ClearedOnDemand(memory)
    return avcm.o2o_init(memory.base, memory.size, driver, memory=memory, name="on-demand")


class _LeftOnWhenRefusing(drivers.PageTableMmu):
    """Refuses 4 KiB pages with ``EINVAL``, having mapped nothing of them (rule 8 allows it),
    but the disable that undoes the switch-on a refusal failed leaves the unit on: a context
    off is active (attack44: the harness's switch-on again at once, with what was bound
    since shed, hid it till a later refusal)."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="left-on")
        self._refused = False

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if order == 0:
            self._refused = True
            raise avcm.InvalidError(f"{self.name}: no 4 KiB pages")
        await super().activate_page(vaddr, paddr, order, vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        if self._refused:
            self._refused = False
            return
        await super().disable(vcm)


def left_on_when_refusing(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _LeftOnWhenRefusing(memory), memory=memory)
