"""The race finder's rows: how fast it runs schedules, and how many it needs to find each of the
seed's design races, against what a Python user has today: trio's own (seeded, shuffling)
scheduler, the yields the code has anyway (a driver's latency sleeps), and random checkpoints
the user inserts in the test's tasks. A second baseline also puts a checkpoint, with
probability 1/2, at every avcm sync point (which needs avcm's own sync hook).

Each race is measured twice: as written (drivers that take time, two tasks starting together)
and "deep" (drivers that take no time, the second task arriving six steps late), where a race
window is only the steps between two sync points.

The seed port and its scenarios live in ``tests/`` (they are what avcm must not be), so this
module runs from a clone, like the rest of ``bench/``.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import trio
import trio.lowlevel

from avcm import testing
from avcm.lowlevel import sync_hook
from avcm.testing import backend_options
from tests.races import AVCM, SEED, SEED_DEEP

from ._rows import Row

__all__ = ["race_rows"]

_CHECKPOINT_PROBABILITY = 0.5


class _PlainRun:
    """Runs a scenario's tasks as plain trio tasks, each after 0 to 3 random checkpoints (what
    a user can insert in a test); with *at_sync_points*, every avcm sync point is also a
    checkpoint with probability 1/2."""

    def __init__(self, rng: random.Random, *, at_sync_points: bool) -> None:
        self._random = rng
        self._at_sync_points = at_sync_points

    async def _hook(self, point: str, obj: object) -> None:
        if self._random.random() < _CHECKPOINT_PROBABILITY:
            await trio.lowlevel.checkpoint()

    async def concurrently(
        self, *functions: Callable[[], Awaitable[Any]], names: Sequence[str] | None = None
    ) -> list[testing.TaskOutcome]:
        outcomes: list[testing.TaskOutcome] = []

        async def one(index: int, function: Callable[[], Awaitable[Any]]) -> None:
            hooked = sync_hook(self._hook) if self._at_sync_points else contextlib.nullcontext()
            with hooked:
                for _ in range(self._random.randint(0, 3)):
                    await trio.lowlevel.checkpoint()
                try:
                    value = await function()
                except Exception as error:
                    outcomes.append(testing.TaskOutcome(index, f"task {index}", error=error))
                else:
                    outcomes.append(testing.TaskOutcome(index, f"task {index}", value=value))

        async with anyio.create_task_group() as group:
            for index, function in enumerate(functions):
                group.start_soon(one, index, function)
        return sorted(outcomes, key=lambda outcome: outcome.task)


def _plain_trial(scenario: testing.Scenario, trial: int, at_sync_points: bool) -> bool:
    """One plain trio run; whether the scenario failed."""

    async def main() -> bool:
        plain = _PlainRun(random.Random(trial), at_sync_points=at_sync_points)
        try:
            await scenario(plain)  # type: ignore[arg-type]
        except AssertionError:
            return True
        return False

    options = backend_options("trio", trial, virtual=True)  # seeds trio's scheduler too
    return bool(anyio.run(main, backend="trio", backend_options=options))


def _plain_runs_to_find(
    scenario: testing.Scenario, seed: int, cap: int, at_sync_points: bool
) -> int | None:
    for trial in range(cap):
        if _plain_trial(scenario, seed * cap + trial, at_sync_points):
            return trial + 1
    return None


def _median(counts: list[int | None], cap: int) -> tuple[float, str]:
    """Median schedules to find, counting a miss as the cap (so the median is a lower bound
    when misses are half or more); and how it reads."""
    values = [cap if count is None else count for count in counts]
    median = statistics.median(values)
    misses = counts.count(None)
    text = f"{median:g}" if not misses else f"{median:g} ({misses} of {len(counts)} not found)"
    if misses * 2 >= len(counts):
        text = f">= {cap} (not found in {cap} runs)"
    return median, text


def _found_in(strategy: testing.Strategy, scenario: testing.Scenario, cap: int) -> int | None:
    result = testing.explore(scenario, strategy=strategy, schedules=cap, shrink=False)
    return result.schedules if result.found else None


def race_rows(seeds: int, cap: int, plain_cap: int) -> list[Row]:
    rows = [_schedules_per_second(2_000 if seeds > 3 else 300)]
    for label, scenarios in (("", SEED), ("deep ", SEED_DEEP)):
        totals = dict.fromkeys(("pct", "random", "exhaustive", "user", "sync"), 0.0)
        for race, scenario in scenarios.items():
            counts = {
                "pct": [_found_in(testing.PCT(s), scenario, cap) for s in range(seeds)],
                "random": [_found_in(testing.RandomWalk(s), scenario, cap) for s in range(seeds)],
                "exhaustive": [_found_in(testing.Exhaustive(1), scenario, cap)],
                "user": [_plain_runs_to_find(scenario, s, plain_cap, False) for s in range(seeds)],
                "sync": [_plain_runs_to_find(scenario, s, plain_cap, True) for s in range(seeds)],
            }
            medians = {}
            for name, found in counts.items():
                medians[name] = _median(found, plain_cap if name in ("user", "sync") else cap)
                totals[name] += medians[name][0]
            rows.append(
                Row(
                    f"schedules to find: {label}{race}",
                    "trio + user checkpoints",
                    medians["user"][0] / medians["pct"][0],
                    "reported",
                    None,
                    f"median of {seeds} seeds: PCT {medians['pct'][1]}, random walk "
                    f"{medians['random'][1]}, exhaustive(1) {medians['exhaustive'][1]}; "
                    f"trio {medians['user'][1]}, with sync-point checkpoints "
                    f"{medians['sync'][1]}",
                )
            )
        ratio = totals["user"] / totals["pct"]
        rows.append(
            Row(
                f"schedules to find the 6 {label}seed races (sum of medians)",
                "trio + user checkpoints",
                ratio,
                ">= 10x fewer",
                ratio >= 10,
                f"PCT {totals['pct']:g}, random walk {totals['random']:g}, exhaustive(1) "
                f"{totals['exhaustive']:g}; trio {totals['user']:g}, with sync-point checkpoints "
                f"{totals['sync']:g} (not found counts as the cap)",
            )
        )
    return rows


def _schedules_per_second(schedules: int) -> Row:
    scenario = AVCM["two_binds_win"]
    start = time.perf_counter()
    result = testing.explore(scenario, strategy=testing.PCT(0), schedules=schedules)
    controlled = time.perf_counter() - start
    assert not result.found
    start = time.perf_counter()
    for trial in range(schedules):
        _plain_trial(scenario, trial, False)
    plain = time.perf_counter() - start

    async def in_one_loop() -> None:
        for trial in range(schedules):
            plain = _PlainRun(random.Random(trial), at_sync_points=False)
            await scenario(plain)  # type: ignore[arg-type]

    start = time.perf_counter()
    anyio.run(in_one_loop, backend="trio", backend_options=backend_options("trio", 0, virtual=True))
    plain_one_loop = time.perf_counter() - start
    return Row(
        "race finder: a schedule of two binds (trio)",
        "the same scenario as plain trio tasks, one loop",
        controlled / plain_one_loop,
        "reported",
        None,
        f"{schedules / controlled:,.0f} schedules/s controlled (all in one event loop); "
        f"{schedules / plain:,.0f} plain runs/s, each its own trio.run",
    )
