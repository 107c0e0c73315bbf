"""MDLs (ddi-spec §1.6-§1.8, §8, §13): every MDL the agent builds is read back by the host out of guest
RAM, every mapping is checked PTE by PTE against the PFN array as the host read it, every unmap with
assert_unmapped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.mdl import (
    HIGH_PAGE_PRIORITY,
    IO_READ_ACCESS,
    IO_WRITE_ACCESS,
    LOW_PAGE_PRIORITY,
    MDL_ALLOCATED_FIXED_SIZE,
    MDL_HEADER_SIZE,
    MDL_IO_SPACE,
    MDL_MAPPED_TO_SYSTEM_VA,
    MDL_MAPPING_CAN_FAIL,
    MDL_MAPPING_NO_EXECUTE,
    MDL_MAPPING_NO_WRITE,
    MDL_PAGES_LOCKED,
    MDL_PARTIAL,
    MDL_PARTIAL_HAS_BEEN_MAPPED,
    MDL_PFN_END,
    MDL_SOURCE_IS_NONPAGED_POOL,
    MDL_WRITE_OPERATION,
    MM_ALLOCATE_AND_HOT_REMOVE,
    MM_ALLOCATE_FAST_LARGE_PAGES,
    MM_ALLOCATE_FULLY_REQUIRED,
    MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS,
    MM_DONT_ZERO_ALLOCATION,
    NORMAL_PAGE_PRIORITY,
    STATUS_ACCESS_VIOLATION,
    TAG_MDL,
    Mdl,
    NtRaisedStatus,
    read_mdl,
    size_of_mdl,
    span_pages,
)
from harness.ddi.nt import (
    ATTEMPTED_WRITE_TO_READONLY_MEMORY,
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    INVALID_MDL_RANGE,
    KERNEL_MODE,
    MEMORY_MANAGEMENT,
    MM_CACHED,
    MM_HARDWARE_COHERENT_CACHED,
    MM_MAXIMUM_CACHE_TYPE,
    MM_NON_CACHED,
    MM_NON_CACHED_UNORDERED,
    MM_NOT_MAPPED,
    MM_USWC_CACHED,
    MM_WRITE_COMBINED,
    NO_MORE_SYSTEM_PTES,
    PAGE_FAULT_IN_NONPAGED_AREA,
    PFN_LIST_CORRUPT,
    STATUS_CONFLICTING_ADDRESSES,
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER_3,
    SYSTEM_PTE_MISUSE,
    TARGET_MDL_TOO_SMALL,
    USER_MODE,
)
from harness.ddi.usermode import USER_VIEW_BASE
from harness.guest import NON_PAGED_POOL_NX
from harness.oracle.paging import MemoryType
from harness.oracle.walker import Attr
from harness.testing import expect_stop
from harness.vm import Vm

PAGE = 0x1000
TAG = "MdlT"
EFER_NXE = 1 << 11
SYSTEM_PTE_COUNT = 22000
DETAILED_PAGES = 16


UNMAPPED_KERNEL_VA = 0xFFFF_F980_0000_0000 + 0x10_0000 * 0x1000 - 0x1000  # past the 22000 system PTEs

CACHE_MEMORY_TYPE = {MM_CACHED: MemoryType.WB, MM_WRITE_COMBINED: MemoryType.WC, MM_NON_CACHED: MemoryType.UC}


@contextmanager
def pool_buffer(vm: Vm, pages: int) -> Iterator[int]:
    """A page-aligned NX pool buffer, freed when the block ends normally. After a failure it is left alone:
    its pages may still be locked (freeing would stop the kernel and hide the failure), and the vm
    fixture discards a VM whose test failed."""
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, pages * PAGE, TAG)
    assert va and va % PAGE == 0
    yield va
    vm.mm.ExFreePoolWithTag(va, TAG)


def host_pfns(vm: Vm, va: int, length: int) -> list[int]:
    """The frames behind [va, va+length) by the host's own walk."""
    first = va & ~(PAGE - 1)
    pfns = []
    for i in range(span_pages(va, length)):
        pa = vm.verify.walk(first + i * PAGE).pa
        assert pa is not None, f"{first + i * PAGE:#x} is not mapped"
        pfns.append(pa >> 12)
    return pfns


def nx_enabled(vm: Vm) -> bool:
    return bool(vm.mm.kernel_info().efer & EFER_NXE)


def assert_mapping_matches(vm: Vm, va: int, mdl: Mdl, *, writable: bool = True, cache: int = MM_CACHED) -> None:
    """Each leaf PTE of the mapping: present, the PFN the host read in the MDL, RW as asked, supervisor,
    NX (when the CPU has it), PWT/PCD/PAT as §2.5 says; every page in one batched host walk, and the first
    DETAILED_PAGES also through assert_mapped (PAT memory type) and their raw leaf entries."""
    assert va & (PAGE - 1) == mdl.byte_offset, "the mapping keeps the MDL's byte offset"
    pfns = [p for p in mdl.pfns if p != MDL_PFN_END]
    first = va & ~(PAGE - 1)
    nx = nx_enabled(vm)
    wanted_bits = {MM_CACHED: 0, MM_WRITE_COMBINED: 0x08, MM_NON_CACHED: 0x18}[cache]
    wanted_attrs = (Attr.WRITABLE if writable else Attr.NONE) | (Attr.NONE if nx else Attr.EXECUTABLE)
    wanted_attrs |= Attr((wanted_bits & 0x08 and Attr.PWT) | (wanted_bits & 0x10 and Attr.PCD))
    mask = Attr.WRITABLE | Attr.USER | Attr.EXECUTABLE | Attr.PWT | Attr.PCD | Attr.PAT
    batch = vm.verify.translate_many([first + i * PAGE for i in range(len(pfns))])
    assert batch.attrs is not None
    problems = [f"page {i}: pa {int(pa):#x} attrs {Attr(int(attrs)) & mask!r}"
                for i, (ok, pa, attrs) in enumerate(zip(batch.ok.tolist(), batch.pa.tolist(), batch.attrs.tolist(),
                                                       strict=True))
                if not ok or pa >> 12 != pfns[i] or Attr(attrs) & mask != wanted_attrs]
    assert not problems, f"expected PFNs {pfns[:4]}... and {wanted_attrs!r}: " + "; ".join(problems[:8])
    detailed = min(len(pfns), DETAILED_PAGES)
    vm.verify.assert_mapped(first, detailed * PAGE, pfns=pfns[:detailed], writable=writable, user=False,
                            executable=not nx, cache=CACHE_MEMORY_TYPE[cache])
    for _, entry in vm.verify.leaf_entries(first, detailed * PAGE):
        assert entry & 0x98 == wanted_bits, f"PTE {entry:#x}: PWT/PCD/PAT bits, expected {wanted_bits:#x}"
        assert bool(entry >> 63) == nx


# -- §1.6-§1.8, §8.1, §8.2: the structure, IoAllocateMdl, IoFreeMdl, MmInitializeMdl, MmSizeOfMdl ------------


def test_8_1_01_io_allocate_mdl_initialises_the_header(vm: Vm) -> None:
    with pool_buffer(vm, 3) as buf:
        mdl = vm.mm.IoAllocateMdl(buf + 0x10, 0x2000)
        assert mdl
        m = read_mdl(vm.verify, mdl)
        assert m.size == 0x30 + 3 * 8 == 0x48
        assert m.start_va == buf and m.byte_offset == 0x10 and m.byte_count == 0x2000
        assert m.mdl_flags in (0, MDL_ALLOCATED_FIXED_SIZE)
        assert m.next == 0 and m.process == 0 and m.mapped_system_va == 0
        assert vm.mm.MmGetMdlPfnArray(mdl) == mdl + MDL_HEADER_SIZE == m.pfn_array
        vm.mm.IoFreeMdl(mdl)


def test_8_1_01_mdls_live_in_nonpaged_pool_under_the_mdl_tag(vm: Vm) -> None:
    """The pool header before the MDL (x64 POOL_HEADER: tag at +4) carries "MDL "."""
    with pool_buffer(vm, 1) as buf:
        mdl = vm.mm.IoAllocateMdl(buf, 0x100)
        header = vm.verify.host_read(mdl - 16, 16)
        assert header[4:8] == TAG_MDL.encode()
        vm.mm.IoFreeMdl(mdl)


def test_8_1_02_irp_primary_then_secondary_buffers_chain_in_order(vm: Vm) -> None:
    with pool_buffer(vm, 1) as irp, pool_buffer(vm, 2) as buf:
        vm.mm.write_va(irp, bytes(0x40))
        first = vm.mm.IoAllocateMdl(buf, 0x1000, False, False, irp)
        second = vm.mm.IoAllocateMdl(buf + 0x1000, 0x800, True, False, irp)
        third = vm.mm.IoAllocateMdl(buf + 0x1800, 0x800, True, False, irp)
        assert int.from_bytes(vm.verify.host_read(irp + 8, 8), "little") == first, "Irp->MdlAddress"
        assert read_mdl(vm.verify, first).next == second
        assert read_mdl(vm.verify, second).next == third
        assert read_mdl(vm.verify, third).next == 0
        for mdl in (first, second, third):
            vm.mm.IoFreeMdl(mdl)


def test_8_1_03_length_4gib_minus_a_page_is_accepted(vm: Vm) -> None:
    """[DECISION] the Windows 7+ rule: up to 0xFFFFF000 bytes; one more page, or zero, gives NULL."""
    base = 0xFFFF_8000_0000_0000
    mdl = vm.mm.IoAllocateMdl(base, 0xFFFF_F000)
    assert mdl
    m = read_mdl(vm.verify, mdl)
    assert m.byte_count == 0xFFFF_F000 and m.start_va == base and m.byte_offset == 0
    assert m.size == (0x30 + 8 * 0xFFFFF) & 0xFFFF, "Size is MmInitializeMdl's value, truncated to 16 bits"
    vm.mm.IoFreeMdl(mdl)
    assert vm.mm.IoAllocateMdl(base, 0xFFFF_F001) == 0
    assert vm.mm.IoAllocateMdl(base, 0) == 0


def test_8_1_irql_above_dispatch_bugchecks_0xc4_0xe5(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xE5, HIGH_LEVEL, 0, 0):
        fresh_vm.mm.IoAllocateMdl(0xFFFF_8000_0000_0000, 0x1000)


@pytest.mark.parametrize(("offset", "length"), [(0, 0), (0x10, 0), (0, 1), (0xFFF, 2), (0x800, 0x2000),
                                                (0, 0xFFFF_F000)])
def test_1_8_span_and_mm_size_of_mdl(vm: Vm, offset: int, length: int) -> None:
    """SPAN(va, 0) is 0 for an aligned va and 1 otherwise (the +0xFFF carries)."""
    va = 0xFFFF_8000_0000_0000 + offset
    expected = 0x30 + 8 * (((offset & 0xFFF) + length + 0xFFF) >> 12)
    assert vm.mm.MmSizeOfMdl(va, length) == expected == size_of_mdl(va, length)


def test_8_2_mm_initialize_mdl_sets_exactly_the_documented_fields(vm: Vm) -> None:
    """Process, MappedSystemVa and the PFN array are left as they were."""
    with pool_buffer(vm, 1) as mem:
        vm.mm.write_va(mem, b"\xAB" * 0x60)
        vm.mm.MmInitializeMdl(mem, 0xFFFF_8000_1234_5678, 0x3000)
        m = read_mdl(vm.verify, mem)
        assert m.next == 0 and m.mdl_flags == 0
        assert m.size == 0x30 + 8 * 4
        assert m.start_va == 0xFFFF_8000_1234_5000 and m.byte_offset == 0x678 and m.byte_count == 0x3000
        assert m.process == m.mapped_system_va == 0xABABABABABABABAB
        assert m.allocation_processor_number == m.reserved == 0xABAB
        assert all(p == 0xABABABABABABABAB for p in m.pfns)


# -- §8.4 MmBuildMdlForNonPagedPool --------------------------------------------------------------------------


def test_8_4_build_for_nonpaged_pool_fills_pfns_of_the_host_walk(vm: Vm) -> None:
    with pool_buffer(vm, 3) as buf:
        va, length = buf + 0x80, 3 * PAGE - 0x80
        mdl = vm.mm.IoAllocateMdl(va, length)
        before = vm.mm.outstanding()
        vm.mm.MmBuildMdlForNonPagedPool(mdl)
        m = read_mdl(vm.verify, mdl)
        assert list(m.pfns) == host_pfns(vm, va, length)
        assert m.mdl_flags & ~MDL_ALLOCATED_FIXED_SIZE == MDL_SOURCE_IS_NONPAGED_POOL
        assert m.mapped_system_va == va and m.process == 0
        assert vm.mm.MmGetSystemAddressForMdlSafe(mdl) == va
        assert vm.mm.outstanding() == before, "no system PTEs, no mapping, nothing locked"
        assert read_mdl(vm.verify, mdl) == m
        vm.mm.IoFreeMdl(mdl)


def test_8_4_build_from_the_kernel_stack_bugchecks_0xc4_0x140(fresh_vm: Vm) -> None:
    info = fresh_vm.mm.kernel_info()
    va = info.stack_base + 0x100
    mdl = fresh_vm.mm.IoAllocateMdl(va, 0x200)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x140, 0, mdl, va):
        fresh_vm.mm.MmBuildMdlForNonPagedPool(mdl)


def test_8_4_build_from_non_resident_memory_bugchecks_0x1a_0x1240(fresh_vm: Vm) -> None:
    mdl = fresh_vm.mm.IoAllocateMdl(UNMAPPED_KERNEL_VA, 0x100)
    with expect_stop(MEMORY_MANAGEMENT, 0x1240, mdl, None, 0) as stop:
        fresh_vm.mm.MmBuildMdlForNonPagedPool(mdl)
    assert stop.record.parameters[2] != 0, "P3 is the PTE pointer"


# -- §8.5 MmProbeAndLockPages / MmUnlockPages ----------------------------------------------------------------


def test_8_5_lock_write_access_sets_flags_and_pfns_then_unlock_keeps_write_operation(vm: Vm) -> None:
    with pool_buffer(vm, 3) as buf:
        va, length = buf + 0x100, 3 * PAGE - 0x100
        mdl = vm.mm.IoAllocateMdl(va, length)
        before = vm.mm.outstanding()
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
        m = read_mdl(vm.verify, mdl)
        assert m.mdl_flags == MDL_PAGES_LOCKED | MDL_WRITE_OPERATION == 0x82
        assert m.process == 0
        assert list(m.pfns) == host_pfns(vm, va, length)
        assert vm.mm.outstanding()["mdl_locked_pages"] == before["mdl_locked_pages"] + 3
        vm.mm.MmUnlockPages(mdl)
        assert read_mdl(vm.verify, mdl).mdl_flags == MDL_WRITE_OPERATION
        assert vm.mm.outstanding() == before
        vm.mm.IoFreeMdl(mdl)


def test_8_5_read_access_does_not_set_write_operation(vm: Vm) -> None:
    with pool_buffer(vm, 1) as buf:
        mdl = vm.mm.IoAllocateMdl(buf, 0x10)
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
        assert read_mdl(vm.verify, mdl).mdl_flags == MDL_PAGES_LOCKED
        vm.mm.MmUnlockPages(mdl)
        vm.mm.IoFreeMdl(mdl)


def test_8_5_two_mdls_may_lock_the_same_page(vm: Vm) -> None:
    with pool_buffer(vm, 1) as buf:
        a, b = vm.mm.IoAllocateMdl(buf, 0x100), vm.mm.IoAllocateMdl(buf + 0x80, 0x100)
        vm.mm.MmProbeAndLockPages(a, KERNEL_MODE, IO_READ_ACCESS)
        vm.mm.MmProbeAndLockPages(b, KERNEL_MODE, IO_READ_ACCESS)
        assert read_mdl(vm.verify, a).pfns == read_mdl(vm.verify, b).pfns
        vm.mm.MmUnlockPages(a)
        vm.mm.MmUnlockPages(b)
        vm.mm.IoFreeMdl(a)
        vm.mm.IoFreeMdl(b)


def test_8_5_unmapped_va_raises_access_violation_and_leaves_the_mdl_unlocked(vm: Vm) -> None:
    """[DECISION] the raised exception comes back as the key "raised"; the host raises NtRaisedStatus."""
    mdl = vm.mm.IoAllocateMdl(UNMAPPED_KERNEL_VA, 0x100)
    before = vm.mm.outstanding()
    with pytest.raises(NtRaisedStatus) as raised:
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
    assert raised.value.status == STATUS_ACCESS_VIOLATION
    assert read_mdl(vm.verify, mdl).mdl_flags == 0
    assert vm.mm.outstanding() == before
    vm.mm.IoFreeMdl(mdl)


def test_8_5_failed_probe_unlocks_the_pages_it_had_locked(fresh_vm: Vm) -> None:
    """The MDL spans the kernel's last data page and the unmapped page after it: the probe locks the
    first, fails on the second and must unlock the first again. Proof: an MDL forged as locked over that
    page then takes its lock count below zero (PFN_LIST_CORRUPT 0x07 with count 0)."""
    vm = fresh_vm
    last_data = vm.mm.kernel_info().data_end - PAGE
    assert vm.verify.walk(last_data + PAGE).pa is None, "the page after the image's data is unmapped"
    mdl = vm.mm.IoAllocateMdl(last_data + PAGE - 8, 0x10)
    with pytest.raises(NtRaisedStatus) as raised:
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    assert raised.value.status == STATUS_ACCESS_VIOLATION
    assert read_mdl(vm.verify, mdl).mdl_flags == 0
    assert vm.mm.outstanding()["mdl_locked_pages"] == 0
    pfn = host_pfns(vm, last_data, 1)[0]
    forged = vm.mm.IoAllocateMdl(last_data, 0x10)
    vm.mm.write_va(forged + 0x0A, MDL_PAGES_LOCKED.to_bytes(2, "little"))
    vm.mm.write_va(forged + MDL_HEADER_SIZE, pfn.to_bytes(8, "little"))
    with expect_stop(PFN_LIST_CORRUPT, 0x07, pfn, 0, 0):
        vm.mm.MmUnlockPages(forged)


def test_8_5_write_probe_of_read_only_memory_raises_access_violation(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    mdl = vm.mm.IoAllocateMdl(info.rodata_start, 0x100)
    with pytest.raises(NtRaisedStatus) as raised:
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    assert raised.value.status == STATUS_ACCESS_VIOLATION
    assert read_mdl(vm.verify, mdl).mdl_flags == 0
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
    assert read_mdl(vm.verify, mdl).pfns == tuple(host_pfns(vm, info.rodata_start, 0x100))
    vm.mm.MmUnlockPages(mdl)
    vm.mm.IoFreeMdl(mdl)


def test_8_5_locking_twice_bugchecks_0xc4_0xb0(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB0, mdl, MDL_PAGES_LOCKED | MDL_WRITE_OPERATION,
                     MDL_PAGES_LOCKED):
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)


def test_8_5_locking_a_nonpaged_built_mdl_bugchecks_0xc4_0xb0(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmBuildMdlForNonPagedPool(mdl)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB0, mdl, MDL_SOURCE_IS_NONPAGED_POOL,
                     MDL_SOURCE_IS_NONPAGED_POOL):
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)


def test_8_5_probe_above_dispatch_bugchecks_0xc4_0x70(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x70, HIGH_LEVEL, mdl, KERNEL_MODE):
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)


def test_8_5_lock_and_unlock_at_dispatch_level_is_allowed(vm: Vm) -> None:
    with pool_buffer(vm, 1) as buf:
        mdl = vm.mm.IoAllocateMdl(buf, 0x100)
        with vm.mm.at_irql(DISPATCH_LEVEL):
            vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
            vm.mm.MmUnlockPages(mdl)
        vm.mm.IoFreeMdl(mdl)


def test_8_5_unlock_above_dispatch_bugchecks_0xc4_0x78(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
    vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x78, HIGH_LEVEL, mdl, 0):
        vm.mm.MmUnlockPages(mdl)


def test_8_5_unlock_of_a_never_locked_mdl_bugchecks_0xc4_0x7c(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7C, mdl, 0, 0):
        vm.mm.MmUnlockPages(mdl)


def test_8_5_unlock_of_a_nonpaged_built_mdl_bugchecks_0xc4_0x7d(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmBuildMdlForNonPagedPool(mdl)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7D, mdl, MDL_SOURCE_IS_NONPAGED_POOL, 0):
        vm.mm.MmUnlockPages(mdl)


def test_8_5_unlocking_more_often_than_locked_bugchecks_0x4e_0x07(fresh_vm: Vm) -> None:
    """A second MDL that claims to be locked (flags planted by the guest's own write) over a page locked
    once: its unlock takes the page's lock count below zero."""
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    locked, forged = vm.mm.IoAllocateMdl(buf, 0x100), vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmProbeAndLockPages(locked, KERNEL_MODE, IO_READ_ACCESS)
    vm.mm.MmUnlockPages(locked)
    pfn = read_mdl(vm.verify, locked).pfns[0]
    vm.mm.write_va(forged + 0x0A, MDL_PAGES_LOCKED.to_bytes(2, "little"))
    vm.mm.write_va(forged + MDL_HEADER_SIZE, pfn.to_bytes(8, "little"))
    with expect_stop(PFN_LIST_CORRUPT, 0x07, pfn, 0, 0):
        vm.mm.MmUnlockPages(forged)


# -- §8.6 MmAllocatePagesForMdl(Ex) / MmFreePagesFromMdl -----------------------------------------------------


def one_page_mdl(vm: Vm) -> int:
    """An MDL describing one fresh page from MmAllocatePagesForMdlEx: locked, no byte offset."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, PAGE, MM_CACHED, 0)
    assert mdl, "MmAllocatePagesForMdlEx of one page failed"
    return mdl


def free_pages_mdl(vm: Vm, mdl: int) -> None:
    vm.mm.MmFreePagesFromMdl(mdl)
    vm.mm.ExFreePoolWithTag(mdl, TAG_MDL)


def test_8_6_01_five_pages_below_4gib_are_zeroed_and_locked(vm: Vm) -> None:
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF, 0, 5 * PAGE, MM_CACHED, 0)
    assert mdl
    m = read_mdl(vm.verify, mdl)
    assert m.byte_count == 0x5000 and m.start_va == 0 and m.byte_offset == 0 and m.process == 0
    assert m.mdl_flags & MDL_PAGES_LOCKED
    assert len(set(m.pfns)) == 5 and all(p < 0x100000 for p in m.pfns)
    for pfn in m.pfns:
        assert vm.verify.memory.read(pfn << 12, PAGE) == bytes(PAGE), f"PFN {pfn:#x} is not zero-filled"
    assert vm.mm.outstanding()["mdl_allocated_pages"] >= 5
    free_pages_mdl(vm, mdl)


def test_8_6_mm_allocate_pages_for_mdl_rounds_up_to_whole_pages(vm: Vm) -> None:
    """[DECISION] ByteCount is always whole pages (ReactOS)."""
    mdl = vm.mm.MmAllocatePagesForMdl(0, 0xFFFF_FFFF_FFFF, 0, 0x1801)
    m = read_mdl(vm.verify, mdl)
    assert m.byte_count == 0x2000 and len(m.pfns) == 2
    free_pages_mdl(vm, mdl)


def test_8_6_02_range_without_ram_gives_null(vm: Vm) -> None:
    hole = 0xFEE0_0000  # the local APIC's page: never RAM
    assert vm.mm.MmAllocatePagesForMdlEx(hole, hole + PAGE - 1, 0, PAGE, MM_CACHED, 0) == 0
    assert vm.mm.MmAllocatePagesForMdlEx(0, 0xFFF, 0, PAGE, MM_CACHED, 0) == 0, "frame 0 is firmware memory"


def test_8_6_03_more_than_free_gives_a_partial_mdl_or_null_when_fully_required(vm: Vm) -> None:
    stats = vm.mm.frame_stats()
    wanted = (stats.free + 16) * PAGE
    assert vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, wanted, MM_CACHED,
                                         MM_ALLOCATE_FULLY_REQUIRED | MM_DONT_ZERO_ALLOCATION) == 0
    # a partial allocation inside a small window of low RAM
    low, high = 0x10_0000, 0x2F_FFFF
    mdl = vm.mm.MmAllocatePagesForMdlEx(low, high, 0, 0x400 * PAGE, MM_CACHED, MM_DONT_ZERO_ALLOCATION)
    if mdl == 0:
        pytest.skip("no free frame in 1-3 MiB on this config")
    m = read_mdl(vm.verify, mdl)
    assert 0 < m.byte_count < 0x400 * PAGE
    found = m.byte_count // PAGE
    assert all(low >> 12 <= p <= high >> 12 for p in m.pfns[:found])
    assert all(p == MDL_PFN_END for p in m.pfns[found:]), "unused slots end the array"
    free_pages_mdl(vm, mdl)


def test_8_6_04_require_contiguous_chunks_gives_consecutive_pfns(vm: Vm) -> None:
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 8 * PAGE, MM_CACHED,
                                        MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS)
    pfns = read_mdl(vm.verify, mdl).pfns
    assert list(pfns) == list(range(pfns[0], pfns[0] + 8))
    free_pages_mdl(vm, mdl)
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 4 * PAGE, 8 * PAGE, MM_CACHED,
                                        MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS)
    pfns = read_mdl(vm.verify, mdl).pfns
    for chunk in (pfns[:4], pfns[4:]):
        assert chunk[0] % 4 == 0 and list(chunk) == list(range(chunk[0], chunk[0] + 4))
    free_pages_mdl(vm, mdl)


@pytest.mark.parametrize(("skip", "total", "flags"), [
    (0x800, PAGE, 0),
    (0, PAGE, MM_ALLOCATE_FAST_LARGE_PAGES),
    (0, PAGE, MM_ALLOCATE_AND_HOT_REMOVE),
    (0, PAGE, 0x1000),
    (3 * PAGE, 6 * PAGE, MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS),
    (4 * PAGE, 6 * PAGE, MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS),
    (0, 0, 0),
    (0, 0xFFFF_F001, 0),
])
def test_8_6_05_bad_skip_flags_or_size_give_null(vm: Vm, skip: int, total: int, flags: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, skip, total, MM_CACHED, flags) == 0
    assert vm.mm.outstanding() == before


def test_8_6_06_freed_pages_go_back_and_slots_read_list_head(vm: Vm) -> None:
    stats = vm.mm.frame_stats()
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 3 * PAGE, MM_CACHED, MM_DONT_ZERO_ALLOCATION)
    pfns = read_mdl(vm.verify, mdl).pfns
    assert vm.mm.frame_stats().free == stats.free - 3
    vm.mm.MmFreePagesFromMdl(mdl)
    m = read_mdl(vm.verify, mdl)
    assert all(p == MDL_PFN_END for p in m.pfns) and not m.mdl_flags & MDL_PAGES_LOCKED
    assert vm.mm.frame_stats().free == stats.free
    again = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 3 * PAGE, MM_CACHED, MM_DONT_ZERO_ALLOCATION)
    assert set(read_mdl(vm.verify, again).pfns) == set(pfns), "the next allocation can return them"
    vm.mm.ExFreePoolWithTag(mdl, TAG_MDL)
    free_pages_mdl(vm, again)


def test_8_6_07_free_pages_releases_the_system_mapping(vm: Vm) -> None:
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 4 * PAGE, MM_CACHED, 0)
    va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    m = read_mdl(vm.verify, mdl)
    assert va and m.mapped_system_va == va and m.mdl_flags & MDL_MAPPED_TO_SYSTEM_VA
    assert_mapping_matches(vm, va, m)
    vm.mm.MmFreePagesFromMdl(mdl)
    vm.verify.assert_unmapped(va, 4 * PAGE)
    assert not read_mdl(vm.verify, mdl).mdl_flags & MDL_MAPPED_TO_SYSTEM_VA
    vm.mm.ExFreePoolWithTag(mdl, TAG_MDL)


def test_8_6_free_pages_of_a_foreign_mdl_bugchecks_0x1a_0x1236(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
    pfn = read_mdl(vm.verify, mdl).pfns[0]
    with expect_stop(MEMORY_MANAGEMENT, 0x1236, mdl, mdl + MDL_HEADER_SIZE, pfn):
        vm.mm.MmFreePagesFromMdl(mdl)


def test_8_6_allocate_above_dispatch_bugchecks_0xc4_0x7e(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7E, HIGH_LEVEL, DISPATCH_LEVEL, 0):
        fresh_vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF, 0, PAGE, MM_CACHED, 0)


# -- §8.7 MmMapLockedPagesSpecifyCache / MmUnmapLockedPages / MmGetSystemAddressForMdlSafe -----------------


@pytest.mark.parametrize("cache", [MM_NON_CACHED, MM_CACHED, MM_WRITE_COMBINED])
def test_8_7_01_map_three_locked_pages_at_offset_0x123(vm: Vm, cache: int) -> None:
    with pool_buffer(vm, 3) as buf:
        mdl = vm.mm.IoAllocateMdl(buf + 0x123, 3 * PAGE - 0x123)
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
        before = vm.mm.outstanding()
        va = vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, cache, 0, False, NORMAL_PAGE_PRIORITY)
        assert va & 0xFFF == 0x123
        m = read_mdl(vm.verify, mdl)
        assert m.mapped_system_va == va
        assert m.mdl_flags == MDL_PAGES_LOCKED | MDL_WRITE_OPERATION | MDL_MAPPED_TO_SYSTEM_VA
        assert vm.mm.outstanding()["mdl_mapped_pages"] == before["mdl_mapped_pages"] + 3
        assert_mapping_matches(vm, va, m, cache=cache)
        vm.mm.MmUnmapLockedPages(va, mdl)
        vm.verify.assert_unmapped(va, 3 * PAGE - 0x123)
        assert read_mdl(vm.verify, mdl).mdl_flags == MDL_PAGES_LOCKED | MDL_WRITE_OPERATION
        vm.mm.MmUnlockPages(mdl)
        vm.mm.IoFreeMdl(mdl)


def test_8_7_mapping_shows_the_buffer(vm: Vm) -> None:
    """What the guest wrote through the pool VA reads back through the MDL mapping, and the reverse."""
    with pool_buffer(vm, 2) as buf:
        vm.verify.guest_write(buf, bytes(range(256)) * 32)
        mdl = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
        va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
        assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
        assert vm.verify.host_read(va, 2 * PAGE) == bytes(range(256)) * 32
        vm.mm.write_va(va + PAGE, b"mapped")
        assert vm.mm.read_va(buf + PAGE, 6) == b"mapped"
        vm.mm.MmUnlockPages(mdl)
        vm.verify.assert_unmapped(va, 2 * PAGE)
        vm.mm.IoFreeMdl(mdl)


def test_8_7_02_no_write_mapping_is_read_only_and_no_execute_is_accepted(vm: Vm) -> None:
    with pool_buffer(vm, 2) as buf:
        mdl = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)
        va = vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False,
                                                NORMAL_PAGE_PRIORITY | MDL_MAPPING_NO_WRITE | MDL_MAPPING_NO_EXECUTE)
        assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl), writable=False)
        vm.mm.MmUnmapLockedPages(va, mdl)
        vm.verify.assert_unmapped(va, 2 * PAGE)
        vm.mm.MmUnlockPages(mdl)
        vm.mm.IoFreeMdl(mdl)


def test_8_7_02_write_through_a_no_write_mapping_bugchecks_0xbe(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    va = vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False,
                                            NORMAL_PAGE_PRIORITY | MDL_MAPPING_NO_WRITE)
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl), writable=False)
    (_, pte), = vm.verify.leaf_entries(va)
    with expect_stop(ATTEMPTED_WRITE_TO_READONLY_MEMORY, va + 8, pte):
        vm.mm.write_va(va + 8, b"\x01")


def test_8_7_03_get_system_address_twice_maps_once(vm: Vm) -> None:
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    before = vm.mm.outstanding()
    va = vm.mm.MmGetSystemAddressForMdlSafe(mdl, NORMAL_PAGE_PRIORITY)
    assert vm.mm.MmGetSystemAddressForMdlSafe(mdl, NORMAL_PAGE_PRIORITY) == va
    assert vm.mm.outstanding()["mdl_mapped_pages"] == before["mdl_mapped_pages"] + 2
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    vm.mm.MmUnmapLockedPages(va, mdl)
    vm.verify.assert_unmapped(va, 2 * PAGE)
    free_pages_mdl(vm, mdl)


def test_8_7_04_access_after_unmap_bugchecks_0x50(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    vm.mm.MmUnmapLockedPages(va, mdl)
    vm.verify.assert_unmapped(va, PAGE)
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, va, 0, None, 0):
        vm.mm.read_va(va, 1)


def test_8_7_05_priority_thresholds_and_exhaustion_return_null(vm: Vm) -> None:
    """[DECISION] Low fails below 1/16 free, Normal below 1/64, High only at none; BugCheckOnFailure with
    MDL_MAPPING_CAN_FAIL returns NULL too."""
    in_use = vm.mm.outstanding()["syspte_pages"]
    free = SYSTEM_PTE_COUNT - in_use
    pages = free - SYSTEM_PTE_COUNT // 64 + 1  # leaves fewer than 1/64 free
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, pages * PAGE, MM_CACHED, MM_DONT_ZERO_ALLOCATION)
    assert read_mdl(vm.verify, mdl).byte_count == pages * PAGE
    assert vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, LOW_PAGE_PRIORITY) == 0
    assert vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY) == 0
    va = vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, HIGH_PAGE_PRIORITY)
    assert va
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    rest = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, SYSTEM_PTE_COUNT * PAGE // 64, MM_CACHED,
                                         MM_DONT_ZERO_ALLOCATION)
    assert vm.mm.MmMapLockedPagesSpecifyCache(rest, KERNEL_MODE, MM_CACHED, 0, False, HIGH_PAGE_PRIORITY) == 0
    vm.mm.write_va(rest + 0x0A, (MDL_PAGES_LOCKED | MDL_MAPPING_CAN_FAIL).to_bytes(2, "little"))
    assert vm.mm.MmMapLockedPagesSpecifyCache(rest, KERNEL_MODE, MM_CACHED, 0, True, HIGH_PAGE_PRIORITY) == 0
    vm.mm.write_va(rest + 0x0A, MDL_PAGES_LOCKED.to_bytes(2, "little"))
    vm.mm.MmUnmapLockedPages(va, mdl)
    vm.verify.assert_unmapped(va, pages * PAGE)
    free_pages_mdl(vm, rest)
    free_pages_mdl(vm, mdl)


def test_8_7_05_exhaustion_with_bugcheck_on_failure_bugchecks_0x3f(fresh_vm: Vm) -> None:
    vm = fresh_vm
    pages = SYSTEM_PTE_COUNT + 1
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, pages * PAGE, MM_CACHED, MM_DONT_ZERO_ALLOCATION)
    assert read_mdl(vm.verify, mdl).byte_count == pages * PAGE
    with expect_stop(NO_MORE_SYSTEM_PTES, 0, pages, None, SYSTEM_PTE_COUNT):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, True, HIGH_PAGE_PRIORITY)


def test_8_7_06_unlock_of_a_mapped_mdl_unmaps_it(vm: Vm) -> None:
    with pool_buffer(vm, 3) as buf:
        mdl = vm.mm.IoAllocateMdl(buf + 0x10, 3 * PAGE - 0x20)
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
        va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
        assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
        vm.mm.MmUnlockPages(mdl)
        vm.verify.assert_unmapped(va, 3 * PAGE - 0x20)
        assert read_mdl(vm.verify, mdl).mdl_flags == MDL_WRITE_OPERATION
        vm.mm.IoFreeMdl(mdl)


# -- §8.7 user mappings (the one user address space of docs/ddi/usermode.md) ----------------------------------

USER_HALF_END = 0x0000_8000_0000_0000
USER_VIEW_PAGES = 512
PAGE_FAULT = 14
PF_ERR_P, PF_ERR_W, PF_ERR_US = 0x1, 0x2, 0x4


def user_map(vm: Vm, mdl: int, cache: int = MM_CACHED, priority: int = NORMAL_PAGE_PRIORITY,
             requested: int = 0) -> int:
    va = vm.mm.MmMapLockedPagesSpecifyCache(mdl, USER_MODE, cache, requested, False, priority)
    assert 0 < va < USER_HALF_END, f"a user mapping at {va:#x}"
    return va


def user_unmap(vm: Vm, va: int, mdl: int) -> None:
    """MmUnmapLockedPages of a user mapping, then the host proves every page of it gone."""
    m = read_mdl(vm.verify, mdl)
    vm.mm.MmUnmapLockedPages(va, mdl)
    vm.verify.assert_unmapped(va & ~(PAGE - 1), m.page_count * PAGE)


def assert_user_mapping_matches(vm: Vm, va: int, mdl: Mdl, *, writable: bool = True, cache: int = MM_CACHED) -> None:
    """Each leaf PTE: present, U/S=1, the PFN the host read in the MDL, RW as asked, NX (when the CPU has it),
    PWT/PCD/PAT as §2.5 says; the walk of every level through assert_mapped (U/S on every level, PAT type)."""
    assert va & (PAGE - 1) == mdl.byte_offset, "the mapping keeps the MDL's byte offset"
    pfns = [p for p in mdl.pfns if p != MDL_PFN_END]
    first = va & ~(PAGE - 1)
    nx = nx_enabled(vm)
    vm.verify.assert_mapped(first, len(pfns) * PAGE, pfns=pfns, writable=writable, user=True, executable=not nx,
                            cache=CACHE_MEMORY_TYPE[cache])
    wanted_bits = {MM_CACHED: 0, MM_WRITE_COMBINED: 0x08, MM_NON_CACHED: 0x18}[cache]
    entries = vm.verify.leaf_entries(first, len(pfns) * PAGE)
    assert len(entries) == len(pfns)
    for i, ((_, entry), pfn) in enumerate(zip(entries, pfns, strict=True)):
        page_va = first + i * PAGE
        assert entry & 0x1 and entry & 0x4, f"{page_va:#x}: PTE {entry:#x} not present or not U/S"
        assert (entry >> 12) & 0xFF_FFFF_FFFF == pfn, f"{page_va:#x}: PTE {entry:#x}, PFN {pfn:#x} wanted"
        assert bool(entry & 0x2) == writable, f"{page_va:#x}: PTE {entry:#x} RW"
        assert entry & 0x98 == wanted_bits, f"PTE {entry:#x}: PWT/PCD/PAT bits, expected {wanted_bits:#x}"
        assert bool(entry >> 63) == nx
        assert vm.qemu.gva2gpa(page_va) == pfn << 12


def assert_ring3_sees_the_pages(vm: Vm, va: int, mdl: Mdl) -> None:
    """Ring 3 writes a distinct qword into each page of the mapping and the host finds it at the page's PA in guest
    RAM; the host plants another at the PA and ring 3 reads it back through the mapping."""
    pfns = [p for p in mdl.pfns if p != MDL_PFN_END]
    first = va & ~(PAGE - 1)
    for i, pfn in enumerate(pfns):
        offset = (mdl.byte_offset + 8) & 0xFF8 if i == 0 else 0x10 * i + 8
        value = 0x5EED_0000_0000_0000 | (pfn << 8) | i
        written = vm.mm.user_probe_write(first + i * PAGE + offset, value)
        assert written.completed, f"ring-3 write to page {i}: vector {written.vector} error {written.error:#x}"
        assert vm.qemu.xp((pfn << 12) + offset, 1)[0] == value, f"page {i}: the write is not at PFN {pfn:#x}"
        planted = value ^ 0xFFFF_0000_FFFF_0000
        vm.verify.host_write(vm.mm.kernel_info().physmap_base + (pfn << 12) + offset + 8, planted.to_bytes(8, "little"))
        read = vm.mm.user_probe_read(first + i * PAGE + offset + 8)
        assert read.completed and read.value == planted


@pytest.mark.parametrize("cache", [MM_CACHED, MM_NON_CACHED, MM_WRITE_COMBINED])
def test_8_7_user_mode_mapping_of_a_probed_buffer(vm: Vm, cache: int) -> None:
    """A 3-page locked MDL at offset 0x123: a user VA with the offset, U/S leaves on the MDL's PFNs, RW, NX, the
    caching asked; ring 3 and the host agree on the data; the MDL itself is not touched (no system-VA flag)."""
    with pool_buffer(vm, 3) as buf:
        mdl = vm.mm.IoAllocateMdl(buf + 0x123, 3 * PAGE - 0x200)
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
        before = read_mdl(vm.verify, mdl)
        assert before.pfns == tuple(host_pfns(vm, buf + 0x123, 3 * PAGE - 0x200))
        va = user_map(vm, mdl, cache)
        assert read_mdl(vm.verify, mdl) == before
        assert vm.mm.outstanding()["mdl_user_mapped_pages"] >= 3
        assert_user_mapping_matches(vm, va, before, cache=cache)
        assert_ring3_sees_the_pages(vm, va, before)
        user_unmap(vm, va, mdl)
        result = vm.mm.user_probe_read(va)
        assert not result.completed and result.vector == PAGE_FAULT and result.address == va
        assert result.error & (PF_ERR_P | PF_ERR_US) == PF_ERR_US, "not present after the unmap"
        vm.mm.MmUnlockPages(mdl)
        vm.mm.IoFreeMdl(mdl)


def test_8_7_user_mode_mapping_no_write_is_read_only_for_ring3(vm: Vm) -> None:
    """MdlMappingNoWrite: RW=0; ring 3 reads, and its write takes a protection fault (P=1, W=1, U=1) as a result."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    m = read_mdl(vm.verify, mdl)
    va = user_map(vm, mdl, priority=NORMAL_PAGE_PRIORITY | MDL_MAPPING_NO_WRITE | MDL_MAPPING_NO_EXECUTE)
    assert_user_mapping_matches(vm, va, m, writable=False)
    assert vm.mm.user_probe_read(va + PAGE).completed
    result = vm.mm.user_probe_write(va + PAGE, 1)
    assert not result.completed and result.vector == PAGE_FAULT and result.address == va + PAGE
    assert result.error & (PF_ERR_P | PF_ERR_W | PF_ERR_US) == PF_ERR_P | PF_ERR_W | PF_ERR_US
    assert vm.qemu.xp(m.pfns[1] << 12, 1)[0] == 0, "the page stays as MmAllocatePagesForMdlEx zeroed it"
    user_unmap(vm, va, mdl)
    free_pages_mdl(vm, mdl)


def test_8_7_user_mappings_coexist_with_each_other_and_the_system_mapping(vm: Vm) -> None:
    """NT keeps no user mapping in the MDL: two user views and the system one at once, on the same frames; unmapping
    one leaves the others as they were."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    first = user_map(vm, mdl)
    system = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    second = user_map(vm, mdl)
    m = read_mdl(vm.verify, mdl)
    assert m.mdl_flags & MDL_MAPPED_TO_SYSTEM_VA and m.mapped_system_va == system
    assert len({first & ~0xFFF, second & ~0xFFF}) == 2
    assert abs(first - second) >= 2 * PAGE, "the two user views overlap"
    assert_user_mapping_matches(vm, first, m)
    assert_user_mapping_matches(vm, second, m)
    assert_mapping_matches(vm, system, m)
    assert vm.mm.user_probe_write(first + 0x20, 0x1122_3344).completed
    assert vm.mm.user_probe_read(second + 0x20).value == 0x1122_3344
    user_unmap(vm, first, mdl)
    assert_user_mapping_matches(vm, second, m)
    assert_mapping_matches(vm, system, m)
    user_unmap(vm, second, mdl)
    vm.mm.MmUnmapLockedPages(system, mdl)
    vm.verify.assert_unmapped(system, 2 * PAGE)
    free_pages_mdl(vm, mdl)


def test_8_7_user_mode_requested_address_is_rounded_down(vm: Vm) -> None:
    """RequestedAddress (user mode only) rounds down to its page; [DECISION] one that is taken or outside the user
    views raises STATUS_CONFLICTING_ADDRESSES and changes nothing."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    wanted = USER_VIEW_BASE + 0x100 * PAGE
    va = user_map(vm, mdl, requested=wanted + 0x456)
    assert va == wanted
    assert_user_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    before = vm.mm.outstanding()
    for taken in (wanted, wanted + PAGE - 1, wanted - PAGE, USER_VIEW_BASE + (USER_VIEW_PAGES - 1) * PAGE,
                  0x7000_0000, 0x1000):
        with pytest.raises(NtRaisedStatus) as raised:
            vm.mm.MmMapLockedPagesSpecifyCache(mdl, USER_MODE, MM_CACHED, taken, False, NORMAL_PAGE_PRIORITY)
        assert raised.value.status == STATUS_CONFLICTING_ADDRESSES, f"requested {taken:#x}"
    assert vm.mm.outstanding() == before
    user_unmap(vm, va, mdl)
    free_pages_mdl(vm, mdl)


def test_8_7_user_mode_mapping_of_a_nonpaged_built_mdl(vm: Vm) -> None:
    """User mappings also take nonpaged-built MDLs (§8.7), which kernel mappings refuse."""
    with pool_buffer(vm, 1) as buf:
        mdl = vm.mm.IoAllocateMdl(buf + 0x40, 0x100)
        vm.mm.MmBuildMdlForNonPagedPool(mdl)
        m = read_mdl(vm.verify, mdl)
        assert m.mdl_flags & MDL_SOURCE_IS_NONPAGED_POOL
        va = user_map(vm, mdl)
        assert va & 0xFFF == 0x40
        assert_user_mapping_matches(vm, va, m)
        assert_ring3_sees_the_pages(vm, va, m)
        user_unmap(vm, va, mdl)
        vm.mm.IoFreeMdl(mdl)


def test_8_7_user_mode_failures_raise(vm: Vm) -> None:
    """[DECISION] an unknown caching type raises STATUS_INVALID_PARAMETER_3; more pages than the user views hold
    raise STATUS_INSUFFICIENT_RESOURCES (BugCheckOnFailure does not apply to user mappings); nothing changes."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, (USER_VIEW_PAGES + 1) * PAGE, MM_CACHED, 0)
    m = read_mdl(vm.verify, mdl)
    assert m.page_count == USER_VIEW_PAGES + 1
    before = vm.mm.outstanding()
    for cache in (MM_MAXIMUM_CACHE_TYPE, MM_NOT_MAPPED):
        with pytest.raises(NtRaisedStatus) as raised:
            vm.mm.MmMapLockedPagesSpecifyCache(mdl, USER_MODE, cache, 0, False, NORMAL_PAGE_PRIORITY)
        assert raised.value.status == STATUS_INVALID_PARAMETER_3
    for bug_check_on_failure in (False, True):
        with pytest.raises(NtRaisedStatus) as raised:
            vm.mm.MmMapLockedPagesSpecifyCache(mdl, USER_MODE, MM_CACHED, 0, bug_check_on_failure,
                                               HIGH_PAGE_PRIORITY)
        assert raised.value.status == STATUS_INSUFFICIENT_RESOURCES
    assert vm.mm.outstanding() == before
    assert read_mdl(vm.verify, mdl) == m
    free_pages_mdl(vm, mdl)


def test_8_7_user_mode_map_and_unmap_at_apc_level(vm: Vm) -> None:
    mdl = one_page_mdl(vm)
    with vm.mm.at_irql(APC_LEVEL):
        va = user_map(vm, mdl)
        assert_user_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
        user_unmap(vm, va, mdl)
        free_pages_mdl(vm, mdl)


def test_8_7_user_mode_unmap_above_apc_bugchecks_0xc4_0x7a(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    va = user_map(vm, mdl)
    assert_user_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7A, DISPATCH_LEVEL, va, mdl):
        vm.mm.MmUnmapLockedPages(va, mdl)


def test_8_7_user_mode_unmap_with_another_mdl_bugchecks_0xc4_0xb9(fresh_vm: Vm) -> None:
    """The user VA must be one this MDL's user mapping returned."""
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    other = one_page_mdl(vm)
    va = user_map(vm, mdl)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB9, va, other, 0):
        vm.mm.MmUnmapLockedPages(va, other)


def test_8_7_user_mode_double_unmap_bugchecks_0xc4_0xb9(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    va = user_map(vm, mdl)
    user_unmap(vm, va, mdl)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB9, va, mdl, 0):
        vm.mm.MmUnmapLockedPages(va, mdl)


def test_8_7_user_mode_mapping_of_an_unlocked_mdl_bugchecks_0xc4_0xb3(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB3, mdl, 0, MDL_PAGES_LOCKED):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, USER_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


@pytest.mark.parametrize("release", ["IoFreeMdl", "MmUnlockPages"])
def test_8_7_releasing_a_user_mapped_probed_mdl_bugchecks_0xc4_0xb8(fresh_vm: Vm, release: str) -> None:
    """[DECISION] a live user view keeps its MDL: freeing it (the verifier's "MDL still mapped") or unlocking its
    pages under the view stops 0xC4(0xB8, Mdl, MdlFlags, 0)."""
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    user_map(vm, mdl)
    flags = read_mdl(vm.verify, mdl).mdl_flags
    assert flags & MDL_PAGES_LOCKED
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB8, mdl, flags, 0):
        getattr(vm.mm, release)(mdl)


def test_8_7_freeing_the_pages_of_a_user_mapped_mdl_bugchecks_0xc4_0xb8(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    user_map(vm, mdl)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB8, mdl, read_mdl(vm.verify, mdl).mdl_flags, 0):
        vm.mm.MmFreePagesFromMdl(mdl)


def test_8_7_user_mode_mapping_above_apc_bugchecks_0xc4_0x77(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x77, DISPATCH_LEVEL, mdl, USER_MODE):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, USER_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


def test_8_7_map_above_dispatch_bugchecks_0xc4_0x76(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x76, HIGH_LEVEL, mdl, KERNEL_MODE):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


def test_8_7_mapping_twice_bugchecks_0xc4_0xb2(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    assert_mapping_matches(vm, vm.mm.MmGetSystemAddressForMdlSafe(mdl), read_mdl(vm.verify, mdl))
    flags = MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB2, mdl, flags, MDL_MAPPED_TO_SYSTEM_VA):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


def test_8_7_mapping_a_nonpaged_built_mdl_bugchecks_0xc4_0xb2(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    vm.mm.MmBuildMdlForNonPagedPool(mdl)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB2, mdl, MDL_SOURCE_IS_NONPAGED_POOL,
                     MDL_SOURCE_IS_NONPAGED_POOL):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


def test_8_7_mapping_an_unlocked_mdl_bugchecks_0xc4_0xb3(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB3, mdl, 0, MDL_PAGES_LOCKED):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


def test_8_7_mapping_pages_that_are_not_locked_bugchecks_0xc4_0x85(fresh_vm: Vm) -> None:
    """An MDL whose LOCKED flag was planted over a pool page nobody locked."""
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x100)
    pfn = host_pfns(vm, buf, 1)[0]
    vm.mm.write_va(mdl + 0x0A, MDL_PAGES_LOCKED.to_bytes(2, "little"))
    vm.mm.write_va(mdl + MDL_HEADER_SIZE, pfn.to_bytes(8, "little"))
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x85, mdl, 1, pfn):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


def test_8_7_unmap_of_an_mdl_never_mapped_bugchecks_0xda_0x06(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    va = 0xFFFF_F980_0010_0000
    with expect_stop(SYSTEM_PTE_MISUSE, 0x06, mdl, va, 2):
        vm.mm.MmUnmapLockedPages(va, mdl)


def test_8_7_unmap_at_the_wrong_address_bugchecks_0xda_0x03(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    with expect_stop(SYSTEM_PTE_MISUSE, 0x03, 0, va, va + PAGE):
        vm.mm.MmUnmapLockedPages(va + PAGE, mdl)


def test_8_7_unmap_above_dispatch_bugchecks_0xc4_0x79(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
    vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x79, HIGH_LEVEL, va, mdl):
        vm.mm.MmUnmapLockedPages(va, mdl)


def test_8_7_unmap_of_a_user_address_bugchecks_0xc4_0xb9(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB9, 0x1000_0000, mdl, 0):
        vm.mm.MmUnmapLockedPages(0x1000_0000, mdl)


def test_8_7_map_and_unmap_at_dispatch_level(vm: Vm) -> None:
    mdl = one_page_mdl(vm)
    with vm.mm.at_irql(DISPATCH_LEVEL):
        va = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
        assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl))
        vm.mm.MmUnmapLockedPages(va, mdl)
    vm.verify.assert_unmapped(va, PAGE)
    with vm.mm.at_irql(APC_LEVEL):
        free_pages_mdl(vm, mdl)


# -- §8.3 IoBuildPartialMdl, §8.2 MmPrepareMdlForReuse, §8.1 (4) ---------------------------------------------


@pytest.mark.parametrize(("offset", "length"), [(0, 0x1000), (0x1000, 0x1800), (0x1FF0, 0x20), (0x1FF0, 0),
                                                (0, 0)])
def test_8_3_partial_mdl_takes_the_pfn_sub_array(vm: Vm, offset: int, length: int) -> None:
    with pool_buffer(vm, 4) as buf:
        source = vm.mm.IoAllocateMdl(buf + 0x40, 4 * PAGE - 0x80)
        vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_WRITE_ACCESS)
        src = read_mdl(vm.verify, source)
        va = src.virtual_address + offset
        expected_length = length or src.byte_count - offset
        target = vm.mm.IoAllocateMdl(va, expected_length)
        vm.mm.IoBuildPartialMdl(source, target, va, length)
        t = read_mdl(vm.verify, target)
        assert t.mdl_flags == MDL_PARTIAL
        assert t.virtual_address == va and t.byte_count == expected_length
        first = (offset + src.byte_offset) >> 12
        assert t.pfns == src.pfns[first:first + span_pages(va, expected_length)]
        assert list(t.pfns) == host_pfns(vm, va, expected_length)
        vm.mm.IoFreeMdl(target)
        vm.mm.MmUnlockPages(source)
        vm.mm.IoFreeMdl(source)


def test_8_3_partial_of_a_mapped_source_shares_its_mapping(vm: Vm) -> None:
    with pool_buffer(vm, 3) as buf:
        source = vm.mm.IoAllocateMdl(buf, 3 * PAGE)
        vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_WRITE_ACCESS)
        mapped = vm.mm.MmGetSystemAddressForMdlSafe(source)
        assert_mapping_matches(vm, mapped, read_mdl(vm.verify, source))
        target = vm.mm.IoAllocateMdl(buf + 0x1100, 0x1000)
        vm.mm.IoBuildPartialMdl(source, target, buf + 0x1100, 0x1000)
        t = read_mdl(vm.verify, target)
        assert t.mdl_flags == MDL_PARTIAL | MDL_MAPPED_TO_SYSTEM_VA
        assert t.mapped_system_va == mapped + 0x1100
        assert vm.mm.MmGetSystemAddressForMdlSafe(target) == mapped + 0x1100
        vm.mm.IoFreeMdl(target)
        vm.verify.assert_mapped(mapped, 3 * PAGE), "freeing the partial MDL keeps the source's mapping"
        vm.mm.MmUnlockPages(source)
        vm.verify.assert_unmapped(mapped, 3 * PAGE)
        vm.mm.IoFreeMdl(source)


def test_8_3_partial_of_a_nonpaged_source_shares_its_address(vm: Vm) -> None:
    with pool_buffer(vm, 2) as buf:
        source = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
        vm.mm.MmBuildMdlForNonPagedPool(source)
        target = vm.mm.IoAllocateMdl(buf + 0x800, 0x1000)
        vm.mm.IoBuildPartialMdl(source, target, buf + 0x800, 0x1000)
        t = read_mdl(vm.verify, target)
        assert t.mdl_flags == MDL_PARTIAL | MDL_SOURCE_IS_NONPAGED_POOL
        assert t.mapped_system_va == buf + 0x800
        assert vm.mm.MmGetSystemAddressForMdlSafe(target) == buf + 0x800
        vm.mm.IoFreeMdl(target)
        vm.mm.IoFreeMdl(source)


def test_8_1_04_free_of_a_mapped_partial_mdl_zeroes_its_ptes(vm: Vm) -> None:
    with pool_buffer(vm, 3) as buf:
        source = vm.mm.IoAllocateMdl(buf, 3 * PAGE)
        vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_WRITE_ACCESS)
        target = vm.mm.IoAllocateMdl(buf + 0x1010, 0x1100)
        vm.mm.IoBuildPartialMdl(source, target, buf + 0x1010, 0x1100)
        va = vm.mm.MmGetSystemAddressForMdlSafe(target)
        t = read_mdl(vm.verify, target)
        assert va and t.mdl_flags == MDL_PARTIAL | MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED
        assert_mapping_matches(vm, va, t)
        vm.mm.IoFreeMdl(target)
        vm.verify.assert_unmapped(va, 0x1100)
        vm.mm.MmUnlockPages(source)
        vm.mm.IoFreeMdl(source)


def test_8_2_prepare_for_reuse_unmaps_a_mapped_partial_mdl(vm: Vm) -> None:
    with pool_buffer(vm, 2) as buf:
        source = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
        vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_READ_ACCESS)
        target = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
        vm.mm.IoBuildPartialMdl(source, target, buf, 0)
        va = vm.mm.MmGetSystemAddressForMdlSafe(target)
        assert_mapping_matches(vm, va, read_mdl(vm.verify, target))
        vm.mm.MmPrepareMdlForReuse(target)
        vm.verify.assert_unmapped(va, 2 * PAGE)
        assert read_mdl(vm.verify, target).mdl_flags == MDL_PARTIAL
        vm.mm.IoFreeMdl(target)
        vm.mm.MmUnlockPages(source)
        vm.mm.IoFreeMdl(source)


@pytest.mark.parametrize(("offset", "length"), [(-0x10, 0x100), (0x1000, 0x1001), (0x2000, 0), (0x2001, 1)])
def test_8_3_range_outside_the_source_bugchecks_0x12e(fresh_vm: Vm, offset: int, length: int) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 3 * PAGE, TAG)
    source = vm.mm.IoAllocateMdl(buf + 0x100, 0x2000)
    vm.mm.MmBuildMdlForNonPagedPool(source)
    target = vm.mm.IoAllocateMdl(buf, 3 * PAGE)
    va = buf + 0x100 + offset
    with expect_stop(INVALID_MDL_RANGE, source, target, va, length):
        vm.mm.IoBuildPartialMdl(source, target, va, length)


def test_8_3_target_too_small_bugchecks_0x40(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 3 * PAGE, TAG)
    source = vm.mm.IoAllocateMdl(buf, 3 * PAGE)
    vm.mm.MmBuildMdlForNonPagedPool(source)
    target = vm.mm.IoAllocateMdl(buf, PAGE)
    with expect_stop(TARGET_MDL_TOO_SMALL, source, target, buf, 3 * PAGE):
        vm.mm.IoBuildPartialMdl(source, target, buf, 3 * PAGE)


def test_8_3_unmapping_an_inherited_mapping_bugchecks_0xc4_0xb5(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * PAGE, TAG)
    source = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
    vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_READ_ACCESS)
    mapped = vm.mm.MmGetSystemAddressForMdlSafe(source)
    assert_mapping_matches(vm, mapped, read_mdl(vm.verify, source))
    target = vm.mm.IoAllocateMdl(buf, PAGE)
    vm.mm.IoBuildPartialMdl(source, target, buf, PAGE)
    flags = MDL_PARTIAL | MDL_MAPPED_TO_SYSTEM_VA
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB5, target, flags, MDL_PARTIAL):
        vm.mm.MmUnmapLockedPages(mapped, target)


def test_8_5_unlock_of_a_partial_mdl_bugchecks_0xc4_0xb4(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * PAGE, TAG)
    source = vm.mm.IoAllocateMdl(buf, 2 * PAGE)
    vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_READ_ACCESS)
    target = vm.mm.IoAllocateMdl(buf, PAGE)
    vm.mm.IoBuildPartialMdl(source, target, buf, PAGE)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB4, target, MDL_PARTIAL, MDL_PARTIAL):
        vm.mm.MmUnlockPages(target)


def test_8_1_freeing_a_mapped_mdl_bugchecks_0xc4_0xb8(fresh_vm: Vm) -> None:
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, PAGE)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    assert_mapping_matches(vm, vm.mm.MmGetSystemAddressForMdlSafe(mdl), read_mdl(vm.verify, mdl))
    flags = MDL_PAGES_LOCKED | MDL_WRITE_OPERATION | MDL_MAPPED_TO_SYSTEM_VA
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB8, mdl, flags, 0):
        vm.mm.IoFreeMdl(mdl)


def test_8_1_double_free_stops_in_the_pool(fresh_vm: Vm) -> None:
    """The MDL is a pool block: the second IoFreeMdl is the pool's BAD_POOL_CALLER, not silent."""
    vm = fresh_vm
    mdl = vm.mm.IoAllocateMdl(0xFFFF_8000_0000_0000, 0x100)
    vm.mm.IoFreeMdl(mdl)
    with expect_stop(0xC2):
        vm.mm.IoFreeMdl(mdl)


# -- I/O space: the local APIC's registers, mapped by the kernel at the HAL base -------------------------------

LOCAL_APIC_VA = 0xFFFF_FFFF_FFC0_0000
LOCAL_APIC_PFN = 0xFEE00


def test_8_4_build_over_device_memory_sets_io_space(vm: Vm) -> None:
    assert host_pfns(vm, LOCAL_APIC_VA, 1) == [LOCAL_APIC_PFN]
    mdl = vm.mm.IoAllocateMdl(LOCAL_APIC_VA + 0x20, 0x10)
    vm.mm.MmBuildMdlForNonPagedPool(mdl)
    m = read_mdl(vm.verify, mdl)
    assert m.mdl_flags == MDL_SOURCE_IS_NONPAGED_POOL | MDL_IO_SPACE
    assert m.pfns == (LOCAL_APIC_PFN,) and m.mapped_system_va == LOCAL_APIC_VA + 0x20
    vm.mm.IoFreeMdl(mdl)


def test_8_4_build_at_dispatch_level_is_allowed(vm: Vm) -> None:
    with pool_buffer(vm, 1) as buf:
        mdl = vm.mm.IoAllocateMdl(buf, 0x20)
        with vm.mm.at_irql(DISPATCH_LEVEL):
            vm.mm.MmBuildMdlForNonPagedPool(mdl)
        assert read_mdl(vm.verify, mdl).pfns == tuple(host_pfns(vm, buf, 1))
        vm.mm.IoFreeMdl(mdl)


def test_8_5_probe_of_device_memory_bugchecks_0xc4_0x6f(fresh_vm: Vm) -> None:
    """The verifier is always on: a page outside the PFN database is its 0x6F, not MDL_IO_SPACE."""
    vm = fresh_vm
    mdl = vm.mm.IoAllocateMdl(LOCAL_APIC_VA, 0x10)
    highest = vm.mm.frame_stats().highest_pfn
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x6F, mdl, LOCAL_APIC_PFN, highest):
        vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_READ_ACCESS)


def test_8_7_mapping_non_ram_without_io_space_bugchecks_0xc4_0x89(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = vm.mm.IoAllocateMdl(0xFFFF_8000_0000_0000, 0x10)
    vm.mm.write_va(mdl + 0x0A, MDL_PAGES_LOCKED.to_bytes(2, "little"))
    vm.mm.write_va(mdl + MDL_HEADER_SIZE, LOCAL_APIC_PFN.to_bytes(8, "little"))
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x89, mdl, mdl + MDL_HEADER_SIZE, LOCAL_APIC_PFN):
        vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False, NORMAL_PAGE_PRIORITY)


@pytest.mark.parametrize("mode", [KERNEL_MODE, USER_MODE])
def test_8_5_probe_of_a_user_address_raises_access_violation(vm: Vm, mode: int) -> None:
    """[DECISION] no user address spaces: any user-range buffer fails the probe."""
    mdl = vm.mm.IoAllocateMdl(0x10_0000, 0x100)
    with pytest.raises(NtRaisedStatus) as raised:
        vm.mm.MmProbeAndLockPages(mdl, mode, IO_READ_ACCESS)
    assert raised.value.status == STATUS_ACCESS_VIOLATION
    assert read_mdl(vm.verify, mdl).mdl_flags == 0
    vm.mm.IoFreeMdl(mdl)


@pytest.mark.parametrize("cache", [MM_NOT_MAPPED, MM_MAXIMUM_CACHE_TYPE])
def test_8_7_invalid_cache_type_gives_null(vm: Vm, cache: int) -> None:
    """[DECISION] caching types outside 0..5 map nothing."""
    mdl = one_page_mdl(vm)
    before = vm.mm.outstanding()
    assert vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, cache, 0, False, NORMAL_PAGE_PRIORITY) == 0
    assert vm.mm.outstanding() == before
    assert not read_mdl(vm.verify, mdl).mdl_flags & MDL_MAPPED_TO_SYSTEM_VA
    free_pages_mdl(vm, mdl)


@pytest.mark.parametrize(("cache", "memory_type"), [(MM_HARDWARE_COHERENT_CACHED, MM_CACHED),
                                                    (MM_NON_CACHED_UNORDERED, MM_NON_CACHED),
                                                    (MM_USWC_CACHED, MM_WRITE_COMBINED)])
def test_1_2_reserved_cache_types_map_as_reactos_does(vm: Vm, cache: int, memory_type: int) -> None:
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    va = vm.mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, cache, 0, False, NORMAL_PAGE_PRIORITY)
    assert_mapping_matches(vm, va, read_mdl(vm.verify, mdl), cache=memory_type)
    vm.mm.MmUnmapLockedPages(va, mdl)
    vm.verify.assert_unmapped(va, 2 * PAGE)
    free_pages_mdl(vm, mdl)


def test_8_5_user_mode_probe_of_a_kernel_buffer_raises_access_violation(vm: Vm) -> None:
    """ReactOS: a UserMode buffer ending above MM_USER_PROBE_ADDRESS (0x7FFFFFFF0000) raises."""
    with pool_buffer(vm, 1) as buf:
        mdl = vm.mm.IoAllocateMdl(buf, 0x100)
        with pytest.raises(NtRaisedStatus) as raised:
            vm.mm.MmProbeAndLockPages(mdl, USER_MODE, IO_READ_ACCESS)
        assert raised.value.status == STATUS_ACCESS_VIOLATION
        assert read_mdl(vm.verify, mdl).mdl_flags == 0
        vm.mm.IoFreeMdl(mdl)


def test_8_7_obsolete_mm_map_locked_pages_bugchecks_0xc4_0x81(fresh_vm: Vm) -> None:
    vm = fresh_vm
    mdl = one_page_mdl(vm)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x81, mdl, MDL_PAGES_LOCKED, 0):
        vm.mm.MmMapLockedPages(mdl, KERNEL_MODE)


def test_8_6_unlocking_an_allocated_pages_mdl_bugchecks_0x4e_0x07(fresh_vm: Vm) -> None:
    """[DECISION] its pages were never lock-counted: the unlock takes the first below zero."""
    vm = fresh_vm
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * PAGE, MM_CACHED, 0)
    pfn = read_mdl(vm.verify, mdl).pfns[0]
    with expect_stop(PFN_LIST_CORRUPT, 0x07, pfn, 0, 0):
        vm.mm.MmUnlockPages(mdl)


def test_8_3_partial_of_a_large_source_into_a_large_target(vm: Vm) -> None:
    """Above 8187 pages Size is truncated to 16 bits; the partial MDL is still built (no false 0x40)."""
    pages = 9000
    source = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, pages * PAGE, MM_CACHED, MM_DONT_ZERO_ALLOCATION)
    src = read_mdl(vm.verify, source)
    assert src.byte_count == pages * PAGE
    target = vm.mm.IoAllocateMdl(PAGE, (pages - 1) * PAGE)
    vm.mm.IoBuildPartialMdl(source, target, PAGE, 0)
    t = read_mdl(vm.verify, target)
    assert t.size == (0x30 + 8 * (pages - 1)) & 0xFFFF
    assert t.pfns == src.pfns[1:]
    vm.mm.IoFreeMdl(target)
    free_pages_mdl(vm, source)
