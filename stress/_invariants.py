"""The checks: the contract's rules 1-9, the model check, data integrity, and no leaks.

Per-operation postconditions live with the operations (``_workload``); this module has the
checks that need the whole world: at quiescent points (no operation in flight) and at the end.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

import avcm
from avcm import testing
from avcm.lowlevel import sync_hook, undo_failed

from ._contexts import DeviceFault, refused, watching_allocations

if TYPE_CHECKING:
    from ._contexts import Context
    from ._workload import World

__all__ = [
    "WHOLE",
    "Cut",
    "NoVerdict",
    "Violation",
    "check_data",
    "check_detached",
    "check_final",
    "check_cold_start",
    "check_quiescent",
    "check_released",
    "check_restart_racing",
    "retried",
    "destroy_every_context",
    "harness_operations",
    "mark_new",
    "deactivate_everything",
    "deactivate_held",
    "physical_address",
    "release_everything",
    "switch_off_together",
]


# what an activate or deactivate in flight may change: everything its context maps
WHOLE = "whole context"


class Violation(Exception):
    """A broken rule: what was expected, what happened, and at which operation."""

    def __init__(self, rule: str, description: str, seq: int | None = None) -> None:
        super().__init__(f"{rule}: {description}")
        self.rule = rule
        self.description = description
        self.seq = seq

    def __reduce__(self) -> tuple[type[Violation], tuple[str, str, int | None]]:
        # Exception pickles as cls(*self.args), which is one string here: --jobs sends
        # violations back from its worker processes.
        return type(self), (self.rule, self.description, self.seq)


class NoVerdict(Exception):
    """What followed cannot be judged: avcm's undo of a failed or cancelled operation failed
    too (:func:`avcm.lowlevel.undo_failed`), and the contract's partial effects say that no
    framework can contain that; the hardware may be left half done. Nothing is judged then
    till the next quiescent point, where the harness starts over on new memory
    (``World.start_over``). Or the run cannot go on (the harness's own release failed time
    after time, the factory failed to build a context anew): it stops there."""

    def __init__(self, what: str, error: BaseException) -> None:
        # what the error says, not its repr: a cancellation's names its scope by address
        said = f"{error}" if isinstance(error, Exception) else type(error).__name__
        self.undo = undo_failed(error)  # (else the run cannot go on: see World.start_over)
        if not self.undo:
            super().__init__(f"{what}: {said}: nothing after it can be judged")
            return
        notes = "; ".join(getattr(error, "__notes__", ()))
        super().__init__(
            f"{what}: avcm's undo of {said} failed too ({notes}): the hardware may be left "
            "half done, which the contract cannot contain (partial effects)"
        )


def _prune(world: World) -> None:
    """Drop objects whose operation completed although the caller was cancelled (rule 7 lets
    an operation complete), so the pools hold only live objects."""
    world.physes[:] = [phys for phys in world.physes if not phys.freed]
    world.reservations[:] = [res for res in world.reservations if not res.unreserved]
    for known in (world.layouts, world.written):
        for phys in [phys for phys in known if phys.freed]:
            del known[phys]


def check_quiescent(world: World) -> None:
    """Every rule that must hold when no operation is in flight (the one checker,
    :func:`avcm.testing.check_quiescent`, with each context's count as its tasks hold it).
    Raises :class:`Violation`."""
    _prune(world)
    activations = {ctx.vcm: world.held_in[ctx.vcm] for ctx in world.contexts}
    try:
        checks = testing.check_quiescent(
            [ctx.vcm for ctx in world.contexts],
            physes=world.physes,
            activations=activations,
            name=world.name,
        )
    except testing.InvariantViolation as broken:
        raise Violation(f"rule {broken.rule}", broken.description) from None
    world.result.checks.update(checks)
    check_no_write_after_free(world)


def check_no_write_after_free(world: World) -> None:
    """No page of free physical memory was written: the check the conformance suite makes
    too (:func:`avcm.testing.check_no_write_after_free`), as a :class:`Violation`."""
    world.result.checks["rule 4 writes after free"] += 1
    try:
        testing.check_no_write_after_free(world.memory)
    except testing.InvariantViolation as broken:
        raise Violation(f"rule {broken.rule}", broken.description) from None


def _views(world: World, phys: avcm.Phys) -> list[tuple[Context, avcm.Res]]:
    """The device views of *phys* now that no operation in flight is changing.

    An unbind or unreserve in flight may have cleared some of its reservation's pages, an
    activate or deactivate some of the context's, with the model not yet updated: the contract
    promises nothing there until the operation returns, so those are left to the quiescent
    checks. (A context whose mutex is held by an operation the harness did not start is left
    whole.) Everything else is held to the contract: a context's hardware is on iff its count
    says so (rule 4), and while on it maps every bound reservation.
    """
    views: list[tuple[Context, avcm.Res]] = []
    for ctx in world.contexts:
        if not ctx.has_device:
            continue
        in_flux = world.in_flux.get(ctx.vcm)
        if in_flux and WHOLE in in_flux:
            continue
        mutex_held = ctx.mutex_held()
        if not in_flux and mutex_held:
            continue
        if not ctx.one_to_one:  # one-to-one: no translation, the device always sees memory
            active = ctx.vcm.activations > 0
            # a status read while a driver call of the context runs (its mutex held) may show
            # that call's state: held to the count only when none does
            if not mutex_held and ctx.hardware_active() != active:
                raise Violation(
                    "rule 4",
                    f"{ctx.name}'s hardware is {'inactive' if active else 'active'} but its "
                    f"activation count is {ctx.vcm.activations}, with no operation in flight "
                    "on it",
                )
            if not active:
                continue
        if in_flux:
            views += [
                (ctx, res)
                for res in ctx.vcm.reservations()
                if res.phys is phys and res not in in_flux
            ]
        else:
            views += [(ctx, res) for res in ctx.vcm.reservations() if res.phys is phys]
    return views


def _layout(world: World, phys: avcm.Phys) -> tuple[list[int], list[int]]:
    """Where each part of a phys begins in the phys (its offset) and in physical memory.
    Parts never change, so computed once; a phys of a 4 KiB page MMU has hundreds of them, and
    each probe looks one up."""
    layout = world.layouts.get(phys)
    if layout is None:
        parts = phys.parts
        starts = [start for start, _ in parts]
        # each part's offset: the sizes of those before it, summed (the last sum, the phys's
        # size, is no part's and left out)
        offsets = list(itertools.accumulate([size for _, size in parts], initial=0))
        offsets.pop()
        layout = world.layouts[phys] = (offsets, starts)
    return layout


def physical_address(world: World, phys: avcm.Phys, offset: int) -> int:
    """Where byte *offset* of *phys* is in physical memory."""
    if not 0 <= offset < phys.size:
        raise AssertionError("offset beyond the phys")  # the caller draws offsets inside it
    offsets, starts = _layout(world, phys)
    index = bisect.bisect_right(offsets, offset) - 1
    return starts[index] + offset - offsets[index]


WRITES_KEPT = 8  # per phys, the harness's last writes that are checked to stay


def read_phys(world: World, phys: avcm.Phys, offset: int, length: int) -> bytes:
    """*length* bytes of *phys* from *offset*, from physical memory, piece by piece through
    its extents (a range across a part boundary reads each part)."""
    address = physical_address(world, phys, offset)
    if address % avcm.PAGE_SIZE + length <= avcm.PAGE_SIZE:  # within a page: most reads
        return world.memory.read(address, length)
    data = b""
    while len(data) < length:
        address = physical_address(world, phys, offset + len(data))
        piece = min(length - len(data), avcm.PAGE_SIZE - address % avcm.PAGE_SIZE)
        data += world.memory.read(address, piece)
    return data


def wrote(world: World, phys: avcm.Phys, offset: int, data: bytes) -> None:
    """The harness wrote *data* at *offset* of *phys*: it stays there until the harness
    writes over it (the earlier writes it overlaps are forgotten) or the phys is freed."""
    kept = world.written.get(phys)
    if kept is None:
        world.written[phys] = {offset: data}
        return
    old = kept.get(offset)
    if old is not None and data and len(old) == len(data):
        # the writes kept never overlap one another, so this one overlaps that one alone: it
        # is forgotten and this one kept last, as below (a probe at a page it probed before)
        del kept[offset]
        kept[offset] = data
        return
    end = offset + len(data)
    overlapped = [start for start, old in kept.items() if start < end and offset < start + len(old)]
    for start in overlapped:
        del kept[start]
    kept[offset] = data
    if len(kept) > WRITES_KEPT:
        del kept[next(iter(kept))]


CANARY_LENGTH = 16
# One data check in this many of a phys of more than a page writes and reads across a page
# boundary: at random offsets, about 1 in 130 did (attack46: a device translating a burst's first
# byte only went unseen in 27 of 50 runs)
ACROSS_A_PAGE_EVERY = 2
# One data check in this many is of LONG_ACCESS bytes to a page, not of a word or a burst: a
# device may translate long accesses through a cache of its own (as a PCIe device's ATC),
# which an unmap must invalidate too (attack59's such driver passed every run)
LONG_EVERY = 8
LONG_ACCESS = 256
CANARIES = 8  # per new phys, spread over it: as many as the writes a phys keeps checked


def mark_new(world: World, phys: avcm.Phys) -> None:
    """*phys* was just allocated: write canaries (a counter, the same in every replay) spread
    over it, at its start, its end and between, which the data checks then hold to stay.
    Memory is handed out before anyone writes it, so a write by someone else after it was
    handed out (a late scrub or write-back of its previous owner, in a driver's own allocator
    that never gave it back to physical memory, where page poisoning cannot see it) shows at
    the next data check of the phys, if it hits a canary. A phys outside the run's memory (a
    device's own) gets none: the harness cannot read it."""
    if phys.memory is not world.memory or phys.size < CANARY_LENGTH:
        return
    last = (phys.size - CANARY_LENGTH) // CANARY_LENGTH
    for at in sorted({last * i // (CANARIES - 1) * CANARY_LENGTH for i in range(CANARIES)}):
        world.canaries += 1
        data = (0xCA_4A_21 << 40 | world.canaries).to_bytes(CANARY_LENGTH, "little")
        world.memory.write(physical_address(world, phys, at), data)
        wrote(world, phys, at, data)


def check_written(world: World, phys: avcm.Phys) -> None:
    """What the harness wrote last into *phys* is still there: memory only the harness
    writes (a phys's bytes) changed by nobody else (rule 4: no device access reaches memory
    the model does not map there; a late write-back into memory freed and handed out again
    shows here)."""
    for offset, data in world.written.get(phys, {}).items():
        if read_phys(world, phys, offset, len(data)) != data:
            raise Violation(
                "rule 4",
                f"{len(data)} bytes the harness wrote at offset {offset:#x} of "
                f"{world.name(phys)} changed although nothing of the harness wrote there since: "
                "something else wrote to that memory (a device through a translation left "
                "behind, a driver's late write-back)",
            )


def check_data(world: World, phys: avcm.Phys, rng: random.Random) -> str:
    """Write a pattern through one view of *phys*, read it back through all of them and from
    physical memory. Synchronous: nothing else runs meanwhile. Returns the outcome."""
    views = _views(world, phys)
    length = rng.randrange(1, 65)
    if rng.randrange(LONG_EVERY) == 0:
        length = rng.randrange(LONG_ACCESS, avcm.PAGE_SIZE + 1)
    if length > 1 and phys.size > avcm.PAGE_SIZE and rng.randrange(ACROSS_A_PAGE_EVERY) == 0:
        # across a page boundary: a device that translates only an access's first byte and
        # goes on in physical memory (a burst) reaches past the page into other memory
        boundary = rng.randrange(1, phys.size // avcm.PAGE_SIZE) * avcm.PAGE_SIZE
        offset = boundary - rng.randrange(1, length)
    else:
        offset = rng.randrange(0, phys.size - length + 1)
    pattern = rng.randbytes(length)
    # what the harness wrote is in physical memory, whether a device can reach it now or not
    check_written(world, phys)
    if not views:
        return "no view"
    writer, written_at = views[rng.randrange(len(views))]
    world.result.checks["data"] += 1
    try:
        writer.device_write(written_at.start + offset, pattern)
        for ctx, res in views:
            if ctx.translated:
                world.device.touch(ctx, res.start + offset, length)
            seen = ctx.device_read(res.start + offset, length)
            if seen != pattern:
                raise Violation(
                    "rule 4",
                    f"{length} bytes written through {writer.name} at "
                    f"{written_at.start + offset:#x} read back differently through {ctx.name} "
                    f"at {res.start + offset:#x}",
                )
    except DeviceFault as fault:
        raise Violation(
            "rule 4", f"device access to a bound, active mapping faulted: {fault}"
        ) from None
    landed = read_phys(world, phys, offset, length)
    if landed != pattern:
        first = next(i for i, (a, b) in enumerate(zip(landed, pattern, strict=True)) if a != b)
        raise Violation(
            "rule 4",
            f"{length} bytes written through {writer.name} at {written_at.start + offset:#x} "
            f"(offset {offset:#x} of {world.name(phys)}) and read back through every view are "
            f"not in its physical memory from byte {first} on (device address "
            f"{written_at.start + offset + first:#x}): the device reached other memory, and "
            f"read it back from there (a translation of an access's first page only, an "
            f"entry that points elsewhere)",
        )
    wrote(world, phys, offset, pattern)
    return f"ok {len(views)} view(s)"


async def _each_context(
    world: World, step: Callable[[Context], Coroutine[Any, Any, object]]
) -> None:
    """Run *step* on every context at once: hardware they share is raced, as when devices
    start or stop together."""
    async with anyio.create_task_group() as group:
        for ctx in world.contexts:
            group.start_soon(step, ctx)


# How often the harness's own release (a drain, the final teardown) calls a driver operation
# that keeps failing before it reports it.
DRIVER_RETRIES = 100


# the harness's own operations done (drains, releases, teardown), in this process: progress
# that a stall watchdog sees within a long drain
_harness_operations = 0


def harness_operations() -> int:
    return _harness_operations


async def retried(call: Callable[[], Awaitable[object]]) -> OSError | None:
    """``await call()``, again while the driver fails it, :data:`DRIVER_RETRIES` times at
    most; the last error if it never got through."""
    global _harness_operations
    error = None
    for _ in range(DRIVER_RETRIES):
        _harness_operations += 1
        try:
            await call()
        except OSError as failed:  # avcm's errors, and what a driver raised
            if undo_failed(failed):
                raise NoVerdict("the harness's own release", failed) from failed
            error = failed
            continue
        return None
    return error


async def until_done(call: Callable[[], Awaitable[object]], what: str) -> None:
    """``await call()``, again while the driver fails it: rule 8 lets any driver call fail
    (nothing changed, the error reaches the caller), and the harness's own release must get
    through all the same, as a careful user's would. A failure that persists
    :data:`DRIVER_RETRIES` times in a row is reported."""
    error = await retried(call)
    if error is not None:
        # each failure is the driver's right (rule 8), and what it keeps failing to release
        # cannot be judged as released or not
        raise NoVerdict(f"{what} failed {DRIVER_RETRIES} times in a row", error)


async def deactivate_until_done(world: World, ctx: Context) -> None:
    """``ctx.vcm.deactivate()``, :func:`until_done`. A switch-off that keeps failing with much
    bound (a driver whose page clears fail often enough that a teardown of many pages never
    gets through, each failure undone: attack55 C5, attack56 c6_everything) is made smaller
    first: what the tasks bound in *ctx* is unbound one reservation at a time, newest first,
    each again while it fails, and then the switch-off is tried again. Before, such a driver
    got no verdict within a thousand operations."""
    if await retried(ctx.vcm.deactivate) is None:
        return
    for res in reversed(world.bound_in(ctx)):
        await until_done(functools.partial(world.unbind, res), f"unbind of {world.name(res)}")
        world.result.checks["bindings shed: the driver kept failing to switch off with them"] += 1
    await until_done(ctx.vcm.deactivate, f"deactivate of {ctx.name}")


async def deactivate_held(world: World, ctx: Context) -> None:
    """Undo every activation of *ctx* that a task (or the harness) holds."""
    for (task, vcm), count in list(world.held.items()):
        if vcm is ctx.vcm:
            for _ in range(count):
                await deactivate_until_done(world, ctx)
            world.hold(task, vcm, -count)


async def deactivate_everything(world: World) -> None:
    """Undo every activation the tasks hold, all contexts at once."""
    await _each_context(world, functools.partial(deactivate_held, world))


# the task index under which the harness holds an activation of its own during a drain
HARNESS = -1


async def switch_off_together(world: World) -> None:
    """Activate every context no task holds, then undo every activation, all contexts at once:
    every context's hardware, with all that is bound mapped, is switched off at the same time
    as the others'. What that races in hardware they share (a page-table page given back
    twice, say) the drain's leak check sees, and a usage count that lost an update, the cold
    start that follows. A context whose activate keeps failing (rule 8) is left off."""

    async def activate(ctx: Context) -> None:
        if not world.held_in[ctx.vcm] and await retried(ctx.vcm.activate) is None:
            world.hold(HARNESS, ctx.vcm, 1)

    await _each_context(world, activate)
    await deactivate_everything(world)


async def release_everything(world: World) -> None:
    """Give back what the tasks made, as careful users would: activations undone, then
    reservations unbound and unreserved, all contexts at once, then every phys freed."""

    async def release(ctx: Context) -> None:
        for res in [res for res in world.reservations if res.vcm is ctx.vcm]:
            if res.phys is not None:
                await until_done(res.unbind, f"unbind of {world.name(res)}")
            await until_done(res.unreserve, f"unreserve of {world.name(res)}")

    await deactivate_everything(world)
    await _each_context(world, release)
    for phys in list(world.physes):
        await until_done(phys.free, f"free of {world.name(phys)}")
    world.reservations.clear()
    world.physes.clear()


async def check_cold_start(world: World, when: str, *, cut: bool = False) -> None:
    """With no activation held and the bindings in place, start every context from cold at
    once, then stop them one by one: hardware they share is switched on and mapped by several
    at a time. With *cut*, each context's switch-on is first cancelled :data:`DRAIN_CUTS`
    times, each time a drawn part of the way through its last one, one in each
    :data:`DRAIN_CUTS`-th of it (:func:`switch_on_cut_short`): a driver that leaks what it
    took for a page table when cancelled before it recorded it (a window of a microsecond in
    a switch-on of hundreds) shows at this drain's leak check (attack39's: 10 of 16 runs
    before, 13 by time). For a driver that takes memory in its switch-on, it is then
    cancelled once more right after it took a block of it, as far in among the blocks its last
    switch-on took as the time was (a page-table page taken, then zeroed, then recorded
    leaks if the driver does not give it back on a cancellation).

    Each context must be active and match the model once all activates returned, then they are
    deactivated one by one, and each must go off while the others stay on (rule 4): a usage
    count of shared hardware that lost an update switches off under a context still active.
    (Stopping them all at once is :func:`switch_off_together`, which the drain does first.)
    """
    failed: list[Context] = []
    draws = {
        ctx.vcm: [world.cuts_random.random() for _ in range(DRAIN_CUTS)] for ctx in world.contexts
    }

    async def switched_on(ctx: Context) -> OSError | None:
        """Switch *ctx* on, cut short first; None once it is on, else the driver's error."""
        took = world.switch_on_seconds.get(ctx.vcm)
        on = False
        if cut and took is not None:
            cuts = [
                Cut(after=(stratum + draw) / DRAIN_CUTS * took)
                for stratum, draw in enumerate(draws[ctx.vcm])
            ]
            taken = world.switch_on_allocations.get(ctx.vcm, 0)
            if taken:
                # and right after the block of memory the driver took as far in, of those
                # its last switch-on took
                cuts.append(Cut(allocation=1 + int(draws[ctx.vcm][0] * taken)))
            for each in cuts:
                # (one may get through in spite of the cancellation: then it is on)
                if on := await switch_on_cut_short(world, ctx, each):
                    break
        return None if on else await retried(ctx.vcm.activate)

    async def activate(ctx: Context) -> None:
        while (error := await switched_on(ctx)) is not None:
            if not refused(error):
                failed.append(ctx)
                return
            # a refusal did nothing (rule 8): the context is off, as modelled. Then it is
            # switched on with what was bound since it was last on gone: else a driver that
            # refuses some phys bound never started from cold here
            _stopped(world, ctx, f"{when}, after the driver refused to switch {ctx.name} on")
            if not await world.shed_bindings(ctx, world.cuts_random):
                failed.append(ctx)
                return
        world.switched_on(ctx)
        # at once, while the others may still be starting: a second enabler of a shared unit
        # that returns before the first one's power-up finished shows only now
        _started(world, ctx, f"{when}, right after {ctx.name}'s activate returned", rule="rule 1")

    await _each_context(world, activate)
    if failed:
        # A driver may fail any activate (rule 8); one whose activation of everything bound
        # keeps failing (a fault per page, and many pages) cannot be started from cold here:
        # no check, no verdict.
        world.result.checks["cold start skipped (activate kept failing)"] += 1
        for ctx in world.contexts:
            if ctx not in failed:
                await deactivate_until_done(world, ctx)
        return
    event = "after every context was activated at once"
    for index, ctx in enumerate(world.contexts):
        world.result.checks["cold start"] += 1
        for other in world.contexts[index:]:
            _started(world, other, f"{when}, {event}")
        await deactivate_until_done(world, ctx)
        event = f"after {ctx.name} was deactivated"
        if ctx.hardware_active():
            raise Violation(
                "rule 4", f"{when}: {ctx.name}'s hardware is still active after its deactivate"
            )


# How many times a drain's first cold start cancels each context's switch-on part of the way
# through before it lets one through (check_cold_start). Each costs about a switch-on of
# everything bound; 3 found no more leaks than 1 (attack39's and our own leaky zeroing of a
# table page, 16 and 8 runs).
DRAIN_CUTS = 1


# What a racing restart's switches on wait for: nothing (they begin with the switches off);
# each switch-off reaching its last part: the context's deactivate (a driver of its own), or
# the hardware's disable under the MMU wrapper (which unmaps every page first); or every
# switch-off returned and a timer of the driver's falling due (LEFT_TIMER): a driver that
# decided to power down later, in a background task of its own, acts just after it, and a
# switch-on a little before, at or after it races that act (the lags alone hit a window of
# 10 microseconds 20 microseconds after the switch-off in 6 draws of 100: attack18).
LEFT_TIMER = "a timer of the driver's"
RESTART_ANCHORS = (None, "driver.deactivate", "driver.disable", LEFT_TIMER)
# After a racing restart was checked, the timers it left pending (a power-down decided while
# it ran, its hardware wait) fall due, up to this long, and everything is checked again: what
# a background task of the driver does later lands after the calls returned.
RESTART_SETTLE = 1e-3
# LEFT_TIMER: how many of the driver's timers a restart may let fall due, one by one, before
# it draws the one it aims at, at most (a watchdog that looks every 50 us and powers down at
# its first look 200 us after the last user left decides at a look armed by the fourth
# after: attack20; one that decides at its tenth look, or after twelve idle looks in a row,
# was missed with 7 at most: attack24), drawn log-uniform
RESTART_WAKES = 32
# A timer further away than this is none a restart aims at (virtual time: a lazy power-down a
# second away costs no more than one a microsecond away; attack19's 20-100 ms ones were missed
# at 10 ms, the horizon before)
RESTART_HORIZON = 1.0


async def check_restart_racing(
    world: World,
    anchor: str | None,
    lags: dict[avcm.Vcm, float | None],
    wakes: int = 0,
    cuts: dict[avcm.Vcm, Cut] | None = None,
) -> None:
    """Switch every context off and on again at once, the switches on racing the switches
    off: at a quiescent point, with no operation in flight (a unit's lock free for the
    harness's calls alone), every context that is on has all its activations but one undone
    (counts only), then that one at once (its switch-off); each context, on or off before, is
    activated again *lags[vcm]* seconds (a few tens of microseconds at most) after every
    switch-off passed the sync point *anchor* (one of :data:`RESTART_ANCHORS`; None: after
    the switches off began) or returned, or with :data:`LEFT_TIMER` after they returned,
    the earliest of the driver's timers pending fell due *wakes* times in turn (each may arm
    the next: a watchdog's looks), and a timer of the driver's, drawn among those pending
    then, fell due (a negative lag: that long before it): from cold if its own switch-off is
    done, else once it is (its mutex). A unit
    the contexts share that powers down after its last user left, outside its lock or later
    in a background task, must not undo a switch-on from cold meanwhile. Every context must
    then be on and match the model, and again once the timers the restart left pending fell due
    (:data:`RESTART_SETTLE` at most). A context in *cuts* is first switched on and cancelled
    there (:func:`switch_on_cut_short`), once its switch-off returned, then
    on again if that left it off. Then each gets back as many activations as its users
    held (counts only, or its switch-off if none). A context whose lag is None stays off
    while the others race, and is switched on once they were checked: a switch-on racing a
    power-down alone (a later one from cold would power the unit up again, and hide what the
    race did). A context whose activate keeps failing (rule 8) is judged off instead, and
    its users' activations are dropped."""
    before = testing.pending_timers()
    held = {ctx.vcm: world.held_in[ctx.vcm] for ctx in world.contexts}
    for ctx in world.contexts:
        for _ in range(held[ctx.vcm] - 1):  # counts only: nothing switches
            await deactivate_until_done(world, ctx)
    stopping = {vcm for vcm, count in held.items() if count}
    # one event a switch-on, set in the contexts' order: the order they wake in is the run's
    began = [anyio.Event() for _ in world.contexts]
    switched_off = {ctx.vcm: anyio.Event() for ctx in world.contexts}
    failed: set[avcm.Vcm] = set()
    aim = 0.0  # LEFT_TIMER: how long after the last switch-off returned the drawn timer falls due

    def begun(vcm: object) -> None:
        if vcm in stopping:
            stopping.discard(vcm)
            if not stopping:
                for event in began:
                    event.set()

    async def hook(point: str, obj: object) -> None:
        if point == anchor:
            begun(obj)

    async def switch_off(ctx: Context) -> None:
        nonlocal aim
        if held[ctx.vcm]:
            await deactivate_until_done(world, ctx)
        switched_off[ctx.vcm].set()
        if anchor == LEFT_TIMER and stopping == {ctx.vcm}:
            # The last switch-off returned; no switch-on sleeps yet: every timer pending is
            # the driver's (the harness's tasks wait at its gate, on no timer). One drawn
            # among them, not only those the switch-offs left: a timer re-armed to the same
            # deadline, a work queue's or a poller's that was asleep already (attack19).
            timers = await testing.timers_left([], within=RESTART_HORIZON)
            rhythm = Rhythm()
            for _ in range(wakes):
                if not timers:
                    break
                # and what its task does then (a watchdog's next look armed)
                await testing.sleep_past(timers[0])
                timers = await testing.timers_left([], within=RESTART_HORIZON)
                rhythm.woke(timers[0] - anyio.current_time() if timers else None)
            changed_at, kept = rhythm.changed_at, rhythm.kept
            if changed_at is not None and kept >= world.decisive_kept:
                # (a pattern kept longer outweighs a shorter one: a restart that let fewer
                # timers fall due may have seen a part of a longer one only)
                world.decisive_wakes, world.decisive_kept = changed_at - 1, kept
            if timers:
                aim = world.contexts_random.choice(timers) - anyio.current_time()
        begun(ctx.vcm)  # (also a driver that never passes the anchor)

    async def switch_on(ctx: Context, event: anyio.Event, lag: float) -> None:
        await event.wait()
        await anyio.sleep(max(0.0, aim + lag))
        cut = (cuts or {}).get(ctx.vcm)
        if cut is not None:
            # from cold: what the switch-on did, or not, is then its alone
            await switched_off[ctx.vcm].wait()
            if await switch_on_cut_short(world, ctx, cut):
                return
        started = world.clock()
        taken = 0

        def took_one() -> None:
            nonlocal taken
            taken += 1

        with watching_allocations(took_one):
            if await retried(ctx.vcm.activate) is not None:
                failed.add(ctx.vcm)
                return
        world.switch_on_seconds[ctx.vcm] = world.clock() - started
        world.switch_on_allocations[ctx.vcm] = taken

    if not stopping or anchor is None:
        for event in began:
            event.set()
    with sync_hook(hook):
        async with anyio.create_task_group() as group:
            for ctx, event in zip(world.contexts, began, strict=True):
                group.start_soon(switch_off, ctx)
                lag = lags[ctx.vcm]
                if lag is not None:
                    group.start_soon(switch_on, ctx, event, lag)
    world.result.checks["restarts racing their switch-offs"] += 1
    from ._device import after_deactivate  # here: _device builds on this module

    raced = [ctx for ctx in world.contexts if lags[ctx.vcm] is not None]
    alone = [ctx for ctx in world.contexts if lags[ctx.vcm] is None]
    how = (
        "on again at once" if not alone else " and ".join(c.name for c in raced) + " alone on again"
    )
    for ctx in raced:
        if ctx.vcm not in failed:
            _started(world, ctx, f"after every context was switched off and {how}")
    await _let_timers_fall_due(before)
    for ctx in raced:
        if ctx.vcm not in failed:
            _started(
                world,
                ctx,
                f"after every context was switched off and {how}, once the timers it left "
                "pending fell due",
            )
    for ctx in alone:
        if await retried(ctx.vcm.activate) is not None:
            failed.add(ctx.vcm)
        else:
            _started(world, ctx, "after every context was switched off, once switched on again")
    for ctx in world.contexts:
        if ctx.vcm in failed and not ctx.vcm.activations:
            # its switch-on kept failing (rule 8): judged off, and its users hold nothing of
            # it any more (as if each had undone its activations), so that no call of the
            # harness's own depends on the driver letting one through (a page its switch-off
            # left mapped is one thing that makes a driver refuse to map again: the run goes
            # on, and its checks find it)
            after_deactivate(world, ctx)
            for (task, vcm), count in list(world.held.items()):
                if vcm is ctx.vcm and count:
                    world.hold(task, vcm, -count)
    for ctx in world.contexts:
        if ctx.vcm in failed:
            continue
        count = held[ctx.vcm]
        for _ in range(count - 1):  # counts only: it is on
            await until_done(ctx.vcm.activate, f"activate of {ctx.name}")
        if not count:
            await deactivate_until_done(world, ctx)


class Rhythm:
    """The rhythm of the driver's timers as a racing restart lets them fall due one by one:
    after each, how long until the next one. A watchdog that looks every so often waits as
    long after each look, until the look that decides to act (a power-down), after which it
    waits for something else (the sequence it then sleeps through) or for nothing; two
    timers of their own periods (a watchdog's looks and a poller's) repeat a pattern of
    waits, one period of it as long as their periods' least common multiple, until one of
    them decides. :attr:`changed_at` is the number of the timer after which the waits first
    broke the pattern they had repeated at least once (but for the first wait of a pattern's
    period, which may have been a phase's): of the patterns of up to
    :data:`RHYTHM_PERIODS` waits, the one kept longest (the shortest of those kept as long);
    None while one is still kept, or if none was repeated before it broke (a backoff). A
    pattern of one wait seen twice is no evidence against a longer one not seen in full
    yet: :attr:`kept` says for how many waits the pattern behind :attr:`changed_at` held,
    so that a longer look can outweigh a shorter one. The wait for the first timer, from
    the switches off, is a phase, not part of the rhythm: it is not counted."""

    def __init__(self) -> None:
        self.waits: list[float | None] = []

    def woke(self, wait: float | None) -> None:
        """A timer fell due; *wait*: how long until the next one (None: none pending)."""
        self.waits.append(wait)

    @property
    def changed_at(self) -> int | None:
        return self._change()[0]

    @property
    def kept(self) -> int:
        return self._change()[1]

    def _change(self) -> tuple[int | None, int]:
        waits = self.waits
        best: tuple[int | None, int] = (None, 0)
        for period in range(1, RHYTHM_PERIODS + 1):
            # repeated once: all but the first wait of a period again (that one may be the
            # phase's, not counted), and a single wait seen twice
            repeated = max(2, 2 * period - 1)
            if len(waits) < repeated:
                break
            broke = next(
                (i for i in range(period, len(waits)) if not _alike(waits[i - period], waits[i])),
                None,
            )
            if broke is None:
                return None, 0  # a pattern still kept: what breaks it has not come yet
            if broke >= repeated and broke > best[1]:
                best = (broke + 1, broke)
        return best


def _alike(one: float | None, other: float | None) -> bool:
    """Whether two waits keep a rhythm (:data:`RHYTHM_TOLERANCE`)."""
    if one is None or other is None:
        return one is other
    return abs(other - one) <= RHYTHM_TOLERANCE * one


RHYTHM_PERIODS = 8  # the most waits in a pattern that a rhythm repeats (Rhythm)
# How much two waits of the driver's timers may differ and keep a rhythm: a watchdog's looks,
# re-armed from when its task ran, are a margin apart from one another
RHYTHM_TOLERANCE = 0.25


async def _let_timers_fall_due(before: list[float]) -> None:
    """Let the timers pending now that were not *before* fall due, and those they leave, up to
    :data:`RESTART_SETTLE` from now (a driver's background task, on a timer of its own)."""
    until = anyio.current_time() + RESTART_SETTLE
    while True:
        left = await testing.timers_left(before, within=until - anyio.current_time())
        if not left:
            return
        # a little past the last: what its task does when it wakes is done by then
        await testing.sleep_past(left[-1])


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a switch-on is cancelled: *after* seconds in, or right after the driver took its
    *allocation*-th block of memory (then it sees the cancellation at its next await)."""

    after: float = math.inf
    allocation: int = 0

    def __str__(self) -> str:
        if self.allocation:
            return f"right after its driver took block {self.allocation} of memory"
        return f"{self.after * 1e6:.1f} us in"


async def switch_on_cut_short(world: World, ctx: Context, cut: Cut) -> bool:
    """Switch *ctx*, off, on and cancel it at *cut*: True if it is on (the switch-on was
    through, perhaps in spite of the cancellation). Else, cancelled (rule 7) or failed by
    the driver (rule 8), it did nothing: the hardware is off, matches the model, and no device
    access reaches memory through the context. A driver call that undoes only what it did up
    to its first await is caught here: the switch-on of a context with its reservations bound
    is the longest driver work a context does, with many awaits."""
    taken = 0
    with anyio.CancelScope(deadline=world.clock() + cut.after) as scope:

        def took_one() -> None:
            nonlocal taken
            taken += 1
            if taken == cut.allocation:
                scope.cancel()

        try:
            with watching_allocations(took_one):
                await ctx.vcm.activate()
        except BaseException as error:  # a cancellation too, before its scope absorbs it
            if undo_failed(error):
                what = f"the harness's switch-on of {ctx.name}, cancelled part of the way"
                raise NoVerdict(what, error) from error
            if not isinstance(error, OSError):
                raise
            # avcm's errors, and what a driver raised: it did nothing (rule 8)
    if ctx.vcm.activations:
        return True
    world.result.checks["switch-ons cancelled part of the way"] += 1
    _stopped(world, ctx, f"after a switch-on of {ctx.name} was cancelled {cut}")
    return False


def _stopped(world: World, ctx: Context, when: str) -> None:
    """*ctx* is off and none of its calls is in flight: its hardware is inactive, maps
    nothing (the model), and no device access reaches memory through the first page of a bound
    reservation."""
    if ctx.hardware_active():
        raise Violation("rule 4", f"{when}: {ctx.name}'s hardware is active with count 0")
    _as_modelled(world, ctx, when)


def _started(world: World, ctx: Context, when: str, *, rule: str = "rule 4") -> None:
    """*ctx* was started and none of its calls is in flight: its hardware is on (else a
    violation of *rule*: rule 1 right after its activate returned, activation that was not
    real), maps what the model says, and a device reaches the memory of each bound
    reservation's first page through it."""
    if not ctx.hardware_active():
        raise Violation(
            rule,
            f"{when}: {ctx.name}'s hardware is inactive with activation count "
            f"{ctx.vcm.activations}",
        )
    _as_modelled(world, ctx, when)


def _as_modelled(world: World, ctx: Context, when: str) -> None:
    """*ctx*'s hardware maps what the model says (rule 4), and a device access at each bound
    reservation's first page reaches its memory if the context is on, faults if it is off."""
    from ._device import probe_bound  # here: _device builds on this module

    try:
        testing.check_model(ctx.vcm)
    except testing.HardwareMismatch as mismatch:
        raise Violation("rule 4", f"{when}: {mismatch}") from None
    probe_bound(world, ctx, when)


def check_released(world: World, when: str) -> None:
    """After :func:`release_everything`: nothing is left in any context (rule 9)."""
    world.result.checks["rule 9 leaks"] += 1
    for ctx in world.contexts:
        if ctx.vcm.activations or ctx.hardware_active():
            raise Violation(
                "rule 4", f"{when}: {ctx.name} is still active after every activation was undone"
            )
        leftovers = ctx.vcm.reservations()
        allocations = ctx.vcm.allocations()
        if leftovers or allocations:
            raise Violation(
                "rule 9",
                f"{when}: {ctx.name} holds {len(leftovers)} reservation(s) and "
                f"{len(allocations)} phys that no operation returned (a cancelled or failed "
                "operation leaked them)",
            )
        space = ctx.address_space()
        if space is not None and not space.is_pristine():
            raise Violation(
                "rule 9", f"{when}: {ctx.name} leaked address space: not every byte is free"
            )


def check_detached(world: World, ctx: Context) -> None:
    """*ctx* was just destroyed with everything it held, the other contexts live: it is off
    and holds nothing (rule 9); its memory is judged at the next drain, as no page needs to be
    free while other contexts may use it."""
    world.result.checks["rule 9 destroyed alone"] += 1
    when = f"after {ctx.name} was destroyed"
    if ctx.hardware_active():
        raise Violation("rule 4", f"{when}, its hardware is still active")
    space = ctx.address_space()
    if space is not None and not space.is_pristine():
        raise Violation("rule 9", f"{when}, not every byte of its address space is free")


async def check_final(world: World) -> None:
    """After every task stopped: tear everything down and prove nothing leaked (rule 9)."""
    for ctx in world.contexts:
        ctx.stop_faults()
    check_quiescent(world)
    for ctx in world.contexts:
        if ctx.vcm.activations:
            raise Violation("rule 3", f"{ctx.name} still activated after every task deactivated")
        if ctx.hardware_active():
            raise Violation("rule 4", f"{ctx.name}'s hardware is active with count 0")
    await release_everything(world)
    check_released(world, "at the end")
    leaked = await destroy_every_context(world)
    if leaked:
        raise Violation(
            "rule 9",
            f"{leaked:#x} bytes of physical memory leaked after every context was destroyed "
            # each drain proved its window free of leaks
            f"({_since_the_last_drain(world)})",
        )


async def destroy_every_context(world: World) -> int:
    """Destroy every context (again while the driver fails a step of it: rule 8); the bytes
    of physical memory still in use then, which rule 9 wants none of. A destroy's late write
    is a violation first: it would read as a leak of nothing."""
    for ctx in world.contexts:
        await until_done(ctx.vcm.destroy, f"destroy of {ctx.name}")
    check_no_write_after_free(world)
    return 0 if world.memory.is_pristine() else world.in_use()


def _since_the_last_drain(world: World) -> str:
    if world.drained_at < world.seq:
        return f"leaked by operations {world.drained_at + 1}-{world.seq} or by a destroy"
    return "leaked by a destroy: no operation ran since the last drain"
