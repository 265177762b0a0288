"""A campaign: stored failures rerun first, then new units until the run count or the time
budget is spent; every result merged as it streams back, failures grouped by signature, the
smallest reproducer of each kept and stored at once (a campaign that is killed loses nothing it
had found)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field

from ._executors import Executor
from ._store import FailureStore, StoredFailure, failure_id
from ._units import FoundFailure, Unit, UnitError, UnitResult

__all__ = ["CampaignResult", "Regression", "Signature", "run_campaign"]


@dataclass
class Signature:
    """Every failure of one signature seen in a campaign."""

    id: str
    failure: FoundFailure  # the one with the smallest reproducer
    count: int = 0
    first_seen: str = ""  # the unit that found it first
    new: bool = True  # in no store before this campaign
    stored: bool = False  # the writable store holds it (or a smaller one)


@dataclass(frozen=True)
class Regression:
    """A stored failure rerun at the start of a campaign."""

    stored: StoredFailure
    still_fails: bool
    lost: bool = False  # its run was lost (worker died): neither fixed nor failing


@dataclass
class CampaignResult:
    executor: str = ""
    runs: int = 0  # new units run to their end
    failed_runs: int = 0
    lost_runs: int = 0
    work: int = 0  # operations or schedules, all runs together
    unit_seconds: float = 0.0  # wall time inside the runs themselves, all workers together
    wall_seconds: float = 0.0
    # (seconds since the start, runs done, work done) after each run: throughput over time
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latency: dict[str, list[int]] = field(default_factory=dict)
    signatures: dict[str, Signature] = field(default_factory=dict)
    regressions: list[Regression] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    workers: Counter[str] = field(default_factory=Counter)  # runs finished, by worker

    @property
    def failed(self) -> bool:
        """Whether anything failed: a new failure, or a stored one that still fails."""
        return bool(self.signatures)

    def merge(self, result: UnitResult) -> None:
        self.work += result.work
        self.unit_seconds += result.wall_seconds
        self.workers[result.worker] += 1
        for op, counts in result.outcomes.items():
            self.outcomes[op].update(counts)
        for op, buckets in result.latency.items():
            merged = self.latency.setdefault(op, [])
            merged.extend([0] * (len(buckets) - len(merged)))
            for index, count in enumerate(buckets):
                merged[index] += count


@dataclass(frozen=True)
class _Job:
    unit: Unit
    regression: StoredFailure | None = None


def _known(stores: Iterable[FailureStore]) -> dict[str, StoredFailure]:
    """Every stored failure, by id; where stores disagree, the first store's record."""
    known: dict[str, StoredFailure] = {}
    for store in stores:
        for record in store:
            known.setdefault(record.id, record)
    return known


def run_campaign(
    units: Iterator[Unit],
    executor: Executor,
    *,
    runs: int | None = None,
    duration: float | None = None,
    store: FailureStore | None = None,
    shared: Iterable[FailureStore] = (),
    on_notice: Callable[[str], None] = lambda line: None,
    on_progress: Callable[[CampaignResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    trusted_code: Collection[str] | None = None,
) -> CampaignResult:
    """Run stored failures again, then *units* on *executor* until *runs* of them have run or
    *duration* seconds have passed (whichever comes first; at least one of the two must be
    given, or *units* must end), and return what was found.

    When the time is up no new unit starts; the runs that have not finished are dropped.
    Failures are saved to *store* as they come; *shared* stores are read, never written. A
    stored failure that runs code (a driver factory, a scenario: :attr:`Unit.code`) is rerun
    only if *trusted_code* names that code (``None``: the caller trusts its stores): a store
    is data, and a shared one must not choose code to import; the others are skipped with a
    notice.
    Interrupting (Ctrl-C) stops it where it is: what was stored stays stored.

    Raises:
        UnitError: a unit could not run at all (bad spec or settings): a setup error.
    """
    if runs is None and duration is None:
        raise ValueError("a campaign needs a run count or a duration")
    result = CampaignResult(executor=executor.description)

    def notice(line: str) -> None:
        result.notices.append(line)
        on_notice(line)

    stores = ([store] if store is not None else []) + list(shared)
    known = _known(stores)
    for problem in dict.fromkeys(p for s in stores for p in s.problems):
        notice(problem)
    started = clock()
    deadline = None if duration is None else started + duration
    submitted = 0
    exhausted = False
    window = 2 * executor.workers  # enough queued that no worker waits for the next unit

    def submit_next() -> None:
        nonlocal submitted, exhausted
        if exhausted or (runs is not None and submitted >= runs):
            return
        if deadline is not None and clock() >= deadline:
            return
        unit = next(units, None)
        if unit is None:
            exhausted = True
            return
        executor.submit(unit, _Job(unit))
        submitted += 1

    for record in known.values():
        code = record.reproducer.code
        if trusted_code is not None and code is not None and code not in trusted_code:
            notice(
                f"stored failure {record.id} runs {code}, which this campaign does not name: "
                f"not rerun (campaign replay {record.id} --code {code} runs it)"
            )
            continue
        executor.submit(record.reproducer, _Job(record.reproducer, record))
    for _ in range(window):
        submit_next()
    try:
        for job, outcome in executor.completed():
            for line in executor.notices():
                notice(line)
            if isinstance(outcome, UnitError) and job.regression is None:
                raise outcome  # the campaign's own settings: nothing of it can run
            if job.regression is None:
                if isinstance(outcome, BaseException):
                    result.lost_runs += 1
                    notice(f"{job.unit.label()} lost: {type(outcome).__name__}: {outcome}")
                else:
                    result.runs += 1
                    result.merge(outcome)
                    if outcome.failure is not None:
                        result.failed_runs += 1
                        _found(result, outcome.failure, job.unit, store, known)
            else:
                _regression(result, job.regression, outcome, store, known, notice)
            now = clock()
            result.timeline.append((now - started, result.runs, result.work))
            if on_progress is not None:
                on_progress(result)
            if deadline is not None and now >= deadline:
                executor.cancel()
                continue
            submit_next()
        for line in executor.notices():
            notice(line)
    finally:
        result.wall_seconds = clock() - started
    return result


def _found(
    result: CampaignResult,
    failure: FoundFailure,
    unit: Unit,
    store: FailureStore | None,
    known: dict[str, StoredFailure],
) -> None:
    key = failure_id(failure.signature)
    signature = result.signatures.get(key)
    if signature is None:
        signature = Signature(key, failure, first_seen=unit.label(), new=key not in known)
        result.signatures[key] = signature
    elif failure.size < signature.failure.size:
        signature.failure = failure
    signature.count += 1
    if store is not None:
        store.save(StoredFailure.from_failure(failure, store.path))
        signature.stored = True


def _regression(
    result: CampaignResult,
    record: StoredFailure,
    outcome: UnitResult | BaseException,
    store: FailureStore | None,
    known: dict[str, StoredFailure],
    notice: Callable[[str], None],
) -> None:
    if isinstance(outcome, BaseException):
        notice(f"stored failure {record.id} lost: {type(outcome).__name__}: {outcome}")
        result.regressions.append(Regression(record, still_fails=False, lost=True))
        return
    result.merge(outcome)
    failure = outcome.failure
    still_fails = failure is not None and failure.signature == record.signature
    result.regressions.append(Regression(record, still_fails))
    if failure is not None:
        # failing again, or failing otherwise (a new signature): counted like any failure
        _found(result, failure, record.reproducer, store, known)
    if not still_fails and store is not None and record.store == store.path:
        store.mark_fixed(record)
