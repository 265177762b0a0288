"""avcm campaigns: many independent runs (stress seeds, conformance scenarios by seed,
race-finder explorations by strategy and seed) on a Dask cluster or local processes, failures
grouped by signature with the smallest reproducer of each kept in a failure store, and reports
(terminal, JSON, JUnit XML, HTML). See ``python -m campaign --help``.

Dask is imported only when a cluster is used: ``pip install 'avcm[cluster]'``.
"""

from ._campaign import CampaignResult, Regression, Signature, run_campaign
from ._cli import main
from ._executors import DaskExecutor, Executor, ExecutorError, LocalExecutor, dask_available
from ._report import replay_command, report_html, report_json, report_junit, summary_lines
from ._store import FailureStore, StoredFailure, StoreError, failure_id, find
from ._units import (
    ConformanceUnit,
    ExploreUnit,
    FoundFailure,
    StressUnit,
    Unit,
    UnitError,
    UnitResult,
    normalize,
    unit_from_json,
)

__all__ = [
    "CampaignResult",
    "ConformanceUnit",
    "DaskExecutor",
    "Executor",
    "ExecutorError",
    "ExploreUnit",
    "FailureStore",
    "FoundFailure",
    "LocalExecutor",
    "Regression",
    "Signature",
    "StoreError",
    "StoredFailure",
    "StressUnit",
    "Unit",
    "UnitError",
    "UnitResult",
    "dask_available",
    "failure_id",
    "find",
    "main",
    "normalize",
    "replay_command",
    "report_html",
    "report_json",
    "report_junit",
    "run_campaign",
    "summary_lines",
    "unit_from_json",
]
