"""The core API, row by row of the contract's error table, warnings and the documented examples."""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any

import pytest

import avcm
from avcm import testing
from tests._recording import DriverFault, RecordingDriver, make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20
KiB = 1 << 10


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=64 * MiB)


def snapshot(vcm: avcm.Vcm, memory: avcm.PhysicalMemory) -> tuple[Any, ...]:
    """Everything an operation could change, comparable before and after."""
    stats = vcm.statistics()
    return (
        stats.activations,
        stats.destroyed,
        tuple((r.start, r.res_size, r.bound_size, r.phys) for r in vcm.reservations()),
        tuple((p, p.bindings, p.freed) for p in vcm.allocations()),
        memory.statistics(),
    )


# -- construction (vcm_init) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "size"),
    [
        (0, 0),
        (0, -4096),
        (1, 4096),
        (0, 4097),
        (0, 1.5),
        (True, 4096),
        ("0", 4096),
        (1 << 64, 4096),
        ((1 << 64) - 4096, 8192),
    ],
)
async def test_init_rejects_bad_range(
    memory: avcm.PhysicalMemory, start: object, size: object
) -> None:
    with pytest.raises(avcm.InvalidError) as info:
        avcm.Vcm(start, size, RecordingDriver(memory))  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


async def test_init_requires_unreserve(memory: avcm.PhysicalMemory) -> None:
    with pytest.raises(avcm.InvalidError, match="unreserve"):
        make_context(memory, "unreserve")


async def test_init_rejects_non_callable_op(memory: avcm.PhysicalMemory) -> None:
    driver = RecordingDriver(memory)
    driver.bind = 42  # type: ignore[assignment,method-assign]
    with pytest.raises(avcm.InvalidError, match="bind 42 is not a coroutine function"):
        avcm.Vcm(0, 4096, driver)


CORE_OPS = ["unreserve", "cleanup", "res", "phys", "bind", "unbind", "activate", "deactivate"]


@pytest.mark.parametrize("name", CORE_OPS)
async def test_init_refuses_an_operation_that_is_not_a_coroutine_function(
    memory: avcm.PhysicalMemory, name: str
) -> None:
    """A plain ``def`` returning the coroutine would work when awaited, but avcm cannot tell a
    plain ``def`` that does from one that does not: both are refused when the context is made,
    not at their first use."""
    driver = RecordingDriver(memory)
    real = getattr(driver, name)

    def plain(*args: object) -> object:
        return real(*args)

    setattr(driver, name, plain)
    with pytest.raises(avcm.InvalidError, match=f"{name} .* is not a coroutine function") as info:
        avcm.Vcm(0, 4096, driver)
    assert info.value.errno == errno.EINVAL


class AsyncCallable:
    """A driver operation as an object whose ``__call__`` is ``async def``."""

    def __init__(self, op: Callable[..., Awaitable[Any]]) -> None:
        self.op = op

    async def __call__(self, *args: Any) -> Any:
        return await self.op(*args)


async def test_init_accepts_partials_and_async_callable_objects(
    memory: avcm.PhysicalMemory,
) -> None:
    driver = RecordingDriver(memory)

    async def bind(driver: RecordingDriver, res: avcm.Res, phys: avcm.Phys) -> None:
        await RecordingDriver.bind(driver, res, phys)

    driver.bind = functools.partial(bind, driver)  # type: ignore[method-assign]
    driver.activate = AsyncCallable(driver.activate)  # type: ignore[method-assign]
    vcm = avcm.Vcm(0x1000_0000, 64 * MiB, driver, name="test")
    res = await vcm.make_binding(4096)
    async with vcm.activated():
        assert driver.active and res in driver.mapped
    await res.destroy_binding()


async def test_phys_free_callback_must_be_a_coroutine_function() -> None:
    def free(phys: avcm.Phys) -> None:
        pass

    with pytest.raises(avcm.InvalidError, match=r"free callback .* is not a coroutine function"):
        avcm.lowlevel.create_phys([(0x8000_0000, 4096)], free=free)  # type: ignore[arg-type]


# -- the error table ---------------------------------------------------------------------------

BAD_SIZES = [0, -1, 1.0, "4096", None, True]


@pytest.mark.parametrize("size", BAD_SIZES)
@pytest.mark.parametrize("op", ["alloc", "reserve", "make_binding"])
async def test_bad_size_is_einval_and_changes_nothing(
    memory: avcm.PhysicalMemory, op: str, size: object
) -> None:
    vcm, _ = make_context(memory)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.InvalidError) as info:
        await getattr(vcm, op)(size)
    assert info.value.errno == errno.EINVAL
    assert "size" in str(info.value)
    assert snapshot(vcm, memory) == before


FLAG_CALLS: dict[str, Callable[[avcm.Vcm, avcm.Phys, Any], Awaitable[object]]] = {
    "alloc": lambda vcm, phys, flags: vcm.alloc(4096, flags),
    "reserve": lambda vcm, phys, flags: vcm.reserve(4096, flags),
    "map": lambda vcm, phys, flags: vcm.map(phys, flags),
    "make_binding alloc_flags": lambda vcm, phys, flags: vcm.make_binding(4096, flags, 0),
    "make_binding res_flags": lambda vcm, phys, flags: vcm.make_binding(4096, 0, flags),
}


@pytest.mark.parametrize("flags", [-1, 1.5, None, "0", True])
@pytest.mark.parametrize("call", list(FLAG_CALLS))
async def test_bad_flags_are_einval_and_change_nothing(
    memory: avcm.PhysicalMemory, call: str, flags: object
) -> None:
    # A context with something in it, active: a half-done call would show somewhere.
    vcm, driver = make_context(memory)
    await vcm.make_binding(8 * KiB)
    spare = await vcm.alloc(4 * KiB)
    await vcm.activate()
    before = snapshot(vcm, memory)
    free_bytes = memory.free_bytes
    hardware = (driver.active, dict(driver.mapped), list(driver.calls), driver.space.live)
    with pytest.raises(avcm.InvalidError, match="flags") as info:
        await FLAG_CALLS[call](vcm, spare, flags)
    assert info.value.errno == errno.EINVAL
    assert snapshot(vcm, memory) == before
    assert memory.free_bytes == free_bytes and vcm.activations == 1
    assert (driver.active, driver.mapped, driver.calls, driver.space.live) == hardware
    assert spare.bindings == 0 and not spare.freed


async def test_sizes_round_up_to_a_page(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.reserve(1)
    phys = await vcm.alloc(4097)
    assert res.res_size == avcm.PAGE_SIZE
    assert phys.size == 2 * avcm.PAGE_SIZE


async def test_bind_same_phys_twice_is_ealready(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.make_binding(8 * KiB)
    assert res.phys is not None
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.AlreadyBoundError) as info:
        await res.bind(res.phys)
    assert info.value.errno == errno.EALREADY
    assert snapshot(vcm, memory) == before


async def test_bind_over_another_phys_is_eaddrinuse(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.make_binding(8 * KiB)
    other = await vcm.alloc(8 * KiB)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.AddressInUseError) as info:
        await res.bind(other)
    assert info.value.errno == errno.EADDRINUSE
    assert snapshot(vcm, memory) == before
    assert other.bindings == 0


async def test_bind_of_larger_phys_is_enospc(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.reserve(4 * KiB)
    phys = await vcm.alloc(8 * KiB)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.NoSpaceError) as info:
        await res.bind(phys)
    assert info.value.errno == errno.ENOSPC
    assert snapshot(vcm, memory) == before


@pytest.mark.parametrize(
    ("hidden", "op"),
    [("bind", "bind"), ("res", "reserve"), ("phys", "alloc"), ("bind", "map")],
)
async def test_missing_driver_op_is_eopnotsupp(
    memory: avcm.PhysicalMemory, hidden: str, op: str
) -> None:
    vcm, _ = make_context(memory, hidden)
    helper, _ = make_context(memory)
    res = await helper.reserve(4096) if op == "bind" else None
    phys = await helper.alloc(4096) if op in ("bind", "map") else None
    if op == "bind":
        res = await vcm.reserve(4096)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.NotSupportedError) as info:
        if op == "bind":
            assert res is not None and phys is not None
            await res.bind(phys)
        elif op == "map":
            assert phys is not None
            await vcm.map(phys)
        else:
            await getattr(vcm, op)(4096)
    assert info.value.errno == errno.EOPNOTSUPP
    assert snapshot(vcm, memory) == before


async def test_exhausted_address_space_is_enospc(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.NoSpaceError):
        await vcm.reserve(vcm.size + avcm.PAGE_SIZE)
    assert snapshot(vcm, memory) == before


async def test_exhausted_memory_is_enomem_and_leaks_nothing(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, _ = make_context(memory)
    await vcm.alloc(60 * MiB)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.NoMemoryError) as info:
        await vcm.make_binding(8 * MiB)
    assert info.value.errno == errno.ENOMEM
    # the patch returned an uninitialised pointer here and leaked the reservation
    assert snapshot(vcm, memory) == before
    assert vcm.driver.space.live == 0  # type: ignore[attr-defined]


async def test_free_of_bound_phys_is_ebusy_and_keeps_it(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.make_binding(4096)
    phys = res.phys
    assert phys is not None
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.BusyError) as info:
        await phys.free()
    assert info.value.errno == errno.EBUSY
    assert snapshot(vcm, memory) == before
    assert not phys.freed
    assert await res.unbind() is phys
    await phys.free()
    assert phys.freed


async def test_double_free_is_einval(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    phys = await vcm.alloc(4096)
    await phys.free()
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.InvalidError, match="freed"):
        await phys.free()
    assert snapshot(vcm, memory) == before


async def test_use_after_free_is_einval(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    phys = await vcm.alloc(4096)
    res = await vcm.reserve(4096)
    await phys.free()
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.InvalidError, match="freed"):
        await res.bind(phys)
    with pytest.raises(avcm.InvalidError, match="freed"):
        await vcm.map(phys)
    assert snapshot(vcm, memory) == before


@pytest.mark.parametrize("op", ["bind", "unbind", "unreserve", "unmap", "destroy_binding"])
async def test_use_after_unreserve_is_einval(memory: avcm.PhysicalMemory, op: str) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    await res.unreserve()
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.InvalidError, match="unreserved"):
        await (res.bind(phys) if op == "bind" else getattr(res, op)())
    assert snapshot(vcm, memory) == before


@pytest.mark.parametrize(
    "op", ["alloc", "reserve", "make_binding", "map", "activate", "deactivate", "destroy", "bind"]
)
async def test_use_after_destroy_is_einval(memory: avcm.PhysicalMemory, op: str) -> None:
    vcm, _ = make_context(memory)
    other, _ = make_context(memory)
    phys = await other.alloc(4096)
    res = await vcm.reserve(4096)
    with pytest.warns(avcm.VcmWarning, match="1 reservation"):
        await vcm.destroy()
    with pytest.raises(avcm.InvalidError) as info:
        if op == "map":
            await vcm.map(phys)
        elif op == "bind":
            await res.bind(phys)
        elif op in ("alloc", "reserve", "make_binding"):
            await getattr(vcm, op)(4096)
        else:
            await getattr(vcm, op)()
    assert info.value.errno == errno.EINVAL


async def test_driver_refusing_foreign_phys_reaches_caller(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    other, _ = make_context(memory)
    res = await vcm.reserve(4096)
    foreign = await other.alloc(4096)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.NotSupportedError, match="another context"):
        await res.bind(foreign)
    assert snapshot(vcm, memory) == before
    assert foreign.bindings == 0


@pytest.mark.parametrize("op", ["bind", "activate", "phys", "res", "unbind", "deactivate"])
async def test_driver_fault_reaches_caller_and_changes_nothing(
    memory: avcm.PhysicalMemory, op: str
) -> None:
    vcm, driver = make_context(memory)
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    if op in ("unbind", "deactivate"):
        await res.bind(phys)
        await vcm.activate()
    before = snapshot(vcm, memory)
    hardware = (driver.active, dict(driver.mapped))
    driver.fail[op] = DriverFault(errno.EIO, f"injected {op} fault")
    with pytest.raises(DriverFault, match="injected"):
        if op == "bind":
            await res.bind(phys)
        elif op == "unbind":
            await res.unbind()
        elif op == "phys":
            await vcm.alloc(4096)
        elif op == "res":
            await vcm.reserve(4096)
        else:
            await getattr(vcm, op)()
    assert snapshot(vcm, memory) == before
    assert (driver.active, driver.mapped) == hardware
    testing.check_model(vcm)


# -- warnings: the kernel's WARN_ON cases that go on working -----------------------------------


async def test_unbind_of_unbound_warns_and_returns_none(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.reserve(4096)
    with pytest.warns(avcm.VcmWarning, match="not bound"):
        assert await res.unbind() is None


async def test_deactivate_without_activate_warns_and_never_underflows(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = make_context(memory)
    with pytest.warns(avcm.VcmWarning, match="not activated"):
        await vcm.deactivate()
    assert vcm.activations == 0
    assert "deactivate" not in driver.calls
    await vcm.activate()
    assert vcm.activations == 1 and driver.active


async def test_unreserve_of_bound_res_warns_unbinds_and_releases(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = make_context(memory)
    res = await vcm.make_binding(4096)
    phys = res.phys
    assert phys is not None
    with pytest.warns(avcm.VcmWarning, match="still bound"):
        await res.unreserve()
    assert phys.bindings == 0
    assert res.unreserved and res.phys is None
    assert driver.calls[-2:] == ["unbind", "unreserve"]
    await phys.free()
    assert memory.is_pristine()


async def test_destroy_while_activated_warns_and_deactivates(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    await vcm.activate()
    await vcm.activate()
    with pytest.warns(avcm.VcmWarning, match="still activated"):
        await vcm.destroy()
    assert vcm.activations == 0
    assert not driver.active and driver.cleaned_up
    assert driver.calls.count("deactivate") == 1


async def test_destroy_without_deactivate_op(memory: avcm.PhysicalMemory) -> None:
    # The patch called driver->deactivate without checking that the driver had one.
    vcm, _driver = make_context(memory, "deactivate")
    await vcm.activate()
    with pytest.warns(avcm.VcmWarning, match="still activated"):
        await vcm.destroy()
    assert vcm.activations == 0 and vcm.destroyed


async def test_destroy_with_live_objects_releases_everything(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    await vcm.make_binding(MiB + 68 * KiB)
    await vcm.reserve(4096)
    await vcm.alloc(8192)
    await vcm.activate()
    with pytest.warns(avcm.VcmWarning):
        await vcm.destroy()
    assert memory.is_pristine()
    assert driver.space.is_pristine()
    assert not driver.mapped and not driver.active
    assert vcm.reservations() == () and vcm.allocations() == ()


async def test_destroy_keeps_phys_bound_in_another_context(memory: avcm.PhysicalMemory) -> None:
    owner, _ = make_context(memory)
    user = avcm.Vcm(
        0x2000_0000, 16 * MiB, RecordingDriver(memory, start=0x2000_0000, accept_foreign=True)
    )
    phys = await owner.alloc(4096)
    res = await user.map(phys)
    with pytest.warns(avcm.VcmWarning) as caught:
        await owner.destroy()
    assert any("bound in another context" in str(w.message) for w in caught)
    assert not phys.freed and phys.bindings == 1
    await res.unmap()
    await phys.free()
    await user.destroy()
    assert memory.is_pristine()


async def test_async_with_destroys(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    async with vcm as entered:
        assert entered is vcm
        res = await vcm.make_binding(4096)
        await res.destroy_binding()
    assert vcm.destroyed and driver.cleaned_up


async def test_activated_context_manager(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    async with vcm.activated():
        assert vcm.activations == 1 and driver.active
        async with vcm.activated():
            assert vcm.activations == 2
        assert driver.active
    assert vcm.activations == 0 and not driver.active


# -- operations ------------------------------------------------------------------------------


async def test_bind_sets_phys_and_bound_size(memory: avcm.PhysicalMemory) -> None:
    # The patch's vcm_bind swapped success and failure and never set res->phys.
    vcm, driver = make_context(memory)
    res = await vcm.reserve(16 * KiB)
    phys = await vcm.alloc(8 * KiB)
    await res.bind(phys)
    assert res.phys is phys and res.bound_size == 8 * KiB and res.res_size == 16 * KiB
    assert phys.bindings == 1
    assert driver.mapped == {res: phys}
    assert await res.unbind() is phys
    assert res.phys is None and res.bound_size == 0 and phys.bindings == 0


async def test_activation_binds_reach_hardware(memory: avcm.PhysicalMemory) -> None:
    vcm, _driver = make_context(memory)
    res = await vcm.make_binding(64 * KiB)
    await vcm.activate()
    testing.check_model(vcm)
    second = await vcm.make_binding(4 * KiB)
    testing.check_model(vcm)
    await second.destroy_binding()
    testing.check_model(vcm)
    await vcm.deactivate()
    testing.check_model(vcm)
    await res.destroy_binding()
    assert memory.is_pristine()


async def test_map_and_unmap(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    phys = await vcm.alloc(12 * KiB)
    res = await vcm.map(phys)
    assert res.phys is phys and res.res_size == 12 * KiB and phys.bindings == 1
    await res.unmap()
    assert res.unreserved and phys.bindings == 0
    await phys.free()
    assert memory.is_pristine() and driver.space.is_pristine()


async def test_unmap_of_unbound_warns_and_unreserves(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    res = await vcm.reserve(4096)
    with pytest.warns(avcm.VcmWarning, match="not bound"):
        await res.unmap()
    assert res.unreserved and driver.space.is_pristine()


async def test_destroy_binding_refuses_phys_bound_elsewhere(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.make_binding(4096)
    assert res.phys is not None
    other = await vcm.map(res.phys)
    before = snapshot(vcm, memory)
    with pytest.raises(avcm.BusyError, match="other reservation"):
        await res.destroy_binding()
    assert snapshot(vcm, memory) == before
    await other.unmap()
    await res.destroy_binding()
    assert memory.is_pristine()


async def test_phys_shape(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    phys = await vcm.alloc(2 * MiB + 68 * KiB)
    assert phys.count == 4 == len(phys.parts)
    assert phys.size == sum(part.size for part in phys.parts) == 2 * MiB + 68 * KiB
    assert [part.size for part in phys.parts] == [MiB, MiB, 64 * KiB, 4 * KiB]
    assert phys.vcm is vcm


async def test_statistics_are_a_snapshot(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    await vcm.make_binding(4096)
    await vcm.reserve(4096)
    await vcm.activate()
    stats = vcm.statistics()
    assert (stats.activations, stats.reservations, stats.bound_reservations, stats.phys) == (
        1,
        2,
        1,
        1,
    )
    assert not stats.mutex.locked and stats.operations_in_flight == 0
    with pytest.raises(AttributeError):
        stats.activations = 3  # type: ignore[misc]


async def test_errors_are_oserrors_with_errno() -> None:
    error = avcm.BusyError("free: busy")
    assert isinstance(error, OSError) and isinstance(error, avcm.VcmError)
    assert error.errno == errno.EBUSY and error.strerror == "free: busy"
    assert str(error) == "[EBUSY] free: busy"


async def test_an_error_class_without_an_errno_shows_its_message() -> None:
    # a driver's own error class, raised with only a message, is shown by its message (in a
    # stress report, say), not as "[errno 0] None"
    class Fault(avcm.VcmError):
        pass

    assert str(Fault("device 3 timed out")) == "device 3 timed out"
    assert str(avcm.VcmError(errno.EIO, "bus error")) == "[EIO] bus error"


# -- the documentation's device-driver example -------------------------------------------------


class FooDevice:
    """``foo_probe`` / ``foo_remove`` from the patch's documentation, as a test."""

    def __init__(self, vcm: avcm.Vcm) -> None:
        self.vcm = vcm
        self.fw: avcm.Res | None = None

    async def probe(self) -> None:
        self.fw = await self.vcm.make_binding(1 << 20)
        # copy firmware to fw ...
        await self.vcm.activate()

    async def do_something(self, size: int) -> int:
        buf = await self.vcm.make_binding(size)
        try:
            return buf.start  # the address visible from the device's perspective
        finally:
            await buf.destroy_binding()

    async def remove(self) -> None:
        assert self.fw is not None
        await self.vcm.deactivate()
        await self.fw.destroy_binding()


async def test_device_driver_example(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    foo = FooDevice(vcm)
    await foo.probe()
    assert foo.fw is not None and foo.fw.phys is not None
    assert foo.fw.bound_size == 1 << 20
    assert driver.active and driver.mapped == {foo.fw: foo.fw.phys}
    address = await foo.do_something(64 * KiB)
    assert vcm.start <= address < vcm.start + vcm.size
    testing.check_model(vcm)
    await foo.remove()
    assert vcm.activations == 0 and not driver.active
    await vcm.destroy()
    assert memory.is_pristine() and driver.space.is_pristine()


# -- driver faults in teardown: every error leaves every object as it was (rule 8) -------------


async def bound_with_faults(
    memory: avcm.PhysicalMemory, *ops: str, active: bool = False
) -> tuple[avcm.Vcm, RecordingDriver, avcm.Res, avcm.Phys]:
    """A context with one bound reservation; the next call of each of *ops* fails."""
    vcm, driver = make_context(memory)
    res = await vcm.make_binding(8 * KiB)
    assert res.phys is not None
    if active:
        await vcm.activate()
    for op in ops:
        driver.fail[op] = DriverFault(errno.EIO, f"injected {op} fault")
    return vcm, driver, res, res.phys


@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("op", ["unreserve", "unmap"])
async def test_failing_unreserve_of_bound_res_keeps_it_bound(
    memory: avcm.PhysicalMemory, op: str, active: bool
) -> None:
    vcm, driver, res, phys = await bound_with_faults(memory, "unreserve", active=active)
    before = snapshot(vcm, memory)
    hardware = (driver.active, dict(driver.mapped))
    with pytest.raises(DriverFault, match="injected"):
        if op == "unreserve":
            with pytest.warns(avcm.VcmWarning, match="still bound"):
                await res.unreserve()
        else:
            await res.unmap()
    assert snapshot(vcm, memory) == before
    assert res.phys is phys and not res.unreserved and phys.bindings == 1
    assert (driver.active, driver.mapped) == hardware
    testing.check_model(vcm)
    await res.unmap()  # the fault was one call: now it goes through
    assert res.unreserved and phys.bindings == 0 and driver.space.is_pristine()


async def test_failing_unreserve_and_failing_rebind_leave_it_unbound(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver, res, phys = await bound_with_faults(memory, "unreserve", "bind")
    with pytest.raises(DriverFault, match="unreserve fault") as info:
        await res.unmap()
    assert any("left unbound" in note for note in info.value.__notes__)
    assert not avcm.lowlevel.undo_failed(info.value)  # contained: consistent, if unbound
    assert res.phys is None and not res.unreserved and phys.bindings == 0
    assert driver.mapped == {}
    testing.check_model(vcm)
    await res.unreserve()
    await phys.free()
    assert memory.is_pristine() and driver.space.is_pristine()


class FlakyFree:
    """A phys free callback that fails its first call, having freed nothing."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        self.inner = avcm.phys_alloc(4096, 0, (0,), memory=memory)
        self.failures = 1

    async def __call__(self, phys: avcm.Phys) -> None:
        if self.failures:
            self.failures -= 1
            raise DriverFault(errno.EIO, "injected free fault")
        await self.inner.free()

    def phys(self) -> avcm.Phys:
        return avcm.lowlevel.create_phys(self.inner.parts, free=self, memory=self.inner.memory)


async def test_destroy_binding_with_failing_free_changes_nothing(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = make_context(memory)
    await vcm.activate()
    res = await vcm.reserve(4096)
    phys = FlakyFree(memory).phys()
    await res.bind(phys)
    before = snapshot(vcm, memory)
    hardware = (driver.active, dict(driver.mapped))
    with pytest.raises(DriverFault, match="free fault"):
        await res.destroy_binding()
    assert snapshot(vcm, memory) == before
    assert res.phys is phys and phys.bindings == 1 and not phys.freed
    assert (driver.active, driver.mapped) == hardware
    testing.check_model(vcm)
    await res.destroy_binding()
    assert phys.freed and res.unreserved
    await vcm.deactivate()
    assert memory.is_pristine() and driver.space.is_pristine()


async def test_destroy_binding_with_failing_unreserve_says_what_is_left(
    memory: avcm.PhysicalMemory,
) -> None:
    # Freeing and unreserving are both for good: the memory stays freed, the res reserved.
    vcm, driver, res, phys = await bound_with_faults(memory, "unreserve")
    with pytest.raises(DriverFault, match="unreserve fault") as info:
        await res.destroy_binding()
    assert any("stays reserved, unbound" in note for note in info.value.__notes__)
    assert phys.freed and phys.bindings == 0 and res.phys is None and not res.unreserved
    assert vcm.reservations() == (res,) and vcm.allocations() == ()
    testing.check_model(vcm)
    await res.unreserve()
    assert memory.is_pristine() and driver.space.is_pristine()


@pytest.mark.parametrize("op", ["deactivate", "unbind", "unreserve", "free", "cleanup"])
async def test_destroy_with_a_driver_fault_can_be_retried(
    memory: avcm.PhysicalMemory, op: str
) -> None:
    """Destroy releases all it can, raises the driver's error, leaves the context live with
    what it could not release (nothing stuck "dying"), and a second destroy finishes."""
    driver = RecordingDriver(memory)
    allocate = driver.phys

    async def phys(vcm: avcm.Vcm, size: int, flags: int) -> avcm.Phys:
        return FlakyFree(memory).phys() if op == "free" else await allocate(vcm, size, flags)

    driver.phys = phys  # type: ignore[method-assign]
    vcm = avcm.Vcm(0x1000_0000, 64 * MiB, driver, name="test")
    bound = await vcm.make_binding(4096)
    spare = await vcm.reserve(4096)
    await vcm.activate()
    if op != "free":
        driver.fail[op] = DriverFault(errno.EIO, f"injected {op} fault")
    with pytest.warns(avcm.VcmWarning), pytest.raises(DriverFault, match="injected") as info:
        await vcm.destroy()
    assert any(note.startswith("destroy:") for note in info.value.__notes__)
    assert not vcm.destroyed and not vcm.statistics().mutex.locked
    assert not driver.cleaned_up and (driver.calls[-1] == "cleanup") == (op == "cleanup")
    testing.check_model(vcm)
    left = {
        "deactivate": (1, 0, 0),  # still active; every reservation and phys released
        "unbind": (0, 1, 1),  # the reservation whose unbind failed stays bound, with its phys
        "unreserve": (0, 1, 0),  # bound's unreserve failed: it stays reserved, unbound
        "free": (0, 0, 1),  # the phys whose free failed
        "cleanup": (0, 0, 0),
    }[op]
    assert (vcm.activations, len(vcm.reservations()), len(vcm.allocations())) == left
    assert driver.active == bool(vcm.activations)
    assert spare.unreserved and bound.unreserved == (op not in ("unbind", "unreserve"))
    await (await vcm.reserve(4096)).unreserve()  # a live context: creations work again
    with pytest.warns(avcm.VcmWarning) if any(left) else nullcontext():
        await vcm.destroy()
    assert vcm.destroyed and driver.cleaned_up and not driver.active
    assert memory.is_pristine() and driver.space.is_pristine()


async def test_destroy_raises_the_first_fault_and_notes_the_others(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = make_context(memory)
    await vcm.make_binding(4096)
    await vcm.activate()
    driver.fail["deactivate"] = DriverFault(errno.EIO, "injected deactivate fault")
    driver.fail["unreserve"] = DriverFault(errno.EIO, "injected unreserve fault")
    with pytest.warns(avcm.VcmWarning), pytest.raises(DriverFault, match="deactivate") as info:
        await vcm.destroy()
    assert any("unreserve fault" in note for note in info.value.__notes__)
    assert "cleanup" not in driver.calls
    with pytest.warns(avcm.VcmWarning):
        await vcm.destroy()
    assert vcm.destroyed and memory.is_pristine() and driver.space.is_pristine()
