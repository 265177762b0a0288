"""A run that stops making progress ends with a verdict: a driver deadlock (a lost wake-up), a
livelock, or a blocked event loop is reported as a ``progress`` violation naming what was under
way, with a trace whose replay stalls the same way; correct runs are never called stalled.

The stalling drivers (``tests/broken_drivers.py``) stop at their 300th page write, in a setup
call (cancellable) or a teardown call (shielded by avcm: the run cannot be cancelled and is
abandoned in its thread).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stress
from stress import DRIVER_DEFAULT_CONTEXTS, StressConfig, UsageError
from tests._interrupting import interrupt_stress

BACKENDS = ["asyncio", "trio"]
REPO = Path(stress.__file__).resolve().parents[1]
STALL = 0.5  # seconds of wall time: long for a run on the virtual clock to end nothing

DEADLOCK = "nothing ended for the stall timeout: every task waits for something no task will do"
BLOCKED = "the event loop did not run for the stall timeout"


def _stalling(driver: str, backend: str, tasks: int = 64) -> StressConfig:
    return StressConfig(
        backend=backend,
        tasks=tasks,
        ops=5_000,
        driver=f"tests.broken_drivers:{driver}",
        contexts=DRIVER_DEFAULT_CONTEXTS,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("driver", "cause"),
    [
        ("lost_interrupt", DEADLOCK),
        ("lost_interrupt_in_teardown", DEADLOCK),
        ("spinning", DEADLOCK),
        ("spinning_in_teardown", DEADLOCK),
        ("spinning_on_the_clock", DEADLOCK),
        ("blocking", BLOCKED),
    ],
)
def test_a_stalled_run_is_stopped_with_what_was_under_way(
    backend: str, driver: str, cause: str
) -> None:
    result = stress.run(_stalling(driver, backend), stall_timeout=STALL)
    violation = result.violation
    assert violation is not None and violation.rule == "progress", violation
    assert violation.description.startswith(cause), violation.description
    # the tasks in operations are named with the operation each is in, or the harness's own
    # calls of the driver at a quiescent point (a racing restart switching every context off
    # and on writes every page bound: the stalling write may be one of those)
    under_way = re.search(
        r"; under way: (task \d+: operation \d+ \(\w+\)|a quiescent check after operation \d+)",
        violation.description,
    )
    assert under_way, violation.description
    assert "tasks waiting to start one" in violation.description
    assert violation.seq is not None and result.ops < violation.seq < 5_000
    # the record is the run's as the stall found it: every operation ended is in its trace
    assert len(result.trace) == result.ops and result.wall_seconds > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks", [1, 2, 3])
@pytest.mark.parametrize("driver", ["lost_interrupt", "lost_interrupt_in_teardown"])
def test_a_stall_is_found_with_few_tasks(backend: str, tasks: int, driver: str) -> None:
    result = stress.run(_stalling(driver, backend, tasks), stall_timeout=STALL)
    assert result.violation is not None and result.violation.rule == "progress"
    description = result.violation.description
    assert description.startswith(DEADLOCK), description
    # in a task's operation, or in the harness's own calls of the driver at a quiescent point
    # (a drain switching the contexts off and on: with three contexts of the driver, a few
    # tasks meet the lost interrupt there first, now and then)
    assert re.search(r"under way: (task |a quiescent check after operation \d+)", description)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stall_is_found_the_same_way_every_time(backend: str) -> None:
    config = _stalling("lost_interrupt_in_teardown", backend, tasks=8)
    # (a longer timeout than the others': a machine so loaded that it holds the run up for
    # STALL while it makes progress calls it stalled somewhere else; seen at load 6 on 2 cores)
    first = stress.run(config, stall_timeout=4 * STALL)
    again = stress.run(config, stall_timeout=4 * STALL)
    assert first.violation is not None and again.violation is not None
    assert str(first.violation) == str(again.violation)
    assert first.violation.seq == again.violation.seq and first.trace == again.trace


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_factory_that_blocks_is_reported_while_building_the_contexts(backend: str) -> None:
    driver = "tests.broken_drivers:blocking_factory"
    config = StressConfig(backend=backend, ops=100, driver=driver, contexts=(("custom", 1),))
    result = stress.run(config, stall_timeout=STALL)
    assert result.violation is not None and result.violation.rule == "progress"
    assert result.violation.description == f"{BLOCKED}: a task or callback keeps its thread " + (
        "(a blocking call, or a loop that never awaits); under way: building the contexts"
    )
    assert result.ops == 0 and result.trace == []


_TRACED_AFTER_A_BLOCKED_RUN = """
import sys
import stress
config = stress.StressConfig(
    backend=sys.argv[1], ops=100, driver="tests.broken_drivers:blocking_factory",
    contexts=(("custom", 1),),
)
assert stress.run(config, stall_timeout=0.5).violation.rule == "progress"
sys.settrace(lambda *args: None)
(lambda: None)()
sys.settrace(None)
print("traced")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_abandoned_in_a_blocking_call_leaves_the_process_working(backend: str) -> None:
    # Reported: the watchdog interrupts an abandoned run's thread with an asynchronous
    # exception; blocked in C, the thread never took it, and CPython 3.11 kept it pending for
    # the whole interpreter: every later call under sys.settrace (Hypothesis's explain phase)
    # spun for ever at its first instruction. (A separate process: the hang is process-wide.)
    done = subprocess.run(
        [sys.executable, "-c", _TRACED_AFTER_A_BLOCKED_RUN, backend],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "traced"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks", [1, 3, 64])
@pytest.mark.parametrize(
    "driver",
    [
        None,
        "tests.tricky_drivers:threaded",
        "tests.tricky_drivers:polling",
        "tests.tricky_drivers:polling_status",
        "tests.tricky_drivers:polling_status_two_places",
    ],
)
def test_a_correct_run_is_never_called_stalled(
    backend: str, tasks: int, driver: str | None
) -> None:
    # a stall timeout far above the time any operation or check takes, and far below the
    # run's (the threaded driver's switches on from cold take a thread's round trip a page:
    # a quiescent check with its racing restarts took more than 5 seconds of wall time on a
    # machine running three times as many processes as it has cores)
    contexts = DRIVER_DEFAULT_CONTEXTS if driver else StressConfig.contexts
    config = StressConfig(backend=backend, tasks=tasks, ops=1_500, driver=driver, contexts=contexts)
    result = stress.run(config, stall_timeout=30.0)
    assert result.violation is None, result.violation
    assert result.ops == 1_500


@pytest.mark.parametrize("driver", ["polling", "polling_status_two_places"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_of_a_driver_that_polls_is_the_same_every_time(backend: str, driver: str) -> None:
    # its spins move the virtual clock (the spin rule, the busy-loop rule) by the count of the
    # clock's reads or the loop's iterations: the same in every run of a seed
    config = StressConfig(
        backend=backend, tasks=8, ops=1_000, seed=3, cancel=0.05,
        driver=f"tests.tricky_drivers:{driver}", contexts=DRIVER_DEFAULT_CONTEXTS,
    )  # fmt: skip
    first = stress.run(config, stall_timeout=5.0)
    assert first.violation is None, first.violation
    assert stress.run(config, stall_timeout=5.0).trace == first.trace


def test_no_stall_timeout_runs_unwatched() -> None:
    result = stress.run(StressConfig(ops=300), stall_timeout=0)
    assert result.violation is None and result.ops == 300


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_a_bad_stall_timeout_is_refused(seconds: float) -> None:
    with pytest.raises(UsageError, match="--stall-timeout must be 0"):
        stress.run(StressConfig(ops=10), stall_timeout=seconds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stalled_run_replays_to_the_same_stall(backend: str, tmp_path: Path) -> None:
    driver = "tests.broken_drivers:lost_interrupt_in_teardown"
    command = [sys.executable, "-m", "stress", "--quiet", "--stall-timeout", str(STALL)]
    common = ["--driver", driver, "--trace-dir", str(tmp_path)]
    recorded = subprocess.run(
        [*command, *common, "--backend", backend, "--tasks", "8", "--ops", "3000"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert recorded.returncode == 1, recorded.stderr
    assert "(progress): nothing ended for the stall timeout" in recorded.stdout, recorded.stdout
    (trace,) = tmp_path.glob("*.trace.json")
    assert json.loads(trace.read_text())["violation"]["rule"] == "progress"
    replayed = subprocess.run(
        [*command, "--replay", str(trace), "--driver", driver],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert replayed.stdout.rstrip().endswith("reproduced the recorded violation"), replayed.stdout


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stress", "--quiet", "--stall-timeout", str(STALL), *args]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_command_ends_though_a_worker_thread_never_returns(
    backend: str, tmp_path: Path
) -> None:
    # Reported: with a driver stuck in asyncio's default executor, the verdict was printed and
    # the process then waited at exit for ever (Python joins executor threads at exit)
    driver = "tests.broken_drivers:executor_hang"
    done = subprocess.run(
        _command("--driver", driver, "--backend", backend, "--trace-dir", str(tmp_path)),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "(progress): nothing ended for the stall timeout" in done.stdout
    # the replay waits as long as the run did before it calls a stall
    assert done.stdout.rstrip().endswith(f"--driver {driver} --stall-timeout {STALL}"), done.stdout


def test_ctrl_c_ends_a_run_stuck_in_a_worker_thread() -> None:
    # stuck by then (its 300th page write), with a minute to go before a stall is called
    args = ["--quiet", "--backend", "asyncio", "--driver", "tests.broken_drivers:executor_hang"]
    status, out, err = interrupt_stress(args, after=2)
    assert status == 130, err
    assert err == "avcm-stress: interrupted\n" and out == ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stalled_duration_run_replays(backend: str, tmp_path: Path) -> None:
    # Reported: the trace of a --duration run holds the operations that ended; the replay ran
    # that many, fewer than had started, and diverged
    driver = "tests.broken_drivers:lost_interrupt_in_teardown"
    args = ["--driver", driver, "--backend", backend, "--duration", "60", "--tasks", "8"]
    recorded = subprocess.run(
        _command(*args, "--trace-dir", str(tmp_path)),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert recorded.returncode == 1, recorded.stdout + recorded.stderr
    (trace,) = tmp_path.glob("*.trace.json")
    document = json.loads(trace.read_text())
    assert document["started"] > len(document["trace"])
    replayed = subprocess.run(
        _command("--replay", str(trace), "--driver", driver),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert replayed.stdout.rstrip().endswith("reproduced the recorded violation")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tiny_stall_timeout_still_gives_a_verdict(backend: str) -> None:
    # Reported: 0.01 s ran out before the event loop had started: a RuntimeError traceback
    result = stress.run(_stalling("lost_interrupt", backend), stall_timeout=0.01)
    assert result.violation is not None and result.violation.rule == "progress"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abandoned_run_that_spins_without_awaiting_stops_taking_a_core(backend: str) -> None:
    # Reported: the abandoned run's thread spun on for as long as the process lived (the loop
    # never got control back to park); it is interrupted where it spins, then parks
    result = stress.run(_stalling("busy_in_teardown", backend), stall_timeout=STALL)
    assert result.violation is not None and result.violation.rule == "progress"
    assert result.abandoned
    started_cpu, started = time.process_time(), time.monotonic()
    time.sleep(1.0)
    cpu, wall = time.process_time() - started_cpu, time.monotonic() - started
    assert cpu < wall / 4, f"{cpu:.2f} s of CPU in {wall:.2f} s of an idle test"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abandoned_run_says_so(backend: str, tmp_path: Path) -> None:
    driver = "tests.broken_drivers:lost_interrupt_in_teardown"
    done = subprocess.run(
        _command("--driver", driver, "--backend", backend, "--trace-dir", str(tmp_path),
                 "--json", str(tmp_path / "report.json")),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "(the run could not be stopped: a task was stuck where no cancellation" in done.stdout
    assert json.loads((tmp_path / "report.json").read_text())["abandoned"] is True
