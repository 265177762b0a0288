"""The contexts a stress run drives: the sample drivers, or a driver under test (``--driver``).

A :class:`Context` wraps a :class:`avcm.Vcm` with what the checks need to see of its hardware:
whether it is active, and the device's view of memory (read and write at a device address).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import inspect
import os
import random
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import avcm
import drivers
from avcm.lowlevel import undo_failed

from ._config import StressConfig, UsageError

__all__ = [
    "Context",
    "DeviceFault",
    "DriverFaults",
    "WatchedMemory",
    "build_context",
    "build_contexts",
    "is_injected_fault",
    "raised_by_driver",
    "watching_allocations",
]


_allocation_watch: ContextVar[Callable[[], None] | None] = ContextVar(
    "stress_allocation_watch", default=None
)


class WatchedMemory(avcm.PhysicalMemory):
    """The run's physical memory: a block taken with :meth:`alloc_pages` (a driver's own, a
    page-table page) is told to the watch of the task taking it (:func:`watching_allocations`)
    once it is taken."""

    def alloc_pages(self, order: int) -> int | None:
        start = super().alloc_pages(order)
        watch = _allocation_watch.get()
        if watch is not None and start is not None:
            watch()
        return start


@contextlib.contextmanager
def watching_allocations(watch: Callable[[], None]) -> Iterator[None]:
    """Call *watch* at each block this task (and the tasks it starts meanwhile) takes of a
    :class:`WatchedMemory`."""
    token = _allocation_watch.set(watch)
    try:
        yield
    finally:
        _allocation_watch.reset(token)


def is_injected_fault(error: BaseException) -> bool:
    return isinstance(error, drivers.InjectedFault)


# avcm and the harness itself: an error raised in neither was raised by a driver
_OURS = tuple(
    os.path.dirname(os.path.abspath(module.__file__ or "")) + os.sep
    for module in (avcm, sys.modules[__name__.rpartition(".")[0]])
)


def raised_by_driver(error: BaseException) -> bool:
    """Whether *error* was raised in a driver's own code (where its traceback ends): rule 8
    lets a driver call fail, and the error reaches the caller as the driver raised it."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OURS)


def refused(error: BaseException) -> bool:
    """Whether the driver itself failed a call (rule 8) and undid it: no injected fault,
    which is by chance, but what it may refuse again."""
    return raised_by_driver(error) and not is_injected_fault(error) and not undo_failed(error)


@runtime_checkable
class Device(Protocol):
    """A driver's device side: reads and writes at device addresses."""

    def read(self, address: int, length: int, /) -> bytes: ...

    def write(self, address: int, data: bytes, /) -> None: ...


class DeviceFault(Exception):
    """A device access that did not reach memory. The contract does not say what a driver's
    ``read`` or ``write`` raises for an address it cannot translate (the sample drivers raise
    a :class:`avcm.VcmError`, another driver an ``OSError`` or a ``LookupError``): whatever it
    raises is the device's fault, right where the model maps nothing, a violation where it
    maps memory."""

    def __init__(self, ctx: Context, address: int, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.address = address


class FaultSwitch(Protocol):
    """What the harness needs of a fault injector: whether it injects, and to stop it."""

    enabled: bool

    def disable(self) -> None: ...


class DriverFaults:
    """``--faults`` for contexts of a driver under test: the harness has no fault plan inside
    a driver it did not write, so it fails the driver's setup calls from outside. As a sync
    hook it raises :class:`drivers.InjectedFault` (``EIO``) at a
    :data:`avcm.lowlevel.SETUP_SYNC_POINTS` point of one of its contexts with probability
    *rate*: that driver call fails before the driver runs, as if the driver had raised."""

    def __init__(self, vcms: Iterable[avcm.Vcm], rate: float, seed: int) -> None:
        self._vcms = set(vcms)
        self._rate = rate
        self._random = random.Random(seed)
        self.enabled = True
        self.injected = 0

    def disable(self) -> None:
        self.enabled = False

    def watch(self, vcms: Iterable[avcm.Vcm]) -> None:
        """Fail these contexts' setup calls from now on (contexts built anew), not those before."""
        self._vcms = set(vcms)

    async def __call__(self, point: str, obj: object) -> None:
        if point not in avcm.lowlevel.SETUP_SYNC_POINTS:
            return
        vcm = obj.vcm if isinstance(obj, avcm.Res) else obj
        # drawn for every setup call of these contexts, injected or not: the random stream
        # does not depend on whether faults are paused (drains)
        if vcm in self._vcms and self._random.random() < self._rate and self.enabled:
            self.injected += 1
            raise drivers.InjectedFault(errno.EIO, f"stress: {point} of {vcm!r} fails (--faults)")


@dataclass
class Context:
    kind: str
    name: str
    vcm: avcm.Vcm
    one_to_one: bool
    memory: avcm.PhysicalMemory
    faults: FaultSwitch | None = None
    index: int = 0  # among the contexts of its kind

    @functools.cached_property
    def hardware(self) -> object:
        driver = self.vcm.driver
        if isinstance(driver, (avcm.lowlevel.MmuWrapper, avcm.lowlevel.O2oWrapper)):
            return driver.hw
        return driver

    @functools.cached_property
    def _view(self) -> avcm.lowlevel.HardwareView | None:
        # a runtime protocol check is slow, and a context's hardware never changes: once
        hardware = self.hardware
        return hardware if isinstance(hardware, avcm.lowlevel.HardwareView) else None

    def hardware_active(self) -> bool:
        view = self._view
        if view is not None:
            return view.hardware_active()
        return self.vcm.activations > 0  # nothing to observe: take the model's word

    @functools.cached_property
    def has_device(self) -> bool:
        """Whether the hardware offers device reads and writes (``read``/``write``)."""
        return self._device is not None

    @functools.cached_property
    def translated(self) -> bool:
        """Whether device addresses go through a translation the checks can probe: a device
        behind an MMU. One-to-one devices reach physical memory at every address."""
        return not self.one_to_one and self.has_device

    def mutex_held(self) -> bool:
        """Whether some operation holds the context's mutex, and so may be changing what its
        hardware shows: everything that does (bind, unbind, activate, deactivate,
        unreserve...) runs under it. While it is free nothing in flight can change them."""
        return self.vcm.statistics().mutex.locked

    @functools.cached_property
    def _device(self) -> Device | None:
        hardware = self.hardware
        return hardware if isinstance(hardware, Device) else None

    def device_read(self, address: int, length: int) -> bytes:
        """The device reads at *address*; :class:`DeviceFault` if it cannot."""
        device = self._device
        if device is None:  # pragma: no cover - has_device checks
            raise TypeError(f"{self.name} has no device view")
        try:
            return device.read(address, length)
        except Exception as error:
            raise DeviceFault(self, address, error) from error

    def device_faults(self, address: int, length: int, *, write: bool = True) -> bool:
        """Whether a device read at *address* fails (whatever it raises), and so does a write
        of zeros there: neither reaches memory. For the probes that expect a fault, without
        making a :class:`DeviceFault` of the error. Both kinds of access: a device's read and
        write engines may each keep their own walk of the table, and one an unmap forgot is
        seen by its own kind of access only (attack52). (A write that goes through lands in
        memory the model does not bind there: the probe reports it.) Not *write*: the read
        alone (an access that starts in memory still bound, where a write may land)."""
        device = self._device
        if device is None:  # pragma: no cover - has_device checks
            raise TypeError(f"{self.name} has no device view")
        try:
            device.read(address, length)
        except Exception:
            if not write:
                return True
            try:
                device.write(address, bytes(length))
            except Exception:
                return True
        return False

    def device_write(self, address: int, data: bytes) -> None:
        """The device writes at *address*; :class:`DeviceFault` if it cannot."""
        device = self._device
        if device is None:  # pragma: no cover - has_device checks
            raise TypeError(f"{self.name} has no device view")
        try:
            device.write(address, data)
        except Exception as error:
            raise DeviceFault(self, address, error) from error

    def address_space(self) -> Any:
        driver = self.vcm.driver
        return driver.space if isinstance(driver, avcm.lowlevel.MmuWrapper) else None

    def stop_faults(self) -> None:
        if self.faults is not None:
            self.faults.disable()

    @contextlib.contextmanager
    def faults_paused(self) -> Iterator[None]:
        """No injected fault in the block (the harness's own drains must not fail), then as
        before. Calls are still counted, so the run stays the same whichever way."""
        plan = self.faults
        if plan is None or not plan.enabled:
            yield
            return
        plan.enabled = False
        try:
            yield
        finally:
            plan.enabled = True


def _sample_factory(kind: str) -> Callable[..., avcm.Vcm]:
    factories: dict[str, Callable[..., avcm.Vcm]] = {
        "iommu": drivers.create_iommu,
        "carveout": drivers.create_carveout,
        "cpu": drivers.create_cpu,
    }
    return factories[kind]


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--driver {spec!r}: expected MODULE:FACTORY")
    # `python -m stress` finds a module in the current directory, the avcm-stress script
    # would not: look there too (last, so that it shadows nothing installed)
    if not {"", os.curdir, os.getcwd()} & set(sys.path):
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UsageError(f"--driver {spec!r}: cannot import {module_name}: {error}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UsageError(f"--driver {spec!r}: {module_name} has no callable {attribute}")
    return factory  # type: ignore[no-any-return]


async def _call_factory(spec: str, memory: avcm.PhysicalMemory) -> avcm.Vcm:
    factory = _import_factory(spec)
    try:
        made = factory(memory)
        if inspect.isawaitable(made):
            made = await made
    except Exception as error:
        raise UsageError(
            f"--driver {spec!r}: the factory failed: {error!r} (with --driver the harness makes "
            "several contexts on one memory: --contexts custom=N for as many as it can make)"
        ) from None
    if not isinstance(made, avcm.Vcm):
        raise UsageError(f"--driver {spec!r} returned {made!r}, not an avcm.Vcm")
    return made


async def build_contexts(config: StressConfig, memory: avcm.PhysicalMemory) -> list[Context]:
    contexts: list[Context] = []
    for kind, count in config.contexts:
        for index in range(count):
            ctx = await build_context(config, memory, kind, index)
            if any(other.vcm is ctx.vcm for other in contexts):
                # two names for one context would double-count every check of it
                raise UsageError(
                    f"--driver {config.driver!r} returned the same context twice: each "
                    f"call must make a new one (or run one: --contexts custom=1)"
                )
            contexts.append(ctx)
    custom = [ctx for ctx in contexts if ctx.kind == "custom"]
    if custom and config.faults:
        seed = zlib.crc32(f"{config.seed}:custom faults".encode())
        driver_faults = DriverFaults((ctx.vcm for ctx in custom), config.faults, seed)
        for ctx in custom:
            ctx.faults = driver_faults
    return contexts


async def build_context(
    config: StressConfig, memory: avcm.PhysicalMemory, kind: str, index: int, generation: int = 0
) -> Context:
    """Context *index* of *kind*, made on *memory*; *generation* counts the contexts built in
    its place before (the harness destroys one now and then, and builds it anew): a sample
    driver's fault plan and latency are seeded by it. A driver under test gets no fault plan
    here: its ``--faults`` come from outside (:class:`DriverFaults`)."""
    name = f"{kind}{index}"
    if kind == "custom":
        if config.driver is None:  # pragma: no cover - StressConfig checks
            raise UsageError("custom contexts need --driver")
        vcm = await _call_factory(config.driver, memory)
        one_to_one = isinstance(vcm.driver, avcm.lowlevel.O2oWrapper)
        return Context(kind, name, vcm, one_to_one, memory, index=index)
    # str hashes differ per process; a seed must not.
    key = f"{config.seed}:{kind}:{index}" + (f":{generation}" if generation else "")
    seed = zlib.crc32(key.encode())
    faults = drivers.FaultPlan(seed=seed)
    if config.faults:
        faults.fail_randomly(probability=config.faults)
    latency = drivers.Latency.profile(config.latency, seed=seed)
    try:
        vcm = _sample_factory(kind)(
            memory, latency=latency, faults=faults, name=name, **_placement(kind, index)
        )
    except avcm.VcmError as error:
        raise UsageError(f"--contexts: cannot make {name}: {error}") from None
    return Context(kind, name, vcm, kind == "carveout", memory, faults, index)


def _placement(kind: str, index: int) -> dict[str, int]:
    """Separate address ranges, so contexts of one kind do not look alike in traces."""
    if kind == "carveout":
        # memory another context maps meets both misaligned parts and aligned ones whose
        # tails end a page short of a large page
        return {"mixed_alignment": True}
    return {"start": (0x1000_0000 if kind == "iommu" else 0x4000_0000) + index * (1 << 30)}
