"""The options every sample driver takes, checked in one place: ``EINVAL`` for junk, at once."""

from __future__ import annotations

import avcm
from avcm.lowlevel import quote

from ._faults import FaultPlan
from ._latency import Latency

__all__ = ["driver_options"]


def driver_options(
    latency: object, faults: object, name: object, what: str
) -> tuple[Latency, FaultPlan, str]:
    """*latency* (the ``"default"`` profile if ``None``), *faults* (none if ``None``) and
    *name*, checked: a wrong type is ``EINVAL`` here, not an AttributeError mid-operation."""
    if latency is None:
        latency = Latency.profile("default")
    elif not isinstance(latency, Latency):
        raise avcm.InvalidError(f"{what}: latency must be a drivers.Latency, not {quote(latency)}")
    if faults is None:
        faults = FaultPlan()
    elif not isinstance(faults, FaultPlan):
        raise avcm.InvalidError(f"{what}: faults must be a drivers.FaultPlan, not {quote(faults)}")
    if not isinstance(name, str):
        raise avcm.InvalidError(f"{what}: name must be a str, not {quote(name)}")
    return latency, faults, name
