"""A one-to-one driver for avcm's O2O wrapper: a device without an MMU, which sees physical
addresses, given memory from a region carved out of RAM.

The wrapper makes every reservation the same range as its memory (``reserve`` alone is
``EOPNOTSUPP``; ``alloc`` + ``map`` or ``make_binding`` make the pair) and releases a block only
when both its memory and its reservation are gone. The driver is an allocator: ``alloc`` sets
the part's start and returns a token, ``free`` gives the block back.

Run it::

    python -m examples.one_to_one_driver [--backend trio]
    python -m stress --driver examples.one_to_one_driver:make
    python -m avcm.testing conformance examples.one_to_one_driver:make
"""

from __future__ import annotations

import argparse

import anyio
import anyio.lowlevel

import avcm
from avcm import lowlevel

__all__ = ["RegionAllocator", "make"]

REGION_ORDER = 10  # one buddy block of 4 MiB


class RegionAllocator:
    """Blocks of one carved-out region (taken from the physical memory's buddy allocator, so
    nothing else is handed the same bytes), allocated by avcm's own address allocator."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        start = memory.alloc_pages(REGION_ORDER)
        if start is None:
            raise avcm.NoMemoryError(f"no contiguous {avcm.PAGE_SIZE << REGION_ORDER:#x} bytes")
        self.memory = memory
        self.start = start
        self.space = lowlevel.AddressSpace(start, avcm.PAGE_SIZE << REGION_ORDER)
        self.cleaned_up = False

    async def alloc(self, vcm: avcm.Vcm, part: lowlevel.O2oPart, flags: int) -> object:
        await lowlevel.sync_point("region.alloc", vcm)  # names the step in timelines
        await anyio.lowlevel.checkpoint()  # where a real allocator may wait
        try:
            part.start = self.space.allocate(part.size, avcm.PAGE_SIZE)
        except avcm.NoSpaceError:  # the region is full: for memory that is ENOMEM
            raise avcm.NoMemoryError(f"no {part.size:#x} bytes left in the region") from None
        return None  # the token: this allocator needs none, the part says it all

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        await lowlevel.sync_point("region.free", None)
        await anyio.lowlevel.checkpoint()
        self.space.free(part.start, part.size)
        self._release_if_done()

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        # A block bound in another context outlives destroy: the region goes back to RAM
        # when the last block does.
        self.cleaned_up = True
        self._release_if_done()

    def _release_if_done(self) -> None:
        if self.cleaned_up and self.space.is_pristine():
            self.memory.free_pages(self.start, REGION_ORDER)


def make(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A one-to-one context over the whole physical address range of *memory*: the factory the
    stress harness and the conformance suite take (``examples.one_to_one_driver:make``)."""
    allocator = RegionAllocator(memory)
    return avcm.o2o_init(memory.base, memory.size, allocator, memory=memory, name="region")


async def main() -> None:
    memory = avcm.PhysicalMemory(size=64 << 20)
    async with make(memory) as vcm:
        res = await vcm.make_binding(64 << 10)
        assert res.phys is not None
        part = res.phys.parts[0]
        # one-to-one: the device address is the physical address
        print(f"bound {res.bound_size >> 10} KiB at {res.start:#x}, memory at {part.start:#x}")
        try:
            await vcm.reserve(64 << 10)
        except avcm.NotSupportedError as error:
            print(f"reserve alone: {error.strerror}")
        await res.destroy_binding()
    assert memory.free_bytes == memory.size  # rule 9: nothing leaked
    print("done: nothing leaked")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    anyio.run(main, backend=parser.parse_args().backend)
