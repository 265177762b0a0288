"""What a device sees: device accesses held to the model (rule 4).

The model check compares the page tables a driver shows with the framework's objects, but a
device does not only go through those: an IOTLB, a unit shared by several contexts, a power
switch may each show it something else. So the harness also makes device accesses through
every context that offers them (``read``/``write`` at device addresses) and holds what they
reach to the model, at moments when no operation in flight can change it:

* right after an operation returns, before anything else runs (the context's mutex was just
  released): after an unbind, unmap, unreserve or destroy_binding, an access to its range must
  fault; after a deactivate that turned the context off, an access anywhere must fault; after a
  bind, map or make_binding, an access must reach the new memory (or fault, if the context is
  off);
* at every quiescent point, through every context.

The addresses probed are the first and last page of the range concerned, the pages on both
sides of each MiB boundary in it, and the pages the data checks accessed recently through the
context: a cache such as an IOTLB can only hold translations a device used. After an unmapping,
also the first page of each page a walk of the phys that was bound there takes (1 MiB, 64 KiB
and 4 KiB pages): where a driver's entries most likely start, so that an entry left behind in
the middle of the range most likely covers one.

A cache can also be refilled while an unmapping runs: a walk that a device access beside a
page causes may fetch that page's entry before it is cleared, after its translations were
dropped (a driver that invalidates first, then clears). So now and then
(:data:`BESIDE_CHANCE`) an unmapping, and a switch-off, runs with device accesses beside it
(:class:`ReadsBeside`), whose pages and the pages on either side are probed once it returned.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import random
from collections.abc import Iterable
from operator import itemgetter
from typing import TYPE_CHECKING

import anyio

import avcm

from ._contexts import DeviceFault
from ._invariants import Violation, physical_address, wrote

if TYPE_CHECKING:
    from ._contexts import Context
    from ._workload import World

__all__ = [
    "DevicePages",
    "ReadsBeside",
    "after_binding",
    "after_deactivate",
    "after_unmapping",
    "check_devices",
    "entry_pages",
    "probe_bound",
]

# pages remembered per context: enough to cover what the data checks touched since the
# reservations concerned were bound, few enough that a quiescent point probes them all quickly
RECENT_PAGES = 64
PROBE_LENGTH = 8  # bytes; probes start at a page boundary, so they never cross a page
CROSSING = 8  # bytes below an unmapped range that a read crossing into it starts at
MiB = 1 << 20
# After an unmapping, the pages of this walk of its phys are probed (the sample IOMMU's page
# sizes), so many at most, evenly spaced: a phys not aligned to 64 KiB walks in 4 KiB pages.
WALK_ORDERS = (8, 4, 0)
WALK_PROBES = 32
# With this chance an unmapping or a switch-off runs with device reads beside it
# (ReadsBeside): so many, the first a microsecond of virtual time in, each gap after about
# twice the one before (a unit's waits take from microseconds to milliseconds).
BESIDE_CHANCE = 1 / 8
BESIDE_READS = 6
BESIDE_FIRST_GAP = 1e-6
# the share of accesses beside that are the last of a sweep (a DMA engine streaming through
# pages in a row, up or down) over the pages before it: a stride prefetcher that two misses
# on consecutive pages set off fills only then (attack64's, caught in 2 of 4 runs before)
BESIDE_SWEEP_CHANCE = 1 / 3
BESIDE_SWEEP_PAGES = 3
_LAST_WORD = avcm.PAGE_SIZE - PROBE_LENGTH
_BESIDE_OFFSETS = (0, _LAST_WORD, None)  # (None: a word drawn from between)


def _page(address: int) -> int:
    return address & ~(avcm.PAGE_SIZE - 1)


class DevicePages:
    """The device pages the data checks accessed recently, per context, and the probe
    patterns (a counter: the same in every replay)."""

    def __init__(self) -> None:
        self._pages: dict[avcm.Vcm, dict[int, None]] = {}
        self._probes = 0

    def touch(self, ctx: Context, address: int, length: int) -> None:
        pages = self._pages.setdefault(ctx.vcm, {})
        for page in range(_page(address), address + length, avcm.PAGE_SIZE):
            pages.pop(page, None)  # most recent last
            pages[page] = None
        while len(pages) > RECENT_PAGES:
            del pages[next(iter(pages))]

    def forget(self, vcm: avcm.Vcm) -> None:
        """*vcm* was destroyed: its pages are no one's to probe."""
        self._pages.pop(vcm, None)

    def touch_around(self, ctx: Context, page: int) -> None:
        """The device accessed *page*: it, and the pages on either side, which a walk it
        caused may have fetched too, are worth probing."""
        self.touch(ctx, max(page - avcm.PAGE_SIZE, 0), 3 * avcm.PAGE_SIZE)

    def recent(self, ctx: Context) -> list[int]:
        return list(self._pages.get(ctx.vcm, ()))

    def within(self, ctx: Context, start: int, size: int) -> list[int]:
        """The pages of ``start..start+size`` worth probing: its first and last, the pages on
        both sides of each MiB boundary in it (where a walk changes page size, so a driver
        that misses a page most likely misses one of these) and the recent pages inside it."""
        end = start + size
        edges = [
            page
            for edge in range(-(-start // MiB) * MiB, end, MiB)
            for page in (edge - avcm.PAGE_SIZE, edge)
            if page >= start
        ]
        pages = dict.fromkeys([_page(start), *edges, _page(end - 1)] if size else [start])
        recent = self._pages.get(ctx.vcm, ())
        pages.update(dict.fromkeys([page for page in recent if start <= page < end]))
        return list(pages)

    def pattern(self) -> bytes:
        self._probes += 1
        return (0x5A17_C0DE_0000_0000 | self._probes).to_bytes(PROBE_LENGTH, "little")


class ReadsBeside:
    """Device accesses at pages drawn from *edges* or *inside* (as often, when both) while an
    operation that changes them runs, by a task of their own started at once, at virtual
    times spread from a microsecond to some milliseconds in (:data:`BESIDE_READS` of them at
    most): each a read, and half the time a write back of what it read (:meth:`_access`).
    What they reach is not judged: the pages are changing. Their point is what they
    leave in the hardware: each read page and the pages on either side are touched
    (:meth:`DevicePages.touch_around`), so the probes once the operation returned
    (:func:`after_unmapping`, :func:`after_deactivate`) and at quiescent points look at them.

    :meth:`stop` must be called when the operation returned, before anything else runs (no
    await in between): the task then reads no more, and leaves no timer pending (a restart
    takes every pending timer for the driver's)."""

    __slots__ = ("_ctx", "_edges", "_inside", "_random", "_scope", "_sleep", "_world")

    def __init__(
        self,
        world: World,
        ctx: Context,
        rng: random.Random,
        edges: list[int],
        inside: range = range(0),
    ) -> None:
        self._world = world
        self._ctx = ctx
        self._random = rng
        self._edges = edges
        self._inside = inside
        self._scope = anyio.CancelScope()
        self._sleep: anyio.CancelScope | None = None

    async def run(self) -> None:
        world, ctx, rng = self._world, self._ctx, self._random
        gap = BESIDE_FIRST_GAP
        with self._scope:
            for _ in range(BESIDE_READS):
                self._sleep = anyio.CancelScope(deadline=anyio.current_time() + gap)
                with self._sleep:
                    await anyio.sleep_forever()
                if self._scope.cancel_called:  # (stopped as its deadline fell due)
                    return
                inside, edges = self._inside, self._edges
                page = rng.choice(inside if not edges or (inside and rng.random() < 0.5) else edges)
                # at the page's start, its last word (a prefetcher a page's end sets off,
                # attack64) or a word between
                offset = rng.choice(_BESIDE_OFFSETS) or rng.randrange(0, _LAST_WORD, PROBE_LENGTH)
                write_back = rng.random() < 0.5
                pages = [page]
                sweeps = world.sweep_random
                if sweeps.random() < BESIDE_SWEEP_CHANCE:
                    stride = avcm.PAGE_SIZE if sweeps.random() < 0.5 else -avcm.PAGE_SIZE
                    pages = [page - stride * n for n in range(BESIDE_SWEEP_PAGES - 1, -1, -1)]
                for swept in pages:
                    if swept >= 0:
                        self._access(swept + offset, write_back=write_back)
                        world.device.touch_around(ctx, swept)
                gap *= rng.uniform(2.0, 4.0)

    def _access(self, address: int, *, write_back: bool) -> None:
        """A device read at *address*, and if *write_back* and it reached memory, a write of
        what it read back there (a cache that only writes fill, attack64): it changes no
        byte, since no other task runs in between."""
        ctx, checks = self._ctx, self._world.result.checks
        checks["device reads beside a change in flight"] += 1
        try:
            seen = ctx.device_read(address, PROBE_LENGTH)
        except DeviceFault:
            return
        if write_back:
            checks["device writes beside a change in flight"] += 1
            with contextlib.suppress(DeviceFault):
                ctx.device_write(address, seen)

    def stop(self) -> None:
        if self._sleep is not None:
            self._sleep.deadline = math.inf
        self._scope.cancel()


def _expect_fault(
    world: World,
    ctx: Context,
    addresses: Iterable[int],
    after: str,
    *,
    length: int = PROBE_LENGTH,
    below: int = 0,
) -> None:
    """No device access of *length* bytes at any of *addresses* reaches memory; with
    *below*, a read from that many bytes below each (where memory may be bound) on into it."""
    probes = 0
    try:
        for address in addresses:
            probes += 1
            if ctx.device_faults(address - below, length + below, write=not below):
                continue  # the right answer: nothing is mapped there
            where = f"at {address:#x}"
            if below:
                where = f"from {address - below:#x} on into {address:#x}"
            raise Violation(
                "rule 4",
                f"{after}: a device access {where} through {ctx.name} reached memory, "
                f"but the model maps nothing there (a stale translation left in the hardware)",
            )
    finally:
        if probes:  # counted once for all: a probe is a few microseconds
            world.result.checks["device probes"] += probes


def _expect_memory(
    world: World, ctx: Context, address: int, phys: avcm.Phys, offset: int, after: str
) -> None:
    """A device read at *address* returns what is at *offset* of *phys* (written first)."""
    world.result.checks["device probes"] += 1
    pattern = world.device.pattern()
    physical = physical_address(world, phys, offset)
    world.memory.write(physical, pattern)
    wrote(world, phys, offset, pattern)
    try:
        seen = ctx.device_read(address, PROBE_LENGTH)
    except DeviceFault as fault:
        raise Violation(
            "rule 4",
            f"{after}: a device access at {address:#x} through {ctx.name} faulted ({fault}), "
            f"but the model maps it to {physical:#x}",
        ) from None
    if seen != pattern:
        raise Violation(
            "rule 4",
            f"{after}: a device access at {address:#x} through {ctx.name} reached other memory "
            f"than {physical:#x}, where the model maps it (a stale or misdirected translation)",
        )


def across(world: World, ctx: Context, lower: avcm.Res, upper: avcm.Res, after: str) -> None:
    """*lower* and *upper* are bound next to each other in active *ctx*: a device read across
    the boundary between them, from the last word of one into the first of the other, returns
    the memory each binds there (written first). An access that goes on from one entry into
    the next may go through a translation of its own (a TLB entry that keeps the next page's:
    attack59), which the probes after an unmapping then meet (:func:`after_unmapping`)."""
    if lower.phys is None or upper.phys is None or lower.start + lower.bound_size != upper.start:
        return
    world.result.checks["device probes"] += 1
    below, above = world.device.pattern(), world.device.pattern()
    for phys, offset, pattern in (
        (lower.phys, lower.bound_size - PROBE_LENGTH, below),
        (upper.phys, 0, above),
    ):
        world.memory.write(physical_address(world, phys, offset), pattern)
        wrote(world, phys, offset, pattern)
    address = upper.start - PROBE_LENGTH
    try:
        seen = ctx.device_read(address, 2 * PROBE_LENGTH)
    except DeviceFault as fault:
        raise Violation(
            "rule 4",
            f"{after}: a device read from {address:#x} across into {upper.start:#x} through "
            f"{ctx.name} faulted ({fault}), but the model maps both sides",
        ) from None
    if seen != below + above:
        raise Violation(
            "rule 4",
            f"{after}: a device read from {address:#x} across into {upper.start:#x} through "
            f"{ctx.name} does not return the memory the model binds either side",
        )


def _probe(world: World, ctx: Context, res: avcm.Res | None, address: int, after: str) -> None:
    """Probe *address*, which the model maps through *res* (or through nothing)."""
    phys = None if res is None else res.phys
    if (
        res is None
        or phys is None
        or ctx.vcm.activations == 0
        or not res.start <= address < res.start + res.bound_size
    ):
        _expect_fault(world, ctx, (address,), after)
    else:
        _expect_memory(world, ctx, address, phys, address - res.start, after)


def _check_active(ctx: Context, after: str) -> None:
    """The hardware is on iff the count says so, when no driver call of the context is in
    flight (its mutex free): while one runs, its status may show that call's state."""
    if ctx.mutex_held():
        return
    active = ctx.hardware_active()
    if active != (ctx.vcm.activations > 0):
        raise Violation(
            "rule 4",
            f"{after}: {ctx.name}'s hardware is {'active' if active else 'inactive'} but its "
            f"activation count is {ctx.vcm.activations}",
        )


def after_binding(world: World, res: avcm.Res, after: str) -> None:
    """*res* was just bound (or mapped): its range reaches its memory, if the context is on,
    at its pages worth probing and at its last word (the end of its phys: at the end of
    physical memory, a DMA window off by one faults there)."""
    ctx = world.by_vcm[res.vcm]
    if ctx.translated:
        where = f"after {after} of {world.name(res)} returned"
        for address in world.device.within(ctx, res.start, res.bound_size):
            _probe(world, ctx, res, address, where)
        _probe(world, ctx, res, res.start + res.bound_size - PROBE_LENGTH, where)


def probe_bound(world: World, ctx: Context, when: str) -> None:
    """No call of *ctx* is in flight: the first page of each bound reservation reaches its
    memory if the context is on, faults if it is off."""
    if ctx.translated:
        for res in ctx.vcm.reservations():
            if res.phys is not None:
                _probe(world, ctx, res, res.start, when)


def entry_pages(res: avcm.Res, phys: avcm.Phys | None) -> list[int]:
    """The first page of each page a walk of *phys* at *res*'s start takes with
    :data:`WALK_ORDERS` (:data:`WALK_PROBES` at most, evenly spaced): taken before an unmapping
    that may free the phys, for :func:`after_unmapping`."""
    if phys is None or phys.freed:
        return []
    starts = [vaddr for vaddr, _, _ in avcm.lowlevel.walk_pages(res.start, phys, WALK_ORDERS)]
    if len(starts) > WALK_PROBES:
        step = len(starts) / WALK_PROBES
        starts = [starts[int(index * step)] for index in range(WALK_PROBES)]
    return starts


def after_unmapping(
    world: World, ctx: Context, res: avcm.Res, after: str, entries: Iterable[int] = ()
) -> None:
    """*res* was just unbound (or unreserved): nothing in the context maps its range now
    (reservations of one context never overlap, and a new one there needs the mutex to be
    bound), at its pages worth probing and at *entries* (:func:`entry_pages` of the phys that
    was bound). Only as much of it is probed as the largest phys the run made: no binding
    reached further into a wide reservation."""
    if ctx.translated:
        where = f"after {after} of {world.name(res)} returned"
        size = min(res.res_size, world.largest_phys)
        pages = dict.fromkeys(world.device.within(ctx, res.start, size))
        pages.update(dict.fromkeys(entries))
        _expect_fault(world, ctx, pages, where)
        # at its start, an access of a page (a device's own cache for long accesses, which
        # an unmap never reached: attack59), and a read from below that crosses into it (a
        # burst going on from the page below through a translation that page's entry keeps
        # of the next: attack59); both passed every run before
        _expect_fault(world, ctx, (res.start,), where, length=avcm.PAGE_SIZE)
        _expect_fault(world, ctx, (res.start,), where, length=CROSSING, below=CROSSING)


def after_deactivate(world: World, ctx: Context) -> None:
    """A deactivate of *ctx* just returned: the hardware's state follows the count, and if
    that is zero, no device access reaches memory through it."""
    where = f"after deactivate of {ctx.name} returned"
    _check_active(ctx, where)
    if ctx.translated and ctx.vcm.activations == 0:
        _expect_fault(world, ctx, world.device.recent(ctx), where)


def check_devices(world: World) -> None:
    """At a quiescent point: each context's hardware is on iff its count says so, and the
    recently accessed device pages reach exactly what the model maps there."""
    after = "at a quiescent point"
    for ctx in world.contexts:
        world.result.checks["rule 4 active"] += 1
        _check_active(ctx, after)
        if not ctx.translated:
            continue
        if ctx.vcm.activations == 0:  # off: nothing reaches memory through it
            _expect_fault(world, ctx, world.device.recent(ctx), after)
            continue
        # each bound reservation as (start, end, phys), by start: they never overlap
        bound = sorted(
            [
                (res.start, res.start + phys.size, phys)
                for res in ctx.vcm.reservations()
                if (phys := res.phys) is not None
            ],
            key=itemgetter(0),
        )
        starts = [start for start, _, _ in bound]
        faulting: list[int] = []  # addresses the model maps nothing at, probed in order
        for address in world.device.recent(ctx):
            index = bisect.bisect_right(starts, address)
            if index:
                start, end, phys = bound[index - 1]
                if address < end:
                    if faulting:
                        _expect_fault(world, ctx, faulting, after)
                        faulting.clear()
                    _expect_memory(world, ctx, address, phys, address - start, after)
                    continue
            faulting.append(address)
        _expect_fault(world, ctx, faulting, after)
