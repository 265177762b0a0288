"""A page-table MMU, simulated: the hardware behind the sample IOMMU and the CPU context.

It implements the MMU wrapper's per-page driver interface (``enable``/``disable``,
``activate_page``/``deactivate_page``) over a table of entries ``vaddr -> (paddr, order)``, and
the device side: :meth:`PageTableMmu.translate` and reads and writes through the translation
into the simulated physical memory. Each operation checks its fault plan first, then takes its
latency, then writes the table in one synchronous step: cancelled or failed, it did nothing.
An entry that overlaps another, is misaligned, or is removed while absent is a framework bug;
it raises ``EINVAL`` so the stress harness sees it.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import avcm
from avcm import PAGE_SHIFT, PAGE_SIZE
from avcm.lowlevel import check_orders, resolve_memory

from ._faults import FaultPlan
from ._latency import Latency
from ._options import driver_options

__all__ = ["IommuFault", "PageTableMmu", "PageTableStatistics"]


class IommuFault(avcm.VcmError):
    """``EFAULT``: a device access the MMU could not translate."""

    default_errno = errno.EFAULT


@dataclass(frozen=True, slots=True)
class PageTableStatistics:
    """A snapshot of a :class:`PageTableMmu`."""

    name: str
    enabled: bool
    entries_per_order: dict[int, int]
    activations: int
    pte_writes: int
    pte_clears: int
    flushes: int
    faults: int


class PageTableMmu:
    """Page tables for pages of ``orders``; ``translate``, ``read`` and ``write`` are the device.

    Device accesses are synchronous (no latency): one access sees one consistent table.
    """

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        *,
        orders: Sequence[int],
        latency: Latency | None = None,
        faults: FaultPlan | None = None,
        name: str = "mmu",
    ) -> None:
        # validated here, as mmu_init will: EINVAL, not a TypeError from tuple(None)
        self.latency, self.faults, self.name = driver_options(latency, faults, name, "mmu")
        self.orders = check_orders(orders, f"{name} orders")
        self.memory = resolve_memory(memory, name)
        # vaddr -> (vaddr, paddr, size), as hardware_mappings shows it: a page is aligned to
        # its size, so the entry covering an address starts at that address rounded down to
        # one of the orders' sizes
        self._entries: dict[int, tuple[int, int, int]] = {}
        self._sizes = tuple(PAGE_SIZE << order for order in self.orders)
        # order -> {vaddr >> (PAGE_SHIFT + order): how many entries start in that block}, for
        # each order but 0: whether a large page would cover an entry already there. A table
        # per order, keyed by ints: a page's activation updates every one of them.
        self._starts_in: dict[int, dict[int, int]] = {order: {} for order in self.orders[:-1]}
        self._block_shifts = tuple(
            (starts, PAGE_SHIFT + order) for order, starts in self._starts_in.items()
        )
        self._per_order: Counter[int] = Counter()
        self._mappings: list[tuple[int, int, int]] | None = None  # sorted, until a change
        self.enabled = False
        self._activations = self._pte_writes = self._pte_clears = 0
        self._flushes = self._faults = 0

    def __repr__(self) -> str:
        return f"<PageTableMmu {self.name} entries={len(self._entries)} enabled={self.enabled}>"

    # -- the MMU wrapper's driver interface ----------------------------------------------------

    async def enable(self, vcm: avcm.Vcm) -> None:
        self.faults.check("enable", self.name)
        await self.latency.sleep("enable", self)
        self.enabled = True
        self._activations += 1

    async def disable(self, vcm: avcm.Vcm) -> None:
        self.faults.check("disable", self.name)
        await self.latency.sleep("flush", self)
        self.enabled = False
        self._flushes += 1

    def _covering(self, vaddr: int) -> tuple[int, int, int] | None:
        """The entry whose page contains *vaddr*, as (vaddr, paddr, size)."""
        entries = self._entries
        for size in self._sizes:
            entry = entries.get(vaddr & -size)
            if entry is not None and entry[2] == size:
                return entry
        return None

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self.faults.check("pte_write", self.name)
        await self.latency.sleep("pte_write", self)
        size = PAGE_SIZE << order
        if order not in self.orders or (vaddr | paddr) & (size - 1):
            raise avcm.InvalidError(
                f"{self.name}: page {vaddr:#x} -> {paddr:#x} of order {order} is misaligned "
                f"or not a supported size"
            )
        starts_in = self._starts_in.get(order)  # none for order 0: no entry starts inside
        if self._covering(vaddr) is not None or (
            starts_in is not None and vaddr >> (PAGE_SHIFT + order) in starts_in
        ):
            raise avcm.InvalidError(f"{self.name}: page {vaddr:#x}+{size:#x} overlaps an entry")
        self._entries[vaddr] = (vaddr, paddr, size)
        self._mappings = None
        for starts, shift in self._block_shifts:
            block = vaddr >> shift
            starts[block] = starts.get(block, 0) + 1
        self._per_order[order] += 1
        self._pte_writes += 1

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self.faults.check("pte_clear", self.name)
        await self.latency.sleep("pte_clear", self)
        if self._entries.get(vaddr) != (vaddr, paddr, PAGE_SIZE << order):
            raise avcm.InvalidError(
                f"{self.name}: no entry {vaddr:#x} -> {paddr:#x} of order {order} to remove"
            )
        del self._entries[vaddr]
        self._mappings = None
        for starts, shift in self._block_shifts:
            block = vaddr >> shift
            left = starts[block] - 1
            if left:
                starts[block] = left
            else:
                del starts[block]
        self._per_order[order] -= 1
        self._pte_clears += 1

    # -- the device ----------------------------------------------------------------------------

    def _check_int(self, value: object, what: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise avcm.InvalidError(
                f"{self.name}: {what} must be an int, not {type(value).__name__}"
            )

    def translate(self, addr: int) -> int:
        """The physical address the device reaches at *addr*; ``IommuFault`` if none."""
        if type(addr) is not int:  # the check's message: only then
            self._check_int(addr, "device address")
        entry = self._covering(addr) if self.enabled else None
        if entry is None:
            self._faults += 1
            state = "no entry" if self.enabled else "translation disabled"
            raise IommuFault(f"{self.name}: device access at {addr:#x} faulted ({state})")
        start, paddr, _ = entry
        return paddr + (addr - start)

    def _chunks(self, addr: int, length: int) -> list[tuple[int, int]]:
        """(physical address, length) pieces of a device access, page by page, all translated
        before any is used."""
        if (
            type(addr) is int
            and type(length) is int
            and 0 < length <= PAGE_SIZE - (addr & (PAGE_SIZE - 1))
        ):
            return [(self.translate(addr), length)]  # within one page: most accesses
        self._check_int(addr, "device address")
        self._check_int(length, "access length")
        if length < 0:
            raise avcm.InvalidError(f"{self.name}: access length {length} is negative")
        chunks = []
        while length:
            physical = self.translate(addr)
            chunk = min(length, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            chunks.append((physical, chunk))
            addr += chunk
            length -= chunk
        return chunks

    def read(self, addr: int, length: int) -> bytes:
        """Device read of *length* bytes at device address *addr*, through the translation."""
        if (
            type(addr) is int
            and type(length) is int
            and 0 < length <= PAGE_SIZE - (addr & (PAGE_SIZE - 1))
        ):  # within one page: most accesses (what _chunks does, without its list)
            return self.memory.read(self.translate(addr), length)
        chunks = self._chunks(addr, length)
        if len(chunks) == 1:
            return self.memory.read(*chunks[0])
        return b"".join(self.memory.read(p, n) for p, n in chunks)

    def write(self, addr: int, data: bytes) -> None:
        """Device write at *addr*; all of it is translated before any byte is written."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise avcm.InvalidError(
                f"{self.name}: write data must be bytes-like, not {type(data).__name__}"
            )
        offset = 0
        for physical, chunk in self._chunks(addr, len(data)):
            self.memory.write(physical, data[offset : offset + chunk])
            offset += chunk

    # -- introspection -------------------------------------------------------------------------

    def hardware_active(self) -> bool:
        return self.enabled

    def hardware_mappings(self) -> list[tuple[int, int, int]]:
        # sorted once per change of the table: the checks read it at every quiescent point
        if self._mappings is None:
            entries = self._entries
            # the addresses: sorting ints is quicker than the triples
            self._mappings = list(map(entries.__getitem__, sorted(entries)))
        return list(self._mappings)

    def statistics(self) -> PageTableStatistics:
        return PageTableStatistics(
            name=self.name,
            enabled=self.enabled,
            entries_per_order={o: n for o, n in sorted(self._per_order.items()) if n},
            activations=self._activations,
            pte_writes=self._pte_writes,
            pte_clears=self._pte_clears,
            flushes=self._flushes,
            faults=self._faults,
        )
