"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers a core. Many tests wait in real time with the core idle (the
    race finder waiting a second for a blocked worker thread, a ``thread_timeout`` running
    out, a subprocess): at one worker a core, the race finder's thread tests kept the cores
    busy half the time (133 s of wall time for 136 s of CPU on 2 cores; 79 s at two a core)."""
    return 2 * (os.cpu_count() or 1)
