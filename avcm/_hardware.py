"""What a simulating driver shows the checks: whether the hardware is active, what it maps.

The model check and the quiescent invariants (``avcm.testing``) compare the hardware with the
model through this view; a driver that simulates hardware provides it so that its contexts can
be checked. It lives in the framework, not in ``avcm.testing``, because drivers implement it and
drivers must not depend on the race finder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, cast, runtime_checkable

from ._core import Vcm
from ._mmu import MmuWrapper

__all__ = ["Extent", "HardwareView", "hardware_view"]

Extent = tuple[int, int, int]
"""``(device address, physical address, size)``: one translation the hardware holds."""


@runtime_checkable
class HardwareView(Protocol):
    """What a simulating driver shows the model check."""

    def hardware_active(self) -> bool:
        """Whether the context is active in the hardware now."""
        ...

    def hardware_mappings(self) -> Iterable[Extent]:
        """Every translation the hardware holds, as ``(vaddr, paddr, size)`` extents."""
        ...


def hardware_view(vcm: Vcm) -> HardwareView | None:
    """The view of *vcm*'s hardware, or ``None`` if its driver shows none.

    For an MMU context that is the hardware driver behind the wrapper (``vcm.driver.hw``); for
    a core driver, the driver itself. A one-to-one context has no translating hardware.
    """
    driver = vcm.driver
    hardware = driver.hw if isinstance(driver, MmuWrapper) else driver
    # A runtime protocol's isinstance costs microseconds (it lists the protocol's members each
    # time), and the checks ask at every model check. For a protocol of methods only it is true
    # for every instance of a class that is a subclass (a class-level answer, which the ABC
    # machinery caches: a fraction of a microsecond); otherwise only for an instance that has
    # the members itself, so one without the first is none (a one-to-one wrapper). Only what
    # is left is asked in full.
    kind = type(hardware)
    if issubclass(kind, HardwareView):
        return cast(HardwareView, hardware)
    if not hasattr(hardware, "hardware_active"):
        return None
    return hardware if isinstance(hardware, HardwareView) else None
