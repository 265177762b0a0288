"""The sample IOMMU: a device behind page tables with 1 MiB, 64 KiB and 4 KiB pages."""

from __future__ import annotations

from collections.abc import Sequence

import avcm
from avcm.lowlevel import quote, resolve_memory

from ._faults import FaultPlan
from ._latency import Latency
from ._pagetable import PageTableMmu

__all__ = ["create_iommu", "hardware"]


def create_iommu(
    memory: avcm.PhysicalMemory | None = None,
    *,
    start: int = 0x1000_0000,
    size: int = 1 << 30,
    orders: Sequence[int] = (8, 4, 0),
    latency: Latency | None = None,
    faults: FaultPlan | None = None,
    name: str = "iommu",
) -> avcm.Vcm:
    """An IOMMU context: device addresses ``start..start+size`` over *memory*.

    *orders* are the page sizes the page tables take (1 MiB, 64 KiB, 4 KiB by default);
    *latency* defaults to the ``"default"`` profile, *faults* to none. The hardware is
    :func:`hardware(vcm) <hardware>`. ``EINVAL`` for a bad range or bad orders.
    """
    ram = resolve_memory(memory, "create_iommu")
    mmu = PageTableMmu(ram, orders=orders, latency=latency, faults=faults, name=name)
    return avcm.mmu_init(start, size, mmu, memory=ram, name=name)


def hardware(vcm: avcm.Vcm) -> PageTableMmu:
    """The simulated MMU behind a context made by :func:`create_iommu` or ``create_cpu``;
    ``EINVAL`` for anything else."""
    if not isinstance(vcm, avcm.Vcm):
        raise avcm.InvalidError(f"hardware: {quote(vcm)} is not a context")
    driver = vcm.driver
    if not isinstance(driver, avcm.lowlevel.MmuWrapper) or not isinstance(driver.hw, PageTableMmu):
        raise avcm.InvalidError(f"{vcm.name} is not a sample page-table context")
    return driver.hw
