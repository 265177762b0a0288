"""The contract's design races as scenarios, against the seed port and against avcm.

Each scenario is written once against a small :class:`World` and instantiated twice: on
:mod:`tests.seed_port` (where the race finder must find the race) and on avcm (which must pass
every schedule). Module-level names, so a replay command can import them.
"""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import warnings
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio.lowlevel

import avcm
from avcm import testing
from tests._recording import DriverFault, RecordingDriver, make_context
from tests.seed_port import SeedDriver, SeedPhys, SeedRes, SeedVcm

DELAY = 1e-6


class World:
    """One context, its hardware, and the operations the scenarios race."""

    async def activate(self) -> None:
        raise NotImplementedError

    async def deactivate(self) -> None:
        raise NotImplementedError

    def activations(self) -> int:
        raise NotImplementedError

    def hardware_active(self) -> bool:
        raise NotImplementedError

    def fail_next_activate(self) -> None:
        raise NotImplementedError

    async def reservation(self) -> object:
        raise NotImplementedError

    async def phys(self) -> object:
        raise NotImplementedError

    async def bind(self, res: object, phys: object) -> None:
        raise NotImplementedError

    async def free(self, phys: object) -> None:
        raise NotImplementedError

    def bound(self, res: object) -> object:
        raise NotImplementedError

    def freed(self, phys: object) -> bool:
        raise NotImplementedError

    def bindings(self, phys: object) -> int:
        raise NotImplementedError


class SeedWorld(World):
    def __init__(self, delay: float = DELAY) -> None:
        self.driver = SeedDriver(delay)
        self.vcm = SeedVcm(self.driver)

    async def activate(self) -> None:
        ret = await self.vcm.activate()
        if ret:
            raise avcm.VcmError(-ret, "seed: activate failed")

    async def deactivate(self) -> None:
        await self.vcm.deactivate()

    def activations(self) -> int:
        return self.vcm.activations

    def hardware_active(self) -> bool:
        return self.driver.active

    def fail_next_activate(self) -> None:
        self.driver.fail_activate += 1

    async def reservation(self) -> SeedRes:
        return SeedRes(self.driver)

    async def phys(self) -> SeedPhys:
        return SeedPhys(self.driver)

    async def bind(self, res: object, phys: object) -> None:
        assert isinstance(res, SeedRes) and isinstance(phys, SeedPhys)
        await res.bind(phys)

    async def free(self, phys: object) -> None:
        assert isinstance(phys, SeedPhys)
        await phys.free()

    def bound(self, res: object) -> object:
        assert isinstance(res, SeedRes)
        return res.phys

    def freed(self, phys: object) -> bool:
        assert isinstance(phys, SeedPhys)
        return phys.freed

    def bindings(self, phys: object) -> int:
        assert isinstance(phys, SeedPhys)
        return phys.bindings


class AvcmWorld(World):
    def __init__(self, delay: float = DELAY) -> None:
        self.memory = avcm.PhysicalMemory(size=4 << 20)
        self.vcm, self.driver = make_context(self.memory, delay=delay)

    @property
    def recording(self) -> RecordingDriver:
        return self.driver

    async def activate(self) -> None:
        await self.vcm.activate()

    async def deactivate(self) -> None:
        await self.vcm.deactivate()

    def activations(self) -> int:
        return self.vcm.activations

    def hardware_active(self) -> bool:
        return self.driver.active

    def fail_next_activate(self) -> None:
        self.driver.fail["activate"] = DriverFault(errno.EIO, "activate failed")

    async def reservation(self) -> avcm.Res:
        return await self.vcm.reserve(avcm.PAGE_SIZE)

    async def phys(self) -> avcm.Phys:
        return await self.vcm.alloc(avcm.PAGE_SIZE)

    async def bind(self, res: object, phys: object) -> None:
        assert isinstance(res, avcm.Res) and isinstance(phys, avcm.Phys)
        await res.bind(phys)

    async def free(self, phys: object) -> None:
        assert isinstance(phys, avcm.Phys)
        await phys.free()

    def bound(self, res: object) -> object:
        assert isinstance(res, avcm.Res)
        return res.phys

    def freed(self, phys: object) -> bool:
        assert isinstance(phys, avcm.Phys)
        return phys.freed

    def bindings(self, phys: object) -> int:
        assert isinstance(phys, avcm.Phys)
        return phys.bindings


Worlds = Callable[[], World]
Op = Callable[[], Awaitable[Any]]


def later(op: Op, lead: int) -> Op:
    """*op* after *lead* sync points of unrelated work: the task arrives late, as one does in a
    bigger program. Races that need one task several steps ahead of another hide there."""
    if not lead:
        return op

    async def busywork() -> Any:
        for _ in range(lead):
            await anyio.lowlevel.checkpoint()
        return await op()

    return busywork


def _named(name: str, scenario: testing.Scenario) -> testing.Scenario:
    scenario.__name__ = scenario.__qualname__ = name
    return scenario


def _quiet() -> warnings.catch_warnings[list[warnings.WarningMessage]]:
    """The races provoke the kernel's WARN_ON cases (deactivate without activate): expected."""
    manager = warnings.catch_warnings(record=True)
    return manager


# -- the races ---------------------------------------------------------------------------------


def activate_returns_early(world: Worlds, lead: int = 0) -> testing.Scenario:
    """Rule 1: every activate returns with the hardware active."""

    async def scenario(run: testing.Run) -> None:
        w = world()

        async def activator() -> bool:
            await w.activate()
            return w.hardware_active()

        for outcome in await run.concurrently(activator, later(activator, lead)):
            assert outcome.unwrap(), f"{outcome.name} returned with the hardware inactive"

    return scenario


def failed_activate_keeps_count(world: Worlds, lead: int = 0) -> testing.Scenario:
    """Rule 2: a failed activate leaves the count as it was."""

    async def scenario(run: testing.Run) -> None:
        w = world()
        w.fail_next_activate()
        outcomes = await run.concurrently(
            w.activate, later(w.activate, lead), names=["activate", "activate"]
        )
        succeeded = sum(outcome.ok for outcome in outcomes)
        assert w.activations() == succeeded, (
            f"{succeeded} activate(s) succeeded but the count is {w.activations()}"
        )
        assert w.hardware_active() == (w.activations() > 0), "hardware differs from the count"

    return scenario


def deactivate_underflow(world: Worlds, lead: int = 0) -> testing.Scenario:
    """Rule 3: the count never goes below zero."""

    async def scenario(run: testing.Run) -> None:
        w = world()
        await w.activate()
        with _quiet():
            await run.concurrently(
                w.deactivate, later(w.deactivate, lead), names=["deactivate"] * 2
            )
        assert w.activations() == 0, f"count is {w.activations()} after 1 activate, 2 deactivates"
        assert not w.hardware_active(), "hardware still active"

    return scenario


def activate_deactivate_mismatch(world: Worlds, lead: int = 0) -> testing.Scenario:
    """Rule 4: after activate and deactivate race, the hardware matches the count."""

    async def scenario(run: testing.Run) -> None:
        w = world()
        await w.activate()
        with _quiet():
            await run.concurrently(
                w.deactivate, later(w.activate, lead), names=["deactivate", "activate"]
            )
        assert w.hardware_active() == (w.activations() > 0), (
            f"hardware active={w.hardware_active()} but the count is {w.activations()}"
        )

    return scenario


def two_binds_win(world: Worlds, lead: int = 0) -> testing.Scenario:
    """Rule 5: of two binds to one reservation exactly one wins."""

    async def scenario(run: testing.Run) -> None:
        w = world()
        res = await w.reservation()
        a, b = await w.phys(), await w.phys()
        outcomes = await run.concurrently(
            partial(w.bind, res, a),
            later(partial(w.bind, res, b), lead),
            names=["bind a", "bind b"],
        )
        winners = [outcome for outcome in outcomes if outcome.ok]
        assert len(winners) == 1, f"{len(winners)} binds won"
        assert w.bindings(a) + w.bindings(b) == 1, "bindings count both"

    return scenario


def free_racing_bind(world: Worlds, lead: int = 0) -> testing.Scenario:
    """Rule 6: free racing bind never leaves freed memory bound."""

    async def scenario(run: testing.Run) -> None:
        w = world()
        res = await w.reservation()
        phys = await w.phys()
        with _quiet():
            await run.concurrently(
                partial(w.bind, res, phys),
                later(partial(w.free, phys), lead),
                names=["bind", "free"],
            )
        assert not (w.freed(phys) and w.bound(res) is phys), "freed memory is bound"

    return scenario


RACES = {
    "activate_returns_early": activate_returns_early,
    "failed_activate_keeps_count": failed_activate_keeps_count,
    "deactivate_underflow": deactivate_underflow,
    "activate_deactivate_mismatch": activate_deactivate_mismatch,
    "two_binds_win": two_binds_win,
    "free_racing_bind": free_racing_bind,
}

SEED: dict[str, testing.Scenario] = {
    name: _named(f"seed_{name}", race(SeedWorld)) for name, race in RACES.items()
}
AVCM: dict[str, testing.Scenario] = {
    name: _named(f"avcm_{name}", race(AvcmWorld)) for name, race in RACES.items()
}

# The same races hidden deeper: drivers that take no time (a race window is then only the
# steps between two sync points) and the second task arriving LEAD steps late.
LEAD = 6
SEED_DEEP: dict[str, testing.Scenario] = {
    name: _named(f"seed_deep_{name}", race(partial(SeedWorld, 0.0), LEAD))
    for name, race in RACES.items()
}
AVCM_DEEP: dict[str, testing.Scenario] = {
    name: _named(f"avcm_deep_{name}", race(partial(AvcmWorld, 0.0), LEAD))
    for name, race in RACES.items()
}
globals().update(
    {
        scenario.__name__: scenario
        for group in (SEED, AVCM, SEED_DEEP, AVCM_DEEP)
        for scenario in group.values()
    }
)


async def take_and_give_without_finally(run: testing.Run) -> None:
    """A take/give without try/finally: leaks only if cancelled at the checkpoint between."""
    out = 0

    async def worker() -> None:
        nonlocal out
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        out += 1
        await anyio.lowlevel.checkpoint()  # a cancellation here leaks
        out -= 1
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()

    await run.concurrently(worker, worker)
    assert out == 0, f"leaked {out}"


def fewest_preemptions(scenario: testing.Scenario, backend: str) -> int:
    """The fewest preemptions a failing schedule of *scenario* has, as Exhaustive searches
    bound after bound finds it (three at most)."""
    for bound in range(4):
        result = testing.explore(
            scenario,
            strategy=testing.Exhaustive(bound),
            schedules=5000,
            backend=backend,
            shrink=False,  # (only whether a schedule within the bound fails counts here)
        )
        if result.failure is not None:
            return bound
        assert result.exhausted
    raise AssertionError("not found within three preemptions")


def queue_overflow(lead: int) -> testing.Scenario:
    """Three tasks check that a one-command queue is empty, pause, then append; the device has
    one spare slot, so two commands are fine and three overflow it: only when all three
    checked before any appended. Task *i* does ``lead + 2 * i`` checkpoints of work first, so
    in the event loop's own order the first appends before the last checks: two preemptions
    (on both backends, whatever order the loop starts them in)."""

    async def scenario(run: testing.Run) -> None:
        queue: list[int] = []

        async def submit(item: int) -> None:
            for _ in range(lead + 2 * item):
                await anyio.lowlevel.checkpoint()
            if not queue:
                await anyio.lowlevel.checkpoint()
                queue.append(item)

        await run.concurrently(*(lambda item=item: submit(item) for item in range(3)))
        assert len(queue) <= 2, f"{len(queue)} commands overflow a queue of one and a spare"

    return scenario


def replay_as_printed(
    command: str, *, hash_seed: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a failure's printed replay command in a fresh process (with *hash_seed* as its
    ``PYTHONHASHSEED``), from this folder: a test module is named as pytest imported it."""
    env = None if hash_seed is None else {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    return subprocess.run(
        shlex.split(command),
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
