"""What a stress run is asked to do: one frozen record, which is also what a replay file stores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from avcm.lowlevel import quote

__all__ = [
    "BACKENDS",
    "CLOCKS",
    "CONTEXT_KINDS",
    "DRIVER_CONTEXTS",
    "DRIVER_DEFAULT_CONTEXTS",
    "LATENCIES",
    "MAX_JOBS",
    "MAX_OPS",
    "OPERATIONS",
    "StressConfig",
    "UsageError",
    "check_count",
]

CONTEXT_KINDS = ("iommu", "carveout", "cpu", "custom")

# How many contexts --driver makes from its factory unless --contexts says otherwise: one
# context's driver calls are serialised by its mutex, so a race in hardware that contexts share
# (one IOMMU unit serving several devices, a shared usage count) needs two contexts to show;
# and hardware that tells contexts apart by a one-bit field (a stream id, a domain id cut
# short) has room for two, so it takes a third to show that.
DRIVER_CONTEXTS = 3
# ... and with them, unless --contexts says otherwise, a carve-out context of the harness's own:
# half its physes have parts at addresses aligned to 4 KiB but not to 64 KiB, and the tasks map
# them into the driver's contexts, so a page walk that picks 64 KiB or 1 MiB pages from the
# device address alone (not the physical one) meets memory it cannot map that way; the other
# half are aligned to the largest page not above their size, so a walk that takes a large page
# for a tail a page short of one meets that too.
DRIVER_DEFAULT_CONTEXTS: tuple[tuple[str, int], ...] = (
    ("custom", DRIVER_CONTEXTS),
    ("carveout", 1),
)

OPERATIONS: dict[str, int] = {
    # name: weight. Building and tearing down are balanced so the pools neither empty nor grow.
    "make_binding": 8,
    "alloc": 6,
    "free": 5,
    "reserve": 5,
    "unreserve": 3,
    "map": 6,
    "unmap": 4,
    "bind": 8,
    "unbind": 6,
    "destroy_binding": 5,
    "activate": 6,
    "deactivate": 5,
    "data": 8,
}


class UsageError(Exception):
    """A bad option or a setup that cannot start: exit status 2, one line, no traceback."""


# Operations cancelled midway by default: rule 7's paths (and the undo behind each) are part of
# every verdict, not only of runs that ask for them.
DEFAULT_CANCEL = 0.02

LATENCIES = ("default", "slow", "zero")
BACKENDS = ("asyncio", "trio")
CLOCKS = ("virtual", "real")

# Upper bounds: a run must fit in memory and end; beyond these a typo, not a plan.
MAX_TASKS = 10_000
MAX_OPS = 1_000_000  # about 1 KB each is kept (trace and latencies): a run stays near 1 GB
MAX_DURATION = 7 * 24 * 3600.0
MAX_CONTEXTS = 64  # in all
MAX_CARVEOUTS = 12  # 16 MiB each, out of the run's 256 MiB (the rest is for the others)
MAX_WEIGHT = 1_000_000
MAX_JOBS = 256
SEED_BITS = 64
MAX_DRIVER = 200  # characters of MODULE:FACTORY


def check_count(value: object, option: str, low: int, high: int) -> int:
    """*value* if it is an int in ``low..high``, else a :class:`UsageError` that quotes at
    most a few dozen characters of it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{option} must be a whole number, not {quote(value)}")
    if not low <= value <= high:
        raise UsageError(f"{option} must be in {low}..{high:_}, not {quote(value)}")
    return value


def _check_rate(value: object, option: str, high: float = 1.0) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= high
    ):
        raise UsageError(f"{option} must be a number in 0..{high:g}, not {quote(value)}")


def _check_choice(value: object, option: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, not {quote(value)}")


def _check_pairs(value: object, option: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, (tuple, list)):
        raise UsageError(f"{option} must be a list of [name, count] pairs, not {quote(value)}")
    for pair in value:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise UsageError(f"{option}: {quote(pair)} is not a [name, count] pair")
    names = [name for name, _ in value]
    if len(set(names)) != len(names):
        raise UsageError(f"{option} names a kind twice: {quote(names)}")
    return tuple((name, count) for name, count in value)


@dataclass(frozen=True)
class StressConfig:
    """A stress run. Same config (seed included), same backend: the same run, operation for
    operation, with the default virtual clock.

    Made from the command line or from a replay file, it is checked here, the one place for
    both: a bad setting is a :class:`UsageError` naming it, before anything runs.
    """

    backend: str = "asyncio"
    seed: int = 0
    tasks: int = 64
    ops: int = 20_000
    duration: float | None = None
    contexts: tuple[tuple[str, int], ...] = (("iommu", 1), ("carveout", 1), ("cpu", 1))
    latency: str = "default"
    faults: float = 0.0
    cancel: float = DEFAULT_CANCEL
    driver: str | None = None
    clock: str = "virtual"
    check_every: int = 50
    drain_every: int = 2000
    weights: tuple[tuple[str, int], ...] = field(default_factory=lambda: tuple(OPERATIONS.items()))

    def __post_init__(self) -> None:
        _check_choice(self.backend, "--backend", BACKENDS)
        limit = 1 << SEED_BITS
        check_count(self.seed, "--seed", -limit + 1, limit - 1)
        check_count(self.tasks, "--tasks", 1, MAX_TASKS)
        check_count(self.ops, "--ops", 1, MAX_OPS)
        if self.duration is not None:
            _check_rate(self.duration, "--duration", MAX_DURATION)
            if not self.duration:
                raise UsageError("--duration must be a positive number of seconds, not 0")
        _check_choice(self.latency, "--latency", LATENCIES)
        _check_rate(self.faults, "--faults")
        _check_rate(self.cancel, "--cancel")
        _check_choice(self.clock, "--clock", CLOCKS)
        check_count(self.check_every, "--check-every", 1, MAX_OPS)
        check_count(self.drain_every, "--drain-every", 0, MAX_OPS)  # 0: never
        self._check_contexts()
        self._check_weights()

    def _check_contexts(self) -> None:
        contexts = _check_pairs(self.contexts, "--contexts")
        object.__setattr__(self, "contexts", contexts)
        for kind, count in contexts:
            if kind not in CONTEXT_KINDS:
                raise UsageError(
                    f"--contexts: unknown kind {quote(kind)} "
                    f"(choose from {', '.join(CONTEXT_KINDS)})"
                )
            high = MAX_CARVEOUTS if kind == "carveout" else MAX_CONTEXTS
            check_count(count, f"--contexts {kind}", 0, high)
        total = sum(count for _, count in contexts)
        if not 1 <= total <= MAX_CONTEXTS:
            raise UsageError(f"--contexts must name 1..{MAX_CONTEXTS} contexts, not {total}")
        if self.driver is not None and (
            not isinstance(self.driver, str) or len(self.driver) > MAX_DRIVER
        ):
            raise UsageError(f"--driver must be MODULE:FACTORY, not {quote(self.driver)}")
        custom = any(kind == "custom" and count for kind, count in contexts)
        if custom and self.driver is None:
            raise UsageError("--contexts custom=N needs --driver MODULE:FACTORY to make them")
        if self.driver is not None and not custom:
            named = ",".join(f"{kind}={count}" for kind, count in contexts)
            raise UsageError(
                f"--driver {self.driver} is not used: --contexts {named} has no custom=N "
                "(the driver's contexts); add custom=1, or leave --contexts out"
            )

    def _check_weights(self) -> None:
        weights = _check_pairs(self.weights, "weights")
        object.__setattr__(self, "weights", weights)
        for name, weight in weights:
            if name not in OPERATIONS:
                choices = ", ".join(OPERATIONS)
                raise UsageError(
                    f"weights: unknown operation {quote(name)} (choose from {choices})"
                )
            check_count(weight, f"weights {name}", 0, MAX_WEIGHT)
        if not any(weight for _, weight in weights):
            raise UsageError("weights: at least one operation must have a positive weight")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["contexts"] = [list(pair) for pair in self.contexts]
        data["weights"] = [list(pair) for pair in self.weights]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StressConfig:
        """The settings of a replay file, checked as the command line's are."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            names = ", ".join(quote(name, 40) for name in sorted(unknown, key=str)[:5])
            raise UsageError(f"replay file has unknown settings: {names}")
        try:
            return cls(**data)
        except UsageError as error:
            raise UsageError(f"replay file: {error}") from None
