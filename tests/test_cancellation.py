"""Rule 7: cancel every operation at each of its await points in turn.

A sync hook counts the sync points an operation passes (its locks, atomics, driver calls and
the driver's own sleeps) and cancels at the k-th, for every k until the operation completes
untouched. Afterwards the operation either completed or had no effect, no lock is held, and the
counters and the hardware agree with the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import avcm
from avcm._sync import sync_hook
from avcm._vaspace import AddressSpace
from tests._recording import PageHardware, RecordingDriver, make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@dataclass
class Case:
    vcm: avcm.Vcm
    hardware: RecordingDriver | PageHardware
    space: AddressSpace
    memory: avcm.PhysicalMemory
    run: Callable[[], Awaitable[object]]


def make(kind: str, memory: avcm.PhysicalMemory) -> tuple[avcm.Vcm, Any, AddressSpace]:
    """A core context with a sleeping driver, or an MMU context with sleeping page tables."""
    if kind == "core":
        vcm, driver = make_context(memory)
        return vcm, driver, driver.space
    hardware = PageHardware(delay=0)
    vcm = avcm.mmu_init(0x1000_0000, 64 * MiB, hardware, memory=memory)
    assert isinstance(vcm.driver, avcm.MmuWrapper)
    return vcm, hardware, vcm.driver.space


async def setup_case(kind: str, name: str) -> Case:
    memory = avcm.PhysicalMemory(size=32 * MiB)
    vcm, hardware, space = make(kind, memory)
    bound = await vcm.make_binding(64 << 10)
    assert bound.phys is not None
    free_phys = await vcm.alloc(2 * MiB + 68 * 1024)
    free_res = await vcm.reserve(4 * MiB)
    await vcm.activate()
    runs: dict[str, Callable[[], Awaitable[object]]] = {
        "alloc": lambda: vcm.alloc(MiB + 4096),
        "reserve": lambda: vcm.reserve(MiB),
        "make_binding": lambda: vcm.make_binding(MiB + 68 * 1024),
        "map": lambda: vcm.map(free_phys),
        "bind": lambda: free_res.bind(free_phys),
        "unbind": bound.unbind,
        "unreserve": free_res.unreserve,
        "unmap": bound.unmap,
        "destroy_binding": bound.destroy_binding,
        "free": free_phys.free,
        "activate": vcm.activate,
        "deactivate": vcm.deactivate,
        "destroy": vcm.destroy,
    }
    if name == "activate":
        await vcm.deactivate()
    return Case(vcm, hardware, space, memory, runs[name])


def state(case: Case) -> tuple[Any, ...]:
    """A value snapshot, comparable between two separately built cases."""

    def phys_key(phys: avcm.Phys | None) -> object:
        return None if phys is None else (phys.parts, phys.bindings, phys.freed)

    vcm = case.vcm
    return (
        vcm.activations,
        vcm.destroyed,
        tuple((r.start, r.res_size, r.bound_size, phys_key(r.phys)) for r in vcm.reservations()),
        tuple(phys_key(p) for p in vcm.allocations()),
        case.memory.statistics(),
        case.hardware.hardware_active(),
        sorted(case.hardware.hardware_mappings()),
        case.space.free_bytes,
    )


def assert_no_lock_held(case: Case) -> None:
    assert not case.vcm.statistics().mutex.locked
    for phys in case.vcm.allocations():
        assert not phys._lock.is_locked()
    for res in case.vcm.reservations():
        if res.phys is not None:
            assert not res.phys._lock.is_locked()


async def run_cancelled_at(case: Case, k: int) -> tuple[bool, int]:
    """Run the case's operation, cancelling it at its k-th sync point; return whether the
    cancellation was delivered and how many sync points the operation passed."""
    passed = 0
    with anyio.CancelScope() as scope:

        async def cancel_at_k(point: str, obj: object) -> None:
            nonlocal passed
            passed += 1
            if passed == k:
                scope.cancel()
                await anyio.lowlevel.checkpoint()

        with sync_hook(cancel_at_k):
            await case.run()
    return scope.cancelled_caught, passed


OPERATIONS = [
    "alloc",
    "reserve",
    "make_binding",
    "map",
    "bind",
    "unbind",
    "unreserve",
    "unmap",
    "destroy_binding",
    "free",
    "activate",
    "deactivate",
    "destroy",
]


@pytest.mark.parametrize("name", OPERATIONS)
@pytest.mark.parametrize("kind", ["core", "mmu"])
async def test_cancel_at_every_sync_point(kind: str, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", avcm.VcmWarning)
        untouched = await setup_case(kind, name)
        before = state(untouched)
        completed = await setup_case(kind, name)
        await completed.run()
        after = state(completed)
        assert before != after, "the operation must change something"

        cancelled_somewhere = False
        for k in range(1, 200):
            case = await setup_case(kind, name)
            cancelled, passed = await run_cancelled_at(case, k)
            now = state(case)
            assert_no_lock_held(case)
            if cancelled:
                assert now in (before, after), f"{name} cancelled at point {k} is half done"
                cancelled_somewhere |= now == before
            else:
                assert now == after, f"{name} not cancelled at point {k} did not complete"
            if passed < k:
                break
            if not case.vcm.destroyed:
                avcm.check_model(case.vcm)
        else:
            pytest.fail(f"{name} never completed")
    assert cancelled_somewhere, f"{name} was never cancelled before taking effect"
