"""TLB discipline of the reserved-mapping DDIs (ddi-spec §7.7 step 6, §7.9 item 6), under TCG only.

TCG keeps a real software TLB: a PTE rewritten without INVLPG keeps its old translation until a flush
(qemu-facts.md). Nested KVM hides missing flushes, so these tests do not run there. Everything happens
in the system-PTE region, which is 4 KiB-only: an INVLPG inside a large page would flush QEMU's whole
TLB and could hide a missing flush.

The positive tests (through the DDIs, never stale) mean something only because the negative ones show
that a stale translation IS visible when a flush is missing: they rewrite the PTE through the test hook
`test_hook_set_pte_no_flush`, which skips INVLPG on purpose.

The load that fills the TLB, the PTE change and the loads that follow go in one batch, one agent round
trip: QEMU sometimes comes back from a halted vCPU with its TLB empty (seen on q35-seabios, about one
run in six, while the agent halted between requests), which would make a stale translation vanish,
and with it both what the negative tests show and what the positive ones would catch.
"""

from __future__ import annotations

import pytest
from _reserved import PAGE, free_pages_mdl, pages_mdl, raw_ptes

from harness.ddi.mdl import read_mdl
from harness.ddi.nt import MM_CACHED, PAGE_FAULT_IN_NONPAGED_AREA
from harness.testing import expect_stop
from harness.vm import Vm

pytestmark = pytest.mark.requires(accelerator="tcg")

TAG = "Tlb1"
PFN_MASK = 0x000F_FFFF_FFFF_F000


def marker(name: str, page: int) -> bytes:
    return f"{name}:{page:04d}".encode().ljust(16, b".")


class Frames:
    """Two MDLs of `pages` pages, A and B, each page holding its own marker, and one reservation."""

    def __init__(self, vm: Vm, pages: int) -> None:
        self.vm, self.pages = vm, pages
        self.p = vm.mm.MmAllocateMappingAddress(pages * PAGE, TAG)
        self.mdls = {"A": pages_mdl(vm, pages), "B": pages_mdl(vm, pages)}
        for name in self.mdls:
            self.map(name)
            for i in range(pages):
                vm.mm.write_va(self.p + i * PAGE, marker(name, i))
            self.unmap(name)

    def map(self, name: str) -> None:
        assert self.vm.mm.MmMapLockedPagesWithReservedMapping(self.p, TAG, self.mdls[name], MM_CACHED) == self.p

    def unmap(self, name: str) -> None:
        self.vm.mm.MmUnmapReservedMapping(self.p, TAG, self.mdls[name])

    def read(self, page: int) -> bytes:
        """A guest load through the reserved VA: it goes through (and fills) the TLB."""
        return self.vm.mm.read_va(self.p + page * PAGE, 16)

    def pfns(self, name: str) -> tuple[int, ...]:
        return read_mdl(self.vm.verify, self.mdls[name]).pfns

    def close(self) -> None:
        for mdl in self.mdls.values():
            free_pages_mdl(self.vm, mdl)
        self.vm.mm.MmFreeMappingAddress(self.p, TAG)


def test_remap_at_the_same_va_never_sees_the_old_page(vm: Vm) -> None:
    f = Frames(vm, 16)
    for round_ in range(6):
        name = "AB"[round_ % 2]
        with vm.mm.batch() as b:  # the previous round's translations may still be in the TLB
            mapped = b.MmMapLockedPagesWithReservedMapping(f.p, TAG, f.mdls[name], MM_CACHED)
            reads = [b.read_va(f.p + i * PAGE, 16) for i in range(16)]
            b.MmUnmapReservedMapping(f.p, TAG, f.mdls[name])
        assert mapped.value == f.p
        for i, read in enumerate(reads):
            assert read.value == marker(name, i), f"round {round_}, page {i}: stale translation"
        vm.verify.assert_unmapped(f.p, 16 * PAGE)
    f.map("A")  # and once more alone, for the three-way check of the tables
    vm.verify.assert_mapped(f.p, 16 * PAGE, pfns=list(f.pfns("A")))
    f.unmap("A")
    f.close()


def test_read_after_unmap_bugchecks_0x50_never_returns_stale_data(fresh_vm: Vm) -> None:
    f = Frames(fresh_vm, 4)
    f.map("A")
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, f.p + 2 * PAGE, 0, None, 0), fresh_vm.mm.batch() as b:
        b.read_va(f.p + 2 * PAGE, 16)  # fills the TLB (the bugcheck drops the batch's answers)
        b.MmUnmapReservedMapping(f.p, TAG, f.mdls["A"])
        b.read_va(f.p + 2 * PAGE, 16)


def test_hook_remap_without_invlpg_does_show_the_stale_page(vm: Vm) -> None:
    """The negative control: the same remap done WITHOUT a flush is caught by the reads above."""
    f = Frames(vm, 2)
    f.map("A")
    pte_a = raw_ptes(vm, f.p + PAGE, 1)[0]
    pte_b = (pte_a & ~PFN_MASK) | f.pfns("B")[1] << 12
    with vm.mm.batch() as b:
        fresh = b.read_va(f.p + PAGE, 16)
        replaced = b.test_hook_set_pte_no_flush(f.p + PAGE, pte_b)
        stale = b.read_va(f.p + PAGE, 16)
    assert fresh.value == marker("A", 1)
    assert replaced.value == pte_a
    assert vm.verify.walk(f.p + PAGE).pa == f.pfns("B")[1] << 12, "the tables say B"
    assert stale.value == marker("A", 1), "the TLB still says A: a missing INVLPG is visible under TCG"
    f.vm.mm.test_hook_set_pte_no_flush(f.p + PAGE, pte_a)  # consistent again, then a normal unmap
    f.unmap("A")
    f.close()


def test_hook_clear_without_invlpg_does_return_stale_data(vm: Vm) -> None:
    """The negative control of the 0x50 test: a PTE cleared WITHOUT a flush still reads the old page."""
    f = Frames(vm, 1)
    f.map("A")
    with vm.mm.batch() as b:
        fresh = b.read_va(f.p, 16)
        cleared = b.test_hook_set_pte_no_flush(f.p, 0)
        stale = b.read_va(f.p, 16)
    assert fresh.value == marker("A", 0)
    assert raw_ptes(vm, f.p, 1) == [0]
    assert stale.value == marker("A", 0), "an unmapped page still reads: the TLB entry outlived the PTE"
    f.vm.mm.test_hook_set_pte_no_flush(f.p, cleared.value)
    f.unmap("A")
    f.close()
