"""What a campaign runs: independent *units* (a stress seed, a conformance scenario with one seed,
a race-finder exploration with one strategy and seed), each run whole in a worker process and
answered by a small, picklable :class:`UnitResult`.

A failing unit is also made small in the worker that found it (the parallel part of the work):
the result carries the failure's *signature* (what broke and where, with numbers taken out, so
the same bug found by many seeds counts once) and the smallest unit found that still fails with
that signature (its *reproducer*, what the store keeps and ``replay`` runs).
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, ClassVar

__all__ = [
    "ConformanceUnit",
    "ExploreUnit",
    "FoundFailure",
    "StressUnit",
    "Unit",
    "UnitError",
    "UnitResult",
    "load_spec",
    "normalize",
    "unit_from_json",
]


class UnitError(Exception):
    """A unit that cannot run at all (a spec that does not import, a bad setting): a usage or
    setup error of the campaign, not a failure of the code under test."""


# a number names a rule (kept) or counts and places something (taken out)
_NUMBERS = re.compile(r"(rules? \d+(?:(?:, | and )\d+)*)|0x[0-9a-fA-F]+|\d+")


def _placeholder(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1)
    return "0x?" if match.group().startswith("0x") else "N"


def normalize(text: str) -> str:
    """*text*'s first line with addresses and numbers taken out: ``phys#12 at 0x1f000`` and
    ``phys#3 at 0x2000`` are the same failure seen twice; a rule's number (``rule 9``,
    ``rules 1, 3``) stays."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return _NUMBERS.sub(_placeholder, first)


@dataclass(frozen=True)
class FoundFailure:
    """A failing unit, as its worker reports it."""

    signature: str  # what broke and where, numbers taken out: the deduplication key
    title: str  # one line for people, numbers left in
    detail: str  # the whole description (a timeline, for schedules)
    size: tuple[int, ...]  # of the reproducer: smaller is better, compared as a tuple
    reproducer: Unit  # the smallest unit found that fails with this signature
    # the failing schedule as a Chrome/Perfetto trace (race finder and conformance), or None
    trace: dict[str, Any] | None = None


@dataclass(frozen=True)
class UnitResult:
    """What one unit did. *outcomes* maps an operation (or scenario) to its outcome counts;
    *latency* maps an operation to a histogram: bucket ``i`` counts latencies below ``2**i``
    microseconds (simulated time for stress)."""

    unit: Unit
    failure: FoundFailure | None
    wall_seconds: float
    work: int  # operations (stress) or schedules (race finder) run
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    latency: dict[str, list[int]] = field(default_factory=dict)
    # which process ran it (host:pid): how the work spread over the workers
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def load_spec(spec: str, what: str) -> Any:
    """Import ``module:attribute``; a module in the current directory is found too."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UnitError(f"{what} {spec!r}: expected MODULE:NAME")
    if not {"", os.curdir, os.getcwd()} & set(sys.path):
        sys.path.append(os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as error:
        raise UnitError(f"{what} {spec!r}: cannot import it ({error})") from None
    if not callable(target):
        raise UnitError(f"{what} {spec!r} is not callable")
    return target


class Unit(ABC):
    """One independent run of a campaign; frozen, picklable, and stored as JSON."""

    kind: ClassVar[str]

    @abstractmethod
    def run(self) -> UnitResult:
        """Run the unit to its end in a new event loop (in the calling process), make a failure
        small, and say what happened. Raises :class:`UnitError` if it cannot run at all."""

    @abstractmethod
    def label(self) -> str:
        """A few words that tell this unit from the campaign's others."""

    @property
    @abstractmethod
    def code(self) -> str | None:
        """The ``MODULE:NAME`` this unit imports and runs (a driver factory, a scenario), or
        ``None`` if it runs only avcm's own code: a stored unit names code, and a store is data
        that must never choose code to run by itself."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


def _histogram(latencies: list[float]) -> list[int]:
    buckets: list[int] = []
    for seconds in latencies:
        index = int(seconds * 1e6).bit_length()
        if index >= len(buckets):
            buckets.extend([0] * (index + 1 - len(buckets)))
        buckets[index] += 1
    return buckets


@dataclass(frozen=True)
class StressUnit(Unit):
    """One stress run: the settings of ``python -m stress`` as a JSON object
    (``stress.StressConfig.to_json()``)."""

    kind: ClassVar[str] = "stress"
    config: dict[str, Any]
    # at most this many extra (shorter) runs to find the fewest operations that still fail
    shrink_budget: int = 12
    # seconds of wall time with nothing ended before a run is stopped as stalled (None:
    # stress's own default); not a setting of the run, which it does not change
    stall_timeout: float | None = None

    def _run(self, config: Any) -> Any:
        import stress

        wait = stress.STALL_TIMEOUT if self.stall_timeout is None else self.stall_timeout
        return stress.run(config, stall_timeout=wait)

    def stress_config(self) -> Any:
        import stress

        try:
            return stress.StressConfig.from_json(dict(self.config))
        except stress.UsageError as error:
            raise UnitError(str(error)) from None

    def label(self) -> str:
        return f"stress seed {self.config.get('seed')}"

    @property
    def code(self) -> str | None:
        driver = self.config.get("driver")
        return driver if isinstance(driver, str) else None

    def _signature(self, violation: Any) -> tuple[str, str]:
        where = self.config.get("driver") or ",".join(
            f"{kind}={count}" for kind, count in self.config.get("contexts", ())
        )
        title = f"{violation.rule}: {violation.description.strip().splitlines()[0]}"
        return f"stress [{where}] {violation.rule}: {normalize(violation.description)}", title

    def run(self) -> UnitResult:

        config = self.stress_config()
        if config.duration is not None:
            raise UnitError("a campaign's stress runs are bounded by --ops, not --duration")
        started = time.monotonic()
        result = self._run(config)
        failure = None
        if result.violation is not None:
            signature, title = self._signature(result.violation)
            best = self._shrink(config, signature, result.ops)
            failure = FoundFailure(
                signature=signature,
                title=title,
                detail=f"{result.violation.rule}: {result.violation.description}",
                size=(best,),
                # already as small as this search gets it: its replays do not search again
                reproducer=replace(self, config={**self.config, "ops": best}, shrink_budget=0),
            )
        return UnitResult(
            unit=self,
            failure=failure,
            wall_seconds=time.monotonic() - started,
            work=result.ops,
            outcomes={op: dict(counter) for op, counter in result.outcomes.items()},
            latency={op: _histogram(values) for op, values in result.latencies.items()},
        )

    def _shrink(self, config: Any, signature: str, ops: int) -> int:
        """The fewest operations (by bisection, each candidate run) that still fail with
        *signature*: a shorter run of the same seed is the same run cut short, so it fails the
        same way or not at all, but not always monotonically: every answer is one that ran."""

        def fails(count: int) -> bool:
            violation = self._run(replace(config, ops=count)).violation
            return violation is not None and self._signature(violation)[0] == signature

        low, high = 0, ops  # a run of `high` operations fails; `low` is not known to
        for _ in range(self.shrink_budget):
            if high - low <= 1:
                break
            middle = (low + high) // 2
            if fails(middle):
                high = middle
            else:
                low = middle
        return high


def _schedule_failure(
    unit: ConformanceUnit | ExploreUnit, failure: Any, where: str
) -> FoundFailure:
    error = failure.error
    message = f"{type(error).__name__}: {error}"
    timeline = failure.timeline
    return FoundFailure(
        signature=f"{where} {type(error).__name__}: {normalize(str(error))}",
        title=f"{where} {message.strip().splitlines()[0]}",
        detail=failure.report(),
        size=(timeline.preemptions, len(timeline.steps)),
        reproducer=replace(unit, token=str(failure.token)),
        trace=timeline.chrome_trace(),
    )


@dataclass(frozen=True)
class ConformanceUnit(Unit):
    """One scenario of the conformance suite against a driver factory (``MODULE:FACTORY``),
    *schedules* PCT schedules from *seed*; with *token*, the replay of one schedule."""

    kind: ClassVar[str] = "conformance"
    factory: str
    scenario: str
    seed: int = 0
    schedules: int = 200
    backend: str = "trio"
    token: str | None = None

    def label(self) -> str:
        return f"conformance {self.scenario} seed {self.seed}"

    @property
    def code(self) -> str | None:
        return self.factory

    def run(self) -> UnitResult:
        from avcm import testing

        factory = load_spec(self.factory, "conformance factory")
        started = time.monotonic()
        try:
            report = testing.check_conformance(
                factory,
                backend=self.backend,
                schedules=self.schedules,
                seed=self.seed,
                only=self.scenario,
                replay_token=self.token,
                factory_spec=self.factory,
            )
        except testing.ConformanceFailure as error:
            report = error.report
        except testing.TokenError as error:
            raise UnitError(f"conformance replay token: {error}") from None
        found = report.failures[0] if report.failures else None
        failure = None
        if found is not None:
            where = f"conformance:{self.scenario} [{self.factory}]"
            failure = _schedule_failure(self, found, where)
        ran = sum(result.schedules for result in report.results)
        # a scenario the driver never let reach its race has no verdict: not a pass
        not_run = any(result.not_run for result in report.results)
        outcome = "failed" if found else "not run" if not_run else "passed"
        return UnitResult(
            unit=self,
            failure=failure,
            wall_seconds=time.monotonic() - started,
            work=ran,
            outcomes={f"conformance:{self.scenario}": {outcome: 1}},
        )


def _strategy(unit: ExploreUnit) -> Any:
    from avcm import InvalidError, testing

    makers: dict[str, Callable[[], Any]] = {
        "pct": lambda: testing.PCT(unit.seed),  # depth 3, PCT's own default
        **{f"pct-d{depth}": partial(testing.PCT, unit.seed, depth=depth) for depth in (1, 2, 3)},
        "random": lambda: testing.RandomWalk(unit.seed),
        "exhaustive": lambda: testing.Exhaustive(unit.bound, prefix=unit.prefix),
    }
    if unit.strategy not in makers:
        raise UnitError(f"strategy {unit.strategy!r}: choose from {', '.join(makers)}")
    try:
        return makers[unit.strategy]()
    except InvalidError as error:
        raise UnitError(str(error)) from None


@dataclass(frozen=True)
class ExploreUnit(Unit):
    """A race-finder exploration of a scenario (``MODULE:FUNCTION``) with one strategy
    (``pct-d1``, ``pct-d2``, ``pct-d3``, ``pct`` which is ``pct-d3``, or ``random``) and seed,
    or (``exhaustive``) the part of the exhaustive search with at most *bound* preemptions that
    begins with *prefix*; with *token*, the replay of one schedule."""

    kind: ClassVar[str] = "explore"
    scenario: str
    strategy: str = "pct"
    seed: int = 0
    schedules: int = 200
    backend: str = "trio"
    token: str | None = None
    bound: int = 2
    prefix: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # from JSON, a list
        object.__setattr__(self, "prefix", tuple(self.prefix))

    def label(self) -> str:
        if self.strategy == "exhaustive":
            return f"explore exhaustive-p{self.bound} prefix {list(self.prefix)}"
        return f"explore {self.strategy} seed {self.seed}"

    @property
    def code(self) -> str | None:
        return self.scenario

    def run(self) -> UnitResult:
        from avcm import InvalidError, testing

        scenario = load_spec(self.scenario, "scenario")
        started = time.monotonic()
        if self.token is not None:
            try:
                found = testing.replay(scenario, self.token, backend=self.backend)
            except testing.TokenError as error:
                raise UnitError(f"replay token: {error}") from None
            ran = 1
        else:
            try:
                exploration = testing.explore(
                    scenario,
                    strategy=_strategy(self),
                    schedules=self.schedules,
                    backend=self.backend,
                )
            except InvalidError as error:  # a prefix that begins no schedule
                raise UnitError(f"{self.label()}: {error}") from None
            found, ran = exploration.failure, exploration.schedules
        failure = None
        if found is not None:
            failure = _schedule_failure(self, found, self.scenario)
        return UnitResult(
            unit=self,
            failure=failure,
            wall_seconds=time.monotonic() - started,
            work=ran,
            outcomes={self.scenario: {"failed" if found else "passed": 1}},
        )


_KINDS: dict[str, type[Unit]] = {
    kind.kind: kind for kind in (StressUnit, ConformanceUnit, ExploreUnit)
}


def unit_from_json(data: Any) -> Unit:
    """The unit *data* (``Unit.to_json()``) describes; :class:`UnitError` if it is not one."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise UnitError("not a campaign unit (no known 'kind')")
    values = {key: value for key, value in data.items() if key != "kind"}
    try:
        return _KINDS[data["kind"]](**values)
    except TypeError as error:
        raise UnitError(f"not a {data['kind']} unit ({error})") from None
