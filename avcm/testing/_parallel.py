"""Exploring on many processes: the schedules of an exploration, or the scenarios of the
conformance suite, spread over the workers of a Dask cluster (an embedded ``LocalCluster`` by
default, or an existing scheduler's) and the results merged.

Every part is an exploration one process could run by itself: one strategy with one seed (by
default a portfolio, as Coyote runs one: PCT at depths 1 to 3 and a random walk, with distinct
seeds), or for :class:`Exhaustive` one prefix of its search. So a failure's token is the one
``explore(scenario, strategy=...)`` with that part's strategy and seed gives in one process, and
it replays anywhere. Of the parts that fail, the first in the order of the parts is reported,
whichever finished first: what is reported does not depend on timing. The caps of an
exploration (its schedules) are the whole exploration's, shared between the parts the same way
every run.

Dask is imported here only, and only when a cluster is made: ``pip install 'avcm[cluster]'``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib
import logging
import os
import pickle
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from .. import InvalidError, NotSupportedError
from ..lowlevel import check_int, quote
from ._clock import run_on_virtual_time
from ._conformance import SCENARIOS, ConformanceReport, Factory, check_conformance
from ._errors import ClusterError, ConformanceFailure
from ._explore import (
    Exploration,
    Failure,
    Limits,
    Scenario,
    _run_once,
    check_until_covered,
    checked_limits,
    described,
    explore,
)
from ._strategies import PCT, PORTFOLIO, Exhaustive, Strategy
from ._timeline import TaskOutcome

__all__ = [
    "CONNECT_TIMEOUT",
    "PORTFOLIO",
    "Cluster",
    "check_conformance_parallel",
    "exhaustive_prefixes",
    "explore_parallel",
]

_T = TypeVar("_T")

MAX_LOCAL_WORKERS = 256
"""The most worker processes an embedded local cluster is made with (each is a Python process
of its own: more would exhaust the machine's memory). For more, start a cluster of your own
and give its scheduler's address."""

CONNECT_TIMEOUT = 5.0
"""Seconds a :class:`Cluster` tries to reach a scheduler that does not answer (packets lost,
or a server that takes the connection and says nothing) before a :class:`ClusterError`; Dask's
own default is 30 s. A refused connection (nothing listening: a closed cluster's address) is
a :class:`ClusterError` at once; a scheduler that answers but has no worker, one after this
long. A slow link to a busy cluster, or one whose workers start on demand, may need more:
*connect_timeout* (``--connect-timeout``) sets it, up to :data:`MAX_CONNECT_TIMEOUT`."""

MAX_CONNECT_TIMEOUT = 86_400.0
"""The longest *connect_timeout*, a day: a sanity bound (the socket layer refuses timeouts past
what a platform's clock holds, and a typo should not wait for ever)."""

# HOST:PORT, with tcp:// before it or not (a host may be [IPv6]), or the inproc:// address of
# a cluster in this very process (Dask's HOST/PID/N). Dask's other protocols are not taken:
# tls:// and wss:// need security settings avcm has no way to pass, ucx:// a library of its own
_OTHER_PROTOCOL = re.compile(r"(?P<protocol>[a-z]+)://")
_INPROC_ADDRESS = re.compile(r"inproc://[^\s/]+/[0-9]+/[0-9]+")

_TCP_ADDRESS = re.compile(
    r"(?:tcp://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]{1,5})"
)

# parts of an exhaustive search per worker: subtrees differ in size, so more parts than
# workers keep every worker busy to the end
_PREFIXES_PER_WORKER = 4


class Cluster:
    """A Dask client, of the cluster whose scheduler is at *scheduler* (``tcp://HOST:8786``),
    or of an embedded ``LocalCluster`` of *workers* processes (one per core by default), one
    thread each (a run is one event loop: threads would only contend for the GIL). With
    *from_environment*, no *scheduler* means Dask's own setting (``DASK_SCHEDULER_ADDRESS``)
    before a local cluster. Close it (or use it as a context manager): a local cluster stops.
    The scheduler is given *connect_timeout* seconds (``None``: :data:`CONNECT_TIMEOUT`) to
    answer, as Dask's ``Client(timeout=...)``, which also bounds the client's reconnecting; at
    a ``tcp://`` address, a refused connection is an error at once (see :data:`CONNECT_TIMEOUT`).

    Raises:
        avcm.InvalidError: *workers* not a whole number of at least 1, *scheduler* not an
            address, or both given (a scheduler's cluster has its own workers);
            *connect_timeout* not a positive, finite number of seconds.
        avcm.NotSupportedError: Dask is not installed.
        ClusterError: the scheduler refuses the connection (at once), or does not answer
            within *connect_timeout* seconds, or the local cluster does not start.
    """

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        *,
        from_environment: bool = False,
        connect_timeout: float | None = None,
    ) -> None:
        self.client: Any = None
        self._cluster: Any = None
        _check_workers(workers, scheduler, both=from_environment)
        connect_timeout = check_connect_timeout(connect_timeout)
        try:
            # typed as Any: distributed's API is only partly annotated
            dask: Any = importlib.import_module("dask")
            distributed: Any = importlib.import_module("distributed")
        except ImportError:
            raise NotSupportedError(
                "running on workers needs Dask: pip install 'avcm[cluster]'"
            ) from None
        address = scheduler
        if address is None and from_environment:
            address = dask.config.get("scheduler-address", None)
        try:
            if address is None:
                count = workers or os.cpu_count() or 1
                self._cluster = distributed.LocalCluster(
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    # any free port: the scheduler's HTTP server runs even without a
                    # dashboard, and the default 8787 may be another cluster's
                    dashboard_address=":0",
                    silence_logs=logging.CRITICAL,
                )
                self.client = distributed.Client(self._cluster)
                # else the first parts all go to the first worker that is up
                self.client.wait_for_workers(count, timeout=60)
                self.description = f"a local Dask cluster of {count} worker processes"
            else:
                _answers(address, connect_timeout)
                self.client = distributed.Client(address, timeout=connect_timeout)
                self.description = f"the Dask cluster at {address}"
        # MemoryError, OverflowError: a server there that is not a Dask scheduler (Dask read a
        # frame length out of its bytes and tried to make a buffer that long)
        except (OSError, TimeoutError, ValueError, MemoryError, OverflowError) as error:
            self.close()
            where = address or "a local cluster"
            raise ClusterError(
                f"cannot reach the Dask scheduler at {where}: {_why(error, connect_timeout)}"
            ) from None
        except RuntimeError as error:  # Dask's "Nanny failed to start", for one
            self.close()
            raise ClusterError(
                f"the local Dask cluster did not start ({error}); a script that starts one "
                "needs the `if __name__ == '__main__':` guard, as its workers import it"
            ) from None
        try:
            if address is not None:  # parts sent to no worker would wait for ever
                self.client.wait_for_workers(1, timeout=connect_timeout)
        except TimeoutError:
            self.close()
            raise ClusterError(
                f"the Dask scheduler at {address} has no workers (none joined within "
                f"{connect_timeout:g} s, the connect timeout)"
            ) from None
        self.workers: int = max(1, len(self.client.scheduler_info().get("workers", {})))

    @property
    def address(self) -> str:
        """The scheduler's address: ``scheduler=cluster.address`` runs many explorations on
        this one cluster, where each would otherwise start one (a local one takes seconds)."""
        return str(self.client.scheduler.address)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        self.client = self._cluster = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(
        self,
        parts: Sequence[Callable[[], _T]],
        failed: Callable[[_T], bool],
        on_result: Callable[[int, _T], object] = lambda index, result: None,
    ) -> dict[int, _T]:
        """Run each of *parts* on a worker; return the results by the index of their part:
        every part up to and including the first that *failed* (by the order of *parts*, not by
        time: those before it are waited for), and the parts after it that ended before they
        could be cancelled (which of them depends on timing). *on_result* is called with each
        part's index and result as it ends. A part that raises: the error is
        raised here, the others cancelled. :class:`~avcm.InvalidError` if a part cannot be
        pickled (nothing runs)."""
        client = self.client
        futures: list[Any] = []
        try:
            for part in parts:
                futures.append(client.submit(_call, part, pure=False))
        except TypeError as error:  # Dask could not pickle the part: nothing has run
            client.cancel(futures)
            while isinstance(error.__cause__, TypeError):  # Dask's, then pickle's
                error = error.__cause__
            raise InvalidError(
                f"cannot send the work to the workers: {error} (what holds a lock, a socket "
                "or an open file cannot leave this process: give workers a module-level "
                "function, or one whose closure they can unpickle)"
            ) from None
        index = {future.key: i for i, future in enumerate(futures)}
        results: dict[int, _T] = {}
        first_failed = len(parts)
        distributed: Any = importlib.import_module("distributed")
        try:
            for future in distributed.as_completed(futures):
                i = index[future.key]
                if future.cancelled():
                    continue
                result = future.result()
                results[i] = result
                on_result(i, result)
                if failed(result) and i < first_failed:
                    first_failed = i
                    client.cancel(futures[i + 1 :])
                if all(j in results for j in range(min(first_failed + 1, len(parts)))):
                    break
        finally:
            client.cancel([f for i, f in enumerate(futures) if i not in results])
        return results


def _call(part: Callable[[], _T]) -> _T:
    """What a worker runs."""
    return part()


def _answers(address: str, timeout: float) -> None:
    """For a plain TCP address, what Dask's client does not do within its *timeout*: a
    connection refused is an error at once (Dask tries again until the timeout, as a scheduler
    that is starting refuses for a moment), and a server that takes the connection but never
    answers Dask's handshake (a stopped scheduler) an error after *timeout* seconds (Dask's
    client would wait for it forever). One TCP connection, then one of Dask's own (its
    ``connect``, handshake included), closed: no protocol of avcm's."""
    match = _TCP_ADDRESS.fullmatch(address)
    if match is None:  # a cluster in this process, which is there or not at once
        return
    host = match["host"].strip("[]")
    try:
        socket.create_connection((host, int(match["port"])), timeout=timeout).close()
    except ConnectionRefusedError:
        raise OSError("connection refused") from None
    except TimeoutError:
        raise OSError(f"no answer within {timeout:g} s (the connect timeout)") from None
    distributed: Any = importlib.import_module("distributed")

    async def handshake() -> None:
        comm = await asyncio.wait_for(distributed.comm.connect(address, timeout), timeout)
        await comm.close()

    # in a thread of its own: the caller may be in an event loop (asyncio.run refuses that)
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        try:
            thread.submit(asyncio.run, handshake()).result()
        except TimeoutError:
            raise OSError(
                f"it took the connection but did not answer Dask's handshake within "
                f"{timeout:g} s (the connect timeout)"
            ) from None
        except OSError:  # Dask's CommClosedError among them
            raise OSError(
                "it took the connection but closed it without answering Dask's handshake"
            ) from None


def _why(error: BaseException, timeout: float) -> str:
    """What Dask's *error* from connecting means, in a few words."""
    if isinstance(error, (MemoryError, OverflowError)):
        return "what answered there is not a Dask scheduler"
    # Dask's "Timed out trying to connect", from the last attempt's error
    cause = f"{error.__cause__ or ''}"
    if "refused" in cause.lower():
        return f"connection refused (tried for {timeout:g} s, the connect timeout)"
    if cause or "timed out" in str(error).lower():
        return f"no answer within {timeout:g} s (the connect timeout)"
    return str(error) or type(error).__name__


class _Shown:
    """A task's value that cannot leave the worker's process (an avcm object stands for an
    allocation, and refuses to be pickled), as the timeline shows it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _portable(outcome: TaskOutcome) -> TaskOutcome:
    try:
        pickle.dumps(outcome.value)
    except Exception:
        outcome = replace(outcome, value=_Shown(repr(outcome.value)))
    if outcome.error is not None:
        outcome = replace(outcome, error=_portable_error(outcome.error))
    return outcome


def _portable_error(error: BaseException) -> BaseException:
    """*error* if it survives the trip back from a worker, else the nearest built-in class it
    derives from, with its class name and message: a race found must never be lost because
    the exception that showed it holds a lock or a socket."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        builtin = next(c for c in type(error).__mro__ if c.__module__ == "builtins")
        try:
            text = str(error)
        except Exception:
            text = "<message not printable>"
        stand_in: BaseException = builtin(f"{type(error).__qualname__}: {text}")
        return stand_in
    return error


def _sendable(failure: Failure | None) -> Failure | None:
    """*failure* as it can be sent back from a worker, and shown and replayed the same."""
    if failure is None:
        return None
    timeline = failure.timeline
    outcomes = tuple(_portable(outcome) for outcome in timeline.outcomes)
    return replace(
        failure,
        error=_portable_error(failure.error),
        timeline=replace(timeline, outcomes=outcomes),
    )


@dataclass(frozen=True)
class _ExplorePart:
    """One exploration of a parallel one, as one process would run it."""

    scenario: Scenario
    strategy: Strategy
    schedules: int
    backend: str
    limits: Limits | None
    shrink: bool
    shrink_budget: int
    command: str | None
    until_covered: int | None

    def __call__(self) -> Exploration:
        result = explore(
            self.scenario,
            strategy=self.strategy,
            schedules=self.schedules,
            backend=self.backend,
            limits=self.limits,
            shrink=self.shrink,
            shrink_budget=self.shrink_budget,
            command=self.command,
            until_covered=self.until_covered,
        )
        return replace(result, failure=_sendable(result.failure))


async def _split_async(
    scenario: Scenario, root: Exhaustive, parts: int, limits: Limits
) -> list[tuple[int, ...]]:
    """Prefixes below *root*'s that divide its search between them, at least *parts* of them
    where the search has that many schedules: each found by running one schedule (the prefix,
    then no preemption) and taking the branches at its first choice, shortest prefixes
    first."""
    queue: collections.deque[tuple[int, ...]] = collections.deque([root.prefix])
    whole: list[tuple[int, ...]] = []  # prefixes of one schedule only
    while queue and len(queue) + len(whole) < parts:
        prefix = queue.popleft()
        search = Exhaustive(
            root.preemption_bound,
            prefix=prefix,
            cancel=root.cancel,
            slow_threads=root.slow_threads,
        )
        chooser = search.chooser(0)
        assert chooser is not None  # the first schedule of a search always exists
        run, _ = await _run_once(scenario, chooser, limits)
        search.finished(run.steps)  # a root prefix that begins no schedule is refused here
        branches = search.branches()
        if branches is None:
            whole.append(prefix)
        else:
            queue.extend(branches)
    # in the order the search itself would take them: depth first, position 0 first
    return sorted([*whole, *queue])


def exhaustive_prefixes(
    scenario: Scenario,
    strategy: Exhaustive,
    parts: int,
    *,
    backend: str = "trio",
    limits: Limits | None = None,
) -> list[tuple[int, ...]]:
    """Prefixes that split *strategy*'s search (below its own prefix) into at least *parts*
    searches where it has that many schedules; together they run each of its schedules
    once. Runs a schedule of *scenario* for each prefix it splits.

    Raises:
        avcm.InvalidError: *strategy*'s prefix begins no schedule of *scenario*.
    """
    check_int(parts, "parts", 1)
    limits = checked_limits(limits)
    return run_on_virtual_time(backend, partial(_split_async, scenario, strategy, parts, limits))


def _check_workers(workers: object, scheduler: object, *, both: bool = False) -> None:
    """Bad input refused before a cluster is made (*both*: a scheduler and workers may be
    given together, the workers for a local cluster if no scheduler is set)."""
    if workers is not None:
        check_int(workers, "workers", 1, MAX_LOCAL_WORKERS)
    if scheduler is not None:
        if not isinstance(scheduler, str):
            raise InvalidError(
                f"scheduler must be an address such as tcp://HOST:8786, not {quote(scheduler)}"
            )
        other = _OTHER_PROTOCOL.match(scheduler)
        if other is not None and other["protocol"] not in ("tcp", "inproc"):
            raise InvalidError(
                f"scheduler {quote(scheduler)}: only tcp:// schedulers are supported ("
                f"{other['protocol']}:// needs settings avcm does not take)"
            )
        if not (_TCP_ADDRESS.fullmatch(scheduler) or _INPROC_ADDRESS.fullmatch(scheduler)):
            raise InvalidError(
                f"scheduler must be an address such as tcp://HOST:8786, not {quote(scheduler)}"
            )
    if workers is not None and scheduler is not None and not both:
        raise InvalidError("workers sizes a local cluster; the cluster at a scheduler has its own")


def check_connect_timeout(timeout: object) -> float:
    """*timeout* as a number of seconds (``None``: :data:`CONNECT_TIMEOUT`); ``EINVAL`` for one
    that is not above 0 and at most :data:`MAX_CONNECT_TIMEOUT`, also where no cluster is
    used (a bad value is a mistake wherever it is given)."""
    if timeout is None:
        return CONNECT_TIMEOUT
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout <= MAX_CONNECT_TIMEOUT
    ):
        raise InvalidError(
            f"connect_timeout must be a number of seconds above 0 and at most "
            f"{MAX_CONNECT_TIMEOUT:g}, not {quote(timeout)}"
        )
    return float(timeout)


def _strategies(strategy: Strategy | None, seed: int, workers: int) -> list[Strategy]:
    if strategy is None:
        count = max(workers, len(PORTFOLIO))
        return [PORTFOLIO[i % len(PORTFOLIO)](seed + i // len(PORTFOLIO)) for i in range(count)]
    return [strategy.with_seed(strategy.seed + i) for i in range(workers)]


def _shares(total: int, parts: int) -> list[int]:
    """*total* schedules shared between *parts*, the first ones one more where it does not
    divide: the same every run."""
    each, more = divmod(total, parts)
    return [each + (i < more) for i in range(parts)]


def _merge(parts: dict[int, Exploration], total: int, name: str | None = None) -> Exploration:
    """One exploration of *parts* (by the index of their part; of *total* planned), as the
    first failing one in that order found it: exhausted or covered only if every planned part
    ran and was. *name*: the strategy's, else each part's."""
    ran = [parts[i] for i in sorted(parts)]
    failing = next((part for part in ran if part.failure is not None), None)
    if name is None:
        names = list(dict.fromkeys(part.strategy for part in ran))
        name = names[0] if len(names) == 1 else f"portfolio of {', '.join(names)}"
    points: collections.Counter[str] = collections.Counter()
    for part in ran:
        points.update(dict(part.points))
    return Exploration(
        scenario=ran[0].scenario,
        strategy=name,
        seed=(failing or ran[0]).seed,
        backend=ran[0].backend,
        schedules=sum(part.schedules for part in ran),
        exhausted=len(ran) == total and all(part.exhausted for part in ran),
        failure=None if failing is None else failing.failure,
        max_steps_seen=max(part.max_steps_seen for part in ran),
        distinct_schedules=sum(part.distinct_schedules for part in ran),
        distinct_orders=sum(part.distinct_orders for part in ran),
        points=tuple(sorted(points.items())),
        covered=len(ran) == total and all(part.covered for part in ran),
        parts=tuple(ran),
    )


def explore_parallel(
    scenario: Scenario,
    *,
    strategy: Strategy | None,
    schedules: int,
    backend: str,
    limits: Limits | None,
    shrink: bool,
    shrink_budget: int,
    command: str | None,
    on_progress: Callable[[int], object] | None,
    until_covered: int | None,
    workers: int | None,
    scheduler: str | None,
    seed: int = 0,
    cluster: Cluster | None = None,
    connect_timeout: float | None = None,
) -> Exploration:
    """:func:`~avcm.testing.explore` with *workers* or *scheduler*: see there. With *cluster*,
    on that one (left open), not on one made and closed here."""
    check_int(schedules, "schedules", 1)
    check_int(seed, "seed", 0)
    if strategy is not None and not isinstance(strategy, Strategy):
        raise InvalidError(f"strategy must be an avcm.testing.Strategy, not {strategy!r}")
    check_until_covered(until_covered, strategy)
    if strategy is not None and not isinstance(strategy, Exhaustive):
        strategy.with_seed(strategy.seed)  # refused here, before a cluster is made
    part = _ExplorePart(
        scenario, PCT(), 1, backend, limits, shrink, shrink_budget, command, until_covered
    )
    if cluster is None:
        with Cluster(scheduler, workers, connect_timeout=connect_timeout) as made:
            return _explore_on(made, part, strategy, schedules, seed, on_progress)
    return _explore_on(cluster, part, strategy, schedules, seed, on_progress)


def _explore_on(
    cluster: Cluster,
    part: _ExplorePart,
    strategy: Strategy | None,
    schedules: int,
    seed: int,
    on_progress: Callable[[int], object] | None,
) -> Exploration:
    latest: dict[int, int] = {}  # schedules of each part's latest run

    def run(strategies: dict[int, Strategy], caps: dict[int, int]) -> dict[int, Exploration]:
        order = sorted(strategies)
        parts = [replace(part, strategy=strategies[i], schedules=caps[i]) for i in order]

        def progress(j: int, result: Exploration) -> None:
            # a part run again with a bigger share runs its first schedules again: counted once
            latest[order[j]] = result.schedules
            if on_progress is not None:
                on_progress(sum(latest.values()))

        done = cluster.run(parts, lambda result: result.failure is not None, progress)
        return {order[j]: result for j, result in done.items()}

    if not isinstance(strategy, Exhaustive):
        every = _strategies(strategy, seed, cluster.workers)
        # a part for each share, the first ones where there are fewer schedules than parts
        caps = dict(enumerate(share for share in _shares(schedules, len(every)) if share))
        return _merge(run({i: every[i] for i in caps}, caps), len(caps))
    prefixes = exhaustive_prefixes(
        part.scenario,
        strategy,
        cluster.workers * _PREFIXES_PER_WORKER,
        backend=part.backend,
        limits=part.limits,
    )
    searches = {
        i: Exhaustive(
            strategy.preemption_bound,
            prefix=prefix,
            cancel=strategy.cancel,
            slow_threads=strategy.slow_threads,
        )
        for i, prefix in enumerate(prefixes)
    }
    caps = dict(enumerate(_shares(schedules, len(searches))))
    results: dict[int, Exploration] = {}
    again = {i for i, cap in caps.items() if cap}
    # The cap is the whole search's, shared between the parts. A part that ends its search
    # before its share leaves the rest to the parts cut short by theirs, which run again
    # (from their start: a search is the same every time) with the bigger share, until no
    # share is left or every part ended: what is counted never exceeds the cap, and the search
    # is exhausted, as in one process, only if it has fewer schedules than the cap.
    while again:
        ran = run({i: searches[i] for i in sorted(again)}, {i: caps[i] for i in again})
        results.update(ran)
        if any(result.failure is not None for result in ran.values()):
            break
        # (a part that stopped by until_covered ended too: it is not given more)
        ended = {i for i, result in results.items() if result.exhausted or result.covered}
        cut = [i for i in sorted(caps) if i not in ended]
        left = schedules - sum(result.schedules for result in results.values())
        if not cut or left <= 0:
            break
        more = _shares(left, len(cut))
        again = {i for i, extra in zip(cut, more, strict=True) if extra}
        for i in again:
            caps[i] += more[cut.index(i)]
    return _merge(results, len(searches), described(strategy))


@dataclass(frozen=True)
class _ConformancePart:
    factory: Factory
    backend: str
    schedules: int
    seed: int
    scenario: str
    factory_spec: str | None

    def __call__(self) -> ConformanceReport:
        try:
            report = check_conformance(
                self.factory,
                backend=self.backend,
                schedules=self.schedules,
                seed=self.seed,
                only=self.scenario,
                factory_spec=self.factory_spec,
            )
        except ConformanceFailure as failure:
            report = failure.report
        results = tuple(replace(r, failure=_sendable(r.failure)) for r in report.results)
        return replace(report, results=results)


def check_conformance_parallel(
    factory: Factory,
    *,
    backend: str,
    schedules: int,
    seed: int,
    only: str | None,
    factory_spec: str | None,
    on_progress: Callable[[int], object] | None,
    workers: int | None,
    scheduler: str | None,
    connect_timeout: float | None = None,
) -> ConformanceReport:
    """:func:`~avcm.testing.check_conformance` with *workers* or *scheduler*: each scenario
    on a worker, as one process runs it; the same report."""
    check_int(schedules, "schedules", 1)
    if only is not None and only not in SCENARIOS:
        raise InvalidError(
            f"conformance: no scenario {only!r} (choose from {', '.join(SCENARIOS)})"
        )
    names = [only] if only is not None else list(SCENARIOS)
    parts = [
        _ConformancePart(factory, backend, schedules, seed, name, factory_spec) for name in names
    ]
    ran = 0

    def progress(index: int, report: ConformanceReport) -> None:
        nonlocal ran
        ran += sum(result.schedules for result in report.results)
        if on_progress is not None:
            on_progress(ran)

    with Cluster(scheduler, workers, connect_timeout=connect_timeout) as cluster:
        # every scenario runs to its end, as in one process: none is "first" to fail
        done = cluster.run(parts, lambda report: False, progress)
    reports = [done[i] for i in sorted(done)]
    report = ConformanceReport(
        driver=reports[0].driver,
        backend=reports[0].backend,
        results=tuple(result for each in reports for result in each.results),
    )
    if not report.passed:
        raise ConformanceFailure(report)
    return report
