"""Helpers shared by the reserved-mapping, system-PTE and TLB tests: raw PTE reads by the host walk."""

from __future__ import annotations

from harness.vm import Vm

SYSTEM_PTE_BASE = 0xFFFF_F980_0000_0000
SYSTEM_PTE_COUNT = 22000
SYSTEM_PTE_END = SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * 0x1000
PAGE = 0x1000
HIGHEST_PHYSICAL = (1 << 52) - 1  # any frame (the spec writes ~0; a signed PHYSICAL_ADDRESS makes that -1)


def raw_ptes(vm: Vm, va: int, count: int) -> list[int]:
    """The raw level-1 entries of `count` pages from `va`, read by the host's own walk of guest RAM
    (present or not); the tables above must exist, as they do for every page a reservation reached."""
    with vm.verify.stopped() as w:
        out = []
        for i in range(count):
            wk = w.walk(va + i * PAGE)
            entry = wk.entry(1)
            assert entry is not None, f"no page table for {va + i * PAGE:#x}:\n{wk.describe()}"
            out.append(entry)
        return out


def in_system_pte_region(va: int, pages: int = 1) -> bool:
    return va >= SYSTEM_PTE_BASE and va + pages * PAGE <= SYSTEM_PTE_END


def pages_mdl(vm: Vm, pages: int) -> int:
    """An MDL of `pages` fresh pages from MmAllocatePagesForMdlEx (locked, no byte offset)."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, HIGHEST_PHYSICAL, 0, pages * PAGE)
    assert mdl, "MmAllocatePagesForMdlEx failed"
    return mdl


def free_pages_mdl(vm: Vm, mdl: int) -> None:
    vm.mm.MmFreePagesFromMdl(mdl)
    vm.mm.IoFreeMdl(mdl)
