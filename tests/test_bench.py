"""``python -m bench``: the machinery of the table (the figures themselves are the bench's to
judge, on a full run, never a test's)."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import sniffio

from bench import _allocator, _cli
from bench._cli import QUICK_REPEATS, REPEATS, main, measured_steps
from bench._compare import compare, document, load
from bench._genpool import GenPool
from bench._iova import IovaDomain
from bench._measure import Group, Row, aggregate, measure_groups, steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# a whole (quick) benchmark run: the slow tier, which .ci/run runs after the main suite
@pytest.mark.slow
def test_quick_run_measures_every_row_and_judges_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "bench.json"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    # one repeat, not --quick's three: this is that every row is measured (CI's time);
    # the median of repeats is tested below
    assert main(["--quick", "--repeats", "1", "--json", str(report)]) == 0
    # on a terminal a progress bar goes from the first group of rows to the last
    total = measured_steps(quick=True, repeats=1)
    assert f"{total}/{total}" in terminal.getvalue()
    assert "trio: race finder" in terminal.getvalue()
    document = json.loads(report.read_text())
    assert document["version"] == 2 and document["repeats"] == 1
    rows = document["rows"]
    assert set(rows) == {"any", "asyncio", "trio"}
    for backend in ("asyncio", "trio"):
        whats = [row["what"] for row in rows[backend]]
        assert any(what.startswith("uncontended bind+unbind") for what in whats)
        assert any(what.startswith("stress harness") for what in whats)
    assert any(row["what"].startswith("schedules to find") for row in rows["trio"])
    for backend_rows in rows.values():
        for row in backend_rows:
            assert row["met"] is None and row["ratio"] > 0, row
            assert len(row["samples"]) == 1, row
    out = capsys.readouterr().out
    assert "avcm performance" in out and " NO " not in out


# -- repeats: median, min, spread, unstable ----------------------------------------------------


def row(ratio: float, target: str = "<= 2x", what: str = "a row", detail: str = "") -> Row:
    better = target.startswith("<")
    met = None if target == "reported" else (ratio <= 2 if better else ratio >= 2)
    return Row(what, "a baseline", ratio, target, met, detail or f"measured {ratio}")


def test_repeats_are_judged_on_the_median_with_its_detail() -> None:
    # one repeat misses the target, the median meets it
    [folded] = aggregate([[row(1.0)], [row(3.0)], [row(1.2)], [row(0.9)], [row(1.1)]])
    assert folded.ratio == 1.1 and folded.met is True and folded.detail == "measured 1.1"
    assert folded.samples == (1.0, 3.0, 1.2, 0.9, 1.1)  # in the order measured
    assert (folded.min, folded.median, folded.max) == (0.9, 1.1, 3.0)
    assert folded.spread == pytest.approx((3.0 - 0.9) / 1.1)
    assert folded.unstable


def test_a_spread_of_20_percent_is_stable_and_more_is_not() -> None:
    assert not aggregate([[row(0.9)], [row(1.0)], [row(1.09)]])[0].unstable  # 19%
    assert aggregate([[row(0.9)], [row(1.0)], [row(1.11)]])[0].unstable
    single = row(1.0)  # a row function's own row: one sample, no spread
    assert single.values == (1.0,) and single.spread == 0 and not single.unstable


def test_an_even_number_of_repeats_takes_the_less_flattering_middle() -> None:
    lower_better = aggregate([[row(r)] for r in (1.0, 1.5, 2.5, 3.0)])[0]
    assert lower_better.ratio == 2.5 and lower_better.met is False
    higher_better = aggregate([[row(r, ">= 2x")] for r in (1.0, 1.5, 2.5, 3.0)])[0]
    assert higher_better.ratio == 1.5 and higher_better.met is False


def test_rows_of_one_function_fold_by_name_in_the_order_first_measured() -> None:
    repeats = [[row(1.0, what="b"), row(5.0, what="a")], [row(2.0, what="b"), row(4.0, what="a")]]
    assert [(r.what, r.samples) for r in aggregate(repeats)] == [
        ("b", (1.0, 2.0)),
        ("a", (5.0, 4.0)),
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_groups_are_measured_round_robin_and_once_rows_once(backend: str) -> None:
    calls: list[str] = []

    def sync_rows(name: str) -> Row:
        calls.append(name)
        return row(float(len(calls)), what=name)

    async def async_rows(running_on: str) -> list[Row]:
        await anyio.lowlevel.checkpoint()
        assert sniffio.current_async_library() == running_on
        calls.append("async")
        return [row(1.0, what="async")]

    groups = [
        Group("any", "sync", sync_rows),
        Group(backend, "async", async_rows),
        Group(backend, "counted", lambda name: sync_rows("counted"), repeats=1),
        Group(backend, "long", lambda name: sync_rows("long"), repeats=2),
    ]
    progress: list[tuple[object, ...]] = []
    results = measure_groups(groups, 3, lambda *args: progress.append(args))
    assert calls == ["any", "async", "counted", "long", "any", "async", "long", "any", "async"]
    assert steps(groups, 3) == 9 and progress[-1] == (9,)
    assert steps(groups, 1) == 4
    assert [args[0] for args in progress[:-1]] == list(range(9))
    assert progress[1] == (1, f"{backend}: async (1/3)")
    assert progress[6] == (6, f"{backend}: long (2/2)")
    assert [r.samples for r in results["any"]] == [(1.0, 5.0, 8.0)]
    assert [(r.what, r.samples) for r in results[backend]] == [
        ("async", (1.0, 1.0, 1.0)),
        ("counted", (3.0,)),
        ("long", (4.0, 7.0)),
    ]


# -- --json and --compare ----------------------------------------------------------------------


def old_and_new() -> tuple[dict[str, list[Row]], dict[str, list[Row]]]:
    def steady(what: str, ratio: float, target: str = "<= 2x", spread: float = 0.02) -> Row:
        samples = (ratio * (1 - spread / 2), ratio, ratio * (1 + spread / 2))
        return replace(row(ratio, target, what), samples=samples)

    old = {
        "any": [
            steady("slower", 1.0),
            steady("faster", 1.0),
            steady("noisy", 1.0, spread=0.5),
            steady("fewer", 40.0, ">= 10x"),
            steady("reported", 1.0, "reported"),
            steady("gone", 1.0),
        ]
    }
    new = {
        "any": [
            steady("slower", 1.2),  # +20%, lower is better, spread 2%: regressed
            steady("faster", 0.7),
            steady("noisy", 1.3),  # +30% but the old run spread 50%: noise
            steady("fewer", 30.0, ">= 10x"),  # -25%, higher is better: regressed
            steady("reported", 2.0, "reported"),
            steady("new", 1.0),
        ]
    }
    return old, new


def test_compare_flags_changes_beyond_the_noise_in_the_direction_of_the_target() -> None:
    old, new = old_and_new()
    verdicts = {change.what: change.verdict for change in compare(old, new)}
    assert verdicts == {
        "slower": "regressed",
        "faster": "improved",
        "noisy": "within noise",
        "fewer": "regressed",
        "reported": "changed",
        "new": "added",
        "gone": "removed",
    }
    changes = {change.what: change for change in compare(old, new)}
    assert changes["slower"].relative == pytest.approx(0.2)
    assert changes["new"].relative is None and changes["gone"].new is None


def test_compare_reads_what_json_writes_and_the_unversioned_first_form(tmp_path: Path) -> None:
    old = old_and_new()[0]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document(old, quick=False, repeats=3)))
    assert load(path) == old
    raw = json.loads(path.read_text())
    assert raw["version"] == 2 and raw["repeats"] == 3 and raw["quick"] is False
    first = raw["rows"]["any"][0]
    assert first["samples"] == list(old["any"][0].samples) and first["unstable"] is False
    assert {"ratio", "min", "median", "max", "spread", "target", "met", "detail"} <= set(first)
    # version 1: the backends at the top, rows without samples
    legacy = {"any": [{"what": "w", "baseline": "b", "ratio": 2.0, "target": "<= 1", "met": False}]}
    path.write_text(json.dumps(legacy))
    assert load(path) == {"any": [Row("w", "b", 2.0, "<= 1", False, "", (2.0,))]}


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """bench's measurement replaced by the new rows of :func:`old_and_new`."""
    calls: list[object] = []

    def measure(*args: object) -> dict[str, list[Row]]:
        calls.append(args)
        return old_and_new()[1]

    monkeypatch.setattr(_cli, "measure", measure)
    return calls


def test_compare_prints_each_change_and_exits_1_on_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], measured: list[object]
) -> None:
    old, new = old_and_new()
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(document(old, quick=False, repeats=3)))
    assert main(["--compare", str(old_path), "--json", str(new_path)]) == 1
    out = capsys.readouterr().out
    assert "change against" in out
    for text in ("REGRESSED", "improved", "within noise", "added", "removed", "+20%", "-25%"):
        assert text in out, text
    # the new document compared with itself: nothing moved, every target met
    assert main(["--compare", str(new_path)]) == 0
    out = capsys.readouterr().out
    assert "REGRESSED" not in out and out.count("within noise") == len(new["any"])
    assert len(measured) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "not a bench --json document"),
        ('{"version": 2, "rows": [1]}', "not a bench --json document"),
        ('{"version": 3, "rows": {}}', "version 3"),
        ('{"version": "2", "rows": {}}', 'version "2"'),
        ('{"version": 2, "rows": {"any": [{"what": "w"}]}}', "'ratio'"),
        ('{"version": 2, "rows": {"any": [{"what": "w", "ratio": NaN}]}}', "'ratio'"),
        ('{"any": [{"what": "w", "ratio": 1, "samples": "x"}]}', "'samples'"),
        ('{"any": [{"what": "w", "ratio": 1, "samples": []}]}', "'samples'"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_a_bad_compare_file_is_one_line_and_exit_2_before_any_measurement(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    measured: list[object],
    content: str | bytes | None,
    message: str,
) -> None:
    path = tmp_path / "old.json"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    assert main(["--compare", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not measured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bench: error: --compare {path}: ")
    assert message in lines[0] and len(lines[0]) < 300


def test_compare_of_a_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], measured: list[object]
) -> None:
    assert main(["--compare", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err and not measured


@pytest.mark.parametrize("repeats", ["0", "4", "-1", "x", "103"])
def test_repeats_must_be_a_small_odd_number(
    capsys: pytest.CaptureFixture[str], measured: list[object], repeats: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--repeats", repeats])
    assert info.value.code == 2 and not measured
    assert "--repeats" in capsys.readouterr().err


def test_repeats_reach_the_measurement(measured: list[object]) -> None:
    main(["--repeats", "7"])
    main(["--quick"])
    main([])
    assert [args[2] for args in measured] == [7, QUICK_REPEATS, REPEATS]  # type: ignore[index]


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for status in ("Exit status: 0 every target met", "; 1 a target missed", "; 2 a usage"):
        assert status in out, status
    assert "; 130 interrupted" in out
    assert "--compare OLD.json" in out and "--repeats" in out


# -- the baselines: Linux's IOVA allocator, as drivers/iommu/iova.c allocates ------------------

PAGE = 4096


def test_iova_allocates_top_down_from_the_limit_size_aligned() -> None:
    iova = IovaDomain(0, 64 * PAGE)
    assert iova.alloc(PAGE, PAGE) == 63 * PAGE  # the highest page below the limit
    # 3 pages are aligned to 4 (the size rounded up to a power of two), right below it
    assert iova.alloc(3 * PAGE, PAGE) == 60 * PAGE
    assert iova.alloc(2 * PAGE, 2 * PAGE) == 58 * PAGE
    assert iova.alloc(PAGE, PAGE) == 57 * PAGE
    assert iova.alloc(3 * PAGE, PAGE) == 52 * PAGE  # aligned down: 55 and 56 left free
    # the gap is above the cached node (52): the walk starts below it
    assert iova.alloc(PAGE, PAGE) == 51 * PAGE
    assert [addr // PAGE for addr, _ in iova.ranges()] == [51, 52, 57, 58, 60, 63]
    with pytest.raises(ValueError):
        iova.alloc(3 * PAGE, 8 * PAGE)  # alloc_iova cannot align more than the size


def test_iova_free_at_or_above_the_cached_node_moves_it_above_the_hole() -> None:
    iova = IovaDomain(0, 64 * PAGE)
    pages = [iova.alloc(PAGE, PAGE) for _ in range(8)]  # 63 down to 56, cached at 56
    assert pages == [page * PAGE for page in range(63, 55, -1)]
    iova.free(60 * PAGE, PAGE)  # at or above the cache: the cache moves to the node after
    assert iova.alloc(PAGE, PAGE) == 60 * PAGE  # the walk starts at 61: the hole first
    iova.free(62 * PAGE, PAGE)
    iova.free(57 * PAGE, PAGE)  # below the cache (63 now): it stays
    assert iova.alloc(PAGE, PAGE) == 62 * PAGE
    assert iova.alloc(PAGE, PAGE) == 57 * PAGE  # from 62 down, to the next gap
    iova.free(40 * PAGE, PAGE)  # no such range: nothing, as free_iova
    assert iova.live == 8


def test_iova_retries_from_the_limit_when_the_walk_below_the_cache_fails() -> None:
    iova = IovaDomain(0, 8 * PAGE)
    first, second = iova.alloc(PAGE, PAGE), iova.alloc(PAGE, PAGE)
    assert (first, second) == (7 * PAGE, 6 * PAGE)
    iova.free(first, PAGE)  # the cache moves above the freed page, to the anchor
    assert iova.alloc(2 * PAGE, 2 * PAGE) == 4 * PAGE  # too big for the hole at 7: below 6
    assert iova.alloc(4 * PAGE, 4 * PAGE) == 0  # from the cache (4) down
    # nothing is free below the cache (0): the retry walks from the limit to the hole at 7
    assert iova.alloc(PAGE, PAGE) == 7 * PAGE
    assert iova.alloc(PAGE, PAGE) is None  # full


def test_iova_remembers_a_failed_size_below_4_gib_until_a_free() -> None:
    iova = IovaDomain(0, 8 * PAGE)
    for _ in range(4):
        iova.alloc(PAGE, PAGE)
    assert iova.alloc(8 * PAGE, PAGE) is None
    assert iova.max32_alloc_size == 8
    assert iova.alloc(4 * PAGE, 4 * PAGE) == 0  # smaller than the failed size: searched
    assert iova.alloc(PAGE, PAGE) is None and iova.max32_alloc_size == 1
    iova.free(0, 4 * PAGE)  # a free below 4 GiB forgets it
    assert iova.max32_alloc_size == 1 << 20 and iova.alloc(PAGE, PAGE) == 3 * PAGE


def test_iova_reserve_keeps_a_range_out_and_leaves_the_cache() -> None:
    iova = IovaDomain(0, 16 * PAGE)
    iova.reserve(12 * PAGE, 4 * PAGE)
    assert iova.alloc(4 * PAGE, 4 * PAGE) == 8 * PAGE
    assert iova.ranges() == [(8 * PAGE, 4 * PAGE), (12 * PAGE, 4 * PAGE)]


@pytest.mark.parametrize("kind", ["avcm", "iova", "gen_pool"])
def test_each_allocator_finds_the_last_aligned_hole_among_misaligned_ones(kind: str) -> None:
    # the benchmark's worst case for avcm's allocator (and the bitmap): the scenario checks
    # where each allocation lands and that the aligned hole is the one taken
    size, taken = _allocator._last_aligned_hole(30)
    assert size == (6 * 30 + 4) * PAGE
    assert sum(length for _, length, _ in taken) == size
    assert _allocator._worst_in_last_aligned_hole(kind, 30) >= 0


def test_the_fragmented_bitmap_is_what_allocating_it_would_leave() -> None:
    pool = GenPool(0, 64 * PAGE)
    taken = [pool.alloc(PAGE, PAGE) for _ in range(20)]
    for addr in taken[1::2]:
        assert addr is not None
        pool.free(addr, PAGE)
    assert pool.bitmap == _allocator._fragmented_bitmap(10).bitmap[:64]


class _SlowAt:
    """A page allocator that is slow (in the benchmark's clock) at one allocation of every
    build, and at another of one build only: an allocator's slow path and the machine's."""

    def __init__(self, build: int, clock: list[float]) -> None:
        self.build, self.clock, self.next = build, clock, 0

    def alloc(self, size: int, alignment: int) -> int:
        index = self.next // PAGE
        self.clock[0] += 5.0 if index == 7 else 1.0  # every build: the allocator's own
        if self.build == 1 and index == 12:
            self.clock[0] += 100.0  # one build only: the machine's
        addr, self.next = self.next, self.next + max(size, PAGE)
        return addr

    def free(self, addr: int, size: int) -> None:
        pass


def test_a_built_space_is_charged_each_allocations_least_time_over_identical_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(_allocator, "clock", lambda: clock[0])
    builds = iter(range(_allocator.BUILDS))
    built = _allocator._fragment(lambda: _SlowAt(next(builds), clock), 10)
    assert built.building == 5.0  # the slow path, which every build shows
    assert built.disturbed == 101.0  # the one-off, shown beside it
    assert built.first == 1.0
    assert built.pages == [2 * index * PAGE for index in range(10)]
    assert next(builds, None) is None  # every build was made
