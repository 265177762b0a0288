"""A page-table driver for avcm's MMU wrapper: the smallest complete one.

avcm's MMU wrapper owns the address allocator, the bound list and the activated state; the
driver only writes page-table entries (one per page, of 1 MiB, 64 KiB or 4 KiB: the wrapper's
page walk picks the largest page that fits) and switches translation on and off. It also shows
the checks its hardware (:class:`avcm.lowlevel.HardwareView`), so that the stress harness and
the conformance suite compare the hardware with the model.

Run it::

    python -m examples.page_table_driver [--backend trio]
    python -m stress --driver examples.page_table_driver:make
    python -m avcm.testing conformance examples.page_table_driver:make
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import anyio
import anyio.lowlevel

import avcm
from avcm import lowlevel

__all__ = ["PageTables", "make"]


class PageTables:
    """The hardware: a table of page entries, and whether the device translates through it."""

    orders = (8, 4, 0)  # 1 MiB, 64 KiB and 4 KiB pages, largest first, ending with 0

    def __init__(self) -> None:
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

    # -- what the checks compare with the model (avcm.lowlevel.HardwareView) -----------------

    def hardware_active(self) -> bool:
        return self.enabled

    def hardware_mappings(self) -> Iterator[lowlevel.Extent]:
        for vaddr, (paddr, order) in self.entries.items():
            yield vaddr, paddr, avcm.PAGE_SIZE << order


def make(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A context of 256 MiB of device addresses at 0x1000_0000 over *memory*: the factory the
    stress harness and the conformance suite take (``examples.page_table_driver:make``)."""
    return avcm.mmu_init(0x1000_0000, 256 << 20, PageTables(), memory=memory, name="pagetables")


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
        assert not tables.entries and not tables.enabled  # the last deactivate cleared them
        await res.destroy_binding()
    assert memory.free_bytes == memory.size  # rule 9: nothing leaked
    print("done: nothing leaked")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
