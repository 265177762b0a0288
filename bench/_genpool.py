"""The baseline: a first-fit bitmap allocator like the kernel's ``gen_pool`` the patch used.

One bit per page; allocation scans the bitmap from the start for a run of free bits (Linux's
``bitmap_find_next_zero_area``), so its cost grows with the number of pages in use before the
first hole. Written for the benchmark only, as the thing avcm's allocator is compared with; it
scans bytes with ``bytes.find`` (C speed), which flatters it.
"""

from __future__ import annotations

PAGE_SHIFT = 12


class GenPool:
    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.pages = size >> PAGE_SHIFT
        self.bitmap = bytearray(self.pages)  # one byte per page: 0 free, 1 used

    def alloc(self, size: int, alignment: int) -> int | None:
        count = size >> PAGE_SHIFT
        align = max(1, alignment >> PAGE_SHIFT)
        hole = bytes(count)
        index = 0
        while True:
            index = self.bitmap.find(hole, index)
            if index < 0:
                return None
            aligned = -(-index // align) * align
            if aligned == index:
                self.bitmap[index : index + count] = b"\x01" * count
                return self.start + (index << PAGE_SHIFT)
            index = aligned

    def free(self, addr: int, size: int) -> None:
        index = (addr - self.start) >> PAGE_SHIFT
        count = size >> PAGE_SHIFT
        self.bitmap[index : index + count] = bytes(count)
