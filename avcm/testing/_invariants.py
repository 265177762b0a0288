"""The checks that judge a run: the model check and the contract's rules at quiescence.

One checker, used by the stress harness, the conformance suite and the tests, so that the three
can never disagree about what the contract says. Each broken rule raises
:class:`InvariantViolation` naming the rule by its number in the contract (rules 1-9).

The checks need a driver that shows its hardware (:class:`avcm.lowlevel.HardwareView`) to
compare hardware and model; without one, the rest is still checked. Run them when no operation
is in flight: mid-operation the hardware is allowed to lag and locks are held.
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter, itemgetter, le

from .. import Phys, PhysicalMemory, Res, Vcm
from ..lowlevel import Extent, MmuWrapper, O2oWrapper, hardware_view

__all__ = [
    "HardwareMismatch",
    "InvariantViolation",
    "check_model",
    "check_no_write_after_free",
    "check_quiescent",
    "expected_mappings",
]


class InvariantViolation(AssertionError):
    """A rule of the contract does not hold: ``rule`` is its number (1-9), ``description``
    says what was expected and what was found."""

    def __init__(self, rule: int, description: str) -> None:
        super().__init__(f"rule {rule}: {description}")
        self.rule = rule
        self.description = description

    def __reduce__(self) -> tuple[Callable[..., InvariantViolation], tuple[object, ...]]:
        # Exception pickles as cls(*self.args), which is one string here.
        return type(self), (self.rule, self.description)


class HardwareMismatch(InvariantViolation):
    """The hardware differs from the model (rule 4); the message lists every difference."""

    def __init__(self, description: str) -> None:
        super().__init__(4, description)

    def __reduce__(self) -> tuple[Callable[..., InvariantViolation], tuple[object, ...]]:
        return type(self), (self.description,)


# A phys's memory as maximal contiguous ranges. Parts never change, and a phys of a 4 KiB-page
# MMU has thousands of them, so each is merged once (the harness checks every few operations).
_extents_cache: weakref.WeakKeyDictionary[Phys, tuple[tuple[int, int], ...]] = (
    weakref.WeakKeyDictionary()
)


def _extents(phys: Phys) -> tuple[tuple[int, int], ...]:
    flat = phys._layout  # its size, then a start and a size per part
    if len(flat) == 3:  # one part (most phys): its own extent, without the cache
        return ((flat[1], flat[1] + flat[2]),)
    extents = _extents_cache.get(phys)
    if extents is None:
        merged: list[tuple[int, int]] = []
        for start, size in phys.parts:
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], start + size)
            else:
                merged.append((start, start + size))
        extents = _extents_cache[phys] = tuple(merged)
    return extents


def _merge(extents: Iterable[Extent]) -> list[Extent]:
    """Coalesce extents that continue each other in both address spaces, so that the same
    translations split into different page sizes compare equal."""
    ordered = sorted(extents)
    if not ordered:
        return []
    # where a run of continuing extents breaks: the checks do this for every page of every
    # context at every quiescent point, so one comprehension rather than a loop of appends
    breaks = [
        index
        for index, ((last_v, last_p, last_size), (vaddr, paddr, _)) in enumerate(
            itertools.pairwise(ordered), 1
        )
        if last_v + last_size != vaddr or last_p + last_size != paddr
    ]
    merged = []
    for first, end in itertools.pairwise([0, *breaks, len(ordered)]):
        vaddr, paddr, _ = ordered[first]
        last_v, _, last_size = ordered[end - 1]
        merged.append((vaddr, paddr, last_v + last_size - vaddr))
    return merged


def expected_mappings(vcm: Vcm) -> list[Extent]:
    """The translations the model says the hardware must hold now (none when inactive)."""
    if vcm.activations == 0:
        return []
    extents: list[Extent] = []
    for res in vcm.reservations():
        if res.phys is not None:
            extents += _translations(res.start, res.phys)
    return _merge(extents)


def _translations(vaddr: int, phys: Phys) -> list[Extent]:
    """The translations *phys* bound at *vaddr* needs, one per part of its memory (contiguous
    parts merged already), unmerged across parts."""
    extents = []
    for start, end in _extents(phys):
        extents.append((vaddr, start, end - start))
        vaddr += end - start
    return extents


# Per context, from the last time its hardware matched the model: for each bound reservation
# (by its start), its phys (a weak reference: a phys refers to its context, which is the key)
# and the hardware's entries that mapped it. An unchanged reservation whose entries are equal to
# those again maps its memory as it did: only what changed since is merged and compared.
_verified: weakref.WeakKeyDictionary[Vcm, dict[int, tuple[weakref.ref[Phys], list[Extent]]]] = (
    weakref.WeakKeyDictionary()
)
_by_start = attrgetter("start")
_begin = itemgetter(0)  # of an extent, its vaddr; of a (start, end) range, its start
_end = itemgetter(1)


def _matches_model(vcm: Vcm, mappings: list[Extent]) -> bool:
    """Whether ``_merge(mappings) == expected_mappings(vcm)``, for *mappings* sorted, looking
    again only at what changed since the last time it held. False may also mean "not proven":
    the caller then compares the whole (and words what differs).

    Why comparing reservation by reservation decides the whole: the entries are split at the
    reservations' bounds into consecutive pieces that leave none out (else: False), and
    merging runs piece by piece and then across pieces gives what merging all at once gives.
    """
    if vcm.activations == 0:
        _verified.pop(vcm, None)
        return not mappings
    before = _verified.get(vcm, {})
    verified: dict[int, tuple[weakref.ref[Phys], list[Extent]]] = {}
    index = 0  # the first entry no reservation has claimed yet
    claimed_to = None  # where the last reservation looked at ends
    bound: list[Res] = sorted(
        [res for res in vcm.reservations() if res.phys is not None], key=_by_start
    )
    for res in bound:
        phys = res.phys
        start = res.start
        if phys is None or (claimed_to is not None and start < claimed_to):
            return False  # overlapping reservations: the whole comparison says what it is
        end = start + phys.size
        seen = before.get(start)
        if seen is not None and seen[0]() is phys:
            piece = mappings[index : index + len(seen[1])]
            following = index + len(piece)
            # equal to the entries verified then (tuples of ints: immutable), and the entry
            # after them is past the reservation
            if piece == seen[1] and (following == len(mappings) or mappings[following][0] >= end):
                verified[start] = seen
                index = following
                claimed_to = end
                continue
        if bisect.bisect_left(mappings, start, index, key=_begin) != index:
            return False  # entries before this reservation that no reservation claims
        following = bisect.bisect_left(mappings, end, index, key=_begin)
        piece = mappings[index:following]
        if set(map(type, piece)) != {tuple}:  # immutable entries only (none: False)
            return False
        if _merge(piece) != _merge(_translations(start, phys)):
            return False
        verified[start] = (weakref.ref(phys), piece)
        index = following
        claimed_to = end
    if index != len(mappings):
        return False  # entries past the last reservation
    _verified[vcm] = verified
    return True


def _format(extent: Extent) -> str:
    vaddr, paddr, size = extent
    return f"{vaddr:#x}..{vaddr + size:#x} -> {paddr:#x}"


def check_model(vcm: Vcm) -> int:
    """Raise :class:`HardwareMismatch` unless hardware and model agree; return checks made.

    Checks (contract rule 4): active iff ``activations > 0``; while active, exactly the bound
    reservations are mapped, each to its phys; nothing mapped while inactive. For MMU contexts
    also the wrapper's own bookkeeping; for one-to-one contexts that every reservation sits at
    its memory's address and no two overlap.
    """
    problems: list[str] = []
    checks = 0
    driver = vcm.driver
    if isinstance(driver, MmuWrapper):
        bound = {res: phys for res in vcm.reservations() if (phys := res.phys) is not None}
        checks += 2
        if driver.bound != bound:
            problems.append(
                f"wrapper's bound list has {len(driver.bound)} entries, model has {len(bound)}"
            )
        if driver.activated != (vcm.activations > 0):
            problems.append(
                f"wrapper activated={driver.activated} but activations={vcm.activations}"
            )
    if isinstance(driver, O2oWrapper):
        checks += 1
        ranges = []
        for res in vcm.reservations():
            phys = res.phys
            # (phys._layout[1]: where its first part starts, phys.parts[0].start without a
            # tuple of every part made)
            if phys is not None and res.start != phys._layout[1]:
                problems.append(f"one-to-one {res!r} is not at its memory {phys!r}")
            ranges.append((res.start, res.start + res.res_size))
        ranges.sort()
        for (_, end), (start, _) in itertools.pairwise(ranges):
            if start < end:
                problems.append(f"one-to-one reservations overlap at {start:#x}")
    hardware = hardware_view(vcm)
    if hardware is not None:
        checks += 2
        active = hardware.hardware_active()
        if active != (vcm.activations > 0):
            problems.append(f"hardware active={active} but activations={vcm.activations}")
        mappings = sorted(hardware.hardware_mappings())
        if not _matches_model(vcm, mappings):
            have, want = set(_merge(mappings)), set(expected_mappings(vcm))
            for extent in sorted(want - have):
                problems.append(f"missing in hardware: {_format(extent)}")
            for extent in sorted(have - want):
                problems.append(f"stale in hardware:   {_format(extent)}")
    if problems:
        # each difference once: reservations overlapping a third one at the same address are
        # found once per pair
        lines = [
            line if count == 1 else f"{line} ({count} times)"
            for line, count in Counter(problems).items()
        ]
        raise HardwareMismatch(
            f"{vcm.name}: hardware differs from the model:\n  " + "\n  ".join(lines)
        )
    return checks


def check_quiescent(
    vcms: Iterable[Vcm],
    *,
    physes: Iterable[Phys] = (),
    activations: Mapping[Vcm, int] | None = None,
    name: Callable[[Phys], str] = repr,
) -> Counter[str]:
    """Check every rule that must hold when no operation is in flight; return the checks made.

    *vcms* are the contexts to check, together (a phys may be bound in several of them);
    *physes* are other live phys to include (made by :func:`avcm.phys_alloc`, say: those a
    context allocated and those bound in it are always included; freed ones are skipped).
    *activations* gives the count each context must have, if the caller knows it; *name*
    names a phys in messages. Raises :class:`InvariantViolation` for the first broken rule:

    * rule 3: ``activations`` is as expected (when *activations* says);
    * rule 7: no context mutex nor phys lock is held, no creation is counted in flight;
    * rule 4: the model check (:func:`check_model`);
    * rule 6: no reservation is bound to freed memory;
    * rule 5: each phys's ``bindings`` equals the number of reservations bound to it, and
      each context's statistics count its bound reservations;
    * rule 9: no two live allocations share memory (an allocator handed it out twice).

    The counts returned are keyed ``"rule 3 count"``, ``"rule 7 locks"``, ``"rule 4 model"``,
    ``"rule 5 bindings"`` and ``"rule 9 overlap"``.
    """
    checks: Counter[str] = Counter()
    # per phys, the reservations bound to it (a plain dict: a Counter's missing key is a call
    # of its __missing__, and nearly every phys is new to it)
    bound: dict[Phys, int] = {}
    live: dict[Phys, None] = {phys: None for phys in physes if not phys.freed}
    for vcm in vcms:
        stats = vcm.statistics()
        want = None if activations is None else activations.get(vcm)
        if want is not None:
            checks["rule 3 count"] += 1
            if stats.activations != want:
                raise InvariantViolation(
                    3, f"{vcm.name}: activations={stats.activations}, expected {want}"
                )
        checks["rule 7 locks"] += 1
        if stats.mutex.locked:
            raise InvariantViolation(7, f"{vcm.name}: mutex still held with nothing in flight")
        if stats.operations_in_flight:
            raise InvariantViolation(
                7, f"{vcm.name}: {stats.operations_in_flight} creation(s) counted in flight"
            )
        checks["rule 4 model"] += 1
        check_model(vcm)
        live.update(dict.fromkeys(vcm.allocations()))
        bound_here = 0
        for res in vcm.reservations():
            phys = res.phys
            if phys is not None:
                if phys.freed:
                    raise InvariantViolation(6, f"{res!r} is bound to freed memory {name(phys)}")
                bound[phys] = bound.get(phys, 0) + 1
                bound_here += 1
                live[phys] = None
        if stats.bound_reservations != bound_here:
            raise InvariantViolation(
                5,
                f"{vcm.name}: statistics count {stats.bound_reservations} bound reservations, "
                f"but {bound_here} are bound",
            )
    spans: list[tuple[int, int]] = []  # every live phys's memory, as (start, end)
    checks["rule 5 bindings"] += len(live)
    for phys in live:
        # what phys.statistics() says, without making a record of every live phys
        bindings = bound.get(phys, 0)
        if phys._bindings != bindings:
            raise InvariantViolation(
                5,
                f"{name(phys)}.bindings={phys._bindings} but it is bound to {bindings} "
                "reservation(s)",
            )
        lock = phys._lock
        if lock is not None and lock.is_locked():
            raise InvariantViolation(7, f"{name(phys)}'s lock still held with nothing in flight")
        spans += _extents(phys)
    spans.sort(key=_begin)  # by start alone: ints compare much quicker than pairs
    checks["rule 9 overlap"] += 1
    # sorted by start, ranges are all apart iff each ends before the next starts: the usual
    # answer, found without a loop in Python; otherwise which phys overlap is worked out
    if not all(map(le, map(_end, spans), itertools.islice(map(_begin, spans), 1, None))):
        _raise_overlap(live, name)
    return checks


def _raise_overlap(physes: Iterable[Phys], name: Callable[[Phys], str]) -> None:
    """Raise rule 9 for the first two of *physes* whose memory overlaps, by address."""
    extents = [(start, end, phys) for phys in physes for start, end in _extents(phys)]
    extents.sort(key=itemgetter(0))
    for (_, end, first), (start, _, second) in itertools.pairwise(extents):
        if start < end:
            raise InvariantViolation(
                9,
                f"live allocations overlap at {start:#x}: {name(first)} and {name(second)} "
                "(an allocator handed out the same memory twice)",
            )


def check_no_write_after_free(memory: PhysicalMemory, when: str = "") -> None:
    """Raise :class:`InvariantViolation` (rule 4: no device access reaches memory the model
    maps nowhere) if any page of *memory* was written while free, as the kernel's page
    poisoning finds such a write: a device through a translation left behind, a driver's late
    write-back. *when* says at what point of the caller's run it was found."""
    stats = memory.statistics()
    if stats.free_pages_written:
        first = stats.first_free_write
        raise InvariantViolation(
            4,
            f"{when + ', ' if when else ''}{stats.free_pages_written} page(s) of free physical "
            f"memory were written, the first at {first:#x}: something wrote to memory after "
            "it was freed (a device through a translation left behind, a driver's late write)",
        )
