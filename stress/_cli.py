"""``python -m stress`` / ``avcm-stress``: options, running, exit status.

Exit status: 0 when every check held, 1 when a violation was found, 2 for a usage or setup
error (one line on stderr, no traceback), 3 when a replay did not reproduce its recording.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NoReturn

import anyio

from avcm.testing._clock import backend_options

from ._config import CONTEXT_KINDS, StressConfig, UsageError
from ._replay import load_recording, verdict
from ._report import (
    describe_violation,
    progress_bar,
    render_summary,
    report_json,
    write_trace,
)
from ._workload import RunResult, run_workload

__all__ = ["main", "run"]

EXIT_CLEAN, EXIT_VIOLATION, EXIT_USAGE, EXIT_NOT_REPRODUCED = 0, 1, 2, 3


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
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
            "end with the recorded violation, or lack of one)."
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
        type=float,
        default=None,
        help="run for this many wall-clock seconds instead of --ops",
    )
    parser.add_argument(
        "--contexts",
        type=_contexts,
        default=None,
        help="which contexts and how many, e.g. iommu=2,carveout=1,cpu=1 "
        "(default: iommu=1,carveout=1,cpu=1; custom=N with --driver)",
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
        help="run the quiescent checks every N operations (default: 50)",
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    return parser


def config_from_args(args: argparse.Namespace) -> StressConfig:
    contexts = args.contexts
    if contexts is None:
        contexts = (("custom", 1),) if args.driver else StressConfig.contexts
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
    )


def run(config: StressConfig, *, show_progress: bool = False) -> RunResult:
    """Run one stress run to completion in a new event loop of the configured backend."""
    options = backend_options(config.backend, config.seed, virtual=config.clock == "virtual")
    with progress_bar(config, show_progress) as on_progress:
        return anyio.run(
            run_workload, config, on_progress, backend=config.backend, backend_options=options
        )


def _run_for_pool(config: StressConfig) -> tuple[StressConfig, RunResult]:
    return config, run(config)


def _replay(args: argparse.Namespace) -> int:
    recording = load_recording(args.replay)
    config = recording.config
    result = run(config, show_progress=not args.quiet)
    if not args.quiet:
        render_summary(config, result, sys.stdout)
    if result.violation is not None:
        print(describe_violation(config, result, None), file=sys.stdout)
    reproduced, lines = verdict(recording, result)
    print(f"replay of {args.replay}:", *lines, sep="\n", file=sys.stdout)
    if not reproduced:
        return EXIT_NOT_REPRODUCED
    return EXIT_CLEAN if result.violation is None else EXIT_VIOLATION


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    if args.replay is not None:
        return _replay(args)
    config = config_from_args(args)
    if args.jobs > 1:
        configs = [replace(config, seed=config.seed + i) for i in range(args.jobs)]
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(_run_for_pool, configs))
    else:
        runs = [(config, run(config, show_progress=not args.quiet))]
    status = EXIT_CLEAN
    reports = []
    for run_config, result in runs:
        if not args.quiet:
            render_summary(run_config, result, out)
        reports.append(report_json(run_config, result))
        if result.violation is not None:
            status = EXIT_VIOLATION
            args.trace_dir.mkdir(parents=True, exist_ok=True)
            path = write_trace(run_config, result, args.trace_dir)
            print(describe_violation(run_config, result, path), file=out)
    if args.json is not None:
        payload: Any = reports[0] if len(reports) == 1 else reports
        args.json.write_text(json.dumps(payload, indent=2))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as error:
        print(f"avcm-stress: error: {error}", file=sys.stderr)
        return EXIT_USAGE
