"""avcm: the Linux Virtual Contiguous Memory framework (VCMM) as an async library on anyio.

Contexts (:class:`Vcm`) are address spaces devices see; reservations (:class:`Res`) are ranges
of them; :class:`Phys` is physical memory; binding a phys to a reservation and activating the
context puts the mapping in the hardware. Every operation that may wait is a coroutine and runs
unchanged on asyncio and trio. The contract is ``SEMANTICS.md``; drivers are in ``drivers/``.
"""

from ._check import HardwareMismatch, HardwareView, check_model, expected_mappings
from ._core import FreeCallback, Phys, PhysPart, Res, Vcm, VcmDriver, VcmStatistics
from ._errors import (
    AddressInUseError,
    AlreadyBoundError,
    BusyError,
    InvalidError,
    NoMemoryError,
    NoSpaceError,
    NotSupportedError,
    VcmError,
    VcmWarning,
)
from ._memory import PAGE_SHIFT, PAGE_SIZE, MemoryStatistics, PhysicalMemory
from ._mmu import MmuDriver, MmuWrapper, mmu_init
from ._o2o import O2oDriver, O2oPart, O2oWrapper, o2o_init
from ._phys import PageCallback, default_memory, phys_alloc, phys_walk, walk_pages
from ._sync import AtomicCounter, Mutex, MutexStatistics

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "AddressInUseError",
    "AlreadyBoundError",
    "AtomicCounter",
    "BusyError",
    "FreeCallback",
    "HardwareMismatch",
    "HardwareView",
    "InvalidError",
    "MemoryStatistics",
    "MmuDriver",
    "MmuWrapper",
    "Mutex",
    "MutexStatistics",
    "NoMemoryError",
    "NoSpaceError",
    "NotSupportedError",
    "O2oDriver",
    "O2oPart",
    "O2oWrapper",
    "PageCallback",
    "Phys",
    "PhysPart",
    "PhysicalMemory",
    "Res",
    "Vcm",
    "VcmDriver",
    "VcmError",
    "VcmStatistics",
    "VcmWarning",
    "check_model",
    "default_memory",
    "expected_mappings",
    "mmu_init",
    "o2o_init",
    "phys_alloc",
    "phys_walk",
    "walk_pages",
]

__version__ = "0.1.0"
