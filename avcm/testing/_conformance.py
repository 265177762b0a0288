"""The conformance suite: the contract's concurrency rules, run against any driver.

``check_conformance(factory)`` builds a fresh context with ``factory(memory)`` (sync or async)
for every schedule of every scenario, races avcm operations on it under the controlled
scheduler, and checks the rules at the end of each with :func:`check_quiescent` (the checker
the stress harness uses too): the model check (rule 4), ``bindings`` counts (rule 5), no freed
memory bound (rule 6), no lock held (rule 7), no two live allocations overlapping (rule 9), and
after ``destroy`` every page of memory free again (rule 9). For rule 8 the suite makes the
driver's setup calls fail itself, one call after another (core operations, the MMU wrapper's
activation of each reservation or page, a one-to-one allocator's alloc), from a sync hook at
the ``driver.*`` sync point that announces each call.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import itertools
import os
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel

from .. import (
    PAGE_SIZE,
    InvalidError,
    NoMemoryError,
    NoSpaceError,
    NotSupportedError,
    Phys,
    PhysicalMemory,
    Res,
    Vcm,
    VcmError,
    VcmWarning,
)
from ..lowlevel import SETUP_SYNC_POINTS, create_phys, hardware_view, sync_hook, undo_failures
from ._clock import run_on_virtual_time, sleep_past, timers_left
from ._errors import ConformanceFailure, StepBudgetError
from ._explore import PYTHON, Failure, Limits, explore_async, replay_async
from ._invariants import check_model, check_no_write_after_free, check_quiescent
from ._layout import reserve_run, take_top_block
from ._scheduler import Run
from ._strategies import Portfolio
from ._timeline import TaskOutcome

__all__ = ["SCENARIOS", "ConformanceReport", "ScenarioResult", "check_conformance"]

Factory = Callable[[PhysicalMemory], "Vcm | Awaitable[Vcm]"]
Body = Callable[[Run, Vcm], Awaitable[None]]

KiB = 1 << 10
MiB = 1 << 20


# avcm's own code (the suite included): an error whose traceback ends elsewhere was raised by
# the driver
_AVCM = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _raised_by_driver(error: BaseException) -> bool:
    """An ``OSError`` raised in the driver's own code: rule 8 lets any driver call fail, and
    the error reaches the caller as the driver raised it."""
    tb = error.__traceback__
    if not isinstance(error, OSError) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_AVCM)


def _raise_unexpected(outcomes: list[TaskOutcome], allowed: set[int]) -> None:
    """Errors the contract allows in a race, and those a driver raised (rule 8), are
    outcomes; anything else is a failure."""
    for outcome in outcomes:
        error = outcome.error
        if error is None:
            continue
        if isinstance(error, (_NoVerdict, _CannotRun)):
            raise error  # no verdict on this attempt, or on the scenario: not a failure
        if isinstance(error, VcmError) and error.errno in allowed:
            continue
        if isinstance(error, AssertionError):  # a check inside the task: it names its rule
            raise error
        if _raised_by_driver(error):
            continue
        if isinstance(error, NoSpaceError):
            raise _too_small(error) from error
        raise AssertionError(
            f"errors: {outcome.name} failed unexpectedly: {outcome.describe()}"
        ) from error


def _too_small(error: NoSpaceError) -> _DoesNotApply:
    """A scenario's reservation that avcm's allocator had no room for: the context's address
    space is smaller than the scenario needs (a driver's own ``ENOSPC`` is rule 8's)."""
    return _DoesNotApply(f"an address space too small for the scenario: {error}")


# How often the suite's own teardown calls an operation again while the driver fails it before
# the failure is the scenario's (rule 8: it had no effect, or for a destroy, the context is
# live with what it could not release, and calling destroy again retries the rest).
TEARDOWN_ATTEMPTS = 100


class _NoVerdict(Exception):
    """The scenario's attempt cannot be judged (the hardware may be half done, or the driver
    never let a teardown through): it starts again on new contexts."""


async def _until_done(call: Callable[[], Awaitable[object]]) -> None:
    """``await call()``, again while the driver fails it, as a careful user would: the
    scenario's own teardown, after its race. A teardown the driver fails every time is no
    verdict on the attempt (:class:`_NoVerdict`), not a failure of the rule."""
    if not await _unless_driver_fails(call, TEARDOWN_ATTEMPTS):
        raise _NoVerdict(f"the driver failed {call!r} {TEARDOWN_ATTEMPTS} times in a row")


async def _unless_driver_fails(call: Callable[[], Awaitable[object]], tries: int = 1) -> bool:
    """Await *call*, again while the driver fails it, up to *tries* times in all; ``False``
    if the driver failed it every time (rule 8: each then had no effect)."""
    for _ in range(tries):
        try:
            await call()
        except OSError as error:
            if not _raised_by_driver(error):
                raise
            continue
        return True
    return False


# -- the scenarios ---------------------------------------------------------------------------


async def _activation_is_real(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(64 * KiB)
    hardware = hardware_view(vcm)

    async def activator() -> None:
        await vcm.activate()
        if hardware is not None and not hardware.hardware_active():
            raise AssertionError("rule 1: activate returned with the hardware inactive")

    outcomes = await run.concurrently(activator, activator, activator)
    _raise_unexpected(outcomes, set())
    # an activate the driver failed (rule 8) had no effect
    active = sum(outcome.ok for outcome in outcomes)
    assert vcm.activations == active, f"rule 3: {active} activates, count {vcm.activations}"
    check_model(vcm)
    if active:
        outcomes = await run.concurrently(*[vcm.deactivate] * active)
        _raise_unexpected(outcomes, set())
        active -= sum(outcome.ok for outcome in outcomes)
        assert vcm.activations == active, f"rule 3: count {vcm.activations}, expected {active}"


async def _cancelled_activation(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(64 * KiB)
    await vcm.make_binding(8 * KiB)
    scope = anyio.CancelScope()

    async def activator() -> None:
        with scope:
            await vcm.activate()

    async def canceller() -> None:
        scope.cancel()

    await run.concurrently(activator, canceller)
    assert vcm.activations in (0, 1), f"rule 2: count {vcm.activations} after one activate"
    check_model(vcm)
    if vcm.activations:
        await vcm.deactivate()


async def _nested_pairs(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(8 * KiB)
    held = 0  # activations a pair still holds: its deactivate failed in the driver (rule 8)

    async def pair() -> None:
        nonlocal held
        await vcm.activate()
        held += 1
        await vcm.deactivate()
        held -= 1

    outcomes = await run.concurrently(pair, pair, pair)
    _raise_unexpected(outcomes, set())
    assert vcm.activations == held, f"rule 3: 3 pairs end at count {vcm.activations}, not {held}"
    hardware = hardware_view(vcm)
    if hardware is not None and hardware.hardware_active() != bool(held):
        state = "inactive" if held else "active"
        raise AssertionError(f"rule 3: hardware {state} at count {held}")


async def _bind_while_active(run: Run, vcm: Vcm) -> None:
    doomed = [await vcm.make_binding(8 * KiB) for _ in range(4)]
    await vcm.activate()

    async def toggle() -> None:
        await vcm.deactivate()
        await vcm.activate()

    async def destroy_two() -> None:
        for res in doomed[:2]:
            await res.destroy_binding()

    outcomes = await run.concurrently(
        partial(vcm.make_binding, 64 * KiB),
        destroy_two,
        toggle,
        names=["make", "destroy", "toggle"],
    )
    _raise_unexpected(outcomes, {errno.ENOMEM, errno.ENOSPC})
    check_model(vcm)
    await vcm.deactivate()
    check_model(vcm)


async def _one_winner(run: Run, vcm: Vcm) -> None:
    res = await vcm.make_binding(16 * KiB)
    first = await res.unbind()
    assert first is not None
    try:
        second: Phys | None = await vcm.alloc(16 * KiB)
    except VcmError:
        second = None
    candidates = [first, first] if second is None else [first, second, first]
    outcomes = await run.concurrently(*(partial(res.bind, phys) for phys in candidates))
    _raise_unexpected(outcomes, {errno.EADDRINUSE, errno.EALREADY, errno.EOPNOTSUPP})
    winners = [candidates[i] for i, outcome in enumerate(outcomes) if outcome.ok]
    assert len(winners) == 1, f"rule 5: {len(winners)} of {len(outcomes)} binds won"
    assert res.phys is winners[0], "rule 5: the reservation is not bound to the winner"
    physes = {first} if second is None else {first, second}
    counted = sum(phys.bindings for phys in physes)
    assert counted == 1, f"rule 5: bindings count {counted} for one binding"
    outcomes = await run.concurrently(res.unbind, res.unbind)
    _raise_unexpected(outcomes, set())
    returned = [outcome.value for outcome in outcomes if outcome.value is not None]
    assert returned == [winners[0]], f"rule 5: concurrent unbinds returned {returned}"
    for phys in physes:
        await phys.free()


async def _free_racing_bind(run: Run, vcm: Vcm) -> None:
    res = await vcm.make_binding(16 * KiB)
    phys = await res.unbind()
    assert phys is not None
    outcomes = await run.concurrently(partial(res.bind, phys), phys.free, names=["bind", "free"])
    _raise_unexpected(outcomes, {errno.EBUSY, errno.EINVAL})
    bind, free = outcomes
    assert bind.ok != free.ok, f"rule 6: bind {bind.describe()}, free {free.describe()}"
    assert not (phys.freed and res.phys is phys), "rule 6: freed memory is bound"


async def _cancellation(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(8 * KiB)
    await vcm.activate()
    scopes = [anyio.CancelScope() for _ in range(2)]

    async def builder() -> None:
        with scopes[0]:
            res = await vcm.make_binding(64 * KiB + 4 * KiB)
            await res.destroy_binding()

    async def toggler() -> None:
        with scopes[1]:
            await vcm.activate()
            await vcm.deactivate()

    async def canceller() -> None:
        for scope in scopes:
            scope.cancel()

    outcomes = await run.concurrently(builder, toggler, canceller)
    _raise_unexpected(outcomes, {errno.ENOMEM, errno.ENOSPC})
    assert vcm.activations in (1, 2), f"rule 7: count {vcm.activations}"
    check_model(vcm)
    while vcm.activations:
        await vcm.deactivate()


async def _allocation_and_leaks(run: Run, vcm: Vcm) -> None:
    early = [await vcm.make_binding(4 * KiB * (1 + i)) for i in range(5)]

    async def make() -> None:
        await vcm.make_binding(12 * KiB)

    async def destroy() -> None:
        for res in early[:3]:
            await res.destroy_binding()

    outcomes = await run.concurrently(make, make, make, destroy)
    _raise_unexpected(outcomes, {errno.ENOMEM, errno.ENOSPC})


class InjectedFault(VcmError):
    """The fault the conformance suite injects into a driver call (rule 8)."""

    default_errno = errno.EIO


class _FaultInjector:
    """A sync hook that counts the driver's setup calls and makes the one numbered
    ``fail_at`` raise :class:`InjectedFault` before the driver runs (0: none fails). Only
    avcm's own announcements count: a driver that announces one of those names inside its
    own code may retry what fails there, and then no caller sees the fault, rightly."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_at = 0

    async def __call__(self, point: str, obj: object) -> None:
        if point in SETUP_SYNC_POINTS and _announced_by_avcm():
            self.calls += 1
            if self.calls == self.fail_at:
                raise InjectedFault(f"conformance: driver call {self.calls} fails")


def _announced_by_avcm() -> bool:
    """Whether the sync point whose hook runs now was announced by avcm itself (its core,
    MMU or one-to-one wrapper), not by a driver's code."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in (__name__, "avcm._sync"):
        frame = frame.f_back  # the hook, then sync_point
    module = "" if frame is None else str(frame.f_globals.get("__name__", ""))
    return module.startswith("avcm.") and not module.startswith("avcm.testing")


async def _faults(run: Run, vcm: Vcm) -> None:
    existing = await vcm.make_binding(8 * KiB)
    spare = await existing.unbind()
    assert spare is not None
    injector = _FaultInjector()
    held = 0  # activations a pair holds: one whose deactivate the driver failed (rule 8)

    async def pair() -> None:
        nonlocal held
        async with vcm.activated():
            held += 1
        held -= 1

    async def rebind() -> None:
        if existing.phys is None:
            await existing.bind(spare)

    with sync_hook(injector):  # runs after the scheduler's: in the chosen task
        for fail_at in range(1, 7):
            injector.calls, injector.fail_at = 0, fail_at
            outcomes = await run.concurrently(
                partial(vcm.make_binding, 64 * KiB + 4 * KiB),
                pair,
                rebind,
                names=["make", "pair", "bind"],
            )
            _raise_unexpected(outcomes, {errno.EIO, errno.ENOMEM, errno.ENOSPC})
            faulted = [o for o in outcomes if isinstance(o.error, InjectedFault)]
            if injector.calls >= fail_at:
                assert len(faulted) == 1, f"rule 8: the fault reached {len(faulted)} callers, not 1"
            assert vcm.activations == held, f"rule 8: count {vcm.activations} after a fault"
            check_quiescent([vcm])
        injector.fail_at = 0
    if existing.phys is None:
        await spare.free()


def _device(vcm: Vcm) -> Any:
    """The device side of a context's hardware (``read``/``write`` at device addresses), if
    its driver offers one."""
    hardware = hardware_view(vcm)
    read, write = getattr(hardware, "read", None), getattr(hardware, "write", None)
    return hardware if callable(read) and callable(write) else None


def _expect_state(*vcms: Vcm) -> None:
    """Each context that no operation is switching (its mutex free) is on in the hardware
    exactly when the model counts an activation (rule 4), whatever the other contexts on the
    same hardware do."""
    for vcm in vcms:
        hardware = hardware_view(vcm)
        if hardware is None or vcm.statistics().mutex.locked:
            continue
        active = hardware.hardware_active()
        if active != (vcm.activations > 0):
            raise AssertionError(
                f"rule 4: {vcm.name}: hardware active={active} but activations="
                f"{vcm.activations} (no operation of the context in flight)"
            )


def _pattern(res: Res, salt: int) -> bytes:
    """A pattern for every byte bound at *res*: each page's words its device address with
    *salt* above bit 48 (device addresses are below 2**48), so that a page mapped to the wrong
    memory shows another page's bytes, but its last word, which has bit 63 set too: a read
    from there (:func:`_check_reads_inside_pages`) that lands elsewhere in its page (an offset
    bit dropped in a large page: attack46) finds another word."""
    words = []
    for offset in range(0, res.bound_size, PAGE_SIZE):
        word = (res.start + offset) ^ (salt << 48)
        words.append(word.to_bytes(8, "little") * (PAGE_SIZE // 8 - 1))
        words.append((word | _LAST_WORD).to_bytes(8, "little"))
    return b"".join(words)


_LAST_WORD = 1 << 63


def _write_through(vcm: Vcm, res: Res, salt: int) -> bytes | None:
    """Write a pattern over every byte bound at *res* through the context's device; return
    it (``None`` without a device or a binding). A device access that fails is rule 4."""
    device, phys = _device(vcm), res.phys
    if device is None or phys is None or phys.memory is None:
        return None
    pattern = _pattern(res, salt)
    try:
        device.write(res.start, pattern)
    except Exception as error:  # whatever the driver raises for an access it cannot translate
        raise AssertionError(
            f"rule 4: a device write at {res.start:#x}..{res.start + len(pattern):#x} through "
            f"{vcm.name}, active and bound there, failed: {type(error).__name__}: {error}"
        ) from error
    return pattern


def _check_memory(vcm: Vcm, res: Res, pattern: bytes) -> None:
    """Every byte of *pattern* is in the part of the phys the model binds it to, and reads
    back through the device (rule 4)."""
    phys = res.phys
    assert phys is not None and phys.memory is not None
    offset = 0
    for start, size in phys.parts:
        if phys.memory.read(start, size) != pattern[offset : offset + size]:
            raise AssertionError(
                f"rule 4: bytes written through {vcm.name} at {res.start + offset:#x} are not "
                f"in the part of {phys!r} bound there ({start:#x}..{start + size:#x}): the "
                "device reaches other memory"
            )
        offset += size
    try:
        seen = _device(vcm).read(res.start, len(pattern))
    except Exception as error:
        raise AssertionError(
            f"rule 4: a device read at {res.start:#x} through {vcm.name}, active and bound "
            f"there, failed: {type(error).__name__}: {error}"
        ) from error
    if seen != pattern:
        raise AssertionError(
            f"rule 4: a device read at {res.start:#x} through {vcm.name} does not return "
            "what its memory holds"
        )
    _check_reads_inside_pages(vcm, res, pattern)


_PAGES_READ_INSIDE = 16  # per check: the pages read from their last word on (evenly spread)


def _check_reads_inside_pages(vcm: Vcm, res: Res, pattern: bytes) -> None:
    """Device reads that start at a page's last word (every offset bit from 3 to 11 set) and
    run into the next page where one follows return what is there (rule 4): a whole-page
    access starts at a page's first byte, where an offset bit dropped (attack46: bit 11 inside
    1 MiB pages) or a burst that goes on in physical memory past its first page stays unseen."""
    pages = res.bound_size // PAGE_SIZE
    step = max(1, pages // _PAGES_READ_INSIDE)
    for page in sorted({*range(0, pages, step), pages - 1}):
        offset = (page + 1) * PAGE_SIZE - 8
        length = 16 if page + 1 < pages else 8
        address = res.start + offset
        try:
            seen = _device(vcm).read(address, length)
        except Exception as error:
            raise AssertionError(
                f"rule 4: a device read of {length} bytes at {address:#x} through {vcm.name}, "
                f"active and bound there, failed: {type(error).__name__}: {error}"
            ) from error
        if seen != pattern[offset : offset + length]:
            raise AssertionError(
                f"rule 4: a device read of {length} bytes at {address:#x} through {vcm.name} "
                "(from a page's last word on) does not return what the device wrote there: "
                "the access reached another place (an offset bit lost, a burst gone on in "
                "physical memory past its page)"
            )


_salts = itertools.count(1)


def _probe(*bound: tuple[Vcm, Res]) -> None:
    """Write every byte of each bound reservation through its context's device, then check
    each where the model puts it: all written first, so that a device reaching memory bound
    elsewhere (in this context or another) overwrites a pattern checked after it."""
    written = []
    for vcm, res in bound:
        pattern = _write_through(vcm, res, next(_salts) % (1 << 15))
        if pattern is not None:
            written.append((vcm, res, pattern))
    for vcm, res, pattern in written:
        _check_memory(vcm, res, pattern)


def _expect_reach(vcm: Vcm, res: Res, pattern: bytes) -> None:
    """A device write at *res* lands in its memory (rule 4: the hardware maps it)."""
    _expect_state(vcm)
    device = _device(vcm)
    if device is None or res.phys is None:
        return
    device.write(res.start, pattern)
    memory = res.phys.memory
    if memory is not None and memory.read(res.phys.parts[0].start, len(pattern)) != pattern:
        raise AssertionError(
            f"rule 4: a device write at {res.start:#x} through {vcm.name} did not reach the "
            "memory bound there"
        )


_FAULT_ACCESSES = (8, 64)  # the lengths of the accesses that must fault: a word, a burst


def _expect_fault(
    vcm: Vcm,
    address: int,
    after: str,
    *,
    lengths: Sequence[int] = _FAULT_ACCESSES,
    below: int = 0,
) -> None:
    """Where the model maps nothing (the context off, or no bound reservation there) and no
    driver call of the context runs, no device access reaches memory: a translation left in
    a TLB would. Accesses of *lengths* at *address*, reads and writes; with *below*, reads
    only, from that many bytes below *address* (where memory may be bound) on into it."""
    _expect_state(vcm)
    device = _device(vcm)
    if device is None or vcm.statistics().mutex.locked:
        return
    if vcm.activations and any(
        res.phys is not None and res.start <= address < res.start + res.bound_size
        for res in vcm.reservations()
    ):
        return  # mapped again since, by another task
    # a read and a write: a device's read and write engines may each keep their own walk of
    # the table, and one forgotten by an unmap (attack52) is seen by its own kind of access
    # only; a word and a burst, which may go through translations of their own (attack57: a
    # 64-byte read reached a page where an 8-byte one faulted). (A write that goes through
    # lands in memory the model does not bind there: the scenario fails with it.) A write
    # from below may land in the part below before it faults, as a device's would: reads.
    accesses: list[Callable[[], object]] = []
    for length in lengths:
        accesses.append(partial(device.read, address - below, length + below))
        if not below:
            accesses.append(partial(device.write, address, bytes(length)))
    for access in accesses:
        try:
            access()
        except Exception:  # whatever the driver raises for an access it cannot translate
            continue
        where = f"from {address - below:#x} on into {address:#x}" if below else f"at {address:#x}"
        raise AssertionError(
            f"rule 4: {after}, a device access {where} through {vcm.name} reached memory "
            "where the model maps nothing (a stale translation)"
        )


# Bytes below a range a read that crosses into it starts at (_expect_gone): a burst that
# goes on from the page below, still bound, through a translation that page's entry keeps
# of the next (attack59), or whatever the device has of where the first one went on.
_CROSSING = 8


def _expect_gone(vcm: Vcm, start: int, size: int, after: str) -> None:
    """:func:`_expect_fault` at every page of ``start..start+size`` (a driver may forget any
    one of them: the last, the one where the page size changes); at its start, an access of
    a page too (attack59: a device's own cache for long accesses, which an unmap never
    reached), and a read from below that crosses into it."""
    for address in range(start, start + size, PAGE_SIZE):
        _expect_fault(vcm, address, after)
    _expect_fault(vcm, start, after, lengths=(PAGE_SIZE,))
    _expect_fault(vcm, start, after, lengths=(_CROSSING,), below=_CROSSING)


async def _shared_hardware(run: Run, first: Vcm, second: Vcm) -> None:
    """Two contexts of one driver on one memory at once: hardware they share (one unit, one
    usage count, a cache of page-table pages) must keep each true to its own model."""
    patterns = iter(range(1, 1 << 16))

    async def use(vcm: Vcm) -> None:
        res = await vcm.make_binding(64 * KiB)
        async with vcm.activated():
            _expect_reach(vcm, res, next(patterns).to_bytes(8, "little"))
            start, size = res.start, res.res_size
            await res.destroy_binding()
            _expect_gone(vcm, start, size, "after destroy_binding returned")
        again = await vcm.make_binding(64 * KiB)
        async with vcm.activated():
            _expect_reach(vcm, again, next(patterns).to_bytes(8, "little"))
        _expect_fault(vcm, again.start, "after deactivate returned")
        await again.destroy_binding()

    async def toggle(vcm: Vcm) -> None:
        async with vcm.activated():
            pass
        _expect_state(first, second)

    outcomes = await run.concurrently(
        lambda: use(first), lambda: use(second), lambda: toggle(first), lambda: toggle(second)
    )
    _raise_unexpected(outcomes, set())


async def _power_sharing(run: Run, first: Vcm, second: Vcm) -> None:
    """Two contexts on one memory, each switched on and off by its own task: right after each
    activate or deactivate returns, that context is on (its device reaches every byte bound)
    or off (its device reaches nothing), whatever the other one is doing."""
    bound = {vcm: await vcm.make_binding(8 * KiB) for vcm in (first, second)}

    async def switch(vcm: Vcm) -> None:
        res = bound[vcm]
        for _ in range(2):
            await vcm.activate()
            _expect_state(first, second)
            _probe((vcm, res))
            await vcm.deactivate()
            _expect_state(first, second)
            _expect_fault(vcm, res.start, "after its last deactivate returned")

    outcomes = await run.concurrently(lambda: switch(first), lambda: switch(second))
    _raise_unexpected(outcomes, set())
    while first.activations or second.activations:  # left on by a driver's failed deactivate
        for vcm in (first, second):
            if vcm.activations:
                await _unless_driver_fails(vcm.deactivate)
    check_quiescent([first, second])
    # one on, the other off: each must say so of itself, not of the hardware they share
    for on, off in ((first, second), (second, first)):
        if await _unless_driver_fails(on.activate):
            check_quiescent([first, second])
            _probe((on, bound[on]))
            _expect_fault(off, bound[off].start, "with only the other context active")
            await on.deactivate()


# how long after the last user begins to switch off the other context switches on (seconds):
# a unit that powers down once its last user left, outside its lock, races the switch-on
_RESTART_LAGS = (0.0, 3e-6, 10e-6, 30e-6)
# how long after (or, negative, before) a timer pending once the switch-off returned the
# other context switches on: a power-down decided in a background task acts a
# while after its timer, and a switch-on takes a while to reach the power-up
_TIMER_LAGS = (-20e-6, 0.0, 3e-6)
_TIMER_HORIZON = 1.0  # (seconds) a timer further away is none a switch-on aims at
# how many of the deadlines pending then are aimed at, each in a restart of its own,
# earliest first. All of them, not only those the switch-off left: a power-down may be
# decided by a poller or a work queue asleep before it, or by a timer re-armed to the
# deadline it had (stress aims so too). A driver may have others before its power-down's.
# Then as many of those armed once they all fell due, one by one (each may arm the next: a
# watchdog whose look that decides is armed by its looks before, attack20).
_TIMER_AIMS = 8
_SETTLE = 1e-3  # (seconds) then each context is looked at again: what a background task did


async def _restart_racing(run: Run, first: Vcm, second: Vcm) -> None:
    """Two contexts on one memory, one on and the other off: the one on switches off while,
    a moment later (:data:`_RESTART_LAGS`), or either side of a timer pending once the
    switch-off returned (:data:`_TIMER_LAGS`, at each of the first :data:`_TIMER_AIMS` in
    turn: a lazy power-down in a background task), or of one armed once those fell due (as
    many), the other switches on from cold.
    Then each is on or off as its own count says (rule 4: hardware they share that powers
    down once its last user left, outside its lock or later, must not undo the switch-on),
    again :data:`_SETTLE` later, and the one on reaches every byte bound. Each lag, each way
    round."""
    bound = {vcm: await vcm.make_binding(8 * KiB) for vcm in (first, second)}
    ways = ((first, second), (second, first))
    for lag in _RESTART_LAGS:
        for leaving, coming in ways:
            await _restart_once(run, leaving, coming, bound, lag=lag)
    for later in (False, True):
        for lag in _TIMER_LAGS:
            for leaving, coming in ways:
                for aim in range(_TIMER_AIMS):
                    restart = _restart_once(
                        run, leaving, coming, bound, lag=lag, aim=aim, later=later
                    )
                    if not await restart:
                        break


async def _restart_once(
    run: Run,
    leaving: Vcm,
    coming: Vcm,
    bound: dict[Vcm, Res],
    *,
    lag: float,
    aim: int | None = None,
    later: bool = False,
) -> bool:
    """One restart of :func:`_restart_racing`: *leaving* switches off while *coming* switches
    on *lag* seconds later, or, with *aim*, *lag* seconds from the *aim*-th deadline (earliest
    first) pending once the switch-off returned, or (*later*) from the earliest pending once
    those all fell due and then the earliest fell due *aim* times in turn. Whether there may
    be a next one to aim at."""
    await leaving.activate()
    left = anyio.Event()
    more = False

    async def leave() -> None:
        try:
            await leaving.deactivate()
        finally:  # (also when the driver failed it: rule 8)
            left.set()

    async def deadlines() -> list[float]:
        # distinct: the clean-up switch-off of the restart before and this one's happen at
        # one instant, and a driver's timers are each pending twice (attack20)
        return sorted(set(await timers_left([], within=_TIMER_HORIZON)))

    async def past(deadline: float) -> list[float]:
        """Let *deadline* fall due, and what the task it wakes does then: what is pending."""
        await sleep_past(deadline)
        return await deadlines()

    async def come() -> None:
        nonlocal more
        wait = lag
        if aim is not None:
            await left.wait()
            pending = await deadlines()
            index = aim
            if later:
                index = 0
                if pending:  # past those, then the timers armed since, one by one
                    pending = await past(pending[-1])
                for _ in range(aim):
                    if not pending:
                        break
                    pending = await past(pending[0])
            more = index + 1 < len(pending) or (later and bool(pending))
            if index < len(pending):
                wait += pending[index] - anyio.current_time()
        await anyio.sleep(max(0.0, wait))
        await coming.activate()

    outcomes = await run.concurrently(leave, come)
    _raise_unexpected(outcomes, set())
    _expect_state(leaving, coming)
    if aim is not None:
        await anyio.sleep(_SETTLE)
        _expect_state(leaving, coming)
    if coming.activations:
        _probe((coming, bound[coming]))
    while leaving.activations or coming.activations:  # (a driver's failed deactivate)
        for vcm in (leaving, coming):
            if vcm.activations:
                await _unless_driver_fails(vcm.deactivate)
    return more


def _scattered_physes(memory: PhysicalMemory) -> tuple[int, list[Phys]] | None:
    """Physes of several parts, out of order, apart, and not aligned to the large pages at
    their device addresses (as a driver's own allocator or a carve-out may hand out): from
    one 2 MiB block, returned with them (``None`` if no block is free). The first is over
    1 MiB; the others are small. The last but one starts with a 4 KiB part on a 64 KiB
    boundary, 64 KiB more after it elsewhere: a walk that picks a page size by what is left of
    the phys, not of the part, maps a 64 KiB page over memory that is not the phys's there.
    The last is one part of 124 KiB on a 64 KiB boundary: after a 64 KiB page, a tail a page
    short of another, which only 4 KiB pages map."""
    block = memory.alloc_pages(9)
    if block is None:
        return None
    layouts = [
        # 1 MiB + 64 KiB at 64 KiB (not 1 MiB) alignment, 68 KiB at 4 KiB alignment a page
        # after it, then a page before both
        [(64 * KiB, 1088 * KiB), (1220 * KiB, 68 * KiB), (8 * KiB, 4 * KiB)],
        [(1344 * KiB, 64 * KiB), (1540 * KiB, 4 * KiB), (1600 * KiB, 8 * KiB)],
        [(1732 * KiB, 68 * KiB), (1808 * KiB, 4 * KiB)],
        [(1536 * KiB, 4 * KiB), (1856 * KiB, 64 * KiB)],
        [(1408 * KiB, 124 * KiB)],
    ]
    physes = [
        create_phys([(block + offset, size) for offset, size in layout], memory=memory)
        for layout in layouts
    ]
    return block, physes


def _bound(*vcms: Vcm) -> list[tuple[Vcm, Res]]:
    """The bound reservations of those of *vcms* that are active: where the device must reach
    memory."""
    return [
        (vcm, res)
        for vcm in vcms
        if vcm.activations
        for res in vcm.reservations()
        if res.phys is not None
    ]


@contextlib.asynccontextmanager
async def _scattered(memory: PhysicalMemory, vcm: Vcm) -> AsyncIterator[list[tuple[Res, Phys]]]:
    """The physes of :func:`_scattered_physes`, each with a reservation of *vcm* to bind it to
    (none on a context that reserves nothing alone, as a one-to-one one), and memory
    scattered (every other page of a run taken) so that the context's own allocations get
    parts apart too. Everything is given back after."""
    spacers = [memory.alloc_pages(0) for _ in range(8)]
    for page in spacers[::2]:
        if page is not None:
            memory.free_pages(page, 0)
    scattered = _scattered_physes(memory)
    physes: list[Phys] = [] if scattered is None else scattered[1]
    reservations: list[Res] = []
    try:
        for phys in physes:
            reservations.append(await vcm.reserve(phys.size))
    except VcmError as error:
        if error.errno != errno.EOPNOTSUPP:
            raise
    try:
        yield list(zip(reservations, physes, strict=False))
        check_quiescent([vcm], physes=physes)
    finally:
        # also after a driver call of the scenario failed (rule 8): what is left is held to
        # every rule, the leak check after destroy included
        for res in reservations:
            await _until_done(res.unreserve if res.phys is None else res.unmap)
        for phys in physes:
            await _until_done(phys.free)
        if scattered is not None:
            memory.free_pages(scattered[0], 9)
        for page in spacers[1::2]:
            if page is not None:
                memory.free_pages(page, 0)


# a driver may refuse memory it did not allocate (the contract's "cannot mix")
_REFUSED = {errno.EOPNOTSUPP, errno.EINVAL}


async def _multipart(run: Run, memory: PhysicalMemory, vcm: Vcm) -> None:
    """Physes of several scattered parts bound (while active or not) and activated at once:
    every byte reaches, through the device, the part the model binds it to."""
    async with _scattered(memory, vcm) as pairs:

        async def bind_active(res: Res, phys: Phys) -> None:
            async with vcm.activated():
                await res.bind(phys)
                _probe((vcm, res))

        async def bind_then_activate(res: Res, phys: Phys) -> None:
            await res.bind(phys)
            async with vcm.activated():
                _probe((vcm, res))

        async def make() -> None:
            res = await vcm.make_binding(72 * KiB)
            async with vcm.activated():
                _probe((vcm, res))

        async def toggle() -> None:
            async with vcm.activated():
                pass

        # the small ones (the large one costs hundreds of steps on a 4 KiB-page MMU)
        binds = [
            partial(each, *pair)
            for each, pair in zip((bind_active, bind_then_activate), pairs[1:], strict=False)
        ]
        outcomes = await run.concurrently(make, toggle, *binds)
        _raise_unexpected(outcomes, _REFUSED)
        check_quiescent([vcm])
        if await _unless_driver_fails(vcm.activate):  # all at once, from cold
            check_quiescent([vcm])
            _probe(*_bound(vcm))
            await _until_done(vcm.deactivate)


async def _large_pages(run: Run, memory: PhysicalMemory, vcm: Vcm) -> None:
    """A phys of parts over 1 MiB and 64 KiB, not aligned in memory to the pages their
    device addresses allow, one whose short first part starts on a 64 KiB boundary, and one
    whose tail is a page short of a 64 KiB page, bound while active and activated from cold:
    every byte reaches the part the model binds it to. Nothing races: the suite runs it
    until its schedules repeat."""
    async with _scattered(memory, vcm) as pairs:
        active = await _unless_driver_fails(vcm.activate)

        async def bind() -> None:
            if pairs and active:
                # the large one, the short part on a boundary, the short tail
                for res, phys in (pairs[0], pairs[-2], pairs[-1]):
                    await res.bind(phys)

        # one task: the scheduler runs it the same way every time
        outcomes = await run.concurrently(bind)
        _raise_unexpected(outcomes, _REFUSED)
        check_quiescent([vcm])
        _probe(*_bound(vcm))
        if active:
            await _until_done(vcm.deactivate)
        if pairs and pairs[0][0].phys is not None and await _unless_driver_fails(vcm.activate):
            check_quiescent([vcm])
            _probe(*_bound(vcm))
            await _until_done(vcm.deactivate)


# The blocks _neighbours binds in sixteen pieces: 64 KiB and 128 KiB (4 KiB entries: runs of
# 16 and 32; attack57's fold of 32 entries was dropped only with its first or last, which a
# run of 16 never showed) and 1 MiB (64 KiB entries, or 256 of 4 KiB where a driver has none;
# 2 MiB in 4 KiB entries took more steps than a run's budget); and the pieces it unbinds, in
# turn: one inside each run of four and of eight (a fold of fewer entries dropped only when
# its first or last goes), the first (a contiguous hint's walk reads it) and the last. One
# inside goes first: a fold made by the accesses across the pieces right after the switch-on
# from cold starts at the first piece, and would go with it.
_NEIGHBOUR_ORDERS = (4, 5, 8)
_NEIGHBOURS = 16
_NEIGHBOURS_GONE = (5, 0, 10, 15)
_BIND_TRIES = 3


async def _neighbours(run: Run, memory: PhysicalMemory, vcm: Vcm, beside: Vcm) -> None:
    """Sixteen reservations next to each other in device addresses from a boundary of a
    block's size, bound in order to the sixteen pieces of one block of memory (64 KiB, 128 KiB,
    1 MiB): entries that follow one another in device addresses and in memory, as one large
    page would map the block, which hardware may fold into one translation (a contiguous
    hint, a TLB that coalesces neighbours or extends a range by a burst, a driver that
    promotes them to a large page) and must unfold when one of its entries goes. One piece
    inside runs of four and eight, the first, another inside and the last are each unbound
    while the rest stays bound, bound to other memory and bound back, while active and after
    a switch-on from cold: what is bound reaches its memory, by accesses within a piece and
    across each boundary between pieces, and the unbound piece faults to a word and to a
    burst, also once its neighbours were reached again (attack52's contiguous hint, never
    unfolded, passed every other scenario). Then the same pieces of memory one piece further
    on, which follow one another but not from a boundary of the block's size: a fold must not
    take them for an aligned block. All along, a second context of the driver on the same
    memory, active, holds a run of its own bound in the same way to another block, at the same
    device addresses where the two spaces are alike, and reaches it across each boundary
    whenever the first was reached: hardware the contexts share (a TLB folding runs with no
    tag of the context, attack57) keeps each context's folds its own. Nothing races: the suite
    runs it until its schedules repeat."""

    async def unfold() -> None:
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8); what is active goes with destroy
        alongside = beside if await _unless_driver_fails(beside.activate) else None
        for order in _NEIGHBOUR_ORDERS:
            if not await _fold_and_unfold(memory, vcm, order, alongside):
                break  # a one-to-one context, a space too small, or switched off
        for switched_on in (vcm, beside):
            if switched_on.activations:
                await _until_done(switched_on.deactivate)

    _raise_unexpected(await run.concurrently(unfold), _REFUSED)


async def _fold_and_unfold(
    memory: PhysicalMemory, vcm: Vcm, order: int, beside: Vcm | None
) -> bool:
    """:func:`_neighbours` with a block of *order*, the run of *beside* (if active) alongside;
    False if the context reserves nothing alone, its space is too small, or the driver failed
    to switch it on again (rule 8). Torn down only if nothing was raised: an attempt with no
    verdict, or failed, ends with its memory."""
    piece = (PAGE_SIZE << order) // _NEIGHBOURS
    try:
        reservations = await reserve_run(vcm, piece, _NEIGHBOURS)
    except (NotSupportedError, NoSpaceError):  # a one-to-one context, a small address space
        return False
    block = _blocks(memory, order + 1, order - 4)  # (room for the run one piece further on;
    elsewhere = create_phys([(block[1], piece)], memory=memory)  # memory to bind a piece anew)
    on = True
    async with _run_beside(memory, beside, order) as alongside:
        # (one piece further on, the last unbound: it alone lies in the next block)
        for offset, gone in ((0, _NEIGHBOURS_GONE), (piece, _NEIGHBOURS_GONE[-1:])):
            physes = _pieces(memory, block[0] + offset, piece)
            on = await _unfolded(vcm, reservations, physes, elsewhere, gone, alongside)
            for res in reservations:
                if res.phys is not None:
                    await _until_done(res.unbind)
            for phys in physes:
                await _until_done(phys.free)
            if not on:
                break
    for res in reservations:
        await _until_done(res.unreserve)
    await _until_done(elsewhere.free)
    memory.free_pages(block[0], order + 1)
    memory.free_pages(block[1], order - 4)
    return on


def _blocks(memory: PhysicalMemory, *orders: int) -> list[int]:
    """A free block of memory of each of *orders*; :class:`_CannotRun` (and none taken) if one
    is not there."""
    taken: list[int] = []
    for order in orders:
        start = memory.alloc_pages(order)
        if start is None:
            for given_back, was in zip(taken, orders, strict=False):
                memory.free_pages(given_back, was)
            raise _CannotRun(f"no free {(PAGE_SIZE << order) // KiB} KiB block left in its memory")
        taken.append(start)
    return taken


def _pieces(memory: PhysicalMemory, start: int, piece: int) -> list[Phys]:
    """:data:`_NEIGHBOURS` physes of *piece* bytes each, one after another from *start*."""
    return [
        create_phys([(start + index * piece, piece)], memory=memory) for index in range(_NEIGHBOURS)
    ]


@contextlib.asynccontextmanager
async def _run_beside(
    memory: PhysicalMemory, beside: Vcm | None, order: int
) -> AsyncIterator[tuple[Vcm, list[Res], list[Phys]] | None]:
    """The second context's run of :func:`_neighbours`: as the first's, bound in order to the
    pieces of a block of *order* of its own and left so; None if there is no such context (its
    driver failed to switch it on), it reserves nothing alone, its space is too small, or the
    driver failed a bind (rule 8). Given back only if nothing was raised."""
    piece = (PAGE_SIZE << order) // _NEIGHBOURS
    if beside is None:
        yield None
        return
    try:
        reservations = await reserve_run(beside, piece, _NEIGHBOURS)
    except (NotSupportedError, NoSpaceError):
        yield None
        return
    (block,) = _blocks(memory, order)
    physes = _pieces(memory, block, piece)
    bound = True
    for res, phys in zip(reservations, physes, strict=True):
        bound = bound and await _unless_driver_fails(partial(res.bind, phys), _BIND_TRIES)
    yield (beside, reservations, physes) if bound else None
    for res in reservations:
        await _until_done(res.unreserve if res.phys is None else res.unmap)
    for phys in physes:
        await _until_done(phys.free)
    memory.free_pages(block, order)


async def _unfolded(
    vcm: Vcm,
    reservations: list[Res],
    physes: list[Phys],
    elsewhere: Phys,
    gone: tuple[int, ...],
    beside: tuple[Vcm, list[Res], list[Phys]] | None,
) -> bool:
    """The binds, unbinds and checks of :func:`_fold_and_unfold`, the pieces *gone* unbound in
    turn, the run *beside* reached across whenever this one was; False if the context was left
    switched off. A bind the driver fails is tried again a few times (rule 8: it had no
    effect; a driver that fails one page write in so many gets its run), then the checks
    end."""
    every = [*physes, elsewhere, *(beside[2] if beside else ())]
    vcms = [vcm, *(beside[:1] if beside else ())]

    def reached(*probed: Res) -> None:
        # an access across every piece first (on what the device has not cached since),
        # then accesses within the pieces *probed*, then across the other context's run
        check_quiescent(vcms, physes=every)
        _across(vcm, reservations)
        _probe(*((vcm, res) for res in probed))
        if beside is not None:
            _across(beside[0], beside[1])

    for res, phys in zip(reservations, physes, strict=True):
        if not await _unless_driver_fails(partial(res.bind, phys), _BIND_TRIES):
            return True  # (rule 8: nothing to unfold)
    reached(*reservations)
    for switched in (False, True):
        if switched:  # (the run mapped by a switch-on, as a fold made then)
            if not await _unless_driver_fails(vcm.deactivate):
                return True  # (rule 8: still on, as it was)
            if not await _unless_driver_fails(vcm.activate):
                return False
            reached(*reservations)
        for index in gone:
            res = reservations[index]
            await _until_done(res.unbind)
            after = "after an unbind of a neighbour returned"
            check_quiescent(vcms, physes=every)
            _expect_gone(vcm, res.start, res.res_size, after)
            _probe(*((vcm, other) for other in reservations[max(index - 1, 0) : index + 2]))
            for side in (reservations[:index], reservations[index + 1 :]):
                _across(vcm, side)
            if beside is not None:
                _across(beside[0], beside[1])
            _expect_gone(vcm, res.start, res.res_size, after + " and its neighbours were reached")
            for again in (elsewhere, physes[index]):
                if res.phys is not None:
                    await _until_done(res.unbind)
                if not await _unless_driver_fails(partial(res.bind, again), _BIND_TRIES):
                    return True
                reached(res)
    # Walks in flight: from cold, the device reads a word of the piece next to one, nearest to
    # it, and the piece is unbound right after: a walker that fetches the next entry (or the
    # one before) on a miss, ahead of use, must not have it land after the unbind's
    # invalidation (attack58's prefetch did; every access above came after others had
    # filled the TLB).
    for index in gone:
        if not await _unless_driver_fails(vcm.deactivate):
            return True
        if not await _unless_driver_fails(vcm.activate):
            return False
        res = reservations[index]
        if index:
            below = reservations[index - 1]
            _read_word(vcm, below, below.res_size - 8)
        else:
            _read_word(vcm, reservations[1], 0)
        await _until_done(res.unbind)
        check_quiescent(vcms, physes=every)
        _expect_gone(
            vcm,
            res.start,
            res.res_size,
            "after an unbind right after its neighbour was reached from cold",
        )
        if not await _unless_driver_fails(partial(res.bind, physes[index]), _BIND_TRIES):
            return True
    return True


_BURST = 64  # bytes either side of a boundary between pieces that _across takes


def _across(vcm: Vcm, pieces: Sequence[Res]) -> None:
    """A device write across each boundary between *pieces* (bound reservations, by
    address), of :data:`_BURST` bytes either side, then a read of them: each byte lands in the
    memory the model binds it to and reads back (rule 4). An access that goes on from one
    entry into the next, as a burst does, reaches each where the model maps it; and a fold
    such an access makes (attack56's TLB range a burst extends, attack57's fold made only by
    a write across two entries) is made before an unbind."""
    device = _device(vcm)
    if device is None or not vcm.activations:
        return
    for lower, upper in itertools.pairwise(pieces):
        if lower.start + lower.res_size != upper.start:
            continue  # (not next to each other)
        start = upper.start - _BURST
        salt = next(_salts) % (1 << 15)
        pattern = b"".join(
            ((salt << 48) | address).to_bytes(8, "little")
            for address in range(start, start + 2 * _BURST, 8)
        )
        where = f"{start:#x}..{start + 2 * _BURST:#x} through {vcm.name}, active and bound there,"
        try:
            device.write(start, pattern)
            seen = device.read(start, len(pattern))
        except Exception as error:
            raise AssertionError(
                f"rule 4: a device access of {where} across reservations next to each other "
                f"failed: {type(error).__name__}: {error}"
            ) from error
        below, above = _memory_at(lower, lower.res_size - _BURST), _memory_at(upper, 0)
        if below is not None and above is not None and below + above != pattern:
            raise AssertionError(
                f"rule 4: bytes of a device write of {where} across reservations next to each "
                "other are not in the memory the model binds there: the device reaches other "
                "memory"
            )
        if seen != pattern:
            raise AssertionError(
                f"rule 4: a device read of {where} across reservations next to each other, does "
                "not return what was written there"
            )


def _memory_at(res: Res, offset: int, length: int = _BURST) -> bytes | None:
    """The *length* bytes of memory bound at *offset* into *res* (None if the suite cannot
    read its memory)."""
    phys = res.phys
    if phys is None or phys.memory is None:
        return None
    for part in phys.parts:
        if offset < part.size:
            if offset + length > part.size:
                return None  # (across two parts: not read here)
            return phys.memory.read(part.start + offset, length)
        offset -= part.size
    return None


_READS_IN_FLIGHT = 3  # the reads _while_reading makes, one after each of as many checkpoints


async def _while_reading(
    call: Callable[[], Awaitable[object]], before: Callable[[], None], during: Callable[[], None]
) -> None:
    """``await call()`` (:func:`_until_done`), *before* first, and *during* once after each
    of :data:`_READS_IN_FLIGHT` checkpoints of another task of the scenario: where those land
    among the steps of *call*'s driver calls is the schedule's. The first error either
    raised, not a group of them."""
    before()
    errors: list[Exception] = []

    async def reads() -> None:
        try:
            for _ in range(_READS_IN_FLIGHT):
                await anyio.lowlevel.checkpoint()
                during()
        except Exception as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        group.start_soon(reads)
        try:
            await _until_done(call)
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


def _read_anything(vcm: Vcm, address: int) -> None:
    """A device read of the word at *address*, which may reach anything or fault (a range
    changing): not judged."""
    device = _device(vcm)
    if device is not None:
        with contextlib.suppress(Exception):
            device.read(address, 8)


def _read_word(vcm: Vcm, res: Res, offset: int) -> None:
    """A device read of the word at *offset* into bound *res* returns the memory bound there
    (rule 4)."""
    device = _device(vcm)
    if device is None or not vcm.activations:
        return
    address = res.start + offset
    try:
        seen = device.read(address, 8)
    except Exception as error:
        raise AssertionError(
            f"rule 4: a device read at {address:#x} through {vcm.name}, active and bound there, "
            f"failed: {type(error).__name__}: {error}"
        ) from error
    bound = _memory_at(res, offset, 8)
    if bound is not None and seen != bound:
        raise AssertionError(
            f"rule 4: a device read at {address:#x} through {vcm.name} does not return the "
            "memory bound there"
        )


async def _memory_ends(run: Run, memory: PhysicalMemory, vcm: Vcm) -> None:
    """A phys of the last page of physical memory, then one of its last 64 KiB, each bound
    while active: every byte reaches its memory through the device, the last byte of memory
    too (a DMA window or an address mask off by one at the end of memory faults there, or
    reaches other memory: attack52's such driver passed every scenario, and stress never
    mapped that page). Nothing races: the suite runs it until its schedules repeat."""
    top = take_top_block(memory)
    if top is None:
        return
    end = memory.base + memory.size
    try:
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8)

        async def bind_each() -> None:
            for size in (PAGE_SIZE, 64 * KiB):
                phys = create_phys([(end - size, size)], memory=memory)
                try:
                    res = await vcm.reserve(size)
                except NotSupportedError:
                    await phys.free()
                    return  # a one-to-one context: it reserves nothing alone
                try:
                    await res.bind(phys)
                    check_quiescent([vcm], physes=[phys])
                    _probe((vcm, res))
                finally:
                    await _until_done(res.unreserve if res.phys is None else res.unmap)
                    await _until_done(phys.free)

        _raise_unexpected(await run.concurrently(bind_each), _REFUSED)
        await _until_done(vcm.deactivate)
    finally:
        memory.free_pages(top, memory.max_order)


async def _walks_in_flight(run: Run, memory: PhysicalMemory, vcm: Vcm) -> None:
    """Three reservations next to each other, bound in order to three pieces of memory next to
    each other (4 KiB, then 64 KiB entries); from cold, the device reads the first piece's
    last word, and then, from another task, the third's first word at checkpoints while the
    middle piece is unbound, then the other way round: the reads reach their memory, and
    once the unbind returned the middle piece faults. A walker that fetches the entries
    around a miss must not take the middle one from an entry the unbind had not cleared yet,
    after it invalidated (attack62's driver invalidated, waited for its unit, then cleared: a
    read of the neighbour in between left the old translation in its TLB, and it passed
    every other scenario and stress)."""

    async def unbind_the_middle() -> None:
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8)
        for order in _IN_FLIGHT_ORDERS:
            piece = PAGE_SIZE << order
            try:
                reservations = await reserve_run(vcm, piece, 3)
            except (NotSupportedError, NoSpaceError):  # one-to-one, or a small space
                break
            (block,) = _blocks(memory, order + 2)
            physes = [create_phys([(block + i * piece, piece)], memory=memory) for i in range(3)]
            on = await _reads_beside_an_unbind(vcm, reservations, physes)
            for res in reservations:
                await _until_done(res.unreserve if res.phys is None else res.unmap)
            for phys in physes:
                await _until_done(phys.free)
            memory.free_pages(block, order + 2)
            if not on:
                return  # (the driver failed to switch it on again: rule 8)
        await _until_done(vcm.deactivate)

    _raise_unexpected(await run.concurrently(unbind_the_middle), _REFUSED)


_IN_FLIGHT_ORDERS = (0, 4)  # _walks_in_flight's pieces: 4 KiB and 64 KiB


async def _reads_beside_an_unbind(vcm: Vcm, reservations: list[Res], physes: list[Phys]) -> bool:
    """:func:`_walks_in_flight` with one run of three: the pieces bound, then three times
    from cold the middle one unbound while the device reads beside it, the piece before it
    first and then the one after, then the other way round (a walker that fetches the entries
    after a miss meets the middle one only from the piece before it, attack63, and one that
    fetches those before it only from the piece after it), then the piece before it first
    and then the middle one itself, whatever that reaches while it goes (a cache filled a
    block at a time, or flushed whole, whose neighbours' entries stayed: attack64); False
    if the driver failed to switch the context on again (rule 8), which leaves it off."""
    first, middle, last = reservations
    size = middle.res_size
    below = partial(_read_word, vcm, first, size - 8)
    above = partial(_read_word, vcm, last, 0)
    inside = partial(_read_anything, vcm, middle.start)
    for before, during in ((below, above), (above, below), (below, inside)):
        if middle.phys is not None:
            await _until_done(middle.unbind)
        for res, phys in zip(reservations, physes, strict=True):
            if res.phys is None and not await _unless_driver_fails(
                partial(res.bind, phys), _BIND_TRIES
            ):
                return True  # (rule 8: nothing to unbind in flight)
        if not await _unless_driver_fails(vcm.deactivate):  # (then on again from cold)
            return True
        if not await _unless_driver_fails(vcm.activate):
            return False
        await _while_reading(middle.unbind, before, during)
        check_quiescent([vcm], physes=physes)
        _expect_gone(
            vcm, middle.start, size, "after an unbind while the pieces beside it were reached"
        )
    return True


_MANY_BINDINGS = 48  # more than a driver's cache of walks or entries may hold (32 is common)


async def _many_bindings(run: Run, vcm: Vcm) -> None:
    """More bindings live in one context at once than a driver's cache of them may hold,
    of 64 KiB and 4 KiB pages (4 KiB ones only once a small address space has no room for
    more of the others): while active, every one reaches its memory; unmapped oldest
    first (what a cache evicts first), half while active and half after a deactivate, none
    is left in the hardware, also after activating from cold. Nothing races (one task): the
    suite runs it until its schedules repeat."""

    async def bind_and_unmap() -> None:
        made: list[Res] = []
        large = True  # (till the space has no room for one: 4 KiB ones, as many, from there)
        for index in range(_MANY_BINDINGS):
            try:
                made.append(await vcm.make_binding(68 * KiB if large and index % 2 else 4 * KiB))
            except NoSpaceError:
                if not large or not index % 2:
                    raise
                large = False
                made.append(await vcm.make_binding(4 * KiB))
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8); the bindings go with destroy
        check_quiescent([vcm])
        _probe(*_bound(vcm))
        half = len(made) // 2
        for res in made[:half]:
            await res.unmap()
        check_quiescent([vcm])
        _probe(*_bound(vcm))
        await vcm.deactivate()
        for res in made[half:]:
            await res.unmap()
        check_quiescent([vcm])
        if await _unless_driver_fails(vcm.activate):
            check_quiescent([vcm])
            await vcm.deactivate()

    _raise_unexpected(await run.concurrently(bind_and_unmap), set())


# Sizes of the bindings fragments makes: pages and runs of pages that leave holes of every
# shape, large pages and a page more than one (alignment padding a first fit must count).
_FRAGMENT_SIZES = tuple(
    size * KiB for size in (4, 8, 12, 20, 28, 36, 60, 64, 68, 124, 132, 1024, 1028)
)
_FRAGMENT_ROUNDS = 4
_FRAGMENT_BINDINGS = 24  # made in each round
_FRAGMENT_REFUSALS = 4  # in a row that end a round: full


async def _fragments(run: Run, vcm: Vcm) -> None:
    """Bindings of many sizes made and unmapped in rounds, in one active context: each round
    makes some and unmaps every other live one, then every third, and so on, so that the
    allocators of memory and of address space (a carve-out's first fit, aligned now and then)
    serve from holes of every shape between live ones. After each round no two live
    allocations overlap (the model check) and each binding reaches its own memory; at the end
    none is left in the hardware. Nothing races (one task): the suite runs it until its
    schedules repeat."""

    async def churn() -> None:
        sizes = itertools.cycle(_FRAGMENT_SIZES[index] for index in _FRAGMENT_ORDER)
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8)
        live: list[Res] = []
        for turn in range(_FRAGMENT_ROUNDS):
            refused = 0
            for _ in range(_FRAGMENT_BINDINGS):
                try:
                    live.append(await vcm.make_binding(next(sizes)))
                    refused = 0
                except (NoSpaceError, NoMemoryError):
                    # a size the driver refuses now and then (rule 8), or full: the next
                    # size, till it refuses several in a row (attack65: a driver refusing
                    # one in four ended every round at three bindings)
                    refused += 1
                    if refused == _FRAGMENT_REFUSALS:
                        break
            check_quiescent([vcm])
            _probe(*_bound(vcm))
            going = live[turn % 2 :: 2 + turn % 2]
            for res in going:
                await res.destroy_binding()
            live = [res for res in live if res not in going]
            check_quiescent([vcm])
        for res in live:
            await res.destroy_binding()
        check_quiescent([vcm])
        await vcm.deactivate()

    _raise_unexpected(await run.concurrently(churn), set())


# the order fragments draws _FRAGMENT_SIZES in: spread, so that neighbours differ in size
_FRAGMENT_ORDER = (0, 7, 2, 11, 4, 1, 9, 3, 12, 5, 8, 0, 6, 10, 2, 1)


async def _contexts_apart(run: Run, *vcms: Vcm) -> None:
    """Three contexts of one driver on one memory, allocating, binding and activating at
    once: no two live allocations overlap, each device reaches only its own context's
    memory, and taking one context down (deactivated, its bindings destroyed) leaves every
    other one whole, active in the hardware and reaching all its memory."""
    # What a device touches, hardware may cache (an IOTLB): a binding of each context is
    # touched first only after another context went down, so that page tables freed under
    # it show, and are not hidden by translations cached before.
    touched: dict[Vcm, list[Res]] = {}
    for vcm in vcms:
        touched[vcm] = [await vcm.make_binding(8 * KiB)]
        await vcm.make_binding(68 * KiB)

    def probe_touched(*of: Vcm) -> None:
        _probe(*((vcm, res) for vcm, res in _bound(*of) if res in touched[vcm]))

    # the activations start together: hardware they share is then updated at the same
    # (virtual) time, also in a driver that waits between reading and writing it
    async def build(vcm: Vcm) -> None:
        await vcm.activate()
        _expect_state(*vcms)
        touched[vcm].append(await vcm.make_binding(12 * KiB))
        probe_touched(vcm)

    async def churn(vcm: Vcm) -> None:
        phys = await vcm.alloc(12 * KiB)
        await phys.free()

    outcomes = await run.concurrently(
        *(partial(build, vcm) for vcm in vcms), partial(churn, vcms[0])
    )
    _raise_unexpected(outcomes, set())
    check_quiescent(vcms)
    probe_touched(*vcms)

    async def take_down(vcm: Vcm) -> None:
        while vcm.activations:
            await vcm.deactivate()
        _expect_state(*vcms)
        for res in vcm.reservations():
            await res.destroy_binding()

    async def still_there(vcm: Vcm) -> None:
        for _ in range(3):
            probe_touched(vcm)
            await anyio.lowlevel.checkpoint()

    for doomed in vcms:
        rest = [vcm for vcm in vcms if vcm is not doomed]
        outcomes = await run.concurrently(
            partial(take_down, doomed), *(partial(still_there, vcm) for vcm in rest)
        )
        _raise_unexpected(outcomes, set())
        check_quiescent(vcms)
        _probe(*_bound(*rest))  # the untouched bindings too, from here on
        for vcm in rest:
            touched[vcm] = list(vcm.reservations())


async def _detached(run: Run, first: Vcm, second: Vcm) -> None:
    """Two contexts of one driver on one memory, both active and bound; the first is destroyed
    with everything in it (a device detached) while the second goes on: hardware they share
    (a root table, a usage count, page-table pages) must keep the second whole, active in the
    hardware and reaching all its memory, and the first must leave nothing behind."""
    for vcm in (first, second):
        await vcm.make_binding(8 * KiB)
        await vcm.make_binding(68 * KiB)
        await vcm.activate()

    async def detach() -> None:
        await _until_done(first.destroy)
        _expect_state(second)

    async def go_on() -> None:
        for _ in range(2):
            _probe(*_bound(second))
            res = await second.make_binding(12 * KiB)
            _probe((second, res))
            start, size = res.start, res.res_size
            await res.destroy_binding()
            _expect_gone(second, start, size, "after destroy_binding returned")

    _raise_unexpected(await run.concurrently(detach, go_on), set())
    check_quiescent([second])
    _probe(*_bound(second))
    await second.deactivate()
    check_quiescent([second])


async def _far_apart(run: Run, vcm: Vcm) -> None:
    """Bindings far apart in one context: one at the top of its address space, then at the
    start of reservations of half of what is left, a quarter... down to its bottom (a page
    table that aliases distant addresses, an index masked too narrowly or a truncated address
    shows). Each reaches its own memory while all are live, and what is unbound is gone while
    the others stay whole. Nothing races (one task): the suite runs it until its schedules
    repeat."""

    async def spread() -> None:
        top = await vcm.make_binding(8 * KiB)
        far: list[Res] = []
        left = vcm.size - top.res_size
        while left >= 2 * MiB:
            try:
                res = await vcm.reserve(left // 2)
            except NotSupportedError:
                return  # a one-to-one context: device addresses are the memory's own
            far.append(res)
            left -= res.res_size
            await res.bind(await vcm.alloc(8 * KiB))
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8); the bindings go with destroy
        check_quiescent([vcm])
        _probe(*_bound(vcm))
        for res in far[::2]:  # every other one, the others left whole
            start = res.start
            phys = await res.unbind()
            if phys is not None:
                await phys.free()
            _expect_gone(vcm, start, 8 * KiB, "after unbind returned")
        check_quiescent([vcm])
        _probe(*_bound(vcm))
        await vcm.deactivate()

    _raise_unexpected(await run.concurrently(spread), set())


# More unmaps than a 9-bit count of the driver's counts: a TLB generation, an address space
# id or a ring index that wraps meets an entry it left behind a whole turn before. (Each turn
# costs the race finder a few steps: a 16-bit count's 65,536 would take minutes.)
_TURNS = 600
_QUIESCENT_EVERY = 100  # turns between model checks: a leak of a table page a turn shows


async def _long_lived(run: Run, vcm: Vcm) -> None:
    """One context kept active through more binds and unmaps than a 9-bit counter counts:
    a page the device reached, unbound at the start and kept reserved, faults at every turn
    (a TLB entry invalidated by a generation that wraps would hit again), and each new binding
    reaches its own memory. Nothing races (one task): the suite runs it until its schedules
    repeat."""

    async def turn_over() -> None:
        try:
            kept = await vcm.reserve(4 * KiB)
        except NotSupportedError:
            return  # a one-to-one context: device addresses are the memory's own
        await kept.bind(await vcm.alloc(4 * KiB))
        if not await _unless_driver_fails(vcm.activate):
            return  # a driver's own failure (rule 8); the bindings go with destroy
        _probe((vcm, kept))  # now in any TLB the device has
        phys = await kept.unbind()
        if phys is not None:
            await phys.free()
        for turn in range(_TURNS):
            _expect_fault(vcm, kept.start, f"{turn} binds and unmaps after an unbind returned")
            res = await vcm.make_binding(4 * KiB)
            _expect_reach(vcm, res, turn.to_bytes(8, "little"))
            await res.unmap()
            if turn % _QUIESCENT_EVERY == 0:
                check_quiescent([vcm])
        await vcm.deactivate()

    _raise_unexpected(await run.concurrently(turn_over), set())


# Reservations of several pages each, 4 KiB pages among large ones: a bind makes many page
# writes, and one the hardware does not acknowledge comes after others of the same bind.
_OWN_SIZES = (20 * KiB, 68 * KiB, 36 * KiB, MiB + 12 * KiB, 132 * KiB)
_OWN_TURNS = 200


async def _own_failures(run: Run, vcm: Vcm) -> None:
    """One context kept active through binds and unbinds of reservations of several pages,
    switched off and on again now and then: an operation the driver fails on its own (rule 8:
    hardware that did not acknowledge a write, not a fault the suite injects, which comes
    before the driver runs) leaves the hardware as the model says, nothing of a reservation
    whose bind failed reachable, and what was bound before whole. The undo is the driver's:
    avcm cannot know which of its writes went through. Nothing races (one task): the suite
    runs it until its schedules repeat."""

    async def turn_over() -> None:
        try:
            kept = await vcm.reserve(8 * KiB)
        except NotSupportedError:
            return  # a one-to-one context: binding is allocating, with nothing to write
        await kept.bind(await vcm.alloc(8 * KiB))
        if not await _unless_driver_fails(vcm.activate):
            check_quiescent([vcm])
            return  # (activated by none of this scenario's calls: nothing more to look at)
        for turn in range(_OWN_TURNS):
            size = _OWN_SIZES[turn % len(_OWN_SIZES)]
            res = await vcm.reserve(size)
            phys = await vcm.alloc(size)
            if await _unless_driver_fails(partial(res.bind, phys)):
                _probe((vcm, res), (vcm, kept))
                await res.destroy_binding()
            else:
                check_quiescent([vcm])
                _expect_gone(vcm, res.start, size, "after a bind the driver failed returned")
                _probe((vcm, kept))
                await phys.free()
                await res.unreserve()
            if turn % 10 == 9:  # the activate that maps every bound reservation again
                await vcm.deactivate()
                await _until_done(vcm.activate)
                check_quiescent([vcm])
                _probe((vcm, kept))
        await vcm.deactivate()

    _raise_unexpected(await run.concurrently(turn_over), set())


async def _tables_reused(run: Run, first: Vcm, second: Vcm) -> None:
    """Two contexts of one driver on one memory, both active, with the same device addresses:
    what the first gives back when its last mapping of a range goes (a page-table page, a
    TLB entry, a walk its device cached), the second may take for the same addresses. The
    first's device walked there before; once the second mapped them, it must fault there,
    reaching nothing of the second's memory, while the second reaches its own. Then the first
    alone: a page its device reached, unbound and kept reserved, faults while the context maps
    pages 8 MiB, 7 MiB... 1 MiB from it (what it gave back, it may take again for another
    range, at the same offset in that range; with the MMU wrapper's allocator, which places
    reservations one after another in an empty space). Nothing races (one task): the suite
    runs it until its schedules repeat."""

    async def hand_over() -> None:
        for vcm in (first, second):
            if not await _unless_driver_fails(vcm.activate):
                return  # a driver's own failure (rule 8); what is active goes with destroy
        for size in (4 * KiB, 68 * KiB, MiB + 4 * KiB):
            given = await first.make_binding(size)
            _probe((first, given))  # walked: in whatever the device caches
            start = given.start
            await given.destroy_binding()
            taken = await second.make_binding(size)
            _probe((second, taken))
            _expect_gone(
                first,
                start,
                size,
                "after destroy_binding returned, another context mapping "
                "the same device addresses since",
            )
            await taken.destroy_binding()
        check_quiescent([first, second])
        await _taken_back(first)
        check_quiescent([first, second])
        for vcm in (first, second):
            await vcm.deactivate()

    _raise_unexpected(await run.concurrently(hand_over), set())


# Pages bound at the start of this many reservations of 1 MiB, one after another: for any
# range of up to 8 MiB that the hardware keeps a table or a walk for, one of them is in another
# such range at the same offset as a 1 MiB boundary of the first (what a table indexed by the
# offset alone, handed from one range to another, maps there).
_RANGES = 8


async def _map_ranges(vcm: Vcm, check: Callable[[], None]) -> None:
    """Reserve :data:`_RANGES` reservations of 1 MiB in active *vcm*, then bind a page at the
    start of each, the last reserved first (the farthest from what was there before: a range
    nearer may be the same as the one a table was given back for, and take it back), reaching
    each through the device, and call *check* after each; then unmap them. Nothing in a
    one-to-one context (it does not reserve alone)."""
    ranges: list[Res] = []
    for _ in range(_RANGES):
        try:
            ranges.append(await vcm.reserve(MiB))
        except NotSupportedError:
            return  # a one-to-one context: device addresses are the memory's own
        except NoSpaceError:
            break  # a small address space: as many as it holds
    for res in reversed(ranges):
        await res.bind(await vcm.alloc(4 * KiB))
        _probe((vcm, res))
        check()
    for res in ranges:
        await res.destroy_binding()


async def _bind_range(vcm: Vcm) -> Res:
    """A binding of 8 KiB at the start of a reservation of 1 MiB (on a 1 MiB boundary, with the
    MMU wrapper's allocator and 1 MiB pages: see :data:`_RANGES`), or, in a one-to-one context
    or an address space too small for it, wherever its allocator puts 8 KiB."""
    try:
        res = await vcm.reserve(MiB)
    except (NotSupportedError, NoSpaceError):  # a one-to-one context, a small address space
        return await vcm.make_binding(8 * KiB)
    await res.bind(await vcm.alloc(8 * KiB))
    return res


async def _taken_back(vcm: Vcm) -> None:
    """The second part of :func:`_tables_reused`, in active *vcm* with nothing bound."""
    kept = await _bind_range(vcm)
    _probe((vcm, kept))  # walked: in whatever the device caches
    start = kept.start
    phys = await kept.unbind()
    if phys is not None:
        await phys.free()
    await _map_ranges(
        vcm,
        partial(
            _expect_fault,
            vcm,
            start,
            "after unbind returned, the context mapping other ranges since",
        ),
    )
    await kept.unreserve()


_GENERATIONS = 9  # contexts live at once: more than a 3-bit id tells apart


async def _generations(run: Run, make: Callable[[], Awaitable[Vcm]]) -> None:
    """Contexts of one driver made one after another on one memory, up to more at once than a
    3-bit id tells apart, each active with a binding at the same device addresses to memory of
    its own; then each but the first destroyed and a new one made in its place, which maps
    nothing where the destroyed one did while the first context maps pages in other ranges
    (taking what the destroyed one gave back): each device reaches only its own context's
    memory, and a context made after another was destroyed reaches nothing of what that one
    mapped (an id that wraps, or one given back and given again with what the destroyed
    context left tagged with it: a TLB entry, a cached walk). Nothing races (one task): the
    suite runs it until its schedules repeat."""

    async def come_and_go() -> None:
        live: list[tuple[Vcm, Res]] = []
        for _ in range(_GENERATIONS):
            try:
                vcm = await make()
            except _CannotRun:
                if len(live) < 2:
                    raise
                break  # hardware for fewer contexts: as many as it has, made anew below
            res = await _bind_range(vcm)
            if not await _unless_driver_fails(vcm.activate):
                return  # a driver's own failure (rule 8); the contexts go with destroy
            live.append((vcm, res))
            _probe(*live)
        first = live[0][0]
        for index in range(1, len(live)):
            old, res = live.pop(index)
            gone = res.start
            await _until_done(old.destroy)
            _expect_state(*(vcm for vcm, _ in live))
            _probe(*live)
            vcm = await make()
            if not await _unless_driver_fails(vcm.activate):
                return
            after = "in a context made after one that mapped there was destroyed"
            _expect_fault(vcm, gone, after)
            await _map_ranges(first, partial(_expect_fault, vcm, gone, after))
            live.insert(index, (vcm, await _bind_range(vcm)))
            _probe(*live)

    _raise_unexpected(await run.concurrently(come_and_go), set())


async def _one_phys_many_views(run: Run, first: Vcm, second: Vcm) -> None:
    """One phys mapped twice in one context and once in another, while active or not: a
    device write through any mapping reads back through every other one and is in the memory
    the model binds (rule 4); unmapping one (a range over a MiB: it crosses a MiB boundary)
    leaves no page of it reachable and the others whole, and so does destroying a binding
    made first (at the top of the space of an allocator that works down from it: its last
    page is just below a MiB boundary)."""
    edge = await first.make_binding(8 * KiB)
    phys = await first.alloc(MiB + 8 * KiB)
    views: list[tuple[Vcm, Res]] = []

    async def map_in(vcm: Vcm, active: bool) -> None:
        if active:
            async with vcm.activated():
                views.append((vcm, await vcm.map(phys)))
        else:
            views.append((vcm, await vcm.map(phys)))

    async def toggle(vcm: Vcm) -> None:
        async with vcm.activated():
            pass

    outcomes = await run.concurrently(
        partial(map_in, first, True),
        partial(map_in, first, False),
        partial(map_in, second, True),
        partial(toggle, second),
    )
    # one-to-one contexts place a phys at its own address: a second view there is refused
    _raise_unexpected(outcomes, _REFUSED | {errno.EADDRINUSE, errno.EEXIST, errno.EBUSY})
    check_quiescent([first, second])
    # an activate the driver fails (rule 8) ends the device checks, not the cleanup: what the
    # scenario made it gives back, or its own memory would show as the driver's leak
    if await _unless_driver_fails(first.activate):
        if await _unless_driver_fails(second.activate):
            await _views_agree(views, edge, first)
            await _until_done(second.deactivate)
        await _until_done(first.deactivate)
    check_quiescent([first, second])
    for _, res in views:
        if res.phys is not None:
            await _until_done(res.unmap)
    await _until_done(phys.free)
    if edge.phys is not None:
        await _until_done(edge.destroy_binding)


async def _views_agree(views: list[tuple[Vcm, Res]], edge: Res, first: Vcm) -> None:
    """With both contexts on: a device write through each view reads back through every
    other one; destroying *edge* and unmapping the first view leave none of their pages
    reachable, and the other views whole."""
    seen = [(vcm, res) for vcm, res in views if _device(vcm) is not None]
    for salt, (vcm, res) in enumerate(seen, 1):
        pattern = _write_through(vcm, res, salt)
        if pattern is not None:
            for other, view in seen:
                _check_memory(other, view, pattern)
    if _device(first) is not None:
        start, size = edge.start, edge.res_size
        await _until_done(edge.destroy_binding)
        _expect_gone(first, start, size, "after destroy_binding returned")
    if len(seen) > 1:
        vcm, res = seen[0]
        start, size = res.start, res.res_size
        await _until_done(res.unmap)
        _expect_gone(vcm, start, size, "after unmap returned")
        pattern = _write_through(*seen[1], len(seen) + 1)
        if pattern is not None:
            for other, view in seen[1:]:
                _check_memory(other, view, pattern)


async def _cancel_anywhere(run: Run, first: Vcm, second: Vcm) -> None:
    """Run with cancellations injected at random checkpoints: building operations of two
    contexts sharing hardware cancelled anywhere, the driver's calls included, had no effect
    (rule 7); what was not cancelled works; and after destroy nothing leaks (rule 9)."""
    for vcm in (first, second):
        for _ in range(2):
            await vcm.make_binding(8 * KiB)

    async def activate(vcm: Vcm) -> None:
        await vcm.activate()
        _probe(*_bound(vcm))

    async def make(vcm: Vcm) -> None:
        res = await vcm.make_binding(68 * KiB)
        await res.destroy_binding()

    held = 0  # the pair's activation, while held: also when its exit's deactivate failed

    async def pair(vcm: Vcm) -> None:
        nonlocal held
        raised: list[BaseException] = []
        entered = 0
        try:
            async with vcm.activated():
                held += 1
                entered = 1
                try:
                    res = await vcm.make_binding(12 * KiB)
                    _probe((vcm, res))
                except BaseException as error:
                    raised.append(error)
                    raise
        except BaseException as error:
            # the exit's deactivate failed in the driver (rule 8: no effect, the activation is
            # left) when its error, not the block's, comes out (a cancellation of the block is
            # delivered again once the exit deactivated, maybe as another exception)
            exit_failed = _raised_by_driver(error) and not (raised and error is raised[0])
            if not exit_failed:
                held -= entered
            raise
        held -= entered

    outcomes = await run.concurrently(
        partial(activate, first),
        partial(activate, second),
        partial(make, first),
        partial(pair, second),
        names=["activate first", "activate second", "make first", "pair second"],
    )
    _raise_unexpected(outcomes, set())
    for vcm, outcome in ((first, outcomes[0]), (second, outcomes[1])):
        # an activate that returned left one activation; one cancelled, or failed by the
        # driver, none
        want = int(outcome.ok and not outcome.cancelled) + (held if vcm is second else 0)
        assert vcm.activations == want, (
            f"rule 7: {vcm.name}: activations={vcm.activations} after an activate that "
            f"{outcome.describe()}"
        )
    check_quiescent([first, second])
    for vcm in (first, second):
        if not vcm.activations:
            await _unless_driver_fails(vcm.activate)
    check_quiescent([first, second])
    _probe(*_bound(first, second))
    for vcm in (first, second):
        if vcm.activations:
            await vcm.deactivate()


@dataclass(frozen=True, slots=True)
class _Spec:
    """A scenario: its rules, what it checks, its body (given the run, then *memory* if
    ``needs_memory``, then a call that makes one more context if ``makes_contexts``, then
    *contexts* contexts made by the factory on that memory), the
    cancellations the race finder injects into each schedule (at random checkpoints), and,
    for one without a race, how many schedules adding nothing new end it early."""

    rule: str
    summary: str
    body: Callable[..., Awaitable[None]]
    contexts: int = 1
    needs_memory: bool = False
    makes_contexts: bool = False  # given a call that makes one more (after memory, if given)
    cancel: int = 0
    until_covered: int | None = None  # stop after this many schedules in a row added nothing

    @property
    def limits(self) -> Limits:
        """A scenario with no race (one that stops once its schedules repeat) runs one task
        through long work: :data:`LONG_STEPS` steps in a row may pass with no time passing (a
        driver of 4 KiB pages and no latency took more than the default in own_failures,
        attack58) before the run is a livelock; a racing one has the default budget."""
        return Limits(max_steps=LONG_STEPS) if self.until_covered is not None else Limits()


# Steps in a row with no time passing that a scenario with no race may take (see _Spec.limits).
LONG_STEPS = 100_000


_SPECS: dict[str, _Spec] = {
    "activation_is_real": _Spec(
        "rules 1, 3", "concurrent activates return with the hardware active", _activation_is_real
    ),
    "cancelled_activation": _Spec(
        "rule 2", "an activate cancelled anywhere leaves nothing behind", _cancelled_activation
    ),
    "nested_pairs": _Spec(
        "rule 3", "activate/deactivate pairs in any order end at zero", _nested_pairs
    ),
    "bind_while_active": _Spec(
        "rule 4", "binds, unbinds and toggles keep hardware == model", _bind_while_active
    ),
    "one_winner": _Spec(
        "rule 5", "one bind wins, one unbind returns the phys, bindings right", _one_winner
    ),
    "free_racing_bind": _Spec(
        "rule 6", "free racing bind: exactly one wins, no freed memory bound", _free_racing_bind
    ),
    "cancellation": _Spec(
        "rule 7", "operations cancelled anywhere complete or have no effect", _cancellation
    ),
    "faults": _Spec(
        "rule 8", "a driver call failing anywhere leaves all consistent, the error seen", _faults
    ),
    "allocation_and_leaks": _Spec(
        "rule 9", "concurrent allocation never overlaps, destroy frees all", _allocation_and_leaks
    ),
    "shared_hardware": _Spec(
        "rule 4",
        "two contexts on one memory at once: each true to its model",
        _shared_hardware,
        contexts=2,
    ),
    "multipart": _Spec(
        "rule 4",
        "scattered multi-part physes: every byte reaches its part through the device",
        _multipart,
        needs_memory=True,
    ),
    "large_pages": _Spec(
        "rule 4",
        "1 MiB and 64 KiB pages only where the memory is aligned for them",
        _large_pages,
        needs_memory=True,
        until_covered=2,
    ),
    "memory_ends": _Spec(
        "rule 4",
        "physes at the very end of physical memory: every byte, the last too, reached",
        _memory_ends,
        needs_memory=True,
        until_covered=2,
    ),
    "neighbours": _Spec(
        "rule 4",
        "a block bound in pieces next to each other, one unbound or bound anew: unfolded",
        _neighbours,
        contexts=2,
        needs_memory=True,
        until_covered=2,
    ),
    "walks_in_flight": _Spec(
        "rule 4",
        "a piece unbound while the device reaches those beside it from cold: unreachable after",
        _walks_in_flight,
        needs_memory=True,
    ),
    "many_bindings": _Spec(
        "rule 4",
        f"{_MANY_BINDINGS} bindings live in one context: all mapped, none left after unmap",
        _many_bindings,
        until_covered=2,
    ),
    "fragments": _Spec(
        "rules 4, 9",
        "bindings of many sizes made and unmapped in rounds: apart from the holes they leave",
        _fragments,
        until_covered=2,
    ),
    "power_sharing": _Spec(
        "rules 1, 4",
        "two contexts switched at once: each on or off as its own count says",
        _power_sharing,
        contexts=2,
    ),
    "restart_racing": _Spec(
        "rule 4",
        "the last user switching off while another switches on from cold: each as it counts",
        _restart_racing,
        contexts=2,
    ),
    "contexts_apart": _Spec(
        "rules 4, 9",
        "three contexts on one memory: apart, and whole when another is taken down",
        _contexts_apart,
        contexts=3,
    ),
    "detached": _Spec(
        "rules 4, 9",
        "a context destroyed with all it holds while another goes on: that one stays whole",
        _detached,
        contexts=2,
    ),
    "far_apart": _Spec(
        "rule 4",
        "bindings from the top of the address space to its bottom: each reaches its memory",
        _far_apart,
        until_covered=2,
    ),
    "long_lived": _Spec(
        "rule 4",
        f"{_TURNS:,} binds and unmaps in one active context: what was unbound stays gone",
        _long_lived,
        until_covered=1,  # its turns make it long: one schedule again says nothing new
    ),
    "own_failures": _Spec(
        "rule 8",
        "binds the driver fails on its own leave nothing mapped, the rest whole",
        _own_failures,
        until_covered=1,  # its turns make it long: one schedule again says nothing new
    ),
    "tables_reused": _Spec(
        "rule 4",
        "what one context gives back, another takes: the first's device reaches none of it",
        _tables_reused,
        contexts=2,
        until_covered=2,
    ),
    "generations": _Spec(
        "rules 4, 9",
        f"{_GENERATIONS} contexts live on one memory, then each made anew: none reaches another",
        _generations,
        contexts=0,
        makes_contexts=True,
        until_covered=2,
    ),
    "one_phys_many_views": _Spec(
        "rule 4",
        "one phys mapped in two contexts, twice in one: every view reaches the same bytes",
        _one_phys_many_views,
        contexts=2,
    ),
    "cancel_anywhere": _Spec(
        "rules 7, 9",
        "cancellations injected at any checkpoint of two contexts: no effect, no leak",
        _cancel_anywhere,
        contexts=2,
        cancel=2,
    ),
}

SCENARIOS: dict[str, tuple[str, str]] = {
    name: (spec.rule, spec.summary) for name, spec in _SPECS.items()
}


# -- the checks after every schedule ---------------------------------------------------------


async def _make(factory: Factory, memory: PhysicalMemory) -> Vcm:
    made = factory(memory)
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, Vcm):
        raise InvalidError(f"conformance: the factory returned {made!r}, not an avcm.Vcm")
    return made


# How often a scenario starts again because the driver failed one of its calls before the
# race (rule 8 lets any driver call fail), before the suite says it cannot run it.
SETUP_ATTEMPTS = 100


def _scenario(
    factory: Factory, name: str
) -> tuple[Callable[[Run], Awaitable[None]], list[int], list[_CannotRun]]:
    """The scenario *name* on contexts *factory* makes, a count of its runs (schedules) that
    ended with no verdict (every attempt left the hardware half done, or stuck, or the
    factory made fewer contexts than the scenario needs once it had begun), and why the
    last of those it could not run for the factory could not run."""
    spec = _SPECS[name]
    unjudged = [0]
    cannot_run: list[_CannotRun] = []

    async def attempt(run: Run) -> bool:
        """Run the scenario on new contexts and check what it left; False if the driver failed
        a call of its own before the race (nothing raced), or a teardown call of an undo (the
        hardware may be half done): no verdict, start again."""
        memory = PhysicalMemory(size=64 << 20)
        free_before = memory.free_bytes
        undo_failures_before = undo_failures()

        def half_done() -> bool:
            return undo_failures() > undo_failures_before

        async def judged(step: Callable[[], Awaitable[object]]) -> bool:
            """Await *step*; False if what it did cannot be judged: an undo of avcm's failed
            in the driver (the hardware may be left half done, which the contract says no
            framework can contain: partial effects), whatever was raised then, or the driver
            never let a teardown through."""
            try:
                await step()
            except _NoVerdict:
                return False
            except Exception:
                if not half_done():
                    raise
            return not half_done()

        vcms: list[Vcm] = []

        async def make() -> Vcm:
            try:
                vcm = await _make(factory, memory)
            except InvalidError:
                raise  # not a context at all: bad input, not hardware that ran out
            except Exception as error:
                raise _CannotRun(
                    f"the factory made {len(vcms)} context(s) on one memory, then failed: "
                    f"{error!r} (a scenario that needs more cannot run)"
                ) from error
            vcms.append(vcm)  # held to every rule below, and destroyed, as the others
            return vcm

        for _ in range(spec.contexts):
            await make()
        raced = True

        async def body() -> None:
            nonlocal raced
            try:
                await spec.body(
                    run,
                    *([memory] if spec.needs_memory else []),
                    *([make] if spec.makes_contexts else []),
                    *vcms,
                )
            except OSError as error:
                # A driver call outside the race failed, as rule 8 lets it: it reached the
                # caller, which is right, and the scenario's steps after it cannot follow.
                # What the contexts are left in is still held to every rule below.
                if isinstance(error, NoSpaceError) and not _raised_by_driver(error):
                    raise _too_small(error) from error
                if not _raised_by_driver(error):
                    raise
                raced = bool(run.decisions)

        async def destroy() -> None:
            for vcm in vcms:
                if not vcm.destroyed:  # (a scenario may destroy one itself)
                    await _until_done(vcm.destroy)

        with warnings.catch_warnings():
            # the races provoke the kernel's WARN_ON cases (unbind of an unbound res...)
            warnings.simplefilter("ignore", VcmWarning)
            if not await judged(body):  # no verdict: start again on new contexts
                for vcm in vcms:
                    with contextlib.suppress(Exception):
                        await vcm.destroy()
                return False
            check_quiescent(vcms)
            check_no_write_after_free(memory, "when the scenario ended")
            if not await judged(destroy):
                return False
        check_no_write_after_free(memory, "after destroy")
        leaked = free_before - memory.free_bytes
        assert leaked == 0, f"rule 9: {leaked:#x} bytes of memory not free after destroy"
        return raced

    async def scenario(run: Run) -> None:
        for _ in range(SETUP_ATTEMPTS):
            try:
                if await attempt(run):
                    return
            except _CannotRun as error:
                if not run.decisions:
                    raise
                # (a scenario that makes contexts as it goes: no verdict on this schedule)
                unjudged[0] += 1
                cannot_run[:] = [error]
                return
            except AssertionError as error:
                if run.decisions:
                    raise  # a schedule's failure: the race finder reports and replays it
                # broken before anything raced (the driver failed a call of its own, and what
                # it left breaks a rule): no schedule to blame, but a failure all the same
                raise _FailedBeforeRace(str(error)) from error
        if run.decisions:  # raced, with no verdict: this schedule says nothing either way
            unjudged[0] += 1
            return
        raise _CannotRun(
            f"the driver failed a call before the race in {SETUP_ATTEMPTS} attempts in a row "
            "(rule 8 lets it fail, but nothing raced: no verdict)"
        )

    # Reports name it as the suite does (``conformance:one_winner``), not by the private
    # module that builds it; replays go through the suite, which rebuilds it by name.
    scenario.__name__ = scenario.__qualname__ = name
    scenario.__module__ = "conformance"
    return scenario, unjudged, cannot_run


class _CannotRun(Exception):
    """A scenario could not get to its race: why."""


class _DoesNotApply(_CannotRun):
    """A scenario needs more than the hardware has (device addresses): it has nothing to
    check on this driver, which is no fault of the driver's."""


class _FailedBeforeRace(Exception):
    """A scenario broke a rule before its race, with no schedule to replay: which."""


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One scenario's result: the schedules run, and its failure if one broke a rule, or why
    it could not run (*not_run*: no verdict either way), or why it does not apply to the
    driver (*does_not_apply*: it needs more than the hardware has, device addresses; not a
    failure, and the suite passes without it); *unjudged* of its schedules ended with no
    verdict (each attempt at it left the hardware half done: an undo the driver failed, or a
    teardown it never let through)."""

    name: str
    rule: str
    schedules: int
    failure: Failure | None
    not_run: str | None = None
    unjudged: int = 0
    # the rule it broke before its race (no schedule to replay: its setup failed in the
    # driver, as rule 8 lets it, and what that left broke the rule)
    failed_before_race: str | None = None
    does_not_apply: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None and self.not_run is None and self.failed_before_race is None


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """Per scenario: the rule it checks, the schedules run, and the failure if any."""

    driver: str
    backend: str
    results: tuple[ScenarioResult, ...]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failed(self) -> bool:
        """Whether a scenario found the driver breaking a rule (or failing before its race):
        not the same as not :attr:`passed`, which also holds when scenarios could not run
        (no verdict, either way)."""
        return bool(self.failures) or any(result.failed_before_race for result in self.results)

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(result.failure for result in self.results if result.failure is not None)

    def format(self) -> str:
        lines = [f"avcm conformance of {self.driver} on {self.backend}:"]
        for result in self.results:
            verdict = (
                "NOT RUN"
                if result.not_run
                else "does not apply"
                if result.does_not_apply
                else "ok"
                if result.passed
                else "FAILED"
            )
            if result.unjudged:
                verdict += f" ({result.unjudged} with no verdict)"
            lines.append(
                f"  {result.name:22} {result.rule:11} {result.schedules:6} schedules  {verdict}"
            )
        for failure in self.failures:
            lines.append("")
            lines.append(failure.report())
        not_run = [result for result in self.results if result.not_run]
        early = [result for result in self.results if result.failed_before_race]
        apart = [result for result in self.results if result.does_not_apply]
        if not_run or early or apart:
            lines.append("")
        for result in early:
            lines.append(
                f"conformance:{result.name} failed before its race (no schedule to replay: "
                f"the driver failed a call of its setup): {result.failed_before_race}"
            )
        for result in not_run:
            lines.append(f"{result.name} could not run: {result.not_run}")
        for result in apart:
            lines.append(f"{result.name} does not apply: {result.does_not_apply}")
        lines.append("")
        if self.passed:
            schedules = sum(result.schedules for result in self.results)
            left_out = f" ({len(apart)} did not apply to the driver)" if apart else ""
            lines += textwrap.wrap(
                f"covered: {len(self.results) - len(apart)} scenario(s){left_out}, "
                f"{schedules:,} schedules on {self.backend}. A pass says that no schedule "
                "tried broke a rule: evidence, not a proof that the driver is correct (other "
                "interleavings, other uses, "
                "the other backend may still break one).",
                width=100,
            )
        if self.passed:
            verdict = f"passed ({len(apart)} scenario(s) did not apply)" if apart else "passed"
        elif self.failed:
            verdict = "FAILED"
        else:
            verdict = f"NOT PASSED: {len(not_run)} scenario(s) could not run"
        lines.append(f"conformance: {verdict}")
        return "\n".join(lines)


async def check_conformance_async(
    factory: Factory,
    *,
    schedules: int = 200,
    seed: int = 0,
    only: str | None = None,
    replay_token: str | None = None,
    factory_spec: str | None = None,
    on_progress: Callable[[int], object] | None = None,
) -> ConformanceReport:
    """:func:`check_conformance` in the running event loop.

    Raises:
        ConformanceFailure: the driver failed a scenario, or a scenario could not run (its
            driver failed every attempt before the race); ``error.report`` is the report.
        avcm.InvalidError: bad arguments, or a factory that makes no context.
    """
    if only is not None and only not in SCENARIOS:
        raise InvalidError(
            f"conformance: no scenario {only!r} (choose from {', '.join(SCENARIOS)})"
        )
    if replay_token is not None and only is None:
        raise InvalidError("conformance: a replay token replays one scenario: name it")
    backend = _backend()
    # a factory that cannot make a context is bad input, not a failure of some schedule
    try:
        probe = await _make(factory, PhysicalMemory(size=64 << 20))
    except InvalidError:
        raise
    except Exception as error:
        raise InvalidError(
            f"conformance: the factory raised {type(error).__name__}: {error}"
        ) from error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VcmWarning)
        await _until_done(probe.destroy)
    driver = factory_spec or str(getattr(factory, "__qualname__", repr(factory)))
    results = []
    for name in [only] if only is not None else list(SCENARIOS):
        rule = SCENARIOS[name][0]
        scenario, unjudged, cannot_run = _scenario(factory, name)
        if factory_spec is not None:
            command = (
                f"{PYTHON} -m avcm.testing conformance {factory_spec} --scenario {name} "
                f"--replay {{token}} --backend {backend}"
            )
        else:
            command = (
                f"avcm.testing.check_conformance({driver}, only={name!r}, "
                f"replay_token={{token_literal}}, backend={backend!r})"
            )
        try:
            if replay_token is not None:
                failure = await replay_async(
                    scenario, replay_token, command=command, limits=_SPECS[name].limits
                )
                longer = _longer_than_the_budget(failure)
                results.append(ScenarioResult(name, rule, 1, None if longer else failure, longer))
                continue
            # (each scenario before counts in full: one that ended early, its schedules
            # repeating, has no more to run, and a progress bar fills up to the end)
            done = len(results) * schedules
            explored = await explore_async(
                scenario,
                strategy=Portfolio(seed, cancel=_SPECS[name].cancel),
                until_covered=_SPECS[name].until_covered,
                schedules=schedules,
                command=command,
                limits=_SPECS[name].limits,
                on_progress=None if on_progress is None else partial(_offset, on_progress, done),
            )
            failure = explored.failure
            not_run = _longer_than_the_budget(failure)
            does_not_apply = None
            if not_run is not None:
                failure = None
            elif failure is None and unjudged[0] == explored.schedules:
                if cannot_run and isinstance(cannot_run[0], _DoesNotApply):
                    does_not_apply = str(cannot_run[0])
                elif cannot_run:
                    not_run = str(cannot_run[0])
                else:
                    not_run = (
                        f"every schedule's {SETUP_ATTEMPTS} attempts left the hardware half done "
                        "(an undo of a failure whose teardown call the driver failed too) or a "
                        f"teardown the driver failed {TEARDOWN_ATTEMPTS} times in a row (rule 8 "
                        "lets it fail, but then nothing can be judged)"
                    )
            results.append(
                ScenarioResult(
                    name,
                    rule,
                    explored.schedules,
                    failure,
                    not_run,
                    0 if does_not_apply else unjudged[0],
                    does_not_apply=does_not_apply,
                )
            )
            if on_progress is not None:
                on_progress(done + schedules)
        except _DoesNotApply as error:
            results.append(ScenarioResult(name, rule, 0, None, does_not_apply=str(error)))
        except _CannotRun as error:
            results.append(ScenarioResult(name, rule, 0, None, str(error)))
        except _FailedBeforeRace as error:
            results.append(ScenarioResult(name, rule, 0, None, failed_before_race=str(error)))
    report = ConformanceReport(driver=driver, backend=backend, results=tuple(results))
    if not report.passed:
        raise ConformanceFailure(report)
    return report


def _longer_than_the_budget(failure: Failure | None) -> str | None:
    """Why a schedule that ran out of steps while its tasks kept making progress (no livelock
    seen: :attr:`StepBudgetError.steady_progress`) gives no verdict; None for any other
    outcome. A long correct driver is not a failing one."""
    if failure is None:
        return None
    error = failure.error
    if not isinstance(error, StepBudgetError) or not error.steady_progress:
        return None
    return (
        f"a schedule ran out of its step budget while its tasks kept making progress, no "
        f"livelock seen (a longer run than the budget allows: no verdict either way): {error}"
        f" (replay: {failure.replay_command})"
    )


def _offset(on_progress: Callable[[int], object], done: int, ran: int) -> None:
    """Schedules run in this scenario, counted after those of the scenarios before."""
    on_progress(done + ran)


def _backend() -> str:
    import sniffio

    return sniffio.current_async_library()


def check_conformance(
    factory: Factory,
    *,
    backend: str = "trio",
    schedules: int = 200,
    seed: int = 0,
    only: str | None = None,
    replay_token: str | None = None,
    factory_spec: str | None = None,
    on_progress: Callable[[int], object] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    connect_timeout: float | None = None,
) -> ConformanceReport:
    """Run every scenario (or *only* one) against contexts made by *factory*, *schedules*
    schedules each (of :class:`Portfolio` with *seed*), on virtual time, and return the
    report of a driver that conforms.
    *on_progress* is called with the number of schedules run so far, after each one (those
    of a scenario that ended early, its schedules repeating, or that could not run count as
    run once it ended: the count ends at *schedules* times the scenarios).
    With *workers* or *scheduler* (as for :func:`explore`), each scenario runs on a worker of
    a Dask cluster, exactly as here, and the report is the same (*on_progress* is called as
    scenarios end; *factory* is sent to the workers); a replay runs here.

    A test that only calls it fails on a broken driver: the failure is raised, an
    :class:`AssertionError` that pytest shows with every failure's timeline and replay.

    Raises:
        ConformanceFailure: the driver failed a scenario, or one could not run; ``error.report``
            is the whole report
            (``report.format()``, ``report.failures``).
        avcm.InvalidError: bad arguments, or a factory that makes no context.
        ClusterError: with *scheduler*, a scheduler that does not answer within
            *connect_timeout* seconds (as for :func:`explore`).
    """
    if connect_timeout is not None:
        from ._parallel import check_connect_timeout

        check_connect_timeout(connect_timeout)
    if (workers is not None or scheduler is not None) and replay_token is None:
        from ._parallel import check_conformance_parallel

        return check_conformance_parallel(
            factory,
            backend=backend,
            schedules=schedules,
            seed=seed,
            only=only,
            factory_spec=factory_spec,
            on_progress=on_progress,
            workers=workers,
            scheduler=scheduler,
            connect_timeout=connect_timeout,
        )
    return run_on_virtual_time(
        backend,
        partial(
            check_conformance_async,
            factory,
            schedules=schedules,
            seed=seed,
            only=only,
            replay_token=replay_token,
            factory_spec=factory_spec,
            on_progress=on_progress,
        ),
    )
