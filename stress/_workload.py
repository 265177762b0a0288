"""The operation mix: many tasks, each choosing operations at random with seeded weights.

Every task draws from its own ``random.Random(seed, task)``, and shared objects are picked from
shared pools, so tasks contend on the same reservations and memory on purpose. Each operation's
outcome is classified at once: success, an error the contract allows in that situation (counted
as an expected outcome), or a violation. After every operation its own postconditions are
checked; operations start in windows of ``check_every`` (``_gate``), and once a window's last
operation returns, nothing is in flight and the global invariants run (``_invariants``). The
pools are bounded (``POOL_LIMIT``), so what a check looks at does not grow with the run.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import itertools
import math
import random
import time
import traceback
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

import avcm
from avcm.lowlevel import errno_name, sync_hook, undo_failed
from avcm.testing import harness_clock, reserve_run, take_top_block

from ._config import MAX_OPS, StressConfig, UsageError
from ._contexts import (
    Context,
    DriverFaults,
    WatchedMemory,
    build_context,
    build_contexts,
    is_injected_fault,
    raised_by_driver,
    refused,
    watching_allocations,
)
from ._device import (
    BESIDE_CHANCE,
    DevicePages,
    ReadsBeside,
    across,
    after_binding,
    after_deactivate,
    after_unmapping,
    check_devices,
    entry_pages,
)
from ._gate import Gate
from ._invariants import (
    DRIVER_RETRIES,
    HARNESS,
    LEFT_TIMER,
    RESTART_ANCHORS,
    RESTART_WAKES,
    WHOLE,
    Cut,
    NoVerdict,
    Violation,
    check_cold_start,
    check_data,
    check_detached,
    check_final,
    check_quiescent,
    check_released,
    check_restart_racing,
    deactivate_everything,
    deactivate_until_done,
    destroy_every_context,
    harness_operations,
    mark_new,
    release_everything,
    retried,
    switch_off_together,
    until_done,
)
from ._watchdog import Watch

__all__ = [
    "POOL_LIMIT",
    "Outcome",
    "RunResult",
    "World",
    "bounded_operation",
    "run_workload",
    "scattered_phys",
]

KiB = 1 << 10
MiB = 1 << 20
# Mostly small, some that exercise large pages and the page walk's mixes, and some that end a
# page short of a large page (124 KiB, 2 MiB - 4 KiB: their reservations are aligned to the
# large page, and a walk that takes the large page for the tail anyway maps a page past the
# part, where a one-to-one phys starts on that boundary), and now and then one of three large
# pages and more (attack46: an entry wrong from the third 1 MiB page of a run on went unseen
# in 6 of 6 runs, no phys being larger than 2 MiB + 68 KiB).
SIZES = (
    4 * KiB,
    8 * KiB,
    16 * KiB,
    64 * KiB,
    68 * KiB,
    124 * KiB,
    MiB,
    MiB + 68 * KiB,
    2 * MiB - 4 * KiB,
    2 * MiB + 68 * KiB,
    3 * MiB + 68 * KiB,
)
SIZE_WEIGHTS = (20, 12, 8, 8, 6, 8, 3, 2, 1, 1, 1)
# and, as often as 16 KiB, any size up to this many pages: shapes no menu thought of
RANDOM_SIZE_PAGES = 48
RANDOM_SIZE_WEIGHT = 8

# One alloc in SCATTERED_EVERY makes a phys of scattered parts (create_phys, as a driver's own
# allocator or a carve-out hands out) instead of asking the context: the buddy allocator's
# parts come largest first, each aligned to its size, so the memory of a run never has a part
# shorter than a large page starting on a boundary of one with more of the phys after it, where
# a walk that picks a page size by what is left of the phys, not of the part, maps a large page
# over memory that is not the phys's (attack38: missed in 9 of 9 runs). Each piece is (order of
# the block it is cut from, bytes used from the block's start): on a 64 KiB boundary, short of
# it or whole, or a 4 KiB page anywhere; 2 to SCATTERED_PIECES of them, in the order drawn.
# What a piece leaves of its block is held with it, until the phys is freed. 64 KiB at most:
# a piece after a 4 KiB one is mapped with 4 KiB pages, and pieces of 1 MiB (256 such pages)
# made switching a context off so long that a driver failing one page clear in 100 (rule 8)
# failed it 100 times in a row.
SCATTERED_EVERY = 8
SCATTERED_PIECES = 4
PIECES = ((0, 4 * KiB), (4, 4 * KiB), (4, 8 * KiB), (4, 32 * KiB), (4, 64 * KiB))

# Warnings the contract allows when tasks race on shared objects (the kernel's WARN_ON that
# go on working), and a destroy's of what it releases (the harness destroys a context with
# everything in it); any other avcm warning is a violation.
EXPECTED_WARNINGS = ("unbind:", "unreserve:", "destroy:")

# the sync points at which an activate or deactivate calls the driver to switch the hardware
DRIVER_SWITCHES = ("driver.activate", "driver.deactivate")

# physes whose views are checked at each quiescent point
QUIESCENT_DATA_CHECKS = 8

# The most physes, and the most reservations, the pools hold: an operation that would make a
# pool at its limit larger is replaced by the one that undoes it. The weights keep the pools
# well below it over a --drain-every window of 2,000 operations; without drains (or with long
# windows) they would grow for ever, and with them what a check and an activate cost.
POOL_LIMIT = 256

# With this chance at each quiescent point one context ebbs for the next window: its users
# stop activating it, the harness takes over every activation they held but one, and undoes
# that one as an operation of its own somewhere in the window, which switches the context off
# while the tasks go on with everything else. (With 64 tasks a context's count seldom reaches
# zero otherwise, and a drain switches every context off together: a switch-off that harms
# what another context is doing would not show.)
EBB_CHANCE = 1 / 4
# About every DETACH_EVERY operations, at a quiescent point, the harness destroys one context
# with all it holds (a device detached: hardware the contexts share must keep serving the
# others), builds a new one in its place, and checks everything again.
DETACH_EVERY = 2000
# With this chance at each quiescent point the harness switches every context off and on again
# at once, each switch-on RESTART_LAG seconds or less (down to a thousandth of it) after the
# switch-offs' last parts began, or before, at or after a timer of the driver's
# (check_restart_racing): a unit that powers down after its last user left, outside its lock
# or in a background task, must not undo a switch-on from cold meanwhile. (1 in 8: at 1 in
# 16 a lazy power-down was caught in 3 runs of 6; the cost is within the noise.)
RESTART_CHANCE = 1 / 8
RESTART_LAG = 50e-6
# One racing restart in this many switches one context on alone, the others left off till
# it was checked: a later switch-on from cold would power a shared unit up again, and hide a
# power-down that undid the first one's (attack22's decision acted on after a checkpoint)
RESTART_ALONE = 4
# One switch-on in this many of a racing restart's (on with its reservations bound) is first
# cancelled a drawn part of the way through, of as long as its last switch-on there took
# (check_restart_racing's cuts): --cancel draws every operation alike, and one with a long
# driver call cancelled past that call's first await is rare among them.
CUT_EVERY = 4
# At each drain, with nothing bound, the harness switches every context off and on again so
# many times in a row, racing (World.restart_again_and_again).
DRAIN_RESTARTS = 64

# At the start and after each drain, with every address space as built (nothing reserved), the
# harness lays out in each translated context a run of RUN_PIECES reservations next to each
# other (avcm.testing.reserve_run), bound in order to the pieces of one block of memory of an
# order drawn from RUN_ORDERS (64 KiB, 128 KiB, 1 MiB), and hands them to the tasks with the
# rest: entries that follow one another in device addresses and in memory, which hardware
# may fold into one translation (a contiguous hint, a TLB coalescing neighbours) and must
# unfold when a task unbinds one of them. The tasks' own reservations land next to each other
# by chance, and their physes are never pieces of one block: a TLB that unfolds a run only
# when its first or last entry goes passed 4 runs of 4 without these (the conformance
# scenario neighbours found it at once).
RUN_PIECES = 16
RUN_ORDERS = (4, 5, 8)

# One reserve in WIDE_EVERY reserves a wide range, up to half of the context's address space,
# which a bind later fills with far less memory at its start: the allocator places the small
# reservations best fit at the top of the space, and the pools are bounded, so without these a
# run's device addresses stay within some tens of MiB, and a page table that aliases addresses
# far apart (an index masked too narrowly, a truncated address) never shows.
WIDE_EVERY = 8
# One wide reserve in BOTTOM_EVERY takes all the space below the context's lowest reservation:
# the allocator fills a space from the top, and its first addresses were reached in a few runs
# only (attack46: a walk that faults in the lowest 2 MiB went unseen in 33 of 50 runs)
BOTTOM_EVERY = 4

_UNDO = {"alloc": "free", "make_binding": "destroy_binding", "reserve": "unreserve", "map": "unmap"}


def bounded_operation(op: str, physes: int, reservations: int) -> str:
    """*op*, or the operation undoing it if it would grow a pool (of *physes* physes, of
    *reservations* reservations) at its limit."""
    undo = _UNDO.get(op)
    if undo is None:
        return op
    grows_physes = op in ("alloc", "make_binding")
    grows_reservations = op != "alloc"
    full = (grows_physes and physes >= POOL_LIMIT) or (
        grows_reservations and reservations >= POOL_LIMIT
    )
    return undo if full else op


@dataclass(slots=True)
class Outcome:
    """One operation as the trace records it."""

    seq: int
    task: int
    op: str
    target: str
    result: str
    vtime: float


@dataclass
class RunResult:
    ops: int = 0
    wall_seconds: float = 0.0
    # wall time spent inside the avcm calls themselves (with one task: the harness's overhead
    # is wall_seconds / op_seconds)
    op_seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    checks: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    violation: Violation | None = None
    # why the run stopped with no verdict (the harness's own release failed, the factory
    # failed to build a context anew: it cannot go on), if it did
    no_verdict: str | None = None
    # the windows of operations not judged: from an operation whose undo failed (partial
    # effects: what the hardware holds is unknown) to the next quiescent point, where the
    # harness started over on new memory; each (first operation, last, why)
    unjudged: list[tuple[int, int, str]] = field(default_factory=list)
    not_judged: int = 0  # the operations that ended while nothing was judged
    # a stalled run that could not be stopped (a task stuck where no cancellation reaches)
    abandoned: bool = False
    # operations started (some may not have ended: a stalled run's, or one a violation stopped)
    started: int = 0
    trace: list[Outcome] = field(default_factory=list)

    def __repr__(self) -> str:
        # not the dataclass's, which would spell out every outcome of the trace: asyncio's
        # runner has the main task's result repr'd as it restores its SIGINT handler, which
        # cost 2% of a 60,000-operation run
        if self.violation is not None:
            verdict = f"{self.violation.rule} violated"
        else:
            verdict = "no violation" if self.no_verdict is None else "no verdict"
        return f"<RunResult {self.ops} operations, {verdict}>"


class _Changing:
    """:meth:`World.changing`'s block: a class, not a generator's context manager, which costs
    three times as much (an unbind, unreserve, unmap or destroy_binding enters one)."""

    __slots__ = ("_in_flux", "_what")

    def __init__(self, in_flux: Counter[object], what: object) -> None:
        self._in_flux = in_flux
        self._what = what

    def __enter__(self) -> None:
        self._in_flux[self._what] += 1

    def __exit__(self, *exc_info: object) -> None:
        in_flux, what = self._in_flux, self._what
        in_flux[what] -= 1
        if not in_flux[what]:
            del in_flux[what]


class _Beside:
    """:meth:`World.reads_beside`'s block, when it reads."""

    __slots__ = ("_reads", "_workers")

    def __init__(self, workers: anyio.abc.TaskGroup, reads: ReadsBeside) -> None:
        self._workers = workers
        self._reads = reads

    def __enter__(self) -> None:
        self._workers.start_soon(self._reads.run)

    def __exit__(self, *exc_info: object) -> None:
        self._reads.stop()


class _Skip(Exception):
    """No object to operate on: the operation is counted as skipped."""


class World:
    """Everything the tasks share: contexts, pools of live objects, the quiescence gate."""

    def __init__(
        self,
        config: StressConfig,
        memory: avcm.PhysicalMemory,
        contexts: list[Context],
        result: RunResult | None = None,
    ):
        self.config = config
        self.memory = memory
        self._use(contexts)
        self._fresh_pools()
        self.names: dict[object, str] = {}
        # how many of the driver's timers to let fall due before a racing restart aims at the
        # next: learned from the restart that saw their rhythm change after keeping it
        # longest (the latest of those), see check_restart_racing; None while none did
        self.decisive_wakes: int | None = None
        self.decisive_kept = 0  # for how many waits the rhythm it was learned from was kept
        self.result = RunResult() if result is None else result
        self.seq = 0
        # what is under way, for a stall's report: per task in an operation, the operation
        # (its number and name); the harness's own check, drain or teardown; tasks ended
        self.doing: dict[int, tuple[int, str]] = {}
        self.phase: str | None = None
        self.tasks_ended = 0
        self.canaries = 0  # written into new physes (mark_new)
        self.checks_random = random.Random(f"{config.seed}:checks")
        # which context changes alone, and when (change_one_context)
        self.contexts_random = random.Random(f"{config.seed}:contexts")
        # how far in a drain's switches on are cancelled (check_cold_start): a stream of its
        # own, so that the restarts drawn from the one above are those they were without it
        self.cuts_random = random.Random(f"{config.seed}:cuts")
        # which block each run the harness lays out takes (lay_runs), and a stream of its own
        self.runs_random = random.Random(f"{config.seed}:runs")
        self.next_detach = self.contexts_random.randint(DETACH_EVERY // 2, DETACH_EVERY)
        self.generations: Counter[str] = Counter()  # per context name: built in its place
        # once the driver refused to switch a context on (shed_bindings): per context, what
        # was bound when an activate of it last returned (the driver took those)
        self.switched_on_with: dict[avcm.Vcm, dict[avcm.Res, avcm.Phys]] | None = None
        # per operation, what the driver calls of its latest successes took (of those with a
        # --cancel drawn, which note it): how long a --cancel by time waits, at most
        self.driver_seconds: defaultdict[str, deque[float]] = defaultdict(
            lambda: deque(maxlen=DRIVER_TIMES_KEPT)
        )
        self.gate = Gate(config.check_every)
        self.stop = False
        self.next_drain = config.drain_every
        self.drained_at = 0  # the operation of the last drain
        # physical memory in use with the contexts just built, which a drain compares with
        self.baseline = self.in_use()
        self.on_progress: Callable[[int], None] | None = None
        # (the virtual clock's spin rule is for a driver's polls, not the harness's reads)
        self.clock = harness_clock()
        self.deadline = None if config.duration is None else time.monotonic() + config.duration
        # since when (and why) nothing is judged: an operation's undo failed (start_over)
        self.unjudged_from: tuple[int, str] | None = None
        # the highest numbered operation the gate let in so far (those numbered since wait for
        # the next window)
        self.admitted = 0
        # the tasks' group while they run, which device reads beside an operation start in
        self.workers: anyio.abc.TaskGroup | None = None
        self.beside_random = random.Random(f"{config.seed}:beside")
        # whether a read beside sweeps, and which way: a stream of its own, so that the reads
        # beside (their pages and times, and which operations have them) are those of a run
        # without sweeps, and a run's tasks interleave as they did then
        self.sweep_random = random.Random(f"{config.seed}:sweep")

    def _fresh_pools(self) -> None:
        """What the tasks made and the harness knows of the contexts, empty: at the start, and
        when the harness starts over on new memory (:meth:`start_over`)."""
        self.physes: list[avcm.Phys] = []
        self.reservations: list[avcm.Res] = []
        # Per phys, where its parts are (computed once), and the bytes the harness
        # wrote last at a few offsets (data checks and probes): nothing else may change them
        # while the phys lives. Plain dicts, a probe reads both (a weak one makes a reference
        # at each look up): a phys's entries go once it is freed, at the next quiescent point
        # (_prune).
        self.layouts: dict[avcm.Phys, tuple[list[int], list[int]]] = {}
        self.written: dict[avcm.Phys, dict[int, bytes]] = {}
        self.held: dict[tuple[int, avcm.Vcm], int] = defaultdict(int)  # (task, vcm) -> count
        # per context, how long its activate took from cold with nothing bound, at the last
        # drain: how long a switch-on takes to reach the hardware's power-up, at most
        self.enable_seconds: dict[avcm.Vcm, float] = {}
        # per context, how long its last switch-on in a racing restart took, reservations bound
        self.switch_on_seconds: dict[avcm.Vcm, float] = {}
        # and how many blocks of memory its driver took in it (alloc_pages)
        self.switch_on_allocations: dict[avcm.Vcm, int] = {}
        # per context, the sum of its counts in held: what its activation count must be
        self.held_in: Counter[avcm.Vcm] = Counter()
        self.device = DevicePages()
        # per context ebbing in this window, the ticket of the operation switching it off
        self.ebbing: dict[avcm.Vcm, int] = {}
        self.largest_phys = 0  # no binding reaches further into a reservation than this
        # per context, what operations in flight may be changing in it: a reservation being
        # unbound or unreserved, or WHOLE (activate, deactivate); mid-run checks leave them be
        self.in_flux: dict[avcm.Vcm, Counter[object]] = defaultdict(Counter)

    def _use(self, contexts: list[Context]) -> None:
        self.contexts = contexts
        self.by_vcm = {ctx.vcm: ctx for ctx in contexts}
        # The contexts operations pick (alloc picks from all): with a driver under test, its
        # own; the harness's others there only lend their memory (a carve-out's is not aligned
        # to large pages), so that they do not thin out the races between the driver's.
        custom = [ctx for ctx in contexts if ctx.kind == "custom"]
        self.operated = custom or contexts

    def _replace(self, contexts: list[Context]) -> None:
        """Drive *contexts* from now on, some or all of them built anew."""
        # --faults of a driver under test: the same hook and random stream go on
        old = next(
            (ctx.faults for ctx in self.contexts if isinstance(ctx.faults, DriverFaults)), None
        )
        if old is not None:
            custom = [ctx for ctx in contexts if ctx.kind == "custom"]
            old.watch(ctx.vcm for ctx in custom)
            for ctx in custom:
                ctx.faults = old
        self._use(contexts)
        if self.switched_on_with is not None:  # (and not the contexts destroyed)
            self.switched_on_with = {
                vcm: taken for vcm, taken in self.switched_on_with.items() if vcm in self.by_vcm
            }

    def in_use(self) -> int:
        """Bytes of physical memory in use."""
        stats = self.memory.statistics()
        return stats.size - stats.free_bytes

    # -- naming: stable ids, so a trace is the same in every replay --------------------------

    def name(self, obj: object) -> str:
        name = self.names.get(obj)
        if name is None:
            kind = "phys" if isinstance(obj, avcm.Phys) else "res"
            name = f"{kind}#{len(self.names)}"
            self.names[obj] = name
        return name

    def adopt_phys(self, phys: avcm.Phys) -> None:
        """A phys just allocated (by alloc or make_binding)."""
        self.name(phys)
        self.physes.append(phys)
        self.largest_phys = max(self.largest_phys, phys.size)
        mark_new(self, phys)

    def adopt_res(self, res: avcm.Res) -> None:
        self.name(res)
        self.reservations.append(res)

    def reads_beside(
        self, ctx: Context, edges: list[int], inside: range = range(0)
    ) -> contextlib.AbstractContextManager[None]:
        """Now and then (:data:`BESIDE_CHANCE`, drawn for each block of an active *ctx* the
        tasks run), the block runs with device reads at *edges* and *inside* beside it
        (:class:`ReadsBeside`), started as it is entered and stopped as it is left."""
        if (
            self.workers is None
            or not ctx.translated
            or not ctx.vcm.activations
            or not (edges or inside)
            or self.beside_random.random() >= BESIDE_CHANCE
        ):
            return _NO_SCOPE
        return _Beside(self.workers, ReadsBeside(self, ctx, self.beside_random, edges, inside))

    def unmapping(self, res: avcm.Res) -> contextlib.AbstractContextManager[None]:
        """The block unmaps *res* (if bound): device reads beside it now and then
        (:meth:`reads_beside`), at its bound pages and the page on either side."""
        size = res.bound_size
        if res.phys is None or not size:
            return _NO_SCOPE
        end = res.start + size
        edges = [page for page in (res.start - avcm.PAGE_SIZE, end) if page >= 0]
        return self.reads_beside(self.by_vcm[res.vcm], edges, range(res.start, end, avcm.PAGE_SIZE))

    def changing(self, vcm: avcm.Vcm, what: object) -> _Changing:
        """Say that an operation in flight may change *what* (a reservation, or ``WHOLE``) in
        the context of *vcm*, until the block is left."""
        return _Changing(self.in_flux[vcm], what)

    @contextlib.contextmanager
    def switching(self, vcm: avcm.Vcm) -> Iterator[None]:
        """An activate or deactivate of *vcm* runs in the block: once it calls the driver (the
        count leaves or reaches zero: the hardware is switched and every mapping changes)
        until the block is left, the whole context may be changing. One that only counts, or
        still waits for the mutex, changes nothing, and leaves the context to the checks."""
        switched = False

        async def hook(point: str, obj: object) -> None:
            nonlocal switched
            if not switched and point in DRIVER_SWITCHES and obj is vcm:
                switched = True
                self.in_flux[vcm][WHOLE] += 1

        try:
            with sync_hook(hook):
                yield
        finally:
            if switched:
                in_flux = self.in_flux[vcm]
                in_flux[WHOLE] -= 1
                if not in_flux[WHOLE]:
                    del in_flux[WHOLE]

    def hold(self, task: int, vcm: avcm.Vcm, change: int) -> None:
        """Task *task* holds *change* more activations of *vcm* (fewer if negative)."""
        self.held[(task, vcm)] += change
        self.held_in[vcm] += change

    async def unbind(self, res: avcm.Res, *, beside: bool = False) -> avcm.Phys | None:
        """Unbind *res* as an operation does, the model and the device pages told; the phys
        it had, or None if it had none. If *beside*, with device reads beside it now and then
        (:meth:`unmapping`)."""
        with self.changing(res.vcm, res), self.unmapping(res) if beside else _NO_SCOPE:
            phys = await res.unbind()
        if res.phys is not None and res.phys is phys:
            raise Violation("rule 5", f"unbind of {self.name(res)} left it bound")
        if phys is not None:
            after_unmapping(self, self.by_vcm[res.vcm], res, "unbind", entry_pages(res, phys))
        return phys

    async def shed_bindings(self, ctx: Context, rng: random.Random) -> int:
        """Unbind what was bound in *ctx* since an activate of it last returned (the driver
        took the rest then), or one binding drawn by *rng* if all of it was: after the driver
        refused to switch *ctx* on (rule 8 lets it refuse a phys it cannot map: one of many
        parts, say). How many went; an unbind the driver fails (rule 8 too) ends it. Without
        it, a context with such a phys bound stays off till an unbind drawn at random takes
        that one, and its switch-ons and every check of an active context run a fraction as
        often (a driver refusing physes of more than one part: a third of the data checks
        with a view, and a quarter of the drains' cold starts skipped)."""
        if self.switched_on_with is None:
            self.switched_on_with = {}
        bound = self.bound_in(ctx)
        taken = self.switched_on_with.get(ctx.vcm, {})
        going = [res for res, phys in bound.items() if taken.get(res) is not phys]
        if not going and bound:
            going = [rng.choice(list(bound))]
        shed = 0
        for res in going:
            try:
                await self.unbind(res)
            except OSError as error:
                _classify("unbind", error)  # (an errno unbind may not raise is a violation)
                break
            shed += 1
        self.result.checks["bindings shed: the driver refused to switch on with them"] += shed
        return shed

    def switched_on(self, ctx: Context) -> None:
        """An activate of *ctx* returned: what is bound now, the driver took."""
        if self.switched_on_with is not None:
            self.switched_on_with[ctx.vcm] = self.bound_in(ctx)

    def bound_in(self, ctx: Context) -> dict[avcm.Res, avcm.Phys]:
        """The reservations of *ctx* the tasks made that are bound, in the pool's order, and
        their physes."""
        return {
            res: phys
            for res in self.reservations
            if res.vcm is ctx.vcm and (phys := res.phys) is not None
        }

    def forget(self, pool: list[Any], obj: object) -> None:
        with contextlib.suppress(ValueError):
            pool.remove(obj)

    # -- quiescence --------------------------------------------------------------------------

    async def after_leaving(self) -> None:
        """After an operation left the gate: if it was the last of its window, nothing is in
        flight: check everything (and every ``--drain-every`` operations, drain), then open
        the next window. A violation found is recorded."""
        if not self.gate.quiescent():
            return
        try:
            if self.judging():
                every = self.config.drain_every
                drain = bool(every) and self.result.ops >= self.next_drain
                if drain:
                    self.next_drain += every
                what = "a drain" if drain else "a quiescent check"
                self.phase = f"{what} after operation {self.seq}"
                try:
                    await self.check(drain=drain)
                except Exception as error:
                    _record(self, error, what, self.seq)
            if self.unjudged_from is not None and not self.done():
                self.phase = f"starting over after operation {self.seq}"
                try:
                    await self.start_over()
                except Exception as error:  # (not judging: _record would drop it)
                    self.result.no_verdict = f"operation {self.seq}: {error}"
                    return
                try:
                    await self.lay_runs()
                except Exception as error:
                    _record(self, error, "laying out runs after starting over", self.seq)
        finally:
            self.phase = None
            self.gate.open()

    async def check(self, *, drain: bool = False) -> None:
        """With nothing in flight: check everything; then if *drain*, release everything and
        check it is back to baseline, or else now and then change one context alone and
        check everything again."""
        self.result.checks["quiescent"] += 1
        self.check_everything()
        if drain:
            self.end_ebb()
            await self.drain()
            if not self.done():  # (the drain at the end: nothing more to lay out for)
                await self.lay_runs()
            return
        changed = await self.change_one_context()
        if changed is not None:
            try:
                self.check_everything()
            except Violation as violation:
                raise Violation(
                    violation.rule,
                    f"{violation.description} (at a quiescent point, right after {changed}, "
                    "the other contexts left as they were)",
                ) from None

    def check_everything(self) -> None:
        check_quiescent(self)
        check_devices(self)
        # data checks too, where nothing is in flight to excuse a view: mid-run, every
        # context with an activate or deactivate queued is left out of them
        for phys in self.checks_random.sample(
            self.physes, min(QUIESCENT_DATA_CHECKS, len(self.physes))
        ):
            check_data(self, phys, self.checks_random)

    async def change_one_context(self) -> str | None:
        """At a quiescent point: end the last window's ebb, maybe start one for the next
        (:data:`EBB_CHANCE`), and every :data:`DETACH_EVERY` operations or so destroy one
        context and build a new one in its place, the others left as they are: what was
        destroyed, if anything."""
        rng = self.contexts_random
        ebb = rng.random() < EBB_CHANCE
        ctx = rng.choice(self.operated)
        self.end_ebb()
        with self.faults_paused():
            if len(self.contexts) < 2:  # no other context to keep live
                return None
            if self.seq >= self.next_detach:
                self.next_detach = self.seq + rng.randint(DETACH_EVERY // 2, DETACH_EVERY * 3 // 2)
                # (not a one-to-one context: its memory, contiguous, may not be had again while
                # its phys bound in other contexts keep the old one's)
                detachable = [other for other in self.operated if not other.one_to_one]
                if detachable:
                    gone = rng.choice(detachable)
                    await self.detach(gone)
                    return f"the harness destroyed {gone.name} with all it held and built it anew"
            if rng.random() < RESTART_CHANCE:
                await check_restart_racing(self, *self.draw_restart())
            ticket = rng.randint(1, self.config.check_every)
            if ebb and self.held_in[ctx.vcm]:  # (one off already has nothing to switch off)
                await self.start_ebb(ctx, ticket)
        return None

    async def lay_runs(self) -> None:
        """In each translated context, :data:`RUN_PIECES` reservations next to each other,
        bound in order to the pieces of a block of an order drawn from :data:`RUN_ORDERS`, all
        given to the tasks (the pools' limit allowing): a context whose space has no room for
        them, or memory no such block, gets none; a bind the driver keeps failing is left for
        the tasks to make. A context that is off is switched on (unless the driver refuses),
        and each bound piece reached: where hardware folds the run."""
        with self.faults_paused():
            at_the_top = True  # the first run laid: a DMA window off by one shows there too
            for ctx in self.contexts:
                order = self.runs_random.choice(RUN_ORDERS)
                if not ctx.translated or len(self.reservations) + RUN_PIECES > POOL_LIMIT:
                    continue
                physes = block_in_pieces(self.memory, order, RUN_PIECES, at_the_top=at_the_top)
                at_the_top = False
                if physes is None:
                    continue
                try:
                    run = await reserve_run(ctx.vcm, physes[0].size, RUN_PIECES)
                except (avcm.NoSpaceError, avcm.NotSupportedError):
                    for phys in physes:
                        await phys.free()
                    continue
                for res, phys in zip(run, physes, strict=True):
                    self.adopt_res(res)
                    self.adopt_phys(phys)
                    await retried(functools.partial(res.bind, phys))
                if not ctx.vcm.activations:
                    # on, so that the run is in the hardware (and folded) before a task unbinds
                    # a piece of it: task 0 keeps the activation and releases it as its own
                    # (attack58: every run laid while its context was off, one 1 MiB run of
                    # eight ever whole in the hardware; a fold dropped only with its first
                    # entry went unseen)
                    try:
                        await ctx.vcm.activate()
                    except OSError as failed:  # (rule 8: off, as it was)
                        if undo_failed(failed):
                            raise NoVerdict("the harness's switch-on of a run", failed) from failed
                    except ExceptionGroup as group:
                        raise group_not_an_oserror(f"activate of {ctx.name}", group) from None
                    else:
                        self.switched_on(ctx)
                        self.hold(0, ctx.vcm, 1)
                laid = "the harness's bind of a run next to each other"
                for res in run:
                    if res.phys is not None:
                        after_binding(self, res, laid)
                if ctx.translated and ctx.vcm.activations:
                    for lower, upper in itertools.pairwise(run):
                        across(self, ctx, lower, upper, f"after {laid}")
                whole = RUN_PIECES * run[0].res_size
                apart = run[0].start % whole or any(
                    lower.start + lower.res_size != upper.start
                    for lower, upper in itertools.pairwise(run)
                )
                self.result.checks[
                    "runs of reservations laid apart"
                    if apart
                    else "runs of reservations next to each other laid"
                ] += 1

    def draw_restart(
        self,
    ) -> tuple[str | None, dict[avcm.Vcm, float | None], int, dict[avcm.Vcm, Cut]]:
        """Where a racing restart's switches on start from, how long after (or before), how
        many of the driver's timers it lets fall due first (:data:`LEFT_TIMER`), and which
        switch-ons are first cancelled how far in (:data:`CUT_EVERY`); one time in
        :data:`RESTART_ALONE`, one context drawn is the only one switched on while they race
        (the others' lags None)."""
        rng = self.contexts_random
        anchor = rng.choice(RESTART_ANCHORS)
        # log-uniform: the window a race needs may be a microsecond or tens of them
        lags = {ctx.vcm: RESTART_LAG * 1e3 ** -rng.random() for ctx in self.contexts}
        cuts: dict[avcm.Vcm, Cut] = {}
        for ctx in self.contexts:
            draw = rng.random() * CUT_EVERY
            took = self.switch_on_seconds.get(ctx.vcm)
            taken = self.switch_on_allocations.get(ctx.vcm, 0)
            if draw < 1 and took is not None:
                cuts[ctx.vcm] = Cut(after=draw * took)
            elif draw < 2 and taken:
                # (as many again of a driver that takes memory to switch on: right after a
                # block it took, as far in among those of its last switch-on)
                cuts[ctx.vcm] = Cut(allocation=1 + int((draw - 1) * taken))
        alone = rng.choice(self.contexts).vcm if rng.random() < 1 / RESTART_ALONE else None
        wakes = 0
        if anchor == LEFT_TIMER:
            # before, at or after the timer, as the power-down it races takes a while after
            # the timer and a switch-on a while to reach its power-up: started before it by
            # a part of that while, where it is known, so that a power-up at the end of the
            # switch-on lands after the timer by a share of the while: uniform half the time,
            # log-uniform a quarter, none a quarter (a window in the first quarter of the
            # while is hit more than one time in two, a tenth of it anywhere one time in twenty
            # at least; a switch-on as long as the one measured lands at the timer's instant,
            # right after the timer's task: a window that takes no time, between its look and
            # what it does after its next checkpoint); at the timer for a window between the
            # timer's task waking and its next step, which takes no time either
            for vcm, lag in lags.items():
                side, part, kind = rng.randrange(3), rng.random(), rng.random()
                if kind >= 3 / 4:
                    part = 0.0
                elif kind >= 0.5:
                    part = 1e3**-part
                if side == 0:
                    known = self.enable_seconds.get(vcm)
                    lags[vcm] = -lag if known is None else (part - 1.0) * known
                elif side == 1:
                    lags[vcm] = 0.0
            # half the time the timers pending as the switches off returned (a lazy power-down
            # decided then), else one armed later, by a timer falling due before it: as many
            # as the driver's timers fell due before their rhythm changed at the restart that
            # saw it kept longest, three times in four, once one did (the timer that decides
            # is the one after which the driver waits otherwise: a watchdog's look that
            # starts the power-down), else drawn
            later, drawn, learned = (
                rng.random() < 0.5,
                int(RESTART_WAKES ** rng.random()),  # 1 to 31, log-uniform
                rng.random(),
            )
            if later:
                wakes = drawn
                if learned < 0.75 and self.decisive_wakes is not None:
                    wakes = self.decisive_wakes
        if alone is None:
            return anchor, dict(lags), wakes, cuts
        lags_alone = {vcm: lag if vcm is alone else None for vcm, lag in lags.items()}
        return anchor, lags_alone, wakes, cuts

    async def restart_again_and_again(self) -> None:
        """At a drain, with nothing bound (a switch-on or off is the hardware's enable or
        disable alone, and cheap): every context on, held by the harness, then switched off
        and on again at once :data:`DRAIN_RESTARTS` times, racing, each time with a lag
        drawn anew, then off. The window a power-down that races a switch-on needs can be a
        few microseconds wide, a few tens after the switch-off or before a timer: one draw
        in tens hits it."""
        held = []
        for ctx in self.contexts:
            started = self.clock()
            if await retried(ctx.vcm.activate) is None:
                self.enable_seconds[ctx.vcm] = self.clock() - started
                self.hold(HARNESS, ctx.vcm, 1)
                held.append(ctx)
        for _ in range(DRAIN_RESTARTS):
            await check_restart_racing(self, *self.draw_restart())
        for ctx in held:
            # (a context judged off meanwhile holds nothing any more)
            while self.held[(HARNESS, ctx.vcm)]:
                await deactivate_until_done(self, ctx)
                self.hold(HARNESS, ctx.vcm, -1)

    async def start_ebb(self, ctx: Context, ticket: int) -> None:
        """*ctx* ebbs until the next quiescent point: no task activates it, and the operation
        that takes the next window's *ticket* undoes the one activation left, the harness's,
        instead of its own."""
        vcm = ctx.vcm
        for (task, held), count in list(self.held.items()):
            if held is vcm and count and task != HARNESS:
                self.hold(task, vcm, -count)
                self.hold(HARNESS, vcm, count)
        for _ in range(self.held[(HARNESS, vcm)] - 1):  # counts only: nothing switches
            await deactivate_until_done(self, ctx)
            self.hold(HARNESS, vcm, -1)
        self.ebbing[vcm] = ticket
        self.result.checks["ebbs (one context switched off mid-window)"] += 1

    def end_ebb(self) -> None:
        """The window ended: every context may be activated again. The activation left of one
        that did not switch off (the driver failed the deactivate, rule 8, or it was
        cancelled) goes to task 0's keeping, which releases it as its own: no driver call here,
        where one could fail."""
        for vcm in self.ebbing:
            left = self.held[(HARNESS, vcm)]
            if left:
                self.hold(HARNESS, vcm, -left)
                self.hold(0, vcm, left)
        self.ebbing.clear()

    def faults_paused(self) -> contextlib.ExitStack:
        """No injected fault in the block: the harness's own steps must not fail."""
        stack = contextlib.ExitStack()
        for ctx in self.contexts:
            stack.enter_context(ctx.faults_paused())
        return stack

    async def detach(self, ctx: Context) -> None:
        """Destroy *ctx* with everything it holds, as a device detached while its users still
        had it active and bound (its phys bound in other contexts stay), check it left nothing
        behind, and build a new context in its place (a sample driver's seeded anew)."""
        await until_done(ctx.vcm.destroy, f"destroy of {ctx.name}")
        for key in [key for key in self.held if key[1] is ctx.vcm]:
            del self.held[key]
        self.held_in.pop(ctx.vcm, None)
        self.enable_seconds.pop(ctx.vcm, None)
        self.in_flux.pop(ctx.vcm, None)
        self.device.forget(ctx.vcm)
        check_detached(self, ctx)
        self.generations[ctx.name] += 1
        try:
            new = await build_context(
                self.config, self.memory, ctx.kind, ctx.index, self.generations[ctx.name]
            )
            if new.vcm in self.by_vcm:
                raise UsageError(
                    f"--driver {self.config.driver!r} returned a context still in use: each "
                    "call must make a new one"
                )
        except UsageError as error:  # not a verdict on the driver: the run cannot go on
            raise NoVerdict(f"building {ctx.name} anew after its destroy", error) from None
        self._replace([new if other is ctx else other for other in self.contexts])
        self.result.checks["one context destroyed alone and built anew"] += 1

    async def drain(self) -> None:
        """Give back everything the tasks made and prove nothing else is held: a drifting
        counter, a reservation or address left behind, or leaked memory is reported within one
        ``--drain-every`` window, whose operations are those in the trace since the last
        drain. The contexts then start from cold."""
        seq, since = self.seq, self.drained_at
        when = f"draining at operation {seq}"
        with self.faults_paused():
            await switch_off_together(self)
            for ctx in self.contexts:  # every context off: no device access reaches memory
                after_deactivate(self, ctx)
            await check_cold_start(self, when, cut=True)
            await release_everything(self)
            # again with nothing bound, where an activate is the enable alone: one returning
            # before the unit another context is powering up is on shows at once
            await check_cold_start(self, f"{when}, with nothing bound")
            await self.restart_again_and_again()
            check_released(self, f"after {when}")
            in_use = self.in_use()
            if in_use > self.baseline:
                await self.rebuild(since + 1, seq)
            else:  # a driver may give back what it took when built: growth from there counts
                self.baseline = in_use
        self.drained_at = seq
        self.result.checks["drain"] += 1

    async def rebuild(self, first: int, last: int) -> None:
        """After a drain that left more physical memory in use than the contexts had when they
        were built: destroy every context and prove that memory is a leak of operations
        *first*-*last* (rule 9: every page is free after destroy) or not, then build them
        anew. A driver may keep pages of its own until destroy (spare page-table pages, as
        Linux's io-pgtable keeps its tables), so more in use after a drain is only a
        suspicion; destroy settles it within the window."""
        grown = self.in_use() - self.baseline
        leaked = await destroy_every_context(self)
        if leaked:
            raise Violation(
                "rule 9",
                f"{leaked:#x} bytes of physical memory leaked by operations "
                f"{first}-{last}: after them, {grown:#x} more bytes were in use than when the "
                "contexts were built, and memory stayed in use after every context was destroyed "
                "(or by the drain's own switching of the contexts off and on, which races them "
                "too)",
            )
        self._replace(await build_contexts(self.config, self.memory))
        self.held.clear()  # every count 0: the drain switched every context off
        self.held_in.clear()
        self.baseline = self.in_use()
        self.result.checks["rule 9 destroyed and rebuilt"] += 1

    async def start_over(self) -> None:
        """At the quiescent point after an operation whose undo failed (partial effects: the
        hardware may be left half done, which no check can judge, in any context that shares
        it): build the contexts anew from the factory on new memory, and judge from there.
        The operations from the failure to here are not judged. The contexts left behind are
        destroyed first as far as the driver lets them (its failures
        are not judged either): what contexts on other memory share with them (a unit of the
        driver's module, a pool of ids, a power count) is given back, else it stayed taken and
        hid a bug of it (attack63: a power count shared by every context never came back to
        zero, and its lost update went unfound). If the factory fails, the run cannot go on
        (:class:`NoVerdict`)."""
        assert self.unjudged_from is not None
        first, why = self.unjudged_from
        self.end_ebb()
        memory = WatchedMemory()
        with self.faults_paused():
            for ctx in self.contexts:
                for _ in range(DRIVER_RETRIES):  # (each try releases what it can)
                    try:
                        await ctx.vcm.destroy()
                    except Exception:
                        continue
                    break
            try:
                contexts = await build_contexts(self.config, memory)
            except UsageError as error:
                raise NoVerdict("building the contexts anew after an undo failed", error) from None
        self.memory = memory
        self._replace(contexts)
        self._fresh_pools()
        if self.switched_on_with is not None:  # (the driver's refusals go on: shed_bindings)
            self.switched_on_with = {}
        self.baseline = self.in_use()
        self.drained_at = self.seq
        self.next_drain = self.result.ops + self.config.drain_every
        self.result.unjudged.append((first, self.admitted, why))
        self.unjudged_from = None
        self.result.checks["started over on new memory after an undo failed"] += 1

    def judging(self) -> bool:
        """Whether what happens now is judged: no violation, nothing that ended the run with
        no verdict, and no operation's undo failed since the last quiescent point."""
        return (
            self.result.violation is None
            and self.result.no_verdict is None
            and self.unjudged_from is None
        )

    def done(self) -> bool:
        if self.stop or self.result.violation is not None or self.result.no_verdict is not None:
            return True
        if self.deadline is not None:
            # a --duration run keeps what an --ops run may keep, at most
            return time.monotonic() >= self.deadline or self.seq >= MAX_OPS
        return self.seq >= self.config.ops


# -- operations ------------------------------------------------------------------------------
# Each returns (target description, result); raising a VcmError is classified by the caller.

Op = Callable[["World", "TaskState"], Awaitable[tuple[str, str]]]


@dataclass
class TaskState:
    index: int
    rng: random.Random
    switch_off: avcm.Vcm | None = None  # the ebbing context its next operation switches off


def _pick_context(world: World, task: TaskState) -> Context:
    return task.rng.choice(world.operated)


def _pick(task: TaskState, pool: list[Any]) -> Any:
    if not pool:
        raise _Skip
    return task.rng.choice(pool)


def _size(task: TaskState) -> int:
    size = task.rng.choices((*SIZES, 0), (*SIZE_WEIGHTS, RANDOM_SIZE_WEIGHT))[0]
    return size or task.rng.randint(1, RANDOM_SIZE_PAGES) * avcm.PAGE_SIZE


async def op_alloc(world: World, task: TaskState) -> tuple[str, str]:
    ctx = task.rng.choice(world.contexts)
    size = _size(task)
    if task.rng.randrange(SCATTERED_EVERY) == 0:
        pieces = task.rng.choices(PIECES, k=task.rng.randint(2, SCATTERED_PIECES))
        if pieces[-1] == PIECES[-1] and (phys := top_phys(world.memory, pieces)) is not None:
            where = "at the end of memory"  # (one in five: drawn as the pieces are)
        else:
            phys, where = scattered_phys(world.memory, pieces), "scattered"
        world.adopt_phys(phys)
        return f"{where} {phys.size:#x} -> {world.name(phys)}", "ok"
    phys = await ctx.vcm.alloc(size)
    world.adopt_phys(phys)
    return f"{ctx.name} {size:#x} -> {world.name(phys)}", "ok"


def scattered_phys(memory: avcm.PhysicalMemory, pieces: list[tuple[int, int]]) -> avcm.Phys:
    """A phys of one part per piece of :data:`PIECES`, in that order, each the start of a block
    of *memory* of its order; the blocks are freed with the phys. ``ENOMEM`` if a block cannot
    be had (nothing is left taken)."""
    blocks: list[tuple[int, int]] = []

    def give_back() -> None:
        for start, order in blocks:
            memory.free_pages(start, order)

    async def free(phys: avcm.Phys) -> None:
        give_back()

    for order, _ in pieces:
        start = memory.alloc_pages(order)
        if start is None:
            give_back()
            raise avcm.NoMemoryError(f"stress: no free block of order {order} for a scattered phys")
        blocks.append((start, order))
    parts = [(start, used) for (start, _), (_, used) in zip(blocks, pieces, strict=True)]
    return avcm.lowlevel.create_phys(parts, free=free, memory=memory)


def block_in_pieces(
    memory: avcm.PhysicalMemory, order: int, count: int, *, at_the_top: bool = False
) -> list[avcm.Phys] | None:
    """*count* physes, the pieces of one block of *memory* of *order* one after another; the
    block is freed with the last of them. ``None`` if no such block is free. *at_the_top*: the
    block that ends at the last byte of memory, from the top block
    (:func:`avcm.testing.take_top_block`, freed with the last piece) if that one is free, else
    wherever the allocator puts it."""
    top = take_top_block(memory) if at_the_top else None
    if top is not None:
        taken, taken_order = top, memory.max_order
        block = memory.base + memory.size - (avcm.PAGE_SIZE << order)
    else:
        allocated = memory.alloc_pages(order)
        if allocated is None:
            return None
        block = taken = allocated
        taken_order = order
    left = [count]

    async def free(phys: avcm.Phys) -> None:
        left[0] -= 1
        if not left[0]:
            memory.free_pages(taken, taken_order)

    piece = (avcm.PAGE_SIZE << order) // count
    return [
        avcm.lowlevel.create_phys([(block + index * piece, piece)], free=free, memory=memory)
        for index in range(count)
    ]


def top_phys(memory: avcm.PhysicalMemory, pieces: list[tuple[int, int]]) -> avcm.Phys | None:
    """A phys of one part as large as *pieces* together, ending at the last byte of *memory*,
    from its top block (:func:`avcm.testing.take_top_block`), which is freed with the phys;
    ``None`` if that block is not free (another such phys is live). Memory is handed out
    lowest first: no other phys comes near the end of memory, where a DMA window or an address
    mask off by one shows (attack52's such driver passed every run)."""
    top = take_top_block(memory)
    if top is None:
        return None

    async def free(phys: avcm.Phys) -> None:
        memory.free_pages(top, memory.max_order)

    size = sum(used for _, used in pieces)
    end = memory.base + memory.size
    return avcm.lowlevel.create_phys([(end - size, size)], free=free, memory=memory)


async def op_make_binding(world: World, task: TaskState) -> tuple[str, str]:
    ctx = _pick_context(world, task)
    size = _size(task)
    res = await ctx.vcm.make_binding(size)
    if res.phys is None or res.phys.size < size or res.phys.bindings < 1:
        raise Violation("rule 5", f"make_binding returned {res!r} without its memory bound")
    world.adopt_res(res)
    world.adopt_phys(res.phys)
    after_binding(world, res, "make_binding")
    return f"{ctx.name} {size:#x} -> {world.name(res)}", "ok"


def _wide_size(task: TaskState, ctx: Context) -> int:
    """A power of two, from 2 MiB to half of *ctx*'s address space, each as often. Best fit
    puts it right below the lowest reservation of the run, so that a phys bound at its start
    and that reservation are exactly a power of two apart: where a walk with an index masked
    too narrowly, or a truncated address, aliases them. One time in :data:`BOTTOM_EVERY`,
    all of the space below the lowest reservation of *ctx* instead, if there is a page of it:
    best fit puts that at the bottom of the space (an exact fit, the lowest of equals), where
    a phys bound at its start is at the space's first address."""
    if task.rng.randrange(BOTTOM_EVERY) == 0:
        vcm = ctx.vcm
        lowest = min((res.start for res in vcm.reservations()), default=vcm.start + vcm.size)
        if lowest - vcm.start >= avcm.PAGE_SIZE:
            return lowest - vcm.start
    widest = max(ctx.vcm.size // 2 // avcm.PAGE_SIZE, 1).bit_length() - 1
    return avcm.PAGE_SIZE << task.rng.randint(min(9, widest), widest)


async def op_reserve(world: World, task: TaskState) -> tuple[str, str]:
    ctx = _pick_context(world, task)
    size = _wide_size(task, ctx) if task.rng.randrange(WIDE_EVERY) == 0 else _size(task)
    try:
        res = await ctx.vcm.reserve(size)
    except avcm.NotSupportedError:
        if ctx.one_to_one:
            return f"{ctx.name} {size:#x}", "EOPNOTSUPP (one-to-one)"
        raise
    if ctx.one_to_one:
        raise Violation("errors", f"reserve alone succeeded on one-to-one {ctx.name}")
    world.adopt_res(res)
    return f"{ctx.name} {size:#x} -> {world.name(res)}", "ok"


async def op_map(world: World, task: TaskState) -> tuple[str, str]:
    ctx = _pick_context(world, task)
    phys = _pick(task, world.physes)
    target = f"{ctx.name} {world.name(phys)}"
    res = await ctx.vcm.map(phys)
    if res.phys is not phys:
        raise Violation("rule 5", f"map of {world.name(phys)} returned {res!r} bound elsewhere")
    world.adopt_res(res)
    after_binding(world, res, "map")
    return f"{target} -> {world.name(res)}", "ok"


async def op_bind(world: World, task: TaskState) -> tuple[str, str]:
    res = _pick(task, world.reservations)
    phys = _pick(task, world.physes)
    target = f"{world.name(res)} {world.name(phys)}"
    try:
        await res.bind(phys)
    except avcm.AddressInUseError:
        if res.phys is None or res.phys is phys:
            raise Violation(
                "rule 5", f"bind {target}: EADDRINUSE but bound to {res.phys!r}"
            ) from None
        raise
    if res.phys is not phys:
        raise Violation("rule 5", f"bind {target} succeeded but res.phys is {res.phys!r}")
    after_binding(world, res, "bind")
    return target, "ok"


async def op_unbind(world: World, task: TaskState) -> tuple[str, str]:
    res = _pick(task, world.reservations)
    phys = await world.unbind(res, beside=True)
    return world.name(res), "ok" if phys is not None else "unbound"


async def op_unreserve(world: World, task: TaskState) -> tuple[str, str]:
    res = _pick(task, world.reservations)
    with world.changing(res.vcm, res), world.unmapping(res):
        await res.unreserve()
    world.forget(world.reservations, res)
    after_unmapping(world, world.by_vcm[res.vcm], res, "unreserve")
    return world.name(res), "ok"


async def op_unmap(world: World, task: TaskState) -> tuple[str, str]:
    res = _pick(task, world.reservations)
    entries = entry_pages(res, res.phys)  # (before the unmap frees it)
    with world.changing(res.vcm, res), world.unmapping(res):
        await res.unmap()
    world.forget(world.reservations, res)
    after_unmapping(world, world.by_vcm[res.vcm], res, "unmap", entries)
    return world.name(res), "ok"


async def op_destroy_binding(world: World, task: TaskState) -> tuple[str, str]:
    res = _pick(task, world.reservations)
    phys = res.phys
    entries = entry_pages(res, phys)
    with world.changing(res.vcm, res), world.unmapping(res):
        await res.destroy_binding()
    world.forget(world.reservations, res)
    if phys is not None and phys.freed:
        world.forget(world.physes, phys)
    after_unmapping(world, world.by_vcm[res.vcm], res, "destroy_binding", entries)
    return world.name(res), "ok"


async def op_free(world: World, task: TaskState) -> tuple[str, str]:
    phys = _pick(task, world.physes)
    try:
        await phys.free()
    except avcm.BusyError:
        if phys.bindings == 0:
            raise Violation(
                "rule 6", f"free of {world.name(phys)}: EBUSY with no binding"
            ) from None
        raise
    if not phys.freed or phys.bindings:
        raise Violation("rule 6", f"free of {world.name(phys)} returned but it is not free")
    world.forget(world.physes, phys)
    return world.name(phys), "ok"


async def op_activate(world: World, task: TaskState) -> tuple[str, str]:
    ctx = _pick_context(world, task)
    if ctx.vcm in world.ebbing:  # its users stopped activating it for this window
        raise _Skip
    key = (task.index, ctx.vcm)
    if world.held[key] >= 2:
        return await op_deactivate_ctx(world, task, ctx)
    try:
        with world.switching(ctx.vcm):
            await ctx.vcm.activate()
    except OSError as error:
        if refused(error):
            # (a driver refusing what is bound, rule 8: what was bound since the context was
            # last on goes, as a user would have it, else the context stays off and its
            # checks seldom run. No switch-on again here: the state a refusal left is seen
            # at the next quiescent point; a retry that got through hid a unit left on)
            await world.shed_bindings(ctx, task.rng)
        raise
    world.switched_on(ctx)
    world.hold(task.index, ctx.vcm, 1)
    # held to it unless another operation's driver call runs (the mutex taken again), whose
    # state the hardware's status may show
    if not ctx.mutex_held() and not ctx.hardware_active():
        raise Violation("rule 1", f"activate of {ctx.name} returned with the hardware inactive")
    if ctx.vcm.activations < 1:
        raise Violation("rule 3", f"activate of {ctx.name} returned with count 0")
    return ctx.name, "ok"


async def op_deactivate(world: World, task: TaskState) -> tuple[str, str]:
    held = [ctx for ctx in world.contexts if world.held[(task.index, ctx.vcm)]]
    if not held:
        raise _Skip
    return await op_deactivate_ctx(world, task, task.rng.choice(held))


async def op_deactivate_ctx(world: World, task: TaskState, ctx: Context) -> tuple[str, str]:
    with world.switching(ctx.vcm), world.reads_beside(ctx, world.device.recent(ctx)):
        await ctx.vcm.deactivate()
    world.hold(task.index, ctx.vcm, -1)
    if ctx.vcm.activations < 0:
        raise Violation("rule 3", f"deactivate of {ctx.name} underflowed")
    after_deactivate(world, ctx)
    return f"{ctx.name} (deactivate)", "ok"


async def op_switch_off(world: World, task: TaskState) -> tuple[str, str]:
    """Undo the one activation left of an ebbing context, the harness's (:meth:`World.start_ebb`),
    in the middle of a window: it switches off while the other tasks go on."""
    vcm, task.switch_off = task.switch_off, None
    ctx = world.by_vcm.get(vcm) if vcm is not None else None
    if ctx is None or not world.held[(HARNESS, ctx.vcm)]:
        raise _Skip  # (destroyed, or switched off at the quiescent point before it)
    with world.switching(ctx.vcm), world.reads_beside(ctx, world.device.recent(ctx)):
        await ctx.vcm.deactivate()
    world.hold(HARNESS, ctx.vcm, -1)
    if ctx.vcm.activations < 0:
        raise Violation("rule 3", f"deactivate of {ctx.name} underflowed")
    after_deactivate(world, ctx)
    return f"{ctx.name} (the harness's last activation)", "ok"


async def op_data(world: World, task: TaskState) -> tuple[str, str]:
    """Write a pattern through one view of a phys, read it back through every other view.

    Synchronous from the pick to the last read: no other task runs in between, so every
    mapping looked at is the model's mapping at that instant.
    """
    phys = _pick(task, world.physes)
    if phys.freed:
        raise _Skip
    return world.name(phys), check_data(world, phys, task.rng)


OPERATION_FUNCTIONS: dict[str, Op] = {
    "alloc": op_alloc,
    "make_binding": op_make_binding,
    "reserve": op_reserve,
    "map": op_map,
    "bind": op_bind,
    "unbind": op_unbind,
    "unreserve": op_unreserve,
    "unmap": op_unmap,
    "destroy_binding": op_destroy_binding,
    "free": op_free,
    "activate": op_activate,
    "deactivate": op_deactivate,
    "data": op_data,
    "switch_off": op_switch_off,  # (the harness's, never drawn)
}

# errno the contract allows per operation when tasks race on shared objects.
ALLOWED: dict[str, set[int]] = {
    "alloc": {errno.ENOMEM},
    "make_binding": {errno.ENOMEM, errno.ENOSPC},
    "reserve": {errno.ENOSPC},
    "map": {errno.EINVAL, errno.ENOSPC, errno.ENOMEM, errno.EOPNOTSUPP, errno.EBUSY},
    "bind": {errno.EINVAL, errno.EALREADY, errno.EADDRINUSE, errno.ENOSPC, errno.EOPNOTSUPP},
    "unbind": {errno.EINVAL},
    "unreserve": {errno.EINVAL},
    "unmap": {errno.EINVAL},
    "destroy_binding": {errno.EINVAL, errno.EBUSY},
    "free": {errno.EINVAL, errno.EBUSY},
    "activate": set(),
    "deactivate": set(),
    "data": set(),
    "switch_off": set(),
}


def _classify(op: str, error: OSError) -> str:
    if undo_failed(error):
        raise NoVerdict(op, error)
    code = error.errno or 0
    name = errno_name(code)
    if is_injected_fault(error):
        return f"fault {name}"
    if isinstance(error, avcm.VcmError) and code in ALLOWED[op]:
        return name
    if raised_by_driver(error):
        # rule 8: a driver call may fail; the error reaches the caller as the driver raised it
        return f"driver {name}"
    raise Violation("errors", f"{op} raised {error!r}, an errno not allowed here")


def _record(world: World, error: BaseException, what: str, seq: int) -> None:
    """Keep the run's first violation: *error* is one, or a crash in avcm or a driver, which
    is one too (with its traceback), wherever the harness met it. A :class:`NoVerdict` of an
    undo that failed stops judging till the harness starts over (:meth:`World.start_over`);
    any other ends the run with no verdict."""
    if isinstance(error, ExceptionGroup):  # from a task group of the harness's own
        # a context nothing can judge makes what the others found unjudgeable too (hardware
        # they share may be half done): its NoVerdict first
        no_verdict, _ = error.split(NoVerdict)
        leaves = list(_leaves(error if no_verdict is None else no_verdict))
        if no_verdict is not None or len(leaves) == 1:
            error = leaves[0]
    if isinstance(error, NoVerdict):
        if not world.judging():
            return
        if error.undo:
            world.unjudged_from = (seq, str(error))
        else:
            world.result.no_verdict = f"operation {seq}: {error}"
        return
    if not isinstance(error, Violation):
        tail = "".join(traceback.format_exception(error)[-6:])
        error = Violation("errors", f"{what} raised {error!r}\n{tail}")
    error.seq = seq
    if world.judging():  # (after an undo that failed, what follows is not judged)
        world.result.violation = error


def group_not_an_oserror(what: str, group: ExceptionGroup[Exception]) -> Violation:
    """An exception group a driver's call raised (from a task group of its own), where avcm
    lets through only an ``OSError``: a violation that names the group, not its one leaf."""
    tail = "".join(traceback.format_exception(group)[-6:])
    return Violation(
        "errors", f"{what} raised an exception group, not an OSError: {group!r}\n{tail}"
    )


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


# A --cancel operation is cancelled one of two ways, half of them each. By steps: at one of its
# first CANCEL_POINTS sync points (the mutex, the counters, each driver call), so that it lands
# in every driver, also one that takes no time; it takes effect at the next checkpoint, which
# for a driver call is the driver's first await. Half of these are cancelled right after the
# driver takes a block of the memory instead, if it takes one first: the cancellation comes
# at the await that follows, before a driver that zeroes a page-table page, then records it,
# has recorded it (by time, that window is a microsecond of a switch-on of hundreds, and 3 of
# 16 runs missed it; attack39). By time: a drawn part of the way through what its driver
# calls took in recent operations of its kind, counted from its first driver call, so that it
# lands at any later await of a driver call too, where an undo that forgets what the call did
# so far shows. (On the virtual clock all replay exactly.)
CANCEL_POINTS = 8
# how many of the latest such times (per operation) the longest is taken of
DRIVER_TIMES_KEPT = 8


_NO_SCOPE: contextlib.nullcontext[None] = contextlib.nullcontext()


class _Canceller:
    """A sync hook that cancels *scope* at the *at*-th sync point it sees or, for *at* 0,
    *after* seconds after the first driver call begins (on *clock*); and, *on_allocation*,
    when a driver takes memory before that (:meth:`allocated`). It notes when the first
    driver call began: the operation's driver calls took from then on to its end."""

    def __init__(
        self,
        scope: anyio.CancelScope,
        at: int,
        after: float,
        clock: Callable[[], float],
        *,
        on_allocation: bool = False,
    ) -> None:
        self._scope = scope
        self._left = at
        self._after = after
        self._clock = clock
        self._on_allocation = on_allocation
        self.driver_started: float | None = None
        self.cancelled_on_allocation = False

    def allocated(self) -> None:
        """A block of the memory was taken in this operation: if it was in a driver call and
        so drawn, cancelled now, which the driver sees at its next await."""
        if (
            self._on_allocation
            and self.driver_started is not None
            and not self._scope.cancel_called
        ):
            self._on_allocation = False
            self.cancelled_on_allocation = True
            self._scope.cancel()

    async def __call__(self, point: str, obj: object) -> None:
        self._left -= 1
        if self._left == 0:
            self._scope.cancel()
        if self.driver_started is None and point.startswith("driver."):
            self.driver_started = self._clock()
            if self._left < 0:
                self._scope.deadline = self.driver_started + self._after


async def _run_one(world: World, task: TaskState, op: str) -> None:
    """Run one operation and account for it."""
    config = world.config
    result = world.result
    world.seq += 1
    seq = world.seq
    target = "-"
    cancel = config.cancel and task.rng.random() < config.cancel
    # Drawn whether used or not, so the random stream does not depend on outcomes: at a sync
    # point (1 to CANCEL_POINTS) or after a time (above), and for the time, how far into it.
    cancel_at = task.rng.randrange(1, 2 * CANCEL_POINTS + 1)
    cancel_part = task.rng.random()
    ticket = await world.gate.enter()
    world.admitted = max(world.admitted, seq)
    if world.ebbing:
        # (by its ticket, not its number: with more tasks than a window has places, operations
        # numbered in one window start in the next)
        task.switch_off = next((vcm for vcm, at in world.ebbing.items() if at == ticket), None)
        if task.switch_off is not None:
            op = "switch_off"
    world.doing[task.index] = (seq, op)
    # after the quiescence gate: latency is the operation's own, not the wait for a check
    started = world.clock()
    canceller = None
    on_allocation = False
    try:
        # a scope only for an operation to cancel: entering one costs as much as a small check
        with anyio.CancelScope() if cancel else _NO_SCOPE as scope:
            op_started = time.perf_counter()
            if scope is not None:
                # by time, with no time to go by yet: the operation runs to its end to tell it
                times = world.driver_seconds[op]
                by_time = cancel_at > CANCEL_POINTS
                if by_time:
                    at, after = 0, cancel_part * max(times) if times else math.inf
                else:
                    at, after = cancel_at, 0.0
                on_allocation = not by_time and cancel_part >= 0.5  # (unused by steps alone)
                canceller = _Canceller(scope, at, after, world.clock, on_allocation=on_allocation)
            try:
                with (
                    sync_hook(canceller) if canceller else _NO_SCOPE,
                    # (only where drawn: the others need no watch)
                    watching_allocations(canceller.allocated)
                    if canceller and on_allocation
                    else _NO_SCOPE,
                ):
                    target, outcome = await OPERATION_FUNCTIONS[op](world, task)
            except _Skip:
                outcome = "skipped"
            except OSError as error:  # avcm's errors, and what a driver raised
                outcome = _classify(op, error)
            except BaseException as error:  # a cancellation, whose undo may have failed
                if undo_failed(error):
                    _record(world, NoVerdict(op, error), op, seq)
                raise
            finally:
                result.op_seconds += time.perf_counter() - op_started
        if scope is not None and scope.cancelled_caught:
            outcome = "cancelled"
        if canceller is not None and canceller.cancelled_on_allocation:
            result.checks["cancelled right after the driver took memory"] += 1
    except Exception as error:
        if isinstance(error, NoVerdict):
            outcome = "no verdict"
        else:  # (what follows an undo that failed is not judged: see World.start_over)
            outcome = "VIOLATION" if world.judging() else "not judged"
        if isinstance(error, ExceptionGroup):
            # the operations start no task group: a driver's group, whatever it holds, is not
            # an OSError (_record would show its one leaf, which reads as an errno refused)
            error = group_not_an_oserror(op, error)
        _record(world, error, op, seq)
    finally:
        del world.doing[task.index]
        world.gate.leave()
    ended = world.clock()
    elapsed = ended - started
    if outcome == "ok" and canceller is not None and canceller.driver_started is not None:
        world.driver_seconds[op].append(ended - canceller.driver_started)
    result.counts[op] += 1
    if world.unjudged_from is not None:
        result.not_judged += 1
    result.outcomes[op][outcome] += 1
    result.latencies[op].append(elapsed)
    result.trace.append(Outcome(seq, task.index, op, target, outcome, round(started, 9)))
    result.ops += 1
    if world.on_progress is not None:
        world.on_progress(result.ops)  # synchronous: a bar must not change the scheduling


async def _task_loop(world: World, index: int, ops: list[str], weights: list[int]) -> None:
    task = TaskState(index, random.Random(f"{world.config.seed}:{index}"))
    while not world.done():
        op = bounded_operation(
            task.rng.choices(ops, weights)[0], len(world.physes), len(world.reservations)
        )
        await _run_one(world, task, op)
        await world.after_leaving()
    # release what this task holds, so the final checks can expect a quiet world (not an
    # operation: it takes no place in a window); again while the driver fails it, as a
    # careful user would (rule 8 lets a deactivate fail with no effect)
    await world.gate.enter(ticketed=False)
    world.doing[index] = (0, "releasing what it holds at the end")
    try:
        for ctx in world.contexts:
            while world.held[(index, ctx.vcm)] > 0:
                with world.switching(ctx.vcm):
                    await deactivate_until_done(world, ctx)
                world.hold(index, ctx.vcm, -1)
    except Exception as error:
        _record(world, error, f"deactivating what task {index} held at the end", world.seq)
    finally:
        del world.doing[index]
        world.gate.leave()
    await world.after_leaving()
    world.tasks_ended += 1


async def run_workload(
    config: StressConfig,
    on_progress: Callable[[int], None] | None = None,
    watch: Watch[RunResult] | None = None,
) -> RunResult:
    """Run the configured workload in the current event loop and return what happened.

    *on_progress* is called with the number of operations done after each one, from within the
    operation loop (no task of its own, which would change how trio schedules the run).
    *watch*, if given, is told how far the run got and how to stop it (:func:`run_watched`);
    a run it stops or interrupts ends early, cancelled."""
    result = RunResult()
    world: World | None = None
    started = time.perf_counter()

    def progress() -> int:
        checks = result.checks
        return result.ops + checks["quiescent"] + checks["drain"] + harness_operations()

    def stop(blocked: bool) -> RunResult:
        # (blocked: called from the watching thread, the loop's being stuck)
        if result.violation is None and result.no_verdict is None:
            stalled = stall_violation(world, blocked)
            if world is not None and world.unjudged_from is not None:
                # (hardware an undo left half done may hang a driver: no verdict either)
                first, why = world.unjudged_from
                result.no_verdict = (
                    f"operation {first}: {why}; then it stalled: {stalled.description}"
                )
            else:
                result.violation = stalled
        if world is not None:
            world.stop = True
        record = _copied(result)
        record.wall_seconds = time.perf_counter() - started
        record.started = 0 if world is None else world.seq
        if not blocked:
            scope.cancel()
        return record

    with anyio.CancelScope() as scope:
        if watch is not None:
            watch.attach(progress, stop, scope.cancel)
        memory = WatchedMemory()
        contexts = await build_contexts(config, memory)
        world = World(config, memory, contexts, result)
        world.on_progress = on_progress
        started = time.perf_counter()  # the run's time is its operations' and checks'
        await _run_tasks(world)
    result.wall_seconds = time.perf_counter() - started
    result.started = 0 if world is None else world.seq
    return result


async def _run_tasks(world: World) -> None:
    """The tasks' operations, then the drain and teardown at the end."""
    config = world.config
    ops = [name for name, weight in config.weights if weight > 0]
    weights = [weight for _, weight in config.weights if weight > 0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", avcm.VcmWarning)
        # a driver under test gets its --faults from outside, at the sync points before its
        # setup calls; the sample drivers inject their own
        driver_faults = next(
            (ctx.faults for ctx in world.contexts if isinstance(ctx.faults, DriverFaults)), None
        )
        with sync_hook(driver_faults) if driver_faults else contextlib.nullcontext():
            world.phase = "the runs the harness lays out at the start"
            try:
                await world.lay_runs()
            except Exception as error:
                _record(world, error, world.phase, 0)
            world.phase = None
            async with anyio.create_task_group() as workers:
                world.workers = workers
                for index in range(config.tasks):
                    workers.start_soon(_task_loop, world, index, ops, weights)
            world.workers = None
        _count_warnings(world, caught)
        world.end_ebb()
        if world.judging() and world.held_in.total():
            # what task 0 was given to keep after it ended (an ebb at the last quiescent
            # point, whose operation never came): the harness's to release
            world.phase = "the end of the last window"
            try:
                with world.faults_paused():
                    await deactivate_everything(world)
            except Exception as error:
                _record(world, error, "the end of the last window", world.seq)
        # the end is a drain too (unless the last window's was): a run shorter than
        # --drain-every still races the contexts' cold starts and checks for leaks
        drained = world.drained_at == world.seq
        if world.judging() and world.config.drain_every and not drained:
            world.phase = "the drain at the end"
            try:
                await world.check(drain=True)
            except Exception as error:
                _record(world, error, "the drain at the end", world.seq)
        if world.judging():
            world.phase = "the final teardown"
            try:
                await check_final(world)
                world.result.checks["final"] += 1
            except Exception as error:
                _record(world, error, "the final teardown", world.seq)
        if world.unjudged_from is not None:  # (the run ended before it could start over)
            first, why = world.unjudged_from
            world.result.unjudged.append((first, world.admitted, why))
        world.phase = None


def _copied(result: RunResult) -> RunResult:
    """A deep copy of *result*, made in the loop's thread, or in the watching thread once the
    loop stopped running: it ran on late (a driver blocking it for a long while, not for ever)
    if the copy met its records changing; then again."""
    for _ in range(100):
        with contextlib.suppress(RuntimeError):  # a dict or list changed during the copy
            return copy.deepcopy(result)
    return copy.deepcopy(result)


# how many of the operations in flight a stall's report names (the rest are counted)
STALLED_NAMED = 8


def stall_violation(world: World | None, blocked: bool) -> Violation:
    """The violation a run that stopped making progress reports: what was under way (*blocked*:
    its event loop did not run). What a run is doing when it stalls is fixed by its seed, and
    so is this."""
    if blocked:
        cause = (
            "the event loop did not run for the stall timeout: a task or callback keeps its "
            "thread (a blocking call, or a loop that never awaits)"
        )
    else:
        cause = (
            "nothing ended for the stall timeout: every task waits for something no task will "
            "do (a deadlock, such as a lost wake-up), or tasks run on without ending anything "
            "(a livelock), or one operation takes the driver longer than that (then raise "
            "--stall-timeout)"
        )
    if world is None:
        return Violation("progress", f"{cause}; under way: building the contexts", seq=0)
    doing = [
        f"task {index}: " + (f"operation {seq} ({what})" if what in OPERATION_FUNCTIONS else what)
        for index, (seq, what) in sorted(world.doing.items())
    ]
    if len(doing) > STALLED_NAMED:
        doing[STALLED_NAMED:] = [f"{len(doing) - STALLED_NAMED} more tasks in operations"]
    if world.phase is not None:
        doing.append(world.phase)
    waiting = world.config.tasks - len(world.doing) - world.tasks_ended
    if waiting:
        doing.append(f"{waiting} task{'s' if waiting > 1 else ''} waiting to start one")
    under_way = "; ".join(doing) or "nothing"
    return Violation("progress", f"{cause}; under way: {under_way}", seq=world.seq)


def _count_warnings(world: World, caught: list[warnings.WarningMessage]) -> None:
    for warning in caught:
        text = str(warning.message)
        kind = text.split(" ", 1)[0]
        world.result.warnings[kind] += 1
        if not issubclass(warning.category, avcm.VcmWarning):
            continue
        if not text.startswith(EXPECTED_WARNINGS) and world.judging():
            world.result.violation = Violation("warnings", f"unexpected {text}", seq=world.seq)
