"""``python -m campaign`` / ``avcm-campaign``: many runs on many workers, failures grouped,
stored and replayed.

Exit status: 0 when nothing failed, 1 when a failure was found (new, or a stored one that still
fails; ``replay``: the stored failure still fails), 2 for a usage or setup error (one line on
stderr: options, a store or output path that cannot be written, an unreachable scheduler, an
unknown failure id), 3 when ``replay`` failed otherwise than stored, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from avcm.testing import run_main

from ._campaign import CampaignResult, run_campaign
from ._executors import DaskExecutor, Executor, ExecutorError, LocalExecutor, dask_available
from ._report import replay_command, report_html, report_json, report_junit, summary_lines
from ._store import FailureStore, StoreError, find
from ._units import ConformanceUnit, ExploreUnit, StressUnit, Unit, UnitError, load_spec

__all__ = ["main"]

EXIT_CLEAN, EXIT_FAILED, EXIT_USAGE, EXIT_OTHER_FAILURE = 0, 1, 2, 3
DEFAULT_STORE = Path(".avcm-failures")
DEFAULT_RUNS = 100
_T = TypeVar("_T")


class UsageError(Exception):
    """Exit status 2, one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _checked(
    convert: Callable[[str], _T], ok: Callable[[_T], bool], what: str
) -> Callable[[str], _T]:
    """An argparse type: *text* converted, and refused unless *ok*, saying it is not *what*."""

    def parse(text: str) -> _T:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_count = _checked(int, lambda n: n >= 1, "a whole number of at least 1")
_seconds = _checked(
    float, lambda s: math.isfinite(s) and s > 0, "a positive, finite number of seconds"
)
_rate = _checked(float, lambda r: 0.0 <= r <= 1.0, "a rate between 0 and 1")
_stall_timeout = _checked(float, lambda s: 0.0 <= s < math.inf, "0 (never) or more seconds")


def _contexts(text: str) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in text.split(","):
        kind, _, count = item.strip().partition("=")
        try:
            pairs.append((kind, int(count) if count else 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: count must be a whole number") from None
    return tuple(pairs)


def _common(parser: argparse.ArgumentParser) -> None:
    bound = parser.add_argument_group("how much")
    bound.add_argument(
        "--runs",
        type=_count,
        default=None,
        help=f"stop after this many runs (default: {DEFAULT_RUNS}, or none with --duration)",
    )
    bound.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="stop starting runs after this many seconds (with --runs: whichever comes first)",
    )
    where = parser.add_argument_group("where it runs")
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run on the Dask cluster of this scheduler (default: DASK_SCHEDULER_ADDRESS, "
        "else a local Dask cluster)",
    )
    where.add_argument(
        "--workers",
        type=_count,
        default=None,
        metavar="N",
        help="worker processes of the local cluster (default: one per core)",
    )
    where.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long to wait for --scheduler to answer before giving up (default: 5; a "
        "refused connection fails at once)",
    )
    where.add_argument(
        "--jobs",
        type=_count,
        default=None,
        metavar="N",
        help="run on N local processes without Dask",
    )
    _stores(parser)
    out = parser.add_argument_group("reports")
    out.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON")
    out.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML (CI systems)")
    out.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML page")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _stores(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        default=DEFAULT_STORE,
        metavar="DIR",
        help=f"the failure store this campaign reads and writes (default: {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--shared-store",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also read this store, never writing it (a CI store shared read-only); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m campaign",
        description="Run many stress seeds, conformance runs or race-finder explorations on "
        "a Dask cluster (a local one by default), group the failures by signature, keep the "
        "smallest reproducer of each in a failure store, and report. Exit status: 0 nothing "
        "failed, 1 a failure (new or stored), 2 usage or setup error, 3 a replay that failed "
        "otherwise, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    stress = commands.add_parser("stress", help="stress runs, one seed each")
    stress.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    stress.add_argument("--ops", type=_count, default=2000, help="operations per run")
    stress.add_argument("--tasks", type=_count, default=64, help="tasks per run")
    stress.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    stress.add_argument("--driver", metavar="MODULE:FACTORY", default=None)
    stress.add_argument("--contexts", type=_contexts, default=None, help="e.g. iommu=2,cpu=1")
    stress.add_argument("--latency", choices=("default", "slow", "zero"), default="default")
    stress.add_argument("--faults", type=_rate, default=0.0, metavar="RATE")
    stress.add_argument(
        "--cancel", type=_rate, default=None, metavar="RATE", help="(default: as python -m stress)"
    )
    stress.add_argument("--check-every", type=_count, default=50, metavar="N")
    stress.add_argument(
        "--stall-timeout",
        type=_stall_timeout,
        default=None,
        metavar="SECONDS",
        help="stop a run in which nothing ends for this long, as python -m stress does "
        "(default: its default; 0: never)",
    )
    _common(stress)

    conformance = commands.add_parser("conformance", help="conformance scenarios, by seed")
    conformance.add_argument("factory", metavar="MODULE:FACTORY")
    conformance.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    conformance.add_argument("--schedules", type=_count, default=200)
    conformance.add_argument("--backend", choices=("asyncio", "trio"), default="trio")
    _common(conformance)

    explore = commands.add_parser(
        "explore",
        help="race-finder explorations, by strategy (PCT of depth 1 to 3, random walk) and seed",
    )
    explore.add_argument("scenario", metavar="MODULE:FUNCTION")
    explore.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    explore.add_argument("--schedules", type=_count, default=200)
    explore.add_argument("--backend", choices=("asyncio", "trio"), default="trio")
    explore.add_argument(
        "--exhaustive",
        type=_checked(int, lambda n: 0 <= n <= 32, "a preemption bound from 0 to 32"),
        default=None,
        metavar="BOUND",
        help="instead of seeds, the exhaustive search with at most BOUND preemptions, split by "
        "schedule prefix into four parts per worker, each a run of up to --schedules of its "
        "own (a campaign counts runs: unlike avcm.testing.explore's schedules, the cap is each "
        "part's); the parts together run each schedule once if none reaches it; --runs "
        "defaults to the number of parts",
    )
    _common(explore)

    replay = commands.add_parser("replay", help="run a stored failure again, by its id")
    replay.add_argument("id", help="the failure's id (a unique prefix will do)")
    replay.add_argument(
        "--code",
        metavar="MODULE:NAME",
        help="the driver factory or scenario the failure runs, as `list` shows it: a store "
        "never chooses code to import by itself",
    )
    _stores(replay)

    listing = commands.add_parser("list", help="the stored failures")
    _stores(listing)
    return parser


def _stress_units(args: argparse.Namespace) -> Iterator[Unit]:
    import stress

    contexts = args.contexts
    if contexts is None:
        # as python -m stress: contexts from the factory share one memory, and their hardware
        contexts = stress.DRIVER_DEFAULT_CONTEXTS if args.driver else stress.StressConfig.contexts
    # every stress option this command has is a StressConfig field of the same name
    settings = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(stress.StressConfig)
        # (duration: the campaign's, not a run's; None: the run's own default)
        if f.name in vars(args) and f.name != "duration" and getattr(args, f.name) is not None
    }
    try:
        config = stress.StressConfig(**{**settings, "contexts": contexts})
    except stress.UsageError as error:
        raise UsageError(str(error)) from None
    if args.driver is not None:
        load_spec(args.driver, "--driver")
    settings = config.to_json()
    return (
        StressUnit({**settings, "seed": args.seed + i}, stall_timeout=args.stall_timeout)
        for i in itertools.count()
    )


def _conformance_units(args: argparse.Namespace) -> Iterator[Unit]:
    from avcm import testing

    load_spec(args.factory, "factory")
    scenarios = list(testing.SCENARIOS)
    # each scenario with one seed after another: every scenario is covered early
    return (
        ConformanceUnit(
            args.factory,
            scenarios[i % len(scenarios)],
            seed=args.seed + i // len(scenarios),
            schedules=args.schedules,
            backend=args.backend,
        )
        for i in itertools.count()
    )


# a portfolio, as Coyote runs one: strategies find different bugs first (avcm.testing's own,
# testing.PORTFOLIO, by name)
_PORTFOLIO = ("pct-d1", "pct-d2", "pct-d3", "random")


def _explore_units(args: argparse.Namespace) -> Iterator[Unit]:
    scenario = load_spec(args.scenario, "scenario")
    if args.exhaustive is not None:
        return _exhaustive_units(args, scenario)
    return (
        ExploreUnit(
            args.scenario,
            strategy=_PORTFOLIO[i % len(_PORTFOLIO)],
            seed=args.seed + i // len(_PORTFOLIO),
            schedules=args.schedules,
            backend=args.backend,
        )
        for i in itertools.count()
    )


def _exhaustive_units(args: argparse.Namespace, scenario: Any) -> Iterator[Unit]:
    from avcm import InvalidError, testing

    workers = args.workers or args.jobs or os.cpu_count() or 1
    try:
        # a few runs of the scenario here, one per prefix split
        prefixes = testing.exhaustive_prefixes(
            scenario,
            testing.Exhaustive(args.exhaustive),
            _PREFIXES_PER_WORKER * workers,
            backend=args.backend,
        )
    except (InvalidError, testing.ReplayDivergedError) as error:
        raise UsageError(f"{args.scenario}: cannot split its search: {error}") from None
    if args.runs is None and args.duration is None:
        args.runs = len(prefixes)  # the whole search, not the default run count
    units = [
        ExploreUnit(
            args.scenario,
            strategy="exhaustive",
            bound=args.exhaustive,
            prefix=prefix,
            schedules=args.schedules,
            backend=args.backend,
        )
        for prefix in prefixes
    ]
    return iter(units)


# subtrees of a search differ in size: more parts than workers keep every worker busy
_PREFIXES_PER_WORKER = 4

_UNITS: dict[str, Callable[[argparse.Namespace], Iterator[Unit]]] = {
    "stress": _stress_units,
    "conformance": _conformance_units,
    "explore": _explore_units,
}


def _check_output(option: str, path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, not a file")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: no such directory {path.parent}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {path.parent} is not writable")


def _write(option: str, path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write ({error.strerror})") from None


def _executor(args: argparse.Namespace) -> Executor:
    if args.jobs is not None:
        return LocalExecutor(args.jobs)
    local = args.scheduler is None and "DASK_SCHEDULER_ADDRESS" not in os.environ
    if local and not dask_available():
        count = args.workers or os.cpu_count() or 1
        print(
            f"avcm-campaign: Dask is not installed ('avcm[cluster]'): running on {count} "
            f"local process{'es' if count > 1 else ''}",
            file=sys.stderr,
        )
        return LocalExecutor(count)
    return DaskExecutor(args.scheduler, args.workers, args.connect_timeout)


def _open_stores(args: argparse.Namespace) -> tuple[FailureStore, list[FailureStore]]:
    store = FailureStore(args.store)
    shared = [FailureStore(path, read_only=True) for path in args.shared_store]
    for each in (store, *shared):
        each.check()
    return store, shared


def _campaign(args: argparse.Namespace) -> int:
    units = _UNITS[args.command](args)
    for option in ("json", "junit", "html"):
        _check_output(f"--{option}", getattr(args, option))
    store, shared = _open_stores(args)
    runs = args.runs if args.runs is not None or args.duration is not None else DEFAULT_RUNS
    from avcm import testing

    by_time = runs is None
    total = args.duration if by_time else runs
    executor = _executor(args)
    try:
        with testing.progress_bar(
            "campaign", total, enabled=not args.quiet, count=not by_time
        ) as update:
            started = time.monotonic()

            def progress(result: CampaignResult) -> None:
                if update is not None:
                    done = time.monotonic() - started if by_time else result.runs
                    update(done, f"{result.runs:,} runs, {len(result.signatures)} failure(s)")

            result = run_campaign(
                units,
                executor,
                runs=runs,
                duration=args.duration,
                store=store,
                shared=shared,
                on_notice=lambda line: print(f"avcm-campaign: {line}", file=sys.stderr),
                on_progress=progress,
                trusted_code=_named_code(args),
            )
    finally:
        executor.close()
    print(*summary_lines(result, args.store), sep="\n")
    _write("--json", args.json, json.dumps(report_json(result, args.store), indent=2))
    _write("--junit", args.junit, report_junit(result, args.store))
    _write("--html", args.html, report_html(result, args.store))
    return EXIT_FAILED if result.failed else EXIT_CLEAN


def _named_code(args: argparse.Namespace) -> set[str]:
    """The code the command line names (``--driver``, a factory, a scenario): what stored
    failures may run."""
    names = (getattr(args, name, None) for name in ("driver", "factory", "scenario"))
    return {name for name in names if isinstance(name, str)}


def _replay(args: argparse.Namespace) -> int:
    store, shared = _open_stores(args)
    stores = [store, *shared]
    record = find(stores, args.id)
    for problem in dict.fromkeys(p for s in stores for p in s.problems):
        print(f"avcm-campaign: {problem}", file=sys.stderr)
    code = record.reproducer.code
    if code is not None and args.code != code:
        # a store is data: the code it names runs only when the command line names it too
        given = "no --code" if args.code is None else f"--code {args.code}"
        raise UsageError(
            f"failure {record.id} runs {code}; name it to run it: --code {code} ({given} given)"
        )
    print(f"replaying {record.id} ({record.reproducer.label()}): {record.title}")
    try:
        result = record.reproducer.run()
    except UnitError:
        raise
    except Exception as error:
        # a schedule token the changed code no longer follows, for instance
        print(f"did not run as stored: {type(error).__name__}: {error}")
        return EXIT_OTHER_FAILURE
    found = result.failure
    if found is None:
        print("no failure: it passes now (fixed?)")
        return EXIT_CLEAN
    print(found.detail)
    if found.signature == record.signature:
        print(f"reproduced: {record.signature}")
        return EXIT_FAILED
    print(f"FAILED OTHERWISE: stored {record.signature!r}, now {found.signature!r}")
    return EXIT_OTHER_FAILURE


def _list(args: argparse.Namespace) -> int:
    store, shared = _open_stores(args)
    for each in (store, *shared):
        for record in each:
            state = "fixed" if record.fixed else "open"
            print(f"{record.id}  {state:5}  {record.reproducer.label():28}  {record.title}")
            print(f"    replay: {replay_command(record.id, each.path, record.reproducer.code)}")
        for problem in each.problems:
            print(f"avcm-campaign: {problem}", file=sys.stderr)
    return EXIT_CLEAN


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    if args.command == "list":
        return _list(args)
    return _campaign(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(
        "avcm-campaign", lambda: _usage_errors(argv), note="what was stored stays stored"
    )


def _usage_errors(argv: Sequence[str] | None) -> int:
    try:
        return _main(argv)
    except (UsageError, UnitError, StoreError, ExecutorError) as error:
        print(f"avcm-campaign: error: {error}", file=sys.stderr)
        return EXIT_USAGE
