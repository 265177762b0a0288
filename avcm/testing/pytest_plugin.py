"""pytest integration: a race test in a few lines, replayable from the command line.

Installing avcm registers it with pytest (a ``pytest11`` entry point); naming it in a
``conftest.py``'s ``pytest_plugins`` as well does no harm. The ``race`` fixture explores a
scenario in the test's own event loop (a trio test via pytest-trio, with ``autojump_clock`` so
that latency costs nothing; or an anyio test)::

    @pytest.mark.trio
    async def test_two_binds(race, autojump_clock):
        await race.check(two_binds, schedules=2000)

A failure raises :class:`~avcm.testing.RaceFound` with the shrunk timeline and the command
that replays it: ``python -m pytest /path/test.py::test --avcm-replay TOKEN --avcm-check K``
(the K-th ``race.check`` of the test replays the token; the others explore as before).
``--avcm-schedules N`` overrides the number of schedules of every ``race.check``;
``--avcm-seed S`` the strategy's seed. ``--avcm-workers N`` explores on a local Dask cluster of
N processes, ``--avcm-scheduler ADDRESS`` on an existing one (``pip install 'avcm[cluster]'``;
``--avcm-connect-timeout SECONDS`` bounds reaching it, 5 by default):
the schedules spread over the workers as :func:`~avcm.testing.explore` does with *workers*
(without a strategy, a portfolio of PCT and random walk from seed S), and a failure's replay
command is the same, replayed in one process.
"""

from __future__ import annotations

import shlex
from functools import partial
from typing import Any

import anyio.to_thread
import pytest
import sniffio

from ._errors import RaceFound
from ._explore import PYTHON, Exploration, Limits, Scenario, explore_async, replay_async
from ._parallel import Cluster, explore_parallel
from ._strategies import Portfolio, Strategy

__all__ = ["RaceFixture", "race"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("avcm", "avcm race finder")
    group.addoption(
        "--avcm-replay",
        metavar="TOKEN",
        help="replay this token in race.check instead of exploring",
    )
    group.addoption(
        "--avcm-check",
        type=int,
        default=1,
        metavar="K",
        help="with --avcm-replay: which race.check of the test replays (default 1)",
    )
    group.addoption(
        "--avcm-schedules",
        type=int,
        metavar="N",
        help="schedules per race.check (default: what the test asks for)",
    )
    group.addoption("--avcm-seed", type=int, default=0, metavar="S", help="strategy seed")
    group.addoption(
        "--avcm-workers",
        type=int,
        metavar="N",
        help="explore on a local Dask cluster of N worker processes",
    )
    group.addoption(
        "--avcm-scheduler",
        metavar="ADDRESS",
        help="explore on the Dask cluster of this scheduler (tcp://HOST:8786)",
    )
    group.addoption(
        "--avcm-connect-timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait for --avcm-scheduler to answer before giving up (default: 5; "
        "a refused connection fails at once)",
    )


# one cluster for the whole session, made when a check first needs it: a local one takes
# seconds to start
_CLUSTER = pytest.StashKey[Cluster]()


def pytest_unconfigure(config: pytest.Config) -> None:
    cluster = config.stash.get(_CLUSTER, None)
    if cluster is not None:
        cluster.close()


class RaceFixture:
    """What the ``race`` fixture gives a test."""

    def __init__(self, config: pytest.Config, node: str) -> None:
        self._config = config
        self._replay: str | None = config.getoption("--avcm-replay")
        self._replay_check: int = config.getoption("--avcm-check")
        self._schedules: int | None = config.getoption("--avcm-schedules")
        self._seed: int = config.getoption("--avcm-seed")
        self._workers: int | None = config.getoption("--avcm-workers")
        self._scheduler: str | None = config.getoption("--avcm-scheduler")
        if self._schedules is not None and self._schedules < 1:
            raise pytest.UsageError(f"--avcm-schedules must be >= 1, not {self._schedules}")
        if self._workers is not None and self._workers < 1:
            raise pytest.UsageError(f"--avcm-workers must be >= 1, not {self._workers}")
        if self._workers is not None and self._scheduler is not None:
            raise pytest.UsageError(
                "--avcm-workers sizes a local cluster; the cluster at --avcm-scheduler has its own"
            )
        if self._replay_check < 1:
            raise pytest.UsageError(f"--avcm-check must be >= 1, not {self._replay_check}")
        self._node = node
        self._checks = 0

    async def check(
        self,
        scenario: Scenario,
        *,
        strategy: Strategy | None = None,
        schedules: int = 1000,
        limits: Limits | None = None,
    ) -> Exploration | None:
        """Explore *scenario*; raise :class:`RaceFound` on a failure. With ``--avcm-replay``,
        run that token's schedule instead (and return ``None`` if it passes)."""
        self._checks += 1
        command = (
            f"{PYTHON} -m pytest {shlex.quote(self._node)} --avcm-replay {{token}} "
            f"--avcm-check {self._checks}"
        )
        if self._replay is not None and self._checks == self._replay_check:
            failure = await replay_async(scenario, self._replay, limits=limits, command=command)
            if failure is not None:
                raise RaceFound(failure)
            return None
        if self._workers is not None or self._scheduler is not None:
            result = await anyio.to_thread.run_sync(
                partial(
                    self._explore_parallel,
                    scenario,
                    strategy=strategy,
                    schedules=self._schedules or schedules,
                    backend=sniffio.current_async_library(),
                    limits=limits,
                    shrink=True,
                    shrink_budget=500,
                    command=command,
                    on_progress=None,
                    until_covered=None,
                    seed=self._seed,
                )
            )
        else:
            result = await explore_async(
                scenario,
                strategy=strategy or Portfolio(self._seed),
                schedules=self._schedules or schedules,
                limits=limits,
                command=command,
            )
        if result.failure is not None:
            raise RaceFound(result.failure, result)
        return result

    def _explore_parallel(self, scenario: Scenario, **options: Any) -> Exploration:
        """In a worker thread: the event loop of the test goes on meanwhile."""
        cluster = self._config.stash.get(_CLUSTER, None)
        if cluster is None:
            timeout = self._config.getoption("--avcm-connect-timeout")
            cluster = Cluster(self._scheduler, self._workers, connect_timeout=timeout)
            self._config.stash[_CLUSTER] = cluster
        return explore_parallel(
            scenario, workers=self._workers, scheduler=self._scheduler, cluster=cluster, **options
        )


@pytest.fixture
def race(request: pytest.FixtureRequest) -> RaceFixture:
    """Explore scenarios under the controlled scheduler: ``await race.check(scenario)``."""
    # the test's file by its absolute path: the command works from any directory
    node = f"{request.node.path}::{request.node.name}"
    return RaceFixture(request.config, node)
