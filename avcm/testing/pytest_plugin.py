"""pytest integration: a race test in a few lines, replayable from the command line.

Enable it in ``conftest.py`` with ``pytest_plugins = ["avcm.testing.pytest_plugin"]``. The
``race`` fixture explores a scenario in the test's own event loop (a trio test via
pytest-trio, with ``autojump_clock`` so that latency costs nothing; or an anyio test)::

    @pytest.mark.trio
    async def test_two_binds(race, autojump_clock):
        await race.check(two_binds, schedules=2000)

A failure raises :class:`~avcm.testing.RaceFound` with the shrunk timeline and the command
that replays it: ``pytest NODEID --avcm-replay TOKEN``. ``--avcm-schedules N`` overrides the
number of schedules of every ``race.check``; ``--avcm-seed S`` the strategy's seed.
"""

from __future__ import annotations

import shlex

import pytest

from ._errors import RaceFound
from ._explore import Exploration, Limits, Scenario, explore_async, replay_async
from ._strategies import PCT, Strategy

__all__ = ["RaceFixture", "race"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("avcm", "avcm race finder")
    group.addoption(
        "--avcm-replay",
        metavar="TOKEN",
        help="replay this token in race.check instead of exploring",
    )
    group.addoption(
        "--avcm-schedules",
        type=int,
        metavar="N",
        help="schedules per race.check (default: what the test asks for)",
    )
    group.addoption("--avcm-seed", type=int, default=0, metavar="S", help="strategy seed")


class RaceFixture:
    """What the ``race`` fixture gives a test."""

    def __init__(self, config: pytest.Config, nodeid: str) -> None:
        self._replay: str | None = config.getoption("--avcm-replay")
        self._schedules: int | None = config.getoption("--avcm-schedules")
        self._seed: int = config.getoption("--avcm-seed")
        self._nodeid = nodeid

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
        if self._replay is not None:
            failure = await replay_async(scenario, self._replay, limits=limits)
            if failure is not None:
                raise RaceFound(failure)
            return None
        result = await explore_async(
            scenario,
            strategy=strategy or PCT(self._seed),
            schedules=self._schedules or schedules,
            limits=limits,
            command=f"pytest {shlex.quote(self._nodeid)} --avcm-replay {{token}}",
        )
        if result.failure is not None:
            raise RaceFound(result.failure)
        return result


@pytest.fixture
def race(request: pytest.FixtureRequest) -> RaceFixture:
    """Explore scenarios under the controlled scheduler: ``await race.check(scenario)``."""
    return RaceFixture(request.config, request.node.nodeid)
