"""Objects only their context or driver makes, and only live objects of a context are accepted.

``Res``, ``Phys``, ``O2oPart`` and the wrappers have no public constructor (``EINVAL``);
drivers use the factories of ``avcm.lowlevel`` (``create_res``, ``create_phys``). A reservation
a driver made but never handed to its context is not one of the context's: every operation
refuses it with ``EINVAL`` and nothing changes (before, unreserving such a copy of a live
reservation gave the live one's addresses away). The attributes that describe an object are
read-only.
"""

from __future__ import annotations

import copy
import errno
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import avcm
import drivers
from avcm import testing
from tests._recording import RecordingDriver, make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20
KiB = 1 << 10
ZERO = drivers.Latency.profile("zero")


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=32 * MiB)


@pytest.fixture(params=["core", "mmu"])
def vcm(request: pytest.FixtureRequest, memory: avcm.PhysicalMemory) -> avcm.Vcm:
    if request.param == "core":
        return make_context(memory)[0]
    return drivers.create_iommu(memory, latency=ZERO, name="iommu")


CONSTRUCTORS: dict[str, Callable[[avcm.Vcm, avcm.PhysicalMemory], object]] = {
    "Res": lambda vcm, memory: avcm.Res(vcm, 0x1000_0000, 4096),
    "Phys": lambda vcm, memory: avcm.Phys([(0x8000_0000, 4096)]),
    "O2oPart": lambda vcm, memory: avcm.lowlevel.O2oPart(0, 4096),
    "MmuWrapper": lambda vcm, memory: avcm.lowlevel.MmuWrapper(object(), 0, 4096, memory),  # type: ignore[arg-type]
    "O2oWrapper": lambda vcm, memory: avcm.lowlevel.O2oWrapper(object(), memory),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
async def test_no_public_constructor(vcm: avcm.Vcm, memory: avcm.PhysicalMemory, name: str) -> None:
    public = f"avcm.{name}" if name in ("Res", "Phys") else f"avcm.lowlevel.{name}"
    with pytest.raises(avcm.InvalidError, match=f"^.*{public} has no public constructor") as info:
        CONSTRUCTORS[name](vcm, memory)
    assert info.value.errno == errno.EINVAL


def snapshot(vcm: avcm.Vcm) -> tuple[Any, ...]:
    return (
        vcm.activations,
        tuple((r, r.start, r.res_size, r.phys, r.bound_size) for r in vcm.reservations()),
        tuple((p, p.bindings, p.freed) for p in vcm.allocations()),
    )


STRANGER_OPS: dict[str, Callable[[avcm.Res, avcm.Phys], Awaitable[object]]] = {
    "unreserve": lambda res, phys: res.unreserve(),
    "unbind": lambda res, phys: res.unbind(),
    "unmap": lambda res, phys: res.unmap(),
    "destroy_binding": lambda res, phys: res.destroy_binding(),
    "bind": lambda res, phys: res.bind(phys),
}


@pytest.mark.parametrize("op", list(STRANGER_OPS))
async def test_a_reservation_the_context_never_got_is_refused(vcm: avcm.Vcm, op: str) -> None:
    """A driver-made copy of a live reservation: refused, and the live one keeps its addresses
    (the next reserve does not get them) and its binding."""
    real = await vcm.make_binding(64 * KiB)
    spare = await vcm.alloc(64 * KiB)
    await vcm.activate()
    stranger = avcm.lowlevel.create_res(vcm, real.start, 64 * KiB)
    before = snapshot(vcm)
    with pytest.raises(avcm.InvalidError, match="not a live reservation") as info:
        await STRANGER_OPS[op](stranger, spare)
    assert info.value.errno == errno.EINVAL
    assert snapshot(vcm) == before and spare.bindings == 0 and stranger.phys is None
    testing.check_model(vcm)
    other = await vcm.reserve(64 * KiB)
    assert not (other.start < real.start + real.res_size and real.start < other.start + 64 * KiB)
    await other.unreserve()
    await vcm.deactivate()
    await real.destroy_binding()
    await spare.free()
    await vcm.destroy()


async def test_a_driver_returning_a_live_reservation_again_is_refused(
    memory: avcm.PhysicalMemory,
) -> None:
    class Repeating(RecordingDriver):
        last: avcm.Res | None = None

        async def res(self, vcm: avcm.Vcm, size: int, flags: int) -> avcm.Res:
            if self.last is None:
                self.last = await super().res(vcm, size, flags)
            return self.last

    vcm = avcm.Vcm(0x1000_0000, 64 * MiB, Repeating(memory), name="repeating")
    first = await vcm.reserve(4096)
    with pytest.raises(avcm.InvalidError, match="returned"):
        await vcm.reserve(4096)
    assert vcm.reservations() == (first,)


async def test_a_driver_returning_a_live_phys_again_is_refused(
    memory: avcm.PhysicalMemory,
) -> None:
    class Repeating(RecordingDriver):
        last: avcm.Phys | None = None

        async def phys(self, vcm: avcm.Vcm, size: int, flags: int) -> avcm.Phys:
            if self.last is None:
                self.last = await super().phys(vcm, size, flags)
            return self.last

    vcm = avcm.Vcm(0x1000_0000, 64 * MiB, Repeating(memory), name="repeating")
    first = await vcm.alloc(4096)
    with pytest.raises(avcm.InvalidError, match="returned"):
        await vcm.alloc(4096)
    assert vcm.allocations() == (first,)


RES_ATTRIBUTES = ["phys", "bound_size", "vcm", "start", "res_size"]
PHYS_ATTRIBUTES = ["vcm", "memory", "size"]


def same(now: object, before: object) -> bool:
    """The same object, or for sizes the same number (a size may be computed at each read)."""
    return now == before if isinstance(before, int) else now is before


@pytest.mark.parametrize("name", RES_ATTRIBUTES)
async def test_res_attributes_are_read_only(vcm: avcm.Vcm, name: str) -> None:
    res = await vcm.make_binding(4096)
    value = getattr(res, name)
    with pytest.raises(AttributeError):
        setattr(res, name, None)
    assert same(getattr(res, name), value)


@pytest.mark.parametrize("name", PHYS_ATTRIBUTES)
async def test_phys_attributes_are_read_only(vcm: avcm.Vcm, name: str) -> None:
    phys = await vcm.alloc(4096)
    value = getattr(phys, name)
    with pytest.raises(AttributeError):
        setattr(phys, name, None)
    assert same(getattr(phys, name), value)


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
async def test_res_and_phys_cannot_be_copied(vcm: avcm.Vcm, how: str) -> None:
    """A copy of a phys could free its memory a second time; of a reservation, give its
    addresses away."""
    copier: Callable[[object], object] = {
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "pickle": pickle.dumps,
    }[how]
    res = await vcm.make_binding(4096)
    for original in (res, res.phys):
        with pytest.raises(avcm.InvalidError, match="cannot be copied") as info:
            copier(original)
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("factory", [drivers.create_iommu, drivers.create_carveout])
async def test_a_wrapper_drives_one_context(
    factory: Callable[..., avcm.Vcm], memory: avcm.PhysicalMemory
) -> None:
    """A second context over the wrapper of a live one would share its address allocator and
    bound list: refused, and the first context goes on as before."""
    first = factory(memory, latency=ZERO)
    with pytest.raises(avcm.InvalidError, match="already drives") as info:
        avcm.Vcm(first.start, first.size, first.driver, name="second")
    assert info.value.errno == errno.EINVAL
    res = await first.make_binding(64 * KiB)
    async with first.activated():
        testing.check_model(first)
    await res.destroy_binding()
    await first.destroy()
    with pytest.raises(avcm.InvalidError, match="already drives"):  # nor once it is destroyed
        avcm.Vcm(first.start, first.size, first.driver)
