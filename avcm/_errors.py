"""The exception hierarchy and the one warning class.

Every error avcm raises is a :class:`VcmError`: an :class:`OSError` whose ``errno`` is the
value the kernel's VCMM would have returned. Each errno the contract names has a subclass, so
callers can catch by meaning (``except avcm.BusyError``) or by number (``e.errno == EBUSY``).
"""

from __future__ import annotations

import contextlib
import errno as _errno
from typing import ClassVar

__all__ = [
    "AddressInUseError",
    "AlreadyBoundError",
    "BusyError",
    "InvalidError",
    "NoMemoryError",
    "NoSpaceError",
    "NotSupportedError",
    "VcmError",
    "VcmWarning",
    "errno_name",
    "note_undo_failed",
    "undo_failed",
    "undo_failures",
]


class VcmError(OSError):
    """An operation failed; ``errno`` says why, the message names the object and the reason.

    A :class:`VcmError` always means the operation had no effect: every object is exactly as it
    was before the call.
    """

    default_errno: ClassVar[int] = 0

    def __init__(self, *args: object) -> None:
        # ``VcmError(EINVAL, "msg")`` and ``InvalidError("msg")`` both work.
        if len(args) == 1 and self.default_errno:
            args = (self.default_errno, args[0])
        if len(args) == 2 and isinstance(args[0], int):
            super().__init__(args[0], str(args[1]))
        else:
            super().__init__(*args)

    def __str__(self) -> str:
        if self.errno is None:
            # a subclass with no errno of its own, raised with only a message (a driver's
            # ``class Fault(VcmError)``): its message, as OSError shows it, not "None"
            return super().__str__()
        return f"[{errno_name(self.errno)}] {self.strerror}"


class InvalidError(VcmError):
    """``EINVAL``: bad argument, or an object used after it was freed, unreserved or destroyed."""

    default_errno = _errno.EINVAL


class AlreadyBoundError(VcmError):
    """``EALREADY``: the phys is already bound to this reservation."""

    default_errno = _errno.EALREADY


class AddressInUseError(VcmError):
    """``EADDRINUSE``: another phys is bound to this reservation."""

    default_errno = _errno.EADDRINUSE


class NoSpaceError(VcmError):
    """``ENOSPC``: the address space is exhausted, or the phys is larger than the reservation."""

    default_errno = _errno.ENOSPC


class NotSupportedError(VcmError):
    """``EOPNOTSUPP``: the context's driver does not provide this operation."""

    default_errno = _errno.EOPNOTSUPP


class NoMemoryError(VcmError):
    """``ENOMEM``: physical memory is exhausted."""

    default_errno = _errno.ENOMEM


class BusyError(VcmError):
    """``EBUSY``: the object is in use (a bound phys freed, a one-to-one phys mapped twice)."""

    default_errno = _errno.EBUSY


def errno_name(code: int) -> str:
    """``"EBUSY"`` for ``errno.EBUSY``; EOPNOTSUPP, not Linux's alias ENOTSUP (the kernel's)."""
    if code == _errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return _errno.errorcode.get(code, f"errno {code}")


class VcmWarning(UserWarning):
    """The kernel's ``WARN_ON`` cases that go on working.

    Unbind of an unbound reservation, deactivate without activate, unreserve of a bound
    reservation, destroy while activated or with live objects: avcm warns with this class,
    does the documented repair and keeps every counter right.
    """


_UNDO_FAILED = "_avcm_undo_failed"
_undo_failures = 0


def note_undo_failed(error: BaseException, note: str) -> None:
    """Add *note* to *error*, an operation's failure (or cancellation) whose undo failed too,
    and mark it so: :func:`undo_failed` is then true of it, and :func:`undo_failures` counts
    it."""
    global _undo_failures
    _undo_failures += 1
    error.add_note(note)
    with contextlib.suppress(AttributeError):  # an exception without a __dict__: the note
        setattr(error, _UNDO_FAILED, True)


def carry_undo_failed(error: BaseException, later: BaseException, what: str) -> None:
    """Mark *error*, raised for a teardown of several steps, as :func:`undo_failed` when the
    failure of a later step of it (*later*, noted on *error* only) is: the caller must learn
    that the hardware may be left half done from the error it gets. Counted once, at *later*."""
    if not undo_failed(later) or undo_failed(error):
        return
    notes = "; ".join(getattr(later, "__notes__", ()))
    error.add_note(f"{what}: undoing {later!r} failed too ({notes})")
    with contextlib.suppress(AttributeError):
        setattr(error, _UNDO_FAILED, True)


def undo_failed(error: BaseException) -> bool:
    """Whether avcm's undo of the failed (or cancelled) operation that raised *error* failed
    too: a teardown call the MMU wrapper made to undo what it had done (the reservations or
    pages it had mapped or unmapped, the switch-on). The contract's partial effects say no
    framework can contain that: the hardware may be left half done, and what it shows can no
    longer be held to the model."""
    return bool(getattr(error, _UNDO_FAILED, False))


def undo_failures() -> int:
    """How many undoes failed so (:func:`undo_failed`) in this process until now: compare a
    count before and after some code to know whether one did in it, also where the error was
    a cancellation that a cancel scope absorbed."""
    return _undo_failures
