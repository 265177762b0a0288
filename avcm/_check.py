"""The model check: does the hardware show exactly what the framework's objects say (rule 4)?

A driver that simulates hardware lets the check look at it by providing
:class:`HardwareView`: whether the hardware is active and which translations it holds. For an
MMU context that is the hardware driver (``vcm.driver.hw``); for a core driver, the driver.
Run the check when no operation is in flight on the context: mid-operation the hardware is
allowed to lag.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ._core import Vcm
from ._mmu import MmuWrapper
from ._o2o import O2oWrapper

__all__ = ["HardwareMismatch", "HardwareView", "check_model", "expected_mappings"]

Extent = tuple[int, int, int]  # (device address, physical address, size)


class HardwareMismatch(AssertionError):
    """The hardware differs from the model; the message lists every difference."""


@runtime_checkable
class HardwareView(Protocol):
    """What a simulating driver shows the model check."""

    def hardware_active(self) -> bool:
        """Whether the context is active in the hardware now."""
        ...

    def hardware_mappings(self) -> Iterable[Extent]:
        """Every translation the hardware holds, as ``(vaddr, paddr, size)`` extents."""
        ...


def _merge(extents: Iterable[Extent]) -> list[Extent]:
    """Coalesce extents that continue each other in both address spaces, so that the same
    translations split into different page sizes compare equal."""
    merged: list[Extent] = []
    for vaddr, paddr, size in sorted(extents):
        if merged:
            last_v, last_p, last_size = merged[-1]
            if last_v + last_size == vaddr and last_p + last_size == paddr:
                merged[-1] = (last_v, last_p, last_size + size)
                continue
        merged.append((vaddr, paddr, size))
    return merged


def expected_mappings(vcm: Vcm) -> list[Extent]:
    """The translations the model says the hardware must hold now (none when inactive)."""
    if vcm.activations == 0:
        return []
    extents = []
    for res in vcm.reservations():
        if res.phys is None:
            continue
        vaddr = res.start
        for part in res.phys.parts:
            extents.append((vaddr, part.start, part.size))
            vaddr += part.size
    return _merge(extents)


def _hardware_of(vcm: Vcm) -> object:
    driver = vcm.driver
    if isinstance(driver, MmuWrapper):
        return driver.hw
    return driver


def _format(extent: Extent) -> str:
    vaddr, paddr, size = extent
    return f"{vaddr:#x}..{vaddr + size:#x} -> {paddr:#x}"


def check_model(vcm: Vcm) -> int:
    """Raise :class:`HardwareMismatch` unless hardware and model agree; return checks made.

    Checks (contract rule 4): active iff ``activations > 0``; while active, exactly the bound
    reservations are mapped, each to its phys; nothing mapped while inactive. For MMU contexts
    also the wrapper's own bookkeeping; for one-to-one contexts that every reservation sits at
    its memory's address and no two overlap.
    """
    problems: list[str] = []
    checks = 0
    driver = vcm.driver
    bound = {res: res.phys for res in vcm.reservations() if res.phys is not None}
    if isinstance(driver, MmuWrapper):
        checks += 2
        if driver.bound != bound:
            problems.append(
                f"wrapper's bound list has {len(driver.bound)} entries, model has {len(bound)}"
            )
        if driver.activated != (vcm.activations > 0):
            problems.append(
                f"wrapper activated={driver.activated} but activations={vcm.activations}"
            )
    if isinstance(driver, O2oWrapper):
        checks += 1
        ranges = []
        for res in vcm.reservations():
            if res.phys is not None and res.start != res.phys.parts[0].start:
                problems.append(f"one-to-one {res!r} is not at its memory {res.phys!r}")
            ranges.append((res.start, res.start + res.res_size))
        ranges.sort()
        for (_, end), (start, _) in itertools.pairwise(ranges):
            if start < end:
                problems.append(f"one-to-one reservations overlap at {start:#x}")
    hardware = _hardware_of(vcm)
    if isinstance(hardware, HardwareView):
        checks += 2
        active = hardware.hardware_active()
        if active != (vcm.activations > 0):
            problems.append(f"hardware active={active} but activations={vcm.activations}")
        have = set(_merge(hardware.hardware_mappings()))
        want = set(expected_mappings(vcm))
        for extent in sorted(want - have):
            problems.append(f"missing in hardware: {_format(extent)}")
        for extent in sorted(have - want):
            problems.append(f"stale in hardware:   {_format(extent)}")
    if problems:
        raise HardwareMismatch(
            f"{vcm.name}: hardware differs from the model:\n  " + "\n  ".join(problems)
        )
    return checks
