"""The conformance suite: the contract's concurrency rules, run against any driver.

``check_conformance(factory)`` builds a fresh context with ``factory(memory)`` (sync or async)
for every schedule of every scenario, races avcm operations on it under the controlled
scheduler, and checks the rules at the end of each with :func:`check_quiescent` (the checker
the stress harness uses too): the model check (rule 4), ``bindings`` counts (rule 5), no freed
memory bound (rule 6), no lock held (rule 7), no two live allocations overlapping (rule 9), and
after ``destroy`` every page of memory free again (rule 9). For rule 8 the suite makes the
driver's setup calls fail itself, one call after another (core operations, the MMU wrapper's
activation of each reservation or page, a one-to-one allocator's alloc), from a sync hook at
the ``driver.*`` sync point that announces each call.
"""

from __future__ import annotations

import errno
import inspect
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from .. import InvalidError, Phys, PhysicalMemory, Res, Vcm, VcmError, VcmWarning
from ..lowlevel import SETUP_SYNC_POINTS, hardware_view, sync_hook
from ._clock import run_on_virtual_time
from ._errors import ConformanceFailure
from ._explore import PYTHON, Failure, explore_async, replay_async
from ._invariants import check_model, check_quiescent
from ._scheduler import Run
from ._strategies import PCT
from ._timeline import TaskOutcome

__all__ = ["SCENARIOS", "ConformanceReport", "ScenarioResult", "check_conformance"]

Factory = Callable[[PhysicalMemory], "Vcm | Awaitable[Vcm]"]
Body = Callable[[Run, Vcm], Awaitable[None]]

KiB = 1 << 10


def _raise_unexpected(outcomes: list[TaskOutcome], allowed: set[int]) -> None:
    """Errors the contract allows in a race are outcomes; anything else is a failure."""
    for outcome in outcomes:
        error = outcome.error
        if error is None:
            continue
        if isinstance(error, VcmError) and error.errno in allowed:
            continue
        if isinstance(error, AssertionError):  # a check inside the task: it names its rule
            raise error
        raise AssertionError(
            f"errors: {outcome.name} failed unexpectedly: {outcome.describe()}"
        ) from error


# -- the scenarios ---------------------------------------------------------------------------


async def _activation_is_real(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(64 * KiB)
    hardware = hardware_view(vcm)

    async def activator() -> None:
        await vcm.activate()
        if hardware is not None and not hardware.hardware_active():
            raise AssertionError("rule 1: activate returned with the hardware inactive")

    outcomes = await run.concurrently(activator, activator, activator)
    _raise_unexpected(outcomes, set())
    assert vcm.activations == 3, f"rule 3: 3 activates, count {vcm.activations}"
    check_model(vcm)
    outcomes = await run.concurrently(vcm.deactivate, vcm.deactivate, vcm.deactivate)
    _raise_unexpected(outcomes, set())
    assert vcm.activations == 0, f"rule 3: 3 deactivates, count {vcm.activations}"


async def _cancelled_activation(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(64 * KiB)
    await vcm.make_binding(8 * KiB)
    scope = anyio.CancelScope()

    async def activator() -> None:
        with scope:
            await vcm.activate()

    async def canceller() -> None:
        scope.cancel()

    await run.concurrently(activator, canceller)
    assert vcm.activations in (0, 1), f"rule 2: count {vcm.activations} after one activate"
    check_model(vcm)
    if vcm.activations:
        await vcm.deactivate()


async def _nested_pairs(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(8 * KiB)

    async def pair() -> None:
        await vcm.activate()
        await vcm.deactivate()

    outcomes = await run.concurrently(pair, pair, pair)
    _raise_unexpected(outcomes, set())
    assert vcm.activations == 0, f"rule 3: 3 pairs end at count {vcm.activations}"
    hardware = hardware_view(vcm)
    assert hardware is None or not hardware.hardware_active(), "rule 3: hardware still active"


async def _bind_while_active(run: Run, vcm: Vcm) -> None:
    doomed = [await vcm.make_binding(8 * KiB) for _ in range(4)]
    await vcm.activate()

    async def toggle() -> None:
        await vcm.deactivate()
        await vcm.activate()

    async def destroy_two() -> None:
        for res in doomed[:2]:
            await res.destroy_binding()

    outcomes = await run.concurrently(
        partial(vcm.make_binding, 64 * KiB),
        destroy_two,
        toggle,
        names=["make", "destroy", "toggle"],
    )
    _raise_unexpected(outcomes, {errno.ENOMEM, errno.ENOSPC})
    check_model(vcm)
    await vcm.deactivate()
    check_model(vcm)


async def _one_winner(run: Run, vcm: Vcm) -> None:
    res = await vcm.make_binding(16 * KiB)
    first = await res.unbind()
    assert first is not None
    try:
        second: Phys | None = await vcm.alloc(16 * KiB)
    except VcmError:
        second = None
    candidates = [first, first] if second is None else [first, second, first]
    outcomes = await run.concurrently(*(partial(res.bind, phys) for phys in candidates))
    _raise_unexpected(outcomes, {errno.EADDRINUSE, errno.EALREADY, errno.EOPNOTSUPP})
    winners = [candidates[i] for i, outcome in enumerate(outcomes) if outcome.ok]
    assert len(winners) == 1, f"rule 5: {len(winners)} of {len(outcomes)} binds won"
    assert res.phys is winners[0], "rule 5: the reservation is not bound to the winner"
    physes = {first} if second is None else {first, second}
    counted = sum(phys.bindings for phys in physes)
    assert counted == 1, f"rule 5: bindings count {counted} for one binding"
    outcomes = await run.concurrently(res.unbind, res.unbind)
    _raise_unexpected(outcomes, set())
    returned = [outcome.value for outcome in outcomes if outcome.value is not None]
    assert returned == [winners[0]], f"rule 5: concurrent unbinds returned {returned}"
    for phys in physes:
        await phys.free()


async def _free_racing_bind(run: Run, vcm: Vcm) -> None:
    res = await vcm.make_binding(16 * KiB)
    phys = await res.unbind()
    assert phys is not None
    outcomes = await run.concurrently(partial(res.bind, phys), phys.free, names=["bind", "free"])
    _raise_unexpected(outcomes, {errno.EBUSY, errno.EINVAL})
    bind, free = outcomes
    assert bind.ok != free.ok, f"rule 6: bind {bind.describe()}, free {free.describe()}"
    assert not (phys.freed and res.phys is phys), "rule 6: freed memory is bound"


async def _cancellation(run: Run, vcm: Vcm) -> None:
    await vcm.make_binding(8 * KiB)
    await vcm.activate()
    scopes = [anyio.CancelScope() for _ in range(2)]

    async def builder() -> None:
        with scopes[0]:
            res = await vcm.make_binding(64 * KiB + 4 * KiB)
            await res.destroy_binding()

    async def toggler() -> None:
        with scopes[1]:
            await vcm.activate()
            await vcm.deactivate()

    async def canceller() -> None:
        for scope in scopes:
            scope.cancel()

    outcomes = await run.concurrently(builder, toggler, canceller)
    _raise_unexpected(outcomes, {errno.ENOMEM, errno.ENOSPC})
    assert vcm.activations in (1, 2), f"rule 7: count {vcm.activations}"
    check_model(vcm)
    while vcm.activations:
        await vcm.deactivate()


async def _allocation_and_leaks(run: Run, vcm: Vcm) -> None:
    early = [await vcm.make_binding(4 * KiB * (1 + i)) for i in range(5)]

    async def make() -> None:
        await vcm.make_binding(12 * KiB)

    async def destroy() -> None:
        for res in early[:3]:
            await res.destroy_binding()

    outcomes = await run.concurrently(make, make, make, destroy)
    _raise_unexpected(outcomes, {errno.ENOMEM, errno.ENOSPC})


class InjectedFault(VcmError):
    """The fault the conformance suite injects into a driver call (rule 8)."""

    default_errno = errno.EIO


class _FaultInjector:
    """A sync hook that counts the driver's setup calls and makes the one numbered
    ``fail_at`` raise :class:`InjectedFault` before the driver runs (0: none fails)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_at = 0

    async def __call__(self, point: str, obj: object) -> None:
        if point in SETUP_SYNC_POINTS:
            self.calls += 1
            if self.calls == self.fail_at:
                raise InjectedFault(f"conformance: driver call {self.calls} fails")


async def _faults(run: Run, vcm: Vcm) -> None:
    existing = await vcm.make_binding(8 * KiB)
    spare = await existing.unbind()
    assert spare is not None
    injector = _FaultInjector()

    async def pair() -> None:
        async with vcm.activated():
            pass

    async def rebind() -> None:
        if existing.phys is None:
            await existing.bind(spare)

    with sync_hook(injector):  # runs after the scheduler's: in the chosen task
        for fail_at in range(1, 7):
            injector.calls, injector.fail_at = 0, fail_at
            outcomes = await run.concurrently(
                partial(vcm.make_binding, 64 * KiB + 4 * KiB),
                pair,
                rebind,
                names=["make", "pair", "bind"],
            )
            _raise_unexpected(outcomes, {errno.EIO, errno.ENOMEM, errno.ENOSPC})
            faulted = [o for o in outcomes if isinstance(o.error, InjectedFault)]
            if injector.calls >= fail_at:
                assert len(faulted) == 1, f"rule 8: the fault reached {len(faulted)} callers, not 1"
            assert vcm.activations == 0, f"rule 8: count {vcm.activations} after a fault"
            check_quiescent([vcm])
        injector.fail_at = 0
    if existing.phys is None:
        await spare.free()


def _device(vcm: Vcm) -> Any:
    """The device side of a context's hardware (``read``/``write`` at device addresses), if
    its driver offers one."""
    hardware = hardware_view(vcm)
    read, write = getattr(hardware, "read", None), getattr(hardware, "write", None)
    return hardware if callable(read) and callable(write) else None


def _expect_reach(vcm: Vcm, res: Res, pattern: bytes) -> None:
    """A device write at *res* lands in its memory (rule 4: the hardware maps it)."""
    device = _device(vcm)
    if device is None or res.phys is None:
        return
    device.write(res.start, pattern)
    memory = res.phys.memory
    if memory is not None and memory.read(res.phys.parts[0].start, len(pattern)) != pattern:
        raise AssertionError(
            f"rule 4: a device write at {res.start:#x} through {vcm.name} did not reach the "
            "memory bound there"
        )


def _expect_fault(vcm: Vcm, address: int, after: str) -> None:
    """Where the model maps nothing (the context off, or no bound reservation there) and no
    driver call of the context runs, no device access reaches memory: a translation left in
    a TLB would."""
    device = _device(vcm)
    if device is None or vcm.statistics().mutex.locked:
        return
    if vcm.activations and any(
        res.phys is not None and res.start <= address < res.start + res.bound_size
        for res in vcm.reservations()
    ):
        return  # mapped again since, by another task
    try:
        device.read(address, 8)
    except Exception:  # whatever the driver raises for an access it cannot translate
        return
    raise AssertionError(
        f"rule 4: {after}, a device access at {address:#x} through {vcm.name} reached memory "
        "where the model maps nothing (a stale translation)"
    )


async def _shared_hardware(run: Run, first: Vcm, second: Vcm) -> None:
    """Two contexts of one driver on one memory at once: hardware they share (one unit, one
    usage count, a cache of page-table pages) must keep each true to its own model."""
    patterns = iter(range(1, 1 << 16))

    async def use(vcm: Vcm) -> None:
        res = await vcm.make_binding(64 * KiB)
        async with vcm.activated():
            _expect_reach(vcm, res, next(patterns).to_bytes(8, "little"))
            start = res.start
            await res.destroy_binding()
            _expect_fault(vcm, start, "after destroy_binding returned")
        again = await vcm.make_binding(64 * KiB)
        async with vcm.activated():
            _expect_reach(vcm, again, next(patterns).to_bytes(8, "little"))
        _expect_fault(vcm, again.start, "after deactivate returned")
        await again.destroy_binding()

    async def toggle(vcm: Vcm) -> None:
        async with vcm.activated():
            pass

    outcomes = await run.concurrently(
        lambda: use(first), lambda: use(second), lambda: toggle(first), lambda: toggle(second)
    )
    _raise_unexpected(outcomes, set())


# Scenarios of two contexts made by the factory on one memory, rather than one.
_PAIRED: dict[str, Callable[[Run, Vcm, Vcm], Awaitable[None]]] = {
    "shared_hardware": _shared_hardware
}

SCENARIOS: dict[str, tuple[str, str]] = {
    "activation_is_real": ("rules 1, 3", "concurrent activates return with the hardware active"),
    "cancelled_activation": ("rule 2", "an activate cancelled anywhere leaves nothing behind"),
    "nested_pairs": ("rule 3", "activate/deactivate pairs in any order end at zero"),
    "bind_while_active": ("rule 4", "binds, unbinds and toggles keep hardware == model"),
    "one_winner": ("rule 5", "one bind wins, one unbind returns the phys, bindings right"),
    "free_racing_bind": ("rule 6", "free racing bind: exactly one wins, no freed memory bound"),
    "cancellation": ("rule 7", "operations cancelled anywhere complete or have no effect"),
    "faults": ("rule 8", "a driver call failing anywhere leaves all consistent, the error seen"),
    "allocation_and_leaks": ("rule 9", "concurrent allocation never overlaps, destroy frees all"),
    "shared_hardware": ("rule 4", "two contexts on one memory at once: each true to its model"),
}

_BODIES: dict[str, Body] = {
    "activation_is_real": _activation_is_real,
    "cancelled_activation": _cancelled_activation,
    "nested_pairs": _nested_pairs,
    "bind_while_active": _bind_while_active,
    "one_winner": _one_winner,
    "free_racing_bind": _free_racing_bind,
    "cancellation": _cancellation,
    "faults": _faults,
    "allocation_and_leaks": _allocation_and_leaks,
}


# -- the checks after every schedule ---------------------------------------------------------


async def _make(factory: Factory, memory: PhysicalMemory) -> Vcm:
    made = factory(memory)
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, Vcm):
        raise InvalidError(f"conformance: the factory returned {made!r}, not an avcm.Vcm")
    return made


def _scenario(factory: Factory, name: str) -> Callable[[Run], Awaitable[None]]:
    async def scenario(run: Run) -> None:
        memory = PhysicalMemory(size=64 << 20)
        free_before = memory.free_bytes
        vcms = [await _make(factory, memory) for _ in range(2 if name in _PAIRED else 1)]
        with warnings.catch_warnings():
            # the races provoke the kernel's WARN_ON cases (unbind of an unbound res...)
            warnings.simplefilter("ignore", VcmWarning)
            if name in _PAIRED:
                await _PAIRED[name](run, *vcms)
            else:
                await _BODIES[name](run, *vcms)
            check_quiescent(vcms)
            for vcm in vcms:
                await vcm.destroy()
        leaked = free_before - memory.free_bytes
        assert leaked == 0, f"rule 9: {leaked:#x} bytes of memory not free after destroy"

    # Reports name it as the suite does (``conformance:one_winner``), not by the private
    # module that builds it; replays go through the suite, which rebuilds it by name.
    scenario.__name__ = scenario.__qualname__ = name
    scenario.__module__ = "conformance"
    return scenario


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    name: str
    rule: str
    schedules: int
    failure: Failure | None

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """Per scenario: the rule it checks, the schedules run, and the failure if any."""

    driver: str
    backend: str
    results: tuple[ScenarioResult, ...]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(result.failure for result in self.results if result.failure is not None)

    def format(self) -> str:
        lines = [f"avcm conformance of {self.driver} on {self.backend}:"]
        for result in self.results:
            verdict = "ok" if result.passed else "FAILED"
            lines.append(
                f"  {result.name:22} {result.rule:11} {result.schedules:6} schedules  {verdict}"
            )
        for failure in self.failures:
            lines.append("")
            lines.append(failure.report())
        lines.append("")
        lines.append("conformance: " + ("passed" if self.passed else "FAILED"))
        return "\n".join(lines)


async def check_conformance_async(
    factory: Factory,
    *,
    schedules: int = 200,
    seed: int = 0,
    only: str | None = None,
    replay_token: str | None = None,
    factory_spec: str | None = None,
    on_progress: Callable[[int], object] | None = None,
) -> ConformanceReport:
    """:func:`check_conformance` in the running event loop.

    Raises:
        ConformanceFailure: the driver failed a scenario (``error.report`` is the report).
        avcm.InvalidError: bad arguments, or a factory that makes no context.
    """
    if only is not None and only not in SCENARIOS:
        raise InvalidError(
            f"conformance: no scenario {only!r} (choose from {', '.join(SCENARIOS)})"
        )
    if replay_token is not None and only is None:
        raise InvalidError("conformance: a replay token replays one scenario: name it")
    backend = _backend()
    # a factory that cannot make a context is bad input, not a failure of some schedule
    try:
        probe = await _make(factory, PhysicalMemory(size=64 << 20))
    except InvalidError:
        raise
    except Exception as error:
        raise InvalidError(
            f"conformance: the factory raised {type(error).__name__}: {error}"
        ) from error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VcmWarning)
        await probe.destroy()
    driver = factory_spec or str(getattr(factory, "__qualname__", repr(factory)))
    results = []
    for name in [only] if only is not None else list(SCENARIOS):
        rule = SCENARIOS[name][0]
        scenario = _scenario(factory, name)
        if factory_spec is not None:
            command = (
                f"{PYTHON} -m avcm.testing conformance {factory_spec} --scenario {name} "
                f"--replay {{token}} --backend {backend}"
            )
        else:
            command = (
                f"avcm.testing.check_conformance({driver}, only={name!r}, "
                f"replay_token={{token_literal}}, backend={backend!r})"
            )
        if replay_token is not None:
            failure = await replay_async(scenario, replay_token, command=command)
            results.append(ScenarioResult(name, rule, 1, failure))
            continue
        done = sum(result.schedules for result in results)
        result = await explore_async(
            scenario,
            strategy=PCT(seed),
            schedules=schedules,
            command=command,
            on_progress=None if on_progress is None else partial(_offset, on_progress, done),
        )
        results.append(ScenarioResult(name, rule, result.schedules, result.failure))
    report = ConformanceReport(driver=driver, backend=backend, results=tuple(results))
    if not report.passed:
        raise ConformanceFailure(report)
    return report


def _offset(on_progress: Callable[[int], object], done: int, ran: int) -> None:
    """Schedules run in this scenario, counted after those of the scenarios before."""
    on_progress(done + ran)


def _backend() -> str:
    import sniffio

    return sniffio.current_async_library()


def check_conformance(
    factory: Factory,
    *,
    backend: str = "trio",
    schedules: int = 200,
    seed: int = 0,
    only: str | None = None,
    replay_token: str | None = None,
    factory_spec: str | None = None,
    on_progress: Callable[[int], object] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> ConformanceReport:
    """Run every scenario (or *only* one) against contexts made by *factory*, *schedules*
    PCT schedules each, on virtual time, and return the report of a driver that conforms.
    *on_progress* is called with the number of schedules run so far, after each one.
    With *workers* or *scheduler* (as for :func:`explore`), each scenario runs on a worker of
    a Dask cluster, exactly as here, and the report is the same (*on_progress* is called as
    scenarios end; *factory* is sent to the workers); a replay runs here.

    A test that only calls it fails on a broken driver: the failure is raised, an
    :class:`AssertionError` that pytest shows with every failure's timeline and replay.

    Raises:
        ConformanceFailure: the driver failed a scenario; ``error.report`` is the whole report
            (``report.format()``, ``report.failures``).
        avcm.InvalidError: bad arguments, or a factory that makes no context.
        ClusterError: with *scheduler*, a scheduler that does not answer.
    """
    if (workers is not None or scheduler is not None) and replay_token is None:
        from ._parallel import check_conformance_parallel

        return check_conformance_parallel(
            factory,
            backend=backend,
            schedules=schedules,
            seed=seed,
            only=only,
            factory_spec=factory_spec,
            on_progress=on_progress,
            workers=workers,
            scheduler=scheduler,
        )
    return run_on_virtual_time(
        backend,
        partial(
            check_conformance_async,
            factory,
            schedules=schedules,
            seed=seed,
            only=only,
            replay_token=replay_token,
            factory_spec=factory_spec,
            on_progress=on_progress,
        ),
    )
