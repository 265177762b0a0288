"""Simulated physical memory: a buddy page allocator over lazily backed bytes.

A :class:`PhysicalMemory` is a range of RAM (``base``, ``size``) handed out in naturally aligned
blocks of ``PAGE_SIZE << order`` bytes, as Linux's buddy allocator does: a free block is split in
halves until the order wanted is reached, and a freed block merges with its free buddy again.
Bytes are backed per 4 KiB page on first write, so 256 MiB costs nothing until used; a freed
block's pages are dropped, so freed memory reads as zeros and "all freed" is exactly "as new".
The largest blocks are made on demand too (a run of untouched ones is two numbers), so a memory
of any size up to the 64-bit limit costs the same to make.

Threads: one :class:`PhysicalMemory` may be shared by event loops in several threads; a lock
makes each of its methods one indivisible step.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import InvalidError

__all__ = ["ADDRESS_LIMIT", "PAGE_SHIFT", "PAGE_SIZE", "MemoryStatistics", "PhysicalMemory"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ADDRESS_LIMIT = 1 << 64
MAX_READ = 256 << 20
"""The most one :meth:`PhysicalMemory.read` returns: a read makes its bytes, and a memory may be
far larger than the process could hold (its pages are made only when written)."""
"""Addresses are 64 bits: every range (memory, phys part, context, reservation) ends by here."""


@dataclass(frozen=True, slots=True)
class MemoryStatistics:
    """A snapshot of a :class:`PhysicalMemory`."""

    base: int
    size: int
    free_bytes: int
    allocated_blocks: int
    backed_pages: int
    free_blocks_per_order: tuple[int, ...]
    free_pages_written: int
    """Pages written while free, since the memory was made: each a write after free, which the
    kernel's page poisoning finds (a device reaching memory through a stale translation, or a
    driver's late write). Correct code never writes free memory."""
    first_free_write: int | None
    """The address of the first such write, or ``None``."""


class _FreeBlocks(set[int]):
    """The starts of the free blocks of one order, the lowest one always at hand: the set says
    which are free, a heap which is lowest; a start no longer free stays in the heap until it
    comes up (then it is dropped), so taking or freeing a block costs no shifting of a sorted
    list. A set itself, so that the allocator's tests of membership and emptiness (several per
    block taken or freed) are the set's own, not calls of Python methods; :meth:`add` is
    the one way in (it keeps the heap)."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[int] = []

    def add(self, start: int) -> None:
        if start not in self:
            set.add(self, start)
            heap = self._heap
            if len(heap) > 2 * len(self) + 64:  # mostly starts no longer free: afresh
                heap[:] = sorted(self)  # a sorted list is a heap
            else:
                heapq.heappush(heap, start)

    def lowest(self) -> int:
        """The lowest start (there must be one)."""
        heap = self._heap
        while heap[0] not in self:
            heapq.heappop(heap)
        return heap[0]

    def pop_lowest(self) -> int:
        """Take the lowest start out (there must be one)."""
        heap = self._heap
        start = heapq.heappop(heap)
        while start not in self:  # no longer free: dropped, as lowest does
            start = heapq.heappop(heap)
        self.remove(start)
        return start


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidError(f"physical memory: {what} must be an int, not {type(value).__name__}")
    return value


class PhysicalMemory:
    """Simulated RAM of *size* bytes at *base*, with a buddy allocator of orders 0..max_order.

    *base* and *size* must be page aligned and *size* positive; *max_order* is 8 to 20 (1 MiB to
    4 GiB blocks). The range need not be a multiple of the largest block: it is covered with the
    largest naturally aligned blocks that fit, as Linux frees memblock ranges into the buddy.

    Raises:
        InvalidError: ``EINVAL``: a base or size not page aligned, a size that is not positive or
            that goes past 64-bit addresses, or *max_order* outside 8..20.
    """

    def __init__(self, base: int = 0x8000_0000, size: int = 256 << 20, max_order: int = 10):
        base = _check_int(base, "base")
        size = _check_int(size, "size")
        max_order = _check_int(max_order, "max_order")
        if base < 0 or size <= 0 or (base | size) & (PAGE_SIZE - 1):
            raise InvalidError(
                f"physical memory: base {base:#x} and size {size:#x} must be page aligned, "
                "size positive"
            )
        if base + size > ADDRESS_LIMIT:
            raise InvalidError(
                f"physical memory: {base:#x}+{size:#x} does not fit in 64-bit addresses"
            )
        if not 8 <= max_order <= 20:
            raise InvalidError(f"physical memory: max_order {max_order} is not in 8..20")
        self.base = base
        self.size = size
        self.max_order = max_order
        self._lock = threading.Lock()
        # free[order]: starts of free blocks, sorted, so the lowest address is always taken.
        # The largest order also has the untouched run top_low..top_high of its blocks, which
        # are made only when taken: memory of 2**60 bytes would need 2**38 entries otherwise.
        self._free = [_FreeBlocks() for _ in range(max_order + 1)]
        self._allocated: dict[int, int] = {}  # start -> order
        self._pages: dict[int, bytearray] = {}  # page number -> backing bytes
        self._free_pages_written = 0
        self._first_free_write: int | None = None
        top = PAGE_SIZE << max_order
        end = base + size
        run_low = -(-base // top) * top
        run_high = run_low + max(0, (end - run_low) // top) * top
        if run_high <= run_low:  # no block of the largest order fits: it all is head
            run_low = run_high = end
        self._top_low, self._top_high = run_low, run_high
        self._free_bytes = run_high - run_low
        self._add_range(base, run_low)
        self._add_range(run_high, end)
        self._pristine = self._shape()

    def _add_range(self, address: int, end: int) -> None:
        """Free *address..end* in the largest naturally aligned blocks that fit (below the
        largest order: the run of those is kept apart)."""
        while address < end:
            order = self.max_order
            while order and (
                address & ((PAGE_SIZE << order) - 1) or address + (PAGE_SIZE << order) > end
            ):
                order -= 1
            self._free[order].add(address)
            self._free_bytes += PAGE_SIZE << order
            address += PAGE_SIZE << order

    def __repr__(self) -> str:
        return (
            f"<PhysicalMemory {self.base:#x}+{self.size:#x} "
            f"free={self._free_bytes:#x} max_order={self.max_order}>"
        )

    def _shape(self) -> tuple[object, ...]:
        return (*(tuple(sorted(blocks)) for blocks in self._free), self._top_low, self._top_high)

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    def _check_order(self, order: object) -> int:
        order = _check_int(order, "order")
        if not 0 <= order <= self.max_order:
            raise InvalidError(f"physical memory: order {order} is not in 0..{self.max_order}")
        return order

    def alloc_pages(self, order: int) -> int | None:
        """Allocate one block of ``PAGE_SIZE << order`` bytes aligned to its size.

        Returns its start, or ``None`` when no block of that order can be had. Takes the
        lowest-address block of the smallest sufficient order: deterministic.
        """
        starts = self._alloc_run(self._check_order(order), 1)
        return starts[0] if starts else None

    def _alloc_run(self, order: int, count: int) -> list[int]:
        """:meth:`alloc_pages` of a checked *order* *count* times, up to the first that gets
        nothing, in one step: the starts, in the order taken (:func:`avcm.phys_alloc` takes a
        MiB of 4 KiB pages for a context of such pages, 256 calls of their own otherwise)."""
        starts: list[int] = []
        free = self._free
        max_order = self.max_order
        allocated = self._allocated
        with self._lock:
            for _ in range(count):
                for found in range(order, max_order):
                    blocks = free[found]
                    if blocks:
                        start = blocks.pop_lowest()
                        break
                else:
                    found = max_order
                    taken = self._take_top()
                    if taken is None:
                        break
                    start = taken
                while found > order:  # split, keeping the lower half
                    found -= 1
                    free[found].add(start + (PAGE_SIZE << found))
                allocated[start] = order
                starts.append(start)
            self._free_bytes -= len(starts) * (PAGE_SIZE << order)
        return starts

    def _take_top(self) -> int | None:
        """The lowest free block of the largest order, made from the untouched run if that
        is lower."""
        made = self._free[self.max_order]
        if self._top_low < self._top_high and (not made or self._top_low < made.lowest()):
            start = self._top_low
            self._top_low += PAGE_SIZE << self.max_order
            return start
        return made.pop_lowest() if made else None

    def _give_top(self, start: int) -> None:
        """Free a block of the largest order; one just below the untouched run joins it, so
        all freed is exactly the shape of new."""
        top = PAGE_SIZE << self.max_order
        made = self._free[self.max_order]
        if start + top != self._top_low:
            made.add(start)
            return
        self._top_low = start
        while self._top_low - top in made:
            made.remove(self._top_low - top)
            self._top_low -= top

    def free_pages(self, start: int, order: int) -> None:
        """Free a block allocated with exactly this *start* and *order*, merging buddies.

        Anything else (double free, wrong order, a foreign address) raises ``EINVAL`` and changes
        nothing.
        """
        start = _check_int(start, "start")
        order = self._check_order(order)
        with self._lock:
            self._release(start, order)

    def _free_run(self, blocks: Iterable[tuple[int, int]]) -> None:
        """:meth:`free_pages` of each ``(start, size)`` block in turn (sizes of whole orders,
        starts ints: a phys's parts), in one step; up to the first that raises."""
        with self._lock:
            for start, size in blocks:
                self._release(start, size.bit_length() - 1 - PAGE_SHIFT)

    def _release(self, start: int, order: int) -> None:
        """The body of :meth:`free_pages`, the lock held."""
        if self._allocated.get(start) != order:
            raise InvalidError(
                f"physical memory: free of {start:#x} order {order}: no such allocated block"
            )
        del self._allocated[start]
        self._free_bytes += PAGE_SIZE << order
        pages = self._pages
        if pages:  # only pages written since their block was allocated are backed
            first = (start - self.base) >> PAGE_SHIFT
            end = first + (1 << order)
            if end - first <= len(pages):
                for page in range(first, end):
                    pages.pop(page, None)
            else:  # a large block, few pages backed in all
                for page in [page for page in pages if first <= page < end]:
                    del pages[page]
        free = self._free
        while order < self.max_order:
            buddy = start ^ (PAGE_SIZE << order)
            blocks = free[order]
            if buddy not in blocks:
                blocks.add(start)
                return
            blocks.remove(buddy)
            start &= ~(PAGE_SIZE << order)  # the lower of the two
            order += 1
        self._give_top(start)

    def _span(self, addr: int, length: int, what: str) -> None:
        if type(addr) is not int or type(length) is not int:  # the checks' messages: only then
            _check_int(addr, f"{what} address")
            _check_int(length, f"{what} length")
        if length < 0 or addr < self.base or addr + length > self.base + self.size:
            raise InvalidError(
                f"physical memory: {what} of {length:#x} bytes at {addr:#x} is outside "
                f"{self.base:#x}..{self.base + self.size:#x}"
            )

    def read(self, addr: int, length: int) -> bytes:
        """Read bytes at a physical address; never-written bytes read as zero.

        Raises:
            InvalidError: ``EINVAL``: the range is not inside the memory, or is longer than
                256 MiB (read a larger range in parts).
        """
        if type(addr) is int and type(length) is int:
            offset = addr - self.base
            within = offset & (PAGE_SIZE - 1)
            # within one page of the memory: most reads (a device's, a probe's)
            if offset >= 0 and 0 <= length <= PAGE_SIZE - within and offset + length <= self.size:
                with self._lock:
                    backing = self._pages.get(offset >> PAGE_SHIFT)
                    return bytes(
                        backing[within : within + length] if backing is not None else length
                    )
        self._span(addr, length, "read")
        if length > MAX_READ:
            raise InvalidError(
                f"physical memory: a read of {length:#x} bytes is more than one read returns "
                f"({MAX_READ:#x}); read it in parts"
            )
        offset = addr - self.base
        out = bytearray()
        with self._lock:
            while length:
                page, within = divmod(offset, PAGE_SIZE)
                chunk = min(length, PAGE_SIZE - within)
                backing = self._pages.get(page)
                out += backing[within : within + chunk] if backing is not None else bytes(chunk)
                offset += chunk
                length -= chunk
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes at a physical address, backing pages on first write."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidError(
                f"physical memory: write data must be bytes-like, not {type(data).__name__}"
            )
        length = len(data)
        if type(addr) is int:
            offset = addr - self.base
            within = offset & (PAGE_SIZE - 1)
            # within one page of the memory: most writes (a device's, a probe's)
            if offset >= 0 and 0 < length <= PAGE_SIZE - within and offset + length <= self.size:
                with self._lock:
                    self._backing(offset >> PAGE_SHIFT, offset)[within : within + length] = data
                return
        self._span(addr, length, "write")
        offset = addr - self.base
        view = memoryview(data)
        with self._lock:
            while view:
                page, within = divmod(offset, PAGE_SIZE)
                chunk = min(len(view), PAGE_SIZE - within)
                self._backing(page, offset)[within : within + chunk] = view[:chunk]
                offset += chunk
                view = view[chunk:]

    def _backing(self, page: int, offset: int) -> bytearray:
        """The bytes of page number *page*, backed now if they were not (the lock held): a
        page is backed from its first write until its block is freed, so a write that backs a
        page of no allocated block is a write after free (at *offset*, which is counted)."""
        backing = self._pages.get(page)
        if backing is None:
            if not self._allocated_page(page):
                self._free_pages_written += 1
                if self._first_free_write is None:
                    self._first_free_write = self.base + offset
            backing = self._pages[page] = bytearray(PAGE_SIZE)
        return backing

    def _allocated_page(self, page: int) -> bool:
        """Whether page number *page* is in an allocated block (blocks are aligned to their
        size, so its block of each order starts at the page rounded down to that size)."""
        address = self.base + (page << PAGE_SHIFT)
        allocated = self._allocated
        for order in range(self.max_order + 1):
            if allocated.get(address & -(PAGE_SIZE << order)) == order:
                return True
        return False

    def statistics(self) -> MemoryStatistics:
        with self._lock:
            per_order = [len(blocks) for blocks in self._free]
            per_order[-1] += (self._top_high - self._top_low) >> (PAGE_SHIFT + self.max_order)
            return MemoryStatistics(
                base=self.base,
                size=self.size,
                free_bytes=self._free_bytes,
                allocated_blocks=len(self._allocated),
                backed_pages=len(self._pages),
                free_blocks_per_order=tuple(per_order),
                free_pages_written=self._free_pages_written,
                first_free_write=self._first_free_write,
            )

    def is_pristine(self) -> bool:
        """Whether everything is free, fully merged and unbacked: exactly as new."""
        with self._lock:
            return not self._allocated and not self._pages and self._shape() == self._pristine
