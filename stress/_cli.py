"""``python -m stress`` / ``avcm-stress``: options, running, exit status.

Exit status: 0 when every check held, 1 when a violation was found, 2 for a usage or setup
error (one line on stderr, no traceback), 3 when a replay did not reproduce its recording,
130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NoReturn

import anyio

from avcm.testing import backend_options

from ._config import CONTEXT_KINDS, DRIVER_CONTEXTS, StressConfig, UsageError
from ._replay import load_recording, verdict
from ._report import (
    describe_violation,
    progress_bar,
    render_summary,
    report_json,
    summary_line,
    write_trace,
)
from ._workload import RunResult, run_workload

__all__ = ["main", "run"]

EXIT_CLEAN, EXIT_VIOLATION, EXIT_USAGE, EXIT_NOT_REPRODUCED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, not argparse's usage block: scripts read the last line.
        raise UsageError(message)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive, finite number of seconds")
    return value


def _contexts(text: str) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in text.split(","):
        kind, _, count = item.strip().partition("=")
        if kind not in CONTEXT_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown context kind {kind!r} (choose from {', '.join(CONTEXT_KINDS)})"
            )
        try:
            number = int(count) if count else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: count must be a whole number") from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"{item!r}: count must not be negative")
        pairs.append((kind, number))
    return tuple(pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m stress",
        description=(
            "Interleave every avcm operation from many tasks over IOMMU, one-to-one and CPU "
            "contexts sharing physical memory, and check the contract's rules after every "
            "operation and at quiescent points. Exit status: 0 clean, 1 violation, 2 usage "
            "error, 3 a --replay that did not reproduce its recording (it diverged, or did not "
            "end with the recorded violation, or lack of one), 130 interrupted."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice; same seed, same run (default: 0)",
    )
    parser.add_argument(
        "--tasks",
        type=_positive_int,
        default=64,
        help="concurrent tasks issuing operations (default: 64)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ops",
        type=_positive_int,
        default=20_000,
        help="operations to run in all (default: 20000)",
    )
    group.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="run for this many wall-clock seconds instead of --ops",
    )
    parser.add_argument(
        "--contexts",
        type=_contexts,
        default=None,
        help="which contexts and how many, e.g. iommu=2,carveout=1,cpu=1 "
        "(default: iommu=1,carveout=1,cpu=1; with --driver, custom=2: two contexts from the "
        "factory on one physical memory, so that hardware they share is raced too)",
    )
    parser.add_argument(
        "--latency",
        choices=("default", "slow", "zero"),
        default="default",
        help="sample drivers' latency profile; zero for pure overhead",
    )
    parser.add_argument(
        "--faults",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="probability that a sample driver operation fails (injected)",
    )
    parser.add_argument(
        "--cancel",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="probability that an operation is cancelled midway",
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
        choices=("virtual", "real"),
        default="virtual",
        help="virtual: latency costs no wall time and a seed replays exactly "
        "(default); real: sleep for real",
    )
    parser.add_argument(
        "--check-every",
        type=_positive_int,
        default=50,
        metavar="N",
        help="after every N-th operation, wait for quiescence and run the global checks "
        "(default: 50)",
    )
    parser.add_argument(
        "--drain-every",
        type=_count,
        default=2000,
        metavar="N",
        help="after every N-th operation, also release everything (deactivate, unbind, "
        "unreserve, free) and check that physical memory and every address space are back "
        "to their baseline, so a leak is reported within N operations; 0 never (default: "
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
        "compare: exit 0 or 1 when it reproduced the recording, 3 when not",
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
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N seeds (seed, seed+1, ...) in N parallel processes",
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
        contexts = (("custom", DRIVER_CONTEXTS),) if args.driver else StressConfig.contexts
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


def run(config: StressConfig, *, show_progress: bool = False) -> RunResult:
    """Run one stress run to completion in a new event loop of the configured backend."""
    options = backend_options(config.backend, config.seed, virtual=config.clock == "virtual")
    with progress_bar(config, show_progress) as on_progress:
        return anyio.run(
            run_workload, config, on_progress, backend=config.backend, backend_options=options
        )


def _ignore_interrupts() -> None:
    # --jobs workers: Ctrl-C is the parent's to handle (it stops them), not theirs to report
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_for_pool(config: StressConfig) -> tuple[StressConfig, RunResult]:
    return config, run(config)


def _run_jobs(config: StressConfig, jobs: int) -> list[tuple[StressConfig, RunResult]]:
    configs = [replace(config, seed=config.seed + i) for i in range(jobs)]
    # leaving the block on an error or Ctrl-C terminates the workers
    with get_context("spawn").Pool(jobs, initializer=_ignore_interrupts) as pool:
        return pool.map(_run_for_pool, configs, chunksize=1)


def _check_output_file(option: str, path: Path) -> None:
    """Refuse, before the run, a file that could not be written after it."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, not a file")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: no such directory {path.parent}")
    _check_writable(option, path, path.parent)


def _check_output_dir(option: str, path: Path) -> None:
    """Refuse, before the run, a directory that could not be made or written to after it."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a directory" if existing == path else f"is under {existing}, a file"
        raise UsageError(f"{option} {path}: {where}")
    _check_writable(option, path, existing)


def _check_writable(option: str, path: Path, directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {directory} is not writable")


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
    recording = load_recording(args.replay)
    config = recording.config
    if args.json is not None:
        _check_output_file("--json", args.json)
    result = run(config, show_progress=not args.quiet)
    _show(config, result, args.quiet)
    if result.violation is not None:
        print(describe_violation(config, result, None), file=sys.stdout)
    reproduced, lines = verdict(recording, result)
    print(f"replay of {args.replay}:", *lines, sep="\n", file=sys.stdout)
    if args.json is not None:
        _write_json(args.json, report_json(config, result))
    if not reproduced:
        return EXIT_NOT_REPRODUCED
    return EXIT_CLEAN if result.violation is None else EXIT_VIOLATION


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.replay is not None:
        return _replay(args)
    config = config_from_args(args)
    if args.json is not None:
        _check_output_file("--json", args.json)
    _check_output_dir("--trace-dir", args.trace_dir)
    if args.jobs > 1:
        runs = _run_jobs(config, args.jobs)
    else:
        runs = [(config, run(config, show_progress=not args.quiet))]
    status = EXIT_CLEAN
    reports = []
    for run_config, result in runs:
        _show(run_config, result, args.quiet)
        reports.append(report_json(run_config, result))
        if result.violation is not None:
            status = EXIT_VIOLATION
            path = _save_trace(run_config, result, args.trace_dir)
            print(describe_violation(run_config, result, path), file=sys.stdout)
    if args.json is not None:
        _write_json(args.json, reports[0] if len(reports) == 1 else reports)
    return status


def _interrupted(error: BaseException) -> bool:
    """A Ctrl-C, alone or inside an exception group (trio reports it from its task group)."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(KeyboardInterrupt) is not None
    return isinstance(error, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as error:
        print(f"avcm-stress: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BaseException as error:
        if not _interrupted(error):
            raise
        print("avcm-stress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
