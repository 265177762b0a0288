"""Threads and event loops: a PhysicalMemory is shared safely by loops in several threads; a
context and its objects belong to the event loop that first used them, and any other loop (in
another thread, or of the other backend) gets EINVAL naming the rule, with nothing changed."""

from __future__ import annotations

import sys
import threading
from collections.abc import Awaitable, Callable, Iterator

import anyio
import anyio.to_thread
import pytest

import avcm
import drivers

MiB = 1 << 20
BACKENDS = ["asyncio", "trio"]


@pytest.fixture
def busy_switching() -> Iterator[None]:
    # switch threads as often as CPython can: a race in the allocator shows up at once
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


async def _churn(memory: avcm.PhysicalMemory, name: str, rounds: int) -> None:
    zero = drivers.Latency.profile("zero")
    async with drivers.create_iommu(memory, latency=zero, name=name) as vcm:
        for round_ in range(rounds):
            res = await vcm.make_binding((round_ % 7 + 1) * 64 * 1024)
            async with vcm.activated():
                phys = avcm.phys_alloc((round_ % 5 + 1) * 4096, orders=(4, 0), memory=memory)
                await phys.free()
            await res.destroy_binding()


@pytest.mark.usefixtures("busy_switching")
def test_loops_in_threads_share_one_memory() -> None:
    memory = avcm.PhysicalMemory(size=64 * MiB)
    errors: list[BaseException] = []

    def run(backend: str, index: int) -> None:
        try:
            anyio.run(_churn, memory, f"{backend}{index}", 300, backend=backend)
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(backend, index))
        for index in range(2)
        for backend in BACKENDS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert memory.is_pristine()


Use = Callable[[avcm.Vcm, avcm.Res, avcm.Phys], Awaitable[object]]

USES: dict[str, Use] = {
    "alloc": lambda vcm, res, phys: vcm.alloc(4096),
    "reserve": lambda vcm, res, phys: vcm.reserve(4096),
    "make_binding": lambda vcm, res, phys: vcm.make_binding(4096),
    "map": lambda vcm, res, phys: vcm.map(phys),
    "activate": lambda vcm, res, phys: vcm.activate(),
    "deactivate": lambda vcm, res, phys: vcm.deactivate(),
    "bind": lambda vcm, res, phys: res.bind(phys),
    "unbind": lambda vcm, res, phys: res.unbind(),
    "unreserve": lambda vcm, res, phys: res.unreserve(),
    "destroy_binding": lambda vcm, res, phys: res.destroy_binding(),
    "free": lambda vcm, res, phys: phys.free(),
    "destroy": lambda vcm, res, phys: vcm.destroy(),
}


def _state(vcm: avcm.Vcm, memory: avcm.PhysicalMemory) -> tuple[object, ...]:
    stats = vcm.statistics()
    return (
        stats.activations,
        stats.reservations,
        stats.bound_reservations,
        stats.phys,
        stats.destroyed,
        stats.mutex.locked,
        memory.statistics(),
        drivers.hardware(vcm).statistics().entries_per_order,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("other", BACKENDS)
@pytest.mark.parametrize("use", list(USES))
async def test_a_context_refuses_another_event_loop(other: str, use: str) -> None:
    memory = avcm.PhysicalMemory(size=64 * MiB)
    zero = drivers.Latency.profile("zero")
    vcm = drivers.create_iommu(memory, latency=zero)
    res = await vcm.make_binding(64 * 1024)
    spare = await vcm.alloc(4096)
    await vcm.activate()
    before = _state(vcm, memory)

    async def from_the_other_loop() -> None:
        with pytest.raises(avcm.InvalidError, match="belongs to another event loop") as info:
            await USES[use](vcm, res, spare)
        assert "event loop that first used them" in str(info.value)

    # another event loop in another thread, while this one waits for it
    await anyio.to_thread.run_sync(lambda: anyio.run(from_the_other_loop, backend=other))
    assert _state(vcm, memory) == before
    await vcm.deactivate()
    await res.destroy_binding()
    await spare.free()
    await vcm.destroy()
    assert memory.is_pristine()


@pytest.mark.parametrize(("first", "second"), [(a, b) for a in BACKENDS for b in BACKENDS])
def test_a_context_used_by_a_finished_run_stays_with_it(first: str, second: str) -> None:
    memory = avcm.PhysicalMemory(size=64 * MiB)
    vcm = drivers.create_iommu(memory, latency=drivers.Latency.profile("zero"))

    async def first_use() -> None:
        await vcm.activate()
        await vcm.deactivate()

    async def second_use() -> None:
        with pytest.raises(avcm.InvalidError, match="another event loop"):
            await vcm.activate()

    anyio.run(first_use, backend=first)
    anyio.run(second_use, backend=second)  # a new loop, the same thread
    assert vcm.activations == 0


@pytest.mark.anyio
async def test_a_context_made_outside_any_loop_belongs_to_its_first() -> None:
    # made in synchronous code (a fixture, a module) and used in one loop: the usual case
    memory = avcm.PhysicalMemory(size=64 * MiB)
    async with drivers.create_iommu(memory, latency=drivers.Latency.profile("zero")) as vcm:
        res = await vcm.make_binding(4096)
        await res.destroy_binding()
    assert memory.is_pristine()
