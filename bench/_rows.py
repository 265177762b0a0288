"""The measurements. Each returns a :class:`Row`: a ratio of two things timed side by side in
one run (absolute times on shared machines are noise; ratios are not)."""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel

import avcm

from ._measure import Row

__all__ = ["Row"]

KiB = 1 << 10
MiB = 1 << 20


async def _best_of_async(runs: int, measure: Callable[[], Awaitable[float]]) -> float:
    """The fastest of a few runs: the least disturbed by the rest of the machine. The garbage
    collector is off while timing, as in :mod:`timeit`: its pauses depend on everything else
    the process holds, not on the code measured."""
    gc.collect()
    gc.disable()
    try:
        return min([await measure() for _ in range(runs)])
    finally:
        gc.enable()


class _PerResHardware:
    """Zero-latency hardware that maps a whole reservation at a time."""

    orders = (8, 4, 0)

    def __init__(self) -> None:
        self.mapped = 0

    async def activate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        self.mapped += 1

    async def deactivate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        self.mapped -= 1


class _PerPageHardware:
    """Zero-latency hardware that maps page by page, through the walk."""

    orders = (8, 4, 0)

    def __init__(self) -> None:
        self.pages = 0

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: object) -> None:
        self.pages += 1

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: object) -> None:
        self.pages -= 1


def _context(hardware: object, size: int = 1 << 34) -> avcm.Vcm:
    memory = avcm.PhysicalMemory(size=1 << 30)
    return avcm.mmu_init(0x1_0000_0000, size, hardware, memory=memory)  # type: ignore[arg-type]


# -- per-operation overhead ------------------------------------------------------------------


async def _side_by_side(
    ours: Callable[[int], Awaitable[float]],
    theirs: Callable[[int], Awaitable[float]],
    total: int,
    rounds: int = 9,
) -> list[float]:
    """Each round times *ours* and *theirs* on ``total // rounds`` repetitions back to back, in
    alternating order (a machine that slows down or speeds up during a round weighs on both);
    the ratios of the rounds, sorted. The garbage collector is off, as in :mod:`timeit`."""
    chunk = max(1, total // rounds)
    gc.collect()
    gc.disable()
    try:
        await ours(chunk)  # warm up: caches, the first allocations
        await theirs(chunk)
        ratios = []
        for index in range(rounds):
            if index % 2:
                theirs_time, ours_time = await theirs(chunk), await ours(chunk)
            else:
                ours_time, theirs_time = await ours(chunk), await theirs(chunk)
            ratios.append(ours_time / theirs_time)
    finally:
        gc.enable()
    return sorted(ratios)


async def op_overhead(pairs: int) -> Row:
    vcm = _context(_PerResHardware())
    res = await vcm.reserve(4 * KiB)
    phys = await vcm.alloc(4 * KiB)
    lock = anyio.Lock()

    async def avcm_pairs(count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await res.bind(phys)
            await res.unbind()
        return time.perf_counter() - started

    async def bare_pairs(count: int) -> float:
        # What a minimal correct bind+unbind must do: take and release the context's lock
        # twice (each a checkpoint), the driver's calls and the bookkeeping being free.
        started = time.perf_counter()
        for _ in range(count):
            async with lock:
                pass
            async with lock:
                pass
        return time.perf_counter() - started

    ratios = await _side_by_side(avcm_pairs, bare_pairs, pairs)
    ratio = statistics.median(ratios)
    return Row(
        "uncontended bind+unbind, zero-latency driver",
        "2 bare anyio.Lock round trips (async with lock: pass, twice)",
        ratio,
        "<= 1.3x",
        ratio <= 1.3,
        f"median of {len(ratios)} rounds side by side, spread {ratios[0]:.2f}-{ratios[-1]:.2f}",
    )


# -- contention ------------------------------------------------------------------------------


async def _throughput(tasks: int, ops_per_task: int) -> float:
    vcm = _context(_PerResHardware())
    pairs = [(await vcm.reserve(4 * KiB), await vcm.alloc(4 * KiB)) for _ in range(tasks)]

    async def worker(res: avcm.Res, phys: avcm.Phys) -> None:
        for _ in range(ops_per_task):
            await res.bind(phys)
            await res.unbind()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for res, phys in pairs:
            tg.start_soon(worker, res, phys)
    return tasks * ops_per_task * 2 / (time.perf_counter() - started)


async def contention() -> Row:
    few = await _throughput(10, 2_000)
    many = await _throughput(1_000, 20)
    ratio = many / few
    return Row(
        "throughput, 1,000 tasks binding on one context",
        "10 tasks",
        ratio,
        ">= 0.5",
        ratio >= 0.5,
        f"{many:,.0f} vs {few:,.0f} ops/s",
    )


# -- activation ------------------------------------------------------------------------------


async def activation(reservations: int) -> Row:
    async def pages_per_second(hardware: object) -> tuple[float, int]:
        vcm = _context(hardware)
        for _ in range(reservations):
            await vcm.make_binding(68 * KiB)  # a 64 KiB page and a 4 KiB page each
        pages = sum(len(walk) for walk in _walks(vcm))

        async def measure() -> float:
            started = time.perf_counter()
            await vcm.activate()
            await vcm.deactivate()
            return time.perf_counter() - started

        elapsed = await _best_of_async(3, measure)
        return 2 * pages / elapsed, pages

    per_res, pages = await pages_per_second(_PerResHardware())
    per_page, _ = await pages_per_second(_PerPageHardware())
    return Row(
        f"activate+deactivate, {reservations:,} bound reservations",
        "per-reservation driver",
        per_page / per_res,
        "reported",
        None,
        f"per-page {per_page:,.0f} pages/s, per-reservation {per_res:,.0f} pages/s "
        f"({pages:,} pages)",
    )


def _walks(vcm: avcm.Vcm) -> list[list[tuple[int, int, int]]]:
    wrapper = vcm.driver
    assert isinstance(wrapper, avcm.lowlevel.MmuWrapper)
    return [wrapper.pages(res, res.phys) for res in vcm.reservations() if res.phys is not None]


# -- memory ----------------------------------------------------------------------------------


@contextmanager
def _tracing() -> Iterator[Callable[[], int]]:
    """Trace allocations in the block; what it yields says how many bytes are held now that
    were not before the block."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield lambda: tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def _traced(build: Callable[[], object]) -> tuple[int, object]:
    with _tracing() as used:
        kept = build()
        return used(), kept


async def _bytes_each(build: Callable[[], Awaitable[list[Any]]]) -> float:
    """The bytes held by each object of the list ``await build()`` makes (not the list)."""
    with _tracing() as used:
        kept = await build()
        return (used() - sys.getsizeof(kept)) / len(kept)


def _memory_row(what: str, per: float, target: int, parts: str) -> Row:
    return Row(what, f"{target} B", per / target, "<= 1", per <= target, f"{per:.0f} B ({parts})")


async def memory_per_reservation(count: int) -> Row:
    """The contiguous best case: every reservation next to the last one."""
    vcm = _context(_PerResHardware())
    await vcm.reserve(4 * KiB)  # warm up the allocator's structures

    async def reserve() -> list[avcm.Res]:
        return [await vcm.reserve(4 * KiB) for _ in range(count)]

    per = await _bytes_each(reserve)
    return _memory_row(
        "memory per live reservation, contiguous", per, 512, "Res, registry, address allocator"
    )


async def memory_per_fragmented_reservation(count: int) -> Row:
    """Every other reservation unreserved: each live one has a free extent after it, which the
    allocator keeps (in its index of each alignment in use) until a reservation fills it."""
    vcm = _context(_PerResHardware())
    await vcm.reserve(4 * KiB)

    async def reserve_with_holes() -> list[avcm.Res]:
        every = [await vcm.reserve(4 * KiB) for _ in range(2 * count)]
        for res in every[1::2]:
            await res.unreserve()
        return every[0::2]

    per = await _bytes_each(reserve_with_holes)
    return _memory_row(
        "memory per live reservation, fragmented (a hole after each)",
        per,
        512,
        "Res, registry, address allocator and the free extent",
    )


async def memory_per_binding(count: int) -> Row:
    vcm = _context(_PerResHardware())
    await vcm.make_binding(4 * KiB)

    async def make() -> list[avcm.Res]:
        return [await vcm.make_binding(4 * KiB) for _ in range(count)]

    per = await _bytes_each(make)
    return _memory_row(
        "memory per bound make_binding of a page",
        per,
        600,
        "Res, Phys and its part, registries, both allocators, the binding",
    )


def memory_per_phys(parts: int) -> Row:
    layout = [(0x8000_0000 + i * 8 * KiB, 4 * KiB) for i in range(parts)]
    count = 1_000
    used, kept = _traced(lambda: [avcm.lowlevel.create_phys(layout) for _ in range(count)])
    per = (used - sys.getsizeof(kept)) / count
    target = 200 + 20 * parts
    return Row(
        f"memory of a Phys of {parts} part{'s' if parts > 1 else ''}",
        f"{target} B (200 B and 20 B a part)",
        per / target,
        "<= 1",
        per <= target,
        f"{per:.0f} B",
    )


def memory_per_part(count: int) -> Row:
    parts = [(0x8000_0000 + i * 8 * KiB, 4 * KiB) for i in range(count)]
    used, _ = _traced(lambda: avcm.lowlevel.create_phys(parts))
    per = used / count
    return Row("memory per physical part", "64 B", per / 64, "<= 1", per <= 64, f"{per:.0f} B")
