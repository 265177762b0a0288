"""``vcm_phys_alloc`` and ``vcm_phys_walk``: multi-order allocation and the MMU page walk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio

from ._core import Phys
from ._errors import InvalidError, NoMemoryError, note_undo_failed
from ._memory import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory
from ._sync import installed_hooks, sync_point
from ._validate import (
    check_aligned,
    check_coroutine_function,
    check_flags,
    check_orders,
    check_span,
    page_align,
    quote,
)

__all__ = [
    "PageCallback",
    "default_memory",
    "page_order",
    "pages_of",
    "phys_alloc",
    "phys_walk",
    "resolve_memory",
    "visit_pages",
    "walk_pages",
]

PageCallback = Callable[[int, int, int], Awaitable[object]]
"""``await callback(vaddr, paddr, order)`` for one page of ``PAGE_SIZE << order`` bytes."""

_default_memory: PhysicalMemory | None = None


def default_memory() -> PhysicalMemory:
    """The process-wide simulated RAM that :func:`phys_alloc` uses when given none."""
    global _default_memory
    if _default_memory is None:
        _default_memory = PhysicalMemory()
    return _default_memory


def resolve_memory(memory: object, what: str) -> PhysicalMemory:
    """*memory* if it is a :class:`PhysicalMemory`, the default one if ``None``; else EINVAL
    now, not an AttributeError at the first allocation."""
    if memory is None:
        return default_memory()
    if not isinstance(memory, PhysicalMemory):
        raise InvalidError(f"{what}: memory must be a PhysicalMemory, not {quote(memory)}")
    return memory


def page_order(size: int) -> int:
    """The order of a page of *size* bytes (a power of two, at least ``PAGE_SIZE``)."""
    return size.bit_length() - 1 - PAGE_SHIFT


def phys_alloc(
    size: int,
    flags: int = 0,
    orders: Sequence[int] = (0,),
    *,
    memory: PhysicalMemory | None = None,
) -> Phys:
    """``vcm_phys_alloc``: allocate *size* bytes in as few pages of *orders* as possible.

    Largest pages first; when a large page cannot be had (memory fragmented), smaller pages make
    up the rest. 2 MiB + 68 KiB with orders ``(8, 4, 0)`` is two 1 MiB parts, one 64 KiB part and
    one 4 KiB part. ``ENOMEM`` when the memory cannot hold it, leaking nothing; ``EINVAL`` for a
    bad size or orders. Freeing the returned phys returns every page.

    Raises:
        InvalidError: ``EINVAL``: a bad size, flags, orders or memory.
        NoMemoryError: ``ENOMEM``: the memory cannot hold it; nothing is left allocated.
    """
    size = page_align(size, "phys_alloc")
    check_flags(flags, "phys_alloc")
    orders = check_orders(orders, "phys_alloc orders")
    ram = resolve_memory(memory, "phys_alloc")
    pages = size >> PAGE_SHIFT
    parts: list[tuple[int, int]] = []
    for order in orders:
        if order > ram.max_order:
            continue
        # up to the first that fails (fragmented): the smaller orders make up the rest
        starts = ram._alloc_run(order, pages >> order)
        size_of_block = PAGE_SIZE << order
        parts.extend([(start, size_of_block) for start in starts])
        pages -= len(starts) << order
    if pages:
        _free_parts(ram, parts)
        raise NoMemoryError(
            f"phys_alloc: cannot allocate {size:#x} bytes with orders {orders} "
            f"({ram.free_bytes:#x} bytes free)"
        )
    try:
        return Phys._construct(parts, _free_to_memory, ram, allocated=True)
    except BaseException:
        _free_parts(ram, parts)
        raise


async def _free_to_memory(phys: Phys) -> None:
    """The free of every phys :func:`phys_alloc` makes: its pages back to its memory. One
    function for all (a closure per phys would cost 240 bytes, more than the phys)."""
    memory = phys.memory
    if memory is not None:  # phys_alloc always gives one
        _free_parts(memory, phys._spans())


def _free_parts(ram: PhysicalMemory, parts: Iterable[tuple[int, int]]) -> None:
    ram._free_run(parts)


def _check_walk(vaddr: object, phys: object, orders: object, what: str) -> tuple[int, ...]:
    """The validation :func:`walk_pages` and :func:`phys_walk` share; returns the orders."""
    vaddr = check_aligned(vaddr, f"{what} vaddr")
    if not isinstance(phys, Phys):
        raise InvalidError(f"{what}: {quote(phys)} is not a Phys")
    check_span(vaddr, phys.size, f"{what} of")
    phys._check_usable(what)
    return check_orders(orders, f"{what} orders")


def walk_pages(vaddr: int, phys: Phys, orders: Sequence[int]) -> list[tuple[int, int, int]]:
    """The pages :func:`phys_walk` visits, as ``(vaddr, paddr, order)``, without visiting them.

    At every step the page is the largest of *orders* that fits the remaining length of the
    part and the alignment of both addresses (Linux's ``iommu_pgsize``). ``EINVAL`` for what
    :func:`phys_walk` refuses: an unaligned or negative *vaddr*, a range past 64-bit
    addresses, a freed phys or one that is not a :class:`~avcm.Phys`, bad orders.
    """
    return pages_of(vaddr, phys, _check_walk(vaddr, phys, orders, "walk_pages"))


def pages_of(vaddr: int, phys: Phys, orders: Sequence[int]) -> list[tuple[int, int, int]]:
    """:func:`walk_pages` without the validation, for arguments that passed it already (the
    MMU wrapper's bound reservations)."""
    pages: list[tuple[int, int, int]] = []
    sizes = [(PAGE_SIZE << order, order) for order in orders]  # largest first
    for paddr, remaining in phys._spans():
        while remaining:
            for page, order in sizes:  # noqa: B007 - the one it breaks at is the page
                if page <= remaining and not (vaddr | paddr) & (page - 1):
                    break
            if page == remaining:  # the part is one page: most parts, allocated in pages
                pages.append((vaddr, paddr, order))
                vaddr += page
                break
            # The walk takes pages of this size up to the part's end, or until both addresses
            # reach the alignment of a larger size that still fits there: a run at a time,
            # not a page (a MiB of 4 KiB pages is 256 of them).
            count = remaining // page
            for larger, _ in sizes:
                if larger == page:
                    break
                # they reach it together only if they are as far from it
                if not (vaddr - paddr) & (larger - 1):
                    steps = (-vaddr & (larger - 1)) // page
                    if steps < count and remaining - steps * page >= larger:
                        count = steps
            run = count * page
            pages += [(vaddr + offset, paddr + offset, order) for offset in range(0, run, page)]
            vaddr += run
            paddr += run
            remaining -= run
    return pages


async def phys_walk(
    vaddr: int,
    phys: Phys,
    orders: Sequence[int],
    callback: PageCallback,
    recovery: PageCallback | None = None,
) -> None:
    """``vcm_phys_walk``: call *callback* for each MMU page mapping *phys* at *vaddr*.

    A 1 MiB part plus an 8 KiB part walked with orders ``(8, 0)`` calls back with the 1 MiB page
    and then two 4 KiB pages (given a suitably aligned *vaddr*). If *callback* raises (or the
    caller is cancelled), *recovery* is called for exactly the pages already done, in reverse,
    shielded from cancellation, and the error propagates. If *recovery* itself raises, the
    recovery stops there and that error is noted on the original one. ``EINVAL``, and nothing
    visited, for bad arguments (those :func:`walk_pages` refuses, and callbacks that are not
    coroutine functions).

    Raises:
        InvalidError: ``EINVAL``, nothing visited: a bad address, phys, orders or callback.
        Exception: whatever *callback* raised, after the recovery.
    """
    orders = _check_walk(vaddr, phys, orders, "phys_walk")
    check_coroutine_function(callback, "phys_walk: callback")
    if recovery is not None:
        check_coroutine_function(recovery, "phys_walk: recovery")
    await visit_pages(pages_of(vaddr, phys, orders), callback, recovery)


async def visit_pages(
    pages: Iterable[tuple[int, int, int]],
    callback: Callable[..., Awaitable[object]],
    recovery: Callable[..., Awaitable[object]] | None,
    *args: object,
    point: str | None = None,
    obj: object = None,
) -> None:
    """Call *callback* for each page in order, as ``callback(vaddr, paddr, order, *args)``,
    each call announced by the sync point *point* (of *obj*) if one is given; on an error (or
    cancellation) call *recovery* the same way for the pages done, in reverse, shielded, and
    re-raise. The engine of :func:`phys_walk`, and of the MMU wrapper's per-page mapping, which
    passes its driver's operations and their context as they are: no coroutine of its own
    around each call of a page."""
    done: list[tuple[int, int, int]] = []
    try:
        for page in pages:
            if point is not None and installed_hooks:  # else the sync point does nothing
                await sync_point(point, obj)
            await callback(*page, *args)
            done.append(page)
    except BaseException as error:
        if recovery is not None:
            with anyio.CancelScope(shield=True):
                for page in reversed(done):
                    try:
                        await recovery(*page, *args)
                    except Exception as recovery_error:
                        note_undo_failed(
                            error,
                            f"phys_walk recovery of page {page[0]:#x} failed too: "
                            f"{recovery_error!r}; earlier pages were not recovered",
                        )
                        break
        raise
