"""A race test of your own driver, in a few lines: run it with ``python -m pytest
examples/test_race.py``. The ``race`` fixture comes with avcm (a pytest plugin).

Two tasks bind two different memories to one reservation at the same moment: exactly one may
win (rule 5), whatever the interleaving. The race finder runs the two binds under many
schedules, one task at a time from checkpoint to checkpoint; a failure would print its
timeline and a command that replays it.
"""

from __future__ import annotations

import errno

import pytest
import trio.testing

import avcm
from avcm import testing
from avcm.testing.pytest_plugin import RaceFixture
from examples.page_table_driver import make


async def two_binds(run: testing.Run) -> None:
    async with make(avcm.PhysicalMemory(size=64 << 20)) as vcm:
        res = await vcm.reserve(64 << 10)
        a, b = await vcm.alloc(64 << 10), await vcm.alloc(64 << 10)
        async with vcm.activated():  # binding into active hardware: the driver races too
            outcomes = await run.concurrently(lambda: res.bind(a), lambda: res.bind(b))
        winners = [outcome for outcome in outcomes if outcome.ok]
        assert len(winners) == 1, "rule 5: exactly one bind wins"
        (loser,) = [outcome.error for outcome in outcomes if not outcome.ok]
        assert isinstance(loser, avcm.VcmError) and loser.errno == errno.EADDRINUSE
        await res.destroy_binding()  # frees the winner's memory
        await (b if outcomes[0].ok else a).free()


@pytest.mark.trio
async def test_exactly_one_bind_wins(
    race: RaceFixture, autojump_clock: trio.testing.MockClock
) -> None:
    await race.check(two_binds, schedules=300)
