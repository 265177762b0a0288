"""Contexts, reservations and physical memory: the VCMM core, without the patch's races.

Locking, in the kernel's vocabulary:

* each context has one :class:`~avcm._sync.Mutex`. It orders everything that changes what the
  hardware must show: bind, unbind, map, unreserve, activate, deactivate, destroy. Holding it
  while the driver runs is what makes rule 1 (a second activator waits for the first one's
  driver call) and rule 4 (hardware matches the model) hold.
* each phys has a mutex of its own, taken after a context mutex (never the other way round),
  for the few steps that decide between "bound" and "freed" (rule 6).
* creating objects (alloc, reserve) does not take the context mutex; a usage count lets destroy
  wait until no creation is in flight.

Cancellation: operations that build (alloc, reserve, map, bind, make_binding, activate) may be
cancelled anywhere; if cancelled they had no effect, and the undo runs shielded. Operations that
tear down (free, unbind, unreserve, unmap, destroy_binding, deactivate) may be cancelled only
while waiting for a lock; once they hold it they finish, shielded. Closing (destroy, and the
exits of ``async with vcm`` and ``async with vcm.activated()``) completes even when cancelled,
as trio's ``AsyncResource.aclose`` does: the waiting goes on shielded, then the cancellation
is delivered.

Ownership: reservations and phys have no public constructor (``_NoPublicConstructor``); the
context and the wrappers make them with ``Res._create`` and ``Phys._create``, drivers with
``avcm.lowlevel.create_res`` and ``create_phys`` (the same factories, public), and
every operation refuses a reservation that is not in its context's live registry.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    Generic,
    NamedTuple,
    NoReturn,
    Protocol,
    Self,
    SupportsIndex,
    TypeVar,
    runtime_checkable,
)

import anyio
import anyio.lowlevel

from ._errors import (
    AddressInUseError,
    AlreadyBoundError,
    BusyError,
    InvalidError,
    NoSpaceError,
    NotSupportedError,
    VcmWarning,
    carry_undo_failed,
)
from ._memory import PhysicalMemory
from ._sync import AtomicCounter, Mutex, MutexStatistics, installed_hooks, sync_point
from ._validate import (
    check_aligned,
    check_coroutine_function,
    check_flags,
    check_span,
    page_align,
    quote,
)

__all__ = [
    "FreeCallback",
    "Phys",
    "PhysPart",
    "PhysStatistics",
    "Res",
    "Vcm",
    "VcmDriver",
    "VcmStatistics",
]


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str) -> None:
    """Warn with :class:`~avcm.VcmWarning`, attributed to the first caller outside avcm.

    A fixed stacklevel would be right for one call path only: the same warning comes from a
    public method, from another one calling it (``destroy_binding`` of an unbound reservation),
    from an ``async with`` exit. Awaiting coroutines chain their frames, so the walk finds the
    user's line through any of them. ``avcm.testing`` counts as a caller (it is a user of the
    API, in a directory of its own). Python 3.12's ``skip_file_prefixes`` would do the walk but
    3.11 is supported.
    """
    frame = sys._getframe(1)
    level = 2  # warnings.warn's caller is this function: level 1
    while frame.f_back is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE_DIR:
        frame = frame.f_back
        level += 1
    warnings.warn(message, VcmWarning, stacklevel=level)


_T = TypeVar("_T")


class _NoPublicConstructor(type):
    """trio's ``NoPublicConstructor``: ``Cls(...)`` raises; avcm uses ``_create``.

    An object avcm did not make could name a live object's addresses (unreserving it would
    give them away) or memory nobody owns, so only the context, the wrappers and drivers make
    them. Raising :class:`~avcm.InvalidError` (EINVAL), not TypeError: bad input to avcm always
    gets a :class:`~avcm.VcmError`. ``_made_by`` says how the objects of a class are made.
    """

    _made_by: str
    _public_name: str  # where users find the class: avcm.Res, avcm.lowlevel.O2oPart

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise InvalidError(f"{cls._public_name} has no public constructor: {cls._made_by}")

    def _construct(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        instance: _T = type.__call__(cls, *args, **kwargs)
        return instance


class _WrapperDriver(metaclass=_NoPublicConstructor):
    """Base of the MMU and one-to-one wrappers: a core driver whose bookkeeping (address
    allocator, bound list, activated state, pairs) belongs to exactly one context, the first
    one made with it. A second context over the same wrapper (``Vcm(start, size,
    other.driver)``) would share that bookkeeping, so it is refused with ``EINVAL``."""

    _context: Vcm | None = None

    def _unbind_now(self, res: Res) -> bool:
        """Unbind *res* without awaiting, if ``unbind`` would not wait now; whether it did.
        Only where nothing can fail (the core does not expect it to raise)."""
        return False


class _Allocated(metaclass=_NoPublicConstructor):
    """Base of :class:`Res` and :class:`Phys`: one object stands for one allocation, so there
    are no copies either (``copy``, ``deepcopy`` and ``pickle`` raise ``EINVAL``): a copy of a
    phys could free its memory a second time."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise InvalidError(f"{self!r} cannot be copied or pickled: it stands for an allocation")


def _shielded() -> anyio.CancelScope:
    return anyio.CancelScope(shield=True)


# --------------------------------------------------------------------------------------------
# Physical memory


class PhysPart(NamedTuple):
    """One physically contiguous block of a :class:`Phys`: ``start`` and ``size`` in bytes."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class PhysStatistics:
    """A snapshot of a :class:`Phys`, for introspection and checks: ``locked`` says whether
    an operation holds the phys's lock now (never, when no operation is in flight)."""

    bindings: int
    freed: bool
    locked: bool


FreeCallback = Callable[["Phys"], Awaitable[None]]
"""``await free(phys)``: gives a phys's memory back to whoever allocated it (``phys->free``)."""


_SIZE_MASK = (1 << 64) - 1


class Phys(_Allocated):
    """``struct vcm_phys``: allocated physical memory, possibly in several parts.

    Made by :meth:`Vcm.alloc`, :func:`avcm.phys_alloc` or a driver (``create_phys``); there
    is no public constructor (``Phys(...)`` raises ``EINVAL``), so every phys is memory that
    somebody really allocated. ``count``, ``size``, ``parts`` and ``memory`` never change;
    ``vcm`` is the context it was allocated through (``None`` for :func:`avcm.phys_alloc`'s);
    ``bindings`` counts the reservations it is bound to. All are read-only.
    """

    _public_name = "avcm.Phys"
    _made_by = "allocate with Vcm.alloc or avcm.phys_alloc; a driver uses avcm.lowlevel.create_phys"

    __slots__ = (
        "__weakref__",
        "_bindings",
        "_free",
        "_freed",
        "_layout",
        "_lock",
        "_memory",
        "_vcm",
    )

    @classmethod
    def _create(
        cls,
        parts: Iterable[tuple[int, int]],
        *,
        free: FreeCallback | None = None,
        memory: PhysicalMemory | None = None,
    ) -> Phys:
        """Describe memory a driver allocated; *free* is awaited once, when it is freed.

        The one way to make a phys (drivers' factory). *memory* is the simulated RAM the parts
        live in, if any; drivers that move bytes (IOMMU, CPU) check it. Parts must be
        ``(start, size)`` pairs, page aligned, non-empty, inside 64-bit addresses and not
        overlapping one another, and *free* a coroutine function: else ``EINVAL``.
        """
        return cls._construct(parts, free, memory)

    def __init__(
        self,
        parts: Iterable[tuple[int, int]],
        free: FreeCallback | None,
        memory: PhysicalMemory | None,
        *,
        allocated: bool = False,
    ) -> None:
        if free is not None:
            check_coroutine_function(free, "phys: free callback")
        if isinstance(parts, (str, bytes)) or not isinstance(parts, Iterable):
            raise InvalidError(f"phys parts must be (start, size) pairs, not {quote(parts)}")
        if memory is not None and not isinstance(memory, PhysicalMemory):
            raise InvalidError(f"phys memory must be a PhysicalMemory, not {quote(memory)}")
        # Flat (total size, start, size, start, size, ...) in an array: 16 bytes a part, where
        # a tuple of PhysPart would cost over 100 (a phys of a 4 KiB-page MMU has thousands of
        # parts), and 8 for the size, where an int would cost 32.
        if allocated:
            # blocks avcm's own allocator just handed out (phys_alloc): (start, size) pairs,
            # aligned, in range and apart by construction, so taken as they are, unchecked (a
            # phys of 4 KiB pages has hundreds; the overlap check would sort them, since the
            # largest come first, often out of address order)
            flat = [0, *itertools.chain.from_iterable(parts)]
            flat[0] = sum(flat[2::2])
        else:
            flat = self._checked_layout(parts)
        if len(flat) == 1:
            raise InvalidError("phys must have at least one part")
        flat[0] &= _SIZE_MASK  # all of the 64-bit space, 1 << 64, is kept as 0: see size
        self._layout = array("Q", flat)  # exactly as large as it must be: appending over-sizes
        self._free = free
        self._memory = memory
        self._vcm: Vcm | None = None
        # How many reservations it is bound to: an atomic_t, its steps those of AtomicCounter
        # (_count), without one (a phys's every byte counts).
        self._bindings = 0
        self._lock: Mutex | None = None  # made by _mutex, when first needed
        self._freed = False

    @staticmethod
    def _checked_layout(parts: Iterable[tuple[int, int]]) -> list[int]:
        """The flat layout of parts a driver describes, each checked: pairs of page aligned
        ints inside 64-bit addresses, no two overlapping (EINVAL)."""
        flat = [0]
        ascending, end = True, 0
        for index, part in enumerate(parts):
            try:
                start, size = part
            except (TypeError, ValueError):
                raise InvalidError(
                    f"phys part {index} {part!r} is not a (start, size) pair"
                ) from None
            check_aligned(start, f"phys part {index} start")
            check_aligned(size, f"phys part {index} size", positive=True)
            check_span(start, size, f"phys part {index}")
            ascending = ascending and start >= end
            end = start + size
            flat.append(start)
            flat.append(size)
            flat[0] += size
        if not ascending:  # parts in address order, the usual case, cannot overlap
            _check_disjoint(flat)
        return flat

    def __repr__(self) -> str:
        state = " freed" if self._freed else f" bindings={self._bindings}"
        return f"<Phys {self.size:#x} bytes in {self.count} parts at {self._layout[1]:#x}{state}>"

    @property
    def size(self) -> int:
        """The total size in bytes, the sum of the parts' sizes."""
        return self._layout[0] or _SIZE_MASK + 1  # no phys is empty

    @property
    def memory(self) -> PhysicalMemory | None:
        """The simulated RAM the parts live in (``None`` if the driver did not say)."""
        return self._memory

    @property
    def vcm(self) -> Vcm | None:
        """The context it was allocated through and is freed by at its destroy, if any."""
        return self._vcm

    @property
    def count(self) -> int:
        """How many physically contiguous parts; 1 means the whole phys is contiguous."""
        return len(self._layout) >> 1  # the size, and two per part

    @property
    def parts(self) -> tuple[PhysPart, ...]:
        """The parts, in allocation order (a new tuple at every access)."""
        layout = self._layout
        # what PhysPart(start, size) makes, without its Python __new__ per part (the checks
        # read every live phys's parts at every quiescent point)
        pairs = zip(layout[1::2], layout[2::2], strict=True)
        return tuple(map(tuple.__new__, itertools.repeat(PhysPart), pairs))

    def _spans(self) -> Iterator[tuple[int, int]]:
        """The parts as plain ``(start, size)`` pairs, for avcm's own walks: a page walk or a
        free goes through every part of a phys of 4 KiB pages, and a named tuple each is
        a measurable share of a bind."""
        layout = self._layout
        return zip(layout[1::2], layout[2::2], strict=True)

    @property
    def bindings(self) -> int:
        """How many reservations this phys is bound to now."""
        return self._bindings

    @property
    def freed(self) -> bool:
        return self._freed

    def statistics(self) -> PhysStatistics:
        # Cheap on purpose (no MutexStatistics): the checks take one of every live phys at
        # every quiescent point.
        return PhysStatistics(
            bindings=self._bindings,
            freed=self._freed,
            locked=self._lock is not None and self._lock.is_locked(),
        )

    def _mutex(self) -> Mutex:
        """The phys's lock, made at its first use: most phys are bound and freed by their own
        context only, under its mutex, and never need one (a mutex is most of a phys's size).
        Taken inside operations that checkpointed already (free checkpoints by itself), so it
        need not yield when free. A context's phys belongs to the context's event loop."""
        lock = self._lock
        if lock is None:
            lock = self._lock = Mutex("phys", fast_acquire=True)
            if self._vcm is not None:
                lock._home = self._vcm._mutex._home
        return lock

    def _check_usable(self, what: str) -> None:
        if self._freed:
            raise InvalidError(f"{what}: {self!r} was freed")

    async def free(self) -> None:
        """``vcm_free``: give the memory back.

        ``EBUSY`` if it is still bound (the kernel warned and leaked; avcm refuses and the phys
        stays valid); ``EINVAL`` if it was already freed. If cancelled while waiting for the
        phys's lock, nothing was freed; after that it completes.

        Raises:
            BusyError: ``EBUSY``: the phys is still bound; it stays valid.
            InvalidError: ``EINVAL``: it was freed already, or is used from an event loop other than
                its own.
        """
        await anyio.lowlevel.checkpoint()
        async with self._mutex():
            self._check_usable("free")
            if self._bindings:
                raise BusyError(f"free: {self!r} is still bound to {self.bindings} reservation(s)")
            with _shielded():
                await self._free_locked()

    async def _free_locked(self) -> None:
        if self._free is not None:
            await sync_point("driver.free", self)
            await self._free(self)
        self._freed = True
        if self._vcm is not None:
            self._vcm._physes.pop(self, None)

    async def _claim(self, vcm: Vcm, what: str) -> None:
        """Count a binding in progress in *vcm*, whose mutex the caller holds, unless the phys
        was freed (rule 6: one of them wins).

        Under the phys's lock, which a free holds while its driver call runs. The test and the
        count do not yield when no hook is installed: then a phys of *vcm* (so of its event
        loop) whose lock nobody holds is claimed without taking it.
        """
        lock = self._lock
        if not installed_hooks and self._vcm is vcm and (lock is None or not lock.is_locked()):
            self._check_usable(what)
            self._bindings += 1
            return
        async with self._mutex():
            self._check_usable(what)
            await self._count(1)

    async def _unclaim(self) -> None:
        await self._count(-1)

    async def _count(self, delta: int) -> None:
        """The bindings count's atomic step: ``AtomicCounter.add_return``'s sync point, then the
        update (no sync point without a hook: it would do nothing)."""
        if installed_hooks:
            await sync_point("atomic.add_return", self)
        self._bindings += delta


# --------------------------------------------------------------------------------------------
# Reservations


class Res(_Allocated):
    """``struct vcm_res``: reserved address space in a context, bound to a phys or not.

    Made by :meth:`Vcm.reserve`, :meth:`Vcm.map`, :meth:`Vcm.make_binding` (through the
    context's driver, which uses ``create_res``); there is no public constructor
    (``Res(...)`` raises ``EINVAL``). Every operation refuses (``EINVAL``) a reservation that is
    not a live one of its context: unreserved, destroyed, or made by a driver and never handed
    to the context. ``vcm`` is its context, ``start`` the address the device sees,
    ``res_size`` the reserved size, ``phys`` the bound memory (``None`` when unbound) and
    ``bound_size`` its size (0 when unbound); all read-only.
    """

    _public_name = "avcm.Res"
    _made_by = (
        "reserve with Vcm.reserve, Vcm.map or Vcm.make_binding; a driver uses "
        "avcm.lowlevel.create_res"
    )

    __slots__ = ("__weakref__", "_dead", "_phys", "_res_size", "_start", "_vcm")

    @classmethod
    def _create(cls, vcm: Vcm, start: int, res_size: int) -> Res:
        """Describe address space a driver reserved in *vcm* (drivers' factory).

        ``EINVAL`` unless *vcm* is a context and the range is page aligned, non-empty and
        inside 64-bit addresses. The reservation is live once the driver's ``res``, ``map`` or
        ``alloc`` operation has returned it to the context.
        """
        return cls._construct(vcm, start, res_size)

    def __init__(self, vcm: Vcm, start: int, res_size: int) -> None:
        if not isinstance(vcm, Vcm):
            raise InvalidError(f"res: {vcm!r} is not a context")
        check_aligned(start, "res start")
        check_aligned(res_size, "res size", positive=True)
        check_span(start, res_size, "res")
        self._vcm = vcm
        self._start = start
        self._res_size = res_size
        self._phys: Phys | None = None
        self._dead = False

    def __repr__(self) -> str:
        state = " unreserved" if self._dead else (" bound" if self._phys is not None else "")
        return f"<Res {self._start:#x}+{self._res_size:#x} in {self._vcm.name}{state}>"

    @property
    def vcm(self) -> Vcm:
        """The context this reservation is in."""
        return self._vcm

    @property
    def start(self) -> int:
        """The first address the device sees."""
        return self._start

    @property
    def res_size(self) -> int:
        """The reserved size in bytes."""
        return self._res_size

    @property
    def phys(self) -> Phys | None:
        """The bound memory, ``None`` when unbound."""
        return self._phys

    @property
    def bound_size(self) -> int:
        """The bound memory's size, 0 when unbound."""
        return 0 if self._phys is None else self._phys.size

    @property
    def unreserved(self) -> bool:
        return self._dead

    def _check_usable(self, what: str) -> None:
        if self._dead:
            raise InvalidError(f"{what}: {self!r} was unreserved")
        if self not in self._vcm._reservations:
            raise InvalidError(f"{what}: {self!r} is not a live reservation of {self._vcm.name}")

    async def bind(self, phys: Phys) -> None:
        """``vcm_bind``: bind *phys* to this reservation.

        If the context is active the mapping is in the hardware before this returns.
        ``EALREADY`` if *phys* is already bound here, ``EADDRINUSE`` if another phys is,
        ``ENOSPC`` if *phys* is larger than the reservation, ``EOPNOTSUPP`` if the driver cannot
        bind, ``EINVAL`` if either object was freed, unreserved or destroyed, or the reservation
        is not one its context handed out. Of concurrent binds to one reservation exactly one
        wins. If cancelled, nothing was bound.

        Raises:
            AlreadyBoundError: ``EALREADY``: *phys* is already bound to this reservation.
            AddressInUseError: ``EADDRINUSE``: another phys is bound to it (another bind won).
            NoSpaceError: ``ENOSPC``: *phys* is larger than the reservation.
            NotSupportedError: ``EOPNOTSUPP``: the driver cannot bind (or not this phys here).
            InvalidError: ``EINVAL``: an object is not a live one of this context (freed,
                unreserved, destroyed, never handed out), or is used from an event loop other than
                its own.
        """
        _check_phys_arg(phys, "bind")
        vcm = self._vcm
        async with vcm._mutex:
            vcm._check_not_destroyed("bind")
            self._check_usable("bind")
            phys._check_usable("bind")
            if self._phys is phys:
                raise AlreadyBoundError(f"bind: {phys!r} is already bound to {self!r}")
            if self._phys is not None:
                raise AddressInUseError(f"bind: {self!r} is already bound to {self._phys!r}")
            if phys.size > self._res_size:
                raise NoSpaceError(
                    f"bind: {phys!r} is larger than {self!r} ({phys.size:#x} > {self._res_size:#x})"
                )
            bind = vcm._ops.bind
            if bind is None:
                raise NotSupportedError(f"bind: driver of {vcm.name} has no bind operation")
            await phys._claim(vcm, "bind")
            try:
                await sync_point("driver.bind", self)
                await bind(self, phys)
            except BaseException:
                with _shielded():
                    await phys._unclaim()
                raise
            self._phys = phys
            vcm._bound += 1

    async def unbind(self) -> Phys | None:
        """``vcm_unbind``: unbind and return the phys.

        If nothing was bound, warn (:class:`~avcm.VcmWarning`) and return ``None``. If the context
        is active the mapping is gone from the hardware before this returns. Of concurrent unbinds
        exactly one returns the phys. If the driver's unbind fails, nothing changed.

        Raises:
            InvalidError: ``EINVAL``: the reservation is not a live one of its context, or is used
                from an event loop other than its own.
            VcmError: the driver's unbind failed (its own errno); nothing changed.
        """
        vcm = self._vcm
        async with vcm._mutex:
            self._check_usable("unbind")
            phys = self._phys
            if phys is not None and not installed_hooks and vcm._ops.unbind_now(self):
                # Nothing that could yield (no hook, a driver that did not wait): nothing a
                # cancellation could cut short, so no shield (a cancel scope costs as much as
                # all the rest of the unbind).
                await self._drop_binding(phys)
                return phys
            with _shielded():
                phys = await self._unbind_locked(True)
        return phys

    async def _unbind_locked(self, warn: bool) -> Phys | None:
        phys = self._phys
        if phys is None:
            if warn:
                _warn(f"unbind: {self!r} is not bound")
            return None
        await self._driver_unbind()
        await self._drop_binding(phys)
        return phys

    async def _driver_unbind(self) -> bool:
        """Take the binding out of the driver (and the hardware); whether the driver was told.

        The phys stays claimed and ``self.phys`` set until :meth:`_drop_binding`, so a step that
        fails after this one can still put the binding back with :meth:`_restore_binding`.
        """
        unbind = self._vcm._ops.unbind
        if unbind is None:
            return False
        await sync_point("driver.unbind", self)
        await unbind(self)
        return True

    async def _drop_binding(self, phys: Phys) -> None:
        self._phys = None
        self._vcm._bound -= 1
        await phys._unclaim()

    async def _restore_binding(self, phys: Phys, told: bool, error: BaseException) -> None:
        """Undo :meth:`_driver_unbind` after a later step failed with *error*.

        The driver's bind puts the binding back (into the hardware if active). If that fails
        too, the reservation is left unbound, which is consistent, and *error* says so.
        """
        if not told:
            return
        bind = self._vcm._ops.bind
        try:
            if bind is None:
                raise NotSupportedError(f"driver of {self._vcm.name} has no bind operation")
            await sync_point("driver.bind", self)
            await bind(self, phys)
        except Exception as undo_error:
            error.add_note(
                f"binding {phys!r} to {self!r} again failed too ({undo_error!r}); "
                "the reservation is left unbound"
            )
            await self._drop_binding(phys)

    async def _or_restore_binding(
        self, phys: Phys, told: bool, step: Callable[[], Awaitable[None]]
    ) -> None:
        """Run *step*, the one after :meth:`_driver_unbind`; if it fails, restore the binding
        and re-raise."""
        try:
            await step()
        except BaseException as error:
            await self._restore_binding(phys, told, error)
            raise

    async def _unreserve_locked(self) -> None:
        vcm = self._vcm
        await sync_point("driver.unreserve", self)
        await vcm._ops.unreserve(self)
        self._dead = True
        vcm._reservations.pop(self, None)

    async def _unbind_and_unreserve_locked(self) -> None:
        """Unbind (if bound) and unreserve as one step: if the driver's unreserve fails, the
        binding is put back and the error raised, so nothing changed.

        Unbinding first is what the kernel does, and it must: the driver's unreserve gives the
        addresses back to an allocator that reserve uses without the context mutex, so they must
        no longer be mapped by then.
        """
        phys = self._phys
        if phys is None:
            await self._unreserve_locked()
            return
        told = await self._driver_unbind()
        await self._or_restore_binding(phys, told, self._unreserve_locked)
        await self._drop_binding(phys)

    async def unreserve(self) -> None:
        """``vcm_unreserve``: give the address space back.

        If still bound: warn, unbind, then release. ``EINVAL`` if already unreserved. If the
        driver's unbind or unreserve fails, the error is raised and nothing changed: a binding
        already taken out of the driver is put back with the driver's bind (if even that fails,
        the reservation stays reserved and unbound, and a note on the error says so).

        Raises:
            InvalidError: ``EINVAL``: the reservation was unreserved already or is not its
                context's, or is used from an event loop other than its own.
            VcmError: the driver's unbind or unreserve failed (its own errno); nothing changed.
        """
        async with self._vcm._mutex:
            self._check_usable("unreserve")
            with _shielded():
                if self._phys is not None:
                    _warn(f"unreserve: {self!r} is still bound to {self._phys!r}; unbinding it")
                await self._unbind_and_unreserve_locked()

    async def unmap(self) -> None:
        """``vcm_unmap``: unbind (warning if nothing was bound) and unreserve, in one step.

        A driver failure changes nothing, as for :meth:`unreserve`.

        Raises:
            InvalidError: ``EINVAL``: as for :meth:`unreserve`.
            VcmError: the driver's unbind or unreserve failed (its own errno); nothing changed.
        """
        async with self._vcm._mutex:
            self._check_usable("unmap")
            with _shielded():
                if self._phys is None:
                    _warn(f"unbind: {self!r} is not bound")
                await self._unbind_and_unreserve_locked()

    async def destroy_binding(self) -> None:
        """``vcm_destroy_binding``: unbind, free the phys and unreserve, in one step.

        ``EBUSY`` (and nothing changes) if the phys is also bound to another reservation:
        freeing it would pull memory from under another mapping.

        Driver failures: if the driver's unbind or the phys's free fails, nothing changed (the
        binding is put back as for :meth:`unreserve`). Freeing and unreserving both give
        something back for good, so one of them is done when the other runs: if the driver's
        unreserve fails, the memory stays freed and the reservation stays reserved and unbound,
        and a note on the error says so; :meth:`unreserve` releases it later. On a one-to-one
        context this is also what a failing *allocator* ``free`` does: the block goes back to
        the allocator only once both its phys and its reservation are gone, which is in the
        unreserve step, so the phys is freed (``phys.freed``, gone from ``vcm.allocations()``),
        the reservation stays reserved and unbound and keeps the block, and :meth:`unreserve`
        retries the allocator's free.

        If cancelled while waiting for the context's mutex (or the phys's), nothing changed;
        once it holds them, it completes.

        Raises:
            BusyError: ``EBUSY``: the phys is also bound to another reservation; nothing changed.
            InvalidError: ``EINVAL``: the reservation is not a live one of its context, or is used
                from an event loop other than its own.
            VcmError: a driver step failed (its own errno), with the partial effects above.
        """
        async with self._vcm._mutex:
            self._check_usable("destroy_binding")
            phys = self._phys
            if phys is None:
                with _shielded():
                    _warn(f"unbind: {self!r} is not bound")
                    await self._unreserve_locked()
                return
            async with phys._mutex():
                if phys.bindings > 1:
                    raise BusyError(
                        f"destroy_binding: {phys!r} is also bound to "
                        f"{phys.bindings - 1} other reservation(s)"
                    )
                with _shielded():
                    told = await self._driver_unbind()
                    await self._or_restore_binding(phys, told, phys._free_locked)
                    await self._drop_binding(phys)
                    try:
                        await self._unreserve_locked()
                    except BaseException as error:
                        error.add_note(
                            f"destroy_binding: {phys!r} was freed already; {self!r} stays "
                            "reserved, unbound"
                        )
                        raise


def _check_disjoint(flat: list[int]) -> None:
    """EINVAL if two of these (total, start, size, start, size, ...) parts share a byte."""
    parts = sorted(zip(flat[1::2], flat[2::2], strict=True))
    for (start, size), (after, _) in itertools.pairwise(parts):
        if start + size > after:
            raise InvalidError(f"phys parts {start:#x}+{size:#x} and {after:#x} overlap")


def _check_phys_arg(phys: object, what: str) -> None:
    if not isinstance(phys, Phys):
        raise InvalidError(f"{what}: {phys!r} is not a Phys")


# --------------------------------------------------------------------------------------------
# The driver interface


@runtime_checkable
class VcmDriver(Protocol):
    """The core driver (``struct vcm_driver``). Only ``unreserve`` is required.

    Optional operations, looked up once when the context is made (a missing one is ``None``):

    * ``async cleanup(vcm)``: the context is being destroyed.
    * ``async alloc(vcm, size, alloc_flags, res_flags) -> (Phys | None, Res | None)``: allocate
      and reserve together; a flags argument of ``None`` means that half is not wanted. If
      present, ``res`` and ``phys`` are ignored.
    * ``async res(vcm, size, flags) -> Res``: reserve address space.
    * ``async phys(vcm, size, flags) -> Phys``: allocate physical memory.
    * ``async map(vcm, phys, flags) -> Res``: reserve and bind in one step.
    * ``async bind(res, phys)`` / ``async unbind(res)``: (un)bind; the hardware must reflect
      it if the context is active.
    * ``async activate(vcm)`` / ``async deactivate(vcm)``: called on the first activation and
      the last deactivation only.

    Every operation must be a coroutine function: an ``async def`` function or method, a
    :func:`functools.partial` of one, or an object whose ``__call__`` is ``async def``. A plain
    ``def`` (even one returning an awaitable), like a driver without ``unreserve``, is refused
    with ``EINVAL`` when the context is made, not at its first use.
    Sizes given to drivers are positive and page aligned. A driver operation that raises,
    including by cancellation, must have had no effect; one that tears down (``unbind``,
    ``unreserve``, ``deactivate``, ``cleanup``, a phys's free) is called shielded.
    """

    async def unreserve(self, res: Res, /) -> None: ...


_OPTIONAL_OPS = (
    "cleanup",
    "alloc",
    "res",
    "phys",
    "map",
    "bind",
    "unbind",
    "activate",
    "deactivate",
)


@dataclass(frozen=True, slots=True)
class _DriverOps:
    """The driver's operations, resolved once (the kernel's function-pointer table)."""

    unreserve: Callable[[Res], Awaitable[None]]
    cleanup: Callable[[Vcm], Awaitable[None]] | None
    alloc: Callable[[Vcm, int, int | None, int | None], Awaitable[tuple[Any, Any]]] | None
    res: Callable[[Vcm, int, int], Awaitable[Res]] | None
    phys: Callable[[Vcm, int, int], Awaitable[Phys]] | None
    map: Callable[[Vcm, Phys, int], Awaitable[Res]] | None
    bind: Callable[[Res, Phys], Awaitable[None]] | None
    unbind: Callable[[Res], Awaitable[None]] | None
    activate: Callable[[Vcm], Awaitable[None]] | None
    deactivate: Callable[[Vcm], Awaitable[None]] | None
    # unbind_now(res): unbind without awaiting if that can be done now (and cannot fail), and
    # say whether it was done; if not, unbind is awaited. A driver without unbind always can;
    # a wrapper's _unbind_now knows when its unbind would not wait (nothing in the hardware
    # to change); any other driver never can (its unbind may wait).
    unbind_now: Callable[[Res], bool]

    @classmethod
    def resolve(cls, driver: object) -> _DriverOps:
        if getattr(driver, "unreserve", None) is None:
            raise InvalidError(f"context: driver {driver!r} has no unreserve operation")
        ops: dict[str, Any] = {}
        for name in ("unreserve", *_OPTIONAL_OPS):
            op = getattr(driver, name, None)
            if op is not None:
                check_coroutine_function(op, f"context: driver {driver!r}: {name}")
            ops[name] = op
        if ops["unbind"] is None:
            ops["unbind_now"] = _unbound
        else:
            wrapper = driver if isinstance(driver, _WrapperDriver) else None
            ops["unbind_now"] = _cannot_unbind_now if wrapper is None else wrapper._unbind_now
        return cls(**ops)


def _unbound(res: Res) -> bool:
    return True


def _cannot_unbind_now(res: Res) -> bool:
    return False


# --------------------------------------------------------------------------------------------
# Contexts


@dataclass(frozen=True, slots=True)
class VcmStatistics:
    """A snapshot of a context, for introspection and checks."""

    name: str
    activations: int
    reservations: int
    bound_reservations: int
    phys: int
    operations_in_flight: int
    destroyed: bool
    mutex: MutexStatistics


_LIVE, _DYING, _DESTROYED = "live", "dying", "destroyed"


class Vcm:
    """``struct vcm``: an address space a device sees, and the driver behind it.

    Constructing one is ``vcm_init``: ``start`` and ``size`` must be page aligned, ``size``
    positive, and the driver must have the required operations; anything else raises ``EINVAL``
    and creates nothing. Usually made by a driver's factory (see ``drivers/``).
    ``async with vcm:`` destroys it on exit, completely even when cancelled (see
    :meth:`destroy`).
    """

    def __init__(self, start: int, size: int, driver: object, *, name: str | None = None) -> None:
        check_aligned(start, "context start")
        check_aligned(size, "context size", positive=True)
        check_span(start, size, "context")
        self._ops = _DriverOps.resolve(driver)
        if isinstance(driver, _WrapperDriver):
            if driver._context is not None:
                raise InvalidError(
                    f"context: {driver!r} already drives {driver._context!r}; "
                    "make a context with avcm.mmu_init or avcm.o2o_init"
                )
            driver._context = self  # the last check: nothing is claimed if one fails
        self.start = start
        self.size = size
        self.driver = driver
        self.name = name if name is not None else f"vcm@{start:#x}"
        self._mutex = Mutex(f"{self.name}.mutex")
        self._activations = AtomicCounter(0, f"{self.name}.activations")
        # Insertion-ordered sets: destroy tears down in creation order, deterministically.
        self._reservations: dict[Res, None] = {}
        self._bound = 0  # how many of them are bound: statistics() is read at every check
        self._physes: dict[Phys, None] = {}
        self._state = _LIVE
        self._in_flight = 0
        self._drained: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Vcm {self.name} {self.start:#x}+{self.size:#x} {self._state}>"

    # -- introspection -----------------------------------------------------------------------

    @property
    def activations(self) -> int:
        """How many activations are outstanding; the hardware is active iff this is > 0."""
        return self._activations.value

    @property
    def destroyed(self) -> bool:
        return self._state == _DESTROYED

    def reservations(self) -> tuple[Res, ...]:
        """The live reservations of this context, oldest first."""
        return tuple(self._reservations)

    def allocations(self) -> tuple[Phys, ...]:
        """The live phys allocated through this context, oldest first."""
        return tuple(self._physes)

    def statistics(self) -> VcmStatistics:
        return VcmStatistics(
            name=self.name,
            activations=self._activations.value,
            reservations=len(self._reservations),
            bound_reservations=self._bound,
            phys=len(self._physes),
            operations_in_flight=self._in_flight,
            destroyed=self._state == _DESTROYED,
            mutex=self._mutex.statistics(),
        )

    # -- lifetime ----------------------------------------------------------------------------

    def _check_live(self, what: str) -> None:
        """New objects only in a live context: destroy waits for creations in flight."""
        if self._state != _LIVE:
            raise InvalidError(f"{what}: context {self.name} is {self._state}")

    def _check_not_destroyed(self, what: str) -> None:
        """Operations under the mutex work until destroy's teardown takes it."""
        if self._state == _DESTROYED:
            raise InvalidError(f"{what}: context {self.name} is destroyed")

    async def _start_creating(self, what: str) -> None:
        """Count an object creation in flight, so destroy can wait for it; pair with
        :meth:`_stop_creating`. A checkpoint, as every avcm operation is, even when the driver
        never waits."""
        await anyio.lowlevel.checkpoint()
        self._mutex.check_loop(what)  # creating takes no lock: claim the loop here
        self._check_live(what)
        self._in_flight += 1

    def _stop_creating(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def destroy(self) -> None:
        """``vcm_destroy``: tear the context down; afterwards it is unusable (``EINVAL``).

        Destroying while activated or with live reservations or phys warns, then repairs:
        deactivates, unbinds and unreserves every reservation, frees every phys allocated here
        that is not bound in another context (those stay valid; free them there), and calls the
        driver's cleanup. ``EINVAL`` if the context is destroyed already or another destroy is
        under way. From the call on, creations (alloc, reserve, map, make_binding) fail with
        ``EINVAL`` ("dying"); destroy waits for those in flight to finish, then for the
        context's mutex (the operations holding it finish first).

        Closing completes even when cancelled (trio's rule for ``aclose``): if the caller is
        cancelled, the waiting goes on shielded, the teardown completes, and then the
        cancellation is delivered (raised at a checkpoint after the teardown). A cancelled
        destroy is never left half done: the context is destroyed, as if not cancelled. The
        price: a destroy waits, even cancelled, for an operation whose driver call never
        returns.

        A driver failure does not stop the teardown: like the kernel's, it releases everything
        it can. Then, if any step failed, the driver's cleanup is not called, the context is
        live again with exactly what could not be released (still activated if the deactivate
        failed, a reservation still bound if its unbind failed, ...), and the first driver
        error is raised, with the others noted on it; calling destroy again retries the rest.

        Raises:
            InvalidError: ``EINVAL``: the context is destroyed, or a destroy is under way, or it is
                used from an event loop other than its own.
            VcmError: a driver step failed (its own errno): the context is live again with what
                could not be released.
        """
        self._check_live("destroy")
        self._state = _DYING
        try:
            with _shielded():
                while self._in_flight:
                    self._drained = anyio.Event()
                    await self._drained.wait()
                async with self._mutex:
                    await self._teardown_locked()
        finally:
            if self._state == _DYING:  # a step failed: live again, destroy can be retried
                self._state = _LIVE
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _teardown_locked(self) -> None:
        errors: list[Exception] = []

        async def attempt(what: str, step: Callable[..., Awaitable[object]], *args: Any) -> bool:
            try:
                await step(*args)
            except Exception as error:
                error.add_note(f"destroy: {what} failed")
                errors.append(error)
                return False
            return True

        if self._activations.value:
            _warn(f"destroy: {self.name} is still activated ({self.activations}); deactivating")
            deactivate = self._ops.deactivate
            if deactivate is None or await attempt(
                f"deactivating {self.name}", self._driver_deactivate, deactivate
            ):
                await self._activations.set(0)
        if self._reservations or self._physes:
            _warn(
                f"destroy: {self.name} still has {len(self._reservations)} reservation(s) and "
                f"{len(self._physes)} phys; releasing them"
            )
        for res in list(self._reservations):
            if await attempt(f"unbinding {res!r}", res._unbind_locked, False):
                await attempt(f"unreserving {res!r}", res._unreserve_locked)
        for phys in list(self._physes):
            async with phys._mutex():
                if phys.freed:  # by a free that was in the driver when destroy began
                    continue
                if phys.bindings == 0:
                    await attempt(f"freeing {phys!r}", phys._free_locked)
                elif not any(res.phys is phys for res in self._reservations):
                    _warn(f"destroy: {phys!r} is bound in another context; it stays allocated")
                    phys._vcm = None
                    del self._physes[phys]
                # else still bound here, because its unbind failed: it stays for a retry
        cleanup = self._ops.cleanup
        if not errors and cleanup is not None:
            await sync_point("driver.cleanup", self)
            await attempt(f"cleanup of {self.name}", cleanup, self)
        if errors:
            for later in errors[1:]:
                errors[0].add_note(f"destroy: then {later!r}")
                carry_undo_failed(errors[0], later, "destroy")
            raise errors[0]
        self._state = _DESTROYED

    async def _driver_deactivate(self, deactivate: Callable[[Vcm], Awaitable[None]]) -> None:
        await sync_point("driver.deactivate", self)
        await deactivate(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Destroy the context unless it is destroyed (or being destroyed) already: as
        :meth:`destroy`, it completes even if the block was cancelled or is cancelled now."""
        if self._state == _LIVE:
            await self.destroy()

    # -- creating objects --------------------------------------------------------------------

    async def alloc(self, size: int, flags: int = 0) -> Phys:
        """``vcm_alloc``: allocate physical memory for use in this context.

        *size* is rounded up to a page. ``ENOMEM`` when memory is exhausted, ``EOPNOTSUPP`` if
        the driver cannot allocate. If cancelled, nothing was allocated.

        Raises:
            InvalidError: ``EINVAL``: a bad size or flags, a context destroyed or being destroyed,
                or one used from an event loop other than its own.
            NoMemoryError: ``ENOMEM``: physical memory is exhausted.
            NotSupportedError: ``EOPNOTSUPP``: the driver cannot allocate.
        """
        size = page_align(size, "alloc")
        flags = check_flags(flags, "alloc")
        await self._start_creating("alloc")
        try:
            return await self._new_phys(size, flags)
        finally:
            self._stop_creating()

    async def reserve(self, size: int, flags: int = 0) -> Res:
        """``vcm_reserve``: reserve address space; *size* is rounded up to a page.

        ``ENOSPC`` when the address space is exhausted, ``EOPNOTSUPP`` if the driver cannot
        reserve alone (one-to-one contexts). If cancelled, nothing was reserved.

        Raises:
            InvalidError: ``EINVAL``: as for :meth:`alloc`.
            NoSpaceError: ``ENOSPC``: the address space is exhausted.
            NotSupportedError: ``EOPNOTSUPP``: the driver cannot reserve alone (one-to-one
                contexts).
        """
        size = page_align(size, "reserve")
        flags = check_flags(flags, "reserve")
        await self._start_creating("reserve")
        try:
            return await self._new_res(size, flags)
        finally:
            self._stop_creating()

    async def map(self, phys: Phys, flags: int = 0) -> Res:
        """``vcm_map``: reserve address space and bind *phys* to it.

        Uses the driver's own ``map`` if it has one, else reserve + bind. If cancelled, nothing
        was reserved or bound.

        Raises:
            InvalidError: ``EINVAL``: *phys* is not a live phys, bad flags, or as for :meth:`alloc`.
            NoSpaceError: ``ENOSPC``: the address space is exhausted.
            BusyError: ``EBUSY``: (one-to-one) the phys is mapped already.
            NotSupportedError: ``EOPNOTSUPP``: the driver cannot map this phys.
        """
        _check_phys_arg(phys, "map")
        flags = check_flags(flags, "map")
        await self._start_creating("map")
        try:
            phys._check_usable("map")
            return await self._map(phys, flags)
        finally:
            self._stop_creating()

    async def make_binding(self, size: int, alloc_flags: int = 0, res_flags: int = 0) -> Res:
        """``vcm_make_binding``: allocate, reserve and bind in one call; returns the reservation.

        Works on every kind of context, one-to-one included; ``res.phys`` is the memory.
        Undo with :meth:`Res.destroy_binding`. If cancelled or failed, nothing is left.

        Raises:
            InvalidError: ``EINVAL``: as for :meth:`alloc`.
            NoMemoryError: ``ENOMEM``: physical memory is exhausted.
            NoSpaceError: ``ENOSPC``: the address space is exhausted.
            NotSupportedError: ``EOPNOTSUPP``: the driver can neither allocate nor reserve.
        """
        size = page_align(size, "make_binding")
        alloc_flags = check_flags(alloc_flags, "make_binding")
        res_flags = check_flags(res_flags, "make_binding")
        await self._start_creating("make_binding")
        try:
            ops = self._ops
            if ops.map is not None and ops.alloc is None:
                phys = await self._new_phys(size, alloc_flags)
                try:
                    return await self._map(phys, res_flags)
                except BaseException:
                    with _shielded():
                        await phys.free()
                    raise
            if ops.alloc is not None:
                phys, res = await self._new_pair(size, alloc_flags, res_flags)
            else:
                res = await self._new_res(size, res_flags)
                try:
                    phys = await self._new_phys(size, alloc_flags)
                except BaseException:
                    with _shielded():
                        await res.unreserve()
                    raise
            try:
                await res.bind(phys)
            except BaseException:
                with _shielded():
                    await res.unreserve()
                    await phys.free()
                raise
            return res
        finally:
            self._stop_creating()

    async def _map(self, phys: Phys, flags: int) -> Res:
        driver_map = self._ops.map
        if driver_map is None:
            res = await self._new_res(phys.size, flags)
            try:
                await res.bind(phys)
            except BaseException:
                with _shielded():
                    await res.unreserve()
                raise
            return res
        async with self._mutex:
            self._check_not_destroyed("map")
            await phys._claim(self, "map")
            try:
                await sync_point("driver.map", self)
                res = self._adopt_res(await driver_map(self, phys, flags), phys.size, "map")
            except BaseException:
                with _shielded():
                    await phys._unclaim()
                raise
            res._phys = phys
            self._bound += 1
            return res

    async def _new_phys(self, size: int, flags: int) -> Phys:
        ops = self._ops
        if ops.alloc is not None:
            phys, _ = await self._call_alloc(size, flags, None)
        elif ops.phys is not None:
            await sync_point("driver.phys", self)
            phys = await ops.phys(self, size, flags)
        else:
            raise NotSupportedError(f"alloc: driver of {self.name} cannot allocate memory")
        return self._adopt_phys(phys, size, "alloc")

    async def _new_res(self, size: int, flags: int) -> Res:
        ops = self._ops
        if ops.alloc is not None:
            _, res = await self._call_alloc(size, None, flags)
        elif ops.res is not None:
            await sync_point("driver.res", self)
            res = await ops.res(self, size, flags)
        else:
            raise NotSupportedError(f"reserve: driver of {self.name} cannot reserve address space")
        return self._adopt_res(res, size, "reserve")

    async def _new_pair(self, size: int, alloc_flags: int, res_flags: int) -> tuple[Phys, Res]:
        phys, res = await self._call_alloc(size, alloc_flags, res_flags)
        return self._adopt_phys(phys, size, "alloc"), self._adopt_res(res, size, "reserve")

    async def _call_alloc(
        self, size: int, alloc_flags: int | None, res_flags: int | None
    ) -> tuple[Any, Any]:
        alloc = self._ops.alloc
        if alloc is None:  # pragma: no cover - callers check
            raise NotSupportedError(f"alloc: driver of {self.name} has no alloc operation")
        await sync_point("driver.alloc", self)
        return await alloc(self, size, alloc_flags, res_flags)

    # A driver must hand over a new object: one already live (here or in another context)
    # would be registered, and later freed or unreserved, twice.

    def _adopt_phys(self, phys: object, size: int, what: str) -> Phys:
        if (
            not isinstance(phys, Phys)
            or phys.size < size
            or phys.freed
            or phys.vcm is not None
            or phys.bindings
        ):
            raise InvalidError(f"{what}: driver of {self.name} returned {phys!r} for {size:#x}")
        if phys._lock is not None:  # else it will be made belonging to this context's loop
            phys._lock.check_loop(what)
        phys._vcm = self
        self._physes[phys] = None
        return phys

    def _adopt_res(self, res: object, size: int, what: str) -> Res:
        if (
            not isinstance(res, Res)
            or res.vcm is not self
            or res.res_size < size
            or res.unreserved
            or res in self._reservations
            or res.phys is not None
        ):
            raise InvalidError(f"{what}: driver of {self.name} returned {res!r} for {size:#x}")
        self._reservations[res] = None
        return res

    # -- activation --------------------------------------------------------------------------

    async def activate(self) -> None:
        """``vcm_activate``: make the bindings real in the hardware; nests.

        Returns only once the context is active in the hardware: a second activator waits for
        the first one's driver call. If the driver fails or the caller is cancelled, the count
        is as before and no partial hardware state is left.

        Raises:
            InvalidError: ``EINVAL``: the context is destroyed, or used from an event loop other
                than its own.
            VcmError: the driver's activate failed (its own errno): the count and the hardware are
                as before.
        """
        async with self._mutex:
            self._check_not_destroyed("activate")
            activate = self._ops.activate
            if self._activations.value == 0 and activate is not None:
                await sync_point("driver.activate", self)
                await activate(self)
            with _shielded():  # the hardware is active now: the count must follow
                await self._activations.inc()

    async def deactivate(self) -> None:
        """``vcm_deactivate``: undo one :meth:`activate`; the last one deactivates the hardware.

        Without a matching activate: warn and do nothing (the count never goes below zero).
        If the driver's deactivate fails, nothing changed (the count stays, the hardware stays
        active). If cancelled while waiting for the context's mutex, nothing changed (an
        ordinary operation, unlike the exit of :meth:`activated`); once it holds the mutex, it
        completes.

        Raises:
            InvalidError: ``EINVAL``: the context is destroyed, or used from an event loop other
                than its own.
            VcmError: the driver's deactivate failed (its own errno): the context stays activated.
        """
        async with self._mutex:
            self._check_not_destroyed("deactivate")
            with _shielded():
                if self._activations.value == 0:
                    _warn(f"deactivate: {self.name} is not activated")
                    return
                deactivate = self._ops.deactivate
                if self._activations.value == 1 and deactivate is not None:
                    await sync_point("driver.deactivate", self)
                    await deactivate(self)
                await self._activations.dec()

    def activated(self) -> AbstractAsyncContextManager[Self]:
        """``async with vcm.activated():`` activate for the duration of the block.

        Entering is :meth:`activate` (cancelled or failed: no effect, the block does not run).
        Leaving is :meth:`deactivate`, shielded: the count returns to its value before the
        block even when the block was cancelled, or is cancelled while the exit waits for the
        context's mutex; the cancellation is delivered after. If the driver's deactivate
        fails at the exit, its error propagates from the ``async with`` (with the block's own
        error, if any, as its ``__context__``) and the context stays activated, exactly as a
        failed :meth:`deactivate` leaves it: the count as inside the block, the hardware
        active; calling :meth:`deactivate` again retries. If the block itself deactivated
        once too often, the exit warns, as :meth:`deactivate` does.
        """
        return _Activation(self)


_V = TypeVar("_V", bound=Vcm)


class _Activation(Generic[_V]):
    """What :meth:`Vcm.activated` returns (a class, not a generator: its frames stay in avcm,
    so a warning of the exit is attributed to the user's ``async with`` line)."""

    __slots__ = ("_vcm",)

    def __init__(self, vcm: _V) -> None:
        self._vcm = vcm

    async def __aenter__(self) -> _V:
        await self._vcm.activate()
        return self._vcm

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _shielded():
            await self._vcm.deactivate()
        if exc is None:
            await anyio.lowlevel.checkpoint_if_cancelled()
