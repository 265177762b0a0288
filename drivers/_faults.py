"""Fault injection every sample driver shares: a seeded plan of which calls fail, and how.

Drivers call :meth:`FaultPlan.check` before they change anything, so an injected fault has no
effect beyond the error (the contract asks that of every failing driver operation).

The operations that set hardware up (``enable``, ``pte_write``, ``alloc``) fail by any rule. The
ones that tear down (``free``, ``pte_clear``, ``disable``; void in the kernel) fail only by a rule
that names them: a rule for any operation leaves them alone. avcm contains one failing teardown
(the operation raises and nothing changed, rule 8), but no framework can contain a teardown that
fails while it undoes another failure or a cancellation (a ``pte_clear`` in the rollback of a
failed ``pte_write``): that leaves the hardware half done, so plans that mix them test the driver's
luck, not avcm.
"""

from __future__ import annotations

import errno as _errno
import random
from collections import Counter
from dataclasses import dataclass

import avcm

__all__ = ["FAULTABLE", "FaultPlan", "FaultStatistics", "InjectedFault"]

SETUP = ("enable", "pte_write", "alloc")
TEARDOWN = ("free", "pte_clear", "disable")
FAULTABLE = SETUP + TEARDOWN


class InjectedFault(avcm.VcmError):
    """A fault a :class:`FaultPlan` injected; ``errno`` is the one the plan chose."""


@dataclass(frozen=True, slots=True)
class FaultStatistics:
    calls: dict[str, int]
    injected: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Rule:
    op: str | None  # None: any faultable operation
    nth: int | None
    probability: float
    errno: int


class FaultPlan:
    """Which driver calls fail: the k-th call of an operation, or calls with probability p."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)
        self._rules: list[_Rule] = []
        self._calls: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self.enabled = True

    def _check_rule(self, op: str | None, error: int) -> None:
        if op is not None and op not in FAULTABLE:
            raise avcm.InvalidError(
                f"faults: {op!r} cannot fail (choose from {', '.join(FAULTABLE)})"
            )
        if not isinstance(error, int) or isinstance(error, bool) or error <= 0:
            raise avcm.InvalidError(f"faults: errno must be a positive int, not {error!r}")

    def fail_nth(self, op: str, nth: int, *, errno: int = _errno.EIO) -> FaultPlan:
        """Make the *nth* call (1-based) of *op* fail with *errno*."""
        self._check_rule(op, errno)
        if not isinstance(nth, int) or isinstance(nth, bool) or nth < 1:
            raise avcm.InvalidError(f"faults: nth must be an int >= 1, not {nth!r}")
        self._rules.append(_Rule(op, nth, 0.0, errno))
        return self

    def fail_randomly(
        self, probability: float, op: str | None = None, *, errno: int = _errno.EIO
    ) -> FaultPlan:
        """Make calls of *op* (any set-up operation if None) fail with *probability*."""
        self._check_rule(op, errno)
        if (
            not isinstance(probability, (int, float))
            or isinstance(probability, bool)
            or not 0.0 <= probability <= 1.0
        ):
            raise avcm.InvalidError(
                f"faults: probability must be a number in 0..1, not {probability!r}"
            )
        self._rules.append(_Rule(op, None, float(probability), errno))
        return self

    def disable(self) -> None:
        """Inject nothing from now on (calls are still counted)."""
        self.enabled = False

    def check(self, op: str, owner: object = None) -> None:
        """Count a call of *op*; raise :class:`InjectedFault` if the plan says it fails."""
        calls = self._calls
        call = calls[op] + 1
        calls[op] = call
        for rule in self._rules:
            if rule.op != op and (rule.op is not None or op not in SETUP):
                continue
            if rule.nth is not None:
                hit = rule.nth == call
            else:
                # always drawn, so the random stream does not depend on which rules are on
                hit = self._random.random() < rule.probability
            if hit and self.enabled:
                self._injected[op] += 1
                raise InjectedFault(
                    rule.errno, f"injected fault: call {call} of {op} on {owner or 'driver'}"
                )

    def statistics(self) -> FaultStatistics:
        return FaultStatistics(dict(self._calls), dict(self._injected))
