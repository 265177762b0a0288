"""The latency model every sample driver shares: a delay per operation, with seeded jitter.

Delays are slept as :func:`anyio.sleep` sleeps (the backend's own sleep, called directly), so
under trio's ``MockClock`` (or the stress harness's virtual clock on asyncio) they shape the
interleavings without costing wall time.
The ``"zero"`` profile does not sleep at all: pure framework overhead, for benchmarks.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
from asyncio import _get_running_loop
from collections.abc import Mapping
from typing import Any

import avcm
from avcm.lowlevel import check_int, quote, sync_point

__all__ = ["MAX_DELAY", "PROFILES", "Latency"]

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

MAX_DELAY = 3600.0
"""The longest delay of one operation, in seconds: a sanity bound (the profiles take at most
milliseconds), so that a typo cannot make a driver sleep for ever."""


def _check_number(value: object, what: str, high: float) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= high
    ):
        raise avcm.InvalidError(
            f"latency: {what} must be a number in 0..{high:g}, not {quote(value)}"
        )
    return float(value)


def _never(delay: float) -> bool:
    return False


@functools.cache
def _trio() -> Any:
    """``trio``, imported when first needed: only a run on trio needs it."""
    import trio

    return trio


class Latency:
    """Per-operation delays: ``delays[op]`` seconds, each varied by up to ``±jitter`` of itself.

    ``EINVAL`` (and no latency made) for delays that are not a mapping of operation names to
    numbers of seconds in ``0..MAX_DELAY`` (infinity and NaN included), a jitter outside 0..1 or
    a seed that is not an int. Operations not named take no time.
    """

    def __init__(
        self, delays: Mapping[str, float] | None = None, *, jitter: float = 0.25, seed: int = 0
    ) -> None:
        if delays is None:
            delays = {}
        if not isinstance(delays, Mapping):
            raise avcm.InvalidError(
                f"latency: delays must be a mapping of operation to seconds, not {quote(delays)}"
            )
        checked: dict[str, float] = {}
        for op, delay in delays.items():
            if not isinstance(op, str):
                raise avcm.InvalidError(f"latency: operation {quote(op)} is not a name")
            checked[op] = _check_number(delay, f"delay of {quote(op)}", MAX_DELAY)
        self.jitter = _check_number(jitter, "jitter", 1.0)
        check_int(seed, "latency: seed", 0)
        self.delays = checked
        self._random = random.Random(seed)

    def __repr__(self) -> str:
        return f"Latency({self.delays!r}, jitter={self.jitter})"

    @classmethod
    def profile(cls, name: str, *, seed: int = 0) -> Latency:
        """A named profile: ``"default"`` (microseconds), ``"slow"`` (100x) or ``"zero"``."""
        if not isinstance(name, str) or name not in PROFILES:
            raise avcm.InvalidError(
                f"latency: unknown profile {quote(name)} (choose from {', '.join(PROFILES)})"
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
            # on avcm.testing's virtual-time loop, a sleep nothing could interleave with
            # moves the clock in place: the same run, without two loop iterations
            loop = _get_running_loop()
            if loop is None:  # trio: avcm.testing's clock has the same
                trio = _trio()
                if not getattr(trio.lowlevel.current_clock(), "sleep_in_place", _never)(delay):
                    await trio.sleep(delay)  # what anyio.sleep awaits, without finding it
            elif not getattr(loop, "sleep_in_place", _never)(delay):
                await asyncio.sleep(delay)  # what anyio.sleep awaits, without finding it
