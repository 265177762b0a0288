"""A core driver for the tests: simulated hardware that sleeps in every operation and records.

Every operation announces a sync point and sleeps, so that concurrent callers interleave inside
the driver, where the patch's races lived. ``fail`` makes the next call of an operation raise.
The hardware state is visible to :func:`testing.check_model` through ``HardwareView``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

import anyio
import anyio.lowlevel

import avcm
from avcm.lowlevel import AddressSpace, sync_point


class DriverFault(avcm.VcmError):
    """What a test asks the driver to raise."""


class RecordingDriver:
    """A core driver with every optional operation (some can be hidden with ``without``)."""

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        *,
        start: int = 0x1000_0000,
        size: int = 64 << 20,
        delay: float = 0.0,
        accept_foreign: bool = False,
    ) -> None:
        self.memory = memory
        self.space = AddressSpace(start, size)
        self.delay = delay
        self.active = False
        self.mapped: dict[avcm.Res, avcm.Phys] = {}
        self.calls: list[str] = []
        self.fail: dict[str, avcm.VcmError] = {}
        self.cleaned_up = False
        self.accept_foreign = accept_foreign

    async def _op(self, name: str) -> None:
        self.calls.append(name)
        await sync_point(f"test.{name}", self)
        await anyio.sleep(self.delay)
        error = self.fail.pop(name, None)
        if error is not None:
            raise error

    # HardwareView
    def hardware_active(self) -> bool:
        return self.active

    def hardware_mappings(self) -> Iterable[tuple[int, int, int]]:
        if not self.active:
            return []
        extents = []
        for res, phys in self.mapped.items():
            vaddr = res.start
            for part in phys.parts:
                extents.append((vaddr, part.start, part.size))
                vaddr += part.size
        return extents

    # the core driver
    async def res(self, vcm: avcm.Vcm, size: int, flags: int) -> avcm.Res:
        await self._op("res")
        return avcm.lowlevel.create_res(vcm, self.space.allocate(size, avcm.PAGE_SIZE), size)

    async def phys(self, vcm: avcm.Vcm, size: int, flags: int) -> avcm.Phys:
        await self._op("phys")
        return avcm.phys_alloc(size, flags, (8, 4, 0), memory=self.memory)

    async def unreserve(self, res: avcm.Res) -> None:
        await self._op("unreserve")
        self.space.free(res.start, res.res_size)

    async def bind(self, res: avcm.Res, phys: avcm.Phys) -> None:
        if not self.accept_foreign and phys.vcm is not None and phys.vcm is not res.vcm:
            raise avcm.NotSupportedError(f"bind: {phys!r} belongs to another context")
        await self._op("bind")
        self.mapped[res] = phys

    async def unbind(self, res: avcm.Res) -> None:
        await self._op("unbind")
        del self.mapped[res]

    async def activate(self, vcm: avcm.Vcm) -> None:
        await self._op("activate")
        self.active = True

    async def deactivate(self, vcm: avcm.Vcm) -> None:
        await self._op("deactivate")
        self.active = False

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        await self._op("cleanup")
        self.cleaned_up = True


class PageHardware:
    """Per-page MMU driver: a page table and a log; ``fail_on`` makes the n-th map fail."""

    orders = (8, 4, 0)

    def __init__(self, delay: float | None = None) -> None:
        self.delay = delay
        self.table: dict[int, tuple[int, int]] = {}
        self.log: list[tuple[str, int]] = []
        self.enabled = False
        self.maps = 0
        self.fail_on: int | None = None

    async def _wait(self, name: str) -> None:
        if self.delay is not None:
            await sync_point(f"test.{name}", self)
            await anyio.sleep(self.delay)
        else:
            await anyio.lowlevel.checkpoint()

    async def enable(self, vcm: avcm.Vcm) -> None:
        await self._wait("enable")
        self.enabled = True

    async def disable(self, vcm: avcm.Vcm) -> None:
        await self._wait("disable")
        self.enabled = False

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await self._wait("activate_page")
        self.maps += 1
        if self.fail_on == self.maps:
            raise DriverFault(errno.EIO, f"map of {vaddr:#x} failed")
        assert vaddr not in self.table
        self.table[vaddr] = (paddr, order)
        self.log.append(("map", vaddr))

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await self._wait("deactivate_page")
        assert self.table.pop(vaddr) == (paddr, order)
        self.log.append(("unmap", vaddr))

    def hardware_active(self) -> bool:
        return self.enabled

    def hardware_mappings(self) -> Iterable[tuple[int, int, int]]:
        return [(v, p, avcm.PAGE_SIZE << o) for v, (p, o) in self.table.items()]


class Without:
    """Wrap a driver hiding some of its operations (a driver that does not provide them)."""

    def __init__(self, driver: RecordingDriver, *hidden: str) -> None:
        self._driver = driver
        self._hidden = set(hidden)

    def __getattr__(self, name: str) -> object:
        if name in self._hidden:
            raise AttributeError(name)
        return getattr(self._driver, name)


def make_context(
    memory: avcm.PhysicalMemory, *hidden: str, delay: float = 0.0
) -> tuple[avcm.Vcm, RecordingDriver]:
    driver = RecordingDriver(memory, delay=delay)
    exposed: object = Without(driver, *hidden) if hidden else driver
    return avcm.Vcm(0x1000_0000, 64 << 20, exposed, name="test"), driver
