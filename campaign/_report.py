"""What a campaign shows: a summary on the terminal, ``--json``, JUnit XML (one test case per
failure signature, so CI shows each distinct failure) and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import shlex
import sys
import zlib
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from ._campaign import CampaignResult, Signature

__all__ = ["replay_command", "report_html", "report_json", "report_junit", "summary_lines"]


def replay_command(failure_id: str, store: Path | None, code: str | None) -> str:
    """The command that replays a stored failure, with the interpreter running now; *code*
    is what it runs (:attr:`Unit.code`), which a replay must name."""
    words = [sys.executable, "-m", "campaign", "replay", failure_id]
    if store is not None:
        words += ["--store", str(store)]
    if code is not None:
        words += ["--code", code]
    return shlex.join(words)


def _runs_per_second(result: CampaignResult) -> float:
    return result.runs / result.wall_seconds if result.wall_seconds else 0.0


def summary_lines(result: CampaignResult, store: Path | None) -> list[str]:
    lines = [
        f"avcm campaign on {result.executor}: {result.runs:,} runs in "
        f"{result.wall_seconds:.1f} s ({_runs_per_second(result):.1f} runs/s), "
        f"{result.failed_runs:,} failed, {result.lost_runs} lost; "
        f"{len(result.signatures)} distinct failure(s)"
    ]
    if result.regressions:
        fixed = sum(1 for r in result.regressions if not r.still_fails and not r.lost)
        still = sum(1 for r in result.regressions if r.still_fails)
        lines.append(
            f"stored failures rerun: {len(result.regressions)}, still failing {still}, "
            f"fixed {fixed}"
        )
        lines += [
            f"  fixed: {r.stored.id} {r.stored.title}"
            for r in result.regressions
            if not r.still_fails and not r.lost
        ]
    for signature in _ordered(result):
        failure = signature.failure
        state = "new" if signature.new else "known"
        lines.append(
            f"FAILURE {signature.id} ({state}, {signature.count}x, smallest "
            f"{_size(signature)}): {failure.title}"
        )
        lines.append(
            f"  replay: {replay_command(signature.id, store, signature.failure.reproducer.code)}"
        )
    return lines


def _ordered(result: CampaignResult) -> list[Signature]:
    return sorted(result.signatures.values(), key=lambda s: (-s.count, s.id))


def _size(signature: Signature) -> str:
    size = signature.failure.size
    if signature.failure.reproducer.kind == "stress":
        return f"{size[0]:,} ops"
    return f"{size[0]} preemption(s), {size[1]} steps"


def report_json(result: CampaignResult, store: Path | None) -> dict[str, Any]:
    return {
        "executor": result.executor,
        "runs": result.runs,
        "failed_runs": result.failed_runs,
        "lost_runs": result.lost_runs,
        "work": result.work,
        "wall_seconds": result.wall_seconds,
        "runs_per_second": _runs_per_second(result),
        "timeline": [list(point) for point in result.timeline],
        "outcomes": {op: dict(counts) for op, counts in sorted(result.outcomes.items())},
        "latency_histogram_log2_us": dict(sorted(result.latency.items())),
        "failures": [
            {
                "id": s.id,
                "signature": s.failure.signature,
                "title": s.failure.title,
                "count": s.count,
                "new": s.new,
                "first_seen": s.first_seen,
                "size": list(s.failure.size),
                "reproducer": s.failure.reproducer.to_json(),
                "replay": replay_command(s.id, store, s.failure.reproducer.code),
            }
            for s in _ordered(result)
        ],
        "regressions": [
            {
                "id": r.stored.id,
                "title": r.stored.title,
                "still_fails": r.still_fails,
                "lost": r.lost,
            }
            for r in result.regressions
        ],
        "notices": list(result.notices),
        "runs_by_worker": dict(sorted(result.workers.items())),
    }


def report_junit(result: CampaignResult, store: Path | None) -> str:
    """JUnit XML: a test case per failure signature (failed) and one for the clean runs."""
    suite = ElementTree.Element(
        "testsuite",
        name="avcm-campaign",
        tests=str(len(result.signatures) + 1),
        failures=str(len(result.signatures)),
        errors="0",
        time=f"{result.wall_seconds:.3f}",
    )
    for signature in _ordered(result):
        case = ElementTree.SubElement(
            suite, "testcase", classname="avcm.campaign", name=signature.failure.signature
        )
        failure = ElementTree.SubElement(
            case, "failure", message=signature.failure.title, type="failure"
        )
        failure.text = (
            f"{signature.count} run(s) failed this way; smallest reproducer "
            f"{_size(signature)}\nreplay: "
            f"{replay_command(signature.id, store, signature.failure.reproducer.code)}\n\n"
            f"{signature.failure.detail}"
        )
    ElementTree.SubElement(suite, "testcase", classname="avcm.campaign", name=f"{result.runs} runs")
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: .2em .6em; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: top; } td.n { text-align: right; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
.bar { display: inline-block; height: .8em; margin-right: 1px; vertical-align: bottom; }
td.bars { white-space: nowrap; }
.failure { border-left: 4px solid #c33; padding-left: 1em; margin: 1em 0; }
.fixed { color: #383; }
"""

# successes green, skipped grey, every other outcome (an errno, mostly) a colour of its own,
# the same in every report (chosen by a checksum of its name, not by Python's salted hash)
_OTHERS = ("#d94", "#c33", "#47b", "#a5c", "#7bd", "#db5", "#b76", "#5aa")


def _colour(outcome: str) -> str:
    if outcome.startswith(("ok", "passed")):
        return "#4a7"
    if outcome.startswith("skipped"):
        return "#bbb"
    return _OTHERS[zlib.crc32(outcome.encode()) % len(_OTHERS)]


def _svg_throughput(result: CampaignResult) -> str:
    """Runs per second over time, one point per finished run, as an inline SVG polyline."""
    points = result.timeline
    if len(points) < 2:
        return "<p>Too few runs to draw.</p>"
    width, height = 600, 160
    end = max(points[-1][0], 1e-9)
    rates = []
    for index, (seconds, runs, _) in enumerate(points):
        # over the last few runs, so the line shows changes rather than the running average
        back = points[max(0, index - 8)]
        span = seconds - back[0]
        rates.append((runs - back[1]) / span if span > 0 else 0.0)
    top = max(rates) or 1.0
    coords = " ".join(
        f"{seconds / end * width:.1f},{height - rate / top * height:.1f}"
        for (seconds, _, _), rate in zip(points, rates, strict=True)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
        f'role="img" aria-label="runs per second over time">'
        f'<polyline fill="none" stroke="#47b" stroke-width="2" points="{coords}"/>'
        f'<text x="0" y="{height + 16}" font-size="12">0 s</text>'
        f'<text x="{width - 60}" y="{height + 16}" font-size="12">{end:.1f} s</text>'
        f'<text x="4" y="12" font-size="12">{top:.1f} runs/s</text></svg>'
    )


def _outcome_rows(result: CampaignResult) -> str:
    rows = []
    for op, counts in sorted(result.outcomes.items()):
        total = sum(counts.values()) or 1
        bars = "".join(
            f'<span class="bar" title="{html.escape(name)}: {count:,}" '
            f'style="width:{max(1, 300 * count // total)}px;background:{_colour(name)}"></span>'
            for name, count in sorted(counts.items())
        )
        text = ", ".join(f"{html.escape(name)} {count:,}" for name, count in sorted(counts.items()))
        rows.append(
            f"<tr><td>{html.escape(op)}</td><td class=n>{total:,}</td><td class=bars>{bars}</td>"
            f"<td>{text}</td></tr>"
        )
    return "".join(rows)


def _latency_rows(result: CampaignResult) -> str:
    rows = []
    for op, buckets in sorted(result.latency.items()):
        top = max(buckets) or 1
        cells = "".join(
            f'<span class="bar" title="&lt; {1 << index} µs: {count:,}" '
            f'style="width:8px;height:{max(1, 30 * count // top)}px;background:#47b"></span>'
            for index, count in enumerate(buckets)
        )
        rows.append(
            f"<tr><td>{html.escape(op)}</td><td class=bars>{cells}</td>"
            f"<td>0 to {1 << (len(buckets) - 1):,} µs</td></tr>"
        )
    return "".join(rows)


def _failure_sections(result: CampaignResult, store: Path | None) -> str:
    sections = []
    for signature in _ordered(result):
        failure = signature.failure
        command = replay_command(signature.id, store, signature.failure.reproducer.code)
        sections.append(
            f'<div class="failure" id="f-{signature.id}"><h3>{html.escape(failure.title)}</h3>'
            f"<p>id <code>{signature.id}</code>, {'new' if signature.new else 'known'}, "
            f"{signature.count} run(s), first by {html.escape(signature.first_seen)}; smallest "
            f"reproducer {_size(signature)}</p>"
            f"<p>replay: <code>{html.escape(command)}</code></p>{_trace_link(signature)}"
            f"<pre>{html.escape(failure.detail)}</pre></div>"
        )
    return "".join(sections) or "<p>No failure.</p>"


def _trace_link(signature: Signature) -> str:
    """The failing schedule's Perfetto trace, inside the page (a data: link), so the page stays
    one file: save it and open it in ui.perfetto.dev or chrome://tracing."""
    trace = signature.failure.trace
    if trace is None:
        return ""
    data = base64.b64encode(json.dumps(trace).encode()).decode()
    return (
        f'<p>timeline: <a download="{signature.id}.trace.json" '
        f'href="data:application/json;base64,{data}">Perfetto trace</a> '
        "(open it in ui.perfetto.dev or chrome://tracing)</p>"
    )


def _regression_rows(result: CampaignResult) -> str:
    rows = []
    for regression in result.regressions:
        state = (
            "lost"
            if regression.lost
            else "still fails"
            if regression.still_fails
            else '<span class="fixed">fixed</span>'
        )
        rows.append(
            f"<tr><td><code>{regression.stored.id}</code></td>"
            f"<td>{html.escape(regression.stored.title)}</td><td>{state}</td></tr>"
        )
    return "".join(rows)


def report_html(result: CampaignResult, store: Path | None) -> str:
    """One HTML page, no script and nothing fetched: it opens anywhere, from a CI artifact."""
    regressions = _regression_rows(result)
    notices = "".join(f"<li>{html.escape(line)}</li>" for line in result.notices)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>avcm campaign</title>
<style>{_STYLE}</style></head><body>
<h1>avcm campaign</h1>
<p>{html.escape(result.executor)}: {result.runs:,} runs in {result.wall_seconds:.1f} s
({_runs_per_second(result):.1f} runs/s), {result.failed_runs:,} failed, {result.lost_runs}
lost; <strong>{len(result.signatures)} distinct failure(s)</strong>.</p>
<h2>Failures</h2>{_failure_sections(result, store)}
{f"<h2>Stored failures rerun</h2><table>{regressions}</table>" if regressions else ""}
<h2>Throughput</h2>{_svg_throughput(result)}
<h2>Outcomes per operation</h2>
<table><tr><th>operation</th><th>count</th><th></th><th>outcomes</th></tr>
{_outcome_rows(result)}</table>
<h2>Latency (simulated time; each bar a doubling: &lt; 1 µs, &lt; 2 µs, &lt; 4 µs...)</h2>
<table>{_latency_rows(result)}</table>
{f"<h2>Notices</h2><ul>{notices}</ul>" if notices else ""}
<script type="application/json" id="report">{_script_safe(result, store)}</script>
</body></html>
"""


def _script_safe(result: CampaignResult, store: Path | None) -> str:
    # the JSON report inside the page, for tools; "</" would end the script element
    return json.dumps(report_json(result, store)).replace("</", "<\\/")
