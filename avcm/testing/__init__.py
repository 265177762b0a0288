"""avcm.testing: deterministic race tests for avcm and its drivers.

A controlled scheduler runs the tasks of a *scenario* one at a time, from one checkpoint to the
next (any anyio, trio or asyncio primitive: it owns the event loop's run queue), and a strategy
picks who goes next: :class:`RandomWalk`, :class:`PCT` or :class:`Exhaustive`. Every run has a
replay token; a failing schedule is shrunk to a short one and shown as a per-task timeline::

    from avcm import testing

    async def two_binds(run: testing.Run) -> None:
        vcm = ...; res = await vcm.reserve(4096)
        a, b = await vcm.alloc(4096), await vcm.alloc(4096)
        outcomes = await run.concurrently(lambda: res.bind(a), lambda: res.bind(b))
        assert sum(o.ok for o in outcomes) == 1

    testing.check(two_binds, schedules=1000)  # raises RaceFound with a timeline and token

The checks that judge a run live here too: :func:`check_model` (the hardware matches the model,
rule 4) and :func:`check_quiescent` (every rule that holds when nothing is in flight, each
violation an :class:`InvariantViolation` naming its rule), used alike by the stress harness,
the conformance suite and the tests. They belong with the race finder, not in ``avcm`` or
``avcm.lowlevel``: no driver or user of a context calls them; tests and harnesses do.
:func:`backend_options` gives the ``anyio.run`` options of a seeded, virtual-time run, and
:func:`pending_timers` and :func:`timers_left` the timers its loop has pending and those some
code left behind (to aim at them), :func:`sleep_past` a sleep till the task one wakes has run;
:func:`take_top_block` and :func:`reserve_run` put memory at the very end of physical memory
and reservations next to each other, where bugs at an edge live;
:func:`run_main`, :func:`output_file_problem` and :func:`output_dir_problem` are what the
project's command lines (``python -m stress``, ``python -m bench``, ``python -m avcm.testing``)
share: Ctrl-C as one line and exit status 130, output paths checked before the work.

Exploration and the conformance suite also run on many processes (``workers=`` a local Dask
cluster, ``scheduler=`` an existing one; :class:`Cluster`), split into parts a process could run
alone: seeds and strategies (:data:`PORTFOLIO`), or :class:`Exhaustive` prefixes
(:func:`exhaustive_prefixes`).

``import avcm`` does not import this package; this package imports Hypothesis only in
:mod:`avcm.testing.hypothesis`, pytest only in :mod:`avcm.testing.pytest_plugin`, and Dask only
when a cluster is made.
"""

from ._clock import (
    BACKENDS,
    VirtualTimeEventLoop,
    backend_options,
    harness_clock,
    pending_timers,
    run_on_virtual_time,
    sleep_past,
    timers_left,
)
from ._commands import output_dir_problem, output_file_problem, run_main
from ._conformance import (
    SCENARIOS,
    ConformanceReport,
    ScenarioResult,
    check_conformance,
    check_conformance_async,
)
from ._errors import (
    ClusterError,
    ConformanceFailure,
    DeadlockError,
    IOWaitError,
    RaceFound,
    ReplayDivergedError,
    RunawayError,
    ScheduleFailure,
    StepBudgetError,
    ThreadWaitError,
    TokenError,
)
from ._explore import (
    Exploration,
    Failure,
    Limits,
    Scenario,
    check,
    explore,
    explore_async,
    replay,
    replay_async,
    scenario_name,
)
from ._invariants import (
    HardwareMismatch,
    InvariantViolation,
    check_model,
    check_no_write_after_free,
    check_quiescent,
    expected_mappings,
)
from ._layout import reserve_run, take_top_block
from ._parallel import (
    CONNECT_TIMEOUT,
    MAX_CONNECT_TIMEOUT,
    MAX_LOCAL_WORKERS,
    Cluster,
    exhaustive_prefixes,
)
from ._progress import ProgressCallback, progress_bar
from ._scheduler import Run
from ._strategies import (
    PCT,
    PORTFOLIO,
    Chooser,
    Exhaustive,
    FixedChances,
    FromIndices,
    Portfolio,
    RandomWalk,
    Replay,
    Strategy,
)
from ._timeline import Step, TaskOutcome, Timeline
from ._token import CALLED_BACK, TIMER_FIRST, ReplayToken

__all__ = [
    "BACKENDS",
    "HardwareMismatch",
    "InvariantViolation",
    "backend_options",
    "output_dir_problem",
    "output_file_problem",
    "run_main",
    "check_model",
    "check_no_write_after_free",
    "check_quiescent",
    "expected_mappings",
    "PCT",
    "CONNECT_TIMEOUT",
    "MAX_CONNECT_TIMEOUT",
    "MAX_LOCAL_WORKERS",
    "PORTFOLIO",
    "Portfolio",
    "ProgressCallback",
    "SCENARIOS",
    "Chooser",
    "Cluster",
    "ClusterError",
    "ConformanceFailure",
    "ConformanceReport",
    "CALLED_BACK",
    "DeadlockError",
    "IOWaitError",
    "Exhaustive",
    "Exploration",
    "Failure",
    "FixedChances",
    "FromIndices",
    "Limits",
    "RaceFound",
    "RandomWalk",
    "Replay",
    "ReplayDivergedError",
    "ReplayToken",
    "Run",
    "RunawayError",
    "Scenario",
    "ScenarioResult",
    "ScheduleFailure",
    "Step",
    "StepBudgetError",
    "Strategy",
    "TIMER_FIRST",
    "TaskOutcome",
    "ThreadWaitError",
    "Timeline",
    "TokenError",
    "VirtualTimeEventLoop",
    "check",
    "check_conformance",
    "check_conformance_async",
    "take_top_block",
    "reserve_run",
    "explore",
    "exhaustive_prefixes",
    "explore_async",
    "harness_clock",
    "pending_timers",
    "progress_bar",
    "replay",
    "replay_async",
    "run_on_virtual_time",
    "scenario_name",
    "sleep_past",
    "timers_left",
]
