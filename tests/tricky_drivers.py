"""Correct drivers that do what the contract allows in ways the sample drivers do not: each
must get no violation from the stress harness (``tests/test_stress.py``)."""

from __future__ import annotations

import errno
import functools
import math
import random
import time
import weakref

import anyio.lowlevel
import anyio.to_thread

import avcm
import avcm.lowlevel
from drivers import Latency, PageTableMmu
from tests.broken_drivers import in_background

ZERO = Latency.profile("zero")


class _Flaky(PageTableMmu):
    """Fails one page activation in 20 with a plain ``OSError(EIO)``, having done nothing:
    rule 8 lets any driver call fail, and the error reaches the caller as raised."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="flaky")
        self._random = random.Random(0)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if self._random.random() < 0.05:
            raise OSError(errno.EIO, "activate_page: bus error")
        await super().activate_page(vaddr, paddr, order, vcm)


class _Honest(PageTableMmu):
    """Its status register shows translation off while a page write is under way (a driver
    call in flight), and device faults are plain ``LookupError``s: both allowed."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=Latency.profile("default"))
        self._writing = 0

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._writing += 1
        try:
            await super().activate_page(vaddr, paddr, order, vcm)
        finally:
            self._writing -= 1

    def hardware_active(self) -> bool:
        return super().hardware_active() and not self._writing

    def read(self, addr: int, length: int) -> bytes:
        try:
            return super().read(addr, length)
        except avcm.VcmError as fault:
            raise LookupError(f"no translation at {addr:#x}") from fault


def flaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Flaky(memory), memory=memory, name="flaky")


class _FlakyTeardown(PageTableMmu):
    """Fails a teardown call (a page clear, the switch-off) with a plain ``OSError(EIO)``
    with probability *rate*, having done nothing: rule 8 lets any driver call fail, teardown
    too."""

    def __init__(self, memory: avcm.PhysicalMemory, rate: float = 0.01) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="flaky-teardown")
        self._random = random.Random(0)
        self._rate = rate

    def _nack(self, what: str) -> None:
        if self._random.random() < self._rate:
            raise OSError(errno.EIO, f"{what}: bus error")

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._nack("deactivate_page")
        await super().deactivate_page(vaddr, paddr, order, vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        self._nack("disable")
        await super().disable(vcm)


# One stream for every instance: a unit's NACKs do not start again with each context (the
# conformance suite makes new ones for each schedule, and for each attempt at its setup).
_NACKS = random.Random(0)


class _Nacking(PageTableMmu):
    """Fails one setup call in four (a switch-on, a page write) with a plain ``OSError(EIO)``,
    having done nothing: often enough that a scenario's own calls before and after its race
    fail too, not only those in it (rule 8 lets any driver call fail)."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="nacking")

    def _nack(self, what: str) -> None:
        if _NACKS.random() < 0.25:
            raise OSError(errno.EIO, f"{what}: NACKed by the unit")

    async def enable(self, vcm: avcm.Vcm) -> None:
        self._nack("enable")
        await super().enable(vcm)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._nack("activate_page")
        await super().activate_page(vaddr, paddr, order, vcm)


def nacking(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Nacking(memory), memory=memory, name="nacking")


class _DeadUnit(PageTableMmu):
    """Fails every page write with a plain ``OSError(EIO)``, having done nothing: correct by
    rule 8 (any driver call may fail), however useless."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="dead-unit")

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        raise OSError(errno.EIO, "activate_page: the unit does not answer")


def dead_unit(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _DeadUnit(memory), memory=memory, name="dead")


class _YieldingFlakyTeardown(_FlakyTeardown):
    """:class:`_FlakyTeardown` (one teardown call in ten fails) whose page writes yield to
    other tasks: a cancellation lands inside a mapping, and its undo's page clears may fail."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, rate=0.1)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await anyio.lowlevel.checkpoint()
        await super().activate_page(vaddr, paddr, order, vcm)


def yielding_flaky_teardown(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = _YieldingFlakyTeardown(memory)
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="yielding")


_STRICT = random.Random(1)


class _StrictFlaky(_FlakyTeardown):
    """Fails one page write in 50 and one teardown call in 20 (rule 8), and raises a
    ``KeyError`` (not an ``OSError``) for a page clear of a page it does not hold: what a
    strict driver does once avcm's undo of a failure failed too and left its table half done
    (partial effects: nothing can be judged then)."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, rate=0.05)
        self._random = self._writes = _STRICT  # one stream: each context fails elsewhere
        self._held: set[int] = set()

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if self._writes.random() < 0.02:
            raise OSError(errno.EIO, "activate_page: bus error")
        await super().activate_page(vaddr, paddr, order, vcm)
        self._held.add(vaddr)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        if vaddr not in self._held:
            raise KeyError(vaddr)
        await super().deactivate_page(vaddr, paddr, order, vcm)
        self._held.discard(vaddr)


def strict_flaky(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _StrictFlaky(memory), memory=memory, name="strict")


def flaky_teardown(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = _FlakyTeardown(memory)
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="flaky-teardown")


class _EveryNthClearFails(PageTableMmu):
    """Fails every *nth* page clear (counted over the unit's life) with a plain
    ``OSError(EIO)``, having done nothing (rule 8): a switch-off of more pages than that never
    gets through, each failure undone, but one of fewer does."""

    def __init__(self, memory: avcm.PhysicalMemory, nth: int) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="every-nth-clear")
        self._nth = nth
        self._clears = 0

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        self._clears += 1
        if self._clears % self._nth == 0:
            raise OSError(errno.EIO, "deactivate_page: bus error")
        await super().deactivate_page(vaddr, paddr, order, vcm)


def every_40th_clear_fails(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = _EveryNthClearFails(memory, 40)
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="every-40th")


MADE: list[avcm.Vcm] = []  # every context flaky_teardown_kept made, in order


def flaky_teardown_kept(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """:func:`flaky_teardown`, each context it makes kept in :data:`MADE`."""
    vcm = flaky_teardown(memory)
    MADE.append(vcm)
    return vcm


def flaky_teardown_often(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """One teardown call in three fails: a scenario's deactivates fail in most schedules."""
    driver = _FlakyTeardown(memory, rate=1 / 3)
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="flaky-teardown")


def honest(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Honest(memory), memory=memory, name="honest")


class SpareCache(PageTableMmu):
    """Keeps a cache of spare page-table pages, filled lazily (one more page each time the
    translation is switched on, up to *bound*) and emptied when the context is destroyed:
    correct (rule 9 asks only that every page be free after destroy), although memory in use
    keeps growing after the harness's first drain. With *bound* ``None`` it grows for ever
    (still no leak: destroy gives it back), and with *forget* its destroy leaves the cache
    behind: a leak."""

    def __init__(
        self,
        memory: avcm.PhysicalMemory,
        bound: int | None = 8,
        *,
        forget: bool = False,
        fail_cleanup: bool = False,
    ) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="spare-cache")
        self.bound, self.forget, self.fail_cleanup = bound, forget, fail_cleanup
        self.cache: list[int] = []

    async def enable(self, vcm: avcm.Vcm) -> None:
        await super().enable(vcm)
        if self.bound is None or len(self.cache) < self.bound:
            page = self.memory.alloc_pages(0)
            if page is not None:
                self.cache.append(page)

    async def cleanup(self, vcm: avcm.Vcm) -> None:
        if self.fail_cleanup:
            self.fail_cleanup = False  # (once: a destroy called again retries it)
            raise OSError(errno.EIO, "cleanup: the unit did not answer")
        if not self.forget:
            for page in self.cache:
                self.memory.free_pages(page, 0)
        self.cache.clear()


def _spare_cache(memory: avcm.PhysicalMemory, driver: SpareCache) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="spare-cache")


def spare_cache(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _spare_cache(memory, SpareCache(memory))


def spare_cache_failing_cleanup(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct: its cleanup fails once (rule 8: a destroy called again retries it)."""
    return _spare_cache(memory, SpareCache(memory, fail_cleanup=True))


def spare_cache_unbounded(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Correct by the contract: its cache grows for ever, but destroy gives it all back."""
    return _spare_cache(memory, SpareCache(memory, None))


def spare_cache_forgotten(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Broken: destroy leaves its (bounded) cache behind."""
    return _spare_cache(memory, SpareCache(memory, forget=True))


_BUILT: weakref.WeakKeyDictionary[avcm.PhysicalMemory, int] = weakref.WeakKeyDictionary()


def spare_cache_forgotten_later(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Broken, but only in the contexts a run builds anew (after its first two): their destroy
    leaves the cache behind."""
    built = _BUILT[memory] = _BUILT.get(memory, 0) + 1
    return _spare_cache(memory, SpareCache(memory, forget=built > 2))


class _ScratchThenLeak(PageTableMmu):
    """Broken: takes a scratch page when built and gives it back at its first switch-off (no
    leak), then loses a page at its 12th switch-on (a leak, after the first drain)."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="scratch-then-leak")
        self.scratch = memory.alloc_pages(0)
        self.enables = 0

    async def enable(self, vcm: avcm.Vcm) -> None:
        await super().enable(vcm)
        self.enables += 1
        if self.enables == 12:
            self.memory.alloc_pages(0)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        if self.scratch is not None:
            self.memory.free_pages(self.scratch, 0)
            self.scratch = None


def scratch_then_leak(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return _spare_cache(memory, _ScratchThenLeak(memory))  # type: ignore[arg-type]


def spare_cache_unbounded_forgotten(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Broken: its cache grows for ever and destroy leaves it behind (a leak that grows)."""
    return _spare_cache(memory, SpareCache(memory, None, forget=True))


class _Threaded(PageTableMmu):
    """Writes each page and switches translation on from a worker thread (a blocking
    register access, ``anyio.to_thread.run_sync``, not abandoned on cancel): a cancellation
    while the thread works waits for it, and the call completes. For the conformance suite's
    cancellation scenarios (``tests/test_conformance.py``)."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="threaded")

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await anyio.to_thread.run_sync(time.sleep, 0)
        await super().activate_page(vaddr, paddr, order, vcm)

    async def enable(self, vcm: avcm.Vcm) -> None:
        await anyio.to_thread.run_sync(time.sleep, 0)
        await super().enable(vcm)


def threaded(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Threaded(memory), memory=memory, name="threaded")


class _BusyEnable(PageTableMmu):
    """Refuses every second switch-on with ``EBUSY`` (another master holds the unit), having
    done nothing: rule 8 lets any driver call fail."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="busy_enable")
        self._enables = 0

    async def enable(self, vcm: avcm.Vcm) -> None:
        self._enables += 1
        if self._enables % 2 == 0:
            raise avcm.VcmError(errno.EBUSY, "enable: the unit is busy")
        await super().enable(vcm)


class _Retrying(PageTableMmu):
    """Announces ``driver.activate_page`` inside its own page write too (so that a harness's
    faults reach its hardware step) and retries a step that fails there, three times: a
    fault it absorbs reaches no caller, rightly."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="retrying")

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        for attempt in range(3):
            try:
                await avcm.lowlevel.sync_point("driver.activate_page", vcm)
                break
            except Exception:
                if attempt == 2:
                    raise
        await super().activate_page(vaddr, paddr, order, vcm)


def busy_enable(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _BusyEnable(memory), memory=memory)


def retrying(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Retrying(memory), memory=memory)


class _Spanning(PageTableMmu):
    """The sample page tables, recording the lowest and highest device address mapped in
    :data:`SPAN`."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="spanning")

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await super().activate_page(vaddr, paddr, order, vcm)
        SPAN[0] = min(SPAN[0], vaddr)
        SPAN[1] = max(SPAN[1], vaddr)


# the lowest and highest device address any spanning context mapped (a test resets it)
SPAN = [1 << 64, 0]


def spanning(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Spanning(memory), memory=memory)


class _NoScatterGather(PageTableMmu):
    """A unit with no scatter-gather: it maps a reservation whose phys is one contiguous part
    and refuses any other with ``EINVAL``, having done nothing (rule 8: a driver may fail
    what it cannot do). Once such a phys is bound, every switch-on of its context fails."""

    activate_page = None  # type: ignore[assignment]
    deactivate_page = None  # type: ignore[assignment]

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="no-sg")

    async def activate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        if phys.count > 1:
            raise avcm.InvalidError(f"{self.name}: no scatter-gather for {phys.count} parts")
        mapped = functools.partial(PageTableMmu.activate_page, self, vcm=res.vcm)
        cleared = functools.partial(PageTableMmu.deactivate_page, self, vcm=res.vcm)
        await avcm.phys_walk(res.start, phys, self.orders, mapped, cleared)

    async def deactivate(self, res: avcm.Res, phys: avcm.Phys) -> None:
        mapped = functools.partial(PageTableMmu.activate_page, self, vcm=res.vcm)
        cleared = functools.partial(PageTableMmu.deactivate_page, self, vcm=res.vcm)
        await avcm.phys_walk(res.start, phys, self.orders, cleared, mapped)


def no_scatter_gather(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _NoScatterGather(memory), memory=memory)


_MADE: weakref.WeakKeyDictionary[avcm.PhysicalMemory, int] = weakref.WeakKeyDictionary()


def fails_fourth_time(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """A factory that makes three contexts on a memory (as many as a run with ``--driver``
    starts with) and fails to make a fourth (not a verdict on the driver: a run that needs a
    fourth cannot go on)."""
    _MADE[memory] = made = _MADE.get(memory, 0) + 1
    if made > 3:
        raise OSError(errno.ENODEV, "no fourth unit on this board")
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Honest(memory), memory=memory, name="twice")


class _Polling(PageTableMmu):
    """Waits for its hardware by polling the clock, yielding between reads, not by sleeping:
    switch-on waits 100 us for the unit to power up (``anyio.sleep(0)`` between reads),
    switch-off 50 us for the flush to settle (``anyio.lowlevel.checkpoint()``). On a real loop
    the spin takes real time and the deadline passes; on the virtual clock the spin rule moves
    time for it."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), name="polling")

    async def enable(self, vcm: avcm.Vcm) -> None:
        deadline = anyio.current_time() + 1e-4
        while anyio.current_time() < deadline:  # noqa: ASYNC110 - a poll, on purpose
            await anyio.sleep(0)  # noqa: ASYNC115 - as drivers write it
        await super().enable(vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        deadline = anyio.current_time() + 5e-5
        while anyio.current_time() < deadline:
            await anyio.lowlevel.checkpoint()


def polling(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    return avcm.mmu_init(0x1000_0000, 1 << 30, _Polling(memory), memory=memory, name="polling")


class _PollingStatus(PageTableMmu):
    """Waits for its hardware by polling a status bit with ``anyio.sleep(0)`` between looks,
    not by sleeping: switch-on is a command the unit completes 100 us later, switch-off one it
    completes 50 us later, each in a task of the unit's own. The poll reads no clock
    (``how="bit"``), or reads it in two places in turn (``how="two_places"``: a timeout check
    before each look, the look's time after it). On a real loop the spin takes real time and
    the unit's answer comes; on the virtual clock the busy-loop rule moves time for it."""

    def __init__(self, memory: avcm.PhysicalMemory, how: str) -> None:
        super().__init__(memory, orders=(8, 4, 0), name=f"polling-status-{how}")
        self.how = how
        self.last_look = 0.0

    async def _command(self, takes: float) -> None:
        status = [False]

        async def unit() -> None:
            await anyio.sleep(takes)
            status[0] = True

        in_background(unit)
        deadline = anyio.current_time() + 1.0 if self.how == "two_places" else math.inf
        while not status[0]:
            if self.how == "two_places" and anyio.current_time() > deadline:
                raise OSError(errno.ETIMEDOUT, "the unit never answered")
            await anyio.sleep(0)  # noqa: ASYNC115 - as drivers write it
            if self.how == "two_places":
                self.last_look = anyio.current_time()

    async def enable(self, vcm: avcm.Vcm) -> None:
        await self._command(1e-4)
        await super().enable(vcm)

    async def disable(self, vcm: avcm.Vcm) -> None:
        await super().disable(vcm)
        await self._command(5e-5)


def polling_status(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = _PollingStatus(memory, "bit")
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="polling-status")


def polling_status_two_places(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    driver = _PollingStatus(memory, "two_places")
    return avcm.mmu_init(0x1000_0000, 1 << 30, driver, memory=memory, name="polling-status-2")


class _YieldingSmallPages(PageTableMmu):
    """4 KiB pages only, no latency; each page write and removal lets the loop run once."""

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(0,), latency=ZERO, name="small-pages")

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await anyio.lowlevel.checkpoint()
        await super().activate_page(vaddr, paddr, order, vcm)

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        await anyio.lowlevel.checkpoint()
        await super().deactivate_page(vaddr, paddr, order, vcm)


class _LongSwitchOn(PageTableMmu):
    """A switch-on that sets up each of many registers in turn, a step each, no time passing."""

    REGISTERS = tuple(f"register {index:#x}" for index in range(12_000))

    def __init__(self, memory: avcm.PhysicalMemory) -> None:
        super().__init__(memory, orders=(8, 4, 0), latency=ZERO, name="long-switch-on")

    async def enable(self, vcm: avcm.Vcm) -> None:
        for _register in self.REGISTERS:
            await anyio.lowlevel.checkpoint()
        await super().enable(vcm)


def long_switch_on(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: a switch-on of 12,000 steps, more than a racing scenario's step budget, each
    a register of its own (steady progress, no livelock)."""
    return avcm.mmu_init(0x1000_0000, 1 << 30, _LongSwitchOn(memory), memory=memory)


def small_pages_at_once(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: 4 KiB pages only, each write a step and no time passing, so that a turn of
    binds and unbinds takes hundreds of steps with the clock standing still (attack58's such
    driver ran out of the step budget in own_failures: said to fail)."""
    return avcm.mmu_init(0x1000_0000, 1 << 30, _YieldingSmallPages(memory), memory=memory)


def tiny_space(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: the sample page tables behind an address space of 256 KiB that starts off a
    1 MiB boundary, less than some scenarios need at all (attack58's such driver crashed the
    suite with avcm's ENOSPC, or failed four scenarios with it)."""
    tables = PageTableMmu(memory, orders=(8, 4, 0), name="tiny")
    return avcm.mmu_init(0x1004_0000, 256 << 10, tables, memory=memory, name="tiny")


def small_space(memory: avcm.PhysicalMemory) -> avcm.Vcm:
    """Not broken: the sample page tables behind an address space of 8 MiB, less than some
    scenarios would reserve."""
    tables = PageTableMmu(memory, orders=(8, 4, 0), name="small")
    return avcm.mmu_init(0x1000_0000, 8 << 20, tables, memory=memory, name="small")
