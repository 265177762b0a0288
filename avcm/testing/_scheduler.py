"""The controlled scheduler: tasks run one at a time, from one sync point to the next.

A task under control parks at every sync point (avcm's mutex and atomic counter, every driver
call, every simulated latency sleep: whatever calls :func:`avcm.lowlevel.sync_point`). The
controller waits until every task has either parked, finished or blocked, asks the chooser
which parked task goes next, lets exactly that one go, and repeats. The sequence of choices is
the whole schedule: the same choices give the same run.

A task parked at a mutex that another task holds is not offered to the chooser (it could only
block). Everything else a task waits on (a latency sleep, an event) is covered by waiting for
quiescence; the clock, if it is a virtual one, jumps only when every task waits.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import sniffio
import trio.abc
import trio.lowlevel

from .. import InvalidError
from ..lowlevel import Mutex, sync_hook
from ._errors import DeadlockError, RunawayError, StepBudgetError
from ._strategies import Chooser
from ._timeline import Step, TaskOutcome, Timeline

__all__ = ["Run"]

# Frames of these modules are the machinery, not the operation a step belongs to.
_MACHINERY = ("avcm.testing", "avcm._sync", "anyio", "trio", "asyncio", "contextlib")


def _operation(frame: FrameType | None) -> str:
    """The operation a parked task is in: the outermost function on its stack from another
    module than the task's own code (``Res.bind``, a port's ``SeedRes.bind``), else the
    innermost function of the task's own code."""
    frames: list[tuple[str, str]] = []  # (module, qualname), innermost first
    while frame is not None:
        code = frame.f_code
        if code is _run_task_code:
            break
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(_MACHINERY) and code.co_name != "<lambda>":
            # "outer.<locals>.inner" reads better as "inner"
            frames.append((module, code.co_qualname.rsplit("<locals>.", 1)[-1]))
        frame = frame.f_back
    if not frames:
        return "?"
    own = frames[-1][0]
    for module, qualname in reversed(frames):
        if module != own:
            return qualname
    return frames[0][1]


class _Task:
    __slots__ = ("done", "event", "index", "name", "obj", "operation", "parked", "point")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.parked = False
        self.done = False
        self.point = "task.start"
        self.operation = ""
        self.obj: object = None
        self.event: anyio.Event | None = None

    def enabled(self) -> bool:
        if not self.parked:
            return False
        # a task about to take a mutex that is held could only block: not a choice
        return not (isinstance(self.obj, Mutex) and self.obj.is_locked())


class Run:
    """One controlled run of a scenario: ``await run.concurrently(...)`` runs tasks under
    the scheduler. Made by :func:`explore`, :func:`replay` and friends; scenarios receive it.
    """

    def __init__(
        self,
        chooser: Chooser,
        *,
        max_steps: int = 10_000,
        idle_timeout: float | None = None,
        runaway_steps: int = 200_000,
    ) -> None:
        self._chooser = chooser
        self.max_steps = max_steps
        self.idle_timeout = idle_timeout
        self.runaway_steps = runaway_steps
        self._tasks: list[_Task] = []
        self._steps: list[Step] = []
        self._outcomes: list[TaskOutcome] = []
        self._positions: list[int] = []  # position chosen at each step with a choice
        self._preemptions = 0
        self._changed = anyio.Event()
        self._aborting = False
        self._last: _Task | None = None
        self._start_time = anyio.current_time()

    # -- what the run did -------------------------------------------------------------------

    @property
    def steps(self) -> int:
        return len(self._steps)

    @property
    def decisions(self) -> tuple[int, ...]:
        """The task chosen at each step: what a replay token records."""
        return tuple(step.task for step in self._steps)

    @property
    def preemptions(self) -> int:
        """Steps that let another task go while the one that ran last could go on."""
        return self._preemptions

    @property
    def positions(self) -> tuple[int, ...]:
        """The position chosen at each step that had a choice: what shrinking works on."""
        return tuple(self._positions)

    def trail(self) -> list[str]:
        """``task:point`` of every step, for the replay digest."""
        return [f"{step.task}:{step.point}" for step in self._steps]

    def timeline(self) -> Timeline:
        return Timeline(
            tasks=tuple(task.name for task in self._tasks),
            steps=tuple(self._steps),
            outcomes=tuple(self._outcomes),
            preemptions=self._preemptions,
        )

    # -- running tasks ----------------------------------------------------------------------

    async def concurrently(
        self, *functions: Callable[[], Awaitable[Any]], names: Sequence[str] | None = None
    ) -> list[TaskOutcome]:
        """Run each of *functions* as a task under the scheduler; return how each ended.

        A task's exception (other than cancellation of the whole run) is its outcome, not
        raised here: the scenario decides what the contract allows. Tasks start parked, so
        the first choice is who starts.
        """
        if names is not None and len(names) != len(functions):
            raise InvalidError(f"concurrently: {len(functions)} functions but {len(names)} names")
        if _controlled.get():
            raise InvalidError(
                "concurrently: called from a task it controls; run every racing task from "
                "the scenario itself"
            )
        if not functions:
            raise InvalidError("concurrently: no function to run")
        tasks: list[_Task] = []
        for offset, function in enumerate(functions):
            name = names[offset] if names is not None else getattr(function, "__name__", "")
            if not name or name == "<lambda>":
                name = f"task {len(self._tasks)}"
            task = _Task(len(self._tasks), name)
            self._tasks.append(task)
            tasks.append(task)
        outcomes: dict[int, TaskOutcome] = {}
        failure: BaseException | None = None
        async with anyio.create_task_group() as group:
            for task, function in zip(tasks, functions, strict=True):
                group.start_soon(self._run_task, task, function, outcomes)
            try:
                await self._control(tasks)
            except BaseException as error:
                # A failure found, the chooser giving up (Hypothesis out of data), or the
                # controller cancelled: the tasks must not stay parked, least of all in a
                # shielded teardown, or the task group would wait for them forever.
                failure = error
                self._abort(tasks)
                group.cancel_scope.cancel()
        ordered = [outcomes[task.index] for task in tasks if task.index in outcomes]
        self._outcomes.extend(ordered)
        if failure is not None:
            raise failure
        return ordered

    async def _run_task(
        self,
        task: _Task,
        function: Callable[[], Awaitable[Any]],
        outcomes: dict[int, TaskOutcome],
    ) -> None:
        owner = anyio.get_current_task().id

        async def hook(point: str, obj: object) -> None:
            # Tasks this task spawns inherit the hook; they are not under control (they run
            # as the event loop schedules them) and must not park in their parent's place.
            if anyio.get_current_task().id == owner:
                await self._park(task, point, obj)

        # This task's own context: its children inherit the hook. A hook installed around
        # the run (a test injecting faults) runs after this one, once the task is chosen.
        with sync_hook(hook):
            _controlled.set(True)
            try:
                await self._park(task, "task.start", None)
                try:
                    value = await function()
                except Exception as error:
                    outcomes[task.index] = TaskOutcome(task.index, task.name, error=error)
                else:
                    outcomes[task.index] = TaskOutcome(task.index, task.name, value=value)
            finally:
                task.done = True
                self._changed.set()

    async def _park(self, task: _Task, point: str, obj: object) -> None:
        if self._aborting:
            # running free to its end; a checkpoint, so that the cancellation reaches it
            await anyio.lowlevel.checkpoint()
            return
        task.point = point
        task.obj = obj
        task.operation = _operation(sys._getframe(1)) if point != "task.start" else ""
        task.event = event = anyio.Event()
        task.parked = True
        self._changed.set()
        try:
            await event.wait()
        finally:
            task.parked = False

    def _abort(self, tasks: Sequence[_Task]) -> None:
        """Let every task run free, so that shielded teardown can finish while cancelled."""
        self._aborting = True
        for task in tasks:
            if task.event is not None:
                task.event.set()

    # -- the controller ---------------------------------------------------------------------

    async def _control(self, tasks: Sequence[_Task]) -> None:
        quiescent = _quiescence(self.runaway_steps)
        if self.idle_timeout is None:
            self.idle_timeout = 3600.0 if _virtual_clock() else 1.0
        stuck: set[_Task] = set()  # blocked, and did not move when waited for
        waited = 0  # steps of time passing in a row
        while True:
            await quiescent.wait()
            choices = [task for task in tasks if task.enabled()]
            if not choices or waited < _FAIR_WAITS:
                # Blocked tasks are choices too (choosing one lets time pass); but not forever
                # while others could go: a task that polls would otherwise starve the one it
                # waits for under a strategy that keeps preferring it (PCT).
                choices += [
                    task for task in tasks if not (task.done or task.parked or task in stuck)
                ]
                choices.sort(key=lambda task: task.index)
            if not choices:
                if all(task.done for task in tasks):
                    return
                if not await self._let_time_pass():
                    raise DeadlockError(self._describe_stuck(tasks))
                stuck.clear()
                continue
            last = self._last
            continuing = last is not None and last in choices
            if continuing:
                assert last is not None
                choices.remove(last)
                choices.insert(0, last)
            if len(self._steps) >= self.max_steps:
                raise StepBudgetError(
                    f"the run took more than {self.max_steps} steps (a livelock, or a bigger "
                    f"scenario than max_steps allows)"
                )
            position = self._chooser.choose(
                len(self._steps), [task.index for task in choices], continuing
            )
            if len(choices) > 1:
                self._positions.append(position)
            if continuing and position:
                self._preemptions += 1
            chosen = choices[position]
            self._last = chosen
            if not chosen.parked:
                # Blocked outside a sync point (a driver's own sleep, an event): choosing it
                # means letting time pass until it, or anything, moves. Choosing another task
                # instead is what overlaps the sleep with other work.
                self._record(chosen, "blocked", "")
                waited += 1
                if await self._let_time_pass():
                    stuck.clear()
                else:
                    stuck.add(chosen)
                continue
            self._record(chosen, chosen.point, chosen.operation)
            waited = 0
            event = chosen.event
            assert event is not None
            chosen.parked = False
            event.set()

    def _record(self, task: _Task, point: str, operation: str) -> None:
        self._steps.append(
            Step(
                index=len(self._steps),
                task=task.index,
                point=point,
                operation=operation,
                time=round(anyio.current_time() - self._start_time, 9),  # to the ns: runs compare
            )
        )

    async def _let_time_pass(self) -> bool:
        """One step of time: up to the next timer anyone waits for (a driver's sleep, a poll),
        so a task that polls moves one poll per step instead of running on unwatched. Without
        a timer, wait for a task to park or end. False if nothing could move."""
        deadline = _next_deadline()
        if deadline is not None:
            await anyio.sleep_until(deadline)
            return True
        return await self._wait_for_change()

    async def _wait_for_change(self) -> bool:
        """Wait, letting a virtual clock jump, until a task parks or ends; False if nothing
        happens within ``idle_timeout``."""
        self._changed = anyio.Event()
        assert self.idle_timeout is not None
        with anyio.move_on_after(self.idle_timeout):
            await self._changed.wait()
            return True
        return False

    def _describe_stuck(self, tasks: Sequence[_Task]) -> str:
        lines = ["deadlock: every task is blocked and no timer is pending"]
        for task in tasks:
            if task.done:
                continue
            if task.parked:
                lines.append(
                    f"  task {task.index} ({task.name}) waits at {task.point} {task.obj!r}"
                )
            else:
                lines.append(f"  task {task.index} ({task.name}) is blocked outside a sync point")
        return "\n".join(lines)


_run_task_code = Run._run_task.__code__
_FAIR_WAITS = 8  # steps of time in a row while a parked task could go, at most
_controlled: ContextVar[bool] = ContextVar("avcm_testing_controlled", default=False)


class _Quiescence:
    """Waits until every other task is blocked; raises :class:`RunawayError` if some task
    keeps running for *budget* steps without blocking."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    async def wait(self) -> None:
        raise NotImplementedError


class _TrioQuiescence(_Quiescence):
    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        # trio.testing imports pytest: only when a controlled run starts, not with avcm.testing
        from trio.testing import wait_all_tasks_blocked

        self._wait_all_tasks_blocked = wait_all_tasks_blocked

    async def wait(self) -> None:
        counter = _StepCounter(self.budget)
        trio.lowlevel.add_instrument(counter)
        try:
            with anyio.CancelScope() as counter.scope:
                await self._wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(counter)
        if counter.scope.cancelled_caught:
            raise RunawayError(
                f"a task ran {self.budget} steps without reaching a sync point or blocking"
            )


class _StepCounter(trio.abc.Instrument):
    """A trio instrument that counts task steps and cancels a scope past a budget."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.left = budget
        self.scope = anyio.CancelScope()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.left -= 1
        if self.left == 0:
            self.scope.cancel()


class _AsyncioQuiescence(_Quiescence):
    async def wait(self) -> None:
        # anyio's wait_all_tasks_blocked polls every 0.1 s on asyncio; yielding until no other
        # task is runnable is as exact and thousands of times faster.
        import asyncio

        this = asyncio.current_task()
        for _ in range(self.budget):
            await asyncio.sleep(0)
            for task in asyncio.all_tasks():
                if task is this:
                    continue
                waiter = task._fut_waiter  # type: ignore[attr-defined]
                if waiter is None or waiter.done():
                    break
            else:
                return
        raise RunawayError(
            f"a task ran {self.budget} steps without reaching a sync point or blocking"
        )


def _next_deadline() -> float | None:
    """The earliest timer of the running event loop, if any. Neither trio nor asyncio says
    this publicly: this reads their internals, and answers None where they moved."""
    if sniffio.current_async_library() == "trio":
        try:
            from trio._core._run import GLOBAL_RUN_CONTEXT

            deadline = GLOBAL_RUN_CONTEXT.runner.deadlines.next_deadline()
        except (ImportError, AttributeError):  # pragma: no cover - a trio that changed
            return None
        return None if math.isinf(deadline) else float(deadline)
    import asyncio

    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", [])
    whens = [handle.when() for handle in scheduled if not handle.cancelled()]
    return min(whens) if whens else None


def _virtual_clock() -> bool:
    """Whether time is virtual here: trio's ``MockClock``, or avcm's virtual-time loop."""
    if sniffio.current_async_library() == "trio":
        from trio.testing import MockClock  # imports pytest: only when asked

        return isinstance(trio.lowlevel.current_clock(), MockClock)
    import asyncio

    from ._clock import VirtualTimeEventLoop

    return isinstance(asyncio.get_running_loop(), VirtualTimeEventLoop)


def _quiescence(budget: int) -> _Quiescence:
    if sniffio.current_async_library() == "trio":
        return _TrioQuiescence(budget)
    return _AsyncioQuiescence(budget)
