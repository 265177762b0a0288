"""A faithful port of the 2010 patch's core algorithms, races and all: the race finder's target.

``vcm_activate``, ``vcm_deactivate``, ``vcm_bind`` and ``vcm_free`` as ``mm/vcm.c`` wrote them,
on atomic counters that checkpoint before every operation (a kernel can be preempted before any
atomic instruction; an async Python task only at a checkpoint, so the port makes one there) and
a driver whose every call takes time. The *code* bugs that make the functions wrong even on one
CPU (``vcm_bind``'s inverted tests, ``res->phys`` never set) are fixed here, so that what
remains are the *design* races the contract lists. Kept in the tests: this is what avcm must
not be.
"""

from __future__ import annotations

import errno
import warnings

import anyio
import anyio.lowlevel

import avcm
from avcm.lowlevel import sync_point


class SeedAtomic(avcm.lowlevel.AtomicCounter):
    """``atomic_t`` as a CPU runs it: another CPU, or a preemption, may come before each
    operation. avcm's own counter yields nowhere: each operation here checkpoints first."""

    async def _preemptible(self, operation: str) -> None:
        await sync_point(f"atomic.{operation}", self)
        await anyio.lowlevel.checkpoint()

    async def read(self) -> int:
        await self._preemptible("read")
        return await super().read()

    async def set(self, value: int) -> None:
        await self._preemptible("set")
        await super().set(value)

    async def add_return(self, delta: int) -> int:
        await self._preemptible("add_return")
        return await super().add_return(delta)

    async def add_unless(self, delta: int, unless: int) -> bool:
        await self._preemptible("add_unless")
        return await super().add_unless(delta, unless)


class SeedDriver:
    """Hardware behind the port: every call is a sync point and takes time."""

    def __init__(self, delay: float = 1e-6) -> None:
        self.delay = delay
        self.active = False
        self.mapped: dict[SeedRes, SeedPhys] = {}
        self.fail_activate = 0  # how many activate calls fail next

    async def _call(self, name: str) -> None:
        await sync_point(f"seed.{name}", self)
        if self.delay:
            await anyio.sleep(self.delay)
        else:  # a call takes no time, but a CPU can still be preempted before it
            await anyio.lowlevel.checkpoint()

    async def activate(self) -> int:
        await self._call("activate")
        if self.fail_activate:
            self.fail_activate -= 1
            return -errno.EIO
        self.active = True
        return 0

    async def deactivate(self) -> None:
        await self._call("deactivate")
        self.active = False

    async def bind(self, res: SeedRes, phys: SeedPhys) -> int:
        await self._call("bind")
        self.mapped[res] = phys
        return 0

    async def free(self, phys: SeedPhys) -> None:
        await self._call("free")
        phys.freed = True


class SeedVcm:
    """``struct vcm`` with the patch's ``vcm_activate`` and ``vcm_deactivate``."""

    def __init__(self, driver: SeedDriver) -> None:
        self.driver = driver
        self.activations_counter = SeedAtomic(0, "seed.activations")

    @property
    def activations(self) -> int:
        return self.activations_counter.value

    async def activate(self) -> int:
        # if (atomic_inc_return(&vcm->activations) != 1 || !vcm->driver->activate) return 0;
        # else return vcm->driver->activate(vcm);
        if await self.activations_counter.inc_return() != 1:
            return 0
        return await self.driver.activate()

    async def deactivate(self) -> None:
        # if (!WARN_ON(!atomic_read(&vcm->activations))
        #     && atomic_dec_and_test(&vcm->activations) && vcm->driver->deactivate)
        #         vcm->driver->deactivate(vcm);
        if await self.activations_counter.read() == 0:
            warnings.warn("seed: deactivate without activate", avcm.VcmWarning, stacklevel=2)
            return
        if await self.activations_counter.dec_and_test():
            await self.driver.deactivate()


class SeedPhys:
    """``struct vcm_phys`` and ``vcm_free``."""

    def __init__(self, driver: SeedDriver, size: int = avcm.PAGE_SIZE) -> None:
        self.driver = driver
        self.size = size
        self.bindings_counter = SeedAtomic(0, "seed.bindings")
        self.freed = False

    @property
    def bindings(self) -> int:
        return self.bindings_counter.value

    async def free(self) -> None:
        # if (!WARN_ON(!phys || atomic_read(&phys->bindings)) && phys->free) phys->free(phys);
        if await self.bindings_counter.read():
            warnings.warn("seed: free of a bound phys", avcm.VcmWarning, stacklevel=2)
            return
        await self.driver.free(self)


class SeedRes:
    """``struct vcm_res`` and ``vcm_bind``, with its code bugs fixed and its design kept."""

    def __init__(self, driver: SeedDriver, res_size: int = avcm.PAGE_SIZE) -> None:
        self.driver = driver
        self.res_size = res_size
        self.phys: SeedPhys | None = None

    async def bind(self, phys: SeedPhys) -> None:
        # The patch has no notion of a freed phys; the port checks, unlocked, what avcm's
        # contract adds (EINVAL on use after free), so that only the race remains.
        if phys.freed:
            raise avcm.InvalidError("seed: phys was freed")
        if self.phys is phys:
            raise avcm.AlreadyBoundError("seed: already bound")
        if self.phys is not None:
            raise avcm.AddressInUseError("seed: another phys is bound")
        if phys.size > self.res_size:
            raise avcm.NoSpaceError("seed: phys too large")
        await phys.bindings_counter.inc()
        ret = await self.driver.bind(self, phys)
        if ret:
            await phys.bindings_counter.dec()
            raise avcm.VcmError(-ret, "seed: driver bind failed")
        self.phys = phys
