"""Hostile command lines and files: one line and exit 2 before anything runs, never a traceback,
a hang, an echo of megabytes, or a file that chooses code to import."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import stress
from stress._report import TRACE_VERSION

MAX_LINE = 400  # an error line quotes at most ~80 characters of any bad value


def run_stress(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = stress.main(["--quiet", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(status: int, out: str, err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and out == "", (status, out, err[:500])
    assert len(lines) == 1 and "Traceback" not in err, err[:2000]
    assert lines[0].startswith("avcm-stress: error:") and message in lines[0], lines[0][:500]
    assert len(lines[0]) < MAX_LINE, lines[0][:500]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "100000000"], "--tasks must be in 1..10_000"),
        (["--ops", str(10**18)], "--ops must be in"),
        (["--jobs", "100000"], "--jobs must be in 1..256"),
        (["--contexts", "carveout=17"], "--contexts carveout must be in 0..12"),
        (["--contexts", "iommu=1000000"], "--contexts iommu must be in 0..64"),
        (["--contexts", "iommu=40,cpu=40"], "--contexts must name 1..64 contexts"),
        (["--contexts", "iommu=1,iommu=2"], "names a kind twice"),
        (["--seed", "9" * 5000], "--seed"),
        (["--seed", str(2**70)], "--seed must be in"),
        (["--check-every", "0"], "--check-every"),
        (["--faults", "nan"], "--faults"),
        (["--tasks", "x" * 100_000], "--tasks"),
        (["--stall-timeout", "-1"], "--stall-timeout must be 0 (never) or more seconds, not -1"),
        (["--stall-timeout", "nan"], "--stall-timeout must be 0 (never) or more seconds"),
        (["--stall-timeout", "inf"], "--stall-timeout must be 0 (never) or more seconds"),
        (["--stall-timeout", "soon"], "--stall-timeout"),
    ],
)
def test_command_line_bounds(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert_refused(*run_stress(capsys, *args), message)


def _settings(**changes: Any) -> dict[str, Any]:
    settings = stress.StressConfig(ops=300).to_json()
    settings.update(changes)
    return settings


def write_trace(path: Path, config: Any, trace: Any = None) -> Path:
    document = {"version": TRACE_VERSION, "config": config, "violation": None, "trace": trace or []}
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latency": "bogus"}, "--latency must be one of"),
        ({"weights": [["alloc", 0], ["free", 0]]}, "at least one operation"),
        ({"weights": [["alloc", 10**30]]}, "weights alloc must be in 0..1_000_000"),
        ({"weights": [["teleport", 1]]}, "unknown operation 'teleport'"),
        ({"weights": [["alloc", 1.5]]}, "weights alloc must be a whole number"),
        ({"weights": "alloc"}, "weights must be a list"),
        ({"tasks": 1.5}, "--tasks must be a whole number"),
        ({"tasks": True}, "--tasks must be a whole number"),
        ({"tasks": 10**18}, "--tasks must be in"),
        ({"ops": 10**18}, "--ops must be in"),
        ({"seed": "0"}, "--seed must be a whole number"),
        ({"contexts": [["carveout", 20]]}, "--contexts carveout must be in 0..12"),
        ({"contexts": [["iommu", 1000000]]}, "--contexts iommu must be in 0..64"),
        ({"contexts": [["iommu", 1, 2]]}, "not a [name, count] pair"),
        ({"contexts": [["gpu", 1]]}, "unknown kind 'gpu'"),
        ({"faults": "0.1"}, "--faults must be a number"),
        ({"cancel": 1e308 * 10}, "--cancel"),
        ({"duration": -1}, "--duration"),
        ({"clock": ["virtual"]}, "--clock"),
        ({"backend": "x" * 10_000_000}, "--backend must be one of"),
        ({"driver": 5, "contexts": [["custom", 1]]}, "--driver must be MODULE:FACTORY"),
        ({"x" * 1000: 1}, "unknown settings"),
    ],
)
def test_hostile_replay_settings_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = write_trace(tmp_path / "bad.trace.json", _settings(**changes))
    assert_refused(*run_stress(capsys, "--replay", str(path)), message)


def test_deeply_nested_replay_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "deep.trace.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert_refused(*run_stress(capsys, "--replay", str(path)), "nested too deeply")


def test_a_replay_file_never_chooses_code_to_import(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # `this` prints the Zen of Python when imported: it must not be
    config = _settings(driver="this:nothing", contexts=[["custom", 1]])
    path = write_trace(tmp_path / "custom.trace.json", config)
    status, out, err = run_stress(capsys, "--replay", str(path))
    assert "Zen" not in out + err
    assert_refused(status, out, err, "pass --driver with that driver")
    status, out, err = run_stress(capsys, "--replay", str(path), "--driver", "other:factory")
    assert_refused(status, out, err, "--driver is 'other:factory'")


def test_driver_on_the_command_line_for_a_sample_trace_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_trace(tmp_path / "sample.trace.json", _settings())
    status, out, err = run_stress(capsys, "--replay", str(path), "--driver", "this:nothing")
    assert "Zen" not in out + err
    assert_refused(status, out, err, "recorded with the sample drivers")


def test_a_custom_driver_trace_replays_with_its_driver(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    driver = "tests.broken_drivers:leaky"
    status, out, _ = run_stress(capsys, "--driver", driver, "--trace-dir", str(tmp_path))
    assert status == 1, out
    (trace,) = tmp_path.glob("*.trace.json")
    assert f"--driver {driver}" in out  # the printed replay command names it
    status, out, _ = run_stress(capsys, "--replay", str(trace), "--driver", driver)
    assert status == 1 and "reproduced the recorded violation" in out, out


# -- avcm.testing and bench ---------------------------------------------------------------------

TOKEN = "avcm7:pct-d3:7:12:1a2b3c4d:0x3.1.2x5"


def run_testing(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from avcm.testing._cli import main  # avcm-private: the avcm-testing entry point

    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line(err: str, prefix: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[:2000]
    assert lines[0].startswith(prefix) and message in lines[0], lines[0][:500]
    assert len(lines[0]) < MAX_LINE, lines[0][:500]


@pytest.mark.parametrize(
    "token",
    [
        "avcm7:pct-d3:" + "9" * 5000 + ":12:1a2b3c4d:0x3",
        "avcm7:pct-d3:7:" + "9" * 5000 + ":1a2b3c4d:0x3",
        "avcm7:pct-d3:7:12:1a2b3c4d:" + "9" * 5000,
        "avcm7:pct-d3:7:12:1a2b3c4d:0x" + "9" * 5000,
        "avcm" + "9" * 100_000 + ":x",
    ],
)
def test_tokens_with_huge_numbers_are_token_errors(
    capsys: pytest.CaptureFixture[str], token: str
) -> None:
    from avcm.testing import ReplayToken, TokenError

    with pytest.raises(TokenError):
        ReplayToken.parse(token)
    status, out, err = run_testing(capsys, "replay", "os:getcwd", token)
    assert status == 2 and out == ""
    assert_one_line(err, "avcm.testing:", "replay token")


def test_a_scenario_with_the_wrong_signature_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a function that is no async function is refused without being called
    status, out, err = run_testing(capsys, "replay", "os:getcwd", TOKEN)
    assert status == 2 and out == ""
    assert_one_line(err, "avcm.testing:", "is not a scenario (an async function)")


@pytest.mark.parametrize(
    "args",
    [
        ["conformance", "drivers:create_iommu", "--schedules", "100000000000"],
        ["conformance", "drivers:create_iommu", "--schedules", "0"],
        ["conformance", "drivers:create_iommu", "--seed", "9" * 5000],
        ["conformance", "drivers:create_iommu", "--backend", "curio"],
        ["replay", "x" * 100_000, TOKEN],
    ],
)
def test_testing_command_line_bounds(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    status, out, err = run_testing(capsys, *args)
    assert status == 2 and out == ""
    assert_one_line(err, "avcm.testing:", "")


def test_bench_checks_its_json_path_before_the_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import _cli

    def measure(*args: object) -> Any:
        raise AssertionError("measured before the output path was checked")

    monkeypatch.setattr(_cli, "measure", measure)
    for path in (tmp_path / "missing" / "x.json", tmp_path):
        assert _cli.main(["--quick", "--json", str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert_one_line(captured.err, "bench: error: --json", "")


def _interrupt(*args: object, **kwargs: object) -> Any:
    raise KeyboardInterrupt


def _interrupt_in_a_group(*args: object, **kwargs: object) -> Any:
    raise BaseExceptionGroup("from a task group", [KeyboardInterrupt()])


@pytest.mark.parametrize("raiser", [_interrupt, _interrupt_in_a_group])
@pytest.mark.parametrize("command", ["bench", "conformance", "replay"])
def test_ctrl_c_is_one_line_and_exit_130_in_every_command(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    raiser: Callable[..., Any],
) -> None:
    # where each command spends its time, interrupted (a real SIGINT is tested for stress)
    from avcm.testing import _cli, _conformance  # avcm-private: where the commands spend time
    from bench import _cli as bench_cli

    if command == "bench":
        monkeypatch.setattr(bench_cli, "measure", raiser)
        status = bench_cli.main(["--quick"])
        prefix = "bench:"
    elif command == "conformance":
        monkeypatch.setattr(_conformance, "check_conformance", raiser)
        status = _cli.main(["conformance", "drivers:create_iommu"])
        prefix = "avcm.testing:"
    else:
        monkeypatch.setattr(_cli, "replay", raiser)
        status = _cli.main(["replay", "tests.races:seed_two_binds_win", TOKEN])
        prefix = "avcm.testing:"
    captured = capsys.readouterr()
    assert status == 130
    assert_one_line(captured.err, prefix, "interrupted")


def test_a_duration_run_stops_at_the_operation_bound(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # every operation keeps about 1 KB: a long --duration must not grow without end
    from stress import _workload

    monkeypatch.setattr(_workload, "MAX_OPS", 120)
    status, out, _ = run_stress(capsys, "--duration", "3600", "--latency", "zero")
    assert status == 0 and ": 120 ops, 0 violations" in out, out
