"""What one run of an exploration leaves running, waited for and then cancelled.

Every run of an exploration shares one event loop. Work a run's code started and nobody
waited for (a driver's background task, a lazy power-down timer, a loop callback that
re-arms itself) would act in the next run, between that run's steps, which its replay in
a fresh process does not have: the replay would diverge. So after each run this waits for
that work, virtual time passing, and cancels what is still left.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import sniffio

from .. import InvalidError
from ._clock import VirtualTimeEventLoop, _trio_run_module, others_ready, timers_left

_LEFTOVER_WAIT = 1.0  # (virtual) seconds what a run left is given to end
# at most this many looks at it meanwhile, one after each of its timers (a driver's poller
# that ticks for ever would otherwise take a step every few microseconds of it)
_LEFTOVER_LOOKS = 1_000
_LEFTOVER_THREAD_WAIT = 10.0  # seconds of real time: threads a run left, given to end
_LEFTOVER_ROUNDS = 4  # times what is left is waited for and cancelled
# looks in a row at tasks that stayed ready to run after which they are not waited for (each
# wait of virtual time costs a loop iteration a microsecond while a task is ready)
_LEFTOVER_BUSY_LOOKS = 8


class Leftovers:
    """The work a run's code starts on the running event loop, to be outlasted
    (:meth:`outlast`) once the run ends: the tasks not running before it, and

    - on trio, a cancel scope around each system task it spawns (a driver's usual way to
      start background work, ``trio.lowlevel.spawn_system_task``): trio cancels system tasks
      only all together, when the loop ends;
    - on asyncio, each timer callback (``loop.call_later``, ``call_at``) armed by a callback
      or by a task that has ended by the time of the look: no task waits for it, and one
      that re-arms itself ticks for ever; and the functions ``run_in_executor`` (asyncio's
      own ``to_thread``) handed threads: once the call is cancelled asyncio waits for them
      no more, and what they hand in when they return comes in later.

    Use :meth:`in_reach` around the run's code and the outlasting both: what the leftover
    work spawns or arms while it is waited for is in reach too.
    """

    def __init__(self) -> None:
        self._trio = sniffio.current_async_library() == "trio"
        self._before = self._tasks()
        self._scopes: dict[Any, anyio.CancelScope] = {}  # trio: system task -> its scope
        self._timers: list[tuple[Any, Any]] = []  # asyncio: (timer handle, task arming it)

    @contextlib.contextmanager
    def in_reach(self) -> Iterator[None]:
        """While in this block, the system tasks spawned (trio) and the timers armed
        (asyncio) are kept, to be cancelled if left."""
        if self._trio:
            with self._spawns_in_reach():
                yield
            return
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def call_at_in_reach(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
            handle = call_at(when, callback, *args, context=context)
            self._timers.append((handle, asyncio.current_task(loop)))
            return handle

        # asyncio's call_later goes through the instance's call_at
        loop.call_at = call_at_in_reach  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            del loop.call_at

    @contextlib.contextmanager
    def _spawns_in_reach(self) -> Iterator[None]:
        from trio._core._run import Runner

        spawn = Runner.spawn_system_task
        scopes = self._scopes

        def spawn_in_reach(
            runner: Runner,
            async_fn: Callable[..., Awaitable[object]],
            *args: object,
            name: object = None,
            context: Any = None,
        ) -> Any:
            scope = anyio.CancelScope()

            async def reachable() -> None:
                with scope:
                    await async_fn(*args)

            task = spawn(
                runner, reachable, name=async_fn if name is None else name, context=context
            )
            scopes[task] = scope
            return task

        Runner.spawn_system_task = spawn_in_reach  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            Runner.spawn_system_task = spawn  # type: ignore[method-assign]

    async def outlast(self) -> None:
        """Wait for what the run left (tasks not running before it, timers armed and not
        waited for), virtual time passing, for up to ``_LEFTOVER_WAIT`` seconds (twice as
        long each round below) or ``_LEFTOVER_LOOKS`` looks, each once what was ready ran (a
        callback the run posted last) and after the next timer pending, or after a wait
        that doubles from a microsecond, or until tasks stayed ready to run at
        ``_LEFTOVER_BUSY_LOOKS`` looks in a row (a poll that waits for no time ends no
        sooner for waiting); then cancel what is still left (on trio, of the tasks, the
        system tasks in reach), and again so, up to ``_LEFTOVER_ROUNDS`` times, for what
        that left (a clean-up on cancel that waits, arms a timer or starts a task; a
        supervisor that restarts what was cancelled), and take out of the loop's queue the
        callbacks ready at the last of ``_LEFTOVER_BUSY_LOOKS`` looks in a row that each
        found some (``call_soon``, ``run_sync_soon``: handed back to the loop for ever); then, on
        asyncio, wait for the threads the run left at work (``_LEFTOVER_THREAD_WAIT``
        seconds of real time at most), and forget the timers cancelled (asyncio keeps them
        in its heap, where they would change which of two timers due together a later run
        wakes first). The looks depend on the loop's state only, so a replay takes the same
        ones.

        Raises :class:`~avcm.InvalidError` if tasks are still left after that: the runs
        could not be kept apart, and no verdict of the exploration would hold."""
        for attempt in range(_LEFTOVER_ROUNDS):
            tasks, timers, callbacks = await self._wait(_LEFTOVER_WAIT * 2**attempt)
            if not tasks and not timers and not callbacks:
                break
            for task in tasks:
                if not self._trio:
                    task.cancel()
                elif task in self._scopes:
                    self._scopes[task].cancel()
            for handle in timers:
                handle.cancel()
            self._drop_callbacks(callbacks)
        else:
            waited = _LEFTOVER_WAIT * 2**_LEFTOVER_ROUNDS
            tasks, timers, callbacks = await self._wait(waited)
            for handle in timers:
                handle.cancel()
            self._drop_callbacks(callbacks)
            if tasks:
                names = ", ".join(sorted({_name(task) for task in tasks}))
                raise InvalidError(
                    f"a run left tasks still running {waited * 2 - _LEFTOVER_WAIT:g} s of "
                    f"virtual time after it ended, cancelled {_LEFTOVER_ROUNDS} times "
                    f"meanwhile ({names}): every run of an exploration shares one event "
                    "loop, and they would act in later runs; make the scenario end what it "
                    "starts"
                )
        if not self._trio:
            loop = asyncio.get_running_loop()
            if isinstance(loop, VirtualTimeEventLoop):
                # asyncio leaves a cancelled to_thread's function running: what it hands the
                # loop when it returns would come in during a later run
                await loop.outlast_threads(_LEFTOVER_THREAD_WAIT)
                loop.forget_cancelled_timers()

    async def _wait(self, seconds: float) -> tuple[list[Any], list[Any], list[object]]:
        """Wait for what is left, as :meth:`outlast` says, for up to *seconds* of virtual
        time: the tasks and timers still left, and, if callbacks were ready at every one of
        ``_LEFTOVER_BUSY_LOOKS`` looks in a row (one that hands itself, or another, to the
        loop again as it runs, for ever), those ready at the last."""
        tasks = [task for task in self._tasks() - self._before if not _done(task)]
        timers = self._timers_left()
        if not (tasks or timers or others_ready()):
            return tasks, timers, []  # (the common case, at no cost: nothing left or ready)
        wait = 1e-6
        end = anyio.current_time() + seconds
        busy = 0
        steady = True  # callbacks were ready at each look of this busy streak
        for look in range(_LEFTOVER_LOOKS + 1):
            now = anyio.current_time()
            step = min(wait, max(0.0, end - now))
            # (once what is ready ran: a callback the run posted last, the tasks a timer woke,
            # which set their next timer then)
            later = [when for when in await timers_left([], within=step) if when > now]
            tasks = [task for task in self._tasks() - self._before if not _done(task)]
            timers = self._timers_left()
            callbacks = self._ready_callbacks()
            if not tasks and not timers and not callbacks:
                break
            now = anyio.current_time()
            # (a timer due already is as ready: a chain that goes through call_later(0))
            due = any(handle.when() <= now for handle in timers)
            busy = busy + 1 if others_ready() or due else 0
            steady = bool(callbacks or due) and (busy == 1 or steady)
            if busy == _LEFTOVER_BUSY_LOOKS:
                # (callbacks ready at every look are handed back as they run, for ever: each
                # look finds the ones it hands, which may be new functions each time, a new
                # lambda or partial, or two in turn: attack26)
                return tasks, timers, callbacks if steady else []
            if now >= end or look == _LEFTOVER_LOOKS:
                break
            if later:
                step = max(0.0, later[0] - now)
            await anyio.sleep(step)
            wait *= 2
        return tasks, timers, []

    def _ready_callbacks(self) -> list[object]:
        """The functions handed to the loop to call soon that are ready now, but a task's
        own steps (asyncio's ``call_soon``, trio's ``run_sync_soon``)."""
        if self._trio:
            entries = _trio_run_module().GLOBAL_RUN_CONTEXT.runner.entry_queue
            with entries.lock:
                jobs = [*entries.queue, *entries.idempotent_queue]
            return [function for function, _ in jobs]
        ready = asyncio.get_running_loop()._ready  # type: ignore[attr-defined]
        if type(ready) is not collections.deque:  # (the race finder's own run queue)
            return []
        return [
            handle._callback
            for handle in ready
            if not handle.cancelled()
            and not isinstance(getattr(handle._callback, "__self__", None), asyncio.Task)
        ]

    def _drop_callbacks(self, callbacks: list[object]) -> None:
        """Take the calls of *callbacks* out of the loop's queue of what to call soon: a
        callback that hands itself to the loop again at once for ever (no task: nothing to
        cancel) would run on in the next run."""
        if not callbacks:
            return
        # by identity (callbacks may compare equal otherwise; *callbacks* keeps them alive)
        dropped = {id(callback) for callback in callbacks}
        if self._trio:
            entries = _trio_run_module().GLOBAL_RUN_CONTEXT.runner.entry_queue
            with entries.lock:
                kept = [job for job in entries.queue if id(job[0]) not in dropped]
                entries.queue.clear()
                entries.queue.extend(kept)
                for job in [job for job in entries.idempotent_queue if id(job[0]) in dropped]:
                    del entries.idempotent_queue[job]
            return
        for handle in asyncio.get_running_loop()._ready:  # type: ignore[attr-defined]
            if id(handle._callback) in dropped:
                handle.cancel()

    def _timers_left(self) -> list[Any]:
        """The asyncio timers armed in reach, pending, that no task waits for: armed by a
        callback, or by a task that ended (the run's own: it returned), or by the task that
        outlasts (it armed them while it ran the run's code: its own waits are over when it
        looks). A timer of a task still running is that task's (a sleep, a deadline), waited
        for with it."""
        if self._trio:
            return []
        looking = asyncio.current_task()
        left = [
            (handle, task)
            for handle, task in self._timers
            if not handle.cancelled() and handle._scheduled  # (not yet called back)
        ]
        self._timers = left
        return [handle for handle, task in left if task is None or task is looking or task.done()]

    def _tasks(self) -> set[Any]:
        """Every task of the running event loop."""
        if self._trio:
            return set(_trio_run_module().GLOBAL_RUN_CONTEXT.runner.tasks)
        return set(asyncio.all_tasks())


def _name(task: Any) -> str:
    get_name = getattr(task, "get_name", None)  # asyncio's
    return str(get_name() if callable(get_name) else task.name)


def _done(task: Any) -> bool:
    done = getattr(task, "done", None)  # asyncio's
    if callable(done):
        return bool(done())
    return task.coro.cr_frame is None  # trio's: its coroutine ended
