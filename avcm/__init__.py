"""avcm: the Linux Virtual Contiguous Memory framework (VCMM) as an async library on anyio.

Contexts (:class:`Vcm`) are address spaces devices see; reservations (:class:`Res`) are ranges
of them; :class:`Phys` is physical memory; binding a phys to a reservation and activating the
context puts the mapping in the hardware. Every operation that may wait is a coroutine and runs
unchanged on asyncio and trio. The contract is ``docs/contract.md``; drivers are in
``drivers/``.

This namespace is the contract only: the objects, their operations, the errors and the warning,
the wrappers' constructors (:func:`mmu_init`, :func:`o2o_init`), :func:`phys_alloc` and
:func:`phys_walk` over :class:`PhysicalMemory`, and the statistics records. What a driver
writer needs on top of it (driver interfaces, the factories a driver makes reservations and
phys with, the mutex and atomic counter, the sync hook, the address allocator) is in
:mod:`avcm.lowlevel`; the checks that judge a run (the model check, the quiescent invariants)
and the race finder are in :mod:`avcm.testing`, which ``import avcm`` does not import.
"""

from . import lowlevel
from ._core import Phys, PhysPart, PhysStatistics, Res, Vcm, VcmStatistics
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
from ._mmu import mmu_init
from ._o2o import o2o_init
from ._phys import phys_alloc, phys_walk
from ._sync import MutexStatistics

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "AddressInUseError",
    "AlreadyBoundError",
    "BusyError",
    "InvalidError",
    "MemoryStatistics",
    "MutexStatistics",
    "NoMemoryError",
    "NoSpaceError",
    "NotSupportedError",
    "Phys",
    "PhysPart",
    "PhysStatistics",
    "PhysicalMemory",
    "Res",
    "Vcm",
    "VcmError",
    "VcmStatistics",
    "VcmWarning",
    "lowlevel",
    "mmu_init",
    "o2o_init",
    "phys_alloc",
    "phys_walk",
]

__version__ = "0.1.0"
