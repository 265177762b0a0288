"""The sample one-to-one driver: a contiguous carve-out of physical memory and its allocator.

The region is taken out of the physical memory's buddy allocator when the context is made, so
nothing else can be handed the same bytes; inside it, blocks are allocated best fit (the
smallest hole that fits, lowest address on ties) and coalesce on free. ``ENOMEM`` when the
region is full, or fragmented so that no hole is large enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import avcm
from avcm.lowlevel import AddressSpace, quote, resolve_memory

from ._faults import FaultPlan
from ._latency import Latency
from ._options import driver_options

__all__ = ["CarveoutAllocator", "CarveoutStatistics", "create_carveout"]

MAX_CARVEOUT_BLOCKS = 1 << 16
_LARGE_PAGES = (64 << 10, 1 << 20)  # what mixed_alignment aligns to
"""A region is taken in blocks of the memory's largest order, at most this many (256 GiB in
4 MiB blocks): a bound on the work of making one, whatever the memory's size."""


@dataclass(frozen=True, slots=True)
class CarveoutStatistics:
    name: str
    region_start: int
    region_size: int
    free_bytes: int
    allocations: int


class CarveoutAllocator:
    """The one-to-one driver (``alloc``/``free``/``cleanup``) over one carved-out region.

    Each allocation takes the top of the best-fitting hole, aligned to 4 KiB: its memory is
    rarely aligned to a large page. With *mixed_alignment*, every other allocation is aligned
    instead to the largest page (1 MiB, 64 KiB) not above its size, as an allocator aligning to
    a block's order does: memory another context maps then meets both, and a 124 KiB block
    starts on a 64 KiB boundary and ends a page short of the next.

    If the context is destroyed while a block is still allocated (a phys bound in another
    context survives destroy), the region goes back to the physical memory when that last
    block is freed.
    """

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        size: int,
        *,
        latency: Latency | None = None,
        faults: FaultPlan | None = None,
        name: str = "carveout",
        mixed_alignment: bool = False,
    ) -> None:
        self.latency, self.faults, self.name = driver_options(latency, faults, name, "carveout")
        if not isinstance(mixed_alignment, bool):
            raise avcm.InvalidError(
                f"carveout: mixed_alignment must be a bool, not {quote(mixed_alignment)}"
            )
        self.mixed_alignment = mixed_alignment
        self._allocations = 0
        self.memory = resolve_memory(memory, "carveout")
        self._blocks = self._carve(self.memory, size)
        self.start = self._blocks[0][0]
        self.size = size
        self._space = AddressSpace(self.start, size)
        self._cleaned_up = False

    @staticmethod
    def _carve(memory: avcm.PhysicalMemory, size: int) -> list[tuple[int, int]]:
        """Take *size* contiguous bytes from the buddy allocator, in blocks as large as it has."""
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise avcm.InvalidError(f"carveout: size must be a positive int, not {quote(size)}")
        if size & (avcm.PAGE_SIZE - 1):
            raise avcm.InvalidError(f"carveout: size {size:#x} is not page aligned")
        block_order = min(memory.max_order, size.bit_length() - 1 - avcm.PAGE_SHIFT)
        block = avcm.PAGE_SIZE << block_order
        if size % block:
            raise avcm.InvalidError(
                f"carveout: size {size:#x} must be a multiple of {block:#x} (a buddy block)"
            )
        if size // block > MAX_CARVEOUT_BLOCKS:
            raise avcm.InvalidError(
                f"carveout: size {size:#x} is over {MAX_CARVEOUT_BLOCKS} blocks of {block:#x}"
            )
        if size > memory.free_bytes:
            raise avcm.NoMemoryError(f"carveout: {size:#x} bytes is more than {memory!r} has")
        blocks: list[tuple[int, int]] = []
        for _ in range(size // block):
            start = memory.alloc_pages(block_order)
            if start is None or (blocks and start != blocks[-1][0] + block):
                if start is not None:
                    memory.free_pages(start, block_order)
                for taken, order in blocks:
                    memory.free_pages(taken, order)
                raise avcm.NoMemoryError(
                    f"carveout: no contiguous {size:#x} bytes left in {memory!r}"
                )
            blocks.append((start, block_order))
        return blocks

    def __repr__(self) -> str:
        return f"<CarveoutAllocator {self.name} {self.start:#x}+{self.size:#x}>"

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        self.faults.check("alloc", self.name)
        await self.latency.sleep("alloc", self)
        alignment = avcm.PAGE_SIZE
        if self.mixed_alignment:
            self._allocations += 1
            if self._allocations % 2 == 0:
                alignment = max(
                    (page for page in _LARGE_PAGES if page <= part.size), default=alignment
                )
        try:
            part.start = self._space.allocate(part.size, alignment)
        except avcm.NoSpaceError:
            raise avcm.NoMemoryError(
                f"{self.name}: no hole of {part.size:#x} bytes "
                f"({self._space.free_bytes:#x} bytes free in the region)"
            ) from None
        return part.start

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        self.faults.check("free", self.name)
        await self.latency.sleep("free", self)
        self._space.free(part.start, part.size)
        if self._cleaned_up and self._space.is_pristine():
            self._release_region()

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        self._cleaned_up = True
        if self._space.is_pristine():
            self._release_region()

    def _release_region(self) -> None:
        for start, order in self._blocks:
            self.memory.free_pages(start, order)
        self._blocks = []

    def read(self, addr: int, length: int) -> bytes:
        """Device read at a physical address (one-to-one: device address == physical)."""
        return self.memory.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)

    def statistics(self) -> CarveoutStatistics:
        return CarveoutStatistics(
            name=self.name,
            region_start=self.start,
            region_size=self.size,
            free_bytes=self._space.free_bytes,
            allocations=self._space.live,
        )


def create_carveout(
    memory: avcm.PhysicalMemory | None = None,
    *,
    size: int = 16 << 20,
    latency: Latency | None = None,
    faults: FaultPlan | None = None,
    name: str = "carveout",
    mixed_alignment: bool = False,
) -> avcm.Vcm:
    """A one-to-one context over a *size*-byte region carved out of *memory*.

    ``ENOMEM`` if the memory has no contiguous region that large; ``EINVAL`` for a bad size
    or *mixed_alignment* (see :class:`CarveoutAllocator`). The allocator is
    ``vcm.driver.hw``.
    """
    ram = resolve_memory(memory, "create_carveout")
    allocator = CarveoutAllocator(
        ram, size, latency=latency, faults=faults, name=name, mixed_alignment=mixed_alignment
    )
    try:
        return avcm.o2o_init(allocator.start, size, allocator, memory=ram, name=name)
    except BaseException:
        allocator._release_region()
        raise
