"""Kernel-vocabulary synchronisation: ``struct mutex`` and ``atomic_t`` on asyncio and trio.

All of avcm's locking goes through these two classes. Each has one place where a task may be
made to yield before it touches shared state: the *sync hook*. By default there is no hook and
the cost is the test of one module-level set. The race finder (``avcm.testing``) installs a hook
that names the step a task is in after the last sync point it passed; a test installs one to
inject a fault or a cancellation at a chosen point.

A mutex belongs to the event loop that first takes it (see :func:`current_loop`); taking it from
another loop, in another thread or of the other backend, is ``EINVAL``. A lock used from two
loops deadlocks or corrupts, silently; this makes it an error that names the rule.
"""

from __future__ import annotations

import sys
import weakref
from asyncio import AbstractEventLoop, _get_running_loop
from asyncio import current_task as _asyncio_current_task
from asyncio import sleep as _asyncio_sleep
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio

from ._errors import InvalidError

__all__ = [
    "SETUP_SYNC_POINTS",
    "AtomicCounter",
    "Mutex",
    "MutexStatistics",
    "SyncHook",
    "current_loop",
    "sync_hook",
    "sync_point",
]


_trio_lowlevel: Any = None  # trio.lowlevel, once a trio run has imported it


def _trio() -> Any:
    global _trio_lowlevel
    if _trio_lowlevel is None:
        trio = sys.modules.get("trio")
        _trio_lowlevel = None if trio is None else trio.lowlevel
    return _trio_lowlevel


def _trio_run_and_task() -> tuple[object | None, object | None]:
    """The root task of the running trio run and the current task; ``None`` outside one."""
    lowlevel = _trio_lowlevel or _trio()
    if lowlevel is None:
        return None, None
    try:
        return lowlevel.current_root_task(), lowlevel.current_task()
    except RuntimeError:
        return None, None


def _current_task() -> object | None:
    """The running task (asyncio's or trio's), ``None`` outside both."""
    loop = _get_running_loop()
    if loop is not None:
        return _asyncio_current_task(loop)
    lowlevel = _trio_lowlevel or _trio()
    if lowlevel is None:
        return None
    try:
        task: object = lowlevel.current_task()
    except RuntimeError:
        return None
    return task


def current_loop() -> object | None:
    """The running event loop's identity: the asyncio loop, or the root task of the trio run;
    ``None`` outside both. Cheap (no exception on the asyncio path): it is on every lock."""
    loop = _get_running_loop()
    if loop is not None:
        return loop
    return _trio_run_and_task()[0]


SyncHook = Callable[[str, object], Awaitable[None]]
"""``await hook(point, obj)``: called at a sync point, before the shared state is touched.

*point* names the place (``"mutex.lock"``, ``"atomic.dec_and_test"``, ``"driver.bind"``...),
*obj* is the primitive or object concerned. The hook may yield. At a ``driver.*``
point (announced right before that driver call) it may also raise: the error reaches the
framework exactly as if the driver call had raised it, which is how a test injects a driver
fault anywhere (rule 8). At other points it must not raise anything but cancellation.
"""


class _Installed:
    """A hook as installed by one :func:`sync_hook` block, and the one installed around it."""

    __slots__ = ("__weakref__", "hook", "outer")

    def __init__(self, hook: SyncHook, outer: _Installed | None) -> None:
        self.hook = hook
        self.outer = outer


_sync_hook: ContextVar[_Installed | None] = ContextVar("avcm_sync_hook", default=None)

installed_hooks: set[weakref.ref[_Installed]] = set()
"""The hooks some context may still hold: empty, every sync point is a no-op that need not even
look the context variable up (a lookup per lock and atomic step is a measurable share of an
operation). A hook leaves the set when nothing refers to it any more: not when its block ends,
since a task spawned inside the block keeps it in its context after the block has ended.
``set.add`` and ``set.discard`` are atomic, so loops in other threads may install hooks too."""


@contextmanager
def sync_hook(hook: SyncHook) -> Iterator[None]:
    """Install *hook* for this task and the tasks it spawns while the block runs.

    Hooks nest: a hook installed around this block runs after *hook*, at every point. So the
    race finder's hook (which labels the step) composes with a test's hook (which may then
    inject a fault or cancel) installed outside it.
    """
    installed = _Installed(hook, _sync_hook.get())
    installed_hooks.add(weakref.ref(installed, installed_hooks.discard))
    token = _sync_hook.set(installed)
    del installed  # the context holds it now, and the contexts copied from it
    try:
        yield
    finally:
        _sync_hook.reset(token)


SETUP_SYNC_POINTS = frozenset(
    {
        "driver.alloc",
        "driver.res",
        "driver.phys",
        "driver.map",
        "driver.bind",
        "driver.activate",
        "driver.activate_res",
        "driver.activate_page",
        "driver.enable",
        "driver.o2o_alloc",
    }
)
"""The sync points avcm announces right before a driver call that sets something up: the core
operations, the MMU wrapper's hardware calls (activation of each reservation or page, enable)
and a one-to-one allocator's alloc. Their object is the reservation or the context concerned. A
hook that raises at one of them makes that driver call fail before the driver runs, which is
how the conformance suite and the stress harness inject faults into drivers they did not
write."""


async def sync_point(point: str, obj: object) -> None:
    """Announce a sync point: a named place, where an installed hook runs.

    Without an installed hook this does nothing and does not checkpoint; the race finder's
    hook does not checkpoint either (it switches tasks at checkpoints, as the event loop can).
    """
    if installed_hooks:
        installed = _sync_hook.get()
        while installed is not None:
            await installed.hook(point, obj)
            installed = installed.outer


@dataclass(frozen=True, slots=True)
class MutexStatistics:
    """A snapshot of a :class:`Mutex`."""

    name: str
    locked: bool
    tasks_waiting: int
    acquisitions: int
    contended: int


def _outside(what: str, mutex: Mutex) -> InvalidError:
    return InvalidError(f"{what}: {mutex.name} can only be taken by an asyncio or trio task")


class Mutex:
    """``struct mutex``: a fair, non-reentrant lock, one owner at a time.

    ``async with mutex:`` or ``await mutex.lock()`` / ``mutex.unlock()``. If cancelled while
    waiting, the mutex was not taken. Taking it is a checkpoint (trio's rule for async
    operations), unless *fast_acquire*: then an uncontended lock does not yield, for a mutex only
    ever taken inside an operation that checkpointed already (anyio's option of that name).
    Waiters take it in the order they came (the releasing task hands it to the first one).
    It belongs to the event loop that first takes it: taking it from another is ``EINVAL``;
    so is taking it again while holding it (it is not recursive) and releasing it from a task
    that does not hold it.
    """

    __slots__ = ("_acquisitions", "_contended", "_fast", "_home", "_owner", "_waiters", "name")

    def __init__(self, name: str = "mutex", *, fast_acquire: bool = False) -> None:
        self.name = name
        self._fast = fast_acquire
        self._owner: object | None = None  # the task holding it
        # (task, event) per waiting task, oldest first; made at the first contention
        self._waiters: deque[tuple[object, anyio.Event]] | None = None
        self._acquisitions = 0
        self._contended = 0
        self._home: object | None = None  # the event loop it belongs to, once used

    def check_loop(self, what: str) -> None:
        """Claim this mutex (and what it guards) for the running event loop, if unclaimed;
        ``EINVAL`` if it belongs to another one. Locking does this by itself."""
        loop = current_loop()
        if loop is None or loop is self._home:
            return
        if self._home is not None:
            raise InvalidError(
                f"{what}: {self.name} belongs to another event loop: an avcm context and its "
                "objects belong to the event loop that first used them, one loop (one thread, "
                "one backend) for their whole life"
            )
        self._home = loop

    def __repr__(self) -> str:
        state = "locked" if self._owner is not None else "unlocked"
        return f"<Mutex {self.name} {state}>"

    async def lock(self) -> None:
        """Take the mutex, waiting for it if another task holds it."""
        # The backend's own calls, not anyio's: anyio's lock costs two task lookups, a
        # cancel-scope walk and a shielded scope around its yield, a third of an operation.
        running = _get_running_loop()
        loop: object | None
        task: object | None
        if running is not None:
            loop, task = running, _asyncio_current_task(running)
        else:
            loop, task = _trio_run_and_task()
        if task is None:
            raise _outside("lock", self)
        if loop is not self._home:
            self.check_loop("lock")
        if installed_hooks:
            await sync_point("mutex.lock", self)
        if self._owner is None and self._fast:
            await anyio.lowlevel.checkpoint_if_cancelled()
        if self._owner is None:
            # Free: taken now, then the checkpoint (as trio's lock does); cancelled there, it
            # is given back, so it was not taken.
            self._owner = task
            if not self._fast:
                try:
                    if isinstance(loop, AbstractEventLoop):
                        await _asyncio_sleep(0)  # what anyio's checkpoint is on asyncio
                    else:
                        await _trio_lowlevel.checkpoint()
                except BaseException:
                    self.unlock()
                    raise
            self._acquisitions += 1
            return
        if self._owner is task:
            raise InvalidError(f"lock: {self.name} is held by this task already (not recursive)")
        await self._wait(task)

    async def _wait(self, task: object) -> None:
        self._contended += 1
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
        entry = (task, anyio.Event())
        waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if self._owner is task:
                self.unlock()  # handed over, then cancelled before it could run: pass it on
            else:
                waiters.remove(entry)
            raise
        self._acquisitions += 1

    def trylock(self) -> bool:
        """Take the mutex if it is free; return whether it was taken. Never yields."""
        if current_loop() is not self._home:
            self.check_loop("trylock")
        if self._owner is not None:
            return False  # also for its own holder: a mutex is not recursive
        task = _current_task()
        if task is None:
            raise _outside("trylock", self)
        self._owner = task
        self._acquisitions += 1
        return True

    def unlock(self) -> None:
        """Release the mutex; only its holder may call this (else ``EINVAL``)."""
        if self._owner is not _current_task() or self._owner is None:
            raise InvalidError(f"unlock: {self.name} is not held by this task")
        waiters = self._waiters
        if waiters:
            self._owner, event = waiters.popleft()
            event.set()
        else:
            self._owner = None

    def is_locked(self) -> bool:
        return self._owner is not None

    def statistics(self) -> MutexStatistics:
        return MutexStatistics(
            name=self.name,
            locked=self._owner is not None,
            tasks_waiting=len(self._waiters or ()),
            acquisitions=self._acquisitions,
            contended=self._contended,
        )

    __aenter__ = lock  # not a coroutine calling it: one frame less on every acquisition

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unlock()


class AtomicCounter:
    """``atomic_t``: an integer whose read-modify-write operations are indivisible.

    Each operation is one step: the sync hook runs first (a scheduler may switch tasks there),
    then the operation reads and writes with no yield in between. Sequences of operations are
    not atomic together, exactly as in the kernel; that is what the mutex is for.
    :attr:`value` reads without a sync point.
    """

    __slots__ = ("_value", "name")

    def __init__(self, value: int = 0, name: str = "atomic") -> None:
        self.name = name
        self._value = value

    def __repr__(self) -> str:
        return f"<AtomicCounter {self.name}={self._value}>"

    @property
    def value(self) -> int:
        return self._value

    async def read(self) -> int:
        await sync_point("atomic.read", self)
        return self._value

    async def set(self, value: int) -> None:
        await sync_point("atomic.set", self)
        self._value = value

    async def add_return(self, delta: int) -> int:
        """Add *delta* and return the new value (``atomic_add_return``)."""
        await sync_point("atomic.add_return", self)
        self._value += delta
        return self._value

    async def inc(self) -> None:
        await self.add_return(1)

    async def dec(self) -> None:
        await self.add_return(-1)

    async def inc_return(self) -> int:
        return await self.add_return(1)

    async def dec_and_test(self) -> bool:
        """Decrement; return whether the result is zero (``atomic_dec_and_test``)."""
        return await self.add_return(-1) == 0

    async def add_unless(self, delta: int, unless: int) -> bool:
        """Add *delta* unless the value is *unless*; return whether it added."""
        await sync_point("atomic.add_unless", self)
        if self._value == unless:
            return False
        self._value += delta
        return True
