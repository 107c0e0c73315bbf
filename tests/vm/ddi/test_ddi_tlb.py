"""TLB discipline of the reserved-mapping DDIs (ddi-spec §7.7 step 6, §7.9 item 6), and the TLB
shootdown of every unmap path on SMP guests, under TCG only.

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
from _reserved import HIGHEST_PHYSICAL, PAGE, free_pages_mdl, pages_mdl, raw_ptes

from harness.ddi.mdl import read_mdl
from harness.ddi.nt import KERNEL_MODE, MM_CACHED, PAGE_FAULT_IN_NONPAGED_AREA
from harness.ddi.smp import NofaultRead
from harness.guest import NON_PAGED_POOL_NX
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


# --------------------------------------------------------------------------------------------------
# TLB shootdown (docs/smp.md): under MTTCG each vCPU has a TLB of its own, so a translation CPU 1
# cached survives an unmap on CPU 0 unless the unmap shoots it down. Each path maps one 4 KiB page in
# a 4 KiB-only region (system PTEs, or the pool's), CPU 1 reads it (its TLB now holds the
# translation), another CPU unmaps it, and CPU 1 reads again with a fault-tolerant load: it must
# fault. The hook tests repeat the same steps with the shootdown skipped and see CPU 1 read the old
# bytes: the no-stale-read tests can fail.

SHOOTDOWN_TAG = "Tlb2"


class OnePage:
    """One page mapped by one unmap path's DDIs, with a marker written through the mapping."""

    def __init__(self, vm: Vm, path: str) -> None:
        self.vm, self.path = vm, path
        self.mdl = pages_mdl(vm, 1) if path in ("reserved mapping", "MDL", "I/O space") else 0
        self.reservation = 0
        mm = vm.mm
        if path == "reserved mapping":
            self.reservation = mm.MmAllocateMappingAddress(PAGE, SHOOTDOWN_TAG)
            self.va = mm.MmMapLockedPagesWithReservedMapping(self.reservation, SHOOTDOWN_TAG, self.mdl, MM_CACHED)
        elif path == "MDL":
            self.va = mm.MmMapLockedPagesSpecifyCache(self.mdl, KERNEL_MODE, MM_CACHED)
        elif path == "I/O space":
            self.va = mm.MmMapIoSpace(read_mdl(vm.verify, self.mdl).pfns[0] << 12, PAGE, MM_CACHED)
        elif path == "system PTEs (contiguous memory)":
            self.va = mm.MmAllocateContiguousMemory(PAGE, HIGHEST_PHYSICAL)
        elif path == "pool":
            self.va = mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, SHOOTDOWN_TAG)
        else:
            raise ValueError(path)
        assert self.va and self.va % PAGE == 0, f"{path}: mapping failed ({self.va:#x})"
        self.marker = marker(path[:8], 1)
        mm.write_va(self.va, self.marker)

    def unmap(self, cpu: int) -> None:
        """The path's unmap DDI, on `cpu`; pool and contiguous memory free their frames with it."""
        mm = self.vm.mm.on_cpu(cpu)
        if self.path == "reserved mapping":
            mm.MmUnmapReservedMapping(self.reservation, SHOOTDOWN_TAG, self.mdl)
        elif self.path == "MDL":
            mm.MmUnmapLockedPages(self.va, self.mdl)
        elif self.path == "I/O space":
            mm.MmUnmapIoSpace(self.va, PAGE)
        elif self.path == "system PTEs (contiguous memory)":
            mm.MmFreeContiguousMemory(self.va)
        else:
            mm.ExFreePoolWithTag(self.va, SHOOTDOWN_TAG)

    def close(self) -> None:
        if self.mdl:
            free_pages_mdl(self.vm, self.mdl)
        if self.reservation:
            self.vm.mm.MmFreeMappingAddress(self.reservation, SHOOTDOWN_TAG)


UNMAP_PATHS = ["system PTEs (contiguous memory)", "reserved mapping", "MDL", "I/O space", "pool"]
smp_tcg = pytest.mark.requires(accelerator="tcg", smp=3)


def load_on(vm: Vm, cpu: int, va: int) -> NofaultRead:
    return vm.mm.on_cpu(cpu).read_va_nofault(va, 16)


def assert_faults(read: NofaultRead, va: int, what: str) -> None:
    assert read.faulted and read.data == b"", f"{what}: read {read.data!r}, a stale translation"
    assert read.fault_vector == 14 and read.fault_address == va and not (read.fault_error or 0) & 1, read


@smp_tcg
@pytest.mark.parametrize("path", UNMAP_PATHS)
def test_after_an_unmap_on_cpu_0_a_read_on_cpu_1_faults(vm: Vm, path: str) -> None:
    page = OnePage(vm, path)
    assert load_on(vm, 1, page.va).data == page.marker, "CPU 1 reads the page: its TLB holds it now"
    page.unmap(cpu=0)
    vm.verify.assert_unmapped(page.va, PAGE)
    assert_faults(load_on(vm, 1, page.va), page.va, f"CPU 1 after {path} unmap on CPU 0")
    page.close()


@smp_tcg
@pytest.mark.parametrize("path", UNMAP_PATHS)
def test_an_unmap_on_an_ap_shoots_down_the_bsp_and_the_other_aps(vm: Vm, path: str) -> None:
    page = OnePage(vm, path)
    others = [k for k in range(vm.vcpus) if k != 2]
    for cpu in others:
        assert load_on(vm, cpu, page.va).data == page.marker
    page.unmap(cpu=2)
    for cpu in others:
        assert_faults(load_on(vm, cpu, page.va), page.va, f"CPU {cpu} after {path} unmap on CPU 2")
    page.close()


@smp_tcg
@pytest.mark.parametrize("path", UNMAP_PATHS)
def test_hook_an_unmap_that_skips_the_shootdown_leaves_cpu_1_reading_the_old_page(vm: Vm, path: str) -> None:
    """The negative control: the same steps with the remote flush skipped show the stale read."""
    page = OnePage(vm, path)
    assert load_on(vm, 1, page.va).data == page.marker
    vm.mm.test_hook_skip_shootdown(1)
    page.unmap(cpu=0)
    vm.mm.test_hook_skip_shootdown(0)  # spent by the unmap; zero again whatever happened
    vm.verify.assert_unmapped(page.va, PAGE)
    assert_faults(load_on(vm, 0, page.va), page.va, "CPU 0 flushed its own TLB")
    assert load_on(vm, 1, page.va).data == page.marker, "CPU 1's TLB still maps the page: no shootdown"
    vm.mm.on_cpu(1).test_hook_invlpg(page.va)
    assert_faults(load_on(vm, 1, page.va), page.va, "CPU 1 after its own INVLPG")
    page.close()


@smp_tcg
def test_a_remap_at_the_same_va_shows_every_cpu_the_new_page(vm: Vm) -> None:
    f = Frames(vm, 4)
    for round_ in range(4):
        name = "AB"[round_ % 2]
        f.map(name)
        for cpu in range(vm.vcpus):
            for i in range(4):
                assert load_on(vm, cpu, f.p + i * PAGE).data == marker(name, i), \
                    f"round {round_}, CPU {cpu}, page {i}: stale translation"
        f.unmap(name)
    f.close()
