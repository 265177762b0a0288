"""The command line of the race finder.

``python -m avcm.testing replay MODULE:SCENARIO TOKEN`` reruns a recorded schedule and prints
its timeline; ``python -m avcm.testing conformance MODULE:FACTORY`` runs the conformance suite
against a driver factory (``--workers N``: its scenarios on a local Dask cluster of N
processes; ``--scheduler ADDRESS``: on an existing one; the same report). Exit status:
0 passed, 1 failed (the failure reproduced; a conformance scenario found a rule broken), 2
usage error (bad token, scenario that does not import or is not a scenario, a scheduler that
does not answer; one line on stderr), 3 the replay diverged from its recording, 4 no verdict
(conformance scenarios could not run, none failed: the driver failed every attempt), 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import VcmError
from ..lowlevel import quote
from ._clock import BACKENDS
from ._commands import output_file_problem, run_main
from ._errors import ReplayDivergedError
from ._explore import Limits, replay
from ._token import ReplayToken

__all__ = ["load", "main"]


MAX_SCHEDULES = 100_000
"""Per scenario; at about a thousand schedules a second, more would run for hours."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one line, as every other usage error here (argparse would print its usage block)
        raise _UsageError(message if len(message) <= 160 else f"{message[:150]}...")


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{quote(text)} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{quote(value)} is not in {low}..{high:_}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
        Limits(thread_timeout=value)
    except (ValueError, VcmError):
        raise argparse.ArgumentTypeError(
            f"{quote(text)} is not a number of seconds above 0"
        ) from None
    return value


def load(spec: str) -> Any:
    """Import ``module:attribute`` (dots allowed in the attribute)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise _UsageError(f"{quote(spec)} is not MODULE:NAME")
    sys.path.insert(0, ".")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:
        raise _UsageError(f"cannot import {quote(module_name)}: {quote(str(error))}") from None
    finally:
        sys.path.pop(0)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _UsageError(f"{quote(module_name)} has no {quote(attribute)}") from None
    if not callable(target):
        raise _UsageError(f"{quote(spec)} is not callable")
    return target


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m avcm.testing",
        description="avcm's deterministic race finder: replay a recorded schedule, or check "
        "a driver against the contract's concurrency rules.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    replay_parser = commands.add_parser(
        "replay", help="rerun one recorded schedule and print its timeline"
    )
    replay_parser.add_argument("scenario", help="the scenario, as MODULE:NAME")
    replay_parser.add_argument("token", help="the replay token a failure printed")
    replay_parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="trio",
        help="the event loop the failure was found on (default: %(default)s)",
    )
    replay_parser.add_argument(
        "--thread-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=Limits().thread_timeout,
        help="how long a worker thread may keep the run still before it is abandoned "
        "(Limits.thread_timeout; default: %(default)g)",
    )
    replay_parser.add_argument(
        "--chrome-trace",
        metavar="PATH",
        help="if it fails, also write its timeline as a Chrome trace",
    )
    conformance = commands.add_parser(
        "conformance", help="run the contract's rules 1-9 against a driver factory"
    )
    conformance.add_argument(
        "factory", nargs="?", help="MODULE:FACTORY, called with a PhysicalMemory"
    )
    conformance.add_argument(
        "--backend",
        choices=BACKENDS,
        default="trio",
        help="the event loop to run the scenarios on (default: %(default)s)",
    )
    conformance.add_argument(
        "--schedules",
        type=_count(1, MAX_SCHEDULES),
        default=200,
        metavar="N",
        help="schedules per scenario, PCT and random walk in turns "
        f"(default: %(default)s; at most {MAX_SCHEDULES:_})",
    )
    conformance.add_argument(
        "--seed",
        type=_count(0, (1 << 64) - 1),
        default=0,
        metavar="N",
        help="the seed of every scenario: the same seed runs the same schedules "
        "(default: %(default)s)",
    )
    conformance.add_argument("--replay", metavar="TOKEN", help="replay one scenario's token")
    conformance.add_argument("--scenario", help="only this scenario (see --list)")
    conformance.add_argument("--list", action="store_true", help="list the scenarios")
    conformance.add_argument(
        "--workers",
        type=_count(1, 1024),
        metavar="N",
        help="run the scenarios on a local Dask cluster of N processes ('avcm[cluster]')",
    )
    conformance.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the scenarios on the Dask cluster of this scheduler (tcp://HOST:8786)",
    )
    conformance.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait for --scheduler to answer before giving up (default: 5; a "
        "refused connection fails at once)",
    )
    return parser


def _writable(path: str) -> None:
    problem = output_file_problem(Path(path))
    if problem is not None:
        raise _UsageError(f"--chrome-trace {quote(path)}: cannot write: {problem}")


def _replay(args: argparse.Namespace) -> int:
    if args.chrome_trace:
        _writable(args.chrome_trace)
    token = ReplayToken.parse(args.token)
    scenario = load(args.scenario)
    if not (
        inspect.iscoroutinefunction(scenario)
        or inspect.iscoroutinefunction(type(scenario).__call__)
    ):
        # a scenario is only ever called to run it: never call anything else to find out
        raise _UsageError(f"{quote(args.scenario)} is not a scenario (an async function)")
    failure = replay(
        scenario, token, backend=args.backend, limits=Limits(thread_timeout=args.thread_timeout)
    )
    if failure is None:
        print(f"replayed {len(token.decisions)} steps of {args.scenario}: it passed")
        return 0
    print(failure.report())
    if args.chrome_trace:
        failure.timeline.write_chrome_trace(args.chrome_trace)
        print(f"chrome trace: {args.chrome_trace}")
    return 1


EXIT_NO_VERDICT = 4  # conformance: scenarios could not run, and none failed


def _conformance(args: argparse.Namespace) -> int:
    from ._conformance import SCENARIOS, check_conformance
    from ._errors import ConformanceFailure
    from ._progress import progress_bar

    if args.list:
        for name, (rule, doc) in SCENARIOS.items():
            print(f"{name:32} {rule}: {doc}")
        return 0
    if args.factory is None:
        raise _UsageError("conformance: name a driver factory, MODULE:FACTORY")
    factory = load(args.factory)
    scenarios = 1 if args.scenario is not None else len(SCENARIOS)
    total = scenarios if args.replay is not None else scenarios * args.schedules
    with progress_bar("conformance", total) as update:
        try:
            report = check_conformance(
                factory,
                backend=args.backend,
                schedules=args.schedules,
                seed=args.seed,
                only=args.scenario,
                replay_token=args.replay,
                factory_spec=args.factory,
                on_progress=update,
                workers=args.workers,
                scheduler=args.scheduler,
                connect_timeout=args.connect_timeout,
            )
        except ConformanceFailure as failure:
            report = failure.report
    print(report.format())
    # (as stress: 1 a rule broken, 4 no verdict; a script must tell the two apart)
    return 0 if report.passed else 1 if report.failed else EXIT_NO_VERDICT


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("avcm.testing", lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "replay":
            return _replay(args)
        return _conformance(args)
    except ReplayDivergedError as error:
        print(f"avcm.testing: {error}", file=sys.stderr)
        return 3
    except (_UsageError, VcmError) as error:
        print(f"avcm.testing: {error}", file=sys.stderr)
        return 2
