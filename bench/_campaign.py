"""The campaign engine on Dask: how runs per second scale from one local worker to two, and
what the engine costs each run (the time a 1-worker campaign takes beyond its runs' own)."""

from __future__ import annotations

import itertools

from ._rows import Row

__all__ = ["campaign_rows"]


def campaign_rows(runs: int, ops: int) -> list[Row]:
    """Two campaigns of the same *runs* clean stress seeds of *ops* operations (about a second
    each with the default 3000), on a local Dask cluster of 1 and of 2 workers; nothing when Dask
    is not installed. The clusters' start and each worker's first run (its imports) are not
    counted: a campaign is timed from its first unit handed over to its last result back."""
    import stress
    from campaign import DaskExecutor, StressUnit, dask_available, run_campaign

    if not dask_available():
        return []
    settings = stress.StressConfig(ops=ops).to_json()
    measured = {}
    for workers in (1, 2):
        units = (StressUnit({**settings, "seed": seed}) for seed in itertools.count())
        executor = DaskExecutor(workers=workers)
        try:
            # a run per worker first: a worker's first run also imports avcm
            run_campaign(units, executor, runs=workers)
            measured[workers] = run_campaign(units, executor, runs=runs)
        finally:
            executor.close()
    one, two = measured[1], measured[2]
    rate_one, rate_two = one.runs / one.wall_seconds, two.runs / two.wall_seconds
    speedup = rate_two / rate_one
    overhead = one.wall_seconds / one.unit_seconds
    # how much of the wall time the two workers spent in runs: near 100% means the engine kept
    # both busy, and a speedup short of 2 is the runs themselves slowing down (other processes
    # sharing the cores), not the engine
    busy = two.unit_seconds / (2 * two.wall_seconds)
    return [
        Row(
            "campaign of stress seeds, 2 local Dask workers",
            "1 worker",
            speedup,
            ">= 1.7x",
            speedup >= 1.7,
            f"{rate_two:.2f} vs {rate_one:.2f} runs/s ({runs} runs of {ops:,} ops; "
            f"each run took {two.unit_seconds / two.runs:.2f} s with 2, "
            f"{one.unit_seconds / one.runs:.2f} s with 1; the 2 workers in runs "
            f"{busy:.0%} of the time)",
        ),
        Row(
            "campaign engine, 1 worker",
            "the runs' own time",
            overhead,
            "<= 1.05x",
            overhead <= 1.05,
            f"{(one.wall_seconds - one.unit_seconds) / one.runs * 1e3:.1f} ms a run of "
            f"{one.unit_seconds / one.runs:.2f} s",
        ),
    ]
