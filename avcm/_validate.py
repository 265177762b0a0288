"""Argument validation shared by every public entry point: bad input gets EINVAL, nothing else."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable

from typing_extensions import TypeIs

from ._errors import InvalidError
from ._memory import ADDRESS_LIMIT, PAGE_SIZE

__all__ = [
    "MAX_ORDER",
    "check_aligned",
    "check_coroutine_function",
    "check_span",
    "check_flags",
    "check_int",
    "check_orders",
    "is_int",
    "page_align",
    "quote",
]

MAX_ORDER = 30
"""The largest page order avcm accepts anywhere (4 TiB pages): a sanity bound, not a limit."""


def is_int(value: object) -> TypeIs[int]:
    # bool is an int subclass, but True is never a size.
    return isinstance(value, int) and not isinstance(value, bool)


def quote(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about *limit* characters: messages quote bad input, never all
    of a hostile one (a 10 MB string, a number of 5,000 digits)."""
    try:
        text = (
            repr(value)
            if not is_int(value) or value.bit_length() < 256
            else f"<int of {value.bit_length()} bits>"
        )
    except Exception:  # a hostile __repr__ must not replace the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    """Return *value* if it is an int in ``low..high`` (no upper bound if None); else EINVAL."""
    if not is_int(value) or value < low:
        raise InvalidError(f"{what} must be an int >= {low}, not {quote(value)}")
    if high is not None and value > high:
        raise InvalidError(f"{what} must be <= {high}, not {quote(value)}")
    return value


def page_align(size: object, what: str) -> int:
    """Return *size* rounded up to a page; EINVAL unless it is a positive int."""
    if not is_int(size):
        raise InvalidError(f"{what}: size must be an int, not {type(size).__name__}")
    if size <= 0:
        raise InvalidError(f"{what}: size must be positive, got {size}")
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def check_aligned(value: object, what: str, *, positive: bool = False) -> int:
    """Return *value* if it is a page-aligned non-negative int (positive if asked)."""
    if not is_int(value):
        raise InvalidError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise InvalidError(f"{what} must be {kind}, got {value:#x}")
    if value & (PAGE_SIZE - 1):
        raise InvalidError(f"{what} {value:#x} is not aligned to PAGE_SIZE ({PAGE_SIZE:#x})")
    return value


def check_span(start: int, size: int, what: str) -> None:
    """EINVAL unless ``start..start+size`` fits in 64-bit addresses (both already checked)."""
    if start + size > ADDRESS_LIMIT:
        raise InvalidError(f"{what} {start:#x}+{size:#x} does not fit in 64-bit addresses")


def check_flags(flags: object, what: str) -> int:
    if not is_int(flags):
        raise InvalidError(f"{what}: flags must be an int, not {type(flags).__name__}")
    if flags < 0:
        raise InvalidError(f"{what}: flags must be non-negative, got {flags}")
    return flags


def check_coroutine_function(op: object, what: str) -> None:
    """EINVAL unless calling *op* makes a coroutine: what every driver operation must be.

    Accepted: an ``async def`` function or method (bound or not), a :func:`functools.partial`
    of one, and an object whose ``__call__`` is an ``async def`` method. Refused: a plain
    ``def``, even one that returns an awaitable, since avcm cannot tell that before calling
    it, and a driver that fails at its first use instead of when it is plugged in is worse.
    """
    # A class is never one, though its __call__ may be an async method of its instances.
    call = None if isinstance(op, type) else getattr(op, "__call__", None)  # noqa: B004
    if not (inspect.iscoroutinefunction(op) or inspect.iscoroutinefunction(call)):
        raise InvalidError(f"{what} {quote(op)} is not a coroutine function (async def)")


def check_orders(orders: object, what: str = "orders") -> tuple[int, ...]:
    """Validate page orders: ints, strictly descending, ending with 0 (as ``{8, 4, 0}``)."""
    if isinstance(orders, (str, bytes)) or not isinstance(orders, Iterable):
        raise InvalidError(f"{what} must be a sequence of ints, not {type(orders).__name__}")
    result = tuple(orders)
    if not result:
        raise InvalidError(f"{what} must not be empty")
    for order in result:
        if not is_int(order) or not 0 <= order <= MAX_ORDER:
            raise InvalidError(f"{what} {result!r}: {order!r} is not an order in 0..{MAX_ORDER}")
    if any(a <= b for a, b in itertools.pairwise(result)):
        raise InvalidError(f"{what} {result!r} must be strictly descending")
    if result[-1] != 0:
        raise InvalidError(f"{what} {result!r} must end with 0 (the {PAGE_SIZE >> 10} KiB page)")
    return result
