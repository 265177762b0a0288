"""Exploring on many processes: Exhaustive split by prefix (the parts are the whole search, each
schedule once), explorations and the conformance suite on a real 2-process Dask cluster (a
portfolio of strategies and seeds, the failure reported the one a single process finds with
that strategy and seed, replayed in a fresh process), the pytest plugin and the command line on
it, and bad input."""

from __future__ import annotations

import ast
import contextlib
import errno
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest

import avcm
from avcm import testing
from tests.races import SEED, SEED_DEEP
from tests.test_race_controls import woken_last
from tests.test_race_finder import counting_tasks

ROOT = Path(__file__).resolve().parent.parent
LEAKY = "tests.broken_drivers:leaky"


# -- Exhaustive by prefix: no cluster needed -------------------------------------------------


def split_search(
    k: int, bound: int, parts: int, backend: str
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], int]:
    """The schedules of each part of the search, one after another, and of the whole search;
    and how many prefixes there were."""
    whole: list[tuple[int, ...]] = []
    single = testing.explore(
        counting_tasks(k, whole), strategy=testing.Exhaustive(bound), schedules=10_000,
        backend=backend,
    )  # fmt: skip
    assert single.exhausted and single.schedules == len(whole)
    prefixes = testing.exhaustive_prefixes(
        counting_tasks(k), testing.Exhaustive(bound), parts, backend=backend
    )
    split: list[tuple[int, ...]] = []
    for prefix in prefixes:
        part = testing.explore(
            counting_tasks(k, split), strategy=testing.Exhaustive(bound, prefix=prefix),
            schedules=10_000, backend=backend,
        )  # fmt: skip
        assert part.exhausted and not part.found
    return split, whole, len(prefixes)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("parts", [2, 5, 50])
def test_exhaustive_prefixes_partition_the_search(backend: str, parts: int) -> None:
    for k in (1, 2, 3):
        split, whole, count = split_search(k, 32, parts, backend)
        # every interleaving of two tasks of k + 1 steps, each once, in the search's own order
        assert len(split) == len(set(split)) == math.comb(2 * k + 2, k + 1)
        assert split == whole
        assert count >= min(parts, len(whole))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_exhaustive_prefixes_partition_a_bounded_search(backend: str) -> None:
    for bound in (0, 1, 2):
        split, whole, count = split_search(3, bound, 6, backend)
        assert split == whole and len(set(split)) == len(split)
        # (without preemption, one schedule: the event loop's own order, no part to split)
        assert count == 1 if bound == 0 else count > 1


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_exhaustive_prefixes_partition_a_search_with_a_blocked_task(backend: str) -> None:
    for k in (1, 2):
        prefixes = testing.exhaustive_prefixes(
            woken_last(k), testing.Exhaustive(32), 7, backend=backend
        )
        parts = [
            testing.explore(
                woken_last(k),
                strategy=testing.Exhaustive(32, prefix=prefix),
                schedules=10_000,
                backend=backend,
            )
            for prefix in prefixes
        ]
        assert len(parts) >= 7 and all(part.exhausted for part in parts)
        assert sum(part.schedules for part in parts) == math.comb(2 * k + 2, k + 1) * (2 * k + 3)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_prefix_below_a_prefix_splits_its_part_only(backend: str) -> None:
    [first, *_] = testing.exhaustive_prefixes(
        counting_tasks(3), testing.Exhaustive(32), 2, backend=backend
    )
    below = testing.exhaustive_prefixes(
        counting_tasks(3), testing.Exhaustive(32, prefix=first), 4, backend=backend
    )
    assert len(below) >= 4 and all(prefix[: len(first)] == first for prefix in below)
    part = testing.explore(
        counting_tasks(3), strategy=testing.Exhaustive(32, prefix=first), schedules=10_000,
        backend=backend,
    )  # fmt: skip
    total = 0
    for prefix in below:
        total += testing.explore(
            counting_tasks(3), strategy=testing.Exhaustive(32, prefix=prefix),
            schedules=10_000, backend=backend,
        ).schedules  # fmt: skip
    assert total == part.schedules


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("bound", "prefix", "message"),
    [
        (32, (0, 2), "step 1 has 2 choice(s), not 3"),
        (32, (0,) * 9, "the run took 8 steps, the prefix has 9"),
        (0, (0, 1), "position 1 at step 1 is preemption 1, beyond the bound of 0"),
        # the first bad position is named, not the later ones (nor the scenario blamed)
        (32, (7, 7), "step 0 has 2 choice(s), not 8"),
    ],
)
def test_a_prefix_that_begins_no_schedule_is_refused(
    backend: str, bound: int, prefix: tuple[int, ...], message: str
) -> None:
    schedules: list[tuple[int, ...]] = []
    with pytest.raises(avcm.InvalidError, match="begins no schedule") as info:
        testing.explore(
            counting_tasks(3, schedules), strategy=testing.Exhaustive(bound, prefix=prefix),
            schedules=100, backend=backend,
        )  # fmt: skip
    assert message in str(info.value) and info.value.errno == errno.EINVAL
    assert len(schedules) == 1  # the one schedule that shows it, and no exploration
    with pytest.raises(avcm.InvalidError, match="begins no schedule"):
        testing.exhaustive_prefixes(
            counting_tasks(3), testing.Exhaustive(bound, prefix=prefix), 4, backend=backend
        )


@pytest.mark.parametrize("prefix", [(-1,), (0, "1"), "01", 3, (True,)])
def test_a_prefix_that_is_no_list_of_positions_is_refused_at_once(prefix: Any) -> None:
    with pytest.raises(avcm.InvalidError) as info:
        testing.Exhaustive(2, prefix=prefix)
    assert info.value.errno == errno.EINVAL


# -- on a real cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Two worker processes, as the embedded cluster has on a 2-core machine; shared by the
    tests of this module (a cluster takes seconds to start)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield str(local.scheduler_address)


def first_failing(result: testing.Exploration) -> testing.Exploration:
    """The part of *result* that is reported: the first in their order that failed."""
    return next(part for part in result.parts if part.found)


LATE_RACE = "activate_deactivate_mismatch"
"""A seed race the event loop's own order does not run into (the first schedule of every
strategy): it takes two preemptions, and PCT of depth 1 never finds it."""


def single_process(name: str, seed: int, schedules: int) -> testing.Exploration:
    """The exploration one process runs with the portfolio strategy *name* and *seed*."""
    maker = {"pct-d1": 0, "pct-d2": 1, "pct-d3": 2, "random": 3}[name]
    strategy = testing.PORTFOLIO[maker](seed)
    return testing.explore(SEED[LATE_RACE], strategy=strategy, schedules=schedules)


def test_a_portfolio_reports_the_first_failing_part_as_one_process_finds_it(
    cluster: str,
) -> None:
    """PCT of depth 1 never preempts and does not find this race; depth 2 finds it after
    depth 3 and the random walk do, but it comes first in the portfolio: what is reported does
    not depend on which worker finished first. Its token is the one PCT(0, depth=2) gives in
    one process, and the printed command replays it in a fresh one."""
    result = testing.explore(SEED[LATE_RACE], schedules=200, scheduler=cluster)
    # (the parts after the reported one are there too if they ended before being cancelled)
    assert [(p.strategy, p.seed, p.found) for p in result.parts[:2]] == [
        ("pct-d1", 0, False),
        ("pct-d2", 0, True),
    ]
    assert result.parts[0].schedules == 50  # 200 schedules shared between 4 parts
    assert result.schedules == sum(p.schedules for p in result.parts)
    # the strategy names the parts that ran: those after the reported one only if they ended
    # before they could be cancelled, which is up to the machine
    assert result.strategy == "portfolio of " + ", ".join(p.strategy for p in result.parts)
    assert result.strategy.startswith("portfolio of pct-d1, pct-d2") and not result.exhausted
    failure = result.failure
    assert failure is not None
    alone = single_process("pct-d2", 0, 50).failure
    assert alone is not None and str(failure.token) == str(alone.token)
    assert failure.report() == alone.report()

    command = failure.replay_command
    assert command.startswith(f"{shlex.quote(sys.executable)} -m avcm.testing replay")
    again = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    assert again.returncode == 1, again.stdout + again.stderr
    assert failure.timeline.format() in again.stdout


@pytest.mark.parametrize("name", sorted(SEED_DEEP))
def test_every_deep_race_found_on_workers_is_the_one_process_finds(cluster: str, name: str) -> None:
    scenario = SEED_DEEP[name]
    result = testing.explore(scenario, schedules=400, scheduler=cluster)
    failure = result.failure
    assert failure is not None, name
    failing = first_failing(result)
    # part i is PORTFOLIO[i % 4] with seed i // 4 (every part before the reported one is there)
    maker = testing.PORTFOLIO[result.parts.index(failing) % len(testing.PORTFOLIO)]
    alone = testing.explore(scenario, strategy=maker(failing.seed), schedules=100).failure
    assert alone is not None and str(alone.token) == str(failure.token)
    assert testing.replay(scenario, failure.token) is not None


def test_a_strategy_spreads_over_the_workers_with_distinct_seeds(cluster: str) -> None:
    ran: list[int] = []
    result = testing.explore(
        SEED["deactivate_underflow"], strategy=testing.RandomWalk(5), schedules=20,
        scheduler=cluster, on_progress=ran.append,
    )  # fmt: skip
    parts = [(p.strategy, p.seed, p.schedules) for p in result.parts]
    failure = result.failure
    failing = first_failing(result)
    assert failure is not None and (failing.strategy, failing.seed) == (
        "random",
        failure.token.seed,
    )
    assert [seed for _, seed, _ in parts] == [5, 6][: len(parts)]
    assert ran and ran[-1] >= result.schedules  # parts cancelled late count as run too
    alone = testing.explore(
        SEED["deactivate_underflow"], strategy=testing.RandomWalk(failure.token.seed),
        schedules=10,
    )  # fmt: skip
    assert alone.failure is not None and str(alone.failure.token) == str(failure.token)


def test_a_cluster_made_once_serves_many_explorations(cluster: str) -> None:
    with testing.Cluster(scheduler=cluster) as made:
        assert made.address == cluster and made.workers == 2
        assert made.description == f"the Dask cluster at {cluster}"
        for name in ("two_binds_win", "free_racing_bind"):
            result = testing.explore(SEED[name], schedules=40, scheduler=made.address)
            assert result.found
    assert made.client is None  # closed, the cluster it reached left running


def test_an_exhaustive_search_on_workers_runs_each_schedule_once(cluster: str) -> None:
    result = testing.explore(
        counting_tasks(3), strategy=testing.Exhaustive(32), schedules=1000, scheduler=cluster
    )
    assert result.exhausted and not result.found
    assert result.schedules == result.distinct_schedules == math.comb(8, 4)
    assert len(result.parts) >= 8  # four parts per worker
    assert result.strategy == "exhaustive-p32"
    # each part named with its prefix: what it takes to run it again
    prefixes = testing.exhaustive_prefixes(counting_tasks(3), testing.Exhaustive(32), 8)
    assert [p.strategy for p in result.parts] == [
        f"exhaustive-p32 prefix {list(x)}" for x in prefixes
    ]
    again = testing.explore(counting_tasks(3), strategy=testing.Exhaustive(32, prefix=prefixes[1]))
    assert again.strategy == result.parts[1].strategy
    assert again.schedules == result.parts[1].schedules


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("cap", [1, 40, 69, 70, 71, 1000])
def test_a_capped_exhaustive_search_on_workers_says_what_one_process_says(
    cluster: str, backend: str, cap: int
) -> None:
    """The cap is the whole search's: the parts together count no more than it, and the search
    is exhausted only if every part ended its own (the whole search has 70 schedules: a cap of
    70 does not say so, as one process does not). The same every time."""
    search = testing.Exhaustive(32)
    alone = testing.explore(counting_tasks(3), strategy=search, schedules=cap, backend=backend)
    ran: list[list[int]] = [[], []]
    results = [
        testing.explore(
            counting_tasks(3),
            strategy=testing.Exhaustive(32),
            schedules=cap,
            backend=backend,
            scheduler=cluster,
            on_progress=progress.append,
        )
        for progress in ran
    ]
    for result in results:
        assert (result.schedules, result.exhausted) == (alone.schedules, alone.exhausted)
        assert result.exhausted == all(part.exhausted for part in result.parts)
    first, second = results
    assert first.parts == second.parts
    for progress in ran:  # what is counted, as parts end: never more than the cap
        assert progress == sorted(progress) and progress[-1] == first.schedules
    # each part runs again alone: its strategy is named with its prefix, and it was given the
    # schedules it ran (or it ended its search before them)
    for part in first.parts:
        prefix = prefix_of(part)
        again = testing.explore(
            counting_tasks(3), strategy=testing.Exhaustive(32, prefix=prefix),
            schedules=part.schedules + part.exhausted, backend=backend,
        )  # fmt: skip
        assert (again.schedules, again.exhausted) == (part.schedules, part.exhausted)


def prefix_of(part: testing.Exploration) -> list[int]:
    """The prefix of a part of an exhaustive search, as its strategy shows it."""
    _, _, shown = part.strategy.partition(" prefix ")
    prefix: list[int] = ast.literal_eval(shown)
    return prefix


@pytest.mark.parametrize("cap", [5, 1000])
def test_an_exhaustive_search_on_workers_finds_what_its_part_finds_alone(
    cluster: str, cap: int
) -> None:
    """The failing part, run again alone with the prefix it is shown with, gives the same
    token; the same every run, whatever the cap."""
    scenario = SEED["deactivate_underflow"]
    found = [
        testing.explore(
            scenario, strategy=testing.Exhaustive(2), schedules=cap, scheduler=cluster
        ).failure
        for _ in range(2)
    ]
    result = testing.explore(
        scenario, strategy=testing.Exhaustive(2), schedules=cap, scheduler=cluster
    )
    failing = first_failing(result)
    alone = testing.explore(
        scenario, strategy=testing.Exhaustive(2, prefix=prefix_of(failing)), schedules=cap
    ).failure
    assert alone is not None and result.failure is not None
    assert {str(f.token) for f in found if f is not None} == {str(alone.token)}
    assert result.failure.report() == alone.report()


@pytest.mark.parametrize(("schedules", "shares"), [(10, [3, 3, 2, 2]), (3, [1, 1, 1])])
def test_the_schedules_are_shared_between_the_parts(
    cluster: str, schedules: int, shares: list[int]
) -> None:
    """Exactly the number asked for in all: a part for each share, fewer parts than the
    portfolio has where there are fewer schedules."""
    result = testing.explore(counting_tasks(2), schedules=schedules, scheduler=cluster)
    assert [part.schedules for part in result.parts] == shares
    assert result.schedules == schedules


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_until_covered_on_workers_is_each_part_s_own(cluster: str, backend: str) -> None:
    """Each part stops once *until_covered* of its schedules in a row added nothing new to its
    own coverage, as it would alone; covered only if every part was."""
    result = testing.explore(
        counting_tasks(2), schedules=400, until_covered=5, backend=backend, scheduler=cluster
    )
    assert result.covered
    for i, part in enumerate(result.parts):
        alone = testing.explore(
            counting_tasks(2), strategy=testing.PORTFOLIO[i](0), schedules=100, until_covered=5,
            backend=backend,
        )  # fmt: skip
        assert (part.schedules, part.covered, part.points) == (
            alone.schedules, alone.covered, alone.points,
        )  # fmt: skip
    assert result.schedules == sum(part.schedules for part in result.parts) < 400


def wait_for_file_then(path: str, value: str) -> str:
    """A part that ends only once *path* exists (bounded: a test must end)."""
    for _ in range(6000):
        if os.path.exists(path):
            return value
        threading.Event().wait(0.01)
    return "waited in vain"


def test_the_parts_after_the_first_failing_one_that_ended_are_counted(
    cluster: str, tmp_path: Path
) -> None:
    """Part 1 fails and ends first; part 0 fails only after that (it waits until part 1's
    result is here): part 0 is reported, and part 1 is among the results, not dropped."""
    signal = tmp_path / "part 1 ended"
    with testing.Cluster(scheduler=cluster) as made:
        results = made.run(
            [partial(wait_for_file_then, str(signal), "failed"), partial(str, "failed")],
            lambda result: result == "failed",
            lambda index, result: signal.touch() if index == 1 else None,
        )
    assert results == {0: "failed", 1: "failed"}


def test_check_says_what_ran_on_every_part(cluster: str) -> None:
    """Not only the reported part's schedules: every part that ran, and how many failed."""
    with pytest.raises(testing.RaceFound) as info:
        testing.check(SEED[LATE_RACE], schedules=200, scheduler=cluster)
    result = info.value.exploration
    assert result is not None
    summary = result.parts_summary()
    failed = sum(part.found for part in result.parts)
    assert " ".join(summary.split()) == (
        f"on workers: {result.schedules} schedules in {len(result.parts)} parts, "
        f"{failed} failed; reported: the first failing part in their order (pct-d2, seed 0), "
        "as one process finds it:"
    )
    assert str(info.value).startswith(summary)
    assert result.schedules >= 50 + first_failing(result).schedules  # part 0 ran 50, passing
    assert str(info.value).endswith(info.value.failure.report())


def test_check_raises_race_found_from_the_workers(cluster: str) -> None:
    with pytest.raises(testing.RaceFound) as info:
        testing.check(SEED["two_binds_win"], schedules=8, scheduler=cluster)
    assert info.value.failure.token.strategy == "pct-d1"  # the first part finds it at once


class _LockedAssertion(AssertionError):
    """A failure whose exception cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


async def lost_update_with_a_locked_assertion(run: testing.Run) -> None:
    count = 0

    async def bump() -> None:
        nonlocal count
        seen = count
        await anyio.lowlevel.checkpoint()
        count = seen + 1

    await run.concurrently(bump, bump)
    if count != 2:
        raise _LockedAssertion(f"lost update: {count}")


def test_a_race_whose_exception_cannot_be_pickled_is_still_reported(cluster: str) -> None:
    result = testing.explore(lost_update_with_a_locked_assertion, schedules=8, scheduler=cluster)
    assert result.failure is not None
    # the nearest built-in class, with the class's name and the message
    assert type(result.failure.error) is AssertionError
    assert str(result.failure.error) == "_LockedAssertion: lost update: 1"
    # the part that found it (PCT at depth 1, seed 0: the event loop's own order, its first
    # schedule, loses the update) gives the same token in one process
    alone = testing.explore(lost_update_with_a_locked_assertion, strategy=testing.PCT(0, depth=1))
    assert alone.failure is not None and result.failure.token == alone.failure.token


def test_a_scenario_that_cannot_be_pickled_is_refused_in_one_line(cluster: str) -> None:
    lock = threading.Lock()

    async def holds_a_lock(run: testing.Run) -> None:
        with lock:
            pass

    with pytest.raises(avcm.InvalidError) as info:
        testing.explore(holds_a_lock, schedules=4, scheduler=cluster)
    assert info.value.errno == errno.EINVAL
    assert "cannot send the work to the workers: cannot pickle '_thread.lock'" in str(info.value)


def test_a_part_that_raises_raises_here(cluster: str) -> None:
    """A scenario that fails before any task runs is its own error, from a worker as in one
    process (no race found)."""
    with pytest.raises(AssertionError, match="bad input must not run"):
        testing.explore(never_run, schedules=4, scheduler=cluster)


def test_conformance_on_workers_is_the_report_of_one_process(cluster: str) -> None:
    from tests.broken_drivers import leaky

    kwargs: dict[str, Any] = {"schedules": 3, "factory_spec": LEAKY}
    with pytest.raises(testing.ConformanceFailure) as parallel:
        testing.check_conformance(leaky, scheduler=cluster, **kwargs)
    with pytest.raises(testing.ConformanceFailure) as alone:
        testing.check_conformance(leaky, **kwargs)

    # the same report (but for the assertion messages: pytest rewrites the driver's asserts
    # in this process, not in the workers)
    def summary(report: testing.ConformanceReport) -> list[tuple[object, ...]]:
        return [
            (r.name, r.schedules, r.failure and (str(r.failure.token), r.failure.timeline.format()))
            for r in report.results
        ]

    assert summary(parallel.value.report) == summary(alone.value.report)


def test_conformance_command_on_workers(cluster: str, capsys: pytest.CaptureFixture[str]) -> None:
    from avcm.testing._cli import main  # avcm-private: the avcm-testing entry point

    status = main(["conformance", LEAKY, "--schedules", "2", "--scheduler", cluster])
    out, err = capsys.readouterr()
    assert status == 1 and "conformance: FAILED" in out, err


def test_the_race_fixture_explores_on_workers(tmp_path: Path) -> None:
    """``--avcm-workers 2`` spreads each race.check over the workers of one local cluster for
    the session; the failure's replay command (``--avcm-replay``, without the cluster)
    replays it in one process."""
    pytest.importorskip("distributed")
    (tmp_path / "test_on_workers.py").write_text(
        "import pytest\n"
        "from tests.races import AVCM, SEED\n\n"
        "@pytest.mark.trio\n"
        "async def test_mismatch(race, autojump_clock):\n"
        f"    await race.check(SEED['{LATE_RACE}'], schedules=200)\n\n"
        "@pytest.mark.trio\n"
        "async def test_no_underflow(race, autojump_clock):\n"
        "    result = await race.check(AVCM['deactivate_underflow'], schedules=40)\n"
        "    assert [p.seed for p in result.parts] == [0, 0, 0, 0]\n"
        "    assert result.strategy == 'portfolio of pct-d1, pct-d2, pct-d3, random'\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}

    def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=tmp_path, env=environment, capture_output=True, text=True, check=False,
            timeout=300,
        )  # fmt: skip

    found = pytest_run("test_on_workers.py", "--avcm-workers", "2")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "1 failed, 1 passed" in found.stdout
    alone = single_process("pct-d2", 0, 50).failure
    assert alone is not None and f"replay token: {alone.token}" in found.stdout
    again = pytest_run("test_on_workers.py::test_mismatch", "--avcm-replay", str(alone.token))
    assert again.returncode == 1, again.stdout
    replayed = f"replayed schedule {alone.token.schedule} (pct-d2, seed 0, trio)"
    assert replayed in again.stdout and f"replay token: {alone.token}" in again.stdout

    bad = pytest_run("test_on_workers.py", "--avcm-workers", "0")
    assert bad.returncode != 0 and "--avcm-workers must be >= 1, not 0" in bad.stdout


def test_an_embedded_local_cluster_by_default() -> None:
    pytest.importorskip("distributed")
    result = testing.explore(SEED["two_binds_win"], schedules=4, workers=2)
    assert result.found and first_failing(result) is result.parts[0]
    assert result.parts[0].strategy == "pct-d1"


# -- bad input: nothing runs -------------------------------------------------------------------


def never_run(run: testing.Run) -> Any:
    raise AssertionError("a scenario that bad input must not run")


class NoSeed(testing.Strategy):
    name, seed = "mine", 0

    def chooser(self, schedule: int) -> testing.Chooser | None:
        raise AssertionError("never asked")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": 0}, avcm.InvalidError, "workers"),
        ({"workers": "2"}, avcm.InvalidError, "workers"),
        ({"workers": 2.5}, avcm.InvalidError, "workers"),
        ({"scheduler": ""}, avcm.InvalidError, "not an address|such as tcp"),
        ({"scheduler": 8786}, avcm.InvalidError, "such as tcp"),
        ({"scheduler": "not an address"}, avcm.InvalidError, "such as tcp"),
        ({"scheduler": "tcp://127.0.0.1"}, avcm.InvalidError, "such as tcp"),  # no port
        ({"workers": testing.MAX_LOCAL_WORKERS + 1}, avcm.InvalidError, "workers must be <="),
        ({"workers": 2, "scheduler": "tcp://h:1"}, avcm.InvalidError, "has its own"),
        ({"workers": 2, "strategy": NoSeed()}, avcm.InvalidError, "cannot be spread"),
        ({"scheduler": "tcp://h:1", "connect_timeout": 0}, avcm.InvalidError, "connect_timeout"),
        ({"workers": 1, "connect_timeout": math.inf}, avcm.InvalidError, "connect_timeout"),
        ({"scheduler": "h:1", "connect_timeout": "5"}, avcm.InvalidError, "connect_timeout"),
        # past what the socket layer takes (2**63: time_t; 10**400: a float)
        ({"scheduler": "h:1", "connect_timeout": 2**63}, avcm.InvalidError, "at most 86400"),
        ({"scheduler": "h:1", "connect_timeout": 10**400}, avcm.InvalidError, "at most 86400"),
        ({"scheduler": "h:1", "connect_timeout": 1e10}, avcm.InvalidError, "at most 86400"),
        # a mistake also where no cluster is used
        ({"connect_timeout": 0}, avcm.InvalidError, "connect_timeout"),
        ({"connect_timeout": math.nan}, avcm.InvalidError, "connect_timeout"),
        # Dask's other protocols need settings avcm does not take
        ({"scheduler": "tls://127.0.0.1:8786"}, avcm.InvalidError, "only tcp:// schedulers"),
        ({"scheduler": "ucx://127.0.0.1:1"}, avcm.InvalidError, "only tcp:// schedulers"),
        ({"scheduler": "wss://127.0.0.1:1"}, avcm.InvalidError, "only tcp:// schedulers"),
        ({"scheduler": "inproc://nothing"}, avcm.InvalidError, "such as tcp"),
    ],
)
def test_bad_workers_or_scheduler_is_refused_before_anything_runs(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        testing.explore(never_run, **kwargs)
    assert isinstance(info.value, avcm.VcmError) and info.value.errno == errno.EINVAL


def test_without_dask_workers_are_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(avcm.NotSupportedError, match=r"pip install 'avcm\[cluster\]'") as info:
        testing.explore(never_run, workers=2)
    assert info.value.errno == errno.EOPNOTSUPP


@pytest.fixture
def refused() -> Iterator[str]:
    """The address of a port where nothing listens (as a closed cluster's scheduler): bound,
    so that nothing else takes it meanwhile, but not listening, so a connection is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{bound.getsockname()[1]}"


@pytest.fixture
def silent() -> Iterator[str]:
    """The address of a server that takes connections (the kernel does, from its backlog) and
    never answers: a stopped scheduler."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


def test_a_refused_connection_is_a_cluster_error_at_once(
    refused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after the connect timeout (Dask's client tries again until then): however long it
    is, Dask's client is not even made."""
    distributed = pytest.importorskip("distributed")

    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("Dask's client tried a refused address")

    monkeypatch.setattr(distributed, "Client", no_client)
    with pytest.raises(testing.ClusterError) as info:
        testing.check(never_run, scheduler=refused, connect_timeout=3600)
    assert info.value.errno == errno.ECONNREFUSED
    assert str(info.value) == (
        f"[ECONNREFUSED] cannot reach the Dask scheduler at {refused}: connection refused"
    )


def test_a_server_that_never_answers_is_a_cluster_error_after_the_connect_timeout(
    silent: str,
) -> None:
    """Dask's client would wait for its handshake forever."""
    pytest.importorskip("distributed")
    with pytest.raises(
        testing.ClusterError, match=r"did not answer Dask.s handshake within 0\.2 s"
    ):
        testing.explore(never_run, scheduler=silent, connect_timeout=0.2)


@pytest.mark.parametrize("given", [None, 0.25, 12])
def test_the_connect_timeout_is_what_dask_s_client_is_given(
    cluster: str, given: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What bounds an address that does not answer at all (packets dropped): Dask's client's
    timeout, ours (:data:`testing.CONNECT_TIMEOUT`, a few seconds) unless one is given."""
    distributed = pytest.importorskip("distributed")
    given_to_dask: list[object] = []

    def timing_out(address: str, **kwargs: object) -> None:
        given_to_dask.append(kwargs.get("timeout"))
        raise OSError(f"Timed out trying to connect to {address} after {kwargs['timeout']} s")

    monkeypatch.setattr(distributed, "Client", timing_out)
    expected = testing.CONNECT_TIMEOUT if given is None else given
    assert 1 <= testing.CONNECT_TIMEOUT <= 10
    with pytest.raises(testing.ClusterError, match=f"no answer within {expected:g} s"):
        testing.explore(never_run, scheduler=cluster, connect_timeout=given)
    assert given_to_dask == [expected]


def test_the_plugin_gives_its_connect_timeout_to_the_cluster(silent: str, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    (tmp_path / "test_silent.py").write_text(
        "import pytest\n"
        "from tests.races import SEED\n\n"
        "@pytest.mark.trio\n"
        "async def test_underflow(race, autojump_clock):\n"
        "    await race.check(SEED['deactivate_underflow'], schedules=20)\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_silent.py",
         "--avcm-scheduler", silent, "--avcm-connect-timeout", "0.2"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "did not answer Dask's handshake within 0.2 s" in run.stdout


@contextlib.contextmanager
def _answering(answer: bytes, *, hold: bool = True) -> Iterator[str]:
    """The address of a TCP server that sends *answer* to each connection, then waits (if
    *hold*) or closes it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        done = threading.Event()

        def serve() -> None:
            server.settimeout(0.2)
            while not done.is_set():
                try:
                    client, _ = server.accept()
                except OSError:
                    continue
                with client:
                    client.sendall(answer)
                    if hold:
                        done.wait(2)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
        finally:
            done.set()
            thread.join()


@pytest.mark.parametrize(
    "length",
    [
        2**62,  # Dask asks for a buffer that long: MemoryError
        2**64 - 1,  # longer than an index can say: OverflowError
    ],
)
def test_a_server_that_is_not_a_dask_scheduler_is_a_cluster_error(length: int) -> None:
    """Its first bytes, read by Dask as the length of a frame to come."""
    pytest.importorskip("distributed")
    with (
        _answering(length.to_bytes(8, "little")) as address,
        pytest.raises(testing.ClusterError, match="is not a Dask scheduler"),
    ):
        testing.check(never_run, scheduler=address, connect_timeout=30)


def test_a_server_that_closes_the_connection_is_not_called_slow() -> None:
    pytest.importorskip("distributed")
    with (
        _answering(b"", hold=False) as address,
        pytest.raises(testing.ClusterError, match="closed it without answering") as info,
    ):
        testing.check(never_run, scheduler=address)
    assert "within" not in str(info.value)


def test_a_scheduler_without_workers_is_a_cluster_error_after_the_connect_timeout() -> None:
    """Parts sent there would wait for a worker for ever."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=0, dashboard_address=":0", silence_logs=logging.CRITICAL
        ) as empty,
        pytest.raises(testing.ClusterError, match=r"has no workers \(none joined within 0.5 s"),
    ):
        testing.check(never_run, scheduler=empty.scheduler_address, connect_timeout=0.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: 0 is not in 1..1_024"),
        (["--workers", "two"], "'two' is not a whole number"),
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
        (["--scheduler", "SILENT", "--connect-timeout", "0.2"], "handshake within 0.2 s"),
        (["--scheduler", "h:1", "--connect-timeout", "nan"], "connect_timeout must be"),
    ],
)
def test_the_command_line_refuses_bad_workers_in_one_line(
    args: list[str], message: str, silent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from avcm.testing._cli import main  # avcm-private: the avcm-testing entry point

    pytest.importorskip("distributed")
    status = main(["conformance", LEAKY, *[silent if a == "SILENT" else a for a in args]])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert message in line


def test_a_script_without_the_main_guard_is_told_what_it_needs(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from avcm import testing\n"
        "from tests.races import SEED\n"
        "testing.explore(SEED['two_binds_win'], schedules=4, workers=1)\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("avcm.testing._errors.ClusterError: [ECONNREFUSED] the local Dask")
    assert "needs the `if __name__ == '__main__':` guard" in last


def test_importing_avcm_and_avcm_testing_imports_no_dask() -> None:
    code = (
        "import sys, avcm, avcm.testing, avcm.testing.pytest_plugin\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert run.stdout.strip() == "[]"
