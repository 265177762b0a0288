"""The latency model every sample driver shares: a delay per operation, with seeded jitter.

Delays are slept with :func:`anyio.sleep`, so under trio's ``MockClock`` (or the stress
harness's virtual clock on asyncio) they shape the interleavings without costing wall time.
The ``"zero"`` profile does not sleep at all: pure framework overhead, for benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import anyio

import avcm
from avcm.lowlevel import sync_point

__all__ = ["PROFILES", "Latency"]

_DEFAULT: dict[str, float] = {
    # seconds; the orders of magnitude of an SoC IOMMU driven from a CPU
    "pte_write": 2e-6,
    "pte_clear": 2e-6,
    "flush": 10e-6,
    "enable": 20e-6,
    "alloc": 5e-6,
    "free": 2e-6,
}

PROFILES: dict[str, dict[str, float]] = {
    "default": _DEFAULT,
    "slow": {op: delay * 100 for op, delay in _DEFAULT.items()},
    "zero": {},
}


class Latency:
    """Per-operation delays: ``delays[op]`` seconds, each varied by up to ``±jitter`` of itself.

    ``EINVAL`` for a negative delay or a jitter outside 0..1. Operations not named take no time.
    """

    def __init__(
        self, delays: Mapping[str, float] | None = None, *, jitter: float = 0.25, seed: int = 0
    ) -> None:
        delays = dict(delays or {})
        for op, delay in delays.items():
            if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
                raise avcm.InvalidError(f"latency: delay of {op!r} must be >= 0, not {delay!r}")
        if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or not 0 <= jitter <= 1:
            raise avcm.InvalidError(f"latency: jitter must be a number in 0..1, not {jitter!r}")
        self.delays = delays
        self.jitter = float(jitter)
        self._random = random.Random(seed)

    def __repr__(self) -> str:
        return f"Latency({self.delays!r}, jitter={self.jitter})"

    @classmethod
    def profile(cls, name: str, *, seed: int = 0) -> Latency:
        """A named profile: ``"default"`` (microseconds), ``"slow"`` (100x) or ``"zero"``."""
        if name not in PROFILES:
            raise avcm.InvalidError(
                f"latency: unknown profile {name!r} (choose from {', '.join(PROFILES)})"
            )
        return cls(PROFILES[name], seed=seed)

    @property
    def is_zero(self) -> bool:
        return not any(self.delays.values())

    def delay(self, op: str) -> float:
        """The next delay of *op*, jitter included (draws from the seeded random)."""
        base = self.delays.get(op, 0.0)
        if not base:
            return 0.0
        return base * (1.0 + self.jitter * (2.0 * self._random.random() - 1.0))

    async def sleep(self, op: str, owner: object) -> None:
        """Take *op*'s time. A sync point first, so a scheduler may switch tasks here. If
        cancelled, the caller's operation must not have happened: sleep before acting."""
        delay = self.delay(op)
        if delay:
            await sync_point(f"latency.{op}", owner)
            await anyio.sleep(delay)
