"""Replay tokens: a whole schedule as one short string.

``avcm7:pct-d3:7:12:1a2b3c4d:0x3.1.2x5`` is version ``avcm7``, found by ``pct-d3`` with seed 7
as schedule 12; ``1a2b3c4d`` is a digest of the points the run passed (checkpoints, named by
avcm's sync points: so a replay can tell when the code under test changed); the rest is the
decisions, the task chosen at each step, run-length encoded (``0x3`` is task 0 three times;
``c1`` is a cancellation of task 1 injected there; ``t`` lets the next timer fall due while
worker threads are still at work: they outlast it; ``b`` is a worker thread's call back into
the event loop coming in from a thread whose caller left, no choice but a step of the run).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._validate import quote
from ._errors import TokenError

__all__ = ["CALLED_BACK", "TIMER_FIRST", "TOKEN_VERSION", "ReplayToken", "digest_of", "is_cancel"]

TOKEN_VERSION = "avcm7"
# avcm7: a thread whose call was abandoned on cancel and whose caller left has chances to
# outlast later timers, and each of its calls back into the loop is a step of its own, ``b``:
# an avcm6 token of a run with such a thread takes other steps.
# avcm6: a worker thread's call back into the event loop, while a task waits for the thread, is
# a step of that task, chosen among the others (anyio's on asyncio, a call abandoned on cancel
# on trio: the loop runs it whenever the thread hands it over); ``b`` is left to calls back from
# a thread whose caller left: an avcm5 token of a run with such calls back takes other steps.
# avcm5: a worker thread's call back into the event loop that does not run as a step of the
# task waiting for the thread (anyio's on asyncio, a call abandoned on cancel on trio) is a
# step of its own, ``b``: an avcm4 token of a run with such calls back counts its steps apart.
# avcm4: a task whose cancellation could not abort its wait for a worker thread still waits
# for it (no choice is made meanwhile), on asyncio threads' reports come in once no thread
# the tasks wait for is at work (in the order the calls began), and a poll for I/O that the
# spin rule asked for is not made once the I/O ended: an avcm3 schedule need not take the
# same steps.
# avcm3: the spin rule moves time only to a sleeper's timer and not while I/O is outstanding,
# and on asyncio a thread calling back into the loop lets choices go on (an iteration that
# lets threads' calls in makes no choice): an avcm2 schedule need not take the same steps.
# avcm2: I/O and threads' reports are seen when no task can run, asyncio chooses a task from
# the iteration after the one that woke it, and the spin rule moves time: a schedule recorded
# with avcm1 need not take the same steps.
TIMER_FIRST = -(1 << 40)
"""The decision of a step that is no task's: worker threads at work outlasted the next timer,
which fell due first (a cancellation of task *k* is ``-1 - k``, a task's step *k*: far apart)."""
CALLED_BACK = TIMER_FIRST - 1
"""The decision of another step that is no task's: a call back into the event loop came in
from a worker thread whose call was abandoned on cancel and whose caller left (the loop runs
it; in no task's step). No choice: recorded so that the chances for the thread to outlast a
later timer, one between each two of its calls back, are steps apart."""
_NAMED_DECISIONS = {"t": TIMER_FIRST, "b": CALLED_BACK}
_DECISION_NAMES = {decision: name for name, decision in _NAMED_DECISIONS.items()}
MAX_DECISIONS = 10_000_000  # far above any step budget; a bigger token is not one of ours

# Numbers have at most as many digits as ours can: a seed or schedule of 2**64, a task index of
# 10**9, a run length of 10**12 (then refused as too long, by name). Anything longer is not a
# token of ours, and int() of 5,000 digits raises ValueError, not TokenError.
_TOKEN = re.compile(
    r"(?P<strategy>[a-z][a-z0-9-]{0,40}):(?P<seed>\d{1,20}):(?P<schedule>\d{1,20}):"
    r"(?P<digest>[0-9a-fA-F]{8}):"
    r"(?P<decisions>-|(?:c?\d{1,9}|[tb])(?:x\d{1,12})?(?:\.(?:c?\d{1,9}|[tb])(?:x\d{1,12})?)*)"
)


def is_cancel(decision: int) -> bool:
    """Whether *decision* is a cancellation injected there (``-1 - task``)."""
    return decision < 0 and decision not in _DECISION_NAMES


def digest_of(points: Iterable[str]) -> str:
    """A short digest of a run's sequence of ``task:sync point`` steps."""
    crc = 0
    for point in points:
        crc = zlib.crc32(point.encode(), crc)
        crc = zlib.crc32(b"\n", crc)
    return f"{crc:08x}"


def _encode(decisions: Sequence[int]) -> str:
    if not decisions:
        return "-"
    runs: list[str] = []
    index = 0
    while index < len(decisions):
        task = decisions[index]
        end = index
        while end < len(decisions) and decisions[end] == task:
            end += 1
        count = end - index
        name = _DECISION_NAMES.get(task) or (f"c{-1 - task}" if is_cancel(task) else str(task))
        runs.append(f"{name}x{count}" if count > 1 else name)
        index = end
    return ".".join(runs)


def _decode(text: str) -> tuple[int, ...]:
    if text == "-":
        return ()
    decisions: list[int] = []
    for run in text.split("."):
        name, _, count = run.partition("x")
        if name in _NAMED_DECISIONS:
            task = _NAMED_DECISIONS[name]
        else:
            task = -1 - int(name[1:]) if name.startswith("c") else int(name)
        if count and int(count) == 0:
            raise TokenError(f"replay token: a run of zero steps ({run!r})")
        if count and int(count) > MAX_DECISIONS:
            raise TokenError(f"replay token: more than {MAX_DECISIONS:,} steps")
        decisions.extend([task] * (int(count) if count else 1))
        if len(decisions) > MAX_DECISIONS:
            raise TokenError(f"replay token: more than {MAX_DECISIONS:,} steps")
    return tuple(decisions)


@dataclass(frozen=True, slots=True)
class ReplayToken:
    """A recorded schedule: which task ran at each step, and how it was found."""

    strategy: str
    seed: int
    schedule: int
    digest: str
    decisions: tuple[int, ...]

    def __str__(self) -> str:
        return (
            f"{TOKEN_VERSION}:{self.strategy}:{self.seed}:{self.schedule}:{self.digest}:"
            f"{_encode(self.decisions)}"
        )

    @classmethod
    def parse(cls, text: str) -> ReplayToken:
        """Read a token; :class:`TokenError` (``EINVAL``) says what is wrong with a bad one."""
        if not isinstance(text, str):
            raise TokenError(f"replay token must be a str, not {type(text).__name__}")
        text = text.strip()
        version, sep, rest = text.partition(":")
        if not sep or not version.startswith("avcm"):
            raise TokenError(f"not an avcm replay token: {text[:60]!r}")
        if version != TOKEN_VERSION:
            raise TokenError(
                f"replay token of version {quote(version)}; this avcm.testing reads "
                f"{TOKEN_VERSION!r}"
            )
        match = _TOKEN.fullmatch(rest)
        if match is None:
            raise TokenError(
                f"malformed replay token {text[:60]!r}: expected "
                f"{TOKEN_VERSION}:STRATEGY:SEED:SCHEDULE:DIGEST:DECISIONS"
            )
        return cls(
            strategy=match["strategy"],
            seed=int(match["seed"]),
            schedule=int(match["schedule"]),
            digest=match["digest"].lower(),
            decisions=_decode(match["decisions"]),
        )
