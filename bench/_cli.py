"""Run every measurement on asyncio and trio and print one table (or write it as JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table

from avcm import testing
from avcm.testing import backend_options, output_file_problem, run_main

from . import _rows
from ._campaign import campaign_rows
from ._races import race_rows
from ._rows import Row
from ._stress import stress_rows

__all__ = ["main"]

# the groups of rows measure() reports progress for: allocator and memory, then the operations
# and the stress harness on each backend, then the race finder on trio (and, but for --quick,
# the campaign engine on Dask)
MEASURED_GROUPS = 6


def measured_groups(quick: bool) -> int:
    return MEASURED_GROUPS if quick else MEASURED_GROUPS + 1


async def _async_rows(quick: bool) -> list[Row]:
    scale = 10 if quick else 1
    return [
        await _rows.op_overhead(20_000 // scale),
        await _rows.allocator_scaling(1_000_000 // scale),
        await _rows.contention(),
        await _rows.activation(10_000 // scale),
        await _rows.memory_per_reservation(20_000 // scale),
        await _rows.memory_per_fragmented_reservation(20_000 // scale),
        await _rows.memory_per_binding(2_000 // scale),
    ]


def measure(
    quick: bool = False, on_progress: testing.ProgressCallback | None = None
) -> dict[str, list[Row]]:
    """Every row, per backend; rows that do not depend on the event loop under "any", measured
    first, while the process is small (the allocators' ratio is sensitive to a crowded heap).
    *on_progress* is told ``(groups measured, what comes next)`` before each group of rows."""
    done = 0

    def next_group(what: str) -> None:
        nonlocal done
        if on_progress is not None:
            on_progress(done, what)
        done += 1

    next_group("allocator and memory")
    results: dict[str, list[Row]] = {
        "any": [
            _rows.allocator_vs_genpool(10_000 if quick else 100_000),
            _rows.memory_per_part(100_000),
            _rows.memory_per_phys(1),
            _rows.memory_per_phys(64),
        ]
    }
    for backend in ("asyncio", "trio"):
        next_group(f"{backend}: operations")
        options = backend_options(backend, 0, virtual=False)  # as every run: Ctrl-C at a checkpoint
        rows = anyio.run(_async_rows, quick, backend=backend, backend_options=options)
        next_group(f"{backend}: stress harness")
        rows += stress_rows(backend, quick)
        if backend == "trio":
            next_group("trio: race finder")
            rows += race_rows(seeds=3 if quick else 5, cap=2_000, plain_cap=200 if quick else 1_000)
        results[backend] = rows
    if not quick:
        # worker processes and a cluster per size: too slow for a smoke run
        next_group("campaign on Dask")
        results["any"] += campaign_rows(runs=8, ops=3_000)
    if on_progress is not None:
        on_progress(done)
    return results


def render(results: dict[str, list[Row]]) -> None:
    table = Table(title="avcm performance: ratios measured side by side in one run")
    for column in ("backend", "what", "compared with", "ratio", "target", "met", "detail"):
        table.add_column(column, justify="right" if column == "ratio" else "left")
    for backend, rows in results.items():
        for row in rows:
            met = "-" if row.met is None else ("yes" if row.met else "NO")
            table.add_row(
                backend, row.what, row.baseline, f"{row.ratio:.2f}", row.target, met, row.detail
            )
    Console(width=200).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 every target met, 1 one missed, 2 a usage error (one line, before any
    measurement: a --json that could not be written after it), 130 interrupted (Ctrl-C)."""
    return run_main("bench", lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", type=Path, help="also write the table as JSON to PATH")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, for a smoke run: targets are set for the full ones, none is judged",
    )
    args = parser.parse_args(argv)
    if args.json is not None:
        problem = output_file_problem(args.json)
        if problem is not None:
            print(f"bench: error: --json {args.json}: {problem}", file=sys.stderr)
            return 2
    with testing.progress_bar("bench", measured_groups(args.quick)) as update:
        results = measure(args.quick, update)
    if args.quick:
        results = {b: [replace(r, met=None) for r in rows] for b, rows in results.items()}
    render(results)
    if args.json is not None:
        document = {b: [asdict(r) for r in rows] for b, rows in results.items()}
        try:
            args.json.write_text(json.dumps(document, indent=2))
        except OSError as error:
            print(f"bench: error: --json {args.json}: {error.strerror}", file=sys.stderr)
            return 2
    return 0 if all(r.met is not False for rows in results.values() for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
