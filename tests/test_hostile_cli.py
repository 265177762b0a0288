"""Hostile command lines and files: one line and exit 2 before anything runs, never a traceback,
a hang, an echo of megabytes, or a file that chooses code to import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import stress

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
    document = {"version": 2, "config": config, "violation": None, "trace": trace or []}
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
        ({"contexts": [["gpu", 1]]}, "unknown context kind"),
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
