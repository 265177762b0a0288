"""The one-to-one wrapper (``vcm_o2o_init``): contexts for devices without an MMU.

The device sees physical addresses, so a reservation's address is its memory's address: memory
and reservation are made together. A driver provides only a contiguous allocator. A phys can be
bound only to its own reservation (``EOPNOTSUPP`` otherwise), mapped once at a time (``EBUSY``
for a second map), reserve alone is ``EOPNOTSUPP``, and the driver's memory is released only
when both the reservation and the phys are gone (so no live reservation can overlap memory
handed out again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import anyio

from ._core import Phys, PhysPart, Res, Vcm, _NoPublicConstructor, _WrapperDriver
from ._errors import BusyError, InvalidError, NotSupportedError
from ._memory import PAGE_SIZE, PhysicalMemory
from ._phys import resolve_memory
from ._sync import sync_point
from ._validate import check_coroutine_function

__all__ = ["O2oDriver", "O2oPart", "O2oWrapper", "o2o_init"]


class O2oPart(metaclass=_NoPublicConstructor):
    """The block a one-to-one driver is asked for: ``size`` is set, the driver sets ``start``
    (and may raise ``size``). Made by the wrapper only (``O2oPart._create``)."""

    _public_name = "avcm.lowlevel.O2oPart"
    _made_by = "the one-to-one wrapper makes it for its driver's alloc"

    __slots__ = ("size", "start")

    @classmethod
    def _create(cls, start: int, size: int) -> O2oPart:
        return cls._construct(start, size)

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size

    def __repr__(self) -> str:
        return f"O2oPart(start={self.start:#x}, size={self.size:#x})"


class O2oDriver(Protocol):
    """``struct vcm_o2o_driver``: a physically contiguous allocator; ``cleanup`` is optional.

    ``async alloc(vcm, part, flags) -> token`` sets ``part.start`` and returns a private token
    (or raises, having allocated nothing); ``async free(part, token)`` gives the block back;
    ``async cleanup(vcm)``. Each must be a coroutine function (``async def``, a partial of one,
    or an object with an ``async def __call__``): :func:`o2o_init` refuses anything else, or a
    driver without ``alloc`` or ``free``, with ``EINVAL``.
    """

    async def alloc(self, vcm: Vcm, part: O2oPart, flags: int, /) -> object: ...

    async def free(self, part: PhysPart, token: object, /) -> None: ...


@dataclass(slots=True, eq=False)
class _Pair:
    """One allocation: its memory half and, while mapped, its reservation half."""

    part: PhysPart
    token: object
    phys: Phys
    res: Res | None = None
    phys_live: bool = True


class O2oWrapper(_WrapperDriver):
    """The core driver behind every one-to-one context; ``vcm.driver`` of :func:`o2o_init`.

    No public constructor: its bookkeeping belongs to one context, the one :func:`o2o_init`
    makes with it.
    """

    _public_name = "avcm.lowlevel.O2oWrapper"
    _made_by = "avcm.o2o_init makes it, with its context"

    @classmethod
    def _create(cls, driver: O2oDriver, memory: PhysicalMemory) -> O2oWrapper:
        return cls._construct(driver, memory)

    def __init__(self, driver: O2oDriver, memory: PhysicalMemory) -> None:
        for name in ("alloc", "free"):
            if getattr(driver, name, None) is None:
                raise InvalidError(f"o2o_init: driver {driver!r} has no {name} operation")
        for name in ("alloc", "free", "cleanup"):
            op = getattr(driver, name, None)
            if op is not None:
                check_coroutine_function(op, f"o2o_init: driver {driver!r}: {name}")
        self.hw = driver
        self.memory = memory
        self._pairs: dict[Phys, _Pair] = {}
        self._by_res: dict[Res, _Pair] = {}

    def __repr__(self) -> str:
        return f"<O2oWrapper of {self.hw!r}>"

    @property
    def pairs(self) -> int:
        """How many allocations still hold the driver's memory."""
        return len(self._pairs)

    async def phys(self, vcm: Vcm, size: int, flags: int) -> Phys:
        part = O2oPart._create(0, size)
        await sync_point("driver.o2o_alloc", vcm)
        token = await self.hw.alloc(vcm, part, flags)
        start, got = part.start, part.size
        end = vcm.start + vcm.size
        if (
            not isinstance(start, int)
            or not isinstance(got, int)
            or (start | got) & (PAGE_SIZE - 1)
            or got < size
            or start < vcm.start
            or start + got > end
        ):
            with anyio.CancelScope(shield=True):
                await self.hw.free(PhysPart(start, got), token)
            raise InvalidError(
                f"alloc: one-to-one driver {self.hw!r} returned {part!r} for {size:#x} bytes, "
                f"not a page-aligned block inside {vcm.start:#x}..{end:#x}"
            )
        phys = Phys._create([(start, got)], free=self._free, memory=self.memory)
        self._pairs[phys] = _Pair(PhysPart(start, got), token, phys)
        return phys

    async def map(self, vcm: Vcm, phys: Phys, flags: int) -> Res:
        pair = self._pairs.get(phys)
        if pair is None or not pair.phys_live:
            raise NotSupportedError(
                f"map: {phys!r} was not allocated in one-to-one context {vcm.name}"
            )
        if pair.res is not None:
            raise BusyError(f"map: {phys!r} is already mapped at {pair.res!r}")
        res = Res._create(vcm, pair.part.start, pair.part.size)
        pair.res = res
        self._by_res[res] = pair
        return res

    async def bind(self, res: Res, phys: Phys) -> None:
        pair = self._by_res.get(res)
        if pair is None or pair.phys is not phys:
            raise NotSupportedError(
                f"bind: one-to-one {res!r} can only be bound to its own memory, not {phys!r}"
            )

    # Each half forgets its record only once the driver's free (if it is the last half) has
    # succeeded: a failed free leaves the pair exactly as it was, and the caller can retry.

    async def unreserve(self, res: Res) -> None:
        pair = self._by_res.get(res)
        if pair is None:
            raise InvalidError(f"unreserve: {res!r} is not a one-to-one reservation of {self!r}")
        if not pair.phys_live:
            await self._release(pair)
        del self._by_res[res]
        pair.res = None

    async def _free(self, phys: Phys) -> None:
        pair = self._pairs.get(phys)
        if pair is None or not pair.phys_live:
            raise InvalidError(f"free: {phys!r} is not live memory of {self!r}")
        if pair.res is None:
            await self._release(pair)
        pair.phys_live = False

    async def _release(self, pair: _Pair) -> None:
        await sync_point("driver.o2o_free", pair.phys)
        await self.hw.free(pair.part, pair.token)
        del self._pairs[pair.phys]

    async def cleanup(self, vcm: Vcm) -> None:
        cleanup = getattr(self.hw, "cleanup", None)
        if cleanup is not None:
            await cleanup(vcm)


def o2o_init(
    start: int,
    size: int,
    driver: O2oDriver,
    *,
    memory: PhysicalMemory | None = None,
    name: str | None = None,
) -> Vcm:
    """``vcm_o2o_init``: a one-to-one context over the physical window ``start..start+size``.

    ``EINVAL`` (and nothing created) for a bad window or a driver without ``alloc``/``free``
    or with an operation that is not a coroutine function.

    Raises:
        InvalidError: ``EINVAL``, nothing created: a bad window or memory, or a driver without
            ``alloc``/``free`` or with an operation that is not a coroutine function.
    """
    ram = resolve_memory(memory, "o2o_init")
    return Vcm(start, size, O2oWrapper._create(driver, ram), name=name)
