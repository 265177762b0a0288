"""``python -m bench``: the machinery of the table (the figures themselves are the bench's to
judge, on a full run, never a test's)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from bench._cli import MEASURED_GROUPS, main


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
    assert main(["--quick", "--json", str(report)]) == 0
    # on a terminal a progress bar goes from the first group of rows to the last
    assert f"{MEASURED_GROUPS}/{MEASURED_GROUPS}" in terminal.getvalue()
    assert "trio: race finder" in terminal.getvalue()
    rows = json.loads(report.read_text())
    assert set(rows) == {"any", "asyncio", "trio"}
    for backend in ("asyncio", "trio"):
        whats = [row["what"] for row in rows[backend]]
        assert any(what.startswith("uncontended bind+unbind") for what in whats)
        assert any(what.startswith("stress harness") for what in whats)
    assert any(row["what"].startswith("schedules to find") for row in rows["trio"])
    for backend_rows in rows.values():
        for row in backend_rows:
            assert row["met"] is None and row["ratio"] > 0, row
    out = capsys.readouterr().out
    assert "avcm performance" in out and " NO " not in out
