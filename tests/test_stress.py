"""The stress harness: broken drivers are caught, correct ones pass, runs replay, bad input is
refused in one line. Runs in-process through ``stress.main`` on both backends."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import stress
from stress._report import TRACE_VERSION
from tests import tricky_drivers
from tests._interrupting import ctrl_c_as_on_a_terminal, interrupt_stress

BACKENDS = ["asyncio", "trio"]
REPO = Path(stress.__file__).resolve().parents[1]


def run_stress(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = stress.main(["--quiet", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error_line(err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert lines[0].startswith("avcm-stress: error:")


def record(capsys: pytest.CaptureFixture[str], trace_dir: Path, *args: str) -> Path:
    """Run into a violation and return the trace file it wrote."""
    status, out, _ = run_stress(capsys, *args, "--trace-dir", str(trace_dir))
    assert status == 1, out
    (trace,) = trace_dir.glob("*.trace.json")
    return trace


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that the progress bar is drawn."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("driver", "description"),
    [
        ("check_then_act", "overlap at"),
        ("overlapping", "overlap at"),
        ("forgetful", "stale"),  # a probe after unbind, or the model check
        ("leaky", "bytes of physical memory leaked"),
    ],
)
def test_broken_driver_is_caught(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backend: str, driver: str, description: str
) -> None:
    status, out, _ = run_stress(
        capsys,
        "--backend", backend,
        "--driver", f"tests.broken_drivers:{driver}",
        "--trace-dir", str(tmp_path),
    )  # fmt: skip
    assert status == 1
    assert "VIOLATION" in out and description in out
    assert f"replay: {shlex.quote(sys.executable)} -m stress --replay" in out
    assert list(tmp_path.glob("*.trace.json"))
    # each line once: reservations overlapping at one address are not listed per pair
    lines = out.splitlines()
    assert len(lines) == len(set(lines)), out


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_group_from_a_driver_is_named_as_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backend: str
) -> None:
    """A driver's ETIMEDOUT inside its own task group reaches avcm as an ExceptionGroup: an
    error the contract does not allow, named as the group it is, not as its one errno (which
    the harness allows a driver, and which would read as refused)."""
    args = ["--backend", backend, "--driver", "tests.broken_drivers:grouped_timeout"]
    status, out, _ = run_stress(capsys, *args, "--trace-dir", str(tmp_path))
    assert status == 1, out
    assert "errors" in out and "raised an exception group, not an OSError" in out
    assert "TimeoutError(110, 'page acknowledgement timed out')" in out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [["--faults", "0.05"], ["--cancel", "0.1"], []])
def test_sample_drivers_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backend: str, options: list[str]
) -> None:
    report = tmp_path / "report.json"
    status, out, _ = run_stress(
        capsys, "--backend", backend, "--ops", "4000", "--json", str(report), *options
    )
    assert status == 0, out
    data = json.loads(report.read_text())
    assert data["violation"] is None and data["ops"] == 4000
    assert data["checks"]["final"] == 1 and data["checks"]["rule 4 model"] > 0
    outcomes = data["outcomes"]
    if "--faults" in options:
        assert any(k.startswith("fault") for op in outcomes.values() for k in op)
    if "--cancel" in options:
        assert any("cancelled" in op for op in outcomes.values())


def test_third_party_driver_passes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_stress(
        capsys, "--driver", "tests.broken_drivers:correct_iommu", "--ops", "3000"
    )
    assert status == 0, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backend: str
) -> None:
    reports = []
    for attempt in range(2):
        path = tmp_path / f"run{attempt}.json"
        args = ["--backend", backend, "--seed", "11", "--ops", "3000", "--json", str(path)]
        assert run_stress(capsys, *args)[0] == 0
        reports.append(json.loads(path.read_text()))
    assert reports[0]["outcomes"] == reports[1]["outcomes"]
    assert reports[0]["checks"] == reports[1]["checks"]
    other = tmp_path / "other.json"
    args = ["--backend", backend, "--seed", "12", "--ops", "3000", "--json", str(other)]
    assert run_stress(capsys, *args)[0] == 0
    assert json.loads(other.read_text())["outcomes"] != reports[0]["outcomes"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_reproduces_a_violation(tmp_path: Path, backend: str) -> None:
    # recorded and replayed as a user would, in processes of their own: pytest imports
    # Hypothesis, which changes how trio schedules (a recording made here is replayed here)
    args = ["--backend", backend, "--driver", "tests.broken_drivers:forgetful"]
    recorded = subprocess.run(
        [sys.executable, "-m", "stress", "--quiet", *args, "--trace-dir", str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert recorded.returncode == 1, recorded.stderr
    # the printed command, as printed: this interpreter, copy-pasteable
    lines = recorded.stdout.splitlines()
    (command,) = [line.removeprefix("replay: ") for line in lines if line.startswith("replay:")]
    argv = shlex.split(command)
    assert argv[0] == sys.executable
    replay = subprocess.run(
        [*argv, "--quiet"], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert replay.returncode == 1, replay.stderr
    assert "reproduced the recorded violation" in replay.stdout
    assert "DIVERGED" not in replay.stdout and "NOT REPRODUCED" not in replay.stdout


@pytest.mark.parametrize("edit", ["description", "operation"])
def test_replay_that_does_not_reproduce_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edit: str
) -> None:
    trace = record(capsys, tmp_path, "--driver", "tests.broken_drivers:forgetful")
    document = json.loads(trace.read_text())
    if edit == "description":  # same rule, other details
        document["violation"]["description"] += " (not this one)"
    else:
        document["trace"][10]["result"] = "EDITED"
    trace.write_text(json.dumps(document))
    status, out, _ = run_stress(
        capsys, "--replay", str(trace), "--driver", "tests.broken_drivers:forgetful"
    )
    assert status == 3, out
    assert "NOT REPRODUCED" in out and "reproduced the recorded violation" not in out
    if edit == "operation":
        assert "REPLAY DIVERGED: operation 11" in out
    # recorded by this code: nothing to say about other code
    assert "recorded by other code" not in out


def test_a_replay_by_other_code_says_so_when_it_does_not_reproduce(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Reported (attack39): a trace recorded before a change of the harness that moved the runs
    # of a seed, with the same trace version, replayed as "diverged", with nothing saying why
    from stress._report import harness_code

    trace = record(capsys, tmp_path, "--driver", "tests.broken_drivers:forgetful")
    document = json.loads(trace.read_text())
    assert document["code"] == harness_code() and len(harness_code()) == 12
    document["code"] = "0" * 12
    trace.write_text(json.dumps(document))
    driver = ("--driver", "tests.broken_drivers:forgetful")
    status, out, _ = run_stress(capsys, "--replay", str(trace), *driver)
    assert status == 1 and "recorded by other code" not in out, out  # it reproduced: no word
    document["trace"][10]["result"] = "EDITED"
    trace.write_text(json.dumps(document))
    status, out, _ = run_stress(capsys, "--replay", str(trace), *driver)
    assert status == 3, out
    said = "recorded by other code of avcm, its sample drivers or this harness"
    assert f"{said} (000000000000; this is {harness_code()})" in out


def test_a_crash_replayed_after_the_driver_s_lines_moved_is_the_same_violation() -> None:
    """A crash's violation quotes its traceback: a print added above the failing line (to
    debug it) moves the line numbers, not the violation. Any other difference is one."""
    from stress._replay import Recording, verdict

    def crash(line: int, where: str = "drv.py") -> str:
        return (
            f"bind raised KeyError(7)\nTraceback (most recent call last):\n"
            f'  File "/src/{where}", line {line}, in bind\n    del self.table[vaddr]\n'
        )

    recording = Recording(stress.StressConfig(), [], {"rule": "errors", "description": crash(40)})
    for found, same in [(crash(40), True), (crash(42), True), (crash(40, "other.py"), False)]:
        reproduced, lines = verdict(
            recording, stress.RunResult(violation=stress.Violation("errors", found))
        )
        assert reproduced is same, lines


def test_replay_of_a_duration_run_runs_the_recorded_operations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the leak is found at the end, after the time is up: the op count is the clock's doing
    # (0.3 s ran out before the first operation on a loaded machine: no leak to find)
    args = ["--driver", "tests.broken_drivers:leaky", "--duration", "1"]
    trace = record(capsys, tmp_path, *args)
    operations = len(json.loads(trace.read_text())["trace"])
    status, out, _ = run_stress(capsys, "--replay", str(trace), args[0], args[1])
    assert status == 1, out
    assert f": {operations:,} ops, 1 violation" in out
    assert "reproduced the recorded violation" in out and "DIVERGED" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "curio"], "--backend"),
        (["--tasks", "0"], "--tasks"),
        (["--faults", "-0.1"], "--faults"),
        (["--cancel", "2"], "--cancel"),
        (["--ops", "ten"], "--ops"),
        (["--contexts", "gpu=1"], "unknown kind 'gpu'"),
        (["--driver", "no_such_module:factory"], "cannot import"),
        (["--driver", "tests.broken_drivers:missing"], "no callable"),
        (["--driver", "tests.broken_drivers:not_a_context"], "not an avcm.Vcm"),
        # was a rule-5 violation of the driver (exit 1): one context counted twice
        (["--driver", "tests.broken_drivers:same_context"], "returned the same context twice"),
        (["--driver", "nocolon"], "MODULE:FACTORY"),
        (["--replay", "/nonexistent/trace.json"], "not a stress trace file"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "inf"], "--duration"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "0"], "--duration"),
        (["--contexts", "custom=1"], "needs --driver"),
        (
            ["--driver", "tests.broken_drivers:correct_iommu", "--contexts", "iommu=1"],
            "--contexts iommu=1 has no custom=N",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out, err = run_stress(capsys, *args)
    assert status == 2 and out == ""
    assert_one_error_line(err, message)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("json in a missing directory", "no such directory"),
        ("json is a directory", "is a directory"),
        ("trace dir is a file", "is not a directory"),
        ("trace dir under a file", "a file"),
    ],
)
def test_bad_output_path_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str, message: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    option = {
        "json in a missing directory": ["--json", str(tmp_path / "missing" / "report.json")],
        "json is a directory": ["--json", str(tmp_path)],
        "trace dir is a file": ["--trace-dir", str(a_file)],
        "trace dir under a file": ["--trace-dir", str(a_file / "traces")],
    }[where]
    # a run that finds a violation, so that a trace would be written
    args = ["--driver", "tests.broken_drivers:leaky", "--ops", "300", *option]
    status, out, err = run_stress(capsys, *args)
    assert status == 2 and out == ""  # refused before anything ran
    assert_one_error_line(err, message)


def _trace_file(**changes: Any) -> dict[str, Any]:
    document = {
        "version": TRACE_VERSION,
        "config": stress.StressConfig(ops=300).to_json(),
        "violation": None,
        "trace": [],
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"config": {}}, "no 'trace' list"),
        ({k: v for k, v in _trace_file().items() if k != "version"}, "trace version None"),
        (_trace_file(version=1), "trace version 1"),
        ([], "not an object"),
        (_trace_file(config=5), "'config'"),
        ({k: v for k, v in _trace_file().items() if k != "trace"}, "'trace'"),
        (_trace_file(trace=5), "'trace'"),
        (_trace_file(trace=[{}]), "trace entry 1 has no int 'task'"),
        (_trace_file(trace=[5]), "trace entry 1 is not an object"),
        (_trace_file(violation="rule 4"), "'violation'"),
        (_trace_file(violation={"rule": "rule 4"}), "'violation'"),
        (_trace_file(config={"ops": "many"}), "--ops must be a whole number"),
        (_trace_file(config={"contexts": [1]}), "not a [name, count] pair"),
        (_trace_file(config={"duration": math.nan}), "--duration"),
        (_trace_file(config={"colour": "red"}), "unknown settings"),
    ],
)
def test_malformed_replay_file_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, document: Any, message: str
) -> None:
    path = tmp_path / "bad.trace.json"
    path.write_text(json.dumps(document))
    status, out, err = run_stress(capsys, "--replay", str(path))
    assert status == 2 and out == ""
    assert_one_error_line(err, message)


def test_driver_module_in_the_current_directory(tmp_path: Path) -> None:
    # the avcm-stress console script runs with its own directory on sys.path, not the current
    # one (python -m adds that): a script in another directory does the same
    work, scripts = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    scripts.mkdir()
    (work / "mydriver.py").write_text(
        "import drivers\n\ndef make(memory):\n    return drivers.create_iommu(memory)\n"
    )
    script = scripts / "avcm-stress"
    script.write_text("import sys\nfrom stress._cli import main\nsys.exit(main())\n")
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(script), "--quiet", "--driver", "mydriver:make", "--ops", "300"],
        capture_output=True,
        text=True,
        check=False,
        cwd=work,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "300 ops, 0 violations" in result.stdout


def test_help_and_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stress", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "3 a --replay that did not reproduce" in " ".join(result.stdout.split())
    for option in ("--backend", "--seed", "--tasks", "--ops", "--duration", "--contexts",
                   "--latency", "--faults", "--cancel", "--driver", "--json", "--replay",
                   "--jobs", "--quiet"):  # fmt: skip
        assert option in result.stdout


def test_jobs_run_seeds_in_parallel(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    status, _, _ = run_stress(capsys, "--jobs", "2", "--ops", "1500", "--json", str(path))
    assert status == 0
    reports = json.loads(path.read_text())
    assert [r["config"]["seed"] for r in reports] == [0, 1]


def test_jobs_report_each_violation(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["--jobs", "2", "--driver", "tests.broken_drivers:leaky", "--ops", "500"]
    status, out, err = run_stress(capsys, *args, "--trace-dir", str(tmp_path))
    assert status == 1, err
    assert out.count("VIOLATION at operation") == 2 and "leaked" in out
    assert "seed 0, backend asyncio" in out and "seed 1, backend asyncio" in out
    assert out.count("replay: ") == 2
    assert len(list(tmp_path.glob("*.trace.json"))) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_bar_does_not_change_the_run(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    config = stress.StressConfig(backend=backend, seed=3, ops=3000)
    piped = stress.run(config, show_progress=True)  # not a terminal: no bar
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    shown = stress.run(config, show_progress=True)
    assert shown.trace == piped.trace
    assert "3000/3000" in terminal.getvalue()  # the bar was drawn, to the end


@pytest.mark.parametrize("duration", [1e-6, 0.3], ids=["over before the first op", "0.3 s"])
def test_duration_run_shows_a_progress_bar(
    monkeypatch: pytest.MonkeyPatch, duration: float
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = stress.run(stress.StressConfig(duration=duration), show_progress=True)
    assert result.violation is None
    # the last state is drawn, with the count, whether or not the run got to its first update
    assert f"{result.ops:,} ops" in terminal.getvalue() and "stress" in terminal.getvalue()


@pytest.mark.parametrize(
    "args", [["--backend", "asyncio"], ["--backend", "trio"], ["--jobs", "2"]], ids=" ".join
)
def test_ctrl_c_prints_one_line_and_exits_130(args: list[str]) -> None:
    command = ["--quiet", "--ops", "1000000", "--driver", "tests.broken_drivers:announced_iommu"]
    command += ["--contexts", "custom=1", *args]
    # into the operations (any later moment is as good)
    status, out, err = interrupt_stress(command, ready=2 if "--jobs" in args else 1)
    assert status == 130, err
    assert err == "avcm-stress: interrupted\n" and out == ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_waits_for_a_checkpoint(backend: str) -> None:
    # trio's default raises KeyboardInterrupt in whatever unprotected code the signal finds,
    # anyio's cancel-scope exit included, which corrupts trio's state (TrioInternalError)
    command = [sys.executable, "-m", "stress", "--quiet", "--ops", "1000000"]
    command += ["--backend", backend, "--driver", "tests.broken_drivers:self_interrupting_iommu"]
    command += ["--contexts", "custom=1"]  # one driver, so one Ctrl-C
    process = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120,
        preexec_fn=ctrl_c_as_on_a_terminal,
    )  # fmt: skip
    assert process.returncode == 130, process.stderr
    assert process.stderr == "write went on after Ctrl-C\navcm-stress: interrupted\n"
    assert process.stdout == ""


def test_quiet_clean_run_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_stress(capsys, "--ops", "500")
    assert status == 0 and err == ""
    assert out.splitlines() == ["avcm stress: backend=asyncio seed=0: 500 ops, 0 violations"]


@pytest.fixture(scope="module", params=BACKENDS)
def default_run(request: pytest.FixtureRequest) -> stress.RunResult:
    return stress.run(stress.StressConfig(backend=request.param, ops=4000, check_every=50))


def test_quiescent_checks_counted_when_run(default_run: stress.RunResult) -> None:
    checks = default_run.checks
    # every check of the quiescent state (the final one too, and the one again after a context
    # was destroyed alone) looks at each context's count once
    again = checks["one context destroyed alone and built anew"]
    assert again >= 1
    assert checks["rule 3 count"] == 3 * (checks["quiescent"] + checks["final"] + again)


def test_a_run_result_repr_is_a_summary_not_its_trace(default_run: stress.RunResult) -> None:
    # asyncio repr's the main task's result when its run ends: a repr that spelled out every
    # outcome cost time in proportion to the run
    assert repr(default_run) == "<RunResult 4000 operations, no violation>"
    violated = stress.RunResult(ops=3, violation=stress.Violation("rule 4", "stale"))
    assert repr(violated) == "<RunResult 3 operations, rule 4 violated>"


def test_quiescent_checks_every_n_operations(default_run: stress.RunResult) -> None:
    assert 4000 // 50 - 2 <= default_run.checks["quiescent"] <= 4000 // 50


def test_latency_is_the_operation_own(default_run: stress.RunResult) -> None:
    # data is synchronous: no (virtual) time passes in it, waiting for a check is not counted
    assert max(default_run.latencies["data"]) == 0.0
    assert max(default_run.latencies["activate"]) > 0.0


def test_traces_of_different_runs_do_not_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for driver in ("forgetful", "leaky"):
        args = ["--driver", f"tests.broken_drivers:{driver}", "--trace-dir", str(tmp_path)]
        assert run_stress(capsys, *args)[0] == 1
    assert len(list(tmp_path.glob("*.trace.json"))) == 2


def test_harness_does_not_import_hypothesis() -> None:
    # importing Hypothesis makes trio's scheduling deterministic process-wide
    code = "import sys, stress, stress._cli; assert 'hypothesis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_and_cancel_act_on_a_driver_under_test(backend: str) -> None:
    """--faults and --cancel reach a driver the harness did not write, also one that takes no
    time: faults at the sync points before its setup calls, cancellations by steps."""
    config = stress.StressConfig(
        backend=backend, driver="examples.page_table_driver:make", contexts=(("custom", 2),),
        ops=2000, faults=0.05, cancel=0.1,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None, result.violation
    outcomes = [outcome for per_op in result.outcomes.values() for outcome in per_op.elements()]
    assert any(outcome.startswith("fault") for outcome in outcomes)
    assert "cancelled" in outcomes


def test_replay_refuses_options_it_would_ignore(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    driver = ["--driver", "tests.broken_drivers:leaky"]
    path = record(capsys, tmp_path, *driver, "--ops", "300")
    for given in (["--seed", "5"], ["--backend", "trio", "--tasks", "3"], ["--seed", "0"]):
        status, out, err = run_stress(capsys, "--replay", str(path), *driver, *given)
        assert status == 2 and out == ""
        named = ", ".join(option for option in given if option.startswith("--"))
        assert_one_error_line(err, f"--replay runs the trace's own settings: {named} would be")
    # what does not shape the run is welcome
    assert run_stress(capsys, "--replay", str(path), *driver, "--trace-dir", str(tmp_path))[0] == 1


def test_output_into_a_closed_pipe_is_exit_141_without_a_traceback() -> None:
    # `python -m stress | head -1`: the reader is gone before the table is written (here it
    # is gone from the start, so the test does not depend on timing)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "stress", "--ops", "300"], cwd=REPO, stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks", [1, 3, 64])
@pytest.mark.parametrize("driver", ["flaky", "flaky_teardown", "honest"])
def test_correct_drivers_that_fail_or_fault_their_own_way_pass(
    driver: str, tasks: int, backend: str
) -> None:
    """A driver call that fails with a plain OSError (also in the harness's own drains and
    its release at the end of each task, which retry it; a teardown call too), a status that
    shows a driver call's state while it runs, a device fault that is no VcmError: all
    allowed, no violation."""
    config = stress.StressConfig(
        backend=backend, driver=f"tests.tricky_drivers:{driver}", contexts=(("custom", 2),),
        tasks=tasks, ops=2500, drain_every=1000,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None, result.violation
    if driver.startswith("flaky"):
        outcomes = [o for per_op in result.outcomes.values() for o in per_op.elements()]
        assert "driver EIO" in outcomes
        assert result.checks["drain"] >= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks", [1, 3, 64])
def test_a_driver_refusing_what_is_bound_is_still_switched_on_and_checked(
    tasks: int, backend: str
) -> None:
    """A unit with no scatter-gather refuses to switch on while a phys of many parts is bound
    (rule 8). The harness then unbinds what was bound since the context was last on (one
    binding if nothing was), and a drain's cold start switches it on again till it gets
    through: else a context stays off for most of the run, and a quarter of the drains'
    cold starts were skipped."""
    config = stress.StressConfig(
        backend=backend, driver="tests.tricky_drivers:no_scatter_gather",
        contexts=(("custom", 2),), tasks=tasks, ops=2500, drain_every=1000,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None, result.violation
    assert result.checks["bindings shed: the driver refused to switch on with them"] > 0
    assert result.checks["cold start"] > 0
    assert result.checks["cold start skipped (activate kept failing)"] == 0


UNDO_FAILED = r"avcm's undo of .* failed too .*partial effects"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks", [1, 3, 64])
def test_what_follows_an_undo_the_driver_failed_is_not_judged_till_the_run_starts_over(
    tasks: int, backend: str
) -> None:
    # Reported (attack11 F2b): a driver whose teardown calls may fail (rule 8) was reported a
    # rule-4 violation under --faults: an injected fault made avcm undo, the undo's teardown
    # call failed, and the hardware was left half done, which the contract says no framework
    # can contain. Then the run stopped there with no verdict (attacks 55-57: such drivers
    # never got one). Now nothing is judged from there to the next quiescent point, where the
    # harness starts over on new memory, and the run goes on to its end.
    config = stress.StressConfig(
        backend=backend, driver="tests.tricky_drivers:flaky_teardown", contexts=(("custom", 2),),
        tasks=tasks, ops=5000, faults=0.05,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None, result.violation
    assert result.no_verdict is None, result.no_verdict
    assert result.ops == 5000 and len(result.unjudged) > 1
    last = 0
    for first, end, why in result.unjudged:
        # (operations are numbered before they wait for a window: one numbered in a window
        # may run in the next, after a start-over, so windows by number may overlap)
        assert first <= end and last <= end, result.unjudged
        assert re.search(UNDO_FAILED, why), why
        last = end
    started_over = result.checks["started over on new memory after an undo failed"]
    assert started_over in (len(result.unjudged), len(result.unjudged) - 1)  # (the last: the end)
    judged = [outcome for outcome in result.trace if outcome.result == "not judged"]
    assert all(
        any(first <= outcome.seq <= end for first, end, _ in result.unjudged) for outcome in judged
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_contexts_left_behind_at_a_start_over_are_destroyed(backend: str) -> None:
    # What contexts on other memory share with them (a unit of the driver's module, a pool of
    # ids, a power count) is given back: kept, a power count shared by every context never
    # came back to zero, and its lost update went unfound (attack63).
    tricky_drivers.MADE.clear()
    config = stress.StressConfig(
        backend=backend, driver="tests.tricky_drivers:flaky_teardown_kept",
        contexts=(("custom", 2),), tasks=3, ops=3000, faults=0.05,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None and result.no_verdict is None
    started_over = result.checks["started over on new memory after an undo failed"]
    assert started_over > 0
    # Left live: only those whose destroy the hardware left half done never lets through
    # (each start-over left two before; the final teardown destroys the last two).
    left = [vcm for vcm in tricky_drivers.MADE if not vcm.destroyed]
    assert len(left) < started_over, (len(left), started_over)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bug_after_undos_that_failed_is_still_found_and_replays(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backend: str
) -> None:
    # the driver forgets one page removal in 31 (a stale translation), and its page clears
    # fail too: with --faults, the first undo whose clear failed comes long before the bug
    # shows on seed 0, and the run used to end there, with no verdict
    driver = ["--driver", "tests.broken_drivers:flaky_forgetful"]
    report = tmp_path / "report.json"
    args = ["--backend", backend, "--faults", "0.05", "--tasks", "3", "--ops", "10000"]
    status, out, _ = run_stress(
        capsys, *driver, *args, "--json", str(report), "--trace-dir", str(tmp_path)
    )
    assert status == 1, out
    assert "not judged after" in out.splitlines()[0], out
    document = json.loads(report.read_text())
    assert document["violation"]["rule"] == "rule 4" and document["no_verdict"] is None
    assert document["unjudged"][0]["last"] < document["violation"]["seq"]
    assert re.search(UNDO_FAILED, document["unjudged"][0]["why"])
    (trace,) = tmp_path.glob("*.trace.json")
    status, out, _ = run_stress(capsys, "--replay", str(trace), *driver)
    assert status == 1 and out.rstrip().endswith("reproduced the recorded violation"), out


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancellation_whose_undo_failed_is_not_judged_the_same_way_in_every_run(
    backend: str,
) -> None:
    # Reported (attack13): on asyncio the text of an undo that failed held the cancellation's
    # repr (its cancel scope's address), so its replay said "not reproduced". A replay
    # compares the windows not judged, why included.
    undo = r"avcm's undo of (CancelledError|Cancelled) "
    for seed in range(16):
        config = stress.StressConfig(
            backend=backend, driver="tests.tricky_drivers:yielding_flaky_teardown",
            contexts=(("custom", 3),), cancel=0.3, tasks=3, ops=2000, seed=seed,
        )  # fmt: skip
        result = stress.run(config)
        if any(re.search(undo, why) for _, _, why in result.unjudged):
            break
    else:
        raise AssertionError(f"no seed of 16 met a failed undo of a cancellation: {result}")
    again = stress.run(config)
    assert again.unjudged == result.unjudged
    assert [outcome.result for outcome in again.trace] == [
        outcome.result for outcome in result.trace
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_switch_off_the_driver_keeps_failing_is_made_smaller(backend: str) -> None:
    # Every 40th page clear fails: a switch-off with more pages bound never gets through
    # (attack55 C5, attack56 c6_everything ended so within a thousand operations). The
    # harness unbinds what is bound there one reservation at a time, and switches off then;
    # a reservation of more pages than that still cannot be unbound while on (no verdict).
    config = stress.StressConfig(
        backend=backend, driver="tests.tricky_drivers:every_40th_clear_fails",
        contexts=(("custom", 3),), tasks=3, ops=3000,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None, result.violation
    assert result.checks["bindings shed: the driver kept failing to switch off with them"] > 0
    assert "deactivate of" not in (result.no_verdict or ""), result.no_verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_teardown_the_driver_keeps_failing_is_no_verdict(backend: str) -> None:
    # Reported (attack13): a release of the harness's own that the driver failed 100 times
    # in a row (one page clear in three fails: a context of many pages never goes off) was a
    # violation, "errors"; each failure is the driver's right (rule 8). With two contexts
    # failing at once (a task group's two errors) too.
    config = stress.StressConfig(
        backend=backend, driver="tests.tricky_drivers:flaky_teardown_often",
        contexts=(("custom", 2),), tasks=3, ops=3000,
    )  # fmt: skip
    result = stress.run(config)
    assert result.violation is None, result.violation
    assert result.no_verdict is not None and "failed 100 times in a row" in result.no_verdict
