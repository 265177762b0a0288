"""``python -m stress`` / ``avcm-stress``: options, running, exit status.

Exit status: 0 when every check held, 1 when a violation was found, 2 for a usage or setup
error (one line on stderr, no traceback), 3 when a replay did not reproduce its recording,
4 when the run stopped with no verdict (avcm's undo of a failure failed too: the hardware may
be half done, which the contract cannot contain), 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NoReturn

import anyio

from avcm.lowlevel import quote
from avcm.testing import (
    backend_options,
    output_dir_problem,
    output_file_problem,
    run_main,
)

from ._config import (
    BACKENDS,
    CLOCKS,
    DEFAULT_CANCEL,
    DRIVER_DEFAULT_CONTEXTS,
    LATENCIES,
    MAX_JOBS,
    StressConfig,
    UsageError,
    check_count,
)
from ._replay import load_recording, verdict
from ._report import (
    describe_violation,
    progress_bar,
    render_summary,
    report_json,
    summary_line,
    write_trace,
)
from ._watchdog import STALL_TIMEOUT, Watch, cut_short, run_watched
from ._workload import RunResult, run_workload

__all__ = ["command", "main", "run"]

EXIT_CLEAN, EXIT_VIOLATION, EXIT_USAGE, EXIT_NOT_REPRODUCED, EXIT_NO_VERDICT = 0, 1, 2, 3, 4


def _status(result: RunResult) -> int:
    if result.violation is not None:
        return EXIT_VIOLATION
    return EXIT_CLEAN if result.no_verdict is None else EXIT_NO_VERDICT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, not argparse's usage block: scripts read the last line. argparse
        # quotes a bad value whole: cut it.
        raise UsageError(message if len(message) <= 160 else f"{message[:150]}...")


# The option types only turn text into numbers; StressConfig checks the values (the same
# check a replay file's settings get).


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not a number") from None


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not a whole number") from None


def _contexts(text: str) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in text.split(","):
        kind, _, count = item.strip().partition("=")
        pairs.append((kind, _whole_number(count) if count else 1))
    return tuple(pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m stress",
        description=(
            "Interleave every avcm operation from many tasks over IOMMU, one-to-one and CPU "
            "contexts sharing physical memory, and check the contract's rules after every "
            "operation and at quiescent points. Exit status: 0 clean, 1 violation, 2 usage "
            "error, 3 a --replay that did not reproduce its recording (it diverged, or did not "
            "end with the recorded violation, or lack of one), 4 no verdict (avcm's undo of a "
            "failed or cancelled operation failed too: the hardware may be left half done, "
            "which the contract cannot contain), 130 interrupted."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )
    parser.add_argument(
        "--seed",
        type=_whole_number,
        default=0,
        help="seed of every random choice; same seed, same run (default: 0)",
    )
    parser.add_argument(
        "--tasks",
        type=_whole_number,
        default=64,
        help="concurrent tasks issuing operations (default: 64)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ops",
        type=_whole_number,
        default=20_000,
        help="operations to run in all (default: 20000)",
    )
    group.add_argument(
        "--duration",
        type=_number,
        default=None,
        metavar="SECONDS",
        help="run for this many wall-clock seconds instead of --ops",
    )
    parser.add_argument(
        "--contexts",
        type=_contexts,
        default=None,
        help="which contexts and how many, e.g. iommu=2,carveout=1,cpu=1 "
        "(default: iommu=1,carveout=1,cpu=1; with --driver, custom=3,carveout=1: three "
        "contexts from the factory on one physical memory, so that hardware they share is "
        "raced too, a field that tells only two apart included, and a carve-out whose "
        "memory (half of it aligned to 4 KiB only, half to large pages) the tasks map into "
        "them)",
    )
    parser.add_argument(
        "--latency",
        choices=LATENCIES,
        default="default",
        help="sample drivers' latency profile; zero for pure overhead",
    )
    parser.add_argument(
        "--faults",
        type=_number,
        default=0.0,
        metavar="RATE",
        help="probability that a driver's setup call fails (injected: by the sample drivers' "
        "fault plans, and for a --driver from outside, at the sync point before the call)",
    )
    parser.add_argument(
        "--cancel",
        type=_number,
        default=DEFAULT_CANCEL,
        metavar="RATE",
        help="probability that an operation is cancelled midway: half of them at one of "
        "their first 8 sync points (in any driver; it takes effect at the next checkpoint), "
        "half a drawn time into their driver calls (past a call's first await); default "
        f"{DEFAULT_CANCEL}; 0: none",
    )
    parser.add_argument(
        "--driver",
        metavar="MODULE:FACTORY",
        default=None,
        help="stress your own driver: FACTORY(memory) returns an avcm.Vcm "
        "(sync or async); it replaces the default contexts",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="virtual",
        help="virtual: latency costs no wall time and a seed replays exactly "
        "(default); real: sleep for real",
    )
    parser.add_argument(
        "--check-every",
        type=_whole_number,
        default=50,
        metavar="N",
        help="operations start in windows of N (so at most N are in flight at once); once a "
        "window's last one returns, nothing is in flight: run the global checks (default: 50)",
    )
    parser.add_argument(
        "--drain-every",
        type=_whole_number,
        default=2000,
        metavar="N",
        help="after every N-th operation, also release everything (deactivate, unbind, "
        "unreserve, free) and check that physical memory and every address space are back "
        "to their baseline (memory still in use: every context is destroyed, which must free "
        "it, and built anew), so a leak is reported within N operations; 0 never (default: "
        "2000)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write a machine-readable report to PATH",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="PATH",
        help="rerun a recorded run from its trace file (as many operations as it recorded) and "
        "compare: exit 0 or 1 when it reproduced the recording, 3 when not. A file never chooses "
        "code to run: a trace of a --driver run needs the same --driver here",
    )
    parser.add_argument(
        "--trace-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where a violation's trace file is written (default: .)",
    )
    parser.add_argument(
        "--jobs",
        type=_whole_number,
        default=1,
        metavar="N",
        help="run N seeds (seed, seed+1, ...) in N parallel processes",
    )
    parser.add_argument(
        "--stall-timeout",
        type=_number,
        default=STALL_TIMEOUT,
        metavar="SECONDS",
        help="stop a run in which nothing ends for this many wall-clock seconds and report what "
        "was under way, as a 'progress' violation: a driver deadlock (a lost wake-up), a "
        "livelock, a blocked event loop; 0: never (default: %(default)g)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, no table: one summary line per run (and any violation)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> StressConfig:
    contexts = args.contexts
    if contexts is None:
        contexts = DRIVER_DEFAULT_CONTEXTS if args.driver else StressConfig.contexts
    return StressConfig(
        backend=args.backend,
        seed=args.seed,
        tasks=args.tasks,
        ops=args.ops,
        duration=args.duration,
        contexts=contexts,
        latency=args.latency,
        faults=args.faults,
        cancel=args.cancel,
        driver=args.driver,
        clock=args.clock,
        check_every=args.check_every,
        drain_every=args.drain_every,
    )


def run(
    config: StressConfig, *, show_progress: bool = False, stall_timeout: float = STALL_TIMEOUT
) -> RunResult:
    """Run one stress run to completion in a new event loop of the configured backend.

    The loop runs in a thread of its own, watched: a run in which nothing ends for
    *stall_timeout* seconds of wall time (0: never) is stopped with a ``progress`` violation
    naming what was under way (a deadlock, a livelock, a blocked loop); one that cannot be
    stopped (a task stuck in a shielded teardown) is abandoned in its thread, and its record
    as the stall found it returned. If interrupted (KeyboardInterrupt here), the run is
    cancelled and given a few seconds to end."""
    check_stall_timeout(stall_timeout)
    options = backend_options(config.backend, config.seed, virtual=config.clock == "virtual")
    with progress_bar(config, show_progress) as on_progress:

        def body(watch: Watch[RunResult]) -> RunResult:
            return anyio.run(
                run_workload,
                config,
                on_progress,
                watch,
                backend=config.backend,
                backend_options=options,
            )

        result, abandoned = run_watched(body, stall_timeout)
        result.abandoned = abandoned
        if on_progress is not None:
            # the last state is drawn however few operations the bar saw (a --duration run
            # may end before the first one on a busy machine)
            on_progress(result.ops)
        return result


def check_stall_timeout(seconds: float) -> None:
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"--stall-timeout must be 0 (never) or more seconds, not {seconds:g}")


def _ignore_interrupts() -> None:
    # --jobs workers: Ctrl-C is the parent's to handle (it stops them), not theirs to report
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_for_pool(config: StressConfig, stall_timeout: float) -> tuple[StressConfig, RunResult]:
    return config, run(config, stall_timeout=stall_timeout)


def _run_jobs(
    config: StressConfig, jobs: int, stall_timeout: float
) -> list[tuple[StressConfig, RunResult]]:
    runs = [(replace(config, seed=config.seed + i), stall_timeout) for i in range(jobs)]
    # leaving the block on an error or Ctrl-C terminates the workers
    with get_context("spawn").Pool(jobs, initializer=_ignore_interrupts) as pool:
        return pool.starmap(_run_for_pool, runs, chunksize=1)


def _check_output(option: str, path: Path, problem: Callable[[Path], str | None]) -> None:
    """Refuse, before the run, a path that could not be written after it."""
    found = problem(path)
    if found is not None:
        raise UsageError(f"{option} {path}: {found}")


def _write_json(path: Path, payload: Any) -> None:
    try:
        path.write_text(json.dumps(payload, indent=2))
    except OSError as error:
        raise UsageError(f"--json {path}: cannot write ({error.strerror})") from None


def _save_trace(config: StressConfig, result: RunResult, directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return write_trace(config, result, directory)
    except OSError as error:
        raise UsageError(f"--trace-dir {directory}: cannot write ({error.strerror})") from None


def _show(config: StressConfig, result: RunResult, quiet: bool) -> None:
    if quiet:
        print(summary_line(config, result), file=sys.stdout)
    else:
        render_summary(config, result, sys.stdout)


def _replay(args: argparse.Namespace) -> int:
    recording = load_recording(args.replay, args.driver)
    config = recording.config
    if args.json is not None:
        _check_output("--json", args.json, output_file_problem)
    result = run(config, show_progress=not args.quiet, stall_timeout=args.stall_timeout)
    _show(config, result, args.quiet)
    if _status(result) != EXIT_CLEAN:
        print(describe_violation(config, result, None), file=sys.stdout)
    reproduced, lines = verdict(recording, result)
    print(f"replay of {args.replay}:", *lines, sep="\n", file=sys.stdout)
    if args.json is not None:
        _write_json(args.json, report_json(config, result))
    if not reproduced:
        return EXIT_NOT_REPRODUCED
    return _status(result)


# What a trace file decides for its replay: given with --replay, such an option would be
# ignored, so it is refused (--driver is not among them: a replay must name its driver).
_RECORDED_OPTIONS = (
    "backend", "seed", "tasks", "ops", "duration", "contexts", "latency", "faults", "cancel",
    "clock", "check_every", "drain_every", "jobs",
)  # fmt: skip


def _given_options(argv: Sequence[str] | None) -> set[str]:
    """The options the command line names, whatever their values (defaults left out)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.replay is not None:
        ignored = [name for name in _RECORDED_OPTIONS if name in _given_options(argv)]
        if ignored:
            names = ", ".join("--" + name.replace("_", "-") for name in ignored)
            raise UsageError(
                f"--replay runs the trace's own settings: {names} would be ignored; "
                "leave them out (or run without --replay)"
            )
        return _replay(args)
    config = config_from_args(args)
    check_count(args.jobs, "--jobs", 1, MAX_JOBS)
    check_stall_timeout(args.stall_timeout)
    if args.json is not None:
        _check_output("--json", args.json, output_file_problem)
    _check_output("--trace-dir", args.trace_dir, output_dir_problem)
    if args.jobs > 1:
        runs = _run_jobs(config, args.jobs, args.stall_timeout)
    else:
        runs = [
            (config, run(config, show_progress=not args.quiet, stall_timeout=args.stall_timeout))
        ]
    status = EXIT_CLEAN
    reports = []
    for run_config, result in runs:
        _show(run_config, result, args.quiet)
        reports.append(report_json(run_config, result))
        if _status(result) != EXIT_CLEAN:
            # a violation anywhere outranks a run with no verdict
            status = (
                EXIT_VIOLATION if EXIT_VIOLATION in (status, _status(result)) else _status(result)
            )
            path = _save_trace(run_config, result, args.trace_dir)
            described = describe_violation(run_config, result, path, args.stall_timeout)
            print(described, file=sys.stdout)
    if args.json is not None:
        _write_json(args.json, reports[0] if len(reports) == 1 else reports)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("avcm-stress", lambda: _usage_errors(argv))


def command() -> NoReturn:
    """``python -m stress`` and ``avcm-stress``: :func:`main`, then the process ends. After a
    run was stopped for a stall or on Ctrl-C, it ends at once: Python would wait at exit for
    threads the run may have left stuck (an asyncio executor's are joined)."""
    status = main()
    if cut_short():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _usage_errors(argv: Sequence[str] | None) -> int:
    try:
        return _main(argv)
    except UsageError as error:
        print(f"avcm-stress: error: {error}", file=sys.stderr)
        return EXIT_USAGE
