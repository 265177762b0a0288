"""Proof of power: the race finder finds each of the patch's design races in the seed port,
shrinks it and replays it; avcm passes the very same scenarios under every schedule tried."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from avcm import testing
from avcm.testing.pytest_plugin import RaceFixture
from tests.races import AVCM, AVCM_DEEP, RACES, SEED, SEED_DEEP, fewest_preemptions

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = {"random": testing.RandomWalk, "pct": testing.PCT}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("race", sorted(RACES))
def test_the_seed_race_is_found_shrunk_and_replayed(race: str, strategy: str, backend: str) -> None:
    fewest = fewest_preemptions(SEED[race], backend)
    found = []
    for seed in range(5):
        result = testing.explore(
            SEED[race], strategy=STRATEGIES[strategy](seed), schedules=1000, backend=backend
        )
        failure = result.failure
        assert failure is not None, f"{race} not found in 1000 {strategy} schedules"
        assert isinstance(failure.error, AssertionError)
        assert not isinstance(failure.error, testing.ScheduleFailure)
        found.append(result.schedules)
        # shrunk to the fewest preemptions (most of these races happen in the event loop's
        # own order: none)
        assert failure.timeline.preemptions == fewest, failure.report()
        # replayed: the same steps, the same outcomes
        again = testing.replay(SEED[race], failure.token, backend=backend)
        assert again is not None
        assert again.timeline.steps == failure.timeline.steps
        assert again.timeline.format() == failure.timeline.format()
        assert str(again.error) == str(failure.error)
    # found quickly: a median over seeds, recorded in the README by python -m bench
    assert statistics.median(found) <= 100


@pytest.mark.parametrize("race", sorted(RACES))
def test_the_deep_seed_race_is_found(race: str) -> None:
    """Drivers that take no time, the second task six steps late: found all the same, with
    one preemption at most (the first task taken out of turn runs on ahead until it
    blocks)."""
    for strategy in (testing.PCT(0), testing.Exhaustive(1)):
        result = testing.explore(SEED_DEEP[race], strategy=strategy, schedules=2000)
        assert result.failure is not None, f"{race} not found by {strategy}"
        assert result.failure.timeline.preemptions <= 1


@pytest.mark.parametrize("deep", [False, True], ids=["as written", "deep"])
@pytest.mark.parametrize("race", sorted(RACES))
def test_avcm_passes_every_schedule_up_to_two_preemptions(race: str, deep: bool) -> None:
    scenario = (AVCM_DEEP if deep else AVCM)[race]
    result = testing.explore(
        scenario, strategy=testing.Exhaustive(preemption_bound=2), schedules=100_000
    )
    assert result.failure is None, result.failure and result.failure.report()
    assert result.exhausted


@pytest.mark.parametrize("race", sorted(RACES))
def test_avcm_passes_1000_random_schedules_on_asyncio(race: str) -> None:
    result = testing.explore(
        AVCM[race], strategy=testing.RandomWalk(1), schedules=1000, backend="asyncio"
    )
    assert result.failure is None, result.failure and result.failure.report()


@pytest.mark.trio
@pytest.mark.parametrize("schedules", [1_000, pytest.param(5_000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("race", sorted(RACES))
async def test_avcm_passes_pct_schedules(race: str, schedules: int, autojump_clock: object) -> None:
    result = await testing.explore_async(AVCM[race], strategy=testing.PCT(7), schedules=schedules)
    assert result.failure is None, result.failure and result.failure.report()
    assert result.schedules == schedules


@pytest.mark.trio
async def test_a_race_test_is_a_few_lines(race: RaceFixture, autojump_clock: object) -> None:
    with pytest.raises(testing.RaceFound) as info:
        await race.check(SEED["two_binds_win"], schedules=100)
    assert "--avcm-replay" in info.value.failure.replay_command
    assert await race.check(AVCM["two_binds_win"], schedules=100) is not None


def test_pytest_prints_a_replay_that_pytest_reruns(tmp_path: Path) -> None:
    """The printed command works as printed, from another directory, and replays the check
    that failed (here the second of the test). The plugin comes from its pytest11 entry point:
    the project has no conftest."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_found.py").write_text(
        "import pytest\n"
        "from tests.races import AVCM, SEED\n\n"
        "@pytest.mark.trio\n"
        "async def test_two_binds(race, autojump_clock):\n"
        "    await race.check(AVCM['two_binds_win'], schedules=50)\n"
        "    await race.check(SEED['two_binds_win'], schedules=500)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}

    def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            shell=True,
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    found = shell(f"{sys.executable} -m pytest -q -p no:cacheprovider test_found.py", project)
    assert found.returncode == 1, found.stdout
    replay = re.search(r"replay: (.+ --avcm-replay \S+ --avcm-check 2)$", found.stdout, re.M)
    assert replay is not None, found.stdout
    again = shell(replay[1] + " -p no:cacheprovider", tmp_path)
    assert again.returncode == 1, again.stdout
    timeline = found.stdout[found.stdout.index("step │") : found.stdout.index("replay token:")]
    assert timeline in again.stdout


def test_plugin_named_in_conftest_as_well_as_installed(tmp_path: Path) -> None:
    """A conftest written before the entry point existed still works: naming the plugin again
    is not a second registration."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["avcm.testing.pytest_plugin"]\n')
    (tmp_path / "test_fixture.py").write_text(
        "def test_fixture(race):\n    assert race is not None\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fixture.py"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
