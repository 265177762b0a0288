"""The sample CPU (VMM) context: the CPU's own page tables, 4 KiB pages only.

Any phys can be mapped into it, so one buffer is seen by an IOMMU device, a one-to-one device
and the CPU at once; the CPU reads and writes it with :func:`drivers.hardware(vcm).read/write`.
"""

from __future__ import annotations

import avcm

from ._faults import FaultPlan
from ._latency import Latency
from .iommu import create_iommu

__all__ = ["create_cpu"]


def create_cpu(
    memory: avcm.PhysicalMemory | None = None,
    *,
    start: int = 0x4000_0000,
    size: int = 1 << 30,
    latency: Latency | None = None,
    faults: FaultPlan | None = None,
    name: str = "cpu",
) -> avcm.Vcm:
    """A CPU address space ``start..start+size`` with 4 KiB pages over *memory*."""
    return create_iommu(
        memory, start=start, size=size, orders=(0,), latency=latency, faults=faults, name=name
    )
