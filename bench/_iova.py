"""A baseline: Linux's IOVA allocator (``drivers/iommu/iova.c``), the allocator a Linux user
of an IOMMU would compare avcm's with.

The kernel keeps the *allocated* ranges in a red-black tree ordered by address, with an anchor
node above the top of the space, and a cached node where the last search ended.
``alloc_iova(size, limit_pfn, size_aligned)`` walks the tree backwards (top-down) from the
cached node, or from the anchor, and takes the highest gap below the limit that holds the range,
aligned (when *size_aligned*) to the size rounded up to a power of two; if that walk fails and
the cached node was below the limit it retries once, from the limit down to the cached node.
Freeing a range at or above the cached node moves the cache to the node after it, so the next
allocation starts its walk above the freed hole. There are two caches, one for the ranges below
4 GiB (``dma_32bit_pfn``) and one for the rest; a failed search below 4 GiB remembers its size
(``max32_alloc_size``) so that no larger one searches again until something there is freed.

This model does all of that, step for step (the ``do``/``while`` walk, the retry, the cache
updates), on a :class:`~sortedcontainers.SortedList` of the ranges' first page numbers: the
walk steps through it backwards as ``rb_prev`` steps through the tree. Not modelled: the
per-CPU range caches of ``alloc_iova_fast`` (magazines of freed ranges of up to 32 pages,
handed out again without a search), which make the churn of one size cheaper still and do
nothing for the walk when they are empty, and the locking. Sizes and addresses are in bytes
at this model's interface, page numbers inside, as in the kernel. Written for the benchmark.
"""

from __future__ import annotations

from sortedcontainers import SortedList

__all__ = ["IovaDomain"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_ULONG = (1 << 64) - 1
# the anchor node's pfn_lo and pfn_hi: ~0UL, above the top of any usable space
IOVA_ANCHOR = _ULONG


def _fls_long(value: int) -> int:
    """The position of the highest bit set, counting from 1 (0 for 0), as the kernel's."""
    return value.bit_length()


def _node(pfn_lo: int, pfn_hi: int) -> int:
    """A node of the tree as one int, ordered as the tree orders them (by ``pfn_lo``)."""
    return pfn_lo << 64 | pfn_hi


def _lo(node: int) -> int:
    return node >> 64


def _hi(node: int) -> int:
    return node & _ULONG


_ANCHOR = _node(IOVA_ANCHOR, IOVA_ANCHOR)


class IovaDomain:
    """``struct iova_domain``: allocations from *start* up to the *limit* of each call.

    :meth:`alloc` is ``alloc_iova(size, limit, size_aligned=True)`` with the limit at the top
    of the space the model was made with, as the DMA API calls it; :meth:`free` is
    ``free_iova``. Each node is one int in a sorted list (no dict: a dict's growth rehashes
    every entry at once, a cost the kernel's tree does not have)."""

    def __init__(self, start: int, size: int) -> None:
        self.start_pfn = start >> PAGE_SHIFT
        # the highest page an allocation may use, inclusive: the DMA API's limit (the
        # device's mask); the model's users allocate from the whole space
        self.limit_pfn = ((start + size) >> PAGE_SHIFT) - 1
        self.dma_32bit_pfn = 1 << (32 - PAGE_SHIFT)
        self.max32_alloc_size = self.dma_32bit_pfn
        self.tree = SortedList([_ANCHOR])
        # each cache is a node (the anchor at first), as the kernel's pointer
        self.cached_node = _ANCHOR
        self.cached32_node = _ANCHOR

    # -- the kernel's functions ----------------------------------------------------------------

    def alloc_iova(self, size: int, limit_pfn: int, size_aligned: bool) -> int | None:
        """The first page of *size* pages at or below *limit_pfn*, or ``None`` (``NULL``)."""
        return self._alloc_and_insert_iova_range(size, limit_pfn + 1, size_aligned)

    def _cached_rbnode(self, limit_pfn: int) -> int:
        if limit_pfn <= self.dma_32bit_pfn:
            return self.cached32_node
        return self.cached_node

    def _find_limit(self, limit_pfn: int) -> int:
        """``iova_find_limit``: where a walk from *limit_pfn* down starts. The kernel descends
        the tree to the lowest node at or above the limit, or to a node across it (either one
        leads the walk to the same place); this is the lowest node ending at or above it."""
        if limit_pfn > self.dma_32bit_pfn:
            return _ANCHOR
        below = next(self.tree.irange(maximum=_node(limit_pfn, 0), reverse=True), None)
        if below is not None and _hi(below) >= limit_pfn:
            return int(below)
        return int(next(self.tree.irange(minimum=_node(limit_pfn, 0))))

    def _alloc_and_insert_iova_range(
        self, size: int, limit_pfn: int, size_aligned: bool
    ) -> int | None:
        align_mask = _ULONG
        if size_aligned:
            align_mask = (align_mask << _fls_long(size - 1)) & _ULONG
        high_pfn, low_pfn = limit_pfn, self.start_pfn
        if limit_pfn <= self.dma_32bit_pfn and size >= self.max32_alloc_size:
            return None
        start = self._cached_rbnode(limit_pfn)
        retry_pfn = _hi(start)
        while True:
            # the do/while walk, rb_prev by rb_prev: backwards through the sorted nodes
            walk = self.tree.irange(maximum=start, reverse=True)
            curr: int | None = next(walk)
            while curr is not None:
                high_pfn = min(high_pfn, _lo(curr))
                new_pfn = ((high_pfn - size) & _ULONG) & align_mask
                curr = next(walk, None)
                if curr is None or new_pfn > _hi(curr) or new_pfn < low_pfn:
                    break
            if high_pfn < size or new_pfn < low_pfn:
                if low_pfn == self.start_pfn and retry_pfn < limit_pfn:
                    high_pfn = limit_pfn
                    low_pfn = retry_pfn + 1
                    start = self._find_limit(limit_pfn)
                    continue
                self.max32_alloc_size = size
                return None
            break
        # the kernel inserts from the last node walked down: the same place as from the root
        new = _node(new_pfn, new_pfn + size - 1)
        self.tree.add(new)
        if _hi(new) < self.dma_32bit_pfn:
            self.cached32_node = new
        else:
            self.cached_node = new
        return new_pfn

    def _next(self, node: int) -> int:
        """``rb_next``: the node after *node* (the anchor has none, and is never freed)."""
        return int(next(self.tree.irange(minimum=node, inclusive=(False, True))))

    def free_iova(self, pfn: int) -> None:
        """Free the range holding page *pfn*; nothing if there is none."""
        node = next(self.tree.irange(maximum=_node(pfn, _ULONG), reverse=True), None)
        if node is None or pfn > _hi(node) or node == _ANCHOR:
            return
        # __cached_rbnode_delete_update, before the node leaves the tree
        pfn_lo, pfn_hi = _lo(node), _hi(node)
        if node == self.cached32_node or (
            pfn_hi < self.dma_32bit_pfn and pfn_lo >= _lo(self.cached32_node)
        ):
            self.cached32_node = self._next(node)
        if pfn_lo < self.dma_32bit_pfn:
            self.max32_alloc_size = self.dma_32bit_pfn
        if pfn_lo >= _lo(self.cached_node):
            self.cached_node = self._next(node)
        self.tree.remove(node)

    def reserve_iova(self, pfn_lo: int, pfn_hi: int) -> None:
        """Keep *pfn_lo..pfn_hi* out of allocations, as ``reserve_iova`` does for a range that
        overlaps no other (the kernel's looks for overlaps from the first node on: O(n)); the
        caches are left as they were, as the kernel leaves them."""
        self.tree.add(_node(pfn_lo, pfn_hi))

    # -- in bytes, as the other allocators of the benchmark ------------------------------------

    def alloc(self, size: int, alignment: int) -> int | None:
        """*size* bytes, size-aligned as ``alloc_iova`` aligns them: to the size rounded up
        to a power of two, which must be at least *alignment*."""
        pages = size >> PAGE_SHIFT
        if alignment > PAGE_SIZE << _fls_long(pages - 1):
            raise ValueError(f"alloc_iova aligns {size} bytes to less than {alignment}")
        pfn = self.alloc_iova(pages, self.limit_pfn, True)
        return None if pfn is None else pfn << PAGE_SHIFT

    def free(self, addr: int, size: int) -> None:
        self.free_iova(addr >> PAGE_SHIFT)

    def reserve(self, addr: int, size: int) -> None:
        self.reserve_iova(addr >> PAGE_SHIFT, (addr + size >> PAGE_SHIFT) - 1)

    def ranges(self) -> list[tuple[int, int]]:
        """The allocated and reserved ranges, ``(address, size)`` in bytes, lowest first."""
        return [
            (_lo(node) << PAGE_SHIFT, _hi(node) - _lo(node) + 1 << PAGE_SHIFT)
            for node in self.tree
            if node != _ANCHOR
        ]

    @property
    def live(self) -> int:
        return len(self.tree) - 1
