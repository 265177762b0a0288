"""The virtual address allocator of an MMU context: O(log n) per operation, worst case.

The patch used a ``gen_pool`` bitmap, a linear scan; Linux's IOVA allocator walks a tree of
the allocated ranges from a cached node, which is quick in steady state and walks every node at
worst. Here everything is in sorted lists, which never pause (a dict's growth rehashes every
entry at once, an O(n) pause in one operation):

- the allocated ranges, by address: a free checks its range there, and the free extents
  around it are the gaps to its neighbours, merged with it;
- the free extents, for each alignment in use, by how many bytes each holds from its first
  address at that alignment (its *usable* length; extents that hold not a page at that
  alignment are left out). An allocation of *size* bytes at alignment *A* is one search of
  *A*'s list for the smallest usable length of at least *size*: best fit, whatever the
  extents' own alignments, and never ``ENOSPC`` while an aligned hole exists.

Each free extent is in the list of every alignment it holds a page at. Changes to a list wait
in a small dict until the list is read, where a change and its undoing cancel out: a range
allocated and freed again at the same place costs no sorted-list operation (a few dozen at most
wait, so a read stays O(log n)). An alignment's list is made when it is first asked for, from
every free extent: give the alignments a space will use when it is made (an MMU context gives
its page sizes), or that first allocation costs O(n) once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sortedcontainers import SortedList

from ._errors import InvalidError, NoSpaceError
from ._memory import ADDRESS_LIMIT, PAGE_SIZE

__all__ = ["AddressSpace"]

# one int per extent compares faster than a tuple: high << 64 | low
_SHIFT = 64
_LOW = (1 << _SHIFT) - 1


def _is_alignment(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= PAGE_SIZE
        and not value & (value - 1)
    )


class AddressSpace:
    """Allocates aligned, non-overlapping ranges of ``start..start+size``.

    *alignments*: the alignments (powers of two, at least a page) allocations will ask for
    besides a page, indexed from the start so that the first allocation at each is as quick as
    the others; any other alignment may be asked for too.
    """

    def __init__(self, start: int, size: int, *, alignments: Iterable[int] = ()) -> None:
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
        try:
            wanted = list(alignments)
        except TypeError:
            raise InvalidError(f"address space: alignments {alignments!r} are not ints") from None
        for alignment in wanted:
            if not _is_alignment(alignment):
                raise InvalidError(
                    f"address space: alignment {alignment!r} is not a power of two of at "
                    "least a page"
                )
        self.start = start
        self.size = size
        # free extents by size (their usable length at a page): size << 64 | start
        self._by_size = _Deferred()
        # alignment above a page -> the free extents that hold a page or more at it
        # (see _usable_key)
        self._usable: dict[int, _Deferred] = {PAGE_SIZE: self._by_size}
        self._aligned: list[tuple[int, _Deferred]] = []
        for alignment in wanted:
            if alignment not in self._usable:
                self._usable[alignment] = usable = _Deferred()
                self._aligned.append((alignment, usable))
        self._live = _Deferred()  # allocated ranges: start << 64 | size
        self._live_count = 0
        self._free_bytes = size
        self._add_free(start, start + size)

    def __repr__(self) -> str:
        return (
            f"<AddressSpace {self.start:#x}+{self.size:#x} live={self._live_count} "
            f"free={self._free_bytes:#x}>"
        )

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def live(self) -> int:
        return self._live_count

    def is_pristine(self) -> bool:
        """Every byte free, as one extent: nothing reserved, nothing lost."""
        return not self._live_count and list(self._by_size.read()) == [
            self.size << _SHIFT | self.start
        ]

    def _add_free(self, start: int, end: int) -> None:
        self._index_free(start, end, _Deferred.add)

    def _remove_free(self, start: int, end: int) -> None:
        self._index_free(start, end, _Deferred.remove)

    def _index_free(self, start: int, end: int, change: Callable[[SortedList, int], None]) -> None:
        """Add the free extent *start..end* to every list it belongs in, or remove it."""
        change(self._by_size, end - start << _SHIFT | start)
        for alignment, usable in self._aligned:
            key = _usable_key(alignment, start, end)
            if key is not None:
                change(usable, key)

    def _usable_at(self, alignment: int) -> SortedList:
        usable: _Deferred | None = self._usable.get(alignment)
        if usable is None:
            # not asked for before: O(n) once, then kept up to date as the others
            usable = _Deferred()
            for key in self._by_size.read():
                start = key & _LOW
                aligned_key = _usable_key(alignment, start, start + (key >> _SHIFT))
                if aligned_key is not None:
                    usable.add(aligned_key)
            self._usable[alignment] = usable
            self._aligned.append((alignment, usable))
        return usable.read()

    def allocate(self, size: int, alignment: int = PAGE_SIZE) -> int:
        """Reserve *size* bytes at an address aligned to *alignment*; return the address.

        Best fit: of the free extents that can hold it aligned, the one that holds the fewest
        bytes at that alignment, then the smallest, then the lowest; the allocation at its
        top. ``ENOSPC`` when no free extent can hold it; ``EINVAL`` for a size that is not a
        positive multiple of a page or an alignment that is not a power of two of at least a
        page.
        """
        if not isinstance(size, int) or size <= 0 or size & (PAGE_SIZE - 1):
            raise InvalidError(f"address space: size {size!r} is not a positive page multiple")
        if not _is_alignment(alignment):
            raise InvalidError(f"address space: alignment {alignment!r} is not a power of two")
        if alignment == PAGE_SIZE:
            fit: int | None = next(self._by_size.read().irange(minimum=size << _SHIFT), None)
            extent_size = 0 if fit is None else fit >> _SHIFT
        else:
            fit = next(self._usable_at(alignment).irange(minimum=size << 2 * _SHIFT), None)
            extent_size = 0 if fit is None else fit >> _SHIFT & _LOW
        if fit is None:
            raise NoSpaceError(
                f"address space {self.start:#x}+{self.size:#x}: no room for {size:#x} "
                f"bytes aligned to {alignment:#x} ({self._free_bytes:#x} bytes free)"
            )
        extent = fit & _LOW
        extent_end = extent + extent_size
        start = (extent_end - size) & ~(alignment - 1)
        self._remove_free(extent, extent_end)
        if start > extent:
            self._add_free(extent, start)
        end = start + size
        if extent_end > end:
            self._add_free(end, extent_end)
        self._live.add(start << _SHIFT | size)
        self._live_count += 1
        self._free_bytes -= size
        return start

    def free(self, start: int, size: int) -> None:
        """Give back a range exactly as allocated, merging it with free neighbours.

        Anything else raises ``EINVAL`` and changes nothing.
        """
        if (
            not isinstance(start, int)
            or not isinstance(size, int)
            or start < 0
            or size <= 0
            or start + size > ADDRESS_LIMIT
        ):
            raise InvalidError(f"address space: free of {start!r}+{size!r}: no such allocation")
        key = start << _SHIFT | size
        if not self._live.discard(key):
            raise InvalidError(f"address space: free of {start:#x}+{size:#x}: no such allocation")
        live = self._live.read()
        self._live_count -= 1
        self._free_bytes += size
        # the free extents around it: the gaps to the allocated neighbours
        below = next(live.irange(maximum=key, reverse=True), None)
        above = next(live.irange(minimum=key), None)
        low = self.start if below is None else (below >> _SHIFT) + (below & _LOW)
        high = self.start + self.size if above is None else above >> _SHIFT
        end = start + size
        if low < start:
            self._remove_free(low, start)
        if end < high:
            self._remove_free(end, high)
        self._add_free(low, high)


class _Deferred:
    """A sorted list whose additions and removals wait in a small dict until it is read, where
    an addition and a removal of the same entry cancel out: a range allocated and freed again
    at the same place, between two reads (the steady state of most users), costs no sorted-list
    operation. At most :data:`_PENDING` wait, so that a read costs O(log n) at most that many
    times, and the dict never grows past them (no rehash of many entries at once)."""

    __slots__ = ("_items", "_pending")

    def __init__(self) -> None:
        self._items = SortedList()
        self._pending: dict[int, bool] = {}  # entry -> added (True) or removed (False)

    def add(self, key: int) -> None:
        pending = self._pending
        if pending.get(key) is False:
            del pending[key]
        else:
            pending[key] = True
            if len(pending) > _PENDING:
                self.read()

    def remove(self, key: int) -> None:
        pending = self._pending
        if pending.get(key) is True:
            del pending[key]
        else:
            pending[key] = False
            if len(pending) > _PENDING:
                self.read()

    def discard(self, key: int) -> bool:
        """Remove *key* if it is there; whether it was."""
        state = self._pending.get(key)
        if state is None and key not in self._items:
            return False
        if state is False:
            return False
        self.remove(key)
        return True

    def read(self) -> SortedList:
        """The sorted list, with every change made."""
        pending = self._pending
        if pending:
            items = self._items
            for key, added in pending.items():
                if added:
                    items.add(key)
                else:
                    items.remove(key)
            pending.clear()
        return self._items


_PENDING = 32


def _usable_key(alignment: int, start: int, end: int) -> int | None:
    """The free extent *start..end* in the list of *alignment*: ``usable << 128 | size << 64 |
    start``, ordered by the bytes it holds at that alignment, then by size (of two that hold
    as much, the smaller one wastes less), then by address; ``None`` if it holds not a page."""
    usable = end - -(-start // alignment) * alignment
    if usable < PAGE_SIZE:
        return None
    return (usable << _SHIFT | end - start) << _SHIFT | start
