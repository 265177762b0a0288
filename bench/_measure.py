"""The measurement machinery: a :class:`Row` is one ratio; a :class:`Group` is a function that
measures one or more rows, which :func:`measure_groups` calls several times, round robin with
the other groups, and folds into one row each, judged on the median.

A row function stays what it always was: it measures once and returns a ``Row`` (or a list of
them) with its ratio and whether that ratio meets the target. Adding a row is one
``Group(...)`` line in the list of :mod:`bench._cli`.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio

from avcm.testing import backend_options

__all__ = ["UNSTABLE_SPREAD", "Group", "Row", "aggregate", "measure_groups"]

# a row whose repeats spread more than this, as a fraction of their median, is "unstable"
UNSTABLE_SPREAD = 0.20

RowFunction = Callable[[str], "Row | list[Row] | Awaitable[Row | list[Row]]"]


@dataclass(frozen=True)
class Row:
    """One measured ratio of two things timed side by side in one run.

    *target* reads ``"<= N..."`` when lower is better or ``">= N..."`` when higher is (what
    ``--compare`` calls a regression), anything else (``"reported"``) when there is no target,
    and then *met* is ``None``. A row function fills in the first six fields from one
    measurement; the framework adds *samples*, the ratio of every repeat in the order measured,
    and makes *ratio*, *met* and *detail* those of the median repeat.
    """

    what: str
    baseline: str
    ratio: float
    target: str
    met: bool | None  # None: reported, no target
    detail: str = ""
    samples: tuple[float, ...] = field(default=())

    @property
    def values(self) -> tuple[float, ...]:
        return self.samples or (self.ratio,)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float:
        """``(max - min) / median`` of the repeats: 0 for a single one."""
        median = self.median
        return (self.max - self.min) / median if median else 0.0

    @property
    def unstable(self) -> bool:
        return self.spread > UNSTABLE_SPREAD

    @property
    def better(self) -> Literal["lower", "higher"] | None:
        """Which way the ratio improves, read from the target; ``None`` for a reported row."""
        target = self.target.lstrip()
        if target.startswith("<"):
            return "lower"
        if target.startswith(">"):
            return "higher"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "detail": self.detail,
            "samples": list(self.values),
            "min": self.min,
            "median": self.median,
            "max": self.max,
            "spread": self.spread,
            "unstable": self.unstable,
        }


@dataclass(frozen=True)
class Group:
    """Rows measured together: ``rows(backend)`` measures each once and returns them (or an
    awaitable of them, run in a fresh event loop of *backend*; ``"any"`` runs it on asyncio).

    *repeats*: at most this many repeats, fewer than the run's: 1 for rows that count
    something deterministic (schedules, not time), the same every repeat; 3 for rows so long
    to measure that the run's repeats would take too long. *label* is what the progress bar
    says."""

    backend: str
    label: str
    rows: RowFunction
    repeats: int | None = None

    def repeats_in(self, run_repeats: int) -> int:
        return run_repeats if self.repeats is None else min(self.repeats, run_repeats)


def aggregate(repeats: Sequence[Sequence[Row]]) -> list[Row]:
    """Rows measured several times (one sequence per repeat) folded into one row per
    ``what``, in the order first measured: the median repeat's ratio, verdict and detail, with
    every repeat's ratio as its samples. The median of an even number of repeats is the upper
    of the middle two when lower is better, the lower one otherwise: the less flattering."""
    by_what: dict[str, list[Row]] = {}
    for rows in repeats:
        for row in rows:
            by_what.setdefault(row.what, []).append(row)
    folded = []
    for measured in by_what.values():
        ordered = sorted(measured, key=lambda row: row.ratio)
        middle = len(ordered) // 2
        if len(ordered) % 2 == 0 and measured[0].better != "lower":
            middle -= 1
        median = ordered[middle]
        samples = tuple(sample for row in measured for sample in row.values)
        folded.append(replace(median, samples=samples))
    return folded


def _measure_once(group: Group) -> list[Row]:
    result = group.rows(group.backend)
    if isinstance(result, Awaitable):
        pending: Awaitable[Row | list[Row]] = result
        backend = "asyncio" if group.backend == "any" else group.backend
        options = backend_options(backend, 0, virtual=False)  # as every run: Ctrl-C at a checkpoint

        async def awaited() -> Row | list[Row]:
            return await pending

        result = anyio.run(awaited, backend=backend, backend_options=options)
    return [result] if isinstance(result, Row) else list(result)


def steps(groups: Sequence[Group], repeats: int) -> int:
    """How many times :func:`measure_groups` measures a group: the progress bar's total."""
    return sum(group.repeats_in(repeats) for group in groups)


def measure_groups(
    groups: Sequence[Group],
    repeats: int,
    on_progress: Callable[..., None] | None = None,
) -> dict[str, list[Row]]:
    """Each group measured *repeats* times (or its own fewer), round robin: the whole list,
    then again, so that a slow minute of the machine falls on one repeat of many rows rather
    than on every repeat of one. Rows by backend, in the order of *groups*.
    *on_progress* is told ``(steps done, what comes next)`` before each step."""
    measured: list[list[list[Row]]] = [[] for _ in groups]
    done = 0
    for repeat in range(repeats):
        for index, group in enumerate(groups):
            own = group.repeats_in(repeats)
            if repeat >= own:
                continue
            if on_progress is not None:
                on_progress(done, f"{group.backend}: {group.label} ({repeat + 1}/{own})")
            measured[index].append(_measure_once(group))
            done += 1
    if on_progress is not None:
        on_progress(done)
    results: dict[str, list[Row]] = {}
    for group, repeated in zip(groups, measured, strict=True):
        results.setdefault(group.backend, []).extend(aggregate(repeated))
    return results
