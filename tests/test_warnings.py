"""Every :class:`avcm.VcmWarning` names the user's line, not a line of avcm.

Whatever path leads to the warning (the public method itself, another public method that
reuses it, the exit of an ``async with``), its ``filename`` and ``lineno`` are those of the
call in this file.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Awaitable, Callable

import pytest

import avcm
import drivers
from tests._recording import make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20
ZERO = drivers.Latency.profile("zero")


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=32 * MiB)


def next_line() -> int:
    """The number of the line after the caller's."""
    return sys._getframe(1).f_lineno + 1


def assert_all_here(caught: pytest.WarningsRecorder, line: int) -> None:
    assert len(caught) > 0
    for warning in caught:
        assert issubclass(warning.category, avcm.VcmWarning)
        assert (warning.filename, warning.lineno) == (__file__, line), str(warning.message)


# Each: make the situation in a fresh core context, return the call that warns.
Setup = Callable[[avcm.Vcm], Awaitable[Callable[[], Awaitable[object]]]]


async def unbind_unbound(vcm: avcm.Vcm) -> Callable[[], Awaitable[object]]:
    return (await vcm.reserve(4096)).unbind


async def destroy_binding_unbound(vcm: avcm.Vcm) -> Callable[[], Awaitable[object]]:
    return (await vcm.reserve(4096)).destroy_binding


async def unmap_unbound(vcm: avcm.Vcm) -> Callable[[], Awaitable[object]]:
    return (await vcm.reserve(4096)).unmap


async def unreserve_bound(vcm: avcm.Vcm) -> Callable[[], Awaitable[object]]:
    return (await vcm.make_binding(4096)).unreserve


async def deactivate_unactivated(vcm: avcm.Vcm) -> Callable[[], Awaitable[object]]:
    return vcm.deactivate


async def destroy_live(vcm: avcm.Vcm) -> Callable[[], Awaitable[object]]:
    await vcm.make_binding(4096)
    await vcm.activate()
    return vcm.destroy


SETUPS: dict[str, Setup] = {
    "unbind of an unbound res": unbind_unbound,
    "destroy_binding of an unbound res": destroy_binding_unbound,
    "unmap of an unbound res": unmap_unbound,
    "unreserve of a bound res": unreserve_bound,
    "deactivate without activate": deactivate_unactivated,
    "destroy while activated, with live objects": destroy_live,
}


@pytest.mark.parametrize("case", list(SETUPS))
async def test_warning_names_the_callers_line(memory: avcm.PhysicalMemory, case: str) -> None:
    vcm, _ = make_context(memory)
    call = await SETUPS[case](vcm)
    with pytest.warns(avcm.VcmWarning) as caught:
        line = next_line()
        await call()
    assert_all_here(caught, line)


async def test_destroy_of_a_phys_bound_elsewhere_names_the_callers_line(
    memory: avcm.PhysicalMemory,
) -> None:
    here = drivers.create_iommu(memory, latency=ZERO, name="here")
    there = drivers.create_cpu(memory, latency=ZERO, name="there")
    phys = await here.alloc(4096)
    elsewhere = await there.map(phys)
    with pytest.warns(avcm.VcmWarning) as caught:
        line = next_line()
        await here.destroy()
    assert any("bound in another context" in str(warning.message) for warning in caught)
    assert_all_here(caught, line)
    await elsewhere.destroy_binding()
    await there.destroy()


async def test_async_with_vcm_exit_names_the_with_line(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    with pytest.warns(avcm.VcmWarning, match="still has") as caught:
        line = next_line()
        async with vcm:
            await vcm.reserve(4096)
    assert_all_here(caught, line)


async def test_activated_exit_names_the_with_line(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    with pytest.warns(avcm.VcmWarning, match="not activated") as caught:
        line = next_line()
        async with vcm.activated():
            await vcm.deactivate()  # one too many: the exit's deactivate warns
    assert_all_here(caught, line)


async def test_warnings_of_one_line_are_shown_once_there(memory: avcm.PhysicalMemory) -> None:
    """Attributed to the user's line, the default filter shows a repeated warning once per
    line of user code, not once for all of avcm."""
    vcm, _ = make_context(memory)
    res = await vcm.reserve(4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default", avcm.VcmWarning)
        for _ in range(3):
            await res.unbind()
        await res.unbind()
    assert len(caught) == 2
    assert len({warning.lineno for warning in caught}) == 2
