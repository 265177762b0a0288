"""What a controlled run did, step by step, and how to show it to a person."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

from .. import VcmError
from ..lowlevel import errno_name

__all__ = ["TERMINAL_WIDTH", "Step", "TaskOutcome", "Timeline"]

TERMINAL_WIDTH = 100
"""The widest a timeline is printed: reports stay readable in a 100-column terminal."""
SHOWN_STEPS = 200
"""The most steps a formatted timeline shows: the first and the last 100 of a longer run, with
how many are left out between (:meth:`Timeline.chrome_trace` has them all)."""


def wrap(text: str) -> str:
    """*text* with each line wrapped to :data:`TERMINAL_WIDTH` (words are never cut, so a
    token or a path stays whole), continuation lines indented."""
    return "\n".join(
        textwrap.fill(
            line,
            TERMINAL_WIDTH,
            subsequent_indent="    ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        for line in text.splitlines() or [""]
    )


def _cell(step: Step) -> str:
    return f"{step.operation} {step.point}" if step.operation else step.point


@dataclass(frozen=True, slots=True)
class Step:
    """One scheduling decision: *task* was let go from *point*, inside *operation*."""

    index: int
    task: int
    point: str
    operation: str
    time: float
    injected: bool = False  # not a step of the task: a cancellation the strategy injected
    # not a step of the task either: its worker thread outlasted the next timer, which the
    # strategy let fall due first (the task waits on for the thread)
    outlasted: bool = False
    # nor this: a call back into the event loop from a thread whose caller left came in, and
    # the loop ran it (in the column of the task that left)
    called_back: bool = False


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one task of :meth:`Run.concurrently` ended: a value, or the exception it raised."""

    task: int
    name: str
    value: Any = None
    error: BaseException | None = None
    # a cancellation ended it (and it let it end it): an injected one, or, on asyncio, one no
    # scope of the task's caught (its Task.cancel(), a CancelledError it let out)
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """The value, or raise the task's exception."""
        if self.error is not None:
            raise self.error
        return self.value

    def describe(self) -> str:
        if self.error is None:
            if self.cancelled:
                return "cancelled"
            return "ok" if self.value is None else f"ok -> {self.value!r}"
        if isinstance(self.error, VcmError):
            name = errno_name(self.error.errno or 0)
            return f"{type(self.error).__name__} [{name}] {self.error.strerror}"
        return f"{type(self.error).__name__}: {self.error}"


@dataclass(frozen=True, slots=True)
class Timeline:
    """The steps of a run, the outcome of every task it ran, and how many steps preempted
    (chose out of the event loop's own order: see :mod:`avcm.testing`'s strategies)."""

    tasks: tuple[str, ...]
    steps: tuple[Step, ...]
    outcomes: tuple[TaskOutcome, ...]
    preemptions: int
    # (step, clock before, clock after) of each time the step budget moved virtual time on to
    # the end of a sleep while the tasks kept changing state or, past a budget of it, only
    # counted up: steady work and a poll that counts its tries look the same to it
    budget_moves: tuple[tuple[int, float, float], ...] = ()

    def budget_note(self) -> str:
        """A sentence on where the step budget moved the clock on while the tasks kept
        changing state, or ``""`` if it never did: a verdict after such a move may be one
        that a faster machine would not give."""
        if not self.budget_moves:
            return ""
        moves = ", ".join(
            f"at step {step} from {before:.6g} s to {after:.6g} s"
            for step, before, after in self.budget_moves[:3]
        )
        more = len(self.budget_moves) - 3
        more_text = f" and {more} more time(s)" if more > 0 else ""
        return (
            f"note: the step budget moved the clock on to the end of a sleep {moves}{more_text}, "
            "after the tasks kept changing state (or only counted up) for the whole budget "
            "with virtual time standing still: it cannot tell steady work from a poll that "
            "counts its tries. A real loop takes as long as the machine makes it for such "
            "work; if it is meant to end before that sleep, raise Limits.max_steps."
        )

    @property
    def outlasted(self) -> int:
        """How many timers fell due while worker threads were still at work (``slow_threads``)."""
        return sum(step.outlasted for step in self.steps)

    def deviations(self) -> str:
        """What the schedule did besides letting tasks go on: ``"2 preemption(s)"``, and the
        timers its threads outlasted, if any."""
        outlasted = self.outlasted
        slow = f", {outlasted} timer(s) outlasted by a thread" if outlasted else ""
        return f"{self.preemptions} preemption(s){slow}"

    def format(self, width: int | None = None) -> str:
        """What each task did, in the order it did it, in at most :data:`TERMINAL_WIDTH`
        columns: one column per task, as wide as its widest cell up to 60 characters (or
        *width*); when the tasks are too many for columns of 16 characters, one line per step
        naming its task instead. The full text of every step is in :meth:`chrome_trace`."""
        columns = len(self.tasks)
        if width is None:
            cells = [_cell(step) for step in self.steps]
            cells += [f"{index} {name}" for index, name in enumerate(self.tasks)]
            fits = (TERMINAL_WIDTH - 7 - 3 * (columns - 1)) // max(columns, 1)
            if fits < 16 and columns > 1:
                return self._format_rows()
            width = min(60, fits, max(map(len, cells), default=12))
        names = [f"{index} {name}"[:width] for index, name in enumerate(self.tasks)]
        lines = ["step │ " + " │ ".join(name.ljust(width) for name in names)]
        lines.append("─────┼─" + "─┼─".join("─" * width for _ in names))
        for step in self._shown():
            if step is None:
                lines.append(self._elided())
                continue
            cells = [""] * len(names)
            cells[step.task] = _cell(step)[:width]
            lines.append(f"{step.index:4d} │ " + " │ ".join(c.ljust(width) for c in cells))
        cells = [""] * len(names)
        for outcome in self.outcomes:
            cells[outcome.task] = ("=> " + outcome.describe())[:width]
        lines.append("  end│ " + " │ ".join(c.ljust(width) for c in cells))
        return "\n".join([*(line.rstrip() for line in lines), *self._errors()])

    def _format_rows(self) -> str:
        names = [f"{index} {name}" for index, name in enumerate(self.tasks)]
        name_width = min(24, max(map(len, names)))
        text_width = TERMINAL_WIDTH - 10 - name_width
        lines = [f"step │ {'task'.ljust(name_width)} │ did", "─────┼─" + "─" * (name_width + 8)]
        for step in self._shown():
            if step is None:
                lines.append(self._elided())
                continue
            name = names[step.task][:name_width].ljust(name_width)
            lines.append(f"{step.index:4d} │ {name} │ {_cell(step)[:text_width]}")
        for outcome in self.outcomes:
            name = names[outcome.task][:name_width].ljust(name_width)
            lines.append(f"  end│ {name} │ {('=> ' + outcome.describe())[:text_width]}")
        return "\n".join([*(line.rstrip() for line in lines), *self._errors()])

    def _shown(self) -> list[Step | None]:
        """The steps a report shows: all of them, or, past :data:`SHOWN_STEPS`, the first
        and the last half of that many with None for the ones left out between."""
        if len(self.steps) <= SHOWN_STEPS:
            return list(self.steps)
        half = SHOWN_STEPS // 2
        return [*self.steps[:half], None, *self.steps[-half:]]

    def _elided(self) -> str:
        return f"  ...│ ... {len(self.steps) - SHOWN_STEPS // 2 * 2} steps ..."

    def _errors(self) -> list[str]:
        """Each task's error in full (cells cut it), wrapped to the terminal's width."""
        return [
            wrap(f"task {outcome.task} ({outcome.name}): {outcome.describe()}")
            for outcome in self.outcomes
            if outcome.error is not None
        ]

    def chrome_trace(self) -> dict[str, Any]:
        """The run as a Chrome/Perfetto trace (``chrome://tracing``, ui.perfetto.dev): a track
        per task, a slice per step, one microsecond a step."""
        events: list[dict[str, Any]] = [
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": index, "args": {"name": name}}
            for index, name in enumerate(self.tasks)
        ]
        for step in self.steps:
            events.append(
                {
                    "name": step.point,
                    "cat": step.operation,
                    "ph": "X",
                    "ts": step.index,
                    "dur": 1,
                    "pid": 1,
                    "tid": step.task,
                    "args": {"operation": step.operation, "simulated_time": step.time},
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ns"}

    def write_chrome_trace(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(self.chrome_trace(), file, indent=1)
