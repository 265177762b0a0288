"""Exploring a scenario's schedules: find a failing one, shrink it, replay it.

A *scenario* is ``async def scenario(run: Run) -> None``: it sets up objects, runs tasks with
``await run.concurrently(...)`` and asserts what the contract says about the outcome. It fails
by raising. :func:`explore` runs it under many schedules; :func:`replay` runs one token.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import contextvars
import dataclasses
import inspect
import itertools
import math
import random
import shlex
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import sniffio

from .. import InvalidError
from ..lowlevel import check_int
from ._clock import run_on_virtual_time, seed_trio_scheduler
from ._errors import DeadlockError, RaceFound, ReplayDivergedError, ScheduleFailure
from ._leftovers import Leftovers
from ._scheduler import Run
from ._strategies import (
    MAX_PREEMPTION_BOUND,
    Chooser,
    Exhaustive,
    FromIndices,
    Portfolio,
    Replay,
    Strategy,
    is_search,
)
from ._timeline import Timeline, wrap
from ._token import ReplayToken, digest_of, is_cancel

__all__ = [
    "Exploration",
    "Failure",
    "Limits",
    "Scenario",
    "check",
    "explore",
    "explore_async",
    "replay",
    "replay_async",
    "scenario_name",
]

Scenario = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one run. ``max_steps``: scheduling steps in a row with no task waiting for
    time to pass (virtual time standing still, or moved only by the spin rule) before
    :class:`StepBudgetError` (a livelock; a step after a task waited for the clock to move
    starts the count again, so a poll loop that waits for time to pass is none), and 20
    times as many steps in all (a run that does not end, though time passes);
    ``idle_timeout``: seconds (simulated, on a virtual clock) with every task blocked before a
    :class:`DeadlockError`; ``runaway_steps``: steps of tasks outside the scheduler's control
    (the scenario's own, outside `concurrently`) with no controlled task chosen, before a
    :class:`RunawayError`; ``fair_bound``: how many choices in a row may pass over a runnable
    task before the tasks that keep it waiting are disabled until it has run (fairness: a poll
    loop cannot starve the task it waits for); ``io_timeout``: seconds of real time that the
    run waits, with every task waiting and virtual time standing still, for I/O with the
    world outside (another process, a socket) before an :class:`IOWaitError`, or, when a
    timer is pending, before virtual time moves on to it (a timeout around the I/O);
    ``thread_timeout``: seconds of real time that the run waits for a worker thread to report
    back (no task is chosen and virtual time stands still meanwhile, as long as the thread
    makes no call into the loop) before a :class:`ThreadWaitError`: the calls waiting for it
    are abandoned, raising that error in their tasks, and the run ends."""

    max_steps: int = 10_000
    idle_timeout: float | None = None
    runaway_steps: int = 200_000
    fair_bound: int = 32
    io_timeout: float = 10.0
    thread_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "runaway_steps", "fair_bound"):
            check_int(getattr(self, name), f"Limits.{name}", 1)
        for name in ("idle_timeout", "io_timeout", "thread_timeout"):
            timeout = getattr(self, name)
            if timeout is None and name == "idle_timeout":
                continue
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not 0 < timeout < math.inf
            ):
                raise InvalidError(f"Limits.{name} must be > 0 and finite, not {timeout!r}")


_DEFAULT_LIMITS = Limits()


def unproven_note(fewest: bool | None) -> str:
    """What a report adds when shrinking did not rule out fewer preemptions within its budget
    (*fewest* False; nothing when it did, or did not shrink)."""
    return "; fewer preemptions not ruled out within the shrink budget" if fewest is False else ""


_REDUCE_STALE = 48
"""Tries in a row that bring no shorter failing run, after which shrinking stops looking for
fewer steps (the fewest preemptions are still searched for, within the budget)."""


def checked_limits(limits: object) -> Limits:
    """*limits*, or the defaults for ``None``; :class:`~avcm.InvalidError` for anything but
    a :class:`Limits`."""
    if limits is None:
        return _DEFAULT_LIMITS
    if not isinstance(limits, Limits):
        raise InvalidError(f"limits must be an avcm.testing.Limits, not {limits!r}")
    return limits


def scenario_name(scenario: Callable[..., Any]) -> str:
    """``module:qualname`` of a scenario (what the replay command imports); for one a factory
    made (``scenario = make_scenario(...)``), the name its module binds it to, if any."""
    while isinstance(scenario, partial):
        scenario = scenario.func
    module = getattr(scenario, "__module__", "?")
    name = _module_level_name(scenario)
    if name is None:
        name = getattr(scenario, "__qualname__", repr(scenario))
    return f"{module}:{name}"


def _module_level_name(scenario: Callable[..., Any]) -> str | None:
    """The name under which *scenario*'s module binds it, if its qualname is no such name (a
    function a factory made: ``make.<locals>.scenario``): the first, in the module's order."""
    qualname = getattr(scenario, "__qualname__", "")
    if "<" not in qualname:
        return None
    module = sys.modules.get(getattr(scenario, "__module__", None) or "")
    names = vars(module).items() if module is not None else ()
    return next((name for name, value in names if value is scenario), None)


def described(strategy: Strategy) -> str:
    """As an exploration names its strategy: its name, and for a part of an exhaustive search
    its prefix too (what it takes to run that part again)."""
    if isinstance(strategy, Exhaustive) and strategy.prefix:
        return f"{strategy.name} prefix {list(strategy.prefix)}"
    return strategy.name


def _importable(scenario: Callable[..., Any]) -> bool:
    qualname = getattr(scenario, "__qualname__", "")
    module = getattr(scenario, "__module__", "__main__")
    if isinstance(scenario, partial) or module == "__main__":
        return False
    return "<" not in qualname or _module_level_name(scenario) is not None


PYTHON = shlex.quote(sys.executable)
"""The interpreter running now: printed commands work without an activated environment."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A schedule under which the scenario failed, and how to see it again."""

    scenario: str
    error: BaseException
    token: ReplayToken
    timeline: Timeline
    backend: str
    schedules: int  # schedules run until it was found
    shrunk_from: tuple[int, int] | None  # (steps, preemptions) as found; None: not shrunk
    command: str | None = None
    replayed: bool = False
    thread_timeout: float | None = None  # Limits.thread_timeout, if not the default
    # shrunk: whether every schedule with fewer preemptions was run and passed (False: the
    # shrink budget ran out first, and the report says so); None: not shrunk
    fewest: bool | None = None

    @property
    def replay_command(self) -> str:
        """A shell command that replays this failure."""
        if self.command is not None:
            # a shell command takes the token shell-quoted, a Python call as a string literal
            token = str(self.token)
            return self.command.format(token=shlex.quote(token), token_literal=repr(token))
        limit = "" if self.thread_timeout is None else f" --thread-timeout {self.thread_timeout!r}"
        return (
            f"{PYTHON} -m avcm.testing replay {self.scenario} {shlex.quote(str(self.token))} "
            f"--backend {self.backend}{limit}"
        )

    def report(self) -> str:
        timeline = self.timeline
        shrunk = ""
        if self.shrunk_from is not None:
            steps, preemptions = self.shrunk_from
            if (steps, preemptions) != (len(timeline.steps), timeline.preemptions):
                shrunk = f", shrunk from {steps} steps, {preemptions} preemption(s)"
            shrunk += unproven_note(self.fewest)
        if self.replayed:
            found = f"replayed schedule {self.token.schedule}"
        else:
            runs = f"{self.schedules} run{'' if self.schedules == 1 else 's'}"
            found = f"failed in schedule {self.token.schedule} (after {runs})"
        # Wrapped to a terminal's width, but for the replay lines: a command stays whole.
        header = wrap(
            f"{self.scenario} {found} ({self.token.strategy}, "
            f"seed {self.token.seed}, {self.backend}): {len(timeline.steps)} steps, "
            f"{timeline.deviations()}{shrunk}"
        )
        note = timeline.budget_note()
        return (
            f"{header}\n"
            f"{wrap(f'{type(self.error).__name__}: {self.error}')}\n\n"
            + (f"{wrap(note)}\n\n" if note else "")
            + f"{timeline.format()}\n\n"
            f"replay token: {self.token}\n"
            f"replay: {self.replay_command}"
        )


@dataclass(frozen=True, slots=True)
class Exploration:
    """What :func:`explore` did: how many schedules it ran and the failure, if any."""

    scenario: str
    strategy: str
    seed: int
    backend: str
    schedules: int
    exhausted: bool  # the strategy had no more schedules (exhaustive search complete)
    failure: Failure | None
    max_steps_seen: int
    # Coverage. Schedules that differ in the order of their steps (which task passed which
    # point when) count apart in distinct_schedules, even if they differ only in the order of
    # independent steps; in distinct_orders only if they differ in the order of conflicting
    # steps (on one sync object, or both at plain checkpoints: Run.conflict_order)
    distinct_schedules: int = 0
    distinct_orders: int = 0
    points: tuple[tuple[str, int], ...] = ()  # each point (sync point or checkpoint), how often
    covered: bool = False  # stopped by until_covered: new schedules stopped adding coverage
    # run on workers: each part's own exploration, in the order of the parts: every part up to
    # the first that failed (the one reported), and those after it that ended before they were
    # cancelled; the fields above are theirs merged (counts summed: a schedule two parts both
    # ran counts twice in distinct_schedules)
    parts: tuple[Exploration, ...] = ()

    @property
    def found(self) -> bool:
        return self.failure is not None

    def parts_summary(self) -> str:
        """What ran on workers, in a line: every part that ran (those after the reported one
        included, if they ended before they could be cancelled), how many schedules, how many
        parts failed, and which is reported."""
        failed = [part for part in self.parts if part.found]
        runs = f"{self.schedules} schedule{'' if self.schedules == 1 else 's'}"
        count = len(self.parts)
        line = f"on workers: {runs} in {count} part{'' if count == 1 else 's'}, "
        if not failed:
            return f"{line}none failed"
        first = failed[0]
        return wrap(
            f"{line}{len(failed)} failed; reported: the first failing part in their order "
            f"({first.strategy}, seed {first.seed}), as one process finds it:"
        )


# What the module ``random`` is seeded with at the start of each run of the schedule being
# explored, shrunk or replayed (None: left as it is): see _schedule_random
_run_random: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "avcm_testing_run_random", default=None
)


@contextlib.contextmanager
def _schedule_random(strategy: str, seed: int, schedule: int) -> Iterator[None]:
    """Each run of schedule *schedule* of *strategy* with *seed* (the run that found a failure,
    its shrinking's runs, its replay from the token in another process) starts the module
    ``random`` from the same state, one of that schedule's own: a program that draws a jitter
    from it runs the same in a replay (attack66: a printed replay diverged in 4 processes of
    7), and other schedules draw otherwise (attack67: seeded alike in every run, a race behind
    one draw in five was never found). Not for a search (``Exhaustive``), whose schedules run
    the same prefix again: there the program draws as it does, and a search that sees it run
    otherwise says it is not deterministic."""
    name = None if is_search(strategy) else f"{strategy}:{seed}:{schedule}"
    reset = _run_random.set(name)
    try:
        yield
    finally:
        _run_random.reset(reset)


async def _run_once(
    scenario: Scenario, chooser: Chooser, limits: Limits
) -> tuple[Run, BaseException | None]:
    """One run of *scenario* under *chooser*: the run, and the error it failed with if any.
    With a schedule's own state of the module ``random`` (:func:`_schedule_random`), it is put
    back after: the program's own stream outside the runs goes on untouched."""
    seeded = _run_random.get()
    if seeded is None:
        return await _run_seeded(scenario, chooser, limits)
    state = random.getstate()
    random.seed(f"avcm.testing:{seeded}")
    try:
        return await _run_seeded(scenario, chooser, limits)
    finally:
        random.setstate(state)


async def _run_seeded(
    scenario: Scenario, chooser: Chooser, limits: Limits
) -> tuple[Run, BaseException | None]:
    if sniffio.current_async_library() == "trio":
        # anything trio itself orders (tasks woken together) comes out the same every run
        seed_trio_scheduler(0)
    run = Run(
        chooser,
        max_steps=limits.max_steps,
        idle_timeout=limits.idle_timeout,
        runaway_steps=limits.runaway_steps,
        fair_bound=limits.fair_bound,
        io_timeout=limits.io_timeout,
        thread_timeout=limits.thread_timeout,
    )
    if not callable(scenario) or isinstance(scenario, type):
        raise InvalidError(f"a scenario is an async function taking a Run, not {scenario!r}")
    try:
        awaitable = scenario(run)
    except TypeError as error:
        # calling an async def runs none of its body: this is its signature refusing a Run
        raise InvalidError(
            f"scenario {scenario_name(scenario)} cannot be called with a Run ({error}): "
            "a scenario is an async function taking a Run"
        ) from None
    if not inspect.isawaitable(awaitable):
        raise InvalidError(
            f"scenario {scenario_name(scenario)} returned {awaitable!r}: make it an async def"
        )
    leftovers = Leftovers()
    # (and while what the run left is waited for: what that spawns or arms meanwhile too)
    with leftovers.in_reach():
        try:
            await awaitable
        except ReplayDivergedError:
            raise
        except Exception as error:
            if not run.decisions:
                # failed before any task ran under the scheduler: no schedule to blame (no
                # race to report or shrink), but the scenario's own error, raised as it is
                raise
            await leftovers.outlast()
            return run, error
        await leftovers.outlast()
    if not run.decisions:
        raise InvalidError(
            f"scenario {scenario_name(scenario)} ran no task under the scheduler: "
            f"run its racing operations with `await run.concurrently(...)`"
        )
    return run, None


class _FromTaskOrder(FromIndices):
    """Follows an order of tasks (a run's decisions, some taken out): at each step the next
    task of *order* if it is enabled there (then the one after), else the event loop's own
    choice. Shrinking's way to keep which task runs before which where a failing run's
    positions would point at other tasks once choices before them are taken back."""

    __slots__ = ("_order",)

    def __init__(
        self,
        order: Sequence[int],
        cancels: Sequence[tuple[int, int]] = (),
        outlasts: Sequence[int] = (),
    ) -> None:
        super().__init__((), cancels, outlasts)
        self._order = collections.deque(order)

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        order = self._order
        if order and order[0] in enabled:
            return enabled.index(order.popleft())
        return 0  # (a task not enabled yet keeps its place: it may be the next one's)


_Ordering = tuple[int | None, int, int, int | None]
"""``(before, made, task, taken)``: *task* runs next, preempting, once it has taken *taken*
steps (None: any number) and the task *before* has taken at least *made* (*before* None:
whichever task is due); :class:`_FromOrderings`."""


class _FromOrderings(FromIndices):
    """Preempts only where one of *orderings* says so, each once: ``(before, made, task,
    taken)`` runs *task* next, enabled, as soon as it has taken *taken* steps (None: any
    number) and the task *before* has taken at least *made* (*before* None: whatever task is
    due); else the event loop's own choice. A preemption so written comes after the same
    step of the same task in a run with other preemptions taken out or moved, where its
    position would point at another task or at none: shrinking's way to take preemptions out
    and keep the others."""

    __slots__ = ("_orderings", "_taken")

    def __init__(
        self,
        orderings: Sequence[_Ordering],
        cancels: Sequence[tuple[int, int]] = (),
        outlasts: Sequence[int] = (),
    ) -> None:
        super().__init__((), cancels, outlasts)
        self._orderings = list(orderings)
        self._taken: collections.Counter[int] = collections.Counter()

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        position = 0
        taken = self._taken
        if continuing:
            for at, (before, made, task, steps) in enumerate(self._orderings):
                if (
                    (steps is None or taken[task] == steps)
                    and (before is None or taken[before] >= made)
                    and task in enabled
                ):
                    position = enabled.index(task)
                    del self._orderings[at]
                    break
        taken[enabled[position]] += 1
        return position


def _followers(orderings: Sequence[_Ordering | None], index: int, task: int) -> list[int]:
    """The indices of the orderings after *index* that run their task once *task* (the one
    at *index* runs) has taken steps, up to the next one that runs *task*: what ran next
    once it had run ahead."""
    found = []
    for at in range(index + 1, len(orderings)):
        entry = orderings[at]
        if entry is not None and entry[2] == task:
            break
        if entry is not None and entry[0] == task:
            found.append(at)
    return found


def _without(orderings: Sequence[_Ordering], dropped: Iterable[int]) -> list[_Ordering]:
    """*orderings* with those at the indices *dropped* taken out: each one that ran its task
    once a dropped one's task had run ahead runs it where that one would have run its own
    instead, at whatever step of its own (a chain of tasks run ahead in a row stays one)."""
    kept: list[_Ordering | None] = list(orderings)
    for index in sorted(set(dropped), reverse=True):
        before, made, task, _ = orderings[index]
        for at in _followers(kept, index, task):
            kept[at] = (before, made, orderings[at][2], None)
        kept[index] = None
    return [entry for entry in kept if entry is not None]


def _moved(orderings: Sequence[_Ordering], index: int, moved: _Ordering) -> list[_Ordering]:
    """*orderings* with the one at *index* replaced by *moved* (the same task): those that ran
    their task once its task had run ahead still do, at whatever step of their own."""
    result = list(orderings)
    for at in _followers(result, index, moved[2]):
        before, made, task, _ = orderings[at]
        result[at] = (before, made, task, None)
    result[index] = moved
    return result


def _distances(taken: int, steps: int) -> list[int]:
    """How far a task that had taken *taken* of its *steps* steps may be moved, nearest
    first: 1 to 16 steps later, then 32, 64, ..., then as much earlier."""

    def ahead(limit: int) -> list[int]:
        near = list(range(1, min(limit, 16) + 1))
        return near + [1 << power for power in range(5, limit.bit_length())]

    return ahead(steps - taken - 1) + [-d for d in ahead(taken)]


def _orderings(run: Run) -> list[tuple[int | None, int, int, int]]:
    """The preemptions of *run* as :class:`_FromOrderings` follows them: each between the
    same steps of the task that took the step before (None if that is the task itself) and
    the task it chose."""
    pairs = zip(run.choice_steps, run.positions, strict=True)
    preempted = {step for step, position in pairs if position}
    taken: collections.Counter[int] = collections.Counter()
    orderings: list[tuple[int | None, int, int, int]] = []
    previous: int | None = None
    for step, task in enumerate(run.decisions):
        if task < 0:
            continue  # (no task's step, or a cancellation injected: no choice of a task)
        if step in preempted:
            before = None if previous == task else previous
            orderings.append((before, 0 if before is None else taken[before], task, taken[task]))
        taken[task] += 1
        previous = task
    return orderings


def _same_failure(error: BaseException, original: BaseException) -> bool:
    """Whether *error* is the failure *original* is, as shrinking keeps it: the same type,
    raised at the same line of code; for an exception group (a task group's), the same such
    failures inside it. (A type alone let an exception group of one bug stand for a group of
    another, needing fewer preemptions: the report showed that other bug; attack37 F3.)"""
    return _failure_kinds(error) == _failure_kinds(original)


def _failure_kinds(error: BaseException) -> frozenset[tuple[type[BaseException], str, int]]:
    if isinstance(error, BaseExceptionGroup):
        return frozenset().union(*(_failure_kinds(inner) for inner in error.exceptions))
    traceback = error.__traceback__
    if traceback is None:  # (never raised: only its type is known)
        return frozenset({(type(error), "", 0)})
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return frozenset({(type(error), traceback.tb_frame.f_code.co_filename, traceback.tb_lineno)})


async def shrunk(
    scenario: Scenario,
    run: Run,
    error: BaseException,
    limits: Limits,
    budget: int,
) -> tuple[Run, BaseException, Run | None, bool | None]:
    """The failure of *run* shrunk (:func:`_shrink`), and the run as found; as it is, and
    None, for the scheduler's own failures but a deadlock (step budget, runaway, I/O or a
    thread that never came): a shorter schedule would be a different run, not the same
    failure made smaller. A deadlock with fewer preemptions is the same one."""
    if isinstance(error, ScheduleFailure) and not isinstance(error, DeadlockError):
        return run, error, None, None
    smaller, smaller_error, fewest = await _shrink(scenario, run, error, limits, budget)
    return smaller, smaller_error, run, fewest


async def _shrink(
    scenario: Scenario,
    run: Run,
    error: BaseException,
    limits: Limits,
    budget: int,
) -> tuple[Run, BaseException, bool]:
    """Make the failing schedule as unpreemptive, then as short, as it can be while it fails
    the same way: first the schedules one preemption away from none (a quarter of the budget;
    nearest first to where the shortest failing prefix of the failing run decided it), then
    the failing run's order of tasks with turns taken out, then the schedules one preemption
    away again (on to half the budget), then two preemptions each where one of the decisive
    run's is, then two preemptions away, then two or three in a row near where the shortest
    failing prefix decided it, then taking out the best run's own preemptions, the others
    kept after the same steps of the same tasks, and taking one out while another is moved,
    then dropping chunks of choices and lowering each towards 0 (no preemption); then, level
    by level, every schedule with fewer preemptions than the best so far (bounded exhaustive
    search; of none and one, with no cancellation injected, those not run above), with the
    failure's injected cancellations where they were, then with as many anywhere. When that
    search completes within *budget* runs, no schedule with fewer preemptions fails: the
    result has the fewest, whatever the number of tasks; and whether it completed."""
    best_run, best_error = run, error
    best = list(run.positions)
    attempts = 0

    # the failure's injected cancellations stay where they were (by step): every trial makes
    # them, so that fewer preemptions with the same injections can be found (the last search
    # also moves them)
    def injected(trial: Run) -> list[tuple[int, int]]:
        return [(step, -1 - task) for step, task in enumerate(trial.decisions) if is_cancel(task)]

    cancels = injected(run)
    injections = len(cancels)
    # and so do the timers its threads outlasted, by chance: a reordered schedule reaches
    # the same chance at another step
    outlasts = run.outlast_chances

    def size(trial: Run) -> tuple[int, int, tuple[int, ...]]:
        return trial.preemptions, trial.steps, trial.positions

    def keep(trial: Run, trial_error: BaseException | None) -> bool:
        """Keep *trial* if it fails the same way and is smaller."""
        nonlocal best_run, best_error, best, cancels
        if trial_error is None or not _same_failure(trial_error, error):
            return False
        if size(trial) >= size(best_run):
            return False
        best_run, best_error = trial, trial_error
        best = list(trial.positions)
        cancels = injected(trial)
        return True

    async def attempted(
        candidate: Sequence[Any], *, follow: type[FromIndices] = FromIndices, keeping: bool = True
    ) -> tuple[Run, BaseException | None] | None:
        """The run of *candidate* (positions; with *follow* :class:`_FromTaskOrder`, an
        order of tasks; with :class:`_FromOrderings`, orderings) and its error, the run kept
        (if *keeping*) if it fails the same way and is smaller; None if it diverged."""
        nonlocal attempts
        attempts += 1
        try:
            trial, trial_error = await _run_once(
                scenario, follow(candidate, cancels, outlasts), limits
            )
        except ReplayDivergedError:
            return None
        if keeping:
            keep(trial, trial_error)
        return trial, trial_error

    async def tried(candidate: list[int]) -> Run | None:
        outcome = await attempted(candidate)
        return None if outcome is None else outcome[0]

    async def fails(candidate: Sequence[Any], *, follow: type[FromIndices] = FromIndices) -> bool:
        outcome = await attempted(candidate, follow=follow)
        return outcome is not None and outcome[0] is best_run

    async def drop_preemptions(until: int) -> None:
        """Take preemptions out of the best failing run, in chunks, halving, down to one at a
        time, the others where they were after the same steps of the same tasks
        (:class:`_FromOrderings`, :func:`_without`): taking out a position instead makes
        every later one point at another task, or at none."""
        orderings = _orderings(best_run)

        async def fails_without(start: int, end: int) -> bool:
            nonlocal orderings
            if await fails(_without(orderings, range(start, end)), follow=_FromOrderings):
                orderings = _orderings(best_run)
                return True
            return False

        await _take_out_in_chunks(
            lambda: len(orderings),
            fails_without,
            lambda: best_run.preemptions > 1 and attempts < until,
        )

    async def slide_and_drop(until: int) -> None:
        """Take out one preemption while another one's task runs ahead from a later (or an
        earlier) step of its own, as soon as it is there (:func:`_moved`): a random walk or
        PCT runs tasks ahead early, each needing the preemption of another to get back into
        the window; run ahead from where the window is, fewer do (attack43: a list's
        check-then-act and a bounded counter, two windows each among 4-5 tasks, kept 3 to 5
        where 2 fail). A step of each task up to 16 away, then 32, 64, ...; until one
        preemption fewer fails, then again from that run."""
        orderings = _orderings(best_run)
        while len(orderings) > 1:
            steps_of = collections.Counter(task for task in best_run.decisions if task >= 0)
            candidates = (
                _without(_moved(orderings, slid, (None, 0, task, taken + distance)), [dropped])
                for slid, (_, _, task, taken) in enumerate(orderings)
                for distance in _distances(taken, steps_of[task])
                for dropped in range(len(orderings))
                if dropped != slid
            )
            for candidate in candidates:
                if best_run.preemptions <= 1 or attempts >= until:
                    return
                if await fails(candidate, follow=_FromOrderings):
                    orderings = _orderings(best_run)
                    break
            else:
                return

    async def reorder() -> None:
        """Keep the order in which the failing run's tasks took their steps, as short a part
        of it as fails (the first turns, doubling), the rest in the event loop's own order;
        then, while fewer preemptions fail, take each task out of it whole, then turns (a
        task's steps in a row), in chunks of them, halving, and put off each turn of a task
        till its next one. A task that ran ahead for no part of the race runs in its turn
        again, and the tasks that race keep their order. (Taking out a position instead makes
        every later one point at another task: a race needing the last of 8 tasks first, found
        behind another task run ahead, kept its 8 and 23 preemptions on trio within the
        budget; attack36 N1.)"""

        def turns(tasks: list[int]) -> list[list[int]]:
            return [list(steps) for _, steps in itertools.groupby(tasks)]

        def tasks_of(candidate: list[list[int]]) -> list[int]:
            return [task for turn in candidate for task in turn]

        order = turns([task for task in best_run.decisions if task >= 0])
        # (a quarter of the budget at most, as the pairs below: a run of thousands of steps
        # has as many turns, and the searches after this one need the rest)
        until = min(budget, attempts + budget // 4)

        def going() -> bool:
            return best_run.preemptions > 2 and attempts < until

        async def fails_in(candidate: list[list[int]]) -> bool:
            return await fails(tasks_of(candidate), follow=_FromTaskOrder)

        # the first turns, twice as many each time: the race's own come early in most runs,
        # and the chunks below take out any the first that fails has too many
        length = 1
        while length < len(order) and going():
            if await fails_in(order[:length]):
                order = order[:length]
                break
            length *= 2
        # a task of no part in the race out of it whole: it runs when no task of the order can
        for left_out in list(dict.fromkeys(turn[0] for turn in order)):
            kept = [turn for turn in order if turn[0] != left_out]
            if kept and going() and await fails_in(kept):
                order = turns(tasks_of(kept))

        async def fails_without(start: int, end: int) -> bool:
            nonlocal order
            kept = order[:start] + order[end:]
            if await fails_in(kept):
                order = kept
                return True
            return False

        await _take_out_in_chunks(lambda: len(order), fails_without, going)
        index = 0
        while index < len(order) and going():
            task = order[index][0]
            later = next((at for at in range(index + 1, len(order)) if order[at][0] == task), None)
            if later is not None:
                put_off = [*order[index + 1 : later], order[index] + order[later]]
                candidate = turns(tasks_of(order[:index] + put_off + order[later + 1 :]))
                if await fails_in(candidate):
                    order = candidate
                    continue
            index += 1

    async def reduce() -> None:
        # (a run that failed with the fewest preemptions rarely gets shorter: once
        # _REDUCE_STALE tries in a row brought nothing, the rest of the budget is not spent
        # on it; a lost update at the end of a 2,464-step run took 500 runs, a minute)
        stale = 0

        def going() -> bool:
            return attempts < budget and stale < _REDUCE_STALE

        async def shorter(candidate: list[int]) -> bool:
            nonlocal stale
            if await fails(candidate):
                stale = 0
                return True
            stale += 1
            return False

        improved = True
        while improved and going():
            while best and best[-1] == 0:
                best.pop()
            improved = await _take_out_in_chunks(
                lambda: len(best), lambda start, end: shorter(best[:start] + best[end:]), going
            )
            for index in range(len(best)):
                for lower in (0, best[index] - 1) if index < len(best) else ():
                    if lower < 0 or lower >= best[index] or not going():
                        continue
                    candidate = best.copy()
                    candidate[index] = lower
                    if await shorter(candidate):
                        improved = True
                        break

    # Most races need one or two preemptions: try those schedules, within the length of the
    # run with none (position j of a candidate is its j-th choice: one past it preempts
    # nothing), from both ends in turn: a race at the end of a long run (a lost update at the
    # last of many takes) was past the budget from the front, where Exhaustive(1), deepest
    # choice first, found it at once; and past it from the end of a failing run 250 choices
    # longer than the run with none. Every task the run had may be the one to take out of
    # turn, whatever positions the failing run chose (8 tasks, a race needing the 6th at one
    # step: the failing run's widest choice was smaller, and 6 preemptions were reported where
    # 1 fails; attack35 F2). Those schedules are as many as the run's choices times its tasks:
    # 13 tasks racing over 52 steps spent the whole budget on them, keeping 15 to 44
    # preemptions where 2 or 3 fail (attack37). So a quarter of the budget goes to them, then
    # (while more than two preemptions are left) up to a quarter to the failing run's order
    # of tasks, then the one-preemption schedules go on to half the budget. Taken outwards
    # from anchors, in turns with both ends: a race late in a run of 709 steps, 100 choices
    # from its end, was past half the budget from both ends alone (attack37 F1). The first
    # anchor, every other turn, is where the tasks have taken as many steps as at the
    # failing run's decisive choice (the last of the shortest prefix that fails); the others
    # where the failing task took the step it failed at: a lost update that a checker task or
    # the scenario itself fails on at the end of the run was past the budget from there, and
    # 124 to 167 preemptions were reported where one fails (attack40).
    async def decisive_choice() -> tuple[Run, BaseException, int] | None:
        """The run of the shortest prefix of the failing run's positions that still fails
        (the rest in the loop's own order), its error, and the index of its last choice: the
        one that made the failure certain. Bisected between no prefix, which passes, and the
        whole, which fails: some choice turns a passing prefix into a failing one, and the
        tasks' steps there tell where one preemption may do the same. None if the budget ran
        out or a prefix diverged. Not kept: the search of the failing run's order of tasks
        does better from the failing run itself (a random walk's order of 775 preemptions
        went to 54, the order of its prefix of 398 nowhere)."""
        found = best.copy()
        passing, failing, failing_run, failing_error = 0, len(found), best_run, best_error
        while failing - passing > 1 and attempts < budget:
            middle = (passing + failing) // 2
            outcome = await attempted(found[:middle], keeping=False)
            if outcome is None:
                return None
            trial, trial_error = outcome
            if trial_error is not None and _same_failure(trial_error, error):
                failing, failing_run, failing_error = middle, trial, trial_error
            else:
                passing = middle
        if failing - passing > 1:
            return None
        return failing_run, failing_error, failing - 1

    unpreempted = await tried([]) if best_run.preemptions and attempts < budget else None
    length = len(best if unpreempted is None else unpreempted.positions)
    widest = max(*best, len(best_run.timeline().tasks) - 1, 1)
    placed: set[int] = set()  # the places whose schedules of one preemption were all tried
    resume: list[tuple[int, int]] = []  # (j, v) where they stopped

    def anchors(decisive: tuple[Run, BaseException, int] | None) -> list[int]:
        """Where in the run with none the best failing run's race most likely is: the
        choices :func:`_preempted_choices` gives for its *decisive* choice, then the one
        where its failing task took the step it failed at (:func:`_failing_step_choice`)."""
        if unpreempted is None:
            return []
        found = (
            [] if decisive is None else _preempted_choices(decisive[0], decisive[2], unpreempted)
        )
        failing_step = _failing_step_choice(best_run, unpreempted)
        return found if failing_step is None else [*found, failing_step]

    # the places whose every schedule of one preemption ran (none diverged): all of them, and
    # no schedule of one preemption fails, as Exhaustive(1) would have shown
    covered: set[int] = set()

    async def one_preemption(until: int, places: Iterator[int]) -> None:
        for j, first in itertools.chain(resume, ((j, 1) for j in places if j not in placed)):
            resume.clear()
            trial = None
            for v in range(first, widest + 1):
                if best_run.preemptions <= 1:
                    return
                if attempts >= until:
                    resume.append((j, v))
                    return
                trial = await tried([0] * j + [v])
                if trial is None:
                    break
                if len(trial.positions) <= j or trial.positions[j] < v:
                    covered.add(j)
                    break  # (v is past the choices at j: a larger one takes the last again)
            else:
                # (every task but one taken at j: no more can be enabled there)
                if trial is not None and widest >= len(trial.timeline().tasks) - 1:
                    covered.add(j)
            placed.add(j)

    decided_on = best_run
    decisive = None
    if unpreempted is not None and best_run.preemptions > 1:
        decisive = await decisive_choice()
    await one_preemption(budget // 4, _places(length, anchors(decisive)))
    await reorder()
    if decisive is not None:
        keep(decisive[0], decisive[1])
    if best_run is not decided_on and (decisive is None or best_run is not decisive[0]):
        # (the decisive choice of a run of fewer preemptions is nearer the race: a random
        # walk's of 775 set two tasks' distance 400 choices before it, the order of 54 it
        # came to had it 10 from the one preemption that fails; attack40)
        decisive = await decisive_choice() if best_run.preemptions > 1 else None
    # (on to half the budget, or an eighth more if the order took it: that order was where
    # the decisive choice came near the race; attack40)
    until = min(budget, max(budget // 2, attempts + budget // 8))
    await one_preemption(until, _places(length, anchors(decisive)))

    async def in_a_row(until: int, places: Iterator[int]) -> None:
        """Schedules of two or three preemptions, each after the first right where the task
        the one before ran ahead stops (blocks, ends, or lets another take a step): a window
        that several tasks must each get into (attack37 F2: a victim's window, late in the
        run, that two clearers must each run ahead into; the generic pairs below start from
        the front, and 315 preemptions were reported where 2 fail)."""

        async def ahead(prefix: list[int], made: int) -> bool:
            """False once the budget ran out."""
            for v in range(1, widest + 1):
                if attempts >= until:
                    return False
                if best_run.preemptions <= made + 1:
                    return True  # (as few already: fewer may be had nearer the front)
                at = len(prefix)
                trial = await tried([*prefix, v])
                if trial is None or len(trial.positions) <= at or trial.positions[at] < v:
                    break  # (v is past the choices there)
                if made + 2 > min(best_run.preemptions - 1, 3):
                    continue
                choices, decisions = trial.choice_steps, trial.decisions
                task = decisions[choices[at]]
                stops = next(
                    (c for c in range(at + 1, len(choices)) if decisions[choices[c]] != task),
                    None,
                )
                if stops is not None:
                    pause = [0] * (stops - at - 1)
                    if not await ahead([*prefix, v, *pause], made + 1):
                        return False
            return True

        for j in places:
            if best_run.preemptions <= 2 or not await ahead([0] * j, 0):
                return

    async def anchored_pairs(until: int) -> None:
        """Schedules of two preemptions, each where one of the decisive run's is in the run
        with none (:func:`_preempted_choices`, as the one-preemption schedules place its
        decisive choice): a preemption of the decisive run before its decisive choice first,
        then the decisive choice mapped into the run the first made; each with every task
        (the decisive run's chosen task may have run its part of the race already there).
        Two races in two separate windows, a lost update early and one late, need a
        preemption in each; the generic pairs below start from the front and reach the late
        one past the budget (attack41 ``two_lost``: 4 or 5 tasks, 3 to 7 preemptions were
        reported where 2 fail)."""
        if decisive is None or unpreempted is None:
            return
        decided, _, last = decisive
        firsts = [choice for choice in range(last) if decided.positions[choice]]
        for choice in (firsts[at] for at in _from_both_ends(len(firsts))):
            for j in _preempted_choices(decided, choice, unpreempted)[:1]:
                for v in range(1, widest + 1):
                    if best_run.preemptions <= 2 or attempts >= until:
                        return
                    first = await tried([0] * j + [v])
                    if first is None or len(first.positions) <= j or first.positions[j] < v:
                        break  # (v is past the choices at j)
                    for k in _preempted_choices(decided, last, first)[:2]:
                        if k <= j:
                            continue
                        for w in range(1, widest + 1):
                            if best_run.preemptions <= 2 or attempts >= until:
                                return
                            second = await tried([0] * j + [v] + [0] * (k - j - 1) + [w])
                            if second is None or len(second.positions) <= k:
                                break
                            if second.positions[k] < w:
                                break  # (w is past the choices at k)

    await anchored_pairs(min(budget, attempts + budget // 8))
    # two of the failing run's own choices out of turn, the others taken back, while those
    # pairs are few (a quarter of the budget at most): the generic pairs below switch to the
    # next task alone, and a race needing the last of 8 tasks first kept its 9 preemptions
    # within the budget on trio (attack36 N1)
    found = [(index, position) for index, position in enumerate(best) if position]
    if math.comb(len(found), 2) <= budget // 4:
        for (j, first), (k, second) in itertools.combinations(found, 2):
            if best_run.preemptions <= 2 or attempts >= budget:
                break
            await fails([0] * j + [first] + [0] * (k - j - 1) + [second])
    # (up to three quarters of the budget: a race needing three preemptions, which no pair
    # fails, spent the rest on them, and dropping and lowering choices never ran; attack37 F2)
    for j, k in itertools.combinations(range(length), 2):
        if best_run.preemptions <= 2 or attempts >= budget * 3 // 4:
            break
        await fails([0] * j + [1] + [0] * (k - j - 1) + [1])
    # (after those, which found races near the front in their own order, an eighth of the
    # budget more; nearest the first anchor only: a place costs as many runs as the tasks to
    # the power of the preemptions)
    first_anchor = anchors(decisive)[:1]
    if first_anchor and best_run.preemptions > 2:
        await in_a_row(min(budget, attempts + budget // 8), _nearest(length, first_anchor[0]))
    # (then each preemption left taken out, others kept where they were, and moved: after
    # the searches above, whose places follow the decisive choice of the run they start
    # from; from a run of fewer preemptions those searches did worse: a window two tasks
    # must enter in turn among 9 kept 3 where 2 fail, and a random walk's order of 45
    # preemptions among 13 tasks 12. Slid while they are few: a slide tries as many runs as
    # pairs of them, times the steps it moves each. What they take, dropping and lowering
    # choices below no longer has: attack45's deque check-then-act, PCT seed 3, kept 5
    # where it had kept 4; run first, they left too little for the slides that brought 2)
    await drop_preemptions(budget)
    if 2 < best_run.preemptions <= 6:
        await slide_and_drop(budget)
    await reduce()
    # (a failure with more preemptions than Exhaustive takes is searched up to its bound: a
    # search that far never completes within a shrink budget anyway, and proves nothing)
    searched = min(best_run.preemptions, MAX_PREEMPTION_BOUND + 1)
    for bound in range(searched):
        if not injections and unpreempted is not None and bound <= 1:
            # The run with none ran above, and so did the schedules of one preemption at the
            # places covered: those left are run now, not Exhaustive(1)'s every one again (a
            # race needing two among 4-5 tasks was proven fewest in 0 of 24 explorations:
            # the budget ran out in that search; attack41).
            if bound == 1:
                await one_preemption(budget, _places(length, []))
                if best_run.preemptions <= 1:
                    await reduce()
                    return best_run, best_error, True
                if len(covered) < length:
                    return best_run, best_error, False  # the budget ran out first
            continue
        searches = [Exhaustive(bound).with_cancels_at(cancels, outlasts)]
        if injections:
            # then with as many cancellations injected anywhere: in a schedule with fewer
            # preemptions the window one aims at comes at another step (the loop's own
            # order runs the tasks in turns where the failure let one run ahead)
            searches.append(Exhaustive(bound, cancel=injections).with_outlasts_at(outlasts))
        for strategy in searches:
            schedule = 0
            while attempts < budget:
                chooser = strategy.chooser(schedule)
                if chooser is None:
                    break  # no schedule with at most *bound* preemptions fails
                schedule += 1
                attempts += 1
                try:
                    trial, trial_error = await _run_once(scenario, chooser, limits)
                except ReplayDivergedError:
                    return best_run, best_error, False  # not deterministic: nothing to prove
                if keep(trial, trial_error):
                    await reduce()  # the fewest preemptions now: fewer steps at that
                    return best_run, best_error, True
            else:
                return best_run, best_error, False  # the budget ran out first
    return best_run, best_error, searched == best_run.preemptions


async def _take_out_in_chunks(
    length: Callable[[], int],
    fails_without: Callable[[int, int], Awaitable[bool]],
    going: Callable[[], bool],
) -> bool:
    """Take chunks out of a sequence for as long as what is left still fails: half of it at a
    time, then halves of that, down to one item at a time (delta debugging's complements).
    *fails_without(start, end)* tries the sequence without its items *start* to *end* - 1 and
    says whether that failed, in which case the sequence is now what that run made of it
    (*length()* is read again: its length may have changed either way). Stops when *going()*
    says so. Whether any chunk went."""
    went = False
    chunk = max(length() // 2, 1)
    while chunk >= 1 and going():
        start = 0
        while start < length() and going():
            if await fails_without(start, min(start + chunk, length())):
                went = True
            else:
                start += chunk
        chunk //= 2
    return went


def _failing_step_choice(failed: Run, other: Run) -> int | None:
    """The choice of *other* at (or first after) the step at which the task that failed in
    *failed* (a task that raised, else the one that took the last step) takes as many steps
    as it took in *failed* (its last, if it takes fewer): where in *other* the failure's race
    most likely is. None if *failed* took no step of a task."""
    raised = (outcome.task for outcome in failed.timeline().outcomes if outcome.error is not None)
    task = next(raised, None)
    if task is None:
        task = next((task for task in reversed(failed.decisions) if task >= 0), None)
    if task is None:
        return None
    steps = [step for step, chosen in enumerate(other.decisions) if chosen == task]
    if not steps:
        return None
    taken = failed.decisions.count(task)
    step = steps[min(taken, len(steps)) - 1]
    return bisect.bisect_left(other.choice_steps, step)


def _preempted_choices(failed: Run, choice: int, other: Run) -> list[int]:
    """The choices of *other* at which a task that had taken steps before *choice* of
    *failed* has taken as many, and is about to take the next: preempting it there for the
    task *failed* chose makes the state of *failed* at that choice as nearly as one
    preemption can. The task that ran just before it first, the others in task order."""
    if choice >= len(failed.choice_steps):
        return []
    step = failed.choice_steps[choice]
    before = [task for task in failed.decisions[:step] if task >= 0]
    if not before:
        return [0]  # (the first choice: the same in every run)
    chosen = failed.decisions[step]
    tasks = sorted(set(before) - {chosen})
    if before[-1] != chosen:
        tasks.remove(before[-1])
        tasks.insert(0, before[-1])
    choices = []
    for task in tasks:
        steps = [at for at, taken in enumerate(other.decisions) if taken == task]
        taken = before.count(task)
        if taken < len(steps):
            choices.append(bisect.bisect_left(other.choice_steps, steps[taken]))
    return choices


def _nearest(length: int, anchor: int) -> Iterator[int]:
    """Every index of a sequence of *length* once, outwards from *anchor*, nearest first."""
    for distance in range(length):
        for index in (anchor - distance, anchor + distance)[: 2 if distance else 1]:
            if 0 <= index < length:
                yield index


def _places(length: int, anchors: Sequence[int]) -> Iterator[int]:
    """Every index of a sequence of *length* once: outwards (nearest first) from the first
    of *anchors* every other time, from the others and from both ends
    (:func:`_from_both_ends`) in turns in between."""

    def in_turns(sources: Sequence[Iterator[int]]) -> Iterator[int]:
        for index in itertools.chain.from_iterable(itertools.zip_longest(*sources)):
            if index is not None:
                yield index

    others = in_turns([*(_nearest(length, each) for each in anchors[1:]), _from_both_ends(length)])
    seen: set[int] = set()
    for index in in_turns([_nearest(length, anchors[0]), others] if anchors else [others]):
        if index not in seen:
            seen.add(index)
            yield index


def _from_both_ends(length: int) -> Iterator[int]:
    """0, length - 1, 1, length - 2, ...: every index of a sequence of *length*, outside in."""
    low, high = 0, length - 1
    while low <= high:
        yield low
        if high != low:
            yield high
        low, high = low + 1, high - 1


def _failure(
    scenario: Scenario,
    run: Run,
    error: BaseException,
    *,
    strategy: str,
    seed: int,
    schedule: int,
    found: Run | None,
    command: str | None,
    fewest: bool | None = None,
) -> Failure:
    """The failure of *run*; *found* is the run as found before shrinking, if it was shrunk,
    and *fewest* whether shrinking ruled out fewer preemptions."""
    token = ReplayToken(
        strategy=strategy,
        seed=seed,
        schedule=schedule,
        digest=digest_of(run.trail()),
        decisions=run.decisions,
    )
    # a thread_timeout other than the default goes into the replay command
    thread_timeout = (
        None if run.thread_timeout == _DEFAULT_LIMITS.thread_timeout else float(run.thread_timeout)
    )
    if command is None and not _importable(scenario):
        limits = (
            ""
            if thread_timeout is None
            else f", limits=avcm.testing.Limits(thread_timeout={thread_timeout!r})"
        )
        command = f"avcm.testing.replay(<scenario>, {{token_literal}}{limits})"
    return Failure(
        scenario=scenario_name(scenario),
        error=error,
        token=token,
        timeline=run.timeline(),
        backend=sniffio.current_async_library() or "?",
        schedules=schedule + 1,
        shrunk_from=None if found is None else (found.steps, found.preemptions),
        command=command,
        thread_timeout=thread_timeout,
        fewest=fewest,
    )


async def explore_async(
    scenario: Scenario,
    *,
    strategy: Strategy | None = None,
    schedules: int = 1000,
    limits: Limits | None = None,
    shrink: bool = True,
    shrink_budget: int = 500,
    command: str | None = None,
    on_progress: Callable[[int], object] | None = None,
    until_covered: int | None = None,
) -> Exploration:
    """Run *scenario* under up to *schedules* schedules of *strategy* (:class:`Portfolio` by
    default) in the running event loop; stop at the first failure, shrink it and return it.
    *on_progress* is called with the number of schedules run after each one (a progress
    bar's ``update``, for instance). With *until_covered*, also stop once that many schedules
    in a row ran no order of conflicting steps not seen before (``covered`` in the result;
    ``distinct_orders`` counts those orders); not with :class:`Exhaustive`
    (:class:`~avcm.InvalidError`: it ends by itself).

    Under a real clock, simulated latency takes real time: prefer :func:`explore`, or a
    virtual clock (pytest-trio's ``autojump_clock``).
    """
    schedules = check_int(schedules, "schedules", 1)
    check_int(shrink_budget, "shrink_budget", 0)
    strategy = Portfolio() if strategy is None else strategy
    if not isinstance(strategy, Strategy):
        raise InvalidError(f"strategy must be an avcm.testing.Strategy, not {strategy!r}")
    check_until_covered(until_covered, strategy)
    limits = checked_limits(limits)
    ran = 0
    exhausted = covered = False
    max_steps_seen = 0
    seen: set[str] = set()
    orders: set[int] = set()  # (hashes: a hash seed changes none of their count)
    points: collections.Counter[str] = collections.Counter()
    stale = 0  # schedules in a row that ran no order of conflicting steps not seen before
    for schedule in range(schedules):
        chooser = strategy.chooser(schedule)
        if chooser is None:
            exhausted = True
            break
        with _schedule_random(strategy.name, strategy.seed, schedule):
            run, error = await _run_once(scenario, chooser, limits)
        ran += 1
        if on_progress is not None:
            on_progress(ran)
        strategy.finished(run.steps)
        max_steps_seen = max(max_steps_seen, run.steps)
        seen.add(digest_of(run.trail()))
        order = hash(run.conflict_order())
        stale = 0 if order not in orders else stale + 1
        orders.add(order)
        points.update(step.point for step in run.timeline().steps if not step.injected)
        if error is None:
            if until_covered is not None and stale >= until_covered:
                covered = True
                break
            continue
        found, fewest = None, None
        if shrink:
            with _schedule_random(strategy.name, strategy.seed, schedule):
                run, error, found, fewest = await shrunk(
                    scenario, run, error, limits, shrink_budget
                )
        failure = _failure(
            scenario,
            run,
            error,
            strategy=strategy.name,
            seed=strategy.seed,
            schedule=schedule,
            found=found,
            command=command,
            fewest=fewest,
        )
        return Exploration(
            scenario=failure.scenario,
            strategy=described(strategy),
            seed=strategy.seed,
            backend=failure.backend,
            schedules=ran,
            exhausted=False,
            failure=failure,
            max_steps_seen=max_steps_seen,
            distinct_schedules=len(seen),
            distinct_orders=len(orders),
            points=tuple(sorted(points.items())),
        )
    return Exploration(
        scenario=scenario_name(scenario),
        strategy=described(strategy),
        seed=strategy.seed,
        backend=sniffio.current_async_library() or "?",
        schedules=ran,
        exhausted=exhausted,
        failure=None,
        max_steps_seen=max_steps_seen,
        distinct_schedules=len(seen),
        distinct_orders=len(orders),
        points=tuple(sorted(points.items())),
        covered=covered,
    )


def check_until_covered(until_covered: int | None, strategy: Strategy | None) -> None:
    """:class:`~avcm.InvalidError` unless *until_covered* is None or a count of schedules
    for a strategy that draws its schedules: :class:`Exhaustive` ends by itself, and its
    search, depth first, reorders a run's last steps first, so that many schedules in a row
    with no new order of conflicting steps say nothing of those it has yet to run (two tasks
    on a lock each: 20 schedules, 2 orders, the second met at the eleventh, attack65)."""
    if until_covered is None:
        return
    check_int(until_covered, "until_covered", 1)
    if isinstance(strategy, Exhaustive):
        raise InvalidError(
            "until_covered is for strategies that draw their schedules (PCT, RandomWalk, "
            f"Portfolio), not {strategy.name}: an exhaustive search ends by itself, and depth "
            "first it runs many schedules with no new order before the next one"
        )


def explore(
    scenario: Scenario,
    *,
    strategy: Strategy | None = None,
    schedules: int = 1000,
    backend: str = "trio",
    limits: Limits | None = None,
    shrink: bool = True,
    shrink_budget: int = 500,
    command: str | None = None,
    on_progress: Callable[[int], object] | None = None,
    until_covered: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    connect_timeout: float | None = None,
) -> Exploration:
    """:func:`explore_async` in a new event loop of *backend* on virtual time (trio's
    ``MockClock``, or avcm's virtual-time asyncio loop), so latency costs no wall time.

    With *workers* (a local Dask cluster of that many processes) or *scheduler* (the address
    of an existing Dask cluster's scheduler; its workers need avcm and the scenario's module),
    the exploration is split into parts, each one a process could run alone, spread over the
    workers, and merged (``parts`` of the result has each): without a *strategy*, a portfolio
    (:data:`PORTFOLIO`: PCT at depths 1 to 3 and a random walk, part *i* with seed
    ``i // 4``), at least four parts; with a PCT or random walk, one part per worker, seeds
    ``strategy.seed``, ``+1``, ...; with :class:`Exhaustive`, parts by prefix of its search
    (four per worker, each named with its prefix), which together run each schedule of the
    whole search once.

    *schedules* caps the whole exploration, as in one process: it is shared between the parts
    (the first ones one more where it does not divide; fewer parts than planned where there
    are fewer schedules), the same every run. Parts of an exhaustive search that end before
    their share leave the rest to those cut short by theirs, which run again with the bigger
    share (from their start: their first schedules are the same again, and counted once) until
    no share is left; so the search says ``exhausted`` exactly when one process would (every
    part ended its own, within the cap). A part re-run alone from its prefix runs the same
    schedules; to see it ``exhausted`` too, give it one schedule more than it ran (a search
    knows it has ended only when it looks for one more). *until_covered* is each part's own:
    a part stops once that many of its schedules in a row ran none it had not run before
    (different strategies and seeds cover differently: there is no shared coverage to stop
    the others), and the result is ``covered`` only if every part was.

    The failure reported is that of the first failing part in their order, as that part's
    strategy and seed find it in one process (same token, same replay), whichever ended
    first: the parts before it are waited for, those after it cancelled. ``parts`` has every
    part that ran, in their order: all those up to the reported one, and those after it that
    ended before they could be cancelled (how many depends on timing, and so do the counts
    merged from them; the failure does not), and :func:`check` says them all. Needs Dask
    (``pip install 'avcm[cluster]'``), imported only then; the scenario is sent to the
    workers (by reference if importable, else pickled by value). *on_progress* is called as
    parts end, with the schedules counted so far. :class:`~avcm.InvalidError` for *workers*
    not a whole number of at least 1, a *scheduler* that is not an address, or both, or a
    *connect_timeout* that is not a positive number of seconds; :class:`ClusterError`
    (``ECONNREFUSED``) for a scheduler that refuses the connection (at once), or does not
    answer within *connect_timeout* seconds (``None``: :data:`CONNECT_TIMEOUT`, 5 s); nothing
    run either way.
    """
    checked_limits(limits)
    check_until_covered(until_covered, strategy)
    if connect_timeout is not None:
        from ._parallel import check_connect_timeout

        check_connect_timeout(connect_timeout)
    if workers is not None or scheduler is not None:
        from ._parallel import explore_parallel

        return explore_parallel(
            scenario,
            strategy=strategy,
            schedules=schedules,
            backend=backend,
            limits=limits,
            shrink=shrink,
            shrink_budget=shrink_budget,
            command=command,
            on_progress=on_progress,
            until_covered=until_covered,
            workers=workers,
            scheduler=scheduler,
            connect_timeout=connect_timeout,
        )
    return run_on_virtual_time(
        backend,
        partial(
            explore_async,
            scenario,
            strategy=strategy,
            schedules=schedules,
            limits=limits,
            shrink=shrink,
            shrink_budget=shrink_budget,
            command=command,
            on_progress=on_progress,
            until_covered=until_covered,
        ),
    )


def check(
    scenario: Scenario,
    *,
    strategy: Strategy | None = None,
    schedules: int = 1000,
    backend: str = "trio",
    limits: Limits | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    connect_timeout: float | None = None,
) -> Exploration:
    """Like :func:`explore`, but raise :class:`RaceFound` (an ``AssertionError``) on a failure:
    a race test in one line. *workers* and *scheduler*: as for :func:`explore`."""
    result = explore(
        scenario,
        strategy=strategy,
        schedules=schedules,
        backend=backend,
        limits=limits,
        workers=workers,
        scheduler=scheduler,
        connect_timeout=connect_timeout,
    )
    if result.failure is not None:
        raise RaceFound(result.failure, result)
    return result


async def replay_async(
    scenario: Scenario,
    token: ReplayToken | str,
    *,
    limits: Limits | None = None,
    command: str | None = None,
) -> Failure | None:
    """Run *scenario* once under the schedule of *token*; the failure, or ``None`` if it
    passed. :class:`ReplayDivergedError` if the run does not follow the recording."""
    if not isinstance(token, ReplayToken):
        token = ReplayToken.parse(token)
    limits = checked_limits(limits)
    chooser = Replay(token.decisions)
    with _schedule_random(token.strategy, token.seed, token.schedule):
        run, error = await _run_once(scenario, chooser, limits)
    chooser.check_complete(run.steps)
    digest = digest_of(run.trail())
    if digest != token.digest:
        raise ReplayDivergedError(
            f"replay diverged: the same tasks ran in the same order, but through other sync "
            f"points (digest {digest}, recorded {token.digest}): the code under test changed"
        )
    if error is None:
        return None
    failure = _failure(
        scenario,
        run,
        error,
        strategy=token.strategy,
        seed=token.seed,
        schedule=token.schedule,
        found=None,
        command=command,
    )
    return dataclasses.replace(failure, replayed=True)


def replay(
    scenario: Scenario,
    token: ReplayToken | str,
    *,
    backend: str = "trio",
    limits: Limits | None = None,
) -> Failure | None:
    """:func:`replay_async` in a new event loop of *backend* on virtual time."""
    if not isinstance(token, ReplayToken):
        token = ReplayToken.parse(token)
    return run_on_virtual_time(backend, partial(replay_async, scenario, token, limits=limits))
