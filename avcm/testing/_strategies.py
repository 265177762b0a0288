"""Scheduling strategies: who runs next, at every step of a controlled run.

At each step the scheduler hands a :class:`Chooser` the tasks that can run, as task ids in the
order the event loop's own run queue runs them: first come, first run, a task that yields
behind the tasks that became runnable before it (those its step woke too; tasks made
runnable by the same step in the order asyncio made them so, but by id on trio and where a
cancellation woke them: see :meth:`Run._in_turn`). A task chosen out of that turn runs on
ahead of the others, until it blocks, as when their wakeups come late: it comes first while
it does. Position 0 is therefore "no preemption": the plain run's schedule, or the one
running ahead going on; any other position is one preemption, which is what shrinking and
:class:`Exhaustive`'s bound count. A :class:`Strategy` makes one chooser per schedule:
:class:`RandomWalk`, :class:`PCT`, :class:`Portfolio` (both, in turns), :class:`Exhaustive`,
and the replays.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from .. import InvalidError
from ..lowlevel import check_int
from ._errors import ReplayDivergedError
from ._token import CALLED_BACK, TIMER_FIRST

__all__ = [
    "PCT",
    "PORTFOLIO",
    "Chooser",
    "Exhaustive",
    "FixedChances",
    "FromIndices",
    "Portfolio",
    "RandomWalk",
    "Replay",
    "Strategy",
]


MAX_PREEMPTION_BOUND = 32
"""The largest preemption bound :class:`Exhaustive` takes: far beyond what a search completes."""


class Chooser(Protocol):
    """Picks the next task of one run.

    A chooser may also have ``inject(step, running) -> int | None``: called before each choice
    with the ids of the tasks still running (and not cancelled yet), it returns one to cancel
    there, or None. The cancellation is a step of its own in the timeline and the token.

    And ``outlast(step) -> bool``: called where the run would wait for worker threads a
    controlled task waits for while a timer is pending (a thread's work takes no virtual time,
    so by default it returns first); True lets the threads outlast that timer, which falls
    due before they hand the loop anything, as a real loop's does when a thread takes longer:
    at once if no task is runnable, else once the runnable tasks all wait (or only spin).
    Also a step of its own.

    And ``called_back(step)``: told of a step that is no choice, where a call back into the
    loop from a thread whose caller left came in (a replay checks its recording has one there).
    """

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        """Return a position in *enabled*: task ids in the event loop's own order, a task
        running ahead of its turn first (see the module's docstring). *continuing* is true
        when there is more than one: any position but 0 is then a preemption."""
        ...


class Strategy(ABC):
    """Makes the chooser of each schedule of an exploration. ``name`` and ``seed`` go into
    replay tokens; a replay never needs the strategy again, only the token's decisions."""

    name: str
    seed: int

    @abstractmethod
    def chooser(self, schedule: int) -> Chooser | None:
        """The chooser of schedule number *schedule*, or ``None`` when there are no more."""

    def finished(self, steps: int) -> None:  # noqa: B027 - optional feedback
        """Told how many steps the schedule just run took."""

    def with_seed(self, seed: int) -> Strategy:
        """A new strategy like this one as it was made (nothing learnt), with *seed*: what a
        parallel exploration runs on each worker. :class:`~avcm.InvalidError` (``EINVAL``) if
        the strategy has no seed to vary."""
        raise InvalidError(
            f"{self!r} cannot be spread over workers: it has no with_seed(seed) to make one "
            "like it with another seed"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} seed={self.seed}>"


class _Cancels:
    """Where a schedule injects cancellations: *count* steps among the first *steps*, each
    cancelling a task drawn from those still running. Its own random stream, so that a
    strategy without cancellations runs the schedules it always ran."""

    __slots__ = ("_points", "_random")

    def __init__(self, rng: random.Random, count: int, steps: int) -> None:
        self._random = rng
        self._points = set(rng.sample(range(1, max(steps, count) + 1), count)) if count else set()

    def inject(self, step: int, running: Sequence[int]) -> int | None:
        if step not in self._points or not running:
            return None
        return running[self._random.randrange(len(running))]


def _cancels(strategy: str, seed: int, schedule: int, count: int, steps: int) -> _Cancels:
    return _Cancels(random.Random(f"cancel:{strategy}:{seed}:{schedule}"), count, steps)


class _SlowThreads:
    """When a schedule lets worker threads outlast the next timer: at each chance, with
    probability one half, at most *count* times. Its own random stream, as :class:`_Cancels`
    has."""

    __slots__ = ("_left", "_random")

    def __init__(self, rng: random.Random, count: int) -> None:
        self._random = rng
        self._left = count

    def outlast(self, step: int) -> bool:
        if not self._left or self._random.random() < 0.5:
            return False
        self._left -= 1
        return True


def _slow_threads(strategy: str, seed: int, schedule: int, count: int) -> _SlowThreads:
    return _SlowThreads(random.Random(f"slow:{strategy}:{seed}:{schedule}"), count)


_EXHAUSTIVE = "exhaustive"  # the start of every name Exhaustive gives itself


def is_search(strategy: str) -> bool:
    """Whether the strategy named *strategy* (its ``name``, as a replay token records it) is a
    search (:class:`Exhaustive`), whose schedules run a shared prefix again, not one that draws
    each schedule."""
    return strategy.startswith(_EXHAUSTIVE)


def _named(base: str, cancel: int, slow_threads: int) -> str:
    name = f"{base}-c{cancel}" if cancel else base
    return f"{name}-s{slow_threads}" if slow_threads else name


class _Injecting:
    """What a chooser of a random strategy does besides choosing a task: cancellations and
    slow threads, each from its own stream."""

    __slots__ = ("_cancels", "_slow")

    def __init__(self, cancels: _Cancels, slow: _SlowThreads) -> None:
        self._cancels = cancels
        self._slow = slow

    def inject(self, step: int, running: Sequence[int]) -> int | None:
        return self._cancels.inject(step, running)

    def outlast(self, step: int) -> bool:
        return self._slow.outlast(step)


class _LoopOrderChooser(_Injecting):
    """The event loop's own order at every step (no preemption): the first schedule of a
    random strategy, the one a plain run takes."""

    __slots__ = ()

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        return 0


class _RandomChooser(_Injecting):
    __slots__ = ("_random",)

    def __init__(self, rng: random.Random, cancels: _Cancels, slow: _SlowThreads) -> None:
        super().__init__(cancels, slow)
        self._random = rng

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        return self._random.randrange(len(enabled))


class RandomWalk(Strategy):
    """At every step, any task that can run, uniformly at random; the first schedule is the
    event loop's own order, the one a plain run takes (a bug every plain run shows is found
    there, as by ``Exhaustive(0)``).

    With *cancel* > 0, each schedule also cancels a running task at *cancel* random steps
    (among the longest run seen so far): cancellation injection, replayable from the token.
    With *slow_threads* > 0, up to that many times a schedule, worker threads at work outlast
    the next timer (at each chance, with probability one half; see :class:`Chooser`).
    """

    def __init__(self, seed: int = 0, *, cancel: int = 0, slow_threads: int = 0) -> None:
        self.seed = check_int(seed, "RandomWalk seed", 0)
        self.cancel = check_int(cancel, "RandomWalk cancel", 0, 64)
        self.slow_threads = check_int(slow_threads, "RandomWalk slow_threads", 0, 64)
        self.steps = 8
        self.name = _named("random", self.cancel, self.slow_threads)

    def with_seed(self, seed: int) -> RandomWalk:
        return RandomWalk(seed, cancel=self.cancel, slow_threads=self.slow_threads)

    def chooser(self, schedule: int) -> Chooser:
        cancels = _cancels("random", self.seed, schedule, self.cancel, self.steps)
        slow = _slow_threads("random", self.seed, schedule, self.slow_threads)
        if schedule == 0:
            return _LoopOrderChooser(cancels, slow)
        return _RandomChooser(random.Random(f"random:{self.seed}:{schedule}"), cancels, slow)

    def finished(self, steps: int) -> None:
        self.steps = max(self.steps, steps)


class _PctChooser(_Injecting):
    """Highest priority runs; at each change point the task about to run drops below all.
    Change points are counted in choice points, the steps at which more than one task can
    run: at a step with one, a change point would change nothing of that step (a driver
    that spawns a task per request and waits for each had a thousand such steps before its
    race, and PCT no longer found a one-preemption bug there, attack61 F4)."""

    __slots__ = ("_changes", "_depth", "_priority", "_random", "choices")

    def __init__(
        self,
        rng: random.Random,
        depth: int,
        steps: int,
        cancels: _Cancels,
        slow: _SlowThreads,
    ) -> None:
        super().__init__(cancels, slow)
        self._random = rng
        self._depth = depth
        self._priority: dict[int, float] = {}
        # d-1 change points among the first *steps* steps; the i-th sets priority d-1-i
        points = rng.sample(range(1, max(steps, depth) + 1), depth - 1)
        self._changes = {step: float(depth - 1 - i) for i, step in enumerate(points)}
        self.choices = 0  # choice points so far (what PCT learns its k from)

    def _priority_of(self, task: int) -> float:
        priority = self._priority.get(task)
        if priority is None:  # a new task: a random priority above every changed one
            priority = self._priority[task] = self._depth + self._random.random()
        return priority

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        position = max(range(len(enabled)), key=lambda i: self._priority_of(enabled[i]))
        if not continuing:
            return position
        self.choices += 1
        lowered = self._changes.get(self.choices)
        if lowered is not None:
            self._priority[enabled[position]] = lowered
            position = max(range(len(enabled)), key=lambda i: self._priority_of(enabled[i]))
        return position


class PCT(Strategy):
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010).

    Each task gets a random priority and the highest-priority task that can run always runs;
    at *depth* - 1 random steps the running task drops to the lowest priority. A bug of depth
    *d* among *n* tasks and *k* steps is found with probability at least 1/(n k^(d-1)) per
    schedule. Here *k* counts the choice points only (the steps at which more than one task
    can run), and is learnt: the most a schedule had so far (``steps`` to start with). The
    first schedule is the event loop's own order, the one a plain run takes: priorities are
    not that order, and a bug every plain run shows (a lost update after a poll for a flag)
    was missed in 50 schedules.

    With *cancel* > 0, each schedule also cancels a running task at *cancel* random steps
    among the first *k*: cancellation injection, replayable from the token. With
    *slow_threads* > 0, up to that many times a schedule, worker threads at work outlast the
    next timer (at each chance, with probability one half; see :class:`Chooser`).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        depth: int = 3,
        steps: int = 8,
        cancel: int = 0,
        slow_threads: int = 0,
    ) -> None:
        self.seed = check_int(seed, "PCT seed", 0)
        self.depth = check_int(depth, "PCT depth", 1, 64)
        self.steps = self._first_steps = check_int(steps, "PCT steps", 1)
        self.choice_points = self.steps  # PCT's k: the most choice points a schedule had
        self._last: _PctChooser | None = None
        self.cancel = check_int(cancel, "PCT cancel", 0, 64)
        self.slow_threads = check_int(slow_threads, "PCT slow_threads", 0, 64)
        self.name = _named(f"pct-d{self.depth}", self.cancel, self.slow_threads)

    def with_seed(self, seed: int) -> PCT:
        return PCT(
            seed,
            depth=self.depth,
            steps=self._first_steps,
            cancel=self.cancel,
            slow_threads=self.slow_threads,
        )

    def chooser(self, schedule: int) -> Chooser:
        rng = random.Random(f"pct:{self.seed}:{self.depth}:{schedule}")
        cancels = _cancels("pct", self.seed, schedule, self.cancel, self.steps)
        slow = _slow_threads("pct", self.seed, schedule, self.slow_threads)
        if schedule == 0:
            self._last = None
            return _LoopOrderChooser(cancels, slow)
        self._last = _PctChooser(rng, self.depth, self.choice_points, cancels, slow)
        return self._last

    def finished(self, steps: int) -> None:
        self.steps = max(self.steps, steps)  # (where cancellations are injected: any step)
        if self._last is not None:
            self.choice_points = max(self.choice_points, self._last.choices)


PORTFOLIO: tuple[Callable[[int], Strategy], ...] = (
    partial(PCT, depth=1),
    partial(PCT, depth=2),
    partial(PCT, depth=3),
    RandomWalk,
)
"""The strategies :class:`Portfolio` takes turns with, and a parallel exploration without a
strategy runs, part *i* with ``PORTFOLIO[i % 4]`` and seed ``seed + i // 4``: different
strategies find different bugs first."""


class Portfolio(Strategy):
    """The strategies of :data:`PORTFOLIO` in turns, a schedule each: PCT at depths 1, 2 and
    3 and a random walk, all with *seed* (and *cancel*, *slow_threads*). What
    :func:`~avcm.testing.explore` runs without a strategy.

    PCT's depth counts the priority changes a schedule needs from running the task of
    highest priority until it blocks, not preemptions from the event loop's own order: a bug
    one preemption away from that order may need several. Three tasks that each check a
    count below 2, yield, then raise it and yield again overflow it at one preemption
    (``Exhaustive(1)`` finds it at its third schedule, a random walk in 4 to 49), but only
    at PCT depth 4: depths 1 to 3 missed it in thousands of schedules (attack53). A bug
    that only priorities reach, the random walk may miss for long. Schedule 0 is the loop's
    own order (every part's first is that order: it runs once); then each part in turn runs
    its next schedule, so schedule *s* is part ``(s - 1) % 4``'s schedule ``(s - 1) // 4 +
    1``, and a token names the portfolio's schedule.
    """

    def __init__(self, seed: int = 0, *, cancel: int = 0, slow_threads: int = 0) -> None:
        self.seed = check_int(seed, "Portfolio seed", 0)
        self.cancel = check_int(cancel, "Portfolio cancel", 0, 64)
        self.slow_threads = check_int(slow_threads, "Portfolio slow_threads", 0, 64)
        self.parts: tuple[Strategy, ...] = tuple(
            make(self.seed, cancel=self.cancel, slow_threads=self.slow_threads)  # type: ignore[call-arg]
            for make in PORTFOLIO
        )
        self.name = _named("portfolio", self.cancel, self.slow_threads)

    def with_seed(self, seed: int) -> Portfolio:
        return Portfolio(seed, cancel=self.cancel, slow_threads=self.slow_threads)

    def part(self, schedule: int) -> tuple[Strategy, int]:
        """Which part runs schedule *schedule*, and as its schedule number what."""
        if schedule == 0:
            return self.parts[0], 0
        count = len(self.parts)
        return self.parts[(schedule - 1) % count], (schedule - 1) // count + 1

    def chooser(self, schedule: int) -> Chooser | None:
        part, number = self.part(schedule)
        return part.chooser(number)

    def finished(self, steps: int) -> None:
        for part in self.parts:  # (each learns the longest run seen: PCT's k)
            part.finished(steps)


_TASK, _CANCEL, _SLOW = 0, 1, 2  # what an exhaustive search's decision decides


class _ExhaustiveChooser:
    __slots__ = (
        "_bound",
        "_cancel",
        "_cancels_at",
        "_fixed",
        "_outlasts_at",
        "_prefix",
        "_slow",
        "problem",
        "trace",
    )

    def __init__(
        self,
        prefix: Sequence[int],
        fixed: int = 0,
        bound: int = 0,
        *,
        cancel: int = 0,
        slow_threads: int = 0,
        cancels_at: dict[int, int] | None = None,
        outlasts_at: FixedChances | None = None,
    ) -> None:
        self._prefix = prefix
        # the first *fixed* positions are a prefix the search was restricted to: the user's,
        # checked here against the run (with *bound* preemptions at most), not backtracked
        self._fixed = fixed
        self._bound = bound
        # up to *cancel* injections and *slow_threads* timers that threads outlast, where
        # being decisions of the search; or both fixed in advance (cancellations: step ->
        # task; timers: by chance), which are no decision
        self._cancel = cancel
        self._slow = slow_threads
        self._cancels_at = cancels_at
        self._outlasts_at = outlasts_at
        self.problem: str | None = None
        # per decision: (how many options, position chosen, whether a position but 0 is a
        # preemption, preemptions before it, what it decides): a choice of task at every
        # step; with *cancel*, before it, whether to cancel a task (0: no, i: the i-th of the
        # running tasks); with *slow_threads*, at each chance, whether threads outlast the
        # next timer (0: no, 1: yes)
        self.trace: list[tuple[int, int, bool, int, int]] = []

    def _preemptions(self) -> int:
        for _, position, continuing, preemptions, kind in reversed(self.trace):
            if kind == _TASK:
                return preemptions + (continuing and position > 0)
        return 0

    def _position(self, options: int, continuing: bool, preemptions: int) -> int:
        decision = len(self.trace)
        position = self._prefix[decision] if decision < len(self._prefix) else 0
        # without injections every decision is a step's choice of task
        name = f"decision {decision}" if self._cancel or self._slow else f"step {decision}"
        if decision < self._fixed:
            if self.problem is not None:
                pass
            elif position >= options:
                self.problem = f"{name} has {options} choice(s), not {position + 1}"
            elif position and continuing and preemptions >= self._bound:
                self.problem = (
                    f"position {position} at {name} is preemption {preemptions + 1}, "
                    f"beyond the bound of {self._bound}"
                )
            if self.problem is not None:
                # the run goes on (the rest of the prefix unused); the strategy refuses the
                # prefix after it
                position = 0
        elif position >= options:
            raise ReplayDivergedError(
                f"exhaustive search: {name} has {options} choice(s), an earlier run had "
                f"more: the scenario is not deterministic"
            )
        return position

    def _decide(self, kind: int, options: int) -> int:
        """A decision other than a choice of task (an injection is no preemption)."""
        preemptions = self._preemptions()
        position = self._position(options, False, preemptions)
        self.trace.append((options, position, False, preemptions, kind))
        return position

    def _used(self, kind: int) -> int:
        return sum(1 for entry in self.trace if entry[4] == kind and entry[1])

    def inject(self, step: int, running: Sequence[int]) -> int | None:
        if self._cancels_at is not None:
            task = self._cancels_at.get(step)
            return task if task is not None and task in running else None
        if not self._cancel:
            return None
        options = 1 + len(running) if self._used(_CANCEL) < self._cancel else 1
        position = self._decide(_CANCEL, options)
        return running[position - 1] if position else None

    def outlast(self, step: int) -> bool:
        if self._outlasts_at is not None:
            return self._outlasts_at.outlast(step)
        if not self._slow:
            return False
        return bool(self._decide(_SLOW, 2 if self._used(_SLOW) < self._slow else 1))

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        preemptions = self._preemptions()
        position = self._position(len(enabled), continuing, preemptions)
        self.trace.append((len(enabled), position, continuing, preemptions, _TASK))
        return position


class Exhaustive(Strategy):
    """Every schedule with at most *preemption_bound* preemptions, depth first (as CHESS).

    A preemption is a choice out of the event loop's own order (see the module's docstring):
    ``Exhaustive(0)`` runs the one schedule a plain run of the loop runs. The search
    is complete for a deterministic scenario: when it ends without a failure, no schedule within
    the bound fails. Small scenarios only: the count grows quickly with tasks and steps.

    With *cancel* > 0, also every way of injecting up to *cancel* cancellations: before each
    step, cancelling none or any one of the tasks still running is a decision of the search
    like the choice of task (an injection is no preemption), so the search is complete for
    those too; the count grows by a factor of about (steps x tasks) per injection.

    With *slow_threads* > 0, also every way of letting worker threads outlast the next timer
    up to *slow_threads* times (at each chance: a moment the run would wait for threads a
    controlled task waits for while a timer is pending; no preemption either): without it, a
    thread returns before any timer falls due, and "exhausted" says nothing of a deadline
    around a slow one.

    With a *prefix* (a position for each of the first decisions, as :meth:`branches` gives
    them; without *cancel* and *slow_threads*, a decision is a step's choice of task), only
    the schedules that
    begin with it: the search split into parts that can run apart (on other processes, by
    :func:`explore`'s *workers*). The parts a search is split into by :meth:`branches`, all
    the way down from ``()``, run every schedule of the whole search once. A prefix is checked
    against the scenario by the first schedule: a position past the options, a preemption
    beyond the bound, or a prefix longer than the run is :class:`~avcm.InvalidError`
    (``EINVAL``) after that one schedule, and nothing is explored.
    """

    def __init__(
        self,
        preemption_bound: int = 2,
        *,
        prefix: Sequence[int] = (),
        cancel: int = 0,
        slow_threads: int = 0,
    ) -> None:
        self.preemption_bound = check_int(
            preemption_bound, "Exhaustive preemption_bound", 0, MAX_PREEMPTION_BOUND
        )
        if isinstance(prefix, (str, bytes)) or not isinstance(prefix, Sequence):
            raise InvalidError(f"Exhaustive prefix must be a sequence of positions, not {prefix!r}")
        self.prefix = tuple(check_int(p, "Exhaustive prefix position", 0) for p in prefix)
        self.cancel = check_int(cancel, "Exhaustive cancel", 0, 64)
        self.slow_threads = check_int(slow_threads, "Exhaustive slow_threads", 0, 64)
        self.seed = 0
        self.name = _named(
            f"{_EXHAUSTIVE}-p{self.preemption_bound}", self.cancel, self.slow_threads
        )
        self._cancels_at: dict[int, int] | None = None
        self._outlasts_at: tuple[int, ...] | None = None
        self._last: _ExhaustiveChooser | None = None
        self._checked = False

    def __repr__(self) -> str:
        prefix = f" prefix={list(self.prefix)}" if self.prefix else ""
        return f"<Exhaustive {self.name}{prefix}>"

    def _chooser(self, prefix: Sequence[int], fixed: int = 0) -> _ExhaustiveChooser:
        self._last = _ExhaustiveChooser(
            prefix,
            fixed,
            self.preemption_bound,
            cancel=self.cancel,
            slow_threads=self.slow_threads,
            cancels_at=self._cancels_at,
            outlasts_at=None if self._outlasts_at is None else FixedChances(self._outlasts_at),
        )
        return self._last

    def chooser(self, schedule: int) -> Chooser | None:
        if schedule == 0 or self._last is None:
            self._checked = False
            return self._chooser(self.prefix, len(self.prefix))
        trace = self._last.trace
        for depth in range(len(trace) - 1, len(self.prefix) - 1, -1):
            options, position, continuing, preemptions, _ = trace[depth]
            cost = preemptions + continuing  # every alternative to position 0 preempts
            if position + 1 < options and cost <= self.preemption_bound:
                return self._chooser([entry[1] for entry in trace[:depth]] + [position + 1])
        return None

    def finished(self, steps: int) -> None:
        last = self._last
        if self._checked or last is None:
            return
        self._checked = True
        problem = last.problem
        if problem is None and len(self.prefix) > len(last.trace):
            unit = "decisions" if self.cancel or self.slow_threads else "steps"
            problem = f"the run took {len(last.trace)} {unit}, the prefix has {len(self.prefix)}"
        if problem is not None:
            raise InvalidError(
                f"Exhaustive prefix {list(self.prefix)} begins no schedule of this scenario: "
                f"{problem}"
            )

    def branches(self) -> list[tuple[int, ...]] | None:
        """After the first schedule of this search (its prefix, then no preemption): the
        prefixes one decision longer at the first decision that has options within the
        bound, which divide this search's schedules between them, each to one; ``None`` if
        it has one schedule only. A search that has not run a schedule yet has no branches:
        ``None``."""
        if self._last is None:
            return None
        trace = self._last.trace
        for depth in range(len(self.prefix), len(trace)):
            options, _, continuing, preemptions, _ = trace[depth]
            if options > 1 and preemptions + continuing <= self.preemption_bound:
                before = tuple(entry[1] for entry in trace[:depth])
                return [(*before, position) for position in range(options)]
        return None

    def with_cancels_at(
        self, cancels: Sequence[tuple[int, int]], outlasts: Sequence[int] = ()
    ) -> Exhaustive:
        """The same search (no prefix, no injection of its own) with cancellations injected
        at fixed steps instead: ``(step, task)`` pairs, as a run recorded them, each made
        only if that task is still running then; and threads outlasting the next timer at
        the chances *outlasts* (:attr:`Run.outlast_chances`). What shrinking searches with."""
        search = Exhaustive(self.preemption_bound).with_outlasts_at(outlasts)
        search._cancels_at = dict(cancels)
        return search

    def with_outlasts_at(self, outlasts: Sequence[int]) -> Exhaustive:
        """The same search (no prefix; its own injections of cancellations, if any) with
        threads outlasting the next timer at the chances *outlasts* only
        (:attr:`Run.outlast_chances`). What shrinking searches with when the injections may
        move: a schedule with fewer preemptions reaches the window a cancellation aims at
        at another step."""
        search = Exhaustive(self.preemption_bound, cancel=self.cancel)
        search._outlasts_at = tuple(outlasts)
        return search


class FixedChances:
    """Threads outlast the next timer at the chances numbered *chances* (counted from 0 in
    the order a run has them), nowhere else."""

    __slots__ = ("_chances", "_seen")

    def __init__(self, chances: Sequence[int]) -> None:
        self._chances = frozenset(chances)
        self._seen = 0

    def outlast(self, step: int) -> bool:
        chance = self._seen
        self._seen += 1
        return chance in self._chances


class FromIndices:
    """Follows a list of positions, one per step that has a choice; 0 once it runs out.

    What shrinking and Hypothesis work on: a shorter list, or smaller numbers, means fewer
    preemptions. A position past the end of the enabled tasks takes the last one. *cancels*:
    ``(step, task)`` pairs, cancellations injected at those steps (each only if that task is
    still running then), as a run recorded them; *outlasts*: the chances at which threads at
    work outlast the next timer (:attr:`Run.outlast_chances`): shrinking keeps a failure's
    injections.
    """

    __slots__ = ("_cancels", "_indices", "_outlasts", "_used")

    def __init__(
        self,
        indices: Sequence[int],
        cancels: Sequence[tuple[int, int]] = (),
        outlasts: Sequence[int] = (),
    ) -> None:
        self._indices = list(indices)
        self._used = 0
        self._cancels = dict(cancels)
        self._outlasts = FixedChances(outlasts)

    def inject(self, step: int, running: Sequence[int]) -> int | None:
        task = self._cancels.get(step)
        return task if task is not None and task in running else None

    def outlast(self, step: int) -> bool:
        return self._outlasts.outlast(step)

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        if len(enabled) == 1:
            return 0
        if self._used >= len(self._indices):
            return 0
        position = self._indices[self._used]
        self._used += 1
        return min(position, len(enabled) - 1)


class Replay:
    """Follows a token's decisions exactly; any departure is a :class:`ReplayDivergedError`.
    A negative decision ``-1 - task`` is a cancellation of *task* injected at that step;
    :data:`TIMER_FIRST` lets threads at work outlast the next timer there; at
    :data:`CALLED_BACK` a call back from a thread whose caller left comes in (no choice:
    checked)."""

    __slots__ = ("_decisions",)

    def __init__(self, decisions: Sequence[int]) -> None:
        self._decisions = tuple(decisions)

    def called_back(self, step: int) -> None:
        if step >= len(self._decisions) or self._decisions[step] != CALLED_BACK:
            raise ReplayDivergedError(
                f"replay diverged at step {step}: a call back into the loop from a thread "
                f"whose caller left came in there, which the recording does not have"
            )

    def outlast(self, step: int) -> bool:
        return step < len(self._decisions) and self._decisions[step] == TIMER_FIRST

    def inject(self, step: int, running: Sequence[int]) -> int | None:
        if step >= len(self._decisions) or self._decisions[step] >= 0:
            return None
        self._no_thread_step(step, "no thread is at work while a timer is pending")
        task = -1 - self._decisions[step]
        if task not in running:
            raise ReplayDivergedError(
                f"replay diverged at step {step}: the recording cancels task {task}, "
                f"but only tasks {sorted(running)} are running"
            )
        return task

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        if step >= len(self._decisions):
            raise ReplayDivergedError(
                f"replay diverged: the recording ends after {len(self._decisions)} steps, "
                f"but the run goes on (tasks {list(enabled)} can run)"
            )
        task = self._decisions[step]
        self._no_thread_step(step, f"tasks {sorted(enabled)} can run (no thread holds the run up)")
        if task not in enabled:
            raise ReplayDivergedError(
                f"replay diverged at step {step}: the recording runs task {task}, "
                f"but only tasks {sorted(enabled)} can run"
            )
        return list(enabled).index(task)

    def _no_thread_step(self, step: int, instead: str) -> None:
        """Raise :class:`ReplayDivergedError` if the recording has a step of a worker thread
        at *step*, where the replay has *instead*."""
        decision = self._decisions[step]
        if decision == TIMER_FIRST:
            did = "lets worker threads outlast the next timer there"
        elif decision == CALLED_BACK:
            did = "has a call back from a thread whose caller left come in there"
        else:
            return
        raise ReplayDivergedError(
            f"replay diverged at step {step}: the recording {did}, but {instead}"
        )

    def check_complete(self, steps: int) -> None:
        if steps != len(self._decisions):
            raise ReplayDivergedError(
                f"replay diverged: the run ended after {steps} steps, "
                f"the recording has {len(self._decisions)}"
            )
