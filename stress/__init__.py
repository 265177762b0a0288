"""The avcm stress harness: ``python -m stress`` interleaves every operation from many tasks and
checks the contract's invariants after every step. See ``python -m stress --help``."""

from ._cli import main, run
from ._config import DRIVER_CONTEXTS, DRIVER_DEFAULT_CONTEXTS, OPERATIONS, StressConfig, UsageError
from ._invariants import Violation
from ._watchdog import STALL_TIMEOUT
from ._workload import RunResult

__all__ = [
    "DRIVER_CONTEXTS",
    "DRIVER_DEFAULT_CONTEXTS",
    "OPERATIONS",
    "STALL_TIMEOUT",
    "RunResult",
    "StressConfig",
    "UsageError",
    "Violation",
    "main",
    "run",
]
