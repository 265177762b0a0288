"""Check a driver against the contract: both example drivers, every conformance scenario.

Run it with ``python -m examples.conformance_run``; the same from the command line is
``python -m avcm.testing conformance examples.page_table_driver:make``. A driver that breaks a
rule raises :class:`avcm.testing.ConformanceFailure`, whose report shows each failure's
timeline and the command that replays it.
"""

from __future__ import annotations

from avcm import testing
from examples import one_to_one_driver, page_table_driver


def main() -> None:
    for factory in (page_table_driver.make, one_to_one_driver.make):
        for backend in testing.BACKENDS:
            report = testing.check_conformance(factory, backend=backend, schedules=20)
            print(report.format().splitlines()[-1], f"({factory.__module__}, {backend})")


if __name__ == "__main__":
    main()
