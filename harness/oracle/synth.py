"""Hand-built x86-64 page tables in a host buffer: for the oracle's unit tests and benchmarks.

:class:`PageTableBuilder` writes tables into any writable :class:`PhysicalMemory`;
:func:`synthetic_address_space` builds a kernel-like address space of realistic size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from harness.oracle.memory import BufferMemory, PhysicalMemory
from harness.oracle.paging import (
    LEVEL_SHIFTS,
    PAT_GUEST,
    PTE_G,
    PTE_NX,
    PTE_P,
    PTE_PCD,
    PTE_PS,
    PTE_PWT,
    PTE_RW,
    PTE_US,
    SELF_MAP_SLOT,
    SIZE_1G,
    SIZE_2M,
    SIZE_4K,
    PagingMode,
    to_u64,
)

TABLE_FLAGS = PTE_P | PTE_RW | PTE_US  # permissive non-leaf entries: the leaf decides
KERNEL_RW = PTE_P | PTE_RW | PTE_NX | PTE_G
LEVEL_OF_SIZE = {SIZE_4K: 1, SIZE_2M: 2, SIZE_1G: 3}


class PageTableBuilder:
    """Builds 4- or 5-level tables in ``memory``, allocating table pages from [pool_start, pool_end)."""

    def __init__(self, memory: PhysicalMemory, levels: int, pool_start: int, pool_end: int) -> None:
        if levels not in (4, 5):
            raise ValueError("levels must be 4 or 5")
        if pool_start & 0xFFF or pool_end & 0xFFF:
            raise ValueError("the table pool must be 4 KiB aligned")
        self.memory = memory
        self.levels = levels
        self._next = pool_start
        self._end = pool_end
        self.tables: list[int] = []
        self.cr3 = self.alloc_table()

    def alloc_table(self) -> int:
        if self._next >= self._end:
            raise MemoryError("page-table pool exhausted")
        pa = self._next
        self._next += SIZE_4K
        self.memory.write(pa, bytes(SIZE_4K))
        self.tables.append(pa)
        return pa

    def entry_pa(self, va: int, level: int, *, table_flags: int = TABLE_FLAGS) -> int:
        """PA of the level-``level`` entry for ``va``, creating missing tables above it."""
        va = to_u64(va)
        table = self.cr3
        for lvl in range(self.levels, level, -1):
            epa = table + 8 * ((va >> LEVEL_SHIFTS[lvl]) & 0x1FF)
            e = self.memory.read_u64(epa)
            if not e & PTE_P:
                child = self.alloc_table()
                self.memory.write(epa, (child | table_flags).to_bytes(8, "little"))
                table = child
            else:
                if lvl <= 3 and e & PTE_PS:
                    raise ValueError(f"VA {va:#x}: level {lvl} already maps a large page")
                table = e & 0x000FFFFFFFFFF000
        return table + 8 * ((va >> LEVEL_SHIFTS[level]) & 0x1FF)

    def set_entry(self, va: int, level: int, value: int, *, table_flags: int = TABLE_FLAGS) -> int:
        """Write a raw entry at ``level`` for ``va``; returns its PA."""
        epa = self.entry_pa(va, level, table_flags=table_flags)
        self.memory.write(epa, to_u64(value).to_bytes(8, "little"))
        return epa

    def get_entry(self, va: int, level: int) -> int:
        return self.memory.read_u64(self.entry_pa(va, level))

    def map(
        self,
        va: int,
        pa: int,
        *,
        size: int = SIZE_4K,
        flags: int = PTE_P | PTE_RW,
        table_flags: int = TABLE_FLAGS,
    ) -> int:
        """Map one page of ``size`` (4 KiB, 2 MiB or 1 GiB); PS is added for large pages."""
        level = LEVEL_OF_SIZE[size]
        if to_u64(va) & (size - 1) or pa & (size - 1):
            raise ValueError(f"VA {va:#x} / PA {pa:#x} not aligned to {size:#x}")
        value = pa | flags | (PTE_PS if level > 1 else 0)
        return self.set_entry(va, level, value, table_flags=table_flags)

    def map_range(
        self, va: int, pa: int, length: int, *, size: int = SIZE_4K, flags: int = PTE_P | PTE_RW
    ) -> None:
        va = to_u64(va)
        for off in range(0, length, size):
            self.map(va + off, pa + off, size=size, flags=flags)

    def add_self_map(self, slot: int = SELF_MAP_SLOT, flags: int = PTE_P | PTE_RW | PTE_NX) -> int:
        epa = self.cr3 + 8 * slot
        self.memory.write(epa, (self.cr3 | flags).to_bytes(8, "little"))
        return epa


@dataclass
class SyntheticSpace:
    memory: BufferMemory
    cr3: int
    mode: PagingMode
    regions: list[tuple[int, int, str]]  # (va, length, name) of mapped VA ranges
    builder: PageTableBuilder

    def random_vas(self, n: int, seed: int = 0) -> npt.NDArray[np.uint64]:
        """``n`` VAs, each in a region chosen uniformly, at a uniform 8-byte aligned offset in it."""
        rng = np.random.default_rng(seed)
        which = rng.integers(0, len(self.regions), size=n)
        starts = np.array([r[0] for r in self.regions], dtype=np.uint64)[which]
        lengths = np.array([r[1] for r in self.regions], dtype=np.uint64)[which]
        offs = (rng.random(n) * lengths.astype(np.float64)).astype(np.uint64) & ~np.uint64(7)
        return np.asarray(starts + np.minimum(offs, lengths - np.uint64(8)), dtype=np.uint64)


def synthetic_address_space(levels: int, *, seed: int = 1, ram_size: int = 32 << 20) -> SyntheticSpace:
    """A kernel-like address space (the VAs are canonical for both 4 and 5 levels).

    - physmap: 1 GiB of 2 MiB pages at 0xFFFF800000000000 (RW NX G)
    - kernel image: 4 MiB of 4 KiB pages at 0xFFFFF80000000000 (text RO X, rodata RO NX, data RW NX)
    - pool: 64 MiB of 4 KiB pages at 0xFFFFF8A000000000 on random frames, every 16th page WC and
      every 64th UC
    - two 1 GiB pages at 0xFFFFFA8000000000
    - user: 16 MiB of 4 KiB pages at 0x10000 (RW, every 8th page RO)
    - the recursive slot 0x1ED
    """
    memory = BufferMemory(ram_size)
    b = PageTableBuilder(memory, levels, 1 << 20, ram_size)
    rng = np.random.default_rng(seed)
    regions: list[tuple[int, int, str]] = []

    physmap = 0xFFFF800000000000
    b.map_range(physmap, 0, SIZE_1G, size=SIZE_2M, flags=KERNEL_RW)
    regions.append((physmap, SIZE_1G, "physmap"))

    kernel = 0xFFFFF80000000000
    b.map_range(kernel, 0x200000, 1 << 20, flags=PTE_P | PTE_G)
    b.map_range(kernel + (1 << 20), 0x300000, 1 << 20, flags=PTE_P | PTE_G | PTE_NX)
    b.map_range(kernel + (2 << 20), 0x400000, 2 << 20, flags=KERNEL_RW)
    regions.append((kernel, 4 << 20, "kernel"))

    pool = 0xFFFFF8A000000000
    frames = rng.permutation(1 << 18)[: (64 << 20) // SIZE_4K]  # frames below 1 GiB
    for i, pfn in enumerate(frames.tolist()):
        flags = KERNEL_RW
        if i % 64 == 0:
            flags |= PTE_PCD | PTE_PWT
        elif i % 16 == 0:
            flags |= PTE_PWT
        b.map(pool + i * SIZE_4K, pfn * SIZE_4K, flags=flags)
    regions.append((pool, 64 << 20, "pool"))

    big = 0xFFFFFA8000000000
    b.map_range(big, SIZE_1G, 2 * SIZE_1G, size=SIZE_1G, flags=KERNEL_RW)
    regions.append((big, 2 * SIZE_1G, "1G pages"))

    user = 0x10000
    for i in range((16 << 20) // SIZE_4K):
        flags = PTE_P | PTE_US | (0 if i % 8 == 0 else PTE_RW)
        b.map(user + i * SIZE_4K, (0x1000000 + i * SIZE_4K), flags=flags)
    regions.append((user, 16 << 20, "user"))

    b.add_self_map()
    mode = PagingMode(levels=levels, nxe=True, pat_msr=PAT_GUEST)
    return SyntheticSpace(memory, b.cr3, mode, regions, b)


__all__ = ["PageTableBuilder", "SyntheticSpace", "synthetic_address_space"]
