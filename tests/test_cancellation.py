"""Rule 7: cancel every operation at each of its await points in turn.

Two ways of choosing the await point, each tried for every k until the operation completes
untouched:

- a sync hook counts the sync points an operation passes (its locks, atomics, driver calls and
  the driver's own sleeps) and cancels at the k-th (k = 0: before it starts);
- a second task lets k real checkpoints pass and then cancels the operation's scope (k = 0:
  before it starts), so the cancellation lands wherever the operation's own await happens to be.

Every operation runs on a core context, an MMU context and a one-to-one (carve-out) context.
Afterwards the operation either completed or had no effect (the model, the physical memory and
the driver's side are exactly as before or exactly as after), no lock is held, and the counters
and the hardware agree with the model.

Closing (``destroy``, the exit of ``async with vcm:`` and of ``async with vcm.activated():``)
completes even when cancelled, as trio's ``aclose`` does: whatever k, the state is the one
after, and a cancellation that arrived while it ran is delivered (raised) when it is done.
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
import drivers
from avcm import testing
from avcm.lowlevel import AddressSpace, sync_hook
from tests._recording import PageHardware, RecordingDriver, make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20

KINDS = ["core", "mmu", "o2o"]

# A guard against an operation that never finishes first, far above what any needs: the most,
# about 60, is the carve-out's destroy, each of whose sleeps lasts many of the other task's
# checkpoints.
MAX_K = 5000


@dataclass
class Case:
    vcm: avcm.Vcm
    memory: avcm.PhysicalMemory
    driver_state: Callable[[], object]
    run: Callable[[], Awaitable[object]]


def hardware_state(hw: RecordingDriver | PageHardware, space: AddressSpace) -> tuple[Any, ...]:
    """What the hardware maps, and how much of the address space is free."""
    return hw.hardware_active(), sorted(hw.hardware_mappings()), space.free_bytes


def make(kind: str, memory: avcm.PhysicalMemory) -> tuple[avcm.Vcm, Callable[[], object]]:
    """A context of *kind* whose driver sleeps, and a snapshot of the driver's side of it.

    core: a recording driver (its hardware and address space); mmu: per-page tables (the
    hardware and the wrapper's address space); o2o: a carve-out whose alloc and free sleep
    (the allocator's statistics and the wrapper's allocation pairs); mmu-inactive: mmu, never
    activated (its bind and unbind do not wait: avcm calls them without a shield).
    """
    if kind == "core":
        vcm, driver = make_context(memory)
        return vcm, lambda: hardware_state(driver, driver.space)
    if kind in ("mmu", "mmu-inactive"):
        hardware = PageHardware(delay=0)
        vcm = avcm.mmu_init(0x1000_0000, 64 * MiB, hardware, memory=memory)
        assert isinstance(vcm.driver, avcm.lowlevel.MmuWrapper)
        space = vcm.driver.space
        return vcm, lambda: hardware_state(hardware, space)
    assert kind == "o2o"
    latency = drivers.Latency({"alloc": 1e-4, "free": 1e-4})
    vcm = drivers.create_carveout(memory, size=4 * MiB, latency=latency)
    wrapper = vcm.driver
    assert isinstance(wrapper, avcm.lowlevel.O2oWrapper)
    allocator = wrapper.hw
    assert isinstance(allocator, drivers.CarveoutAllocator)
    return vcm, lambda: (allocator.statistics(), wrapper.pairs)


async def setup_case(kind: str, name: str) -> Case:
    """An active context (but for mmu-inactive) with a bound reservation, a free phys and an
    unbound reservation that the phys *own* can be bound to; *name* picks the operation to
    run on them."""
    memory = avcm.PhysicalMemory(size=32 * MiB)
    vcm, driver_state = make(kind, memory)
    bound = await vcm.make_binding(64 << 10)
    assert bound.phys is not None
    free_phys = await vcm.alloc(2 * MiB + 68 * 1024)
    if kind == "o2o":
        # reserve alone is EOPNOTSUPP, and a reservation only takes its own memory
        free_res = await vcm.make_binding(8 << 10)
        own = await free_res.unbind()
        assert own is not None
    else:
        free_res = await vcm.reserve(4 * MiB)
        own = free_phys
    if kind != "mmu-inactive":
        await vcm.activate()
    runs: dict[str, Callable[[], Awaitable[object]]] = {
        "alloc": lambda: vcm.alloc(MiB + 4096),
        "reserve": lambda: vcm.reserve(MiB),
        "make_binding": lambda: vcm.make_binding(MiB + 68 * 1024),
        "map": lambda: vcm.map(free_phys),
        "bind": lambda: free_res.bind(own),
        "unbind": bound.unbind,
        "unreserve": free_res.unreserve,
        "unreserve_bound": bound.unreserve,
        "unmap": bound.unmap,
        "destroy_binding": bound.destroy_binding,
        "free": free_phys.free,
        "activate": vcm.activate,
        "deactivate": vcm.deactivate,
        "destroy": vcm.destroy,
        "activated": lambda: activated_block(vcm),
        "async_with_vcm": lambda: vcm_block(vcm),
    }
    if name in ("activate", "activated"):
        await vcm.deactivate()
    return Case(vcm, memory, driver_state, runs[name])


async def activated_block(vcm: avcm.Vcm) -> None:
    """A block that can be cancelled inside, so that its exit runs cancelled."""
    async with vcm.activated():
        await anyio.lowlevel.checkpoint()


async def vcm_block(vcm: avcm.Vcm) -> None:
    async with vcm:
        await anyio.lowlevel.checkpoint()


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
        case.driver_state(),
    )


# A way of cancelling a case's operation at its k-th await point: returns whether the
# cancellation was delivered, and whether the operation finished before its k-th point (then
# a larger k changes nothing).
CancelAt = Callable[[Case, int], Awaitable[tuple[bool, bool]]]


async def cancel_at_sync_point(case: Case, k: int) -> tuple[bool, bool]:
    """Cancel the operation at its k-th sync point, from inside the sync hook (k = 0: before
    it starts)."""
    passed = 0
    with anyio.CancelScope() as scope:
        if k == 0:
            scope.cancel()

        async def cancel_at_k(point: str, obj: object) -> None:
            nonlocal passed
            passed += 1
            if passed == k:
                scope.cancel()
                await anyio.lowlevel.checkpoint()

        with sync_hook(cancel_at_k):
            await case.run()
    return scope.cancelled_caught, passed < k


async def cancel_after_checkpoints(case: Case, k: int) -> tuple[bool, bool]:
    """Run the operation in a task of its own; this task lets k checkpoints pass (or the
    operation finish) and then cancels the operation's scope."""
    scope = anyio.CancelScope()
    finished = False

    async def operation() -> None:
        nonlocal finished
        with scope:
            await case.run()
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(operation)
        for _ in range(k):
            if finished:
                break
            await anyio.lowlevel.checkpoint()
        finished_first = finished
        scope.cancel()
    return scope.cancelled_caught, finished_first


async def cancel_at_every_k(kind: str, name: str, cancel_at: CancelAt) -> None:
    """For k = 0, 1, ... until the operation finishes first: cancel it at k, then check that it
    is not half done, no lock is held and the model holds; and that some k undid it (for a
    closing operation: that every k completed it, and delivered the cancellation)."""
    closing = name in CLOSING
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", avcm.VcmWarning)
        untouched = await setup_case(kind, name)
        before = state(untouched)
        completed = await setup_case(kind, name)
        await completed.run()
        after = state(completed)
        # activated() ends where it began: the exit's deactivate undoes the entry's activate
        assert (before != after) == (name != "activated"), "the operation must change something"

        cancelled_somewhere = False
        for k in range(MAX_K):
            case = await setup_case(kind, name)
            cancelled, finished_first = await cancel_at(case, k)
            now = state(case)
            testing.check_quiescent([case.vcm])  # no lock held, the model holds, counts right
            if closing:
                assert now == after, f"{name} cancelled at {k} did not complete"
                assert cancelled or finished_first, f"{name} at {k} swallowed the cancellation"
                cancelled_somewhere |= cancelled
            elif cancelled:
                assert now in (before, after), f"{name} cancelled at {k} is half done"
                cancelled_somewhere |= now == before
            else:
                assert now == after, f"{name} not cancelled at {k} did not complete"
            if finished_first:
                break
        else:
            pytest.fail(f"{name} never finished before its cancellation")
    assert cancelled_somewhere, f"{name} was never cancelled before taking effect"


OPERATIONS = [
    "alloc",
    "reserve",
    "make_binding",
    "map",
    "bind",
    "unbind",
    "unreserve",
    "unreserve_bound",
    "unmap",
    "destroy_binding",
    "free",
    "activate",
    "deactivate",
    "destroy",
    "activated",
    "async_with_vcm",
]

# Closing completes even when cancelled (destroy's docstring; trio's aclose rule).
CLOSING = {"destroy", "activated", "async_with_vcm"}

# The operations whose fast paths an inactive MMU context takes (no lock, no shield).
INACTIVE = ["make_binding", "map", "bind", "unbind", "unreserve_bound", "unmap", "destroy_binding"]

# reserve alone is EOPNOTSUPP on a one-to-one context (test_o2o_reserve_is_not_supported)
CASES = [
    pytest.param(kind, name, id=f"{kind}-{name}")
    for kind in KINDS
    for name in OPERATIONS
    if (kind, name) != ("o2o", "reserve")
] + [pytest.param("mmu-inactive", name, id=f"mmu-inactive-{name}") for name in INACTIVE]


@pytest.mark.parametrize(("kind", "name"), CASES)
async def test_cancel_at_every_sync_point(kind: str, name: str) -> None:
    """Cancelled at any sync point, an operation completed or had no effect; no lock is held."""
    await cancel_at_every_k(kind, name, cancel_at_sync_point)


@pytest.mark.parametrize(("kind", "name"), CASES)
async def test_cancel_after_every_checkpoint(kind: str, name: str) -> None:
    """Cancelled from another task wherever its own await happens to be (no sync hook: only
    real checkpoints), an operation completed or had no effect; no lock is held."""
    await cancel_at_every_k(kind, name, cancel_after_checkpoints)


async def test_o2o_reserve_is_not_supported() -> None:
    """Reserve alone fails on a one-to-one context, changing nothing: there is nothing to cancel."""
    case = await setup_case("o2o", "reserve")
    before = state(case)
    with pytest.raises(avcm.NotSupportedError):
        await case.run()
    assert state(case) == before
    testing.check_quiescent([case.vcm])


class _GatedHardware:
    """Per-reservation hardware whose deactivate waits until the test opens the gate."""

    orders = (0,)

    def __init__(self) -> None:
        self.mapped: set[int] = set()
        self.in_deactivate = anyio.Event()
        self.gate = anyio.Event()

    async def activate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        self.mapped.add(res.start)

    async def deactivate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        self.in_deactivate.set()
        await self.gate.wait()
        self.mapped.discard(res.start)


async def test_unbind_cancelled_while_its_driver_waits_completes_then_delivers() -> None:
    """The cancellation table: an unbind holding the lock completes, shielded, when cancelled
    while its driver call waits; the cancellation comes at the caller's next checkpoint. (An
    unbind whose driver does not wait takes no shield; one whose driver waits must.)"""
    hardware = _GatedHardware()
    vcm = avcm.mmu_init(0x1000_0000, 16 * MiB, hardware, memory=avcm.PhysicalMemory(size=MiB))
    res = await vcm.make_binding(4096)
    phys = res.phys
    await vcm.activate()
    assert hardware.mapped == {res.start}
    returned: list[avcm.Phys | None] = []
    scope = anyio.CancelScope()

    async def unbind() -> None:
        with scope:
            returned.append(await res.unbind())
            await anyio.lowlevel.checkpoint()
            returned.append(None)  # pragma: no cover - the cancellation comes first

    async with anyio.create_task_group() as tg:
        tg.start_soon(unbind)
        await hardware.in_deactivate.wait()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        hardware.gate.set()
    assert returned == [phys] and scope.cancelled_caught
    assert res.phys is None and phys is not None and phys.bindings == 0
    assert hardware.mapped == set()
    testing.check_quiescent([vcm])
    await vcm.deactivate()
    await res.unreserve()
    await phys.free()
