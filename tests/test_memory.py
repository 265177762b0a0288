"""Simulated physical memory (buddy allocator, lazily backed bytes) and the address space."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avcm
from avcm.lowlevel import AddressSpace

MiB = 1 << 20
PAGE = avcm.PAGE_SIZE


def test_buddy_splits_and_merges() -> None:
    memory = avcm.PhysicalMemory(size=4 * MiB, max_order=10)
    first = memory.alloc_pages(0)
    second = memory.alloc_pages(0)
    assert (first, second) == (memory.base, memory.base + PAGE)  # lowest address first
    big = memory.alloc_pages(8)
    assert big is not None and big % MiB == 0
    assert memory.free_bytes == 4 * MiB - 2 * PAGE - MiB
    memory.free_pages(second, 0)  # type: ignore[arg-type]
    memory.free_pages(first, 0)  # type: ignore[arg-type]
    memory.free_pages(big, 8)
    assert memory.is_pristine()


def test_every_block_is_aligned_to_its_size() -> None:
    memory = avcm.PhysicalMemory(size=8 * MiB)
    blocks = []
    for order in [0, 3, 1, 8, 4, 0, 2, 10, 5]:
        start = memory.alloc_pages(order)
        if start is not None:
            assert start % (PAGE << order) == 0
            blocks.append((start, order))
    for start, order in reversed(blocks):
        memory.free_pages(start, order)
    assert memory.is_pristine()


def test_exhaustion_returns_none_and_changes_nothing() -> None:
    memory = avcm.PhysicalMemory(size=MiB)
    whole = memory.alloc_pages(8)
    assert whole is not None
    before = memory.statistics()
    assert memory.alloc_pages(0) is None
    assert memory.statistics() == before


@pytest.mark.parametrize("order", [-1, 11, 1.5, True, None, "0"])
def test_bad_alloc_order_is_einval_and_changes_nothing(order: object) -> None:
    memory = avcm.PhysicalMemory(size=4 * MiB, max_order=10)
    assert memory.alloc_pages(0) is not None
    before = memory.statistics()
    with pytest.raises(avcm.InvalidError, match="order") as info:
        memory.alloc_pages(order)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert memory.statistics() == before


def test_odd_sizes_are_covered_by_aligned_blocks() -> None:
    memory = avcm.PhysicalMemory(base=0x8000_1000, size=3 * MiB + 5 * PAGE)
    assert memory.free_bytes == memory.size
    got = []
    while (start := memory.alloc_pages(0)) is not None:
        got.append(start)
    assert len(got) == memory.size // PAGE and len(set(got)) == len(got)
    for start in got:
        memory.free_pages(start, 0)
    assert memory.is_pristine()


@pytest.mark.parametrize(
    ("start", "order"), [(0x8000_0000, 1), (0x7000_0000, 0), (0x8000_0000, 11), (0x8000_0000, -1)]
)
def test_bad_free_is_einval_and_changes_nothing(start: int, order: int) -> None:
    memory = avcm.PhysicalMemory(size=4 * MiB)
    block = memory.alloc_pages(0)
    assert block == 0x8000_0000
    before = memory.statistics()
    with pytest.raises(avcm.InvalidError) as info:
        memory.free_pages(start, order)
    assert info.value.errno == errno.EINVAL
    assert memory.statistics() == before
    memory.free_pages(block, 0)
    with pytest.raises(avcm.InvalidError):  # double free
        memory.free_pages(block, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"size": 100},
        {"base": 1},
        {"size": -MiB},
        {"max_order": 7},
        {"max_order": 21},
        {"size": 1.5},
        {"base": True},
        {"base": 1 << 64, "size": MiB},
        {"base": (1 << 64) - MiB, "size": 2 * MiB},
    ],
)
def test_bad_memory_is_einval(kwargs: dict[str, object]) -> None:
    with pytest.raises(avcm.InvalidError):
        avcm.PhysicalMemory(**kwargs)  # type: ignore[arg-type]


def test_memory_at_the_top_of_64_bit_addresses() -> None:
    memory = avcm.PhysicalMemory(base=(1 << 64) - MiB, size=MiB)
    phys = avcm.phys_alloc(MiB, 0, (8, 4, 0), memory=memory)
    assert phys.parts == (avcm.PhysPart((1 << 64) - MiB, MiB),)
    assert memory.free_bytes == 0
    memory.free_pages(phys.parts[0].start, 8)
    assert memory.is_pristine()


def test_bytes_are_lazily_backed_and_dropped_on_free() -> None:
    memory = avcm.PhysicalMemory()  # 256 MiB that cost nothing until written
    assert memory.statistics().backed_pages == 0
    block = memory.alloc_pages(1)
    assert block is not None
    data = bytes(range(200)) * 10
    memory.write(block + PAGE - 100, data)  # spans the page boundary
    assert memory.read(block + PAGE - 100, len(data)) == data
    assert memory.read(block, 8) == bytes(8)  # never written: zeros
    assert memory.statistics().backed_pages == 2
    memory.free_pages(block, 1)
    assert memory.statistics().backed_pages == 0
    assert memory.read(block + PAGE - 100, 4) == bytes(4)
    assert memory.is_pristine()


def test_a_write_to_free_memory_is_counted_as_a_write_after_free() -> None:
    """As the kernel's page poisoning finds one: correct code never writes free memory."""
    memory = avcm.PhysicalMemory()
    block = memory.alloc_pages(1)
    assert block is not None
    memory.write(block + PAGE + 8, b"mine")  # its second page: allocated
    assert memory.statistics().free_pages_written == 0
    memory.free_pages(block, 1)
    memory.write(block + PAGE, b"late")  # a write back to the page it held
    memory.write(block + PAGE + 16, b"late")  # the same page again: one page
    memory.write(block + 4 * PAGE - 2, b"four")  # across two more free pages
    stats = memory.statistics()
    assert (stats.free_pages_written, stats.first_free_write) == (3, block + PAGE)
    assert not memory.is_pristine()  # and nothing allocated: only the writes tell


def test_access_outside_memory_is_einval() -> None:
    memory = avcm.PhysicalMemory(size=MiB)
    with pytest.raises(avcm.InvalidError):
        memory.read(memory.base + MiB - 2, 4)
    with pytest.raises(avcm.InvalidError):
        memory.write(memory.base - 1, b"x")


@pytest.mark.parametrize(
    ("access", "message"),
    [
        (lambda m: m.read(m.base, 1.5), "length must be an int"),
        (lambda m: m.read(str(m.base), 1), "address must be an int"),
        (lambda m: m.read(m.base, True), "length must be an int"),
        (lambda m: m.write(m.base, "text"), "bytes-like"),
        (lambda m: m.write(float(m.base), b"x"), "address must be an int"),
    ],
)
def test_bad_access_arguments_are_einval(access: object, message: str) -> None:
    memory = avcm.PhysicalMemory(size=MiB)
    with pytest.raises(avcm.InvalidError, match=message):
        access(memory)  # type: ignore[operator]
    assert memory.is_pristine()


# -- the address space allocator ---------------------------------------------------------------


def test_address_space_aligns_and_returns_every_byte() -> None:
    space = AddressSpace(0x1000_0000, 16 * MiB)
    small = space.allocate(PAGE)
    big = space.allocate(MiB, MiB)
    assert big % MiB == 0 and small % PAGE == 0
    assert small + PAGE <= big or big + MiB <= small
    assert space.free_bytes == 16 * MiB - MiB - PAGE and space.live == 2
    space.free(small, PAGE)
    space.free(big, MiB)
    assert space.is_pristine()


def test_address_space_enospc_and_bad_input() -> None:
    space = AddressSpace(0, MiB)
    space.allocate(MiB)
    with pytest.raises(avcm.NoSpaceError) as info:
        space.allocate(PAGE)
    assert info.value.errno == errno.ENOSPC
    for size, alignment in [(0, PAGE), (100, PAGE), (PAGE, 3 * PAGE), (PAGE, 16)]:
        with pytest.raises(avcm.InvalidError):
            space.allocate(size, alignment)
    with pytest.raises(avcm.InvalidError):
        space.free(0, PAGE)  # not the size it was allocated with
    with pytest.raises(avcm.InvalidError):
        AddressSpace(1, MiB)


def aligned_hole(
    base: int, size: int, live: dict[int, int], length: int, alignment: int
) -> int | None:
    """The reference model's answer: an aligned address where *length* bytes are free."""
    cursor = base
    for start, taken in [*sorted(live.items()), (base + size, 0)]:
        aligned = -(-cursor // alignment) * alignment
        if aligned + length <= start:
            return aligned
        cursor = start + taken
    return None


def test_address_space_finds_an_aligned_hole_among_many_misaligned_ones() -> None:
    # Eight misaligned 1 MiB holes, the smallest candidates, and one aligned hole of 1 MiB +
    # 4 KiB, too small to be sure to hold an aligned 1 MiB: it used to say ENOSPC.
    space = AddressSpace(0, 32 * MiB)
    live = {space.allocate(PAGE): PAGE for _ in range(32 * MiB // PAGE)}
    holes = [(2 * i * MiB + MiB // 2, MiB) for i in range(9)] + [(20 * MiB, MiB + PAGE)]
    for hole, length in holes:
        for page in range(hole, hole + length, PAGE):
            space.free(page, live.pop(page))
    assert space.allocate(MiB, MiB) == 20 * MiB
    live[20 * MiB] = MiB
    # and now that no aligned hole is left, ENOSPC is right
    assert aligned_hole(0, 32 * MiB, live, MiB, MiB) is None
    with pytest.raises(avcm.NoSpaceError):
        space.allocate(MiB, MiB)
    assert space.allocate(MiB, PAGE) % PAGE == 0  # unaligned, any of the holes holds it


# allocate (or free) so many pages at this alignment (or the live one this picks)
ADDRESS_SPACE_OPS = st.lists(
    st.tuples(
        st.booleans(),
        st.integers(1, 64),
        st.sampled_from([PAGE, 2 * PAGE, 16 * PAGE, 64 * PAGE, 256 * PAGE]),
        st.integers(0, 10**6),
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(ADDRESS_SPACE_OPS)
def test_address_space_never_overlaps(ops: list[tuple[bool, int, int, int]]) -> None:
    """Against a reference model: live ranges are disjoint, inside the space, aligned, and
    every byte comes back."""
    size = 4 * MiB
    space = AddressSpace(0x4000_0000, size)
    live: dict[int, int] = {}
    for allocate, pages, alignment, pick in ops:
        if allocate or not live:
            length = pages * PAGE
            try:
                start = space.allocate(length, alignment)
            except avcm.NoSpaceError:
                assert space.free_bytes == size - sum(live.values())  # and nothing changed
                hole = aligned_hole(0x4000_0000, size, live, length, alignment)
                assert hole is None, f"ENOSPC, but {hole:#x} was free for {length:#x}"
                continue
            assert start % alignment == 0
            assert start >= 0x4000_0000 and start + length <= 0x4000_0000 + size
            for other, other_length in live.items():
                assert start + length <= other or other + other_length <= start
            live[start] = length
        else:
            start = sorted(live)[pick % len(live)]
            space.free(start, live.pop(start))
        assert space.free_bytes == size - sum(live.values())
    for start, length in live.items():
        space.free(start, length)
    assert space.is_pristine()


@settings(max_examples=100, deadline=None)
@given(
    st.randoms(use_true_random=False),
    st.sampled_from([0.2, 0.5, 0.8]),
    st.integers(1, 8),
    st.sampled_from([PAGE, 4 * PAGE, 16 * PAGE, 64 * PAGE]),
)
def test_address_space_enospc_only_without_an_aligned_hole(
    rng: random.Random, density: float, pages: int, alignment: int
) -> None:
    """A space of 4 KiB reservations with random holes punched in, then filled up with aligned
    allocations until ENOSPC: the allocator gives up exactly when the reference model does."""
    space = AddressSpace(0, 256 * PAGE)
    live = {space.allocate(PAGE): PAGE for _ in range(256)}
    for start in [start for start in live if rng.random() < density]:
        space.free(start, live.pop(start))
    length = pages * PAGE
    while True:
        try:
            start = space.allocate(length, alignment)
        except avcm.NoSpaceError:
            hole = aligned_hole(0, 256 * PAGE, live, length, alignment)
            assert hole is None, f"ENOSPC, but {hole:#x} was free for {length:#x}"
            break
        assert start % alignment == 0
        assert all(start + length <= other or other + n <= start for other, n in live.items())
        live[start] = length


def test_address_space_best_fit_at_the_alignment_asked() -> None:
    # Free, lowest first: 12 KiB at an odd page (holds 8 KiB at 8 KiB alignment), an aligned
    # 8 KiB, and the rest of the space. An aligned 8 KiB goes to the aligned 8 KiB hole (as
    # many usable bytes as the 12 KiB one, and smaller), the next one into the 12 KiB one.
    space = AddressSpace(0, 64 * PAGE, alignments=[2 * PAGE])
    live = {space.allocate(PAGE): PAGE for _ in range(64)}
    for page in (1, 2, 3, 8, 9, *range(16, 64)):
        space.free(page * PAGE, live.pop(page * PAGE))
    assert space.allocate(2 * PAGE, 2 * PAGE) == 8 * PAGE
    assert space.allocate(2 * PAGE, 2 * PAGE) == 2 * PAGE  # at the top of pages 1-3
    assert space.allocate(PAGE) == PAGE  # best fit: the page left below it
    assert space.allocate(48 * PAGE, 16 * PAGE) == 16 * PAGE
    with pytest.raises(avcm.NoSpaceError):
        space.allocate(PAGE)


@pytest.mark.parametrize(
    "alignments", [[3 * PAGE], [PAGE // 2], [0], [-PAGE], [True], ["4096"], [1.5 * PAGE], 4096]
)
def test_address_space_alignments_must_be_powers_of_two_of_at_least_a_page(
    alignments: object,
) -> None:
    with pytest.raises(avcm.InvalidError) as info:
        AddressSpace(0, MiB, alignments=alignments)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "bad", [(PAGE, 2 * PAGE), (0, PAGE), (PAGE, 0), (-PAGE, PAGE), (1 << 64, PAGE), ("0", PAGE)]
)
def test_address_space_free_of_anything_not_allocated_changes_nothing(
    bad: tuple[object, object],
) -> None:
    space = AddressSpace(0, MiB)
    space.allocate(PAGE)
    first = space.allocate(PAGE)
    before = (repr(space), space.free_bytes, space.live)
    with pytest.raises(avcm.InvalidError):
        space.free(*bad)  # type: ignore[arg-type]
    assert (repr(space), space.free_bytes, space.live) == before
    assert space.allocate(PAGE) == first - PAGE  # and the free extents are as they were


@settings(max_examples=60, deadline=None)
@given(ADDRESS_SPACE_OPS)
def test_address_space_alignments_declared_or_not_allocate_alike(
    ops: list[tuple[bool, int, int, int]],
) -> None:
    """An alignment indexed from the start, or only when first asked for (from the free
    extents of that moment), gives the same answers."""
    declared = AddressSpace(0, 4 * MiB, alignments=[2 * PAGE, 16 * PAGE, 64 * PAGE, 256 * PAGE])
    lazy = AddressSpace(0, 4 * MiB)
    live: list[tuple[int, int]] = []
    for allocate, pages, alignment, pick in ops:
        if allocate or not live:
            answers = []
            for space in (declared, lazy):
                try:
                    answers.append(space.allocate(pages * PAGE, alignment))
                except avcm.NoSpaceError:
                    answers.append(None)
            assert answers[0] == answers[1]
            if answers[0] is not None:
                live.append((answers[0], pages * PAGE))
        else:
            start, length = live.pop(pick % len(live))
            declared.free(start, length)
            lazy.free(start, length)
    for start, length in live:
        declared.free(start, length)
        lazy.free(start, length)
    assert declared.is_pristine() and lazy.is_pristine()


def test_address_space_changes_wait_and_cancel_out_unseen() -> None:
    # Many changes between two allocations at an alignment (its list catches up when asked),
    # allocations freed before any read (they cancel out), and a double free after all that.
    declared = AddressSpace(0, 16 * MiB, alignments=[16 * PAGE])
    lazy = AddressSpace(0, 16 * MiB)
    rng = random.Random(7)
    live: list[tuple[int, int]] = []
    for _ in range(600):
        if live and rng.random() < 0.4:
            start, length = live.pop(rng.randrange(len(live)))
            declared.free(start, length)
            lazy.free(start, length)
        else:
            length = rng.randint(1, 8) * PAGE
            start = declared.allocate(length)
            assert lazy.allocate(length) == start
            live.append((start, length))
    assert declared.allocate(16 * PAGE, 16 * PAGE) == lazy.allocate(16 * PAGE, 16 * PAGE)
    first, second = declared.allocate(PAGE), declared.allocate(PAGE)
    declared.free(first, PAGE)
    before = (repr(declared), declared.free_bytes)
    with pytest.raises(avcm.InvalidError):
        declared.free(first, PAGE)
    assert (repr(declared), declared.free_bytes) == before
    declared.free(second, PAGE)
    assert declared.free_bytes == before[1] + PAGE
