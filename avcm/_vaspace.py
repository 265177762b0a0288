"""The virtual address allocator of an MMU context, O(log n) per operation.

The patch used a ``gen_pool`` bitmap, a linear scan. Here free extents are kept in one sorted
list by (size, start), to find the best fit, and in two plain dicts by start and by end, to find
a freed range's neighbours in O(1). An aligned allocation looks at a few of the smallest extents
that are large enough; if none can hold it once aligned, it takes the smallest extent of
``size + alignment - PAGE_SIZE``, which always can. Either way the cost is a few O(log n) steps,
whatever the number of live ranges.

Only when both fail (no extent that large, and the few smallest do not fit once aligned) does it
look at the remaining extents of at least ``size`` bytes one by one, as the bitmap would: O(k)
for k such extents. That is the price of never answering ``ENOSPC`` while an aligned hole exists;
it is paid only when the space is nearly exhausted for that size, including by an allocation
that really fails.
"""

from __future__ import annotations

from collections.abc import Iterable

from sortedcontainers import SortedList

from ._errors import InvalidError, NoSpaceError
from ._memory import ADDRESS_LIMIT, PAGE_SIZE

__all__ = ["AddressSpace"]

_BEST_FIT_CANDIDATES = 8
_SHIFT = 64
_LOW = (1 << _SHIFT) - 1


class AddressSpace:
    """Allocates aligned, non-overlapping ranges of ``start..start+size``."""

    def __init__(self, start: int, size: int) -> None:
        if (
            not isinstance(start, int)
            or not isinstance(size, int)
            or start < 0
            or size <= 0
            or (start | size) & (PAGE_SIZE - 1)
            or start + size > ADDRESS_LIMIT
        ):
            raise InvalidError(
                f"address space {start!r}+{size!r}: must be page aligned, size positive, "
                "inside 64-bit addresses"
            )
        self.start = start
        self.size = size
        self._by_start: dict[int, int] = {}  # free extent start -> size
        self._by_end: dict[int, int] = {}  # free extent end -> start
        # size << 64 | start: one int compares faster than a (size, start) tuple
        self._by_size = SortedList()
        self._live: dict[int, int] = {}  # allocated start -> size
        self._free_bytes = size
        self._add_free(start, size)

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
        return not self._live and self._by_start == {self.start: self.size}

    def _add_free(self, start: int, size: int) -> None:
        self._by_start[start] = size
        self._by_end[start + size] = start
        self._by_size.add(size << _SHIFT | start)

    def _remove_free(self, start: int, size: int) -> None:
        del self._by_start[start]
        del self._by_end[start + size]
        self._by_size.remove(size << _SHIFT | start)

    def allocate(self, size: int, alignment: int = PAGE_SIZE) -> int:
        """Reserve *size* bytes at an address aligned to *alignment*; return the address.

        Best fit: the smallest free extent that can hold it, the allocation at its top.
        ``ENOSPC`` when no free extent can hold it; ``EINVAL`` for a size that is not a positive
        multiple of a page or an alignment that is not a power of two of at least a page.
        """
        if not isinstance(size, int) or size <= 0 or size & (PAGE_SIZE - 1):
            raise InvalidError(f"address space: size {size!r} is not a positive page multiple")
        if not isinstance(alignment, int) or alignment < PAGE_SIZE or alignment & (alignment - 1):
            raise InvalidError(f"address space: alignment {alignment!r} is not a power of two")
        mask = alignment - 1
        by_size = self._by_size
        index = by_size.bisect_left(size << _SHIFT)
        fit = _first_fit(by_size.islice(index, index + _BEST_FIT_CANDIDATES), size, mask)
        if fit is None:
            # Any extent of size + alignment - PAGE_SIZE holds it, whatever its alignment.
            sure = by_size.bisect_left((size + alignment - PAGE_SIZE) << _SHIFT)
            if sure < len(by_size):
                fit = _first_fit(by_size.islice(sure, sure + 1), size, mask)
            else:
                # The slow path: the rest of the extents that are large enough but might not
                # hold it once aligned, one by one (all smaller than size + alignment).
                rest = by_size.islice(index + _BEST_FIT_CANDIDATES, sure)
                fit = _first_fit(rest, size, mask)
        if fit is None:
            raise NoSpaceError(
                f"address space {self.start:#x}+{self.size:#x}: no room for {size:#x} "
                f"bytes aligned to {alignment:#x} ({self._free_bytes:#x} bytes free)"
            )
        extent, extent_size, start = fit
        self._remove_free(extent, extent_size)
        if start > extent:
            self._add_free(extent, start - extent)
        end, extent_end = start + size, extent + extent_size
        if extent_end > end:
            self._add_free(end, extent_end - end)
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
        after_size = self._by_start.get(start + size)
        if after_size is not None:
            self._remove_free(start + size, after_size)
            size += after_size
        before = self._by_end.get(start)
        if before is not None:
            self._remove_free(before, start - before)
            size += start - before
            start = before
        self._add_free(start, size)


def _first_fit(keys: Iterable[int], size: int, mask: int) -> tuple[int, int, int] | None:
    """The first of these free extents (``size << 64 | start`` keys) that holds *size* bytes
    at an address aligned by *mask*: ``(extent start, extent size, address)``, at its top."""
    for key in keys:
        extent_size, extent = key >> _SHIFT, key & _LOW
        start: int = (extent + extent_size - size) & ~mask
        if start >= extent:
            return extent, extent_size, start
    return None
