"""Sample drivers that simulate hardware for avcm, latency and faults included.

- :func:`create_iommu`: a device behind an IOMMU with 1 MiB, 64 KiB and 4 KiB pages;
- :func:`create_cpu`: the CPU's own page tables (4 KiB pages), to see buffers from the CPU;
- :func:`create_carveout`: a one-to-one device over a carved-out contiguous region.

Every factory takes the :class:`avcm.PhysicalMemory` to work in (the process default if
omitted), a :class:`Latency` and a :class:`FaultPlan`. :func:`hardware` gives the simulated MMU
of an IOMMU or CPU context (``translate``, device ``read``/``write``, ``statistics()``).
"""

from ._faults import FAULTABLE, FaultPlan, FaultStatistics, InjectedFault
from ._latency import PROFILES, Latency
from ._pagetable import IommuFault, PageTableMmu, PageTableStatistics
from .carveout import CarveoutAllocator, CarveoutStatistics, create_carveout
from .cpu import create_cpu
from .iommu import create_iommu, hardware

__all__ = [
    "FAULTABLE",
    "PROFILES",
    "CarveoutAllocator",
    "CarveoutStatistics",
    "FaultPlan",
    "FaultStatistics",
    "InjectedFault",
    "IommuFault",
    "Latency",
    "PageTableMmu",
    "PageTableStatistics",
    "create_carveout",
    "create_cpu",
    "create_iommu",
    "hardware",
]
