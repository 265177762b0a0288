"""The public namespaces: ``avcm`` is the contract, ``avcm.lowlevel`` the driver writer's
machinery, ``avcm.testing`` the race finder and the checks; each name is in exactly one of
them and resolves."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import avcm
import drivers
from avcm import lowlevel, testing
from tests._recording import make_context

pytestmark = pytest.mark.anyio

CONTRACT = {
    # the contract's public names (docs/contract.md, API)
    "PAGE_SIZE",
    "PAGE_SHIFT",
    "VcmError",
    "VcmWarning",
    "Vcm",
    "Res",
    "Phys",
    "PhysPart",
    "phys_alloc",
    "phys_walk",
    "PhysicalMemory",
    "mmu_init",
    "o2o_init",
    # an error class per errno
    "AddressInUseError",
    "AlreadyBoundError",
    "BusyError",
    "InvalidError",
    "NoMemoryError",
    "NoSpaceError",
    "NotSupportedError",
    # statistics records
    "MemoryStatistics",
    "MutexStatistics",
    "PhysStatistics",
    "VcmStatistics",
    # the namespace for driver writers
    "lowlevel",
}


def test_the_top_level_is_the_contract() -> None:
    assert set(avcm.__all__) == CONTRACT
    for moved in ("Mutex", "MmuWrapper", "walk_pages", "HardwareView", "check_model"):
        assert not hasattr(avcm, moved), moved


@pytest.mark.parametrize("namespace", [avcm, lowlevel, testing], ids=lambda n: n.__name__)
def test_every_public_name_resolves_and_is_documented(namespace: object) -> None:
    for name in namespace.__all__:  # type: ignore[attr-defined]
        value = getattr(namespace, name)
        if inspect.isfunction(value) or inspect.isclass(value):  # not type aliases
            assert value.__doc__, f"{namespace.__name__}.{name} has no docstring"  # type: ignore[attr-defined]


def test_each_name_is_in_one_namespace() -> None:
    assert set(avcm.__all__).isdisjoint(lowlevel.__all__)
    assert set(lowlevel.__all__).isdisjoint(testing.__all__)
    assert set(avcm.__all__).isdisjoint(testing.__all__)


def test_import_avcm_imports_neither_the_race_finder_nor_hypothesis() -> None:
    code = (
        "import sys, avcm; avcm.lowlevel.Mutex; "
        "print(sorted(m for m in sys.modules if m.startswith(('avcm.testing', 'hypothesis', "
        "'pytest'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


async def test_hardware_view_finds_what_a_driver_shows() -> None:
    memory = avcm.PhysicalMemory(size=64 << 20)
    core, recording = make_context(memory)
    assert lowlevel.hardware_view(core) is recording
    iommu = drivers.create_iommu(memory)
    assert lowlevel.hardware_view(iommu) is drivers.hardware(iommu)
    carveout = drivers.create_carveout(memory, size=4 << 20)
    assert lowlevel.hardware_view(carveout) is None  # no translating hardware
