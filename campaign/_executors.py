"""Where units run: a Dask cluster (embedded ``LocalCluster`` or an existing scheduler), or local
processes when Dask is not installed. Both stream results back as runs finish; neither is a
scheduler of its own: Dask (or ``concurrent.futures``) places, runs and retries the work."""

from __future__ import annotations

import importlib
import queue
import signal
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Protocol

from ._units import Unit, UnitResult

__all__ = [
    "DaskExecutor",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "dask_available",
    "execute",
]

Outcome = UnitResult | BaseException


class ExecutorError(Exception):
    """The workers cannot be had: Dask missing, a scheduler that does not answer."""


def execute(unit: Unit) -> UnitResult:
    """What a worker runs: one unit, whole."""
    return unit.run()


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


class Executor(Protocol):
    """Runs units on workers. ``submit`` hands one over with a *tag* of the caller's;
    ``completed`` yields ``(tag, result or exception)`` as runs finish, units submitted while it
    is being iterated included, until none is left; ``notices`` are lines to show (a worker
    lost); ``cancel`` drops what has not finished."""

    workers: int
    description: str

    def submit(self, unit: Unit, tag: Any) -> None: ...

    def completed(self) -> Iterator[tuple[Any, Outcome]]: ...

    def notices(self) -> list[str]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


def _ignore_interrupts() -> None:
    # Ctrl-C is the campaign's to handle (it stops the workers), not each worker's to report
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """*jobs* local processes (``concurrent.futures``), for a machine without Dask. A worker
    process that dies breaks the whole pool: it is replaced by a new one and the runs that were
    in it are submitted again, once; a run that kills its worker twice is lost."""

    def __init__(self, jobs: int) -> None:
        self.workers = jobs
        self.description = f"{jobs} local process{'es' if jobs > 1 else ''}"
        self._pool = self._new_pool()
        self._pending: dict[Future[UnitResult], tuple[Unit, Any, int]] = {}
        self._notices: list[str] = []

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=get_context("spawn"), initializer=_ignore_interrupts
        )

    def submit(self, unit: Unit, tag: Any, attempt: int = 0) -> None:
        self._pending[self._pool.submit(execute, unit)] = (unit, tag, attempt)

    def completed(self) -> Iterator[tuple[Any, Outcome]]:
        while self._pending:
            done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    broken = True
                    continue
                _, tag, _ = self._pending.pop(future)
                yield tag, (future.result() if error is None else error)
            if broken:
                yield from self._recover()

    def _recover(self) -> Iterator[tuple[Any, Outcome]]:
        """Every run of a broken pool fails with it: start a new pool and resubmit them."""
        runs = list(self._pending.values())
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self._notices.append(
            f"a worker process died; {len(runs)} run(s) in flight are retried in a new pool"
        )
        for unit, tag, attempt in runs:
            if attempt == 0:
                self.submit(unit, tag, attempt + 1)
            else:
                yield tag, BrokenProcessPool(f"{unit.label()} killed its worker twice")

    def notices(self) -> list[str]:
        taken, self._notices = self._notices, []
        return taken

    def cancel(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending = {f: job for f, job in self._pending.items() if not f.cancelled()}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """A Dask cluster: *address* (``--scheduler``, or Dask's ``DASK_SCHEDULER_ADDRESS``), or
    else an embedded ``LocalCluster`` of *workers* processes (one per core by default), one
    thread each (a stress run is one event loop: threads would only contend for the GIL).
    A scheduler is given *connect_timeout* seconds to answer (``None``: avcm.testing's
    ``CONNECT_TIMEOUT``).

    A worker that dies mid-run is announced (one notice) and Dask runs what it held on the
    others; a run that kills every worker it is given fails with ``KilledWorker``."""

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        from avcm import NotSupportedError, VcmError, testing

        try:
            # the same cluster as avcm.testing's explorations on workers
            self._cluster = testing.Cluster(
                address, workers, from_environment=True, connect_timeout=connect_timeout
            )
        except NotSupportedError:
            raise ExecutorError(
                "the cluster engine needs Dask: pip install 'avcm[cluster]' (or use --jobs N "
                "for local processes)"
            ) from None
        except VcmError as error:
            raise ExecutorError(error.strerror) from None
        self._client: Any = self._cluster.client
        self.description = self._cluster.description
        self.workers = self._cluster.workers
        distributed: Any = importlib.import_module("distributed")
        self._as_completed = distributed.as_completed(with_results=False)
        self._tags: dict[Any, Any] = {}
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._client.subscribe_topic("all", self._on_event)
        self._subscribed = True

    def _on_event(self, event: tuple[float, Any]) -> None:
        # called in the client's event-loop thread: only hand the line over
        _, message = event
        if (
            isinstance(message, dict)
            and message.get("action") == "remove-worker"
            and not message.get("expected", False)
        ):
            lost = len(message.get("processing-tasks", ()) or ())
            self._events.put(
                f"worker {message.get('worker', '?')} died; Dask reruns the {lost} run(s) it held "
                "on the remaining workers"
            )

    def submit(self, unit: Unit, tag: Any) -> None:
        future = self._client.submit(execute, unit, pure=False)
        self._tags[future] = tag
        self._as_completed.add(future)

    def completed(self) -> Iterator[tuple[Any, Outcome]]:
        for future in self._as_completed:
            tag = self._tags.pop(future)
            if future.cancelled():
                continue
            error = future.exception()
            yield tag, (future.result() if error is None else error)

    def notices(self) -> list[str]:
        lines = []
        while not self._events.empty():
            lines.append(self._events.get())
        return lines

    def cancel(self) -> None:
        futures = list(self._tags)
        self._as_completed.clear()
        self._tags.clear()
        if futures:
            self._client.cancel(futures)

    def close(self) -> None:
        if getattr(self, "_subscribed", False):
            # else the scheduler logs its event of the client's removal to a closed comm
            self._client.unsubscribe_topic("all")
            self._subscribed = False
        self._cluster.close()
