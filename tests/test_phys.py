"""phys_alloc and phys_walk, with the documentation's examples reproduced exactly."""

from __future__ import annotations

import errno

import pytest

import avcm

pytestmark = pytest.mark.anyio

MiB = 1 << 20
KiB = 1 << 10


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=16 * MiB)


def sizes(phys: avcm.Phys) -> list[int]:
    return [part.size for part in phys.parts]


async def test_alloc_example_2m_68k(memory: avcm.PhysicalMemory) -> None:
    phys = avcm.phys_alloc(2 * MiB + 68 * KiB, 0, (8, 4, 0), memory=memory)
    assert sizes(phys) == [MiB, MiB, 64 * KiB, 4 * KiB]
    assert phys.count == 4 and phys.size == 2 * MiB + 68 * KiB
    for part in phys.parts:
        assert part.start % part.size == 0  # buddy blocks are naturally aligned
    await phys.free()
    assert memory.is_pristine()


async def test_alloc_header_example_2m_12k(memory: avcm.PhysicalMemory) -> None:
    # vcm-drv.h: orders {8, 0} and 2 MiB + 12 KiB -> two 1 MiB pages and three 4 KiB pages
    phys = avcm.phys_alloc(2 * MiB + 12 * KiB, 0, (8, 0), memory=memory)
    assert sizes(phys) == [MiB, MiB, 4 * KiB, 4 * KiB, 4 * KiB]
    await phys.free()


async def test_alloc_falls_back_to_smaller_pages_when_fragmented() -> None:
    memory = avcm.PhysicalMemory(size=2 * MiB)
    # pin one 4 KiB page in each 1 MiB half: no 1 MiB block is left, but 30 of 64 KiB are
    pages = [memory.alloc_pages(0) for _ in range(2 * MiB // avcm.PAGE_SIZE)]
    pins = {memory.base + 5 * avcm.PAGE_SIZE, memory.base + MiB + 100 * avcm.PAGE_SIZE}
    for page in pages:
        assert page is not None
        if page not in pins:
            memory.free_pages(page, 0)
    assert memory.alloc_pages(8) is None and memory.free_bytes == 2 * MiB - 8 * KiB
    phys = avcm.phys_alloc(MiB + 68 * KiB, 0, (8, 4, 0), memory=memory)
    assert sizes(phys) == [64 * KiB] * 17 + [4 * KiB]  # not one 1 MiB page: none to be had
    assert all(part.start % part.size == 0 for part in phys.parts)
    await phys.free()
    rest = avcm.phys_alloc(2 * MiB - 8 * KiB, 0, (8, 4, 0), memory=memory)
    assert sizes(rest) == [64 * KiB] * 30 + [4 * KiB] * 30  # 64 KiB blocks, then pages
    await rest.free()
    for pin in pins:
        memory.free_pages(pin, 0)
    assert memory.is_pristine()


async def test_alloc_enomem_leaks_nothing() -> None:
    memory = avcm.PhysicalMemory(size=2 * MiB)
    keep = avcm.phys_alloc(MiB, 0, (8, 0), memory=memory)
    before = memory.statistics()
    with pytest.raises(avcm.NoMemoryError) as info:
        avcm.phys_alloc(MiB + 4 * KiB, 0, (8, 4, 0), memory=memory)
    assert info.value.errno == errno.ENOMEM
    assert memory.statistics() == before
    await keep.free()
    assert memory.is_pristine()


async def test_alloc_enomem_with_nothing_free() -> None:
    # The patch's cleanup with a zero count wrapped around.
    memory = avcm.PhysicalMemory(size=MiB)
    everything = avcm.phys_alloc(MiB, 0, (8, 0), memory=memory)
    with pytest.raises(avcm.NoMemoryError):
        avcm.phys_alloc(4 * KiB, 0, (0,), memory=memory)
    await everything.free()
    assert memory.is_pristine()


# Orders are exponents: a page of PAGE_SIZE << order is always a power of two; a fractional order
# (a page that is not a power of two), a repeated, ascending or out-of-range one is EINVAL.
BAD_ORDERS = [
    (),
    (4, 8, 0),
    (8, 4),
    (8, 8, 0),
    (8, -1, 0),
    ("8", 0),
    (8.0, 0),
    (8, 2.5, 0),
    (True, 0),
    8,
    "840",
    (99, 0),
    None,
]


@pytest.mark.parametrize("orders", BAD_ORDERS)
async def test_alloc_bad_orders(memory: avcm.PhysicalMemory, orders: object) -> None:
    before = memory.statistics()
    with pytest.raises(avcm.InvalidError) as info:
        avcm.phys_alloc(4096, 0, orders, memory=memory)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert memory.statistics() == before


@pytest.mark.parametrize("size", [0, -4096, 1.5, None])
async def test_alloc_bad_size(memory: avcm.PhysicalMemory, size: object) -> None:
    with pytest.raises(avcm.InvalidError):
        avcm.phys_alloc(size, 0, (0,), memory=memory)  # type: ignore[arg-type]
    assert memory.is_pristine()


# -- phys_walk ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self, fail_at: int | None = None) -> None:
        self.pages: list[tuple[int, int, int]] = []
        self.recovered: list[tuple[int, int, int]] = []
        self.fail_at = fail_at

    async def callback(self, vaddr: int, paddr: int, order: int) -> None:
        if self.fail_at is not None and len(self.pages) == self.fail_at:
            raise avcm.VcmError(errno.EIO, f"page {vaddr:#x} failed")
        self.pages.append((vaddr, paddr, order))

    async def recovery(self, vaddr: int, paddr: int, order: int) -> None:
        self.recovered.append((vaddr, paddr, order))


async def test_walk_example_1m_plus_8k() -> None:
    phys = avcm.lowlevel.create_phys([(0x8010_0000, MiB), (0x8030_0000, 8 * KiB)])
    walk = Recorder()
    await avcm.phys_walk(0x1000_0000, phys, (8, 0), walk.callback)
    assert walk.pages == [
        (0x1000_0000, 0x8010_0000, 8),
        (0x1010_0000, 0x8030_0000, 0),
        (0x1010_1000, 0x8030_1000, 0),
    ]


async def test_walk_rechooses_the_page_size_at_every_step() -> None:
    # A 2 MiB part that starts 64 KiB aligned: 64 KiB pages up to the 1 MiB boundary, then a
    # 1 MiB page, then 64 KiB pages again. The patch chose one size per part (all 64 KiB).
    phys = avcm.lowlevel.create_phys([(0x80F1_0000, 2 * MiB)])
    walk = Recorder()
    await avcm.phys_walk(0x10F1_0000, phys, (8, 4, 0), walk.callback)
    orders = [order for _, _, order in walk.pages]
    assert orders == [4] * 15 + [8] + [4]
    assert sum(avcm.PAGE_SIZE << o for o in orders) == 2 * MiB
    assert walk.pages == avcm.lowlevel.walk_pages(0x10F1_0000, phys, (8, 4, 0))


async def test_walk_limited_by_the_less_aligned_address() -> None:
    phys = avcm.lowlevel.create_phys([(0x8000_0000, MiB)])
    walk = Recorder()
    await avcm.phys_walk(0x1001_0000, phys, (8, 4, 0), walk.callback)
    assert [order for _, _, order in walk.pages] == [4] * 16


@pytest.mark.parametrize("fail_at", [0, 1, 2])
async def test_walk_failure_recovers_exactly_the_pages_done_in_reverse(fail_at: int) -> None:
    phys = avcm.lowlevel.create_phys([(0x8010_0000, MiB), (0x8030_0000, 8 * KiB)])
    walk = Recorder(fail_at=fail_at)
    with pytest.raises(avcm.VcmError, match="failed"):
        await avcm.phys_walk(0x1000_0000, phys, (8, 0), walk.callback, walk.recovery)
    assert len(walk.pages) == fail_at
    assert walk.recovered == list(reversed(walk.pages))


async def test_walk_without_recovery_reraises() -> None:
    phys = avcm.lowlevel.create_phys([(0x8000_0000, 8 * KiB)])
    walk = Recorder(fail_at=1)
    with pytest.raises(avcm.VcmError) as info:
        await avcm.phys_walk(0, phys, (0,), walk.callback)
    assert len(walk.pages) == 1
    assert not avcm.lowlevel.undo_failed(info.value)  # nothing to undo, nothing failed


async def test_walk_failing_recovery_is_noted() -> None:
    phys = avcm.lowlevel.create_phys([(0x8000_0000, 16 * KiB)])
    walk = Recorder(fail_at=3)

    async def bad_recovery(vaddr: int, paddr: int, order: int) -> None:
        raise avcm.VcmError(errno.EIO, "recovery broke")

    with pytest.raises(avcm.VcmError, match="page 0x3000 failed") as info:
        await avcm.phys_walk(0, phys, (0,), walk.callback, bad_recovery)
    assert any("recovery" in note for note in info.value.__notes__)
    assert avcm.lowlevel.undo_failed(info.value)


@pytest.mark.parametrize("vaddr", [1, -4096, 4096.0])
async def test_walk_bad_vaddr(vaddr: object) -> None:
    phys = avcm.lowlevel.create_phys([(0, 4096)])
    with pytest.raises(avcm.InvalidError):
        await avcm.phys_walk(vaddr, phys, (0,), Recorder().callback)  # type: ignore[arg-type]


@pytest.mark.parametrize("orders", BAD_ORDERS)
async def test_walk_bad_orders_is_einval_and_visits_nothing(
    memory: avcm.PhysicalMemory, orders: object
) -> None:
    phys = avcm.phys_alloc(MiB + 8 * KiB, 0, (8, 0), memory=memory)
    before = memory.statistics(), phys.parts, phys.bindings, phys.freed
    walk = Recorder()
    with pytest.raises(avcm.InvalidError, match="orders") as info:
        await avcm.phys_walk(0, phys, orders, walk.callback, walk.recovery)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert walk.pages == [] and walk.recovered == []
    assert (memory.statistics(), phys.parts, phys.bindings, phys.freed) == before


async def test_walk_of_freed_phys_is_einval(memory: avcm.PhysicalMemory) -> None:
    phys = avcm.phys_alloc(4096, 0, (0,), memory=memory)
    await phys.free()
    with pytest.raises(avcm.InvalidError, match="freed"):
        await avcm.phys_walk(0, phys, (0,), Recorder().callback)


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [(1, 4096)],
        [(0, 0)],
        [(0, 100)],
        [(1 << 64, 4096)],
        [((1 << 64) - 4096, 8192)],
        [(0, 4096), (1 << 70, 4096)],
        [(0, 4096), (0, 4096)],  # overlapping parts
        [(0, 8192), (4096, 4096)],
        [(0x10_0000, 4096), (0x8000, 4096), (0xF_F000, 8192)],  # out of order, overlapping
        [(0,)],
        [4096],
    ],
)
async def test_phys_rejects_bad_parts(parts: list[tuple[int, int]]) -> None:
    with pytest.raises(avcm.InvalidError) as info:
        avcm.lowlevel.create_phys(parts)
    assert info.value.errno == errno.EINVAL


async def test_phys_parts_in_any_order_that_do_not_overlap() -> None:
    phys = avcm.lowlevel.create_phys(
        [(0x10_0000, 4096), (0x8000, 4096), (0xF_F000, 4096), (0x10_1000, 4096)]
    )
    assert [part.start for part in phys.parts] == [0x10_0000, 0x8000, 0xF_F000, 0x10_1000]


async def test_phys_and_walk_up_to_the_last_64_bit_page() -> None:
    top = (1 << 64) - 4096
    phys = avcm.lowlevel.create_phys([(top, 4096)])
    assert phys.parts == (avcm.PhysPart(top, 4096),)
    walk = Recorder()
    await avcm.phys_walk(top, phys, (0,), walk.callback)
    assert walk.pages == [(top, top, 0)]
    with pytest.raises(avcm.InvalidError, match="64-bit"):
        await avcm.phys_walk(top, avcm.lowlevel.create_phys([(0, 8192)]), (0,), walk.callback)


async def test_a_phys_of_all_64_bit_addresses() -> None:
    half = 1 << 63
    phys = avcm.lowlevel.create_phys([(half, half), (0, half)])
    assert phys.size == 1 << 64 and phys.count == 2
    assert phys.parts == (avcm.PhysPart(half, half), avcm.PhysPart(0, half))


async def _walk_target(memory: avcm.PhysicalMemory, kind: str) -> object:
    if kind == "not a phys":
        return [(0, 4096)]
    phys = avcm.phys_alloc(MiB + 8 * KiB, 0, (8, 0), memory=memory)
    if kind == "freed":
        await phys.free()
    return phys


# (vaddr, phys kind, orders): each is refused by phys_walk and so by walk_pages
BAD_WALKS = [
    *[pytest.param(0, "live", orders, id=f"orders={orders!r}") for orders in [(4,), *BAD_ORDERS]],
    pytest.param(1, "live", (8, 0), id="unaligned vaddr"),
    pytest.param(-4096, "live", (8, 0), id="negative vaddr"),
    pytest.param(4096.0, "live", (8, 0), id="float vaddr"),
    pytest.param((1 << 64) - 4096, "live", (8, 0), id="past 64-bit"),
    pytest.param(0, "freed", (8, 0), id="freed phys"),
    pytest.param(0, "not a phys", (8, 0), id="not a phys"),
]


@pytest.mark.parametrize(("vaddr", "phys_kind", "orders"), BAD_WALKS)
async def test_walk_pages_validates_exactly_as_phys_walk(
    memory: avcm.PhysicalMemory, vaddr: object, phys_kind: str, orders: object
) -> None:
    """The public walk_pages used to loop forever on orders (4,), raise UnboundLocalError on
    (), and accept an unaligned address: now EINVAL, with phys_walk's message, nothing done."""
    phys = await _walk_target(memory, phys_kind)
    before = memory.statistics()
    walk = Recorder()
    with pytest.raises(avcm.InvalidError) as walked:
        await avcm.phys_walk(vaddr, phys, orders, walk.callback)  # type: ignore[arg-type]
    with pytest.raises(avcm.InvalidError) as listed:
        avcm.lowlevel.walk_pages(vaddr, phys, orders)  # type: ignore[arg-type]
    assert listed.value.errno == errno.EINVAL
    assert str(listed.value).replace("walk_pages", "phys_walk") == str(walked.value)
    assert walk.pages == [] and memory.statistics() == before
