"""The stress harness's rows: what its checks and bookkeeping cost, and that the cost stays the
same as a run grows longer or wider.

Every figure is CPU time of this process (a run is one thread), so a machine shared with other
jobs slows both sides of a ratio alike; each side is the best of a few runs.
"""

from __future__ import annotations

import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio

import avcm
from avcm.testing import backend_options
from stress import StressConfig, run
from stress._contexts import Context, build_contexts
from stress._workload import POOL_LIMIT, SIZE_WEIGHTS, SIZES, bounded_operation, run_workload

from ._rows import Row

__all__ = ["stress_rows"]

RUNS = 3  # each side of a ratio: the best of this many (of one in a --quick run)
START = 100  # operations before the first window of cost_growth


def _cpu(call: Callable[[], object]) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


def _best_cpu(call: Callable[[], object], runs: int) -> float:
    return min(_cpu(call) for _ in range(runs))


def _run_clean(config: StressConfig) -> None:
    result = run(config)
    if result.violation is not None:
        raise RuntimeError(f"stress run found a violation: {result.violation}")


# -- the same operations, without the harness ----------------------------------------------------


class _Plain:
    """The default command's operations from as many tasks, in one plain anyio loop: the same
    contexts, each task's same random choices of operation, size and object, the same pool
    limit, and every ``drain_every`` operations everything given back (the pools start from
    empty again, as the harness's drains make them). No gate, no check, no trace, no
    classification of outcomes: a failed operation is simply skipped."""

    def __init__(self, config: StressConfig, contexts: list[Context]) -> None:
        self.config = config
        self.contexts = contexts
        self.physes: list[avcm.Phys] = []
        self.reservations: list[avcm.Res] = []
        self.held: dict[tuple[int, avcm.Vcm], int] = defaultdict(int)
        self.started = 0
        self.in_flight = 0
        self.next_release = config.drain_every or config.ops + 1
        self.released = anyio.Event()

    def _forget(self, pool: list[Any], obj: object) -> None:
        if obj in pool:
            pool.remove(obj)

    async def _operation(self, index: int, rng: random.Random, op: str) -> None:
        ctx = rng.choice(self.contexts) if op in ("alloc", "make_binding", "reserve") else None
        if ctx is not None:
            size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
            if op == "alloc":
                self.physes.append(await ctx.vcm.alloc(size))
            elif op == "reserve":
                self.reservations.append(await ctx.vcm.reserve(size))
            else:
                res = await ctx.vcm.make_binding(size)
                self.reservations.append(res)
                if res.phys is not None:
                    self.physes.append(res.phys)
        elif op == "map" and self.physes:
            ctx = rng.choice(self.contexts)
            self.reservations.append(await ctx.vcm.map(rng.choice(self.physes)))
        elif op == "bind" and self.reservations and self.physes:
            res = rng.choice(self.reservations)
            await res.bind(rng.choice(self.physes))
        elif op in ("unbind", "unreserve", "unmap", "destroy_binding") and self.reservations:
            res = rng.choice(self.reservations)
            phys = res.phys
            await getattr(res, op)()
            if op != "unbind":
                self._forget(self.reservations, res)
            if phys is not None and phys.freed:
                self._forget(self.physes, phys)
        elif op == "free" and self.physes:
            phys = rng.choice(self.physes)
            await phys.free()
            self._forget(self.physes, phys)
        elif op in ("activate", "deactivate"):
            await self._switch(index, rng, op)
        elif op == "data" and self.physes:
            rng.choice(self.physes)  # a check: the harness's own work, none here

    async def _switch(self, index: int, rng: random.Random, op: str) -> None:
        if op == "activate":
            ctx = rng.choice(self.contexts)
            if self.held[(index, ctx.vcm)] < 2:
                await ctx.vcm.activate()
                self.held[(index, ctx.vcm)] += 1
                return
        else:
            held = [c for c in self.contexts if self.held[(index, c.vcm)]]
            if not held:
                return
            ctx = rng.choice(held)
        await ctx.vcm.deactivate()
        self.held[(index, ctx.vcm)] -= 1

    async def _release(self) -> None:
        for (_, vcm), count in self.held.items():
            for _ in range(count):
                await vcm.deactivate()
        self.held.clear()
        for res in self.reservations:
            await res.unreserve()
        for phys in self.physes:
            if not phys.freed:
                await phys.free()
        self.reservations.clear()
        self.physes.clear()

    async def task(self, index: int, ops: list[str], weights: list[int]) -> None:
        rng = random.Random(f"{self.config.seed}:{index}")
        while self.started < self.config.ops:
            while self.started >= self.next_release:
                await self.released.wait()
            self.started += 1
            op = bounded_operation(
                rng.choices(ops, weights)[0], len(self.physes), len(self.reservations)
            )
            rng.random()  # the harness's --cancel draws
            rng.randrange(8)
            self.in_flight += 1
            try:
                await self._operation(index, rng, op)
            except OSError:
                pass
            finally:
                self.in_flight -= 1
            if self.started >= self.next_release and not self.in_flight:
                self.next_release += self.config.drain_every
                await self._release()
                self.released.set()
                self.released = anyio.Event()


async def _plain_run(config: StressConfig) -> None:
    contexts = await build_contexts(config, avcm.PhysicalMemory())
    plain = _Plain(config, contexts)
    ops = [name for name, weight in config.weights if weight > 0]
    weights = [weight for _, weight in config.weights if weight > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", avcm.VcmWarning)  # racing unbinds warn, as in the harness
        async with anyio.create_task_group() as group:
            for index in range(config.tasks):
                group.start_soon(plain.task, index, ops, weights)


def _plain(config: StressConfig) -> None:
    options = backend_options(config.backend, config.seed, virtual=True)
    anyio.run(_plain_run, config, backend=config.backend, backend_options=options)


# -- the rows ----------------------------------------------------------------------------------


def harness_vs_plain(backend: str, ops: int, runs: int) -> list[Row]:
    config = StressConfig(backend=backend, ops=ops)
    harness = _best_cpu(lambda: _run_clean(config), runs)
    plain = _best_cpu(lambda: _plain(config), runs)
    ratio = harness / plain
    per_core = ops / harness
    rows = [
        Row(
            "stress harness, default command (64 tasks, checks every 50 ops)",
            "the same operations in a plain anyio loop, no checks",
            ratio,
            "<= 1.5x CPU per op",
            ratio <= 1.5,
            f"{per_core:,.0f} vs {ops / plain:,.0f} ops/s per core",
        )
    ]
    if backend == "asyncio":
        rows.append(
            Row(
                "stress harness, default command: ops/s per core",
                "10,000 ops/s",
                per_core / 10_000,
                ">= 1",
                per_core >= 10_000,
                f"{per_core:,.0f} ops/s (an absolute figure: varies with the machine)",
            )
        )
    return rows


def cost_growth(backend: str, ops: int, window: int, runs: int) -> Row:
    """CPU per operation over the run's last *window* operations against its first, for seeds
    0 to *runs* - 1: the median. What an operation costs depends on the random mix of the
    window (how many pages it binds and switches on: a 1,000-operation window's CPU follows
    its count of pages switched on, which varies by half and more from window to window), so
    the windows are long and the seeds several: the row measures the trend, not the mix."""

    def measure(seed: int) -> float:
        marks: dict[int, float] = {}
        # from operation 100 on: the run's start (contexts made, tasks started) is not an op
        wanted = {START, START + window, ops - window, ops}

        def on_progress(done: int) -> None:
            if done in wanted:
                marks[done] = time.process_time()

        config = StressConfig(backend=backend, ops=ops, seed=seed)
        options = backend_options(backend, config.seed, virtual=True)
        anyio.run(run_workload, config, on_progress, backend=backend, backend_options=options)
        return (marks[ops] - marks[ops - window]) / (marks[START + window] - marks[START])

    ratios = sorted(measure(seed) for seed in range(runs))
    ratio = ratios[len(ratios) // 2]
    return Row(
        f"stress harness, CPU per op over ops {ops - window + 1:,}-{ops:,}",
        f"over ops {START + 1}-{START + window:,} (the default command)",
        ratio,
        "<= 1.2x",
        ratio <= 1.2,
        f"median of seeds 0-{runs - 1}, {ratios[0]:.2f}-{ratios[-1]:.2f}; pools bounded at "
        f"{POOL_LIMIT} and drained every 2,000 ops",
    )


def task_scaling(backend: str, ops: int, runs: int) -> Row:
    few = _best_cpu(lambda: _run_clean(StressConfig(backend=backend, ops=ops, tasks=64)), runs)
    many = _best_cpu(lambda: _run_clean(StressConfig(backend=backend, ops=ops, tasks=4096)), runs)
    ratio = few / many
    return Row(
        "stress harness throughput, 4,096 tasks",
        "64 tasks (the default command otherwise)",
        ratio,
        ">= 0.7",
        ratio >= 0.7,
        f"{ops / many:,.0f} vs {ops / few:,.0f} ops/s per core",
    )


def stress_overhead(backend: str, ops: int) -> list[Row]:
    config = StressConfig(backend=backend, tasks=1, ops=ops, latency="zero")
    result = run(config)
    if result.violation is not None:
        raise RuntimeError(f"stress run found a violation: {result.violation}")
    ratio = result.wall_seconds / result.op_seconds
    per_core = result.ops / result.wall_seconds
    return [
        Row(
            "stress harness, zero latency",
            "the same operations' own time",
            ratio,
            "<= 1.3x",
            ratio <= 1.3,
            f"{per_core:,.0f} ops/s on one core, checks included",
        )
    ]


def stress_rows(backend: str, quick: bool) -> list[Row]:
    """Every stress harness row on *backend*; *quick*: at a tenth of the sizes."""
    ops, runs = (2_000, 1) if quick else (20_000, RUNS)
    return [
        *stress_overhead(backend, 2_000 if quick else 10_000),
        *harness_vs_plain(backend, ops, runs),
        cost_growth(backend, ops, ops // 5, runs),
        task_scaling(backend, ops, runs),
    ]
