"""``--replay``: load a trace file (checked whole before anything runs), rerun it, and say
whether the rerun followed the recording and ended as it did."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from avcm.lowlevel import quote

from ._config import StressConfig, UsageError
from ._report import TRACE_VERSION, harness_code
from ._workload import Outcome, RunResult

__all__ = ["Recording", "load_recording", "verdict"]

# what an operation of a trace file must hold, and what _compare looks at
_COMPARED = {"task": int, "op": str, "target": str, "result": str}


@dataclass(frozen=True)
class Recording:
    config: StressConfig  # what to run: the recorded settings, for the recorded op count
    trace: list[dict[str, Any]]
    violation: dict[str, Any] | None
    no_verdict: str | None = None
    code: str | None = None  # harness_code() of the run recorded (None: not recorded)
    # the operations not judged after undos that failed: (first, last, why) of each window
    unjudged: tuple[tuple[int, int, str], ...] = ()


def _problem(document: Any) -> str | None:
    """What makes *document* not a trace file this harness can replay, or None."""
    if not isinstance(document, dict):
        return f"it holds a JSON {type(document).__name__}, not an object"
    if not isinstance(document.get("config"), dict):
        return "no 'config' object"
    trace = document.get("trace")
    if not isinstance(trace, list):
        return "no 'trace' list"
    for index, entry in enumerate(trace, 1):
        if not isinstance(entry, dict):
            return f"trace entry {index} is not an object"
        for key, kind in _COMPARED.items():
            if not isinstance(entry.get(key), kind):
                return f"trace entry {index} has no {kind.__name__} {key!r}"
    violation = document.get("violation")
    if violation is not None and not (
        isinstance(violation, dict)
        and all(isinstance(violation.get(key), str) for key in ("rule", "description"))
    ):
        return "'violation' is neither null nor an object with a rule and a description"
    if not isinstance(document.get("no_verdict"), (str, type(None))):
        return "'no_verdict' is neither null nor a string"
    unjudged = document.get("unjudged", [])
    if not isinstance(unjudged, list) or not all(
        isinstance(window, dict)
        and all(type(window.get(key)) is int for key in ("first", "last"))
        and isinstance(window.get("why"), str)
        for window in unjudged
    ):
        return "'unjudged' is not a list of windows, each with its first and last operation and why"
    if not isinstance(document.get("code"), (str, type(None))):
        return "'code' is neither null nor a string"
    started = document.get("started", 0)
    if not isinstance(started, int) or isinstance(started, bool) or started < 0:
        return "'started' is not a count"
    version = document.get("version")
    if version != TRACE_VERSION:
        return f"trace version {quote(version)}, this harness replays version {TRACE_VERSION}"
    return None


def load_recording(path: Path, driver: str | None = None) -> Recording:
    """Read and check a trace file; a bad one is a :class:`UsageError` (nothing has run).

    A file is data: it never chooses code to import. A trace of a run with ``--driver`` is
    replayed only if *driver* (the command line's ``--driver``) names the same driver.
    """
    try:
        document = json.loads(path.read_text())
    except RecursionError:
        raise UsageError(f"--replay {path}: not a stress trace file (nested too deeply)") from None
    except (OSError, ValueError) as error:
        reason = quote(str(error), 120)[1:-1]
        raise UsageError(f"--replay {path}: not a stress trace file ({reason})") from None
    problem = _problem(document)
    if problem is not None:
        raise UsageError(f"--replay {path}: not a stress trace file ({problem})")
    config = StressConfig.from_json(document["config"])
    _check_driver(path, config.driver, driver)
    trace = document["trace"]
    if config.duration is not None:
        # a --duration run stopped when its time was up: the replay starts as many operations
        # (the same ones, if it follows), not for as long; some may not have ended (a stalled
        # run's), so the trace can be shorter
        if not trace:
            raise UsageError(f"--replay {path}: the recorded --duration run has no operation")
        config = replace(config, duration=None, ops=max(len(trace), document.get("started", 0)))
    return Recording(
        config,
        trace,
        document.get("violation"),
        document.get("no_verdict"),
        document.get("code"),
        tuple(
            (window["first"], window["last"], window["why"])
            for window in document.get("unjudged", [])
        ),
    )


def _check_driver(path: Path, recorded: str | None, given: str | None) -> None:
    if recorded == given:
        return
    if recorded is None:
        raise UsageError(
            f"--driver {quote(given)}: {path} was recorded with the sample drivers; "
            "replay it without --driver"
        )
    what = "was given no --driver" if given is None else f"--driver is {quote(given)}"
    raise UsageError(
        f"--replay {path}: the trace was recorded with --driver {quote(recorded)} and {what}; "
        "a trace file never chooses code to import: pass --driver with that driver to replay it"
    )


def _compare(recorded: list[dict[str, Any]], trace: list[Outcome]) -> str | None:
    for index, (want, got) in enumerate(zip(recorded, trace, strict=False)):
        got_fields = (got.task, got.op, got.target, got.result)
        want_fields = tuple(want[key] for key in _COMPARED)
        if got_fields != want_fields:
            return f"operation {index + 1}: recorded {want_fields}, replayed {got_fields}"
    if len(recorded) != len(trace):
        return f"recorded {len(recorded)} operations, replayed {len(trace)}"
    return None


# where a traceback quotes a frame: a line number moves when code above it is edited (a print
# added to debug the driver), and the violation is still the same
_FRAME_LINE = re.compile(r'(File "[^"]*", line )[0-9]+')


def _identity(rule: str, description: str) -> tuple[str, str]:
    return rule, _FRAME_LINE.sub(r"\1N", description)


def verdict(recording: Recording, result: RunResult) -> tuple[bool, list[str]]:
    """Whether the replay reproduced the recording (same operations, same outcomes, the same
    violation or none, with no verdict or not), and the lines that say so: if not, also
    whether the recording was made by other code of avcm, its drivers or the harness."""
    reproduced, lines = _verdict(recording, result)
    if not reproduced and recording.code not in (None, harness_code()):
        lines.append(
            f"the trace was recorded by other code of avcm, its sample drivers or this "
            f"harness ({recording.code}; this is {harness_code()}): the change may be what "
            "moved the run"
        )
    return reproduced, lines


def _verdict(recording: Recording, result: RunResult) -> tuple[bool, list[str]]:
    lines = []
    divergence = _compare(recording.trace, result.trace)
    unjudged = tuple(result.unjudged)
    if divergence is None and unjudged != recording.unjudged:
        divergence = (
            f"the operations not judged after undos that failed: recorded "
            f"{_windows(recording.unjudged)}, replayed {_windows(unjudged)}"
        )
    if divergence is not None:
        lines.append(f"REPLAY DIVERGED: {divergence}")
    if recording.no_verdict is not None or result.no_verdict is not None:
        same = result.no_verdict == recording.no_verdict and result.violation is None
        if divergence is None and same:
            lines.append("reproduced the recorded end with no verdict")
            return True, lines
        wanted = recording.no_verdict or "a verdict"
        lines.append(
            f"NOT REPRODUCED: it ended with {result.no_verdict or 'a verdict'}; recorded: {wanted}"
        )
        return False, lines
    recorded, found = recording.violation, result.violation
    if recorded is None:
        same_end = found is None
        wanted = "the recorded run was clean"
    else:
        same_end = found is not None and _identity(found.rule, found.description) == _identity(
            recorded["rule"], recorded["description"]
        )
        wanted = f"recorded violation: {recorded['rule']}: {recorded['description']}"
    if divergence is None and same_end:
        lines.append("reproduced the recorded violation" if found else "clean, as recorded")
        return True, lines
    if same_end:
        ending = "it diverged, though it " + ("found the same violation" if found else "was clean")
    else:
        ending = ("a different violation" if found else "no violation") + f"; {wanted}"
    lines.append(f"NOT REPRODUCED: {ending}")
    return False, lines


def _windows(windows: tuple[tuple[int, int, str], ...]) -> str:
    return "; ".join(f"{first}-{last} ({why})" for first, last, why in windows) or "none"
