"""A page-table driver for avcm's MMU wrapper: the smallest complete one.

avcm's MMU wrapper owns the address allocator, the bound list and the activated state; the
driver only writes page-table entries (one per page, of 1 MiB, 64 KiB or 4 KiB: the wrapper's
page walk picks the largest page that fits) and switches translation on and off. It also shows
the checks its hardware (:class:`avcm.lowlevel.HardwareView`), so that the stress harness and
the conformance suite compare the hardware with the model, and offers the device's side,
``read`` and ``write`` at device addresses through its page tables, which the harness's data
checks and device probes use: an access must reach the bound memory while the context is
active and fault (raise) otherwise.

Run it::

    python -m examples.page_table_driver [--backend trio]
    python -m stress --driver examples.page_table_driver:make
    python -m avcm.testing conformance examples.page_table_driver:make
"""

from __future__ import annotations

import argparse
import errno
from collections.abc import Iterator

import anyio
import anyio.lowlevel

import avcm
from avcm import lowlevel

__all__ = ["DeviceFault", "PageTables", "make"]


class DeviceFault(avcm.VcmError):
    """``EFAULT``: a device access the page tables do not translate."""

    default_errno = errno.EFAULT


class PageTables:
    """The hardware: a table of page entries, and whether the device translates through it."""

    orders = (8, 4, 0)  # 1 MiB, 64 KiB and 4 KiB pages, largest first, ending with 0

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        self.memory = memory  # what the device reaches through the tables
        self.entries: dict[int, tuple[int, int]] = {}  # vaddr -> (paddr, order)
        self.enabled = False

    # -- what mmu_init asks of a driver: every operation a coroutine function ----------------

    async def enable(self, vcm: avcm.Vcm) -> None:
        await self._hardware_wait("page_tables.enable", vcm)
        self.enabled = True

    async def disable(self, vcm: avcm.Vcm) -> None:
        await self._hardware_wait("page_tables.disable", vcm)
        self.enabled = False

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await self._hardware_wait("page_tables.write", vcm)
        if vaddr in self.entries:  # the wrapper never maps a page twice: say so if it did
            raise avcm.BusyError(f"page table entry {vaddr:#x} is in use")
        self.entries[vaddr] = (paddr, order)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await self._hardware_wait("page_tables.clear", vcm)
        del self.entries[vaddr]

    @staticmethod
    async def _hardware_wait(point: str, vcm: avcm.Vcm) -> None:
        # Real hardware takes time here: a checkpoint lets other tasks run meanwhile (and the
        # race finder switch tasks), and the sync point names the step in its timelines.
        await lowlevel.sync_point(point, vcm)
        await anyio.lowlevel.checkpoint()

    # -- the device's side: accesses at device addresses, translated page by page ------------

    def translate(self, addr: int) -> int:
        """The physical address the device reaches at *addr*; :class:`DeviceFault` if none."""
        if self.enabled:
            for order in self.orders:
                size = avcm.PAGE_SIZE << order
                entry = self.entries.get(addr & -size)
                if entry is not None and entry[1] == order:
                    return entry[0] + (addr & (size - 1))
        state = "no entry" if self.enabled else "translation off"
        raise DeviceFault(f"device access at {addr:#x} faulted ({state})")

    def _pieces(self, addr: int, length: int) -> Iterator[tuple[int, int]]:
        # (physical address, length) within each 4 KiB page: a burst that crosses a page is
        # translated again there, as the hardware does (its next page may be anywhere)
        while length > 0:
            piece = min(length, avcm.PAGE_SIZE - (addr & (avcm.PAGE_SIZE - 1)))
            yield self.translate(addr), piece
            addr += piece
            length -= piece

    def read(self, addr: int, length: int) -> bytes:
        return b"".join(self.memory.read(p, n) for p, n in list(self._pieces(addr, length)))

    def write(self, addr: int, data: bytes) -> None:
        pieces = list(self._pieces(addr, len(data)))  # all translated before a byte is written
        offset = 0
        for physical, piece in pieces:
            self.memory.write(physical, data[offset : offset + piece])
            offset += piece

    # -- what the checks compare with the model (avcm.lowlevel.HardwareView) -----------------

    def hardware_active(self) -> bool:
        return self.enabled

    def hardware_mappings(self) -> Iterator[lowlevel.Extent]:
        for vaddr, (paddr, order) in self.entries.items():
            yield vaddr, paddr, avcm.PAGE_SIZE << order


def make(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A context of 256 MiB of device addresses at 0x1000_0000 over *memory*: the factory the
    stress harness and the conformance suite take (``examples.page_table_driver:make``)."""
    return avcm.mmu_init(
        0x1000_0000, 256 << 20, PageTables(memory), memory=memory, name="pagetables"
    )


async def main() -> None:
    memory = avcm.PhysicalMemory(size=64 << 20)
    async with make(memory) as vcm:
        tables = vcm.driver.hw if isinstance(vcm.driver, lowlevel.MmuWrapper) else None
        assert isinstance(tables, PageTables)
        res = await vcm.make_binding(1 << 20)  # allocate + reserve + bind
        async with vcm.activated():  # the mappings go into the page tables
            pages = sorted(tables.entries.items())
            print(f"bound {res.bound_size >> 10} KiB at {res.start:#x}: {len(pages)} page(s)")
            for vaddr, (paddr, order) in pages[:4]:
                print(f"  {vaddr:#x} -> {paddr:#x} ({(avcm.PAGE_SIZE << order) >> 10} KiB)")
            tables.write(res.start + 5, b"hello")  # the device writes through its tables
            assert memory.read(tables.translate(res.start + 5), 5) == b"hello"
        try:
            tables.read(res.start, 1)
        except DeviceFault as fault:  # off: the device reaches nothing
            print(f"after deactivate: {fault}")
        assert not tables.entries and not tables.enabled  # the last deactivate cleared them
        await res.destroy_binding()
    assert memory.free_bytes == memory.size  # rule 9: nothing leaked
    print("done: nothing leaked")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
