"""A Hypothesis fuzz of every public entry point, on both backends.

Each example is a random sequence of operations over an IOMMU, a one-to-one (carve-out) and a
CPU context sharing one memory, with hostile arguments (wrong types, zero, negative, huge),
foreign objects (another memory's phys, another context's reservation) and freed ones, an
injected driver fault or a cancellation now and then. After every operation:

- a failure is a :class:`avcm.VcmError` with an errno the contract gives (``EINVAL`` for an
  argument of the wrong type), and nothing changed: contexts, reservations, phys, memory and
  hardware are as before (a cancelled operation that builds had no effect either);
- the model check and the other rules of a quiet moment (``check_quiescent``) hold.

After the sequence everything is torn down, and the memory must be pristine.

The normal run draws a few dozen examples per backend (a few seconds); the slow tier
(``pytest -m slow``) draws 1,000 per backend; ``AVCM_FUZZ_EXAMPLES`` sets the normal run's
number (``AVCM_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py``).
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avcm
import drivers
from avcm import testing

MiB = 1 << 20
PAGE = avcm.PAGE_SIZE
EXAMPLES = int(os.environ.get("AVCM_FUZZ_EXAMPLES", "25"))

CONTRACT_ERRNOS = {
    errno.EINVAL,
    errno.EALREADY,
    errno.EADDRINUSE,
    errno.ENOSPC,
    errno.EOPNOTSUPP,
    errno.ENOMEM,
    errno.EBUSY,
}
INJECTED = errno.EIO  # what the fault plans inject

# arguments of the wrong type: EINVAL, whatever the operation
JUNK: list[object] = [None, "4096", 1.5, True, [4096], object(), float("nan")]
# right type, wrong value: an error the contract names (EINVAL, ENOMEM, ENOSPC...)
BAD_INTS = [0, -1, -PAGE, 1 << 70, (1 << 64) - PAGE]


class Junk:
    """Stands for an object of the wrong kind."""


@dataclass
class World:
    memory: avcm.PhysicalMemory
    other_memory: avcm.PhysicalMemory
    contexts: list[avcm.Vcm]
    physes: list[avcm.Phys] = field(default_factory=list)
    reservations: list[avcm.Res] = field(default_factory=list)

    def hardware(self, vcm: avcm.Vcm) -> Any:
        return vcm.driver.hw  # type: ignore[attr-defined]


def _snapshot(world: World) -> tuple[object, ...]:
    """Everything an operation that failed must have left as it was."""
    state: list[object] = [world.memory.statistics()]
    for vcm in world.contexts:
        stats = vcm.statistics()
        state.append((vcm.name, stats.activations, stats.destroyed, stats.mutex.locked))
        state.append(
            [(res, res.start, res.res_size, res.phys, res.bound_size) for res in vcm.reservations()]
        )
        state.append(vcm.allocations())
        hw = world.hardware(vcm)
        if isinstance(hw, drivers.PageTableMmu):
            state.append((hw.enabled, sorted(hw.hardware_mappings())))
        else:
            state.append(hw.statistics())
    state.append([(phys, phys.freed, phys.bindings) for phys in world.physes])
    state.append([(res, res.unreserved, res.phys) for res in world.reservations])
    return tuple(state)


def _check_models(world: World) -> None:
    # the model check and every other rule that holds between operations
    live = [vcm for vcm in world.contexts if not vcm.destroyed]
    testing.check_quiescent(live, physes=[phys for phys in world.physes if not phys.freed])


# -- drawing arguments --------------------------------------------------------------------------


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """*good* nine times in ten, else *bad* (one_of would give each about half)."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 9 else good)


def sizes() -> st.SearchStrategy[object]:
    good = st.integers(1, 2 * MiB // PAGE).map(lambda pages: pages * PAGE)
    odd = st.integers(1, 2 * MiB)  # rounded up to a page
    bad = st.sampled_from([*BAD_INTS, *JUNK])
    return mostly(st.one_of(good, odd), bad)


def flags() -> st.SearchStrategy[object]:
    return mostly(st.integers(0, 3), st.sampled_from([-1, *JUNK]))


def orders() -> st.SearchStrategy[object]:
    good = st.sampled_from([(0,), (4, 0), (8, 4, 0), (8, 0)])
    bad = st.sampled_from([(), (0, 4), (4,), (31, 0), (-1,), "84", None, (1.5, 0)])
    return mostly(good, bad)


def _is_junk(*values: object) -> bool:
    return any(
        not isinstance(value, (int, avcm.Vcm, avcm.Res, avcm.Phys, tuple))
        or isinstance(value, bool)
        for value in values
    )


# -- the operations -----------------------------------------------------------------------------

Op = Callable[[World, st.DataObject], tuple[str, bool, Callable[[], Awaitable[object]]]]
"""Draws its arguments; returns its name, whether it builds (a cancelled one had no effect)
and the call."""


def _context(world: World, data: st.DataObject) -> avcm.Vcm:
    return data.draw(st.sampled_from(world.contexts))


def _pick(data: st.DataObject, pool: list[Any], live: list[Any], junk: list[Any]) -> Any:
    """Mostly a live object; else any of the pool (dead ones too) or junk."""
    other = st.sampled_from(pool + junk) if pool + junk else st.none()
    return data.draw(mostly(st.sampled_from(live), other) if live else other)


def _phys(world: World, data: st.DataObject) -> object:
    """A phys argument: live, freed, of another memory, or not a phys at all."""
    live = [phys for phys in world.physes if not phys.freed]
    return _pick(data, world.physes, live, [Junk(), None, 42])


def _res(world: World, data: st.DataObject) -> avcm.Res | None:
    """A reservation to call a method of (unreserved or of a destroyed context, maybe)."""
    live = [res for res in world.reservations if not res.unreserved]
    return _pick(data, world.reservations, live, []) if world.reservations else None


def _receiver(world: World, data: st.DataObject) -> avcm.Phys | None:
    """A phys to call a method of (freed, or of another memory, maybe)."""
    live = [phys for phys in world.physes if not phys.freed]
    return _pick(data, world.physes, live, []) if world.physes else None


def op_alloc(world: World, data: st.DataObject) -> Any:
    vcm, size, flag = _context(world, data), data.draw(sizes()), data.draw(flags())

    async def call() -> None:
        world.physes.append(await vcm.alloc(size, flag))  # type: ignore[arg-type]

    return "alloc", True, call, _is_junk(size, flag)


def op_reserve(world: World, data: st.DataObject) -> Any:
    vcm, size, flag = _context(world, data), data.draw(sizes()), data.draw(flags())

    async def call() -> None:
        world.reservations.append(await vcm.reserve(size, flag))  # type: ignore[arg-type]

    return "reserve", True, call, _is_junk(size, flag)


def op_make_binding(world: World, data: st.DataObject) -> Any:
    vcm, size = _context(world, data), data.draw(sizes())
    alloc_flags, res_flags = data.draw(flags()), data.draw(flags())

    async def call() -> None:
        res = await vcm.make_binding(size, alloc_flags, res_flags)  # type: ignore[arg-type]
        world.reservations.append(res)
        assert res.phys is not None
        world.physes.append(res.phys)

    return "make_binding", True, call, _is_junk(size, alloc_flags, res_flags)


def op_map(world: World, data: st.DataObject) -> Any:
    vcm, phys, flag = _context(world, data), _phys(world, data), data.draw(flags())

    async def call() -> None:
        world.reservations.append(await vcm.map(phys, flag))  # type: ignore[arg-type]

    return "map", True, call, _is_junk(phys, flag)


def op_bind(world: World, data: st.DataObject) -> Any:
    res, phys = _res(world, data), _phys(world, data)
    if res is None:
        return op_make_binding(world, data)

    async def call() -> None:
        await res.bind(phys)  # type: ignore[arg-type]

    return "bind", True, call, _is_junk(phys)


def _teardown(name: str) -> Op:
    def op(world: World, data: st.DataObject) -> Any:
        res = _res(world, data)
        if res is None:
            return op_make_binding(world, data)
        return name, False, getattr(res, name), False

    return op


def op_free(world: World, data: st.DataObject) -> Any:
    phys = _receiver(world, data)
    if phys is None:
        return op_alloc(world, data)
    return "free", False, phys.free, False


def op_activate(world: World, data: st.DataObject) -> Any:
    vcm = _context(world, data)
    return "activate", True, vcm.activate, False


def op_deactivate(world: World, data: st.DataObject) -> Any:
    vcm = _context(world, data)
    return "deactivate", False, vcm.deactivate, False


def op_destroy(world: World, data: st.DataObject) -> Any:
    if data.draw(st.integers(0, 4)):  # rarely: a destroyed context refuses all but teardown
        return op_make_binding(world, data)
    vcm = _context(world, data)
    return "destroy", False, vcm.destroy, False


def op_phys_alloc(world: World, data: st.DataObject) -> Any:
    size, flag, order = data.draw(sizes()), data.draw(flags()), data.draw(orders())
    memory = data.draw(st.sampled_from([None, world.memory, world.other_memory, Junk(), 42]))
    junk = _is_junk(size, flag) or not isinstance(memory, (avcm.PhysicalMemory, type(None)))

    async def call() -> None:
        phys = avcm.phys_alloc(size, flag, order, memory=memory)  # type: ignore[arg-type]
        if memory is None:  # the process's default memory, not the world's: give it back
            await phys.free()
        else:
            world.physes.append(phys)

    return "phys_alloc", True, call, junk


def op_phys_walk(world: World, data: st.DataObject) -> Any:
    phys, order = _phys(world, data), data.draw(orders())
    vaddr = data.draw(st.one_of(st.just(0x1000_0000), st.sampled_from([*BAD_INTS, 4095, *JUNK])))
    plain = data.draw(st.booleans())
    seen: list[tuple[int, int, int]] = []

    async def callback(vaddr: int, paddr: int, order: int) -> None:
        seen.append((vaddr, paddr, order))

    def sync_callback(vaddr: int, paddr: int, order: int) -> None:
        seen.append((vaddr, paddr, order))

    async def call() -> None:
        await avcm.phys_walk(vaddr, phys, order, sync_callback if plain else callback)  # type: ignore[arg-type]
        assert sum(avcm.PAGE_SIZE << page[2] for page in seen) == phys.size  # type: ignore[attr-defined]

    return "phys_walk", False, call, plain or _is_junk(vaddr, phys, order)


def op_memory(world: World, data: st.DataObject) -> Any:
    method = data.draw(st.sampled_from(["alloc_pages", "free_pages", "read", "write"]))
    a = data.draw(st.one_of(st.sampled_from([*BAD_INTS, *JUNK]), st.integers(0, 20)))
    b = data.draw(st.one_of(st.sampled_from([*BAD_INTS, *JUNK, b"data"]), st.integers(0, 20)))
    memory = world.memory
    good_order = isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= memory.max_order

    async def call() -> None:
        if method == "alloc_pages":
            start = memory.alloc_pages(a)  # type: ignore[arg-type]
            if start is not None:
                memory.free_pages(start, a)  # type: ignore[arg-type]
        elif method == "free_pages":
            memory.free_pages(a, b)  # type: ignore[arg-type]
        elif method == "read":
            memory.read(a, b)  # type: ignore[arg-type]
        else:
            memory.write(a, b)  # type: ignore[arg-type]

    # below the memory's base, never allocated, not an order: every call but a good
    # alloc_pages is EINVAL
    return "memory." + method, False, call, not (method == "alloc_pages" and good_order)


OPERATIONS: list[Op] = [
    op_alloc,
    op_reserve,
    op_make_binding,
    op_make_binding,
    op_map,
    op_bind,
    op_bind,
    _teardown("unbind"),
    _teardown("unreserve"),
    _teardown("unmap"),
    _teardown("destroy_binding"),
    op_free,
    op_activate,
    op_activate,
    op_deactivate,
    op_phys_alloc,
    op_phys_walk,
    op_memory,
    op_destroy,
]


# -- one example --------------------------------------------------------------------------------


async def _make_world() -> World:
    memory = avcm.PhysicalMemory(size=32 * MiB)
    other = avcm.PhysicalMemory(base=0x1_0000_0000, size=8 * MiB)
    contexts = [
        drivers.create_iommu(memory, size=64 * MiB),
        drivers.create_carveout(memory, size=4 * MiB),
        drivers.create_cpu(memory, size=64 * MiB),
    ]
    return World(memory, other, contexts)


async def _run_one(world: World, data: st.DataObject, step: int) -> None:
    name, builds, call, junk = data.draw(st.sampled_from(OPERATIONS), label="op")(world, data)
    twist = data.draw(st.sampled_from(["none", "none", "none", "fault", "cancel"]), label="twist")
    armed: list[Any] = []
    if twist == "fault":
        vcm = _context(world, data)
        hw = world.hardware(vcm)
        op = data.draw(st.sampled_from(drivers.FAULTABLE), label="fault")
        hw.faults = drivers.FaultPlan().fail_nth(op, 1)
        armed.append(hw)
    delay = data.draw(st.sampled_from([0.0, 1e-6, 5e-6, 2e-5, 1e-4])) if twist == "cancel" else 0
    before = _snapshot(world)
    bound_before = {res: res.phys for res in world.reservations if res.phys is not None}
    destroyed_before = [vcm.destroyed for vcm in world.contexts]
    label = f"step {step}: {name} ({twist})"
    failed: BaseException | None = None
    try:
        with anyio.fail_after(3600):  # virtual time: a hang is an error, not a stuck test
            if twist == "cancel":
                with anyio.CancelScope() as scope:
                    scope.deadline = anyio.current_time() + delay
                    await call()
                cancelled = scope.cancelled_caught
            else:
                await call()
                cancelled = False
    except avcm.VcmError as error:
        failed = error
    finally:
        for hw in armed:
            hw.faults = drivers.FaultPlan()
    if failed is not None:
        code = failed.errno
        if junk:
            assert code == errno.EINVAL, f"{label}: junk argument gave {failed!r}"
        allowed = CONTRACT_ERRNOS | ({INJECTED} if twist == "fault" else set())
        assert code in allowed, f"{label}: {failed!r} has no contract errno"
        if _freed_already(failed):
            _check_freed_already(world, bound_before, label)
        elif name == "destroy":
            # documented too: a destroy whose driver fails releases all it can, then the
            # context is live again with what is left (the model check below holds it)
            assert [vcm.destroyed for vcm in world.contexts] == destroyed_before, label
        else:
            assert _snapshot(world) == before, f"{label}: failed with {failed!r} but changed state"
    else:
        assert not junk, f"{label}: a junk argument was accepted"
        if cancelled and builds:
            assert _snapshot(world) == before, f"{label}: cancelled but changed state"
    _check_models(world)


def _freed_already(error: BaseException) -> bool:
    """The one documented partial effect of a failed operation (docs/contract.md, "Partial
    effects"): destroy_binding freed the memory, then its unreserve failed (on a one-to-one
    context, also a failing allocator free), and a note on the error says so."""
    return any("was freed already" in note for note in getattr(error, "__notes__", ()))


def _check_freed_already(world: World, bound_before: dict[avcm.Res, avcm.Phys], label: str) -> None:
    """What the note says is what happened: exactly one reservation that was bound is now
    reserved and unbound, and the memory it was bound to is freed."""
    changed = [res for res, phys in bound_before.items() if res.phys is not phys]
    assert len(changed) == 1, f"{label}: {len(changed)} reservations changed"
    (res,) = changed
    assert not res.unreserved and res.phys is None and bound_before[res].freed, label


async def _teardown_world(world: World) -> None:
    for vcm in world.contexts:
        world.hardware(vcm).faults = drivers.FaultPlan()
    for vcm in world.contexts:
        while not vcm.destroyed and vcm.activations:
            await vcm.deactivate()
    for res in world.reservations:
        if not res.unreserved:
            await res.unmap()
    for phys in world.physes:
        if not phys.freed:
            await phys.free()
    for vcm in world.contexts:
        if not vcm.destroyed:
            await vcm.destroy()
    assert world.memory.is_pristine(), world.memory.statistics()
    assert world.other_memory.is_pristine()


async def _example(data: st.DataObject) -> None:
    world = await _make_world()
    steps = data.draw(st.integers(1, 60), label="steps")
    with warnings.catch_warnings(record=True) as caught:
        # unbind of an unbound reservation, deactivate without activate...: the documented
        # warnings that go on working
        warnings.simplefilter("always", avcm.VcmWarning)
        for step in range(steps):
            await _run_one(world, data, step)
        await _teardown_world(world)
    for warning in caught:
        assert issubclass(warning.category, avcm.VcmWarning), warning


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _fuzz(backend: str, examples: int) -> None:
    @_settings(examples)
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        testing.run_on_virtual_time(backend, lambda: _example(data))

    example()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fuzz_every_entry_point(backend: str) -> None:
    _fuzz(backend, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fuzz_every_entry_point_long(backend: str) -> None:
    _fuzz(backend, 600)
