"""Closing completes even when cancelled (trio's ``aclose`` rule): ``destroy()``, the exit of
``async with vcm:`` and the exit of ``async with vcm.activated():``. A cancelled closer still
closes, and the cancellation is delivered once it is done; a plain ``deactivate()`` stays an
ordinary operation (cancelled while it waits: no effect).

Nothing here is timed: a gated driver call holds the context's mutex (or keeps a creation in
flight) until the test opens the gate.
"""

from __future__ import annotations

import errno

import anyio
import anyio.lowlevel
import pytest

import avcm
from avcm import testing
from tests._recording import DriverFault, RecordingDriver

pytestmark = pytest.mark.anyio

MiB = 1 << 20


class GatedDriver(RecordingDriver):
    """A recording driver whose gated operation (``bind`` or ``res``) waits at a gate: while
    a bind waits, its caller holds the context's mutex; while a reserve waits, it is a
    creation in flight."""

    def __init__(self, memory: avcm.PhysicalMemory, gated: str) -> None:
        super().__init__(memory)
        self.gated = gated
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def _wait_at_gate(self, name: str) -> None:
        if name == self.gated and not self.gate.is_set():
            self.entered.set()
            await self.gate.wait()

    async def bind(self, res: avcm.Res, phys: avcm.Phys) -> None:
        await self._wait_at_gate("bind")
        await super().bind(res, phys)

    async def res(self, vcm: avcm.Vcm, size: int, flags: int) -> avcm.Res:
        await self._wait_at_gate("res")
        return await super().res(vcm, size, flags)


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=32 * MiB)


def gated_context(memory: avcm.PhysicalMemory, gated: str) -> tuple[avcm.Vcm, GatedDriver]:
    driver = GatedDriver(memory, gated)
    return avcm.Vcm(0x1000_0000, 64 * MiB, driver, name="gated"), driver


async def wait_until_waiting(vcm: avcm.Vcm, tasks: int) -> None:
    """Let the other tasks run until *tasks* of them wait for the context's mutex."""
    while vcm.statistics().mutex.tasks_waiting < tasks:
        await anyio.lowlevel.checkpoint()


# -- async with vcm.activated() ------------------------------------------------------------------


async def test_activated_exit_deactivates_when_the_block_is_cancelled(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = gated_context(memory, "none")
    with anyio.CancelScope() as scope:
        async with vcm.activated():
            assert driver.active
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert vcm.activations == 0 and not driver.active
    testing.check_model(vcm)


async def test_activated_exit_waits_for_the_mutex_even_when_cancelled(
    memory: avcm.PhysicalMemory,
) -> None:
    """The exit's deactivate, cancelled while it waits for the mutex, waits on (shielded) and
    deactivates; the cancellation is delivered after."""
    vcm, driver = gated_context(memory, "bind")
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    scope = anyio.CancelScope()
    inside = anyio.Event()
    exited = False

    async def block() -> None:
        nonlocal exited
        with scope:
            async with vcm.activated():
                inside.set()
                await driver.entered.wait()  # leave while the bind holds the mutex
            exited = True  # not reached: the cancellation is delivered at the exit

    async with anyio.create_task_group() as tg:
        tg.start_soon(block)
        await inside.wait()
        tg.start_soon(res.bind, phys)
        await wait_until_waiting(vcm, 1)  # the exit's deactivate waits for the bind
        scope.cancel()
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert vcm.activations == 1  # still waiting, not given up
        driver.gate.set()
    assert scope.cancelled_caught and not exited
    assert vcm.activations == 0 and not driver.active and res.phys is phys
    testing.check_model(vcm)


async def test_cancelled_plain_deactivate_waiting_for_the_mutex_has_no_effect(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = gated_context(memory, "bind")
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    await vcm.activate()
    scope = anyio.CancelScope()

    async def deactivate() -> None:
        with scope:
            await vcm.deactivate()

    async with anyio.create_task_group() as tg:
        tg.start_soon(res.bind, phys)
        await driver.entered.wait()
        tg.start_soon(deactivate)
        await wait_until_waiting(vcm, 1)
        scope.cancel()
        await wait_until_waiting(vcm, 0)
        driver.gate.set()
    assert scope.cancelled_caught
    assert vcm.activations == 1 and driver.active
    await vcm.deactivate()
    testing.check_model(vcm)


async def test_activated_exit_whose_deactivate_fails_leaves_the_activation(
    memory: avcm.PhysicalMemory,
) -> None:
    """Documented: the driver's error propagates from the ``async with`` and the context stays
    activated, as a failed deactivate leaves it; deactivate() retries."""
    vcm, driver = gated_context(memory, "none")
    await vcm.make_binding(4096)
    with pytest.raises(DriverFault, match="deactivate fault"):
        async with vcm.activated():
            driver.fail["deactivate"] = DriverFault(errno.EIO, "deactivate fault")
    assert vcm.activations == 1 and driver.active
    testing.check_model(vcm)
    await vcm.deactivate()
    assert vcm.activations == 0 and not driver.active


# -- async with vcm and destroy() ----------------------------------------------------------------


async def test_async_with_vcm_destroys_when_the_block_is_cancelled(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = gated_context(memory, "none")
    with anyio.CancelScope() as scope, pytest.warns(avcm.VcmWarning):
        async with vcm:
            await vcm.make_binding(64 << 10)
            await vcm.activate()
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert vcm.destroyed and driver.cleaned_up and not driver.active
    assert memory.is_pristine() and driver.space.is_pristine()


async def test_destroy_cancelled_while_waiting_for_the_mutex_still_destroys(
    memory: avcm.PhysicalMemory,
) -> None:
    """The cancelled destroy waits on (shielded), destroys, then delivers the cancellation;
    meanwhile creations in other tasks fail as "dying", and the context is never left live."""
    vcm, driver = gated_context(memory, "bind")
    res = await vcm.reserve(4096)
    phys = await vcm.alloc(4096)
    scope = anyio.CancelScope()
    returned = False

    async def destroy() -> None:
        nonlocal returned
        with scope:
            await vcm.destroy()
            returned = True  # not reached: the cancellation is delivered after the teardown

    with pytest.warns(avcm.VcmWarning, match="still has 1 reservation"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(res.bind, phys)
            await driver.entered.wait()
            tg.start_soon(destroy)
            await wait_until_waiting(vcm, 1)
            scope.cancel()
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            with pytest.raises(avcm.InvalidError, match="dying"):
                await vcm.alloc(4096)
            assert not vcm.destroyed
            driver.gate.set()
    assert scope.cancelled_caught and not returned
    assert vcm.destroyed and driver.cleaned_up
    assert res.unreserved and phys.freed
    assert memory.is_pristine() and driver.space.is_pristine()


async def test_destroy_cancelled_while_waiting_for_a_creation_still_destroys(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, driver = gated_context(memory, "res")
    scope = anyio.CancelScope()
    made: list[avcm.Res] = []

    async def reserve() -> None:
        made.append(await vcm.reserve(4096))

    async def destroy() -> None:
        with scope:
            await vcm.destroy()

    with pytest.warns(avcm.VcmWarning, match="still has 1 reservation"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reserve)
            await driver.entered.wait()
            tg.start_soon(destroy)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            scope.cancel()
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert not vcm.destroyed
            driver.gate.set()
    assert scope.cancelled_caught
    assert vcm.destroyed and made[0].unreserved and driver.space.is_pristine()


async def test_destroy_called_cancelled_destroys_then_raises(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = gated_context(memory, "none")
    await vcm.reserve(4096)
    with anyio.CancelScope() as scope, pytest.warns(avcm.VcmWarning):
        scope.cancel()
        await vcm.destroy()
    assert scope.cancelled_caught and vcm.destroyed and driver.space.is_pristine()
