"""Hostile input: every public entry point answers junk with EINVAL and changes nothing; sizes
avcm cannot serve cost nothing to refuse or to make."""

from __future__ import annotations

import errno
import math
from collections.abc import Callable

import pytest

import avcm
import drivers

MiB = 1 << 20


class Junk:
    """Has no attribute avcm could mistake for anything."""


JUNK: list[object] = [42, "x", None, 1.5, Junk(), [1], {"a": 1}]


def assert_einval(call: Callable[[], object]) -> avcm.VcmError:
    with pytest.raises(avcm.VcmError) as info:
        call()
    assert info.value.errno == errno.EINVAL, info.value
    return info.value


@pytest.mark.parametrize("junk", [42, "x", Junk(), [1]])
def test_phys_alloc_with_junk_memory_is_einval(junk: object) -> None:
    assert_einval(lambda: avcm.phys_alloc(4096, memory=junk))  # type: ignore[arg-type]


@pytest.mark.parametrize("junk", [None, 42, "ab", Junk()])
def test_phys_with_junk_parts_is_einval(junk: object) -> None:
    assert_einval(lambda: avcm.lowlevel.create_phys(junk))  # type: ignore[arg-type]


@pytest.mark.parametrize("junk", [42, "x", Junk()])
def test_phys_with_junk_memory_or_free_is_einval(junk: object) -> None:
    assert_einval(lambda: avcm.lowlevel.create_phys([(0, 4096)], memory=junk))  # type: ignore[arg-type]
    assert_einval(lambda: avcm.lowlevel.create_phys([(0, 4096)], free=junk))  # type: ignore[arg-type]


class PerPage:
    orders = (0,)

    async def activate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        pass

    async def deactivate_page(self, vaddr: int, paddr: int, order: int, vcm: avcm.Vcm) -> None:
        pass


class Carve:
    async def alloc(self, vcm: avcm.Vcm, part: avcm.lowlevel.O2oPart, flags: int) -> object:
        return None

    async def free(self, part: avcm.PhysPart, token: object) -> None:
        pass


@pytest.mark.parametrize("junk", [42, "x", Junk()])
def test_context_factories_check_memory_at_the_call(junk: object) -> None:
    memory = avcm.PhysicalMemory(size=64 * MiB)
    before = memory.statistics()
    assert_einval(lambda: avcm.mmu_init(0, MiB, PerPage(), memory=junk))  # type: ignore[arg-type]
    assert_einval(lambda: avcm.o2o_init(0, MiB, Carve(), memory=junk))  # type: ignore[arg-type]
    assert_einval(lambda: drivers.create_iommu(junk))  # type: ignore[arg-type]
    assert_einval(lambda: drivers.create_cpu(junk))  # type: ignore[arg-type]
    assert_einval(lambda: drivers.create_carveout(junk))  # type: ignore[arg-type]
    assert memory.statistics() == before


@pytest.mark.parametrize("option", ["latency", "faults", "name"])
@pytest.mark.parametrize("junk", [42, "x", Junk()])
def test_driver_factories_check_their_options(option: str, junk: object) -> None:
    if option == "name" and isinstance(junk, str):
        return
    memory = avcm.PhysicalMemory(size=64 * MiB)
    for factory in (drivers.create_iommu, drivers.create_cpu, drivers.create_carveout):
        assert_einval(lambda: factory(memory, **{option: junk}))  # noqa: B023
    assert memory.is_pristine()


@pytest.mark.parametrize("junk", JUNK)
def test_hardware_of_junk_is_einval(junk: object) -> None:
    assert_einval(lambda: drivers.hardware(junk))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "delays",
    [
        42,
        "abc",
        Junk(),
        [("alloc", 1.0)],
        {"alloc": float("inf")},
        {"alloc": float("nan")},
        {"alloc": -1e-6},
        {"alloc": 1e300},
        {"alloc": "1"},
        {"alloc": True},
        {3: 1.0},
    ],
)
def test_latency_refuses_junk_delays_at_construction(delays: object) -> None:
    assert_einval(lambda: drivers.Latency(delays))  # type: ignore[arg-type]


@pytest.mark.parametrize("jitter", [math.nan, math.inf, -0.1, 1.5, "0.1"])
def test_latency_refuses_bad_jitter(jitter: object) -> None:
    assert_einval(lambda: drivers.Latency({"alloc": 1e-6}, jitter=jitter))  # type: ignore[arg-type]


@pytest.mark.parametrize("junk", [[1], 1.5, "x", None, -1])
def test_latency_refuses_bad_seed_and_profile(junk: object) -> None:
    assert_einval(lambda: drivers.Latency(seed=junk))  # type: ignore[arg-type]
    assert_einval(lambda: drivers.Latency.profile(junk))  # type: ignore[arg-type]


@pytest.mark.parametrize("start", ["x", None, 1.5, [0]])
def test_free_pages_of_junk_start_is_einval_and_changes_nothing(start: object) -> None:
    memory = avcm.PhysicalMemory(size=4 * MiB)
    assert memory.alloc_pages(0) is not None
    before = memory.statistics()
    assert_einval(lambda: memory.free_pages(start, 0))  # type: ignore[arg-type]
    assert memory.statistics() == before


@pytest.mark.anyio
async def test_phys_walk_with_a_plain_callback_is_einval_before_any_page() -> None:
    phys = avcm.lowlevel.create_phys([(0, 3 * 4096)])
    called: list[int] = []

    def plain(vaddr: int, paddr: int, order: int) -> None:
        called.append(vaddr)

    async def callback(vaddr: int, paddr: int, order: int) -> None:
        called.append(vaddr)

    with pytest.raises(avcm.InvalidError, match="async"):
        await avcm.phys_walk(0, phys, (0,), plain)  # type: ignore[arg-type]
    with pytest.raises(avcm.InvalidError, match="async"):
        await avcm.phys_walk(0, phys, (0,), callback, plain)  # type: ignore[arg-type]
    assert called == []


@pytest.mark.anyio
async def test_phys_walk_takes_async_callables_of_every_shape() -> None:
    import functools

    seen: list[tuple[str, int]] = []

    async def tagged(tag: str, vaddr: int, paddr: int, order: int) -> None:
        seen.append((tag, vaddr))

    class Callback:
        async def __call__(self, vaddr: int, paddr: int, order: int) -> None:
            seen.append(("object", vaddr))

    phys = avcm.lowlevel.create_phys([(0, 4096)])
    await avcm.phys_walk(0, phys, (0,), functools.partial(tagged, "partial"))
    await avcm.phys_walk(0, phys, (0,), Callback())
    assert seen == [("partial", 0), ("object", 0)]


# -- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "size"), [(0, 1 << 50), (0, (1 << 64) - 4096), (4096, (1 << 64) - 8192)]
)
def test_memory_of_any_size_is_made_at_once(base: int, size: int) -> None:
    # 2**64 bytes in 4 MiB blocks would be 2**42 free-list entries if made eagerly
    memory = avcm.PhysicalMemory(base=base, size=size)
    assert memory.free_bytes == size
    stats = memory.statistics()
    assert (
        sum(count << (12 + order) for order, count in enumerate(stats.free_blocks_per_order))
        == size
    )
    blocks = [(memory.alloc_pages(order), order) for order in (10, 0, 10, 3, 10)]
    assert all(start is not None for start, _ in blocks)
    for start, order in reversed(blocks):
        assert start is not None
        memory.free_pages(start, order)
    assert memory.is_pristine()
    assert memory.statistics() == stats


def test_lazy_top_blocks_are_taken_lowest_first_and_merge_back() -> None:
    memory = avcm.PhysicalMemory(base=0, size=16 * 4 * MiB)
    first = [memory.alloc_pages(10) for _ in range(3)]
    assert first == [0, 4 * MiB, 8 * MiB]
    memory.free_pages(4 * MiB, 10)
    assert memory.alloc_pages(10) == 4 * MiB  # the freed one, lower than the untouched run
    for start in first:
        assert start is not None
        memory.free_pages(start, 10)
    assert memory.is_pristine()


def test_carveout_refuses_a_region_it_cannot_take_at_once() -> None:
    memory = avcm.PhysicalMemory(size=1 << 60)
    before = memory.statistics()
    with pytest.raises(avcm.InvalidError, match="blocks"):
        drivers.create_carveout(memory, size=1 << 50)
    with pytest.raises(avcm.NoMemoryError):
        drivers.create_carveout(avcm.PhysicalMemory(size=64 * MiB), size=1 << 30)
    assert memory.statistics() == before


def test_a_read_is_bounded_whatever_the_memory_size() -> None:
    memory = avcm.PhysicalMemory(size=1 << 40)  # a terabyte: pages are made when written
    memory.write(memory.base, b"x")
    with pytest.raises(avcm.InvalidError, match="read it in parts") as info:
        memory.read(memory.base, 1 << 39)
    assert info.value.errno == errno.EINVAL
    assert memory.read(memory.base, 2) == b"x\0"
