"""The conformance suite: the sample drivers pass it, the deliberately broken ones fail it."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
from pathlib import Path

import pytest

import avcm
import drivers
from avcm import testing
from tests import broken_drivers

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "factory", [drivers.create_iommu, drivers.create_carveout, drivers.create_cpu]
)
def test_the_sample_drivers_conform(factory: testing.Scenario, backend: str) -> None:
    report = testing.check_conformance(factory, backend=backend, schedules=40)
    assert report.passed, report.format()
    assert [result.name for result in report.results] == list(testing.SCENARIOS)
    assert all(result.schedules == 40 for result in report.results)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("factory", "symptom"),
    [
        (broken_drivers.check_then_act, "one-to-one reservations overlap"),
        (broken_drivers.overlapping, "one-to-one reservations overlap"),
        (broken_drivers.forgetful, "stale in hardware"),
        (broken_drivers.leaky, "rule 9"),
        # two contexts on one memory, device accesses
        (broken_drivers.stale_iotlb, "a device access at"),
        (broken_drivers.shared_unit_racy_take, "shared_hardware"),
        (broken_drivers.shared_unit_racy_give, "rule 9"),
    ],
)
def test_broken_drivers_fail(factory: object, symptom: str, backend: str) -> None:
    # a test that only calls check_conformance fails on a broken driver
    with pytest.raises(testing.ConformanceFailure) as info:
        testing.check_conformance(factory, backend=backend, schedules=40)  # type: ignore[arg-type]
    report = info.value.report
    assert not report.passed
    assert str(info.value) == report.format()
    text = report.format()
    assert symptom in text
    assert text.rstrip().endswith("conformance: FAILED")
    assert "avcm.testing._" not in text  # named as the suite names them, no private module
    for failure in report.failures:
        assert failure.scenario.startswith("conformance:")
        assert "replay token: avcm3:" in failure.report()
        # without a MODULE:FACTORY the replay is a call of check_conformance
        name = failure.scenario.removeprefix("conformance:")
        assert failure.replay_command.startswith("avcm.testing.check_conformance(")
        assert f"only={name!r}, replay_token='{failure.token}'" in failure.replay_command


def test_a_factory_that_makes_no_context_is_bad_input() -> None:
    with pytest.raises(avcm.InvalidError, match=r"not an avcm\.Vcm"):
        testing.check_conformance(broken_drivers.not_a_context)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arguments",
    [
        {"schedules": 0},
        {"only": "nonsense"},
        {"replay_token": "avcm3:pct-d3:0:0:00000000:0"},  # a replay names its scenario
        {"backend": "curio"},
    ],
)
def test_bad_arguments_are_einval(arguments: dict[str, object]) -> None:
    with pytest.raises(avcm.InvalidError):
        testing.check_conformance(drivers.create_iommu, **arguments)  # type: ignore[arg-type]


def conformance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avcm.testing", "conformance", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_command_line_replays_what_it_found() -> None:
    failed = conformance("tests.broken_drivers:leaky", "--schedules", "5")
    assert failed.returncode == 1, failed.stderr
    replay = next(line for line in failed.stdout.splitlines() if line.startswith("replay: "))
    command = replay.removeprefix("replay: ")
    assert command.startswith(f"{sys.executable} -m avcm.testing conformance ")
    assert "tests.broken_drivers:leaky" in command and "--replay" in command
    again = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 1, again.stderr
    assert "rule 9" in again.stdout
    # the replay's own report gives the same command back
    assert f"replay: {command}" in again.stdout

    passed = conformance("drivers:create_iommu", "--schedules", "5")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.rstrip().endswith("conformance: passed")
    listed = conformance("--list")
    assert listed.returncode == 0 and "free_racing_bind" in listed.stdout


def test_the_command_line_bad_input() -> None:
    for args in (
        ("tests.broken_drivers:not_a_context",),
        ("tests.nowhere:make",),
        ("drivers:create_iommu", "--scenario", "nonsense"),
        ("drivers:create_iommu", "--schedules", "0"),
    ):
        result = conformance(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("factory", [drivers.create_iommu, drivers.create_carveout])
async def test_rule_8_faults_are_injected_and_contained(factory: object) -> None:
    """The suite's fault injection: the chosen setup call fails before the driver runs, the
    error reaches the caller, and nothing changed."""
    from avcm.testing._conformance import (  # avcm-private: the suite's own injector
        InjectedFault,
        _FaultInjector,
    )

    memory = avcm.PhysicalMemory(size=64 << 20)
    pristine = memory.free_bytes
    vcm = factory(memory)  # type: ignore[operator]
    free_before = memory.free_bytes
    injector = _FaultInjector()
    with avcm.lowlevel.sync_hook(injector):
        for fail_at in (1, 2):
            injector.calls, injector.fail_at = 0, fail_at
            with pytest.raises(InjectedFault) as info:
                await vcm.make_binding(64 << 10)
            assert info.value.errno == errno.EIO
            assert vcm.reservations() == () and vcm.allocations() == ()
            assert memory.free_bytes == free_before
            testing.check_quiescent([vcm])
        injector.fail_at = 0
        res = await vcm.make_binding(64 << 10)
    await res.destroy_binding()
    await vcm.destroy()
    assert memory.free_bytes == pristine


def test_the_command_line_shows_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from avcm.testing._cli import main  # avcm-private: the avcm-testing entry point

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["conformance", "drivers:create_iommu", "--schedules", "3"]) == 0
    total = 3 * len(testing.SCENARIOS)
    assert f"{total}/{total}" in terminal.getvalue()  # every schedule counted, to the end
    assert capsys.readouterr().out.rstrip().endswith("conformance: passed")
