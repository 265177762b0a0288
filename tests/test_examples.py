"""The examples run as their docstrings say: each script, the race test, the conformance run,
and the stress harness and conformance suite on each example driver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ["examples.page_table_driver", "examples.one_to_one_driver"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("module", DRIVERS)
def test_each_driver_example_runs(module: str, backend: str) -> None:
    done = run("-m", module, "--backend", backend)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "done: nothing leaked"


def test_the_race_test_example_passes() -> None:
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_race.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_the_conformance_example_passes() -> None:
    done = run("-m", "examples.conformance_run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("conformance: passed") == 4


@pytest.mark.parametrize("module", DRIVERS)
def test_the_stress_harness_passes_each_example_driver(module: str, tmp_path: Path) -> None:
    for backend, tasks in (("asyncio", "64"), ("trio", "3")):
        done = run(
            "-m", "stress", "--driver", f"{module}:make", "--ops", "2000", "--quiet",
            "--backend", backend, "--tasks", tasks, "--trace-dir", str(tmp_path),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 violations" in done.stdout


def test_the_page_table_examples_device_side_is_what_the_data_checks_go_through(
    tmp_path: Path,
) -> None:
    # its contexts alone (no carve-out context of the harness's, whose own device views would
    # pass the data checks): a pattern written and read back through its read and write
    report = tmp_path / "report.json"
    done = run(
        "-m", "stress", "--driver", "examples.page_table_driver:make", "--ops", "2000",
        "--contexts", "custom=2", "--tasks", "3", "--quiet", "--trace-dir", str(tmp_path),
        "--json", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())["outcomes"]["data"]
    assert sum(count for outcome, count in data.items() if outcome.startswith("ok ")) > 0, data
