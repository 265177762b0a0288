"""Run every measurement on asyncio and trio, repeated, and print one table (or write it as
JSON, or compare it with an earlier JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from avcm import testing
from avcm.testing import output_file_problem, run_main

from . import _allocator, _rows
from ._campaign import campaign_rows
from ._compare import BadDocument, compare, document, load, render_changes
from ._measure import UNSTABLE_SPREAD, Group, Row, measure_groups, steps
from ._races import race_rows
from ._stress import stress_rows

__all__ = ["build_parser", "main"]

REPEATS = 5
QUICK_REPEATS = 3
# for the rows that take half a minute or more to measure: a million live allocations, a
# Dask cluster
LONG_REPEATS = 3

EXIT_STATUSES = (
    "Exit status: 0 every target met (and, with --compare, no row regressed beyond the "
    "noise); 1 a target missed on the median of the repeats, or, with --compare, a row "
    "regressed; 2 a usage error, before any measurement: a bad option (with the usage), or one "
    "line on stderr for a --json path that could not be written or a --compare file that is "
    "missing, not JSON or not a bench --json document of a version this bench reads (and, "
    "after the measurement, a --json that could not be written); 130 interrupted (Ctrl-C)."
)


def groups(quick: bool) -> list[Group]:
    """Every measurement, in the order of the table: rows that do not depend on the event
    loop ("any") first, so that the first repeat of the allocators' runs while the process is
    small. Adding a row is adding a line."""
    scale = 10 if quick else 1
    both = ("asyncio", "trio")
    largest = _allocator.sizes(quick)[-1]
    return [
        *(_allocator_group(live, scaling=live == largest) for live in _allocator.sizes(quick)),
        Group("any", "memory", lambda _: _rows.memory_per_part(100_000)),
        Group("any", "memory", lambda _: _rows.memory_per_phys(1)),
        Group("any", "memory", lambda _: _rows.memory_per_phys(64)),
        *(Group(b, "bind+unbind", lambda _: _rows.op_overhead(20_000 // scale)) for b in both),
        *(Group(b, "reserve", lambda _: _allocator.reserve_scaling(quick)) for b in both),
        *(Group(b, "contention", lambda _: _rows.contention()) for b in both),
        *(Group(b, "activation", lambda _: _rows.activation(10_000 // scale)) for b in both),
        *(
            Group(b, "memory", lambda _: _rows.memory_per_reservation(20_000 // scale))
            for b in both
        ),
        *(
            Group(b, "memory", lambda _: _rows.memory_per_fragmented_reservation(20_000 // scale))
            for b in both
        ),
        *(Group(b, "memory", lambda _: _rows.memory_per_binding(2_000 // scale)) for b in both),
        # each of these rows is already the best, or the median, of three runs of a minute or
        # more in all (bench/_stress.py): measured once
        *(Group(b, "stress harness", lambda b: stress_rows(b, quick), repeats=1) for b in both),
        Group(
            "trio",
            "race finder",
            lambda _: race_rows(
                seeds=3 if quick else 10, cap=2_000, plain_cap=200 if quick else 1_000
            ),
            repeats=1,
        ),
        # worker processes and a cluster per size: too slow for a smoke run
        *(
            []
            if quick
            else [
                Group(
                    "any",
                    "campaign on Dask",
                    lambda _: campaign_rows(runs=8, ops=3_000),
                    repeats=LONG_REPEATS,
                )
            ]
        ),
    ]


def _allocator_group(live: int, *, scaling: bool) -> Group:
    return Group(
        "any",
        f"VA allocator, {live:,} live",
        lambda _: _allocator.allocator_rows(live, scaling=scaling),
        repeats=LONG_REPEATS if live >= 1_000_000 else None,
    )


def measure(
    quick: bool = False,
    on_progress: testing.ProgressCallback | None = None,
    repeats: int = REPEATS,
) -> dict[str, list[Row]]:
    """Every row, per backend (rows that do not depend on the event loop under "any"), each
    the median of *repeats* measurements. *on_progress* is told ``(steps done, what comes
    next)`` before each step, out of :func:`measured_steps`."""
    return measure_groups(groups(quick), repeats, on_progress)


def measured_steps(quick: bool, repeats: int) -> int:
    return steps(groups(quick), repeats)


def render(results: dict[str, list[Row]], console: Console) -> None:
    table = Table(
        title="avcm performance: ratios measured side by side in one run, median of repeats"
    )
    columns = ("backend", "what", "compared with", "ratio", "min", "spread", "target", "met")
    for column in (*columns, "detail (the median repeat)"):
        numeric = column in ("ratio", "min", "spread")
        table.add_column(column, justify="right" if numeric else "left")
    for backend, rows in results.items():
        for row in rows:
            met = "-" if row.met is None else ("yes" if row.met else "NO")
            spread = f"{row.spread:.0%}" + (" unstable" if row.unstable else "")
            table.add_row(
                backend,
                row.what,
                row.baseline,
                f"{row.ratio:.2f}",
                f"{row.min:.2f}",
                spread,
                row.target,
                met,
                row.detail,
            )
    console.print(table)
    repeats = max((len(row.values) for rows in results.values() for row in rows), default=1)
    console.print(
        f"ratio: the median of {repeats} repeats (rows that count schedules, not time: one); "
        f"spread: (max - min) / median, unstable above {UNSTABLE_SPREAD:.0%}"
    )
    _allocator.render_table(results.get("any", []), console)


def main(argv: Sequence[str] | None = None) -> int:
    """The exit statuses are in :data:`EXIT_STATUSES` (``--help``)."""
    return run_main("bench", lambda: _main(argv))


def _positive_odd(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if not 1 <= value <= 101 or value % 2 == 0:
        raise argparse.ArgumentTypeError(
            f"{value} is not an odd number from 1 to 101 (the median must be a measured repeat)"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=EXIT_STATUSES,
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the table, with every repeat, as JSON"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OLD.json",
        help="print each row's change against an earlier --json, flagging regressions beyond "
        "the noise",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_odd,
        help=f"measure each row this many times, an odd number (default {REPEATS}, "
        f"{QUICK_REPEATS} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, for a smoke run: targets are set for the full ones, none is judged",
    )
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json is not None:
        problem = output_file_problem(args.json)
        if problem is not None:
            print(f"bench: error: --json {args.json}: {problem}", file=sys.stderr)
            return 2
    old: dict[str, list[Row]] | None = None
    if args.compare is not None:
        try:
            old = load(args.compare)
        except BadDocument as error:
            print(f"bench: error: --compare {args.compare}: {error}", file=sys.stderr)
            return 2
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    with testing.progress_bar("bench", measured_steps(args.quick, repeats)) as update:
        results = measure(args.quick, update, repeats)
    if args.quick:
        results = {b: [replace(r, met=None) for r in rows] for b, rows in results.items()}
    console = Console(width=200)
    render(results, console)
    regressed = False
    if old is not None:
        changes = compare(old, results)
        render_changes(changes, str(args.compare), console)
        regressed = any(change.verdict == "regressed" for change in changes)
    if args.json is not None:
        text = json.dumps(document(results, quick=args.quick, repeats=repeats), indent=2)
        try:
            args.json.write_text(text)
        except OSError as error:
            print(f"bench: error: --json {args.json}: {error.strerror}", file=sys.stderr)
            return 2
    missed = any(r.met is False for rows in results.values() for r in rows)
    return 1 if missed or regressed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
