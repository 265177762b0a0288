"""What a run shows: progress bar, summary table, JSON report and the replay (trace) file."""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from avcm import testing

from ._config import StressConfig
from ._watchdog import STALL_TIMEOUT
from ._workload import RunResult

__all__ = [
    "describe_violation",
    "progress_bar",
    "render_summary",
    "replay_command",
    "report_json",
    "summary_line",
    "write_trace",
]

# 2: latency and vtime from after the quiescence gate, a check after every N operations done
# 3: device probes, a FIFO gate, two contexts per --driver, drains every --drain-every
# 4: --cancel at a sync point (not after a time), --faults for a driver under test too
# 5: windows of --check-every operations, bounded pools
# 6: a drain switches every context off together first, then starts them from cold once (the
#    driver calls it makes, and so the latency and fault draws after it, changed)
# 7: a drain starts the contexts from cold a second time, with nothing bound (the draws after
#    it change), and the end of a run is a drain; with custom contexts, only alloc picks the
#    harness's own (--driver: custom=2,carveout=1 by default)
# 8: half the --cancel operations are cancelled a drawn time into their driver calls, and one
#    racing restart's switch-on in 4 is first cancelled part of the way through
# 9: one alloc in 8 makes a phys of scattered parts; an unmapping probes its walk's pages
# 10: a drain cancels each switch-on from cold part of the way first
# 11: a quarter of the --cancel operations are cancelled right after their driver takes memory
TRACE_VERSION = 11


@contextmanager
def progress_bar(config: StressConfig, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal, else None. It is fed the number of
    operations done, by the operation loop itself; with ``--duration`` it shows the time."""
    by_time = config.duration is not None
    total = config.duration if config.duration is not None else config.ops
    with testing.progress_bar("stress", total, enabled=enabled, count=not by_time) as update:
        if update is None:
            yield None
            return
        if not by_time:
            yield update
            return
        started = time.monotonic()
        yield lambda done: update(time.monotonic() - started, f"{done:,} ops")


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _micros(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def render_summary(config: StressConfig, result: RunResult, out: TextIO) -> None:
    console = Console(file=out, width=120, highlight=False)
    clock = "simulated" if config.clock == "virtual" else "wall"
    rate = result.ops / result.wall_seconds if result.wall_seconds else 0.0
    console.print(
        f"avcm stress: backend={config.backend} seed={config.seed} tasks={config.tasks} "
        f"contexts={','.join(f'{k}={n}' for k, n in config.contexts if n)} "
        f"latency={config.latency} faults={config.faults} cancel={config.cancel}"
    )
    if config.driver is not None:
        console.print(driver_contexts(config))
    table = Table(title=None, show_edge=False, pad_edge=False)
    table.add_column("operation")
    table.add_column("count", justify="right")
    table.add_column(f"p50 µs ({clock})", justify="right")
    table.add_column(f"p99 µs ({clock})", justify="right")
    table.add_column("outcomes")
    for op in sorted(result.counts):
        outcomes = ", ".join(
            f"{name} {count}" for name, count in sorted(result.outcomes[op].items())
        )
        latencies = result.latencies[op]
        table.add_row(
            op,
            f"{result.counts[op]:,}",
            _micros(_percentile(latencies, 0.5)),
            _micros(_percentile(latencies, 0.99)),
            outcomes,
        )
    console.print(table)
    checks = sum(result.checks.values())
    console.print(
        f"{result.ops:,} ops in {result.wall_seconds:.2f} s wall ({rate:,.0f} ops/s); "
        f"{checks:,} checks ({', '.join(f'{k} {v:,}' for k, v in sorted(result.checks.items()))})"
    )
    if result.warnings:
        console.print(
            "warnings (expected when tasks race): "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.warnings.items()))
        )
    for line in unjudged_lines(result):
        console.print(line)
    violations = 0 if result.violation is None else 1
    console.print(f"violations: {violations}")


def driver_contexts(config: StressConfig) -> str:
    """What a ``--driver`` run made of the factory, said in its header."""
    count = sum(n for kind, n in config.contexts if kind == "custom")
    if count == 1:
        said = (
            f"one context from {config.driver} (hardware that contexts share is not raced: "
            "the default makes three)"
        )
    else:
        said = (
            f"{count} contexts from {config.driver} on one physical memory, so that hardware "
            "they share is raced too (--contexts custom=1 for one)"
        )
    if any(kind == "carveout" and n for kind, n in config.contexts):
        said += (
            "; with a carve-out context of the harness's own, whose memory (half of it "
            "aligned to 4 KiB only, half to large pages) the tasks map into them too"
        )
    return said


def summary_line(config: StressConfig, result: RunResult) -> str:
    """The one line ``--quiet`` prints of a run."""
    violations = 0 if result.violation is None else 1
    no_verdict = "" if result.no_verdict is None else ", NO VERDICT"
    return (
        f"avcm stress: backend={config.backend} seed={config.seed}: {result.ops:,} ops, "
        f"{violations} violation{'' if violations == 1 else 's'}{no_verdict}{_unjudged(result)}"
    )


def _unjudged(result: RunResult) -> str:
    """How many operations went unjudged after undos that failed, for the summary line."""
    if not result.unjudged:
        return ""
    return f" ({result.not_judged:,} not judged after {len(result.unjudged)} undo(s) that failed)"


def unjudged_lines(result: RunResult) -> list[str]:
    """A line for each window of operations not judged, from an undo that failed to where the
    harness started over on new memory."""
    return [f"not judged: operations {first}-{last}: {why}" for first, last, why in result.unjudged]


def replay_command(
    trace_path: Path, driver: str | None = None, stall_timeout: float | None = None
) -> str:
    """The command that replays *trace_path*, with the interpreter that is running now (and
    the run's ``--driver``: a replay imports only what its command line names; and the stall
    timeout of a run that stalled, which the trace does not decide)."""
    words = [sys.executable, "-m", "stress", "--replay", str(trace_path)]
    if driver is not None:
        words += ["--driver", driver]
    if stall_timeout is not None:
        words += ["--stall-timeout", f"{stall_timeout:g}"]
    return shlex.join(words)


def describe_violation(
    config: StressConfig,
    result: RunResult,
    trace_path: Path | None,
    stall_timeout: float = STALL_TIMEOUT,
) -> str:
    """What a run that found a violation (or ended with no verdict) prints: what, where, and
    how to replay it; "" for a clean run."""
    violation = result.violation
    if violation is not None:
        said = f"VIOLATION at operation {violation.seq} ({violation.rule}): {violation.description}"
    elif result.no_verdict is not None:
        said = f"NO VERDICT from {result.no_verdict}"
    else:
        return ""
    lines = [said, f"seed {config.seed}, backend {config.backend}"]
    stalled = violation is not None and violation.rule == "progress"
    if result.abandoned:
        lines.append(
            "(the run could not be stopped: a task was stuck where no cancellation reaches, "
            "such as a driver call of a teardown, which avcm finishes shielded; it was "
            "abandoned, and this is what it had done)"
        )
    if trace_path is not None:
        lines.append(f"trace written to {trace_path}")
        wait = stall_timeout if stalled and stall_timeout != STALL_TIMEOUT else None
        lines.append(f"replay: {replay_command(trace_path, config.driver, wait)}")
    return "\n".join(lines)


@functools.cache
def harness_code() -> str:
    """A digest of the code that decides a run besides the driver under test: avcm, the
    sample drivers and this harness (each ``.py`` file's path and bytes). A trace records it,
    so that a replay by other code says so: a change that moves a seed's run may come
    without a new :data:`TRACE_VERSION` (attack39 replayed a trace of the code before one)."""
    import avcm
    import drivers
    import stress

    digest = hashlib.sha256()
    for package in (avcm, drivers, stress):
        root = Path(package.__path__[0])
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def trace_document(config: StressConfig, result: RunResult) -> dict[str, Any]:
    violation = result.violation
    return {
        "version": TRACE_VERSION,
        "code": harness_code(),
        "config": config.to_json(),
        "violation": None
        if violation is None
        else {"rule": violation.rule, "description": violation.description, "seq": violation.seq},
        "no_verdict": result.no_verdict,
        "unjudged": _unjudged_json(result),
        "started": result.started,
        "trace": [asdict(outcome) for outcome in result.trace],
    }


def trace_path(config: StressConfig, directory: Path) -> Path:
    """Where a run's trace goes: named by backend, seed and a hash of every other setting, so
    runs that differ (driver, options) do not overwrite each other's trace."""
    settings = json.dumps(config.to_json(), sort_keys=True).encode()
    digest = hashlib.sha256(settings).hexdigest()[:8]
    return directory / f"stress-{config.backend}-seed{config.seed}-{digest}.trace.json"


def write_trace(config: StressConfig, result: RunResult, directory: Path) -> Path:
    path = trace_path(config, directory)
    path.write_text(json.dumps(trace_document(config, result)))
    return path


def report_json(config: StressConfig, result: RunResult) -> dict[str, Any]:
    """The machine-readable report (``--json``)."""
    violation = result.violation
    return {
        "config": config.to_json(),
        "ops": result.ops,
        "wall_seconds": result.wall_seconds,
        "ops_per_second": result.ops / result.wall_seconds if result.wall_seconds else 0.0,
        "counts": dict(result.counts),
        "outcomes": {op: dict(counter) for op, counter in result.outcomes.items()},
        "latency_seconds": {
            op: {
                "p50": _percentile(values, 0.5),
                "p99": _percentile(values, 0.99),
                "mean": statistics.fmean(values) if values else 0.0,
            }
            for op, values in result.latencies.items()
        },
        "checks": dict(result.checks),
        "warnings": dict(result.warnings),
        "violation": None
        if violation is None
        else {"rule": violation.rule, "description": violation.description, "seq": violation.seq},
        "no_verdict": result.no_verdict,
        "unjudged": _unjudged_json(result),
        "not_judged": result.not_judged,
        "abandoned": result.abandoned,
    }


def _unjudged_json(result: RunResult) -> list[dict[str, Any]]:
    return [{"first": first, "last": last, "why": why} for first, last, why in result.unjudged]
