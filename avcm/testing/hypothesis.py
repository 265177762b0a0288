"""Hypothesis draws the schedule: a failing interleaving shrinks to a minimal one.

Every choice of the scheduler becomes a number Hypothesis draws, and Hypothesis shrinks numbers
towards 0, which here means "the event loop's own order" (or the task running ahead of its
turn goes on): no preemption. Among three or more tasks that
is not always the fewest preemptions, so the example Hypothesis reports from
:func:`run_schedule` is shrunk the finder's way too (as :func:`~avcm.testing.explore` shrinks,
within :data:`SHRINK_BUDGET` runs): the fewest preemptions that still fail, then the fewest
steps. Two ways in:

* :func:`schedules` is a strategy of :class:`Schedule`; :func:`run_schedule` runs a scenario
  under one (raises :class:`~avcm.testing.RaceFound` with the timeline if it fails)::

      @given(schedule=avcm.testing.hypothesis.schedules())
      def test_two_binds(schedule):
          avcm.testing.hypothesis.run_schedule(two_binds, schedule)

* :class:`RaceMachine` and :func:`run_race_machine`: an async stateful test whose rules run
  concurrently, as tasks under the scheduler, in rounds, with invariants checked between them.

This module imports Hypothesis; ``avcm.testing`` itself does not. It does not use
hypothesis-trio (broken with current Hypothesis).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument

from .. import InvalidError
from ..lowlevel import check_int
from ._clock import BACKENDS, run_on_virtual_time
from ._errors import RaceFound
from ._explore import (
    Limits,
    Scenario,
    _failure,
    _run_once,
    _schedule_random,
    checked_limits,
    shrunk,
    unproven_note,
)
from ._scheduler import Run

__all__ = [
    "SHRINK_BUDGET",
    "HypothesisChooser",
    "RaceMachine",
    "Schedule",
    "race_rule",
    "run_race_machine",
    "run_schedule",
    "schedules",
]


@dataclass(frozen=True, slots=True)
class Schedule:
    """The position chosen at each step that has a choice (0: no preemption, the event loop's
    own order); steps past the end choose 0. With *cancels*, before each step one more number: 0
    cancels nothing, *k* the *k*-th running task (counted round the running tasks), up to
    *cancel* cancellations in all (cancellation injection; each is a step of the timeline
    and the token, as with the strategies' ``cancel=``). With *outlasts*, at each chance
    for worker threads at work to outlast the next timer, one more number: 0 no, else yes,
    up to *slow_threads* times in all (as with the strategies' ``slow_threads=``). The module
    ``random`` starts each run from a state *random_seed* gives (drawn too, shrinking towards
    0; the token's seed): a failure whose program draws from it replays."""

    positions: tuple[int, ...]
    cancels: tuple[int, ...] = ()
    cancel: int = 0
    outlasts: tuple[int, ...] = ()
    slow_threads: int = 0
    random_seed: int = 0

    def chooser(self) -> Any:
        from ._strategies import FromIndices

        def drawn_from(numbers: tuple[int, ...]) -> Callable[[int, int], int | None]:
            left = iter(numbers)

            def draw(step: int, options: int) -> int | None:
                # counted round the options; past the end of the list, nothing more
                return next((number % options for number in left), None)

            return draw

        return _Injecting(
            FromIndices(self.positions),
            _Cancels(self.cancel, drawn_from(self.cancels)),
            _Outlasts(self.slow_threads, drawn_from(self.outlasts)),
        )


class _Cancels:
    """Cancellation injection from drawn numbers: before a step, ``draw(step, options)``
    gives a number below *options*, 0 for no cancellation, *k* for the *k*-th running task
    (None: no more draws); at most *cancel* cancellations in all."""

    def __init__(self, cancel: int, draw: Callable[[int, int], int | None]) -> None:
        self._left = cancel
        self._draw = draw

    def inject(self, step: int, running: Sequence[int]) -> int | None:
        if not self._left or not running:
            return None
        drawn = self._draw(step, len(running) + 1)
        if drawn is None:
            self._left = 0
            return None
        if not drawn:
            return None
        self._left -= 1
        return running[drawn - 1]


class _Outlasts:
    """Threads outlasting timers from drawn numbers: at each chance, ``draw(step, 2)`` gives
    0 for no, 1 for yes (None: no more draws); at most *slow_threads* times in all."""

    def __init__(self, slow_threads: int, draw: Callable[[int, int], int | None]) -> None:
        self._left = slow_threads
        self._draw = draw

    def outlast(self, step: int) -> bool:
        if not self._left:
            return False
        drawn = self._draw(step, 2)
        if drawn is None:
            self._left = 0
        if not drawn:
            return False
        self._left -= 1
        return True


class _Injecting:
    """A chooser that also injects cancellations and slow threads, as *cancels* and
    *outlasts* say."""

    def __init__(self, choices: Any, cancels: _Cancels, outlasts: _Outlasts) -> None:
        self._choices = choices
        self.inject = cancels.inject
        self.outlast = outlasts.outlast

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        return int(self._choices.choose(step, enabled, continuing))


def schedules(
    *, max_choices: int = 100, max_tasks: int = 8, cancel: int = 0, slow_threads: int = 0
) -> st.SearchStrategy[Schedule]:
    """Schedules of at most *max_choices* choices among at most *max_tasks* tasks; with
    *cancel* > 0 at most that many injected cancellations, and with *slow_threads* > 0 at
    most that many timers outlasted by threads at work (each shrinking towards none)."""
    check_int(max_choices, "schedules: max_choices", 0)
    check_int(max_tasks, "schedules: max_tasks", 2)
    check_int(cancel, "schedules: cancel", 0, 64)
    check_int(slow_threads, "schedules: slow_threads", 0, 64)
    positions = st.lists(st.integers(0, max_tasks - 1), max_size=max_choices)
    cancels = st.lists(st.integers(0, max_tasks), max_size=max_choices) if cancel else st.just([])
    outlasts = st.lists(st.integers(0, 1), max_size=max_choices) if slow_threads else st.just([])
    return st.builds(
        lambda drawn, injected, outlasted, seed: Schedule(
            tuple(drawn), tuple(injected), cancel, tuple(outlasted), slow_threads, seed
        ),
        positions,
        cancels,
        outlasts,
        st.integers(0, 2**32 - 1),
    )


SHRINK_BUDGET = 500
"""Runs the finder's own shrinker may spend on the example Hypothesis reports (as
``explore``'s ``shrink_budget``)."""


def _final_example() -> bool:
    """Whether this is the run of the example Hypothesis reports, after its own shrinking."""
    try:
        return bool(getattr(current_build_context(), "is_final", False))
    except InvalidArgument:  # not inside a Hypothesis test
        return False


async def _run_schedule_async(scenario: Scenario, schedule: Schedule, limits: Limits) -> None:
    # the module random as the token's replay starts it (attack68: a failure whose program
    # drew from it, left as Hypothesis seeded it, passed in its printed replay), from a seed
    # of the example's own (one for every example never drew a race behind a draw)
    with _schedule_random("hypothesis", schedule.random_seed, 0):
        run, error = await _run_once(scenario, schedule.chooser(), limits)
        if error is None:
            return
        found, fewest = None, None
        if _final_example():
            # Hypothesis lowers the drawn numbers, which among three or more tasks is not
            # always fewer preemptions (it can stop at 3 or 4 where 2 fail): the example it
            # reports is shrunk the finder's way too, to the fewest preemptions, then steps
            run, error, found, fewest = await shrunk(scenario, run, error, limits, SHRINK_BUDGET)
    failure = _failure(
        scenario,
        run,
        error,
        strategy="hypothesis",
        seed=schedule.random_seed,
        schedule=0,
        found=found,
        command=None,
        fewest=fewest,
    )
    raise RaceFound(failure) from error


def run_schedule(
    scenario: Scenario,
    schedule: Schedule,
    *,
    backend: str = "trio",
    limits: Limits | None = None,
) -> None:
    """Run *scenario* once under *schedule*, on virtual time; :class:`RaceFound` if it fails."""
    run_on_virtual_time(
        backend, partial(_run_schedule_async, scenario, schedule, checked_limits(limits))
    )


class HypothesisChooser:
    """Draws every choice that has more than one option from Hypothesis's ``data``; with
    *cancel* > 0, also whether to cancel a running task before each step, at most *cancel*
    times (drawn as 0, none, shrinking towards no cancellation at all); with *slow_threads*
    > 0, whether threads at work outlast the next timer at each chance, at most that many
    times (drawn as 0, no, shrinking towards none)."""

    def __init__(self, data: st.DataObject, *, cancel: int = 0, slow_threads: int = 0) -> None:
        self._data = data
        check_int(cancel, "HypothesisChooser cancel", 0, 64)
        check_int(slow_threads, "HypothesisChooser slow_threads", 0, 64)

        def drawer(what: str) -> Callable[[int, int], int]:
            def draw(step: int, options: int) -> int:
                return data.draw(st.integers(0, options - 1), label=f"{what} {step}")

            return draw

        self.inject = _Cancels(cancel, drawer("cancel before")).inject
        self.outlast = _Outlasts(slow_threads, drawer("thread outlasts timer at")).outlast

    def choose(self, step: int, enabled: Sequence[int], continuing: bool) -> int:
        if len(enabled) == 1:
            return 0
        return self._data.draw(st.integers(0, len(enabled) - 1), label=f"step {step}")


def race_rule(function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Mark an ``async def rule(self)`` of a :class:`RaceMachine`."""
    function._avcm_race_rule = True  # type: ignore[attr-defined]
    return function


class RaceMachine:
    """An async state machine whose rules race each other.

    Subclass it; write ``async def setup``, rules decorated with :func:`race_rule` (no
    arguments but ``self``; a rule handles the errors the contract allows in a race and
    raises on anything else), ``async def invariant`` (checked after every round, at
    quiescence) and ``async def teardown``. :func:`run_race_machine` draws, per example, a
    number of rounds, the rules of each round (run concurrently, as tasks) and the schedule.
    """

    rules: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.rules = tuple(
            name
            for name, member in inspect.getmembers(cls)
            if getattr(member, "_avcm_race_rule", False)
        )

    async def setup(self) -> None:
        """Build the objects the rules share."""

    async def invariant(self) -> None:
        """Raise if the state breaks a rule; runs after every round."""

    async def teardown(self) -> None:
        """Release everything; runs after the last round, also after a failure."""


def _machine_scenario(
    machine_class: type[RaceMachine], rules_of_round: Callable[[int], list[str] | None]
) -> Scenario:
    """A scenario that runs a fresh *machine_class* round after round, the rules of round *i*
    being ``rules_of_round(i)`` (None: no more rounds), the invariant after each; an error
    says in a note which round it ended."""

    async def race_machine(run: Run) -> None:
        machine = machine_class()
        await machine.setup()
        try:
            index = 0
            while (names := rules_of_round(index)) is not None:
                try:
                    outcomes = await run.concurrently(
                        *(getattr(machine, name) for name in names), names=names
                    )
                    for outcome in outcomes:
                        outcome.unwrap()
                    await machine.invariant()
                except Exception as error:
                    error.add_note(f"round {index} failed")
                    raise
                index += 1
        finally:
            with anyio.CancelScope(shield=True):
                await machine.teardown()

    race_machine.__qualname__ = f"{machine_class.__qualname__}.race_machine"
    return race_machine


async def _run_machine_once(
    machine_class: type[RaceMachine],
    data: st.DataObject,
    max_rounds: int,
    max_parallel: int,
    limits: Limits,
    cancel: int,
    slow_threads: int,
) -> None:
    rounds: list[list[str]] = []
    count: list[int] = []

    def draw_round(index: int) -> list[str] | None:
        if not count:
            count.append(data.draw(st.integers(1, max_rounds), label="rounds"))
        if index >= count[0]:
            return None
        rounds.append(
            data.draw(
                st.lists(st.sampled_from(machine_class.rules), min_size=1, max_size=max_parallel),
                label=f"round {index} rules",
            )
        )
        return rounds[-1]

    chooser = HypothesisChooser(data, cancel=cancel, slow_threads=slow_threads)
    run, error = await _run_once(_machine_scenario(machine_class, draw_round), chooser, limits)
    if error is None:
        return
    fewest: bool | None = None
    if _final_example():
        # the same rounds and rules, and the fewest preemptions that still fail (as for
        # run_schedule: Hypothesis's lowering of numbers is not that among three tasks)
        drawn = _machine_scenario(
            machine_class, lambda index: rounds[index] if index < len(rounds) else None
        )
        run, error, _, fewest = await shrunk(drawn, run, error, limits, SHRINK_BUDGET)
    where = "; ".join(getattr(error, "__notes__", ())) or "a round failed"
    timeline = run.timeline()
    raise AssertionError(
        f"{where}: {type(error).__name__}: {error}\n"
        f"{len(timeline.steps)} steps, {timeline.deviations()}{unproven_note(fewest)}\n\n"
        f"{timeline.format()}"
    ) from error


def run_race_machine(
    machine_class: type[RaceMachine],
    *,
    backend: str = "trio",
    max_examples: int = 100,
    max_rounds: int = 3,
    max_parallel: int = 3,
    limits: Limits | None = None,
    hypothesis_settings: settings | None = None,
    cancel: int = 0,
    slow_threads: int = 0,
) -> None:
    """Run *machine_class* under Hypothesis: on a failure, the minimal rounds, rules and
    schedule are reported with the timeline of the failing run (an ``AssertionError``).
    With *cancel* > 0, up to that many cancellations are injected into the rules' tasks
    per example (a rule cancelled is no failure: its outcome says so, and the invariant
    still holds or not); with *slow_threads* > 0, up to that many timers fall due while
    the rules' worker threads are still at work."""
    if backend not in BACKENDS:
        raise InvalidError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if not issubclass(machine_class, RaceMachine) or not machine_class.rules:
        raise InvalidError(f"{machine_class!r} is not a RaceMachine with at least one race_rule")
    for name, value in (
        ("max_examples", max_examples),
        ("max_rounds", max_rounds),
        ("max_parallel", max_parallel),
    ):
        check_int(value, f"run_race_machine: {name}", 1)
    check_int(cancel, "run_race_machine: cancel", 0, 64)
    check_int(slow_threads, "run_race_machine: slow_threads", 0, 64)
    limits = checked_limits(limits)
    options = hypothesis_settings or settings(deadline=None)

    @settings(options, max_examples=max_examples)
    @given(data=st.data())
    def race_machine(data: st.DataObject) -> None:
        run_on_virtual_time(
            backend,
            partial(
                _run_machine_once,
                machine_class,
                data,
                max_rounds,
                max_parallel,
                limits,
                cancel,
                slow_threads,
            ),
        )

    race_machine()
