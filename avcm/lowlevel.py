"""avcm.lowlevel: the machinery for people who build on avcm, not the contract they build on.

Modelled on ``trio.lowlevel``: the top-level :mod:`avcm` namespace is the user contract
(contexts, reservations, phys, the errors and the statistics records); this namespace is what a
*driver writer* or a tool that drives avcm from outside needs on top of it. Nothing here is
needed to use a context; everything here is documented and stable in the same way.

What lives here, and why here:

* **Making objects**: :class:`avcm.Res` and :class:`avcm.Phys` have no public constructor
  (an object avcm did not make could name a live object's addresses); a driver describes what
  it reserved or allocated with :func:`create_res` and :func:`create_phys`.
* **Driver interfaces**: :class:`VcmDriver` (a core driver), :class:`MmuDriver` and
  :class:`O2oDriver` (what :func:`avcm.mmu_init` and :func:`avcm.o2o_init` wrap), the wrappers
  :class:`MmuWrapper` and :class:`O2oWrapper` they put between the core and such a driver (a
  driver's own code sees them as ``vcm.driver``), :class:`O2oPart`, and the callback types
  :data:`FreeCallback` and :data:`PageCallback`.
* **Building blocks** a driver reuses instead of rewriting: :class:`AddressSpace` (the
  O(log n) virtual address allocator the MMU wrapper uses), :func:`walk_pages` (the pages
  :func:`avcm.phys_walk` would visit, without visiting them), :func:`default_memory`, and the
  input checks that make bad input ``EINVAL`` exactly as avcm's own (:func:`check_orders`,
  :func:`check_int`, :func:`resolve_memory` for a factory's ``memory`` argument), plus
  :func:`errno_name` and :func:`quote` (a bad value, cut to a few dozen characters) for
  messages.
* **Synchronisation**: :class:`Mutex` and :class:`AtomicCounter` (``struct mutex`` and
  ``atomic_t``; a mutex's statistics record is :class:`avcm.MutexStatistics`, with the other
  records), :func:`sync_point` (name a place in a driver's code: the race finder labels its
  steps with it, a test injects a fault there) and :func:`sync_hook` (install a hook that runs
  at every sync point: the race finder labels steps, the benchmark adds checkpoints, a test
  injects faults or cancels; :data:`SETUP_SYNC_POINTS` are those right before a driver call
  that sets something up, where a raising hook fails that call). A sync point is not a
  checkpoint: ``avcm.testing`` switches tasks at every checkpoint, whatever primitive it
  belongs to (these, or anyio's own).
* **Seeing the hardware**: :class:`HardwareView` is what a simulating driver implements so
  that the checks can compare its hardware with the model; :func:`hardware_view` finds it for
  a context. The checks themselves (``check_model``, ``check_quiescent``) are in
  :mod:`avcm.testing`: they judge a run, and no driver calls them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._core import FreeCallback, Phys, Res, Vcm, VcmDriver
from ._errors import errno_name, undo_failed, undo_failures
from ._hardware import Extent, HardwareView, hardware_view
from ._memory import PhysicalMemory
from ._mmu import MmuDriver, MmuWrapper
from ._o2o import O2oDriver, O2oPart, O2oWrapper
from ._phys import PageCallback, default_memory, resolve_memory, walk_pages
from ._sync import SETUP_SYNC_POINTS, AtomicCounter, Mutex, SyncHook, sync_hook, sync_point
from ._validate import check_int, check_orders, quote
from ._vaspace import AddressSpace

__all__ = [
    "SETUP_SYNC_POINTS",
    "AddressSpace",
    "AtomicCounter",
    "Extent",
    "FreeCallback",
    "HardwareView",
    "MmuDriver",
    "MmuWrapper",
    "Mutex",
    "O2oDriver",
    "O2oPart",
    "O2oWrapper",
    "PageCallback",
    "SyncHook",
    "VcmDriver",
    "check_int",
    "check_orders",
    "create_phys",
    "create_res",
    "default_memory",
    "errno_name",
    "hardware_view",
    "quote",
    "resolve_memory",
    "sync_hook",
    "sync_point",
    "undo_failed",
    "undo_failures",
    "walk_pages",
]


def create_res(vcm: Vcm, start: int, res_size: int) -> Res:
    """Describe address space a driver reserved in *vcm*: what its ``res``, ``map`` or ``alloc``
    operation returns. ``EINVAL`` unless *vcm* is a context and the range is page aligned,
    non-empty and inside 64-bit addresses. The reservation is live once that operation has
    returned it to the context; one made otherwise is refused by every operation."""
    return Res._create(vcm, start, res_size)


def create_phys(
    parts: Iterable[tuple[int, int]],
    *,
    free: FreeCallback | None = None,
    memory: PhysicalMemory | None = None,
) -> Phys:
    """Describe physical memory a driver allocated, as ``(start, size)`` parts; *free* (a
    coroutine function) is awaited once, when the phys is freed. *memory* is the simulated RAM
    the parts live in, if any (drivers that move bytes check it). ``EINVAL`` unless the parts
    are page aligned, non-empty, inside 64-bit addresses and not overlapping one another."""
    return Phys._create(parts, free=free, memory=memory)
