"""``--json`` documents, and ``--compare``: each row's change against an earlier document.

The document (version 2)::

    {"version": 2, "quick": false, "repeats": 5,
     "rows": {"any": [ROW, ...], "asyncio": [...], "trio": [...]}}

with each ``ROW`` as :meth:`bench._measure.Row.to_json` writes it: ``what``, ``baseline``,
``ratio`` (the median repeat's), ``target``, ``met``, ``detail``, ``samples`` (every repeat's
ratio), ``min``, ``median``, ``max``, ``spread`` and ``unstable``. Version 1, written before
rows were repeated, is ``{"any": [ROW, ...], ...}`` with no samples: it is read as rows measured
once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from ._measure import Row

__all__ = [
    "VERSION",
    "BadDocument",
    "Change",
    "compare",
    "document",
    "load",
    "render_changes",
]

VERSION = 2
# a change smaller than this is noise even between two runs that each repeated steadily
MIN_NOISE = 0.05

Verdict = Literal["regressed", "improved", "within noise", "changed", "added", "removed"]


class BadDocument(Exception):
    """An earlier ``--json`` that cannot be compared with: the message says why, in a line."""


def document(results: Mapping[str, Sequence[Row]], *, quick: bool, repeats: int) -> dict[str, Any]:
    return {
        "version": VERSION,
        "quick": quick,
        "repeats": repeats,
        "rows": {backend: [row.to_json() for row in rows] for backend, rows in results.items()},
    }


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _row(backend: str, index: int, raw: object) -> Row:
    where = f"rows[{backend!r}][{index}]"
    if not isinstance(raw, dict):
        raise BadDocument(f"{where} is not an object")
    what, ratio, target = raw.get("what"), raw.get("ratio"), raw.get("target", "reported")
    if not isinstance(what, str) or not _number(ratio) or not isinstance(target, str):
        raise BadDocument(f"{where} needs a string 'what', a number 'ratio' and a string 'target'")
    samples = raw.get("samples", [ratio])
    if (
        not isinstance(samples, list)
        or not samples
        or not all(_number(sample) for sample in samples)
    ):
        raise BadDocument(f"{where}: 'samples' is not a list of numbers")
    baseline, detail, met = raw.get("baseline", ""), raw.get("detail", ""), raw.get("met")
    return Row(
        what,
        baseline if isinstance(baseline, str) else "",
        float(ratio),  # type: ignore[arg-type]
        target,
        met if isinstance(met, bool) else None,
        detail if isinstance(detail, str) else "",
        tuple(float(sample) for sample in samples),
    )


def load(path: Path) -> dict[str, list[Row]]:
    """The rows of an earlier ``--json``, by backend; :class:`BadDocument` if it cannot be."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadDocument("no such file") from None
    except IsADirectoryError:
        raise BadDocument("is a directory, not a file") from None
    except OSError as error:
        raise BadDocument(error.strerror or str(error)) from None
    except UnicodeDecodeError:
        raise BadDocument("not JSON (not UTF-8 text)") from None
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        message = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise BadDocument(f"not JSON ({message})") from None
    if not isinstance(raw, dict):
        raise BadDocument("not a bench --json document (not an object)")
    if "version" in raw:
        version = raw["version"]
        if version != VERSION or isinstance(version, bool):
            shown = json.dumps(version)[:40]
            raise BadDocument(
                f"version {shown}: this bench reads version {VERSION} (and 1, unversioned)"
            )
        rows = raw.get("rows")
    else:
        rows = raw  # version 1: the backends at the top
    if not isinstance(rows, dict) or not all(isinstance(r, list) for r in rows.values()):
        raise BadDocument("not a bench --json document (no rows by backend)")
    return {
        str(backend): [_row(str(backend), i, row) for i, row in enumerate(backend_rows)]
        for backend, backend_rows in rows.items()
    }


@dataclass(frozen=True)
class Change:
    backend: str
    what: str
    old: Row | None
    new: Row | None
    verdict: Verdict

    @property
    def relative(self) -> float | None:
        """(new - old) / old of the ratios, or ``None`` when one side is missing or 0."""
        if self.old is None or self.new is None or not self.old.ratio:
            return None
        return (self.new.ratio - self.old.ratio) / self.old.ratio


def _verdict(old: Row, new: Row) -> Verdict:
    """Beyond the noise means a change larger than the larger spread of the two runs' repeats
    (and than :data:`MIN_NOISE`): a row that swung 30% between repeats has not regressed for
    moving 25%."""
    if not old.ratio:
        return "within noise" if not new.ratio else "changed"
    relative = (new.ratio - old.ratio) / old.ratio
    if abs(relative) <= max(old.spread, new.spread, MIN_NOISE):
        return "within noise"
    better = new.better or old.better
    if better is None:
        return "changed"
    worse = relative > 0 if better == "lower" else relative < 0
    return "regressed" if worse else "improved"


def compare(old: Mapping[str, Sequence[Row]], new: Mapping[str, Sequence[Row]]) -> list[Change]:
    """Every row of *new* against the row of *old* with the same backend and ``what``, in
    *new*'s order, then the rows *old* has and *new* has not."""
    old_rows = {(backend, row.what): row for backend, rows in old.items() for row in rows}
    changes = []
    for backend, rows in new.items():
        for row in rows:
            before = old_rows.pop((backend, row.what), None)
            verdict: Verdict = "added" if before is None else _verdict(before, row)
            changes.append(Change(backend, row.what, before, row, verdict))
    changes += [Change(b, what, row, None, "removed") for (b, what), row in old_rows.items()]
    return changes


def render_changes(changes: Sequence[Change], old_name: str, console: Console) -> None:
    table = Table(title=f"change against {old_name} (ratios: median of repeats, old -> new)")
    for column in ("backend", "what", "old", "new", "change", "verdict"):
        table.add_column(column, justify="right" if column in ("old", "new", "change") else "left")
    for change in changes:
        old = "-" if change.old is None else f"{change.old.ratio:.2f}"
        new = "-" if change.new is None else f"{change.new.ratio:.2f}"
        relative = change.relative
        shown = "-" if relative is None else f"{relative:+.0%}"
        verdict = change.verdict.upper() if change.verdict == "regressed" else change.verdict
        table.add_row(change.backend, change.what, old, new, shown, verdict)
    console.print(table)
