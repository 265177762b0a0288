"""The contract lives in the repository (docs/contract.md), README links it, and the errno its
table gives for each situation is the one avcm raises."""

from __future__ import annotations

import builtins
import copy
import errno
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import avcm
import drivers

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
KiB = 1 << 10
ZERO = drivers.Latency.profile("zero")


def section(title: str) -> str:
    """The text of one ``## title`` section of the contract."""
    text = CONTRACT.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_links_the_contract() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/contract.md)" in readme
    assert CONTRACT.is_file()


def test_no_reference_to_a_contract_outside_the_repository() -> None:
    """SEMANTICS.md was the contract's name outside the repository, which users do not have."""
    stale = [
        str(path.relative_to(ROOT))
        for folder in ("avcm", "drivers", "stress", "bench", "tests", "docs")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md")
        and path != Path(__file__).resolve()
        and "SEMANTICS.md" in path.read_text()
    ]
    if "SEMANTICS.md" in (ROOT / "README.md").read_text():
        stale.append("README.md")
    assert stale == []


def test_the_contract_has_the_nine_rules_numbered_as_the_checks_name_them() -> None:
    rules = re.findall(r"^(\d+)\. \*\*", section("Concurrency rules"), re.MULTILINE)
    assert rules == [str(n) for n in range(1, 10)]


@pytest.mark.parametrize(
    "title",
    [
        "Objects and operations",
        "API",
        "Errors",
        "Warnings",
        "Cancellation",
        "Partial effects",
        "Threads and event loops",
        "Bugs in the 2010 patch that avcm does not copy",
    ],
)
def test_the_contract_has_its_sections(title: str) -> None:
    assert section(title).strip()


def test_cancellation_covers_every_operation() -> None:
    text = section("Cancellation")
    for operation in (
        "alloc",
        "reserve",
        "map",
        "bind",
        "make_binding",
        "activate",
        "free",
        "unbind",
        "unreserve",
        "unmap",
        "destroy_binding",
        "deactivate",
        "destroy",
        "activated",
    ):
        assert f".{operation}" in text, operation


OPERATIONS = [
    *(getattr(avcm.Vcm, name) for name in (
        "destroy", "alloc", "reserve", "map", "make_binding", "activate", "deactivate"
    )),
    *(getattr(avcm.Res, name) for name in (
        "bind", "unbind", "unreserve", "unmap", "destroy_binding"
    )),
    avcm.Phys.free, avcm.phys_alloc, avcm.phys_walk, avcm.mmu_init, avcm.o2o_init,
    avcm.PhysicalMemory,
]  # fmt: skip


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.__qualname__)
def test_every_operation_says_what_it_raises_in_a_raises_section(operation: object) -> None:
    # a "Raises:" section is what the documentation site renders as a list of exceptions
    doc = operation.__doc__ or ""
    section = doc[doc.index("Raises:") :] if "Raises:" in doc else ""
    names = re.findall(r"^\s+(\w+): ", section, re.M)
    assert names, f"{operation} has no Raises: section"
    for name in names:  # each one a real exception class
        exception = getattr(avcm, name, None) or getattr(builtins, name, None)
        assert isinstance(exception, type) and issubclass(exception, BaseException), name


def test_license_is_the_gpl_version_2_or_later() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.lstrip().startswith("GNU GENERAL PUBLIC LICENSE\n")
    assert "Version 2, June 1991" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    assert 'license = "GPL-2.0-or-later"' in (ROOT / "pyproject.toml").read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "either version 2 of the License, or (at your option) any later version" in readme


# -- the errno table --------------------------------------------------------------------------


@dataclass
class World:
    iommu: avcm.Vcm
    carveout: avcm.Vcm


Case = Callable[[World], Awaitable[object]]


async def _bound(world: World) -> tuple[avcm.Res, avcm.Phys]:
    res = await world.iommu.make_binding(64 * KiB)
    assert res.phys is not None
    return res, res.phys


async def _einval_bad_size(world: World) -> None:
    await world.iommu.alloc(0)


async def _einval_double_free(world: World) -> None:
    phys = await world.iommu.alloc(4 * KiB)
    await phys.free()
    await phys.free()


async def _einval_destroyed(world: World) -> None:
    await world.iommu.destroy()
    await world.iommu.reserve(4 * KiB)


async def _einval_bad_driver(world: World) -> None:
    avcm.o2o_init(0, 1 << 20, object())  # type: ignore[arg-type]


async def _einval_no_constructor(world: World) -> None:
    avcm.Res(world.iommu, world.iommu.start, 4 * KiB)


async def _einval_copy(world: World) -> None:
    copy.copy(await world.iommu.alloc(4 * KiB))


async def _ealready(world: World) -> None:
    res, phys = await _bound(world)
    await res.bind(phys)


async def _eaddrinuse(world: World) -> None:
    res, _ = await _bound(world)
    await res.bind(await world.iommu.alloc(4 * KiB))


async def _enospc_bind(world: World) -> None:
    res = await world.iommu.reserve(4 * KiB)
    await res.bind(await world.iommu.alloc(8 * KiB))


async def _enospc_space(world: World) -> None:
    await world.iommu.reserve(2 << 30)  # the context has 1 GiB


async def _enomem(world: World) -> None:
    await world.iommu.alloc(1 << 40)


async def _enomem_carveout(world: World) -> None:
    await world.carveout.alloc(2 << 20)  # the region has 1 MiB


async def _eopnotsupp_reserve(world: World) -> None:
    await world.carveout.reserve(4 * KiB)


async def _eopnotsupp_foreign(world: World) -> None:
    await world.carveout.map(await world.iommu.alloc(4 * KiB))


async def _ebusy_free(world: World) -> None:
    _, phys = await _bound(world)
    await phys.free()


async def _ebusy_map_twice(world: World) -> None:
    phys = await world.carveout.alloc(4 * KiB)
    await world.carveout.map(phys)
    await world.carveout.map(phys)


CASES: dict[str, list[Case]] = {
    "EINVAL": [
        _einval_bad_size,
        _einval_double_free,
        _einval_destroyed,
        _einval_bad_driver,
        _einval_no_constructor,
        _einval_copy,
    ],
    "EALREADY": [_ealready],
    "EADDRINUSE": [_eaddrinuse],
    "ENOSPC": [_enospc_bind, _enospc_space],
    "ENOMEM": [_enomem, _enomem_carveout],
    "EOPNOTSUPP": [_eopnotsupp_reserve, _eopnotsupp_foreign],
    "EBUSY": [_ebusy_free, _ebusy_map_twice],
}


def test_every_errno_of_the_table_has_cases() -> None:
    named = set()
    for line in section("Errors").splitlines():
        cells = line.split("|")
        if len(cells) > 3 and not cells[1].strip().startswith(("situation", "---")):
            named.update(re.findall(r"`(E[A-Z]+)`", cells[2]))
    assert named == set(CASES)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    memory = avcm.PhysicalMemory(size=64 << 20)
    made = World(
        drivers.create_iommu(memory, latency=ZERO),
        drivers.create_carveout(memory, size=1 << 20, latency=ZERO),
    )
    yield made
    with warnings.catch_warnings():
        # teardown, not under test: destroy releases what a case left, warning that it does
        warnings.simplefilter("ignore", avcm.VcmWarning)
        for vcm in (made.iommu, made.carveout):
            if not vcm.destroyed:
                await vcm.destroy()
    assert memory.is_pristine()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "case"),
    [(code, case) for code, cases in CASES.items() for case in cases],
    ids=lambda value: value if isinstance(value, str) else value.__name__.lstrip("_"),
)
async def test_the_code_raises_the_errno_of_the_table(world: World, code: str, case: Case) -> None:
    with pytest.raises(avcm.VcmError) as info:
        await case(world)
    assert info.value.errno == getattr(errno, code)
