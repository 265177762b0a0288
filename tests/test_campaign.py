"""Campaigns: units, the failure store, the engine (in process, on local processes, on a real
2-worker Dask LocalCluster), reports and the command line."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

import campaign
from campaign import (
    ConformanceUnit,
    ExploreUnit,
    FailureStore,
    FoundFailure,
    StoredFailure,
    StressUnit,
    Unit,
    UnitResult,
)
from tests.campaign_drivers import ARMED, KILL_DIR, KILLED

LEAKY = "tests.broken_drivers:leaky"


def stress_unit(seed: int = 0, ops: int = 200, driver: str | None = LEAKY) -> StressUnit:
    import stress

    contexts = (("custom", 1),) if driver else stress.StressConfig.contexts
    config = stress.StressConfig(seed=seed, ops=ops, tasks=8, driver=driver, contexts=contexts)
    return StressUnit(config.to_json())


class InlineExecutor:
    """Runs each unit in the test process, at once: the campaign loop without processes."""

    workers = 1
    description = "the test process"

    def __init__(self) -> None:
        self.queue: list[tuple[Unit, Any]] = []
        self.ran: list[Unit] = []

    def submit(self, unit: Unit, tag: Any) -> None:
        self.queue.append((unit, tag))

    def completed(self) -> Iterator[tuple[Any, UnitResult | BaseException]]:
        while self.queue:
            unit, tag = self.queue.pop(0)
            self.ran.append(unit)
            yield tag, unit.run()

    def notices(self) -> list[str]:
        return []

    def cancel(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        pass


def _key(unit: Unit) -> str:
    return json.dumps(unit.to_json(), sort_keys=True)


def stress_units(driver: str | None = LEAKY) -> Iterator[Unit]:
    seed = 0
    while True:
        yield stress_unit(seed, driver=driver)
        seed += 1


# -- units and signatures ---------------------------------------------------------------------


def test_normalize_takes_out_numbers_and_addresses_but_not_rule_numbers() -> None:
    assert campaign.normalize("rule 9: 0x1f000 bytes of phys#12, 3 more\nnext") == (
        "rule 9: 0x? bytes of phys#N, N more"
    )
    assert campaign.normalize("rules 1, 3: 17 tasks") == "rules 1, 3: N tasks"


def test_stress_unit_finds_the_failure_and_shrinks_it_to_a_run_that_still_fails() -> None:
    result = stress_unit(ops=300).run()
    failure = result.failure
    assert failure is not None and result.work == 300
    assert failure.signature.startswith(f"stress [{LEAKY}] rule 9: 0x? bytes")
    assert failure.size[0] < 300
    assert isinstance(failure.reproducer, StressUnit)
    assert failure.reproducer.config["ops"] == failure.size[0]
    again = failure.reproducer.run()
    assert again.failure is not None and again.failure.signature == failure.signature
    assert result.latency and set(result.latency) <= set(result.outcomes)


def test_a_stalled_stress_unit_and_its_shrinking_keep_its_stall_timeout() -> None:
    # Reported (attack12): a campaign could not set the stall timeout: each stalled run, and
    # each run its shrinking made, took the default 60 s (and 5 more to stop)
    unit = replace(
        stress_unit(ops=2000, driver="tests.broken_drivers:lost_interrupt"),
        stall_timeout=0.5,
        shrink_budget=2,
    )
    result = unit.run()
    assert result.failure is not None and " progress: " in result.failure.signature
    reproducer = result.failure.reproducer
    assert isinstance(reproducer, StressUnit) and reproducer.stall_timeout == 0.5
    assert campaign.unit_from_json(json.loads(json.dumps(reproducer.to_json()))) == reproducer


def test_units_round_trip_through_json() -> None:
    units: list[Unit] = [
        stress_unit(3),
        ConformanceUnit(LEAKY, "one_winner", seed=2, schedules=5),
        ExploreUnit("tests.campaign_drivers:always_fails", strategy="random", seed=4),
    ]
    for unit in units:
        assert campaign.unit_from_json(json.loads(json.dumps(unit.to_json()))) == unit
    with pytest.raises(campaign.UnitError, match="kind"):
        campaign.unit_from_json({"kind": "nope"})


def test_conformance_unit_failure_replays_from_its_token() -> None:
    result = ConformanceUnit(LEAKY, "allocation_and_leaks", schedules=5).run()
    assert result.failure is not None
    assert result.failure.trace is not None and result.failure.trace["traceEvents"]
    assert result.failure.signature.startswith("conformance:allocation_and_leaks [")
    reproducer = result.failure.reproducer
    assert isinstance(reproducer, ConformanceUnit) and reproducer.token is not None
    replayed = reproducer.run().failure
    assert replayed is not None and replayed.signature == result.failure.signature


def test_a_conformance_scenario_that_could_not_run_is_not_a_pass() -> None:
    unit = ConformanceUnit("tests.tricky_drivers:dead_unit", "bind_while_active", schedules=3)
    result = unit.run()
    assert result.failure is None and result.work == 0
    assert result.outcomes == {"conformance:bind_while_active": {"not run": 1}}


def test_explore_unit_failure_replays_from_its_token() -> None:
    unit = ExploreUnit("tests.campaign_drivers:always_fails", schedules=3)
    failure = unit.run().failure
    assert failure is not None
    assert failure.signature.endswith("AssertionError: counter is N, expected N")
    replayed = failure.reproducer.run().failure
    assert replayed is not None and replayed.signature == failure.signature


def test_a_unit_that_cannot_import_its_driver_is_a_unit_error() -> None:
    with pytest.raises(campaign.UnitError, match="no_such_module"):
        ExploreUnit("no_such_module:scenario").run()


# -- the store --------------------------------------------------------------------------------


def stored(signature: str = "sig", ops: int = 10, fixed: bool = False) -> StoredFailure:
    failure = FoundFailure(signature, "title", "detail", (ops,), stress_unit(ops=ops))
    record = StoredFailure.from_failure(failure, Path("."))
    return record if not fixed else StoredFailure(**{**record.__dict__, "fixed": True})


def test_store_keeps_one_content_addressed_file_per_failure_and_the_smallest(
    tmp_path: Path,
) -> None:
    store = FailureStore(tmp_path / "store")
    assert store.save(stored(ops=50))
    assert not store.save(stored(ops=80))  # bigger: the stored one stays
    assert store.save(stored(ops=20))  # smaller: replaces it
    record = stored(ops=20)
    files = list((tmp_path / "store" / record.id).iterdir())
    assert len(files) == 1
    # named by the hash of its content, so a copy from another store is the same file
    assert files[0].stem == hashlib.sha384(files[0].read_bytes()).hexdigest()[:16]
    fetched = store.fetch(record.id)
    assert fetched is not None and fetched.size == (20,) and fetched.reproducer == record.reproducer
    assert campaign.find([store], record.id[:5]).id == record.id


def test_store_skips_a_corrupted_entry_with_one_line_and_keeps_it(tmp_path: Path) -> None:
    store = FailureStore(tmp_path)
    store.save(stored("good"))
    bad = stored("bad")
    (tmp_path / bad.id).mkdir()
    (tmp_path / bad.id / "0123.json").write_text('{"version": 1, "signa')
    (tmp_path / bad.id / ".interrupted.tmp").write_text("half a wri")  # a crash mid-write
    assert [record.signature for record in store] == ["good"]
    assert len(store.problems) == 1 and "skipped corrupted entry" in store.problems[0]
    assert (tmp_path / bad.id / "0123.json").exists()  # nothing stored is lost


def test_read_only_store_is_never_written(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    shared = FailureStore(tmp_path / "ci", read_only=True)
    assert not shared.save(stored())
    shared.mark_fixed(stored())
    assert list((tmp_path / "ci").iterdir()) == []


def test_store_under_a_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(campaign.StoreError, match="not a directory"):
        FailureStore(tmp_path / "file" / "store").check()


# -- the campaign loop --------------------------------------------------------------------------


def test_campaign_groups_failures_by_signature_and_stores_the_smallest(tmp_path: Path) -> None:
    store = FailureStore(tmp_path)
    result = campaign.run_campaign(stress_units(), InlineExecutor(), runs=4, store=store)
    assert result.runs == result.failed_runs == 4
    [signature] = result.signatures.values()
    assert signature.count == 4 and signature.new
    record = store.fetch(signature.id)
    assert record is not None and record.size == signature.failure.size


def test_campaign_is_bounded_by_its_duration() -> None:
    ticks = iter(range(100))
    executor = InlineExecutor()
    result = campaign.run_campaign(
        stress_units(None), executor, duration=2.5, clock=lambda: float(next(ticks))
    )
    # started at 0, one tick per check: the units started before 2.5 s ran, no more
    assert 1 <= result.runs < 4 and not result.failed


def test_campaign_reruns_stored_failures_first_and_marks_the_fixed_ones(tmp_path: Path) -> None:
    store = FailureStore(tmp_path)
    # a failure of a driver that is now correct: its reproducer runs clean
    fixed = StoredFailure.from_failure(
        FoundFailure("stress gone", "gone", "", (50,), stress_unit(ops=50, driver=None)),
        tmp_path,
    )
    store.save(fixed)
    first = campaign.run_campaign(stress_units(), InlineExecutor(), runs=1, store=store)
    still = next(iter(first.signatures.values()))
    stored_still = store.fetch(still.id)
    assert stored_still is not None
    executor = InlineExecutor()
    second = campaign.run_campaign(stress_units(), executor, runs=1, store=store)
    # the stored failures ran first, then the new unit
    assert len(executor.ran) == 3
    reproducers = [fixed.reproducer, stored_still.reproducer]
    assert {_key(u) for u in executor.ran[:2]} == {_key(u) for u in reproducers}
    by_id = {r.stored.id: r for r in second.regressions}
    assert not by_id[fixed.id].still_fails and by_id[still.id].still_fails
    assert not second.signatures[still.id].new
    refetched = store.fetch(fixed.id)
    assert refetched is not None and refetched.fixed


class LosingExecutor(InlineExecutor):
    """Its second run is lost, as a run whose every worker died (Dask's KilledWorker)."""

    def completed(self) -> Iterator[tuple[Any, UnitResult | BaseException]]:
        for index, (tag, outcome) in enumerate(super().completed()):
            yield (
                tag,
                (RuntimeError("KilledWorker: worker died 3 times") if index == 1 else outcome),
            )


def test_a_lost_run_is_one_notice_and_the_campaign_goes_on() -> None:
    lines: list[str] = []
    result = campaign.run_campaign(
        stress_units(None), LosingExecutor(), runs=3, on_notice=lines.append
    )
    assert result.runs == 2 and result.lost_runs == 1 and not result.failed
    assert lines == ["stress seed 1 lost: RuntimeError: KilledWorker: worker died 3 times"]


def test_a_shared_store_is_rerun_but_never_written(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    FailureStore(tmp_path / "ci").save(
        StoredFailure.from_failure(
            FoundFailure("stress gone", "gone", "", (50,), stress_unit(ops=50, driver=None)),
            tmp_path / "ci",
        )
    )
    before = sorted(p.name for p in (tmp_path / "ci").rglob("*"))
    own = FailureStore(tmp_path / "own")
    shared = FailureStore(tmp_path / "ci", read_only=True)
    result = campaign.run_campaign(
        stress_units(), InlineExecutor(), runs=1, store=own, shared=[shared]
    )
    [regression] = result.regressions
    assert not regression.still_fails and not regression.lost  # fixed, as far as we can see
    assert sorted(p.name for p in (tmp_path / "ci").rglob("*")) == before
    assert [r.signature for r in own] == [s.failure.signature for s in result.signatures.values()]


def test_importing_campaign_imports_no_dask() -> None:
    code = "import sys, campaign; sys.exit(bool({'dask', 'distributed'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- reports --------------------------------------------------------------------------------


class _Balanced(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "polyline"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def test_reports_json_junit_and_html(tmp_path: Path) -> None:
    result = campaign.run_campaign(stress_units(), InlineExecutor(), runs=3)
    report = campaign.report_json(result, tmp_path)
    assert report["runs"] == 3 and len(report["failures"]) == 1
    assert "campaign replay" in report["failures"][0]["replay"]
    suite = ElementTree.fromstring(campaign.report_junit(result, tmp_path))
    cases = suite.findall("testcase")
    assert suite.get("failures") == "1" and len(cases) == 2
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    page = campaign.report_html(result, tmp_path)
    parser = _Balanced()
    parser.feed(page)
    parser.close()
    assert parser.open == []
    assert "<svg" in page and "campaign replay" in page and "rule 9" in page
    embedded = page.split('id="report">')[1].split("</script>")[0]
    assert json.loads(embedded)["runs"] == 3


def test_html_report_links_a_schedule_failure_to_its_perfetto_trace() -> None:
    units = iter([ConformanceUnit(LEAKY, "allocation_and_leaks", schedules=5)])
    result = campaign.run_campaign(units, InlineExecutor(), runs=1)
    page = campaign.report_html(result, None)
    data = page.split('href="data:application/json;base64,')[1].split('"')[0]
    events = json.loads(base64.b64decode(data))["traceEvents"]
    assert any(event.get("ph") == "X" for event in events)


def test_html_report_opens_in_a_headless_browser_without_errors(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        # .ci/run installs it: in CI a missing browser is a failure, not a skip
        assert not os.environ.get("CI"), "CI must have chromium: .ci/run installs it"
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    result = campaign.run_campaign(stress_units(), InlineExecutor(), runs=2)
    page = tmp_path / "report.html"
    page.write_text(campaign.report_html(result, tmp_path), encoding="utf-8")
    shown = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
            "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    # what the page's scripts or resources get wrong, the browser logs as CONSOLE lines
    assert ":CONSOLE" not in shown.stderr, shown.stderr
    assert "<svg" in shown.stdout and "rule 9" in shown.stdout and "campaign replay" in shown.stdout


# -- the command line, on processes -----------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = campaign.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_local_processes_campaign_survives_a_killed_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(KILL_DIR, str(tmp_path))
    (tmp_path / ARMED).touch()
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    store = tmp_path / "store"
    status, out, err = run_cli(
        capsys, "stress", "--driver", "tests.campaign_drivers:leaky_killing_once",
        "--ops", "200", "--tasks", "8", "--runs", "4", "--jobs", "2", "--store", str(store),
    )  # fmt: skip
    assert status == 1, err
    assert "4 runs" in out and "1 distinct failure" in out
    shown = terminal.getvalue()
    # on a terminal, a progress bar to the last run; the killed worker is one line
    assert "campaign" in shown and "4/4" in shown
    assert shown.count("worker process died") == 1 and "retried" in shown


def test_cluster_campaign_dedups_across_workers_survives_a_killed_worker_and_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real 2-worker LocalCluster: one failure found by every run on both workers is one
    signature, stored once; the next campaign reruns it first, and a worker killed mid-run is
    one notice while Dask reruns its work on the other; the stored failure replays by id."""
    pytest.importorskip("distributed")
    monkeypatch.setenv(KILL_DIR, str(tmp_path))
    store = FailureStore(tmp_path / "store")
    driver = "tests.campaign_drivers:leaky_killing_once"
    executor = campaign.DaskExecutor(workers=2)
    try:
        assert executor.workers == 2 and "local Dask cluster of 2" in executor.description
        first = campaign.run_campaign(stress_units(driver), executor, runs=6, store=store)
        (tmp_path / ARMED).touch()  # the workers see it: the next context made kills one
        second = campaign.run_campaign(stress_units(driver), executor, runs=4, store=store)
    finally:
        executor.close()
    assert first.runs == first.failed_runs == 6 and len(first.workers) == 2
    [signature] = first.signatures.values()
    assert signature.count == 6 and [record.id for record in store] == [signature.id]

    assert (tmp_path / KILLED).exists()
    [line] = second.notices
    assert "died" in line and "remaining workers" in line
    assert second.runs == 4 and second.lost_runs == 0
    [regression] = second.regressions
    assert regression.still_fails and regression.stored.id == signature.id
    assert second.signatures[signature.id].count == 5 and not second.signatures[signature.id].new

    replay = ["replay", signature.id[:6], "--store", str(store.path)]
    # the store names the driver, but a store never chooses code to run: the command line must
    status, out, err = run_cli(capsys, *replay)
    assert status == 2 and f"name it to run it: --code {driver}" in err and out == ""
    status, out, err = run_cli(capsys, *replay, "--code", driver)
    assert status == 1 and "reproduced" in out, err


def test_a_campaign_reruns_only_stored_failures_whose_code_it_names(tmp_path: Path) -> None:
    store = FailureStore(tmp_path / "store")
    first = campaign.run_campaign(stress_units(), InlineExecutor(), runs=1, store=store)
    [stored] = first.signatures.values()
    code = stored.failure.reproducer.code
    assert code is not None
    notices: list[str] = []
    again = campaign.run_campaign(
        iter(()), InlineExecutor(), runs=1, store=store, on_notice=notices.append,
        trusted_code={"tests.other:make"},
    )  # fmt: skip
    assert again.regressions == [] and again.runs == 0
    assert notices == [
        f"stored failure {stored.id} runs {code}, which this campaign does not name: not rerun "
        f"(campaign replay {stored.id} --code {code} runs it)"
    ]
    named = campaign.run_campaign(
        iter(()), InlineExecutor(), runs=1, store=store, trusted_code={code}
    )
    assert [r.stored.id for r in named.regressions] == [stored.id]


def test_without_dask_a_campaign_runs_on_local_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("campaign._cli.dask_available", lambda: False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    status, out, err = run_cli(
        capsys, "stress", "--runs", "1", "--ops", "50", "--workers", "1",
        "--store", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert status == 0, err
    assert "on 1 local process: 1 runs" in out and "0 distinct failure" in out
    [line] = err.splitlines()
    assert "Dask is not installed" in line and "running on 1 local process" in line


@pytest.fixture(scope="module")
def existing_cluster() -> Iterator[str]:
    """A running Dask cluster to connect to: one worker thread in this process (quick to start;
    the embedded cluster's worker processes are tested above)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        yield str(cluster.scheduler_address)


def test_explore_campaign_on_an_existing_cluster_from_the_environment(
    existing_cluster: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", existing_cluster)
    import dask

    with dask.config.set({"scheduler-address": existing_cluster}):
        status, out, err = run_cli(
            capsys, "explore", "tests.campaign_drivers:always_fails", "--schedules", "3",
            "--runs", "4", "--store", str(tmp_path), "--quiet",
        )  # fmt: skip
    assert status == 1, err
    assert f"on the Dask cluster at {existing_cluster}: 4 runs" in out
    assert "1 distinct failure" in out and "4x" in out


def test_conformance_campaign_on_an_existing_cluster_by_address(
    existing_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "junit.xml"
    status, _, err = run_cli(
        capsys, "conformance", LEAKY, "--schedules", "3", "--runs", "9",
        "--scheduler", existing_cluster, "--store", str(tmp_path / "store"),
        "--junit", str(report), "--quiet",
    )  # fmt: skip
    assert status == 1, err
    # one run of each of the nine scenarios: the leak is among them
    failures = ElementTree.parse(report).getroot().findall("testcase/failure")
    assert failures and any("allocation_and_leaks" in f.get("message", "") for f in failures)


def test_an_exhaustive_explore_campaign_splits_the_search_by_prefix(
    existing_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parts, run on the workers, are the whole search: each of the 70 interleavings of
    two tasks of four steps once."""
    report = tmp_path / "report.json"
    status, _, err = run_cli(
        capsys, "explore", "tests.campaign_drivers:two_counters", "--exhaustive", "32",
        "--workers", "2", "--scheduler", existing_cluster, "--store", str(tmp_path / "store"),
        "--json", str(report), "--quiet",
    )  # fmt: skip
    assert status == 0, err
    data = json.loads(report.read_text())
    assert data["runs"] == 8 and data["work"] == 70  # four prefixes per worker


@pytest.mark.parametrize("strategy", ["pct-d1", "pct-d2", "pct-d3", "random"])
def test_explore_units_run_the_portfolio_of_avcm_testing(strategy: str) -> None:
    result = ExploreUnit("tests.campaign_drivers:always_fails", strategy, schedules=2).run()
    assert result.failure is not None
    token = result.failure.reproducer.token
    assert token is not None and token.startswith(f"avcm7:{strategy}:0:0:")


def test_an_explore_unit_of_no_known_strategy_is_a_unit_error() -> None:
    with pytest.raises(campaign.UnitError, match="strategy 'pct-d9': choose from pct, pct-d1"):
        ExploreUnit("tests.campaign_drivers:always_fails", "pct-d9").run()


def test_an_exhaustive_unit_with_a_prefix_that_begins_no_schedule_is_a_unit_error() -> None:
    unit = ExploreUnit(
        "tests.campaign_drivers:two_counters", strategy="exhaustive", bound=0, prefix=(0, 1)
    )
    with pytest.raises(campaign.UnitError, match="begins no schedule"):
        unit.run()
    again = campaign.unit_from_json(json.loads(json.dumps(unit.to_json())))
    assert again == unit and again.label() == "explore exhaustive-p0 prefix [0, 1]"


@pytest.mark.parametrize(
    ("timeout", "why"),
    # refused: at once, however long the connect timeout
    [(["--connect-timeout", "3600"], "connection refused"), ([], "connection refused")],
)
def test_unreachable_scheduler_is_one_line_and_status_2(
    timeout: list[str], why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    with socket.socket() as bound:  # bound, not listening: refused
        bound.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{bound.getsockname()[1]}"
        status, out, err = run_cli(
            capsys, "stress", "--runs", "1", "--scheduler", address, *timeout,
            "--store", str(tmp_path),
        )  # fmt: skip
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert f"cannot reach the Dask scheduler at {address}: {why}" in line


def test_a_scheduler_that_never_answers_is_one_line_after_the_connect_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    with socket.socket() as server:  # the kernel takes connections; nobody answers them
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        status, out, err = run_cli(
            capsys, "explore", "tests.campaign_drivers:two_counters", "--scheduler", address,
            "--connect-timeout", "0.2", "--store", str(tmp_path),
        )  # fmt: skip
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert "did not answer Dask's handshake within 0.2 s (the connect timeout)" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stress", "--driver", "nowhere:make"], "cannot import"),
        (["stress", "--ops", "0"], "'0' is not a whole number of at least 1"),
        (["stress", "--duration", "inf"], "not a positive, finite number of seconds"),
        (["stress", "--faults", "2"], "not a rate between 0 and 1"),
        (["stress", "--contexts", "gpu=1"], "unknown kind 'gpu'"),
        (["stress", "--json", "."], "is a directory"),
        (["explore", "tests.campaign_drivers:two_counters", "--exhaustive", "33"], "bound from"),
        (["explore", "tests.campaign_drivers:two_counters", "--exhaustive", "x"], "bound from"),
        (["replay", "abc123"], "no stored failure abc123"),
        (["replay", "not-hex"], "is not a failure id"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, *args, "--store", str(tmp_path))
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert message in line


def test_list_shows_stored_failures_and_one_line_per_corrupted_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FailureStore(tmp_path).save(stored("kept"))
    (tmp_path / "0000").mkdir()
    (tmp_path / "0000" / "x.json").write_text("not json")
    status, out, err = run_cli(capsys, "list", "--store", str(tmp_path))
    assert status == 0 and stored("kept").id in out
    [line] = err.splitlines()
    assert "skipped corrupted entry 0000/x.json" in line
    assert os.path.exists(tmp_path / "0000" / "x.json")
