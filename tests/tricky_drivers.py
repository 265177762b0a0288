"""Correct drivers that do what the contract allows in ways the sample drivers do not: each
must get no violation from the stress harness (``tests/test_stress.py``)."""

from __future__ import annotations

import errno
import random

import avcm
from drivers import Latency, PageTableMmu

ZERO = Latency.profile("zero")


class _Flaky(PageTableMmu):
    """Fails one page activation in 20 with a plain ``OSError(EIO)``, having done nothing:
    rule 8 lets any driver call fail, and the error reaches the caller as raised."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="flaky")
        self._random = random.Random(0)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if self._random.random() < 0.05:
            raise OSError(errno.EIO, "activate_page: bus error")
        await super().activate_page(vaddr, paddr, order, vcm)


class _Honest(PageTableMmu):
    """Its status register shows translation off while a page write is under way (a driver
    call in flight), and device faults are plain ``LookupError``s: both allowed."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=Latency.profile("default"))
        self._writing = 0

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._writing += 1
        try:
            await super().activate_page(vaddr, paddr, order, vcm)
        finally:
            self._writing -= 1

    def hardware_active(self) -> bool:
        return super().hardware_active() and not self._writing

    def read(self, addr: int, length: int) -> bytes:
        try:
            return super().read(addr, length)
        except avcm.VcmError as fault:
            raise LookupError(f"no translation at {addr:#x}") from fault


def flaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Flaky(memory), memory=memory, name="flaky")


def honest(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Honest(memory), memory=memory, name="honest")
