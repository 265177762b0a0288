"""The virtual address allocator against the two allocators a Linux reader knows: the kernel's
IOVA allocator (:mod:`bench._iova`, what an IOMMU's DMA mappings use) and the first-fit bitmap
(:mod:`bench._genpool`, what the 2010 patch used), at 10^3 to 10^6 live allocations, in steady
state and at their worst.

The space at each size: *n* live 4 KiB allocations, each with a 4 KiB hole after it, built by
allocating 2n pages and freeing every other one (fragmented: no 8 KiB request fits a hole).

- **steady**: an 8 KiB allocation aligned to 8 KiB, then its free, over and over, at that fill
  (at one place: the best case of avcm's deferred changes and of the IOVA cached node).
- **random**: a live page picked at random freed and a page allocated, over and over.
- **worst**: the slowest single allocation seen, in CPU time (a preemption by another process
  is not the allocator's): of the 2n that built the space; of the first one after the holes
  were punched (where the IOVA allocator walks every node from its cached one down), these
  two at their own cost (below); of the steady and random ones; and of one in a second space
  where the only aligned 8 KiB hole is the last of *n* misaligned ones (where avcm's
  allocator, if it scanned, and the bitmap scan). The bitmap's spaces are set bit by bit, not
  allocated (filling it is O(n^2)), and the IOVA model's second space is made with
  ``reserve_iova``, as the kernel reserves ranges.

An allocation's own cost is told from the machine's by repeating it: each space is built
``BUILDS`` times, identically, and each of the 2n allocations that build it (and the first one
after the holes) is charged the least of its ``BUILDS`` timings. An allocator's slow path falls
on the same allocation in every identical build, so it survives the minimum; a page fault
that compacts memory, or another process's burst of work, falls on one build at a random
allocation and does not. The slowest single timing of any build is shown beside it.
"""

from __future__ import annotations

import gc
import math
import random
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.table import Table

import avcm
from avcm.lowlevel import AddressSpace

from ._genpool import GenPool
from ._iova import IovaDomain
from ._measure import Row
from ._rows import _best_of_async, _context, _PerResHardware

__all__ = ["allocator_rows", "render_table", "reserve_scaling", "sizes"]

PAGE = 4096
KiB = 1024
SMALL = 100  # the size the scaling target compares with
FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
WORST_LIMIT = 1e-3  # no allocation slower than 1 ms
BUILDS = 3  # identical builds of each space: an allocation's own cost is its least timing
clock = time.thread_time

IOVA = "Linux IOVA model (rbtree of ranges, cached node)"
GEN_POOL = "first-fit bitmap like the patch's gen_pool"


class Allocator(Protocol):
    def alloc(self, size: int, alignment: int) -> int | None: ...
    def free(self, addr: int, size: int) -> None: ...


class _Avcm:
    """avcm's allocator under the others' names: ``None`` for ``ENOSPC``, as theirs."""

    def __init__(self, start: int, size: int) -> None:
        # the alignment the benchmark asks for, declared as an MMU context declares its pages
        self.space = AddressSpace(start, size, alignments=(8 * KiB,))

    def alloc(self, size: int, alignment: int) -> int | None:
        try:
            return self.space.allocate(size, alignment)
        except avcm.NoSpaceError:
            return None

    def free(self, addr: int, size: int) -> None:
        self.space.free(addr, size)


@contextmanager
def _no_gc() -> Iterator[None]:
    """The collector off, as :mod:`timeit` has it: its pauses depend on everything the process
    holds, not on the allocator measured."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _timed_alloc(allocator: Allocator, size: int, alignment: int) -> tuple[int, float]:
    started = clock()
    addr = allocator.alloc(size, alignment)
    elapsed = clock() - started
    if addr is None:
        raise RuntimeError(f"{allocator!r}: no room for {size} bytes in the benchmark's space")
    return addr, elapsed


@dataclass
class _Built:
    """A fragmented space and what building it cost (see the module's docstring)."""

    space: Allocator
    pages: list[int]  # the live pages
    building: float  # the slowest allocation that built it, its own cost
    first: float  # the first 8 KiB allocation after the holes were punched, its own cost
    disturbed: float  # the slowest single timing of any of the builds


def _fragment(make: Callable[[], Allocator], live: int) -> _Built:
    """*live* pages allocated with a page hole after each, in ``BUILDS`` identical spaces made
    by *make*; the last one is kept."""
    least = array("d", [math.inf]) * (2 * live)
    first = math.inf
    disturbed = 0.0
    for _ in range(BUILDS):
        space = make()
        taken = [0] * (2 * live)  # allocated up front: the list's growth is not the allocator's
        for index in range(2 * live):
            taken[index], elapsed = _timed_alloc(space, PAGE, PAGE)
            least[index] = min(least[index], elapsed)
            disturbed = max(disturbed, elapsed)
        for addr in taken[1::2]:
            space.free(addr, PAGE)
        addr, elapsed = _timed_alloc(space, 8 * KiB, 8 * KiB)
        space.free(addr, 8 * KiB)
        first = min(first, elapsed)
        disturbed = max(disturbed, elapsed)
    return _Built(space, taken[0::2], max(least), first, disturbed)


def _fragmented_bitmap(live: int) -> GenPool:
    """The bitmap as :func:`_fragment` would leave it (first fit from the bottom)."""
    pool = GenPool(0, 1 << 36)
    pool.bitmap[0 : 2 * live : 2] = b"\x01" * live
    return pool


@dataclass
class _Cost:
    steady: float = math.inf  # seconds an allocate + free, in the least disturbed chunk
    random: float = math.inf  # seconds a free of a page picked at random + an allocation
    worst: float = 0.0  # the slowest single allocation's CPU time (its own, when built)
    where: str = ""  # in which part of the run the slowest one was
    disturbed: float = 0.0  # the slowest single timing of building, machine included

    def saw(self, elapsed: float, where: str) -> None:
        if elapsed > self.worst:
            self.worst, self.where = elapsed, where


def _steady(allocator: Allocator, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        # never None: the first allocation after the fill found room, and it is freed each time
        allocator.free(allocator.alloc(8 * KiB, 8 * KiB), 8 * KiB)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / rounds


def _random_churn(allocator: Allocator, pages: list[int], picks: Sequence[int]) -> float:
    """Free the live page at each of *picks* and allocate a page in its stead."""
    started = time.perf_counter()
    for pick in picks:
        allocator.free(pages[pick], PAGE)
        pages[pick] = allocator.alloc(PAGE, PAGE)  # type: ignore[assignment]
    return (time.perf_counter() - started) / len(picks)


def _last_aligned_hole(live: int) -> tuple[int, list[tuple[int, int, int]]]:
    """A space of ``6 * live + 4`` pages, full but for *live* misaligned 8 KiB holes (at odd
    pages, each between 16 KiB allocations) and one aligned 8 KiB hole at the top: its size,
    and ``(address, size, alignment)`` of the allocations that make it, in the order a
    top-down allocator places them there. The holes are the first and every 8 KiB one after."""
    pages = 6 * live + 4
    top = pages - 2
    taken = [(top * PAGE, 8 * KiB, 8 * KiB), ((top - 1) * PAGE, PAGE, PAGE)]
    for unit in range(live):
        base = top - 1 - 6 * unit
        taken += [((base - 4) * PAGE, 16 * KiB, PAGE), ((base - 6) * PAGE, 8 * KiB, PAGE)]
    taken.append((0, PAGE, PAGE))
    return pages * PAGE, taken


def _worst_in_last_aligned_hole(kind: str, live: int) -> float:
    size, taken = _last_aligned_hole(live)
    holes = {(addr, length) for addr, length, _ in [taken[0], *taken[3::2]]}
    if kind == "gen_pool":
        pool = GenPool(0, size)
        pool.bitmap[:] = b"\x01" * len(pool.bitmap)
        for addr, length in holes:
            pool.free(addr, length)
        allocator: Allocator = pool
    elif kind == "iova":
        iova = IovaDomain(0, size)
        for addr, length, _ in taken:
            if (addr, length) not in holes:
                iova.reserve(addr, length)
        allocator = iova
    else:
        ours = _Avcm(0, size)
        for addr, length, alignment in taken:
            placed = ours.alloc(length, alignment)
            if placed != addr:
                raise RuntimeError(f"avcm placed {length} bytes at {placed}, not at {addr}")
        for addr, length in holes:
            ours.free(addr, length)
        allocator = ours
    addr, elapsed = _timed_alloc(allocator, 8 * KiB, 8 * KiB)
    if addr != taken[0][0]:
        raise RuntimeError(f"{kind}: took {addr}, not the aligned hole at {taken[0][0]}")
    return elapsed


def _costs(live: int, rounds: int) -> dict[str, _Cost]:
    """Each allocator's steady and slowest cost at *live*; *rounds* steady pairs for avcm
    and the IOVA model, fewer for the bitmap, whose every allocation scans it."""
    makers: dict[str, Callable[[], Allocator]] = {
        "avcm": lambda: _Avcm(0, 1 << 36),
        "iova": lambda: IovaDomain(0, 1 << 36),
    }
    spaces: dict[str, Allocator] = {"gen_pool": _fragmented_bitmap(live)}
    pages = {"gen_pool": [2 * index * PAGE for index in range(live)]}
    costs = {kind: _Cost() for kind in (*makers, "gen_pool")}
    chunks = 5
    picks = random.Random(live).choices(range(live), k=rounds)
    with _no_gc():
        for kind, make in makers.items():
            built = _fragment(make, live)
            spaces[kind], pages[kind] = built.space, built.pages
            costs[kind].saw(built.building, "building the space")
            costs[kind].saw(built.first, "first after the fill")
            costs[kind].disturbed = built.disturbed
        addr, elapsed = _timed_alloc(spaces["gen_pool"], 8 * KiB, 8 * KiB)
        spaces["gen_pool"].free(addr, 8 * KiB)
        costs["gen_pool"].saw(elapsed, "first after the fill")
        # in chunks taking turns, so that a busy moment of the machine falls on all three;
        # then each allocation timed on its own, for the slowest rather than the average
        for _ in range(chunks):
            for kind, space in spaces.items():
                pairs = rounds // chunks if kind != "gen_pool" else max(4, rounds // chunks // 50)
                costs[kind].steady = min(costs[kind].steady, _steady(space, pairs))
        for kind, space in spaces.items():
            for _ in range(rounds // chunks if kind != "gen_pool" else 20):
                addr, elapsed = _timed_alloc(space, 8 * KiB, 8 * KiB)
                space.free(addr, 8 * KiB)
                costs[kind].saw(elapsed, "steady")
        # the random frees last: they leave holes an 8 KiB allocation fits in
        for chunk in range(chunks):
            mine = picks[chunk * rounds // chunks : (chunk + 1) * rounds // chunks]
            for kind, space in spaces.items():
                costs[kind].random = min(
                    costs[kind].random, _random_churn(space, pages[kind], mine)
                )
        for kind, space in spaces.items():
            for pick in picks[: rounds // chunks]:
                space.free(pages[kind][pick], PAGE)
                pages[kind][pick], elapsed = _timed_alloc(space, PAGE, PAGE)
                costs[kind].saw(elapsed, "random frees")
    del spaces, pages
    for kind, cost in costs.items():
        with _no_gc():
            cost.saw(_worst_in_last_aligned_hole(kind, live), "last aligned hole")
    return costs


def _what(metric: str, live: int, against: str) -> str:
    """A row's name, also how :func:`render_table` finds it."""
    return f"VA allocator, {live:,} live: {metric} vs {against}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def sizes(quick: bool) -> tuple[int, ...]:
    return QUICK_SIZES if quick else FULL_SIZES


def allocator_rows(live: int, *, scaling: bool = False) -> list[Row]:
    """The rows of one size, measured once (the framework repeats them): avcm's time over
    each baseline's, steady and slowest, and avcm's slowest allocation against 1 ms; with
    *scaling*, also avcm's steady cost at this size against 100 live."""
    rounds = 5_000
    costs = _costs(live, rounds)
    ours, iova, pool = costs["avcm"], costs["iova"], costs["gen_pool"]
    steady = f"avcm {_us(ours.steady)}, IOVA {_us(iova.steady)}, gen_pool {_us(pool.steady)}"
    churn = f"avcm {_us(ours.random)}, IOVA {_us(iova.random)}, gen_pool {_us(pool.random)}"
    worst = ", ".join(
        f"{name} {_us(cost.worst)} ({cost.where})"
        for name, cost in (("avcm", ours), ("IOVA", iova), ("gen_pool", pool))
    )
    rows = []
    metrics = (
        ("steady", steady, "steady"),
        ("random", churn, "random"),
        ("slowest", worst, "worst"),
    )
    for metric, detail, cost in metrics:
        for against, baseline, theirs in (("IOVA", IOVA, iova), ("gen_pool", GEN_POOL, pool)):
            ratio = getattr(ours, cost) / getattr(theirs, cost)
            rows.append(
                Row(_what(metric, live, against), baseline, ratio, "reported", None, detail)
            )
    rows.append(
        Row(
            _what("slowest", live, "1 ms"),
            "1 ms (the issue's bound, at any size)",
            ours.worst / WORST_LIMIT,
            "<= 1",
            ours.worst <= WORST_LIMIT,
            f"{_us(ours.worst)} CPU time ({ours.where}; the least of {BUILDS} identical "
            f"builds for each allocation that builds the space; slowest single timing "
            f"{_us(ours.disturbed)})",
        )
    )
    if scaling:
        small = _costs(SMALL, rounds)["avcm"]
        ratio = ours.steady / small.steady
        rows.append(
            Row(
                _what("steady", live, f"{SMALL} live"),
                f"the same with {SMALL} live",
                ratio,
                "<= 2x",
                ratio <= 2,
                f"{_us(ours.steady)} vs {_us(small.steady)}",
            )
        )
    return rows


def _cell(row: Row | None) -> str:
    if row is None:
        return "-"
    unstable = " unstable" if row.unstable else ""
    return f"{row.ratio:.2f} (min {row.min:.2f}, spread {row.spread:.0%}{unstable})"


def render_table(rows: Sequence[Row], console: Console) -> None:
    """The allocator rows of *rows* as one table, a size a line (nothing if there are none)."""
    by_what = {row.what: row for row in rows}
    sizes = [live for live in FULL_SIZES if _what("slowest", live, "1 ms") in by_what]
    if not sizes:
        return
    table = Table(
        title="VA allocator: avcm's time / the baseline's (median of repeats; < 1: avcm faster)"
    )
    columns = {
        "steady vs IOVA": ("steady", "IOVA"),
        "steady vs gen_pool": ("steady", "gen_pool"),
        "random vs IOVA": ("random", "IOVA"),
        "random vs gen_pool": ("random", "gen_pool"),
        "slowest vs IOVA": ("slowest", "IOVA"),
        "slowest vs gen_pool": ("slowest", "gen_pool"),
        "avcm's slowest / 1 ms": ("slowest", "1 ms"),
    }
    table.add_column("live", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for live in sizes:
        cells = [
            _cell(by_what.get(_what(metric, live, against))) for metric, against in columns.values()
        ]
        table.add_row(f"{live:,}", *cells)
    console.print(table)


# -- through a context: vcm.reserve ----------------------------------------------------------


def _fill_pages(space: AddressSpace, live: int) -> None:
    """*live* 4 KiB allocations with a 4 KiB hole after each."""
    taken = [space.allocate(PAGE, PAGE) for _ in range(2 * live)]
    for addr in taken[1::2]:
        space.free(addr, PAGE)


async def _reserve_cost(live: int, rounds: int) -> float:
    vcm = _context(_PerResHardware())
    wrapper = vcm.driver
    assert isinstance(wrapper, avcm.lowlevel.MmuWrapper)
    _fill_pages(wrapper.space, live)

    async def measure() -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            res = await vcm.reserve(8 * KiB)
            await res.unreserve()
        return (time.perf_counter() - started) / rounds

    return await _best_of_async(3, measure)


async def reserve_scaling(quick: bool) -> Row:
    # the allocator alone is measured at a million (allocator_rows); through a context, a
    # tenth of that keeps the run short
    large = 10_000 if quick else 100_000
    small_cost = await _reserve_cost(SMALL, 20_000)
    large_cost = await _reserve_cost(large, 20_000)
    ratio = large_cost / small_cost
    return Row(
        f"reserve+unreserve with {large:,} live reservations",
        f"the same with {SMALL} live",
        ratio,
        "<= 2x",
        ratio <= 2.0,
        f"{_us(large_cost)} vs {_us(small_cost)}",
    )
