"""The virtual address allocator of an MMU context, O(log n) per operation.

The patch used a ``gen_pool`` bitmap, a linear scan. Here free extents are kept twice: by start
(to merge a freed range with its neighbours) and by (size, start) (to find the best fit). An
aligned allocation looks at a few of the smallest extents that are large enough; if none can
hold it once aligned, it takes the smallest extent of ``size + alignment - PAGE_SIZE``, which
always can. Either way the cost is a few O(log n) steps, whatever the number of live ranges.
"""

from __future__ import annotations

from sortedcontainers import SortedDict, SortedList

from ._errors import InvalidError, NoSpaceError
from ._memory import PAGE_SIZE

__all__ = ["AddressSpace"]

_BEST_FIT_CANDIDATES = 8


class AddressSpace:
    """Allocates aligned, non-overlapping ranges of ``start..start+size``."""

    def __init__(self, start: int, size: int) -> None:
        if (
            not isinstance(start, int)
            or not isinstance(size, int)
            or start < 0
            or size <= 0
            or (start | size) & (PAGE_SIZE - 1)
        ):
            raise InvalidError(
                f"address space {start!r}+{size!r}: must be page aligned, size positive"
            )
        self.start = start
        self.size = size
        self._by_start = SortedDict({start: size})  # free extent start -> size
        self._by_size = SortedList([(size, start)])
        self._live: dict[int, int] = {}  # allocated start -> size
        self._free_bytes = size

    def __repr__(self) -> str:
        return (
            f"<AddressSpace {self.start:#x}+{self.size:#x} live={len(self._live)} "
            f"free={self._free_bytes:#x}>"
        )

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def live(self) -> int:
        return len(self._live)

    def is_pristine(self) -> bool:
        """Every byte free, as one extent: nothing reserved, nothing lost."""
        return not self._live and list(self._by_start.items()) == [(self.start, self.size)]

    def _take(self, extent: int, extent_size: int, start: int, size: int) -> None:
        del self._by_start[extent]
        self._by_size.remove((extent_size, extent))
        if start > extent:
            self._add_free(extent, start - extent)
        end, extent_end = start + size, extent + extent_size
        if extent_end > end:
            self._add_free(end, extent_end - end)

    def _add_free(self, start: int, size: int) -> None:
        self._by_start[start] = size
        self._by_size.add((size, start))

    def allocate(self, size: int, alignment: int = PAGE_SIZE) -> int:
        """Reserve *size* bytes at an address aligned to *alignment*; return the address.

        ``ENOSPC`` when no free extent can hold it; ``EINVAL`` for a size that is not a positive
        multiple of a page or an alignment that is not a power of two of at least a page.
        """
        if not isinstance(size, int) or size <= 0 or size & (PAGE_SIZE - 1):
            raise InvalidError(f"address space: size {size!r} is not a positive page multiple")
        if not isinstance(alignment, int) or alignment < PAGE_SIZE or alignment & (alignment - 1):
            raise InvalidError(f"address space: alignment {alignment!r} is not a power of two")
        mask = alignment - 1
        start: int
        index = self._by_size.bisect_left((size, -1))
        for extent_size, extent in self._by_size.islice(index, index + _BEST_FIT_CANDIDATES):
            start = (extent + mask) & ~mask
            if start + size <= extent + extent_size:
                self._take(extent, extent_size, start, size)
                break
        else:
            index = self._by_size.bisect_left((size + alignment - PAGE_SIZE, -1))
            if index == len(self._by_size):
                raise NoSpaceError(
                    f"address space {self.start:#x}+{self.size:#x}: no room for {size:#x} "
                    f"bytes aligned to {alignment:#x} ({self._free_bytes:#x} bytes free)"
                )
            extent_size, extent = self._by_size[index]
            start = (extent + mask) & ~mask
            self._take(extent, extent_size, start, size)
        self._live[start] = size
        self._free_bytes -= size
        return start

    def free(self, start: int, size: int) -> None:
        """Give back a range exactly as allocated, merging it with free neighbours.

        Anything else raises ``EINVAL`` and changes nothing.
        """
        if self._live.get(start) != size:
            raise InvalidError(f"address space: free of {start:#x}+{size:#x}: no such allocation")
        del self._live[start]
        self._free_bytes += size
        index = self._by_start.bisect_left(start)
        if index:  # merge with the extent before
            before, before_size = self._by_start.peekitem(index - 1)
            if before + before_size == start:
                del self._by_start[before]
                self._by_size.remove((before_size, before))
                start, size = before, before_size + size
        after_size = self._by_start.get(start + size)
        if after_size is not None:  # and with the one after
            del self._by_start[start + size]
            self._by_size.remove((after_size, start + size))
            size += after_size
        self._add_free(start, size)
