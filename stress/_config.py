"""What a stress run is asked to do: one frozen record, which is also what a replay file stores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["CONTEXT_KINDS", "DRIVER_CONTEXTS", "OPERATIONS", "StressConfig", "UsageError"]

CONTEXT_KINDS = ("iommu", "carveout", "cpu", "custom")

# How many contexts --driver makes from its factory unless --contexts says otherwise: one
# context's driver calls are serialised by its mutex, so a race in hardware that contexts share
# (one IOMMU unit serving several devices, a shared usage count) needs two contexts to show.
DRIVER_CONTEXTS = 2

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


@dataclass(frozen=True)
class StressConfig:
    """A stress run. Same config (seed included), same backend: the same run, operation for
    operation, with the default virtual clock."""

    backend: str = "asyncio"
    seed: int = 0
    tasks: int = 64
    ops: int = 20_000
    duration: float | None = None
    contexts: tuple[tuple[str, int], ...] = (("iommu", 1), ("carveout", 1), ("cpu", 1))
    latency: str = "default"
    faults: float = 0.0
    cancel: float = 0.0
    driver: str | None = None
    clock: str = "virtual"
    check_every: int = 50
    drain_every: int = 2000
    weights: tuple[tuple[str, int], ...] = field(default_factory=lambda: tuple(OPERATIONS.items()))

    def __post_init__(self) -> None:
        if self.backend not in ("asyncio", "trio"):
            raise UsageError(f"--backend must be asyncio or trio, not {self.backend!r}")
        if self.tasks < 1:
            raise UsageError(f"--tasks must be at least 1, not {self.tasks}")
        if self.ops < 1:
            raise UsageError(f"--ops must be at least 1, not {self.ops}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise UsageError(
                f"--duration must be a positive number of seconds, not {self.duration}"
            )
        for name, rate in (("--faults", self.faults), ("--cancel", self.cancel)):
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"{name} must be a rate between 0 and 1, not {rate}")
        if self.clock not in ("virtual", "real"):
            raise UsageError(f"--clock must be virtual or real, not {self.clock!r}")
        if not self.contexts or sum(count for _, count in self.contexts) < 1:
            raise UsageError("--contexts must name at least one context")
        for kind, count in self.contexts:
            if kind not in CONTEXT_KINDS:
                raise UsageError(
                    f"--contexts: unknown kind {kind!r} (choose from {', '.join(CONTEXT_KINDS)})"
                )
            if count < 0:
                raise UsageError(f"--contexts: {kind}={count} must not be negative")
        custom = any(kind == "custom" and count for kind, count in self.contexts)
        if custom and self.driver is None:
            raise UsageError("--contexts custom=N needs --driver MODULE:FACTORY to make them")
        if self.driver is not None and not custom:
            named = ",".join(f"{kind}={count}" for kind, count in self.contexts)
            raise UsageError(
                f"--driver {self.driver} is not used: --contexts {named} has no custom=N "
                "(the driver's contexts); add custom=1, or leave --contexts out"
            )
        if self.check_every < 1:
            raise UsageError(f"--check-every must be at least 1, not {self.check_every}")
        if self.drain_every < 0:
            raise UsageError(f"--drain-every must be 0 (never) or more, not {self.drain_every}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["contexts"] = [list(pair) for pair in self.contexts]
        data["weights"] = [list(pair) for pair in self.weights]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StressConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"replay file has unknown settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        try:
            for key in ("contexts", "weights"):
                if key in values:
                    values[key] = tuple((str(k), int(v)) for k, v in values[key])
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise UsageError(f"replay file: bad settings ({error})") from None
