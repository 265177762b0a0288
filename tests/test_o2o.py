"""The one-to-one wrapper, with a minimal bump allocator as its driver."""

from __future__ import annotations

import errno

import pytest

import avcm
from avcm import testing

pytestmark = pytest.mark.anyio

WINDOW = 0x8000_0000
SIZE = 1 << 20


class Bump:
    """A one-to-one driver: hands out blocks from a window, never reuses them."""

    def __init__(self, fail: bool = False) -> None:
        self.next = WINDOW
        self.freed: list[tuple[avcm.PhysPart, object]] = []
        self.fail = fail
        self.fail_free = 0  # how many of the next frees fail

    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        if self.fail:
            raise avcm.NoMemoryError("bump: out of memory")
        part.start = self.next
        self.next += part.size
        return ("token", part.start)

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        if self.fail_free:
            self.fail_free -= 1
            raise avcm.VcmError(errno.EIO, "bump: free failed")
        self.freed.append((part, token))


@pytest.fixture
def driver() -> Bump:
    return Bump()


@pytest.fixture
def vcm(driver: Bump) -> avcm.Vcm:
    return avcm.o2o_init(WINDOW, SIZE, driver, memory=avcm.PhysicalMemory(size=SIZE))


async def test_make_binding_is_one_to_one(vcm: avcm.Vcm, driver: Bump) -> None:
    res = await vcm.make_binding(12 * 1024)
    assert res.phys is not None and res.phys.count == 1
    assert res.start == res.phys.parts[0].start == WINDOW
    assert res.bound_size == res.res_size == 12 * 1024
    testing.check_model(vcm)
    await res.destroy_binding()
    assert driver.freed == [(avcm.PhysPart(WINDOW, 12 * 1024), ("token", WINDOW))]


async def test_reserve_alone_is_eopnotsupp(vcm: avcm.Vcm) -> None:
    with pytest.raises(avcm.NotSupportedError) as info:
        await vcm.reserve(4096)
    assert info.value.errno == errno.EOPNOTSUPP
    assert vcm.reservations() == ()


async def test_second_map_is_ebusy(vcm: avcm.Vcm) -> None:
    phys = await vcm.alloc(4096)
    res = await vcm.map(phys)
    with pytest.raises(avcm.BusyError) as info:
        await vcm.map(phys)
    assert info.value.errno == errno.EBUSY
    assert phys.bindings == 1 and vcm.reservations() == (res,)


async def test_bind_only_to_own_memory(vcm: avcm.Vcm) -> None:
    mine = await vcm.make_binding(4096)
    other = await vcm.alloc(4096)
    assert await mine.unbind() is not None
    with pytest.raises(avcm.NotSupportedError, match="own memory"):
        await mine.bind(other)
    assert mine.phys is None and other.bindings == 0
    assert mine.phys is None
    phys = vcm.allocations()[0]
    await mine.bind(phys)  # rebinding its own memory works
    assert mine.phys is phys


async def test_foreign_phys_cannot_be_mapped(vcm: avcm.Vcm) -> None:
    stranger = avcm.lowlevel.create_phys([(WINDOW, 4096)])
    with pytest.raises(avcm.NotSupportedError, match="not allocated"):
        await vcm.map(stranger)
    assert stranger.bindings == 0


async def test_memory_released_only_when_both_halves_are_gone(vcm: avcm.Vcm, driver: Bump) -> None:
    res = await vcm.make_binding(4096)
    phys = await res.unbind()
    assert phys is not None
    await phys.free()
    assert driver.freed == []  # the reservation still covers the memory
    await res.unreserve()
    assert len(driver.freed) == 1

    res = await vcm.make_binding(4096)
    phys = res.phys
    assert phys is not None
    await res.unmap()
    assert driver.freed[1:] == []  # the memory is still allocated
    await phys.free()
    assert len(driver.freed) == 2


async def test_remap_after_unmap(vcm: avcm.Vcm) -> None:
    phys = await vcm.alloc(8192)
    first = await vcm.map(phys)
    await first.unmap()
    second = await vcm.map(phys)
    assert second is not first and second.start == first.start
    assert first.unreserved and not second.unreserved


async def test_failed_allocation_never_frees(driver: Bump) -> None:
    # The patch passed an uninitialised token to free when the allocation failed.
    failing = Bump(fail=True)
    vcm = avcm.o2o_init(WINDOW, SIZE, failing, memory=avcm.PhysicalMemory(size=SIZE))
    with pytest.raises(avcm.NoMemoryError):
        await vcm.make_binding(4096)
    assert failing.freed == [] and vcm.allocations() == () and vcm.reservations() == ()


async def test_driver_returning_a_block_outside_the_window_is_einval() -> None:
    class Wild(Bump):
        async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
            part.start = WINDOW + SIZE
            return "wild"

    wild = Wild()
    vcm = avcm.o2o_init(WINDOW, SIZE, wild, memory=avcm.PhysicalMemory(size=SIZE))
    with pytest.raises(avcm.InvalidError, match="inside"):
        await vcm.alloc(4096)
    assert wild.freed == [(avcm.PhysPart(WINDOW + SIZE, 4096), "wild")]
    assert vcm.allocations() == ()


async def test_o2o_init_requires_alloc_and_free() -> None:
    class NoFree:
        async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
            return None

    with pytest.raises(avcm.InvalidError, match="free"):
        avcm.o2o_init(WINDOW, SIZE, NoFree())  # type: ignore[arg-type]
    with pytest.raises(avcm.InvalidError):
        avcm.o2o_init(WINDOW + 1, SIZE, Bump())


async def test_destroy_releases_everything(vcm: avcm.Vcm, driver: Bump) -> None:
    await vcm.make_binding(4096)
    await vcm.alloc(4096)
    with pytest.warns(avcm.VcmWarning, match="releasing"):
        await vcm.destroy()
    assert len(driver.freed) == 2
    assert isinstance(vcm.driver, avcm.lowlevel.O2oWrapper) and vcm.driver.pairs == 0


@pytest.mark.parametrize("last", ["unreserve", "free"])
async def test_failing_driver_free_changes_nothing_and_can_be_retried(
    vcm: avcm.Vcm, driver: Bump, last: str
) -> None:
    # The wrapper used to forget the pair before the driver's free ran: a retry then raised
    # KeyError and the block leaked.
    res = await vcm.make_binding(4096)
    phys = await res.unbind()
    assert phys is not None and isinstance(vcm.driver, avcm.lowlevel.O2oWrapper)
    await (phys.free() if last == "unreserve" else res.unreserve())  # the first half goes
    release = res.unreserve if last == "unreserve" else phys.free
    driver.fail_free = 1
    with pytest.raises(avcm.VcmError, match="free failed"):
        await release()
    assert driver.freed == [] and vcm.driver.pairs == 1
    assert not res.unreserved if last == "unreserve" else not phys.freed
    await release()
    assert len(driver.freed) == 1 and vcm.driver.pairs == 0
    assert res.unreserved and phys.freed
    assert vcm.reservations() == () and vcm.allocations() == ()


@pytest.mark.parametrize("name", ["alloc", "free", "cleanup"])
async def test_o2o_init_refuses_an_operation_that_is_not_a_coroutine_function(name: str) -> None:
    driver = Bump()

    def plain(*args: object) -> None:
        pass

    setattr(driver, name, plain)
    with pytest.raises(avcm.InvalidError, match=f"{name} .* is not a coroutine function") as info:
        avcm.o2o_init(WINDOW, SIZE, driver)
    assert info.value.errno == errno.EINVAL


async def test_destroy_binding_whose_allocator_free_fails_says_what_is_left(
    vcm: avcm.Vcm, driver: Bump
) -> None:
    """Documented partial effect: the block goes back to the allocator only once both halves
    are gone, in the unreserve step; if that free fails, the phys is freed, the reservation
    stays reserved and unbound (keeping the block), and unreserve() retries the free."""
    res = await vcm.make_binding(4096)
    phys = res.phys
    assert phys is not None and isinstance(vcm.driver, avcm.lowlevel.O2oWrapper)
    driver.fail_free = 1
    with pytest.raises(avcm.VcmError, match="free failed") as info:
        await res.destroy_binding()
    assert any("stays reserved, unbound" in note for note in info.value.__notes__)
    assert phys.freed and res.phys is None and not res.unreserved
    assert vcm.reservations() == (res,) and vcm.allocations() == ()
    assert driver.freed == [] and vcm.driver.pairs == 1
    testing.check_model(vcm)
    await res.unreserve()
    assert len(driver.freed) == 1 and vcm.driver.pairs == 0 and vcm.reservations() == ()
