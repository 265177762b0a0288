"""The hardware MMU wrapper (``vcm_mmu_init``): everything but talking to the page tables.

A hardware driver gives page ``orders`` and either per-reservation ``activate``/``deactivate``
or per-page ``activate_page``/``deactivate_page``. The wrapper owns the virtual address
allocator, the list of bound reservations and the activated state; it runs under the
context's mutex (the core calls bind, unbind, unreserve, activate and deactivate with it held),
so those need no lock of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio

from ._core import Phys, Res, Vcm, _WrapperDriver
from ._errors import InvalidError, note_undo_failed
from ._memory import PAGE_SIZE, PhysicalMemory
from ._phys import pages_of, phys_alloc, resolve_memory, visit_pages
from ._sync import sync_point
from ._validate import check_aligned, check_coroutine_function, check_orders, check_span
from ._vaspace import AddressSpace

__all__ = ["MmuDriver", "MmuWrapper", "mmu_init"]

_OPS = ("activate", "deactivate", "activate_page", "deactivate_page")

ResOp = Callable[[Res, Phys], Awaitable[None]]
PageOp = Callable[[int, int, int, Vcm], Awaitable[None]]


class MmuDriver(Protocol):
    """``struct vcm_mmu_driver``: what a hardware MMU driver provides.

    ``orders``: supported page orders, largest first, ending with 0. Optional operations:

    * ``async cleanup(vcm)``;
    * ``async enable(vcm)`` / ``async disable(vcm)``: switch translation on and off for the
      device (attach the page tables, flush the TLB); called on the first activation before any
      mapping, and on the last deactivation after every mapping is gone;
    * ``async activate(res, phys)`` / ``async deactivate(res, phys)``: map or unmap one
      reservation;
    * ``async activate_page(vaddr, paddr, order, vcm)`` / ``async deactivate_page(...)``: map or
      unmap one page, called through :func:`avcm.phys_walk`.

    A driver has one shape: the pair ``activate``/``deactivate`` or the pair
    ``activate_page``/``deactivate_page``, never one operation of each (unbinding could not
    then put back exactly what it took out) nor both pairs. Every operation must be a coroutine
    function (``async def``, a partial of one, or an object with an ``async def __call__``).
    :func:`mmu_init` refuses anything else with ``EINVAL``. Each operation that raises,
    including by cancellation, must have had no effect on the hardware.
    """

    @property
    def orders(self) -> Sequence[int]: ...


def _op(driver: object, name: str) -> Callable[..., Awaitable[None]] | None:
    op = getattr(driver, name, None)
    if op is not None:
        check_coroutine_function(op, f"mmu_init: driver {driver!r}: {name}")
    return op


class MmuWrapper(_WrapperDriver):
    """The core driver behind every MMU context; ``vcm.driver`` of one made by :func:`mmu_init`.

    No public constructor: its bookkeeping belongs to one context, the one :func:`mmu_init`
    makes with it.
    """

    _public_name = "avcm.lowlevel.MmuWrapper"
    _made_by = "avcm.mmu_init makes it, with its context"

    @classmethod
    def _create(
        cls, driver: MmuDriver, start: int, size: int, memory: PhysicalMemory
    ) -> MmuWrapper:
        return cls._construct(driver, start, size, memory)

    def __init__(self, driver: MmuDriver, start: int, size: int, memory: PhysicalMemory) -> None:
        self.hw = driver
        self.orders = check_orders(getattr(driver, "orders", None), "mmu_init orders")
        self._activate: ResOp | None = _op(driver, "activate")
        self._deactivate: ResOp | None = _op(driver, "deactivate")
        self._activate_page: PageOp | None = _op(driver, "activate_page")
        self._deactivate_page: PageOp | None = _op(driver, "deactivate_page")
        self._hw_cleanup = _op(driver, "cleanup")
        self._enable: Callable[[Vcm], Awaitable[None]] | None = _op(driver, "enable")
        self._disable: Callable[[Vcm], Awaitable[None]] | None = _op(driver, "disable")
        per_res = (self._activate is not None, self._deactivate is not None)
        per_page = (self._activate_page is not None, self._deactivate_page is not None)
        if sorted((per_res, per_page)) != [(False, False), (True, True)]:
            has = [name for name, there in zip(_OPS, per_res + per_page, strict=True) if there]
            raise InvalidError(
                f"mmu_init: driver {driver!r} must have either activate and deactivate, or "
                f"activate_page and deactivate_page, not a mix (it has {has or 'none'})"
            )
        self.memory = memory
        # an index per page size from the start: the first large reservation is as quick
        self.space = AddressSpace(start, size, alignments=[PAGE_SIZE << o for o in self.orders])
        # res -> phys, in bind order: activation maps in this order and undoes in reverse.
        self.bound: dict[Res, Phys] = {}
        self.activated = False

    def __repr__(self) -> str:
        return f"<MmuWrapper of {self.hw!r}>"

    # -- address space and memory ------------------------------------------------------------

    def alignment_for(self, size: int) -> int:
        """The largest supported page size not above *size*: a 1 MiB reservation can then be
        one 1 MiB entry when its memory is one aligned 1 MiB part."""
        for order in self.orders:
            if PAGE_SIZE << order <= size:
                return PAGE_SIZE << order
        return PAGE_SIZE

    async def res(self, vcm: Vcm, size: int, flags: int) -> Res:
        start = self.space.allocate(size, self.alignment_for(size))
        return Res._create(vcm, start, size)

    async def unreserve(self, res: Res) -> None:
        self.space.free(res.start, res.res_size)

    async def phys(self, vcm: Vcm, size: int, flags: int) -> Phys:
        return phys_alloc(size, flags, self.orders, memory=self.memory)

    # -- mappings ----------------------------------------------------------------------------

    async def map_res(self, res: Res, phys: Phys) -> None:
        """Put one reservation's mapping in the hardware; all of it or, if it raises, none."""
        if self._activate is not None:
            await sync_point("driver.activate_res", res)
            await self._activate(res, phys)
            return
        activate_page, deactivate_page = self._activate_page, self._deactivate_page
        if activate_page is None or deactivate_page is None:  # pragma: no cover - init checks
            raise InvalidError("mmu: driver lost its page operations")
        # what phys_walk does, without its validation: a bound reservation and its phys passed
        # it at bind (and it costs more than the walk of a binding of a few pages)
        await visit_pages(
            self.pages(res, phys),
            activate_page,
            deactivate_page,
            res.vcm,
            point="driver.activate_page",
            obj=res,
        )

    async def unmap_res(self, res: Res, phys: Phys) -> None:
        """Take one reservation's mapping out of the hardware, newest page first (the exact
        reverse of :meth:`map_res`); if it raises, the mapping is whole again."""
        if self._deactivate is not None:
            await sync_point("driver.deactivate_res", res)
            await self._deactivate(res, phys)
            return
        activate_page, deactivate_page = self._activate_page, self._deactivate_page
        if activate_page is None or deactivate_page is None:  # pragma: no cover - init checks
            raise InvalidError("mmu: driver lost its page operations")
        await visit_pages(
            reversed(self.pages(res, phys)),
            deactivate_page,
            activate_page,
            res.vcm,
            point="driver.deactivate_page",
            obj=res,
        )

    def pages(self, res: Res, phys: Phys) -> list[tuple[int, int, int]]:
        """The ``(vaddr, paddr, order)`` pages a per-page driver gets for this binding."""
        return pages_of(res.start, phys, self.orders)

    async def bind(self, res: Res, phys: Phys) -> None:
        if phys.memory is not None and phys.memory is not self.memory:
            raise InvalidError(f"bind: {phys!r} lives in another physical memory than {res!r}")
        if self.activated:
            await self.map_res(res, phys)
        self.bound[res] = phys

    async def unbind(self, res: Res) -> None:
        phys = self.bound[res]
        if self.activated:
            await self.unmap_res(res, phys)
        del self.bound[res]

    def _unbind_now(self, res: Res) -> bool:
        """:meth:`unbind` when it would not wait: inactive, there is no hardware to update."""
        if self.activated:
            return False  # the hardware's deactivate is awaited
        del self.bound[res]
        return True

    async def activate(self, vcm: Vcm) -> None:
        """Map every bound reservation; on a failure undo exactly what was done, in reverse."""
        if self._enable is not None:
            await sync_point("driver.enable", vcm)
            await self._enable(vcm)
        done: list[tuple[Res, Phys]] = []
        try:
            for res, phys in self.bound.items():
                await self.map_res(res, phys)
                done.append((res, phys))
        except BaseException as error:
            await self._undo(done, self.unmap_res, error)
            if self._disable is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._disable(vcm)
                    except Exception as disable_error:
                        note_undo_failed(
                            error, f"mmu: disabling again failed too: {disable_error!r}"
                        )
            raise
        self.activated = True

    async def deactivate(self, vcm: Vcm) -> None:
        """Unmap every bound reservation; on a failure map back what was unmapped, in reverse."""
        done: list[tuple[Res, Phys]] = []
        try:
            for res, phys in reversed(self.bound.items()):
                await self.unmap_res(res, phys)
                done.append((res, phys))
            if self._disable is not None:
                await sync_point("driver.disable", vcm)
                await self._disable(vcm)
        except BaseException as error:
            await self._undo(done, self.map_res, error)
            raise
        self.activated = False

    @staticmethod
    async def _undo(done: list[tuple[Res, Phys]], op: ResOp, error: BaseException) -> None:
        with anyio.CancelScope(shield=True):
            for res, phys in reversed(done):
                try:
                    await op(res, phys)
                except Exception as undo_error:
                    note_undo_failed(error, f"mmu: undoing {res!r} failed too: {undo_error!r}")
                    return

    async def cleanup(self, vcm: Vcm) -> None:
        if self._hw_cleanup is not None:
            await self._hw_cleanup(vcm)


def mmu_init(
    start: int,
    size: int,
    driver: MmuDriver,
    *,
    memory: PhysicalMemory | None = None,
    name: str | None = None,
) -> Vcm:
    """``vcm_mmu_init``: a context for a hardware MMU driven by *driver*.

    ``EINVAL`` (and nothing created) for a bad range, bad orders, or a driver of no single
    shape or with an operation that is not a coroutine function (see :class:`MmuDriver`).
    *memory* is the simulated RAM its allocations come from (the process default if omitted).

    Raises:
        InvalidError: ``EINVAL``, nothing created: a bad range, orders or memory, or a driver of no
            single shape or with an operation that is not a coroutine function.
    """
    check_aligned(start, "context start")
    check_aligned(size, "context size", positive=True)
    check_span(start, size, "context")
    ram = resolve_memory(memory, "mmu_init")
    return Vcm(start, size, MmuWrapper._create(driver, start, size, ram), name=name)
