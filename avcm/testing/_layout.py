"""Where a test puts things: memory at the very end of physical memory, reservations next to
each other in an address space. Bugs that live at an edge (a DMA window off by one, a
translation folded over neighbours) are met only where a test puts something there on
purpose: allocators hand out the lowest memory first and the best-fitting hole."""

from __future__ import annotations

import operator

import anyio

from .. import InvalidError, PhysicalMemory, Res, Vcm
from .._memory import PAGE_SIZE

TOP_BLOCK_LIMIT = 65_536  # blocks of the largest order take_top_block goes through, at most


def take_top_block(memory: PhysicalMemory) -> int | None:
    """Take the block of the largest order (``memory.max_order``) at the very top of *memory*
    and return its start, or ``None`` if it is not free (nothing is taken then); give it back
    with ``memory.free_pages(start, memory.max_order)``. Memory is handed out lowest first,
    so its last page is met only once all below it is in use, which no test comes near: a
    DMA window or address mask off by one at the end of memory is found only so. (It takes
    every free block of that order, then gives back all but the top one: ``None`` too for a
    memory of more than :data:`TOP_BLOCK_LIMIT` of them, 256 GiB at the default order.)"""
    if memory.size // (PAGE_SIZE << memory.max_order) > TOP_BLOCK_LIMIT:
        return None
    taken = []
    while (block := memory.alloc_pages(memory.max_order)) is not None:
        taken.append(block)
    top = max(taken, default=None)
    for block in taken:
        if block != top:
            memory.free_pages(block, memory.max_order)
    if top is not None and top + (PAGE_SIZE << memory.max_order) != memory.base + memory.size:
        memory.free_pages(top, memory.max_order)
        return None
    return top


async def reserve_run(vcm: Vcm, size: int, count: int) -> list[Res]:
    """*count* reservations of *size* bytes each in *vcm*, by address. With an allocator that
    places each at the top of the free space it best fits, as the MMU wrapper's does, and no
    other task reserving meanwhile, they are next to each other from a boundary of their
    whole size where the best fit for one of them ends on one: a reservation in the way first
    brings that end to such a boundary. Elsewhere they are wherever the allocator put them
    (see whether ``res.start + res.res_size`` of each is the next one's start).

    Raises what :meth:`Vcm.reserve` raises (``ENOSPC``, ``EOPNOTSUPP`` on a one-to-one
    context), having reserved nothing; ``EINVAL`` for a *count* that is not a positive int.
    If cancelled, nothing was reserved.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidError(f"reserve_run: count {count!r} is not a positive int")
    probe = await vcm.reserve(size)
    size, top = probe.res_size, probe.start + probe.res_size
    with anyio.CancelScope(shield=True):
        await probe.unreserve()
    taken: list[Res] = []  # the one in the way first, if any
    try:
        whole = size * count
        if top % whole:
            taken.append(await vcm.reserve(top % whole))
        in_the_way = taken[:]
        for _ in range(count):
            taken.append(await vcm.reserve(size))
    except BaseException:
        with anyio.CancelScope(shield=True):
            for res in taken:
                await res.unreserve()
        raise
    with anyio.CancelScope(shield=True):
        for res in in_the_way:
            await res.unreserve()
    return sorted(taken[len(in_the_way) :], key=operator.attrgetter("start"))
