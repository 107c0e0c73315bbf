"""I/O space (ddi-spec §9), MmGetPhysicalAddress of I/O mappings (§3 item 6) and MmGetVirtualForPhysical (§5).
RAM is mapped too, once an MDL has locked it (pool pages probed and locked, MmAllocatePagesForMdl pages).

Every mapping is checked from the host: each leaf PTE's PFN, RW, U/S, NX and memory type (PWT/PCD/PAT
against the IA32_PAT the guest reports), and every unmap leaves the PTEs zero with gva2gpa agreeing.
The devices mapped are the local APIC (0xFEE00000) and the I/O APIC (0xFEC00000), which every
configuration's machine (microvm, q35) has at those addresses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.ddi.dxgk import CachingType
from harness.ddi.irql import DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.mdl import IO_WRITE_ACCESS, MDL_PFN_END, TAG_MDL, read_mdl
from harness.ddi.nt import (
    CACHING_MEMORY_TYPE,
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    KERNEL_MODE,
    MEMORY_MANAGEMENT,
    MEMORY_TYPE_PTE_BITS,
    MM_CACHED,
    MM_MAXIMUM_CACHE_TYPE,
    MM_NON_CACHED,
    MM_WRITE_COMBINED,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_FAULT_IN_NONPAGED_AREA,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOMBINE,
    PAGE_WRITECOPY,
    SYSTEM_PTE_MISUSE,
)
from harness.guest import NON_PAGED_POOL_NX
from harness.oracle.paging import PAT_GUEST, PTE_PAT_4K, PTE_PCD, PTE_PWT, MemoryType, decode_pat_msr
from harness.testing import expect_stop
from harness.vm import Vm

LOCAL_APIC = 0xFEE0_0000
IO_APIC = 0xFEC0_0000
LAPIC_ID = 0x20
IOREGSEL = 0x00
IOWIN = 0x10
IOAPIC_VERSION_INDEX = 0x01
E820_RAM = 1
LAPIC_VERSION = 0x30
HAL_LOCAL_APIC = 0xFFFF_FFFF_FFC0_0000  # the kernel's own UC mapping of the local APIC (layout.h)
MM_LOCK_UNUSABLE_PAGE = 0x1233
PF_TYPE_FREED_PTE = 0
VERIFIER_MAP_IO_SPACE_IRQL = 0x73
VERIFIER_UNMAP_IO_SPACE_IRQL = 0x7B
PTE_MISUSE_UNKNOWN_IO_MAPPING = 0x400
EFER_NXE = 1 << 11
TAG = "IoSp"



def span_pages(address: int, length: int) -> int:
    return ((address & 0xFFF) + length + 0xFFF) >> 12


def nx_enabled(vm: Vm) -> bool:
    return bool(vm.mm.kernel_info().efer & EFER_NXE)


def require_guest_pat(vm: Vm) -> None:
    pat = vm.mm.kernel_info().pat
    if pat == 0:
        pytest.skip(f"{vm.name}: the CPU has no PAT, so the kernel did not program IA32_PAT")
    assert pat == PAT_GUEST, f"the guest reports IA32_PAT {pat:#x}, ddi-spec §2.5 wants {PAT_GUEST:#x}"


@contextmanager
def io_mapping(vm: Vm, pa: int, length: int, cache_type: int = MM_NON_CACHED) -> Iterator[int]:
    """MmMapIoSpace, then MmUnmapIoSpace with the host proving every page of it unmapped."""
    va = vm.mm.MmMapIoSpace(pa, length, cache_type)
    assert va, f"MmMapIoSpace({pa:#x}, {length:#x}, {cache_type}) returned NULL"
    yield va
    if vm.alive:
        vm.mm.MmUnmapIoSpace(va, length)
        vm.verify.assert_unmapped(va & ~0xFFF, span_pages(pa, length) * 0x1000)


def assert_device_leaves(vm: Vm, va: int, pa: int, length: int, *, cache: MemoryType, writable: bool = True,
                         executable: bool = False) -> None:
    pages = span_pages(pa, length)
    first = va & ~0xFFF
    vm.verify.assert_mapped(first, pages * 0x1000, pfns=[(pa >> 12) + k for k in range(pages)], writable=writable,
                            user=False, executable=executable or not nx_enabled(vm), cache=cache)
    for _, entry in vm.verify.leaf_entries(first, pages * 0x1000):
        bits = entry & (PTE_PWT | PTE_PCD | PTE_PAT_4K)
        assert bits == MEMORY_TYPE_PTE_BITS[cache], f"leaf {entry:#x}: §2.5 bits for {cache}"


# --------------------------------------------------------------------------------------------------
# §9 Tests


def test_9_01_local_apic_noncached_maps_pfn_0xfee00_uc_nx_and_reads_its_version(vm: Vm) -> None:
    require_guest_pat(vm)
    with io_mapping(vm, LOCAL_APIC, 0x1000, MM_NON_CACHED) as va:
        assert va & 0xFFF == 0
        assert_device_leaves(vm, va, LOCAL_APIC, 0x1000, cache=MemoryType.UC)
        version = vm.mm.READ_REGISTER_ULONG(va + LAPIC_VERSION)
        assert 0x10 <= version & 0xFF <= 0x15, f"local APIC version register {version:#x}: not an integrated APIC"
        assert (version >> 16) & 0xFF >= 2, f"local APIC version register {version:#x}: too few LVT entries"
        assert version == vm.mm.READ_REGISTER_ULONG(HAL_LOCAL_APIC + LAPIC_VERSION)


def test_9_01_io_apic_noncached_answers_through_its_index_window(vm: Vm) -> None:
    with io_mapping(vm, IO_APIC, 0x20, MM_NON_CACHED) as va:
        assert_device_leaves(vm, va, IO_APIC, 0x20, cache=MemoryType.UC)
        vm.mm.WRITE_REGISTER_ULONG(va + IOREGSEL, IOAPIC_VERSION_INDEX)
        version = vm.mm.READ_REGISTER_ULONG(va + IOWIN)
        assert version & 0xFF in (0x11, 0x20), f"I/O APIC version register {version:#x}"
        assert (version >> 16) & 0xFF >= 23, f"I/O APIC version register {version:#x}: fewer than 24 pins"


def test_9_devices_mapped_here_are_not_ram(vm: Vm) -> None:
    """The mapped devices are I/O space on every machine: no e820 RAM range covers them."""
    assert vm.memory_map, "the agent's hello carried no memory map"
    for device in (LOCAL_APIC, IO_APIC):
        covering = [(b, n) for b, n, kind in vm.memory_map if kind == E820_RAM and b <= device < b + n]
        assert not covering, f"{device:#x} lies in RAM {covering}"
        assert device >> 12 > vm.mm.frame_stats().highest_pfn or vm.mm.MmGetVirtualForPhysical(device) == 0


def test_9_02_byte_offset_of_the_physical_address_is_kept(vm: Vm) -> None:
    with io_mapping(vm, LOCAL_APIC + LAPIC_ID, 0x10) as va:
        assert va & 0xFFF == LAPIC_ID
        assert_device_leaves(vm, va, LOCAL_APIC + LAPIC_ID, 0x10, cache=MemoryType.UC)
        assert vm.mm.READ_REGISTER_ULONG(va) == vm.mm.READ_REGISTER_ULONG(HAL_LOCAL_APIC + LAPIC_ID)


def test_9_03_range_straddling_a_page_boundary_takes_two_ptes(vm: Vm) -> None:
    pa = IO_APIC + 0xFF0
    with io_mapping(vm, pa, 0x20) as va:
        assert va & 0xFFF == 0xFF0
        assert_device_leaves(vm, va, pa, 0x20, cache=MemoryType.UC)
        assert vm.mm.outstanding()["iospace_pages"] >= 2


@pytest.mark.parametrize(("protect", "cache", "writable", "executable"), [
    (PAGE_READONLY | PAGE_NOCACHE, MemoryType.UC, False, False),
    (PAGE_READWRITE | PAGE_NOCACHE, MemoryType.UC, True, False),
    (PAGE_READWRITE, MemoryType.WB, True, False),
    (PAGE_READONLY | PAGE_WRITECOMBINE, MemoryType.WC, False, False),
    (PAGE_EXECUTE, MemoryType.WB, False, True),
    (PAGE_EXECUTE_READ | PAGE_NOCACHE, MemoryType.UC, False, True),
    (PAGE_EXECUTE_READWRITE | PAGE_WRITECOMBINE, MemoryType.WC, True, True),
])
def test_9_04_map_io_space_ex_protection_and_caching(vm: Vm, protect: int, cache: MemoryType, writable: bool,
                                                     executable: bool) -> None:
    require_guest_pat(vm)
    va = vm.mm.MmMapIoSpaceEx(IO_APIC, 0x1000, protect)
    assert va and va & 0xFFF == 0
    assert_device_leaves(vm, va, IO_APIC, 0x1000, cache=cache, writable=writable, executable=executable)
    vm.mm.MmUnmapIoSpace(va, 0x1000)
    vm.verify.assert_unmapped(va, 0x1000)


@pytest.mark.parametrize("protect", [
    PAGE_NOCACHE | PAGE_WRITECOMBINE | PAGE_READWRITE, 0, PAGE_NOACCESS, PAGE_WRITECOPY, PAGE_NOCACHE,
    PAGE_READONLY | PAGE_READWRITE, PAGE_READWRITE | PAGE_GUARD, 0xFFFF_FFFF,
])
def test_9_04_map_io_space_ex_bad_protection_returns_null(vm: Vm, protect: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.MmMapIoSpaceEx(IO_APIC, 0x1000, protect) == 0
    assert vm.mm.outstanding() == before


def test_9_05_write_combined_sets_pwt_only_and_pat_entry_1_is_wc(vm: Vm) -> None:
    require_guest_pat(vm)
    assert decode_pat_msr(vm.mm.kernel_info().pat)[1] is MemoryType.WC, "IA32_PAT entry 1 must be WC"
    # No framebuffer on these machines: any device page shows the bits; this one is never touched.
    with io_mapping(vm, IO_APIC, 0x1000, MM_WRITE_COMBINED) as va:
        (_, entry), = vm.verify.leaf_entries(va)
        assert entry & PTE_PWT and not entry & PTE_PCD and not entry & PTE_PAT_4K
        assert_device_leaves(vm, va, IO_APIC, 0x1000, cache=MemoryType.WC)


@pytest.mark.parametrize("cache_type", sorted(CACHING_MEMORY_TYPE))
def test_9_05_every_caching_type_gets_its_pat_entry(vm: Vm, cache_type: int) -> None:
    require_guest_pat(vm)
    with io_mapping(vm, IO_APIC, 0x3000, cache_type) as va:
        assert_device_leaves(vm, va, IO_APIC, 0x3000, cache=CACHING_MEMORY_TYPE[cache_type])


@pytest.mark.parametrize("cache_type", [MM_MAXIMUM_CACHE_TYPE, 7, 0xFF, 0xFFFF_FFFF])
def test_9_05_unknown_caching_type_returns_null(vm: Vm, cache_type: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, cache_type) == 0
    assert vm.mm.outstanding() == before


def test_9_06_unmap_zeroes_the_ptes_and_counts_return(vm: Vm) -> None:
    before = vm.mm.outstanding()
    va = vm.mm.MmMapIoSpace(IO_APIC + 0x800, 0x2000, MM_NON_CACHED)
    after_map = vm.mm.outstanding()
    assert after_map["iospace_mappings"] == before["iospace_mappings"] + 1
    assert after_map["iospace_pages"] == before["iospace_pages"] + 3
    first = va & ~0xFFF
    vm.verify.assert_mapped(first, 0x3000, pfns=[0xFEC00, 0xFEC01, 0xFEC02])
    entry_addresses = [pa for pa, _ in vm.verify.leaf_entries(first, 0x3000)]
    vm.mm.MmUnmapIoSpace(va, 0x2000)
    vm.verify.assert_unmapped(first, 0x3000)
    with vm.verify.stopped():
        assert [vm.qemu.xp(pa, 1)[0] for pa in entry_addresses] == [0, 0, 0], "the PTEs must be zero"
    assert vm.mm.outstanding() == before


def test_9_06_access_after_unmap_bugchecks_0x50(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)
    assert fresh_vm.mm.READ_REGISTER_ULONG(va + LAPIC_VERSION)
    fresh_vm.mm.MmUnmapIoSpace(va, 0x1000)
    fresh_vm.verify.assert_unmapped(va, 0x1000)
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, va + LAPIC_VERSION, 0, None, PF_TYPE_FREED_PTE):
        fresh_vm.mm.READ_REGISTER_ULONG(va + LAPIC_VERSION)


def test_9_06_unmap_with_the_wrong_size_bugchecks_0xda_0x400(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNKNOWN_IO_MAPPING, va, 2, 0):
        fresh_vm.mm.MmUnmapIoSpace(va, 0x2000)


def test_9_06_unmap_with_a_smaller_size_in_the_same_page_bugchecks_0xda_0x400(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNKNOWN_IO_MAPPING, va, 1, 0):
        fresh_vm.mm.MmUnmapIoSpace(va, 0x800)


def test_9_06_unmap_without_the_byte_offset_bugchecks_0xda_0x400(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmMapIoSpace(LOCAL_APIC + LAPIC_ID, 0x10, MM_NON_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNKNOWN_IO_MAPPING, va - LAPIC_ID, 1, 0):
        fresh_vm.mm.MmUnmapIoSpace(va - LAPIC_ID, 0x10)


def test_9_06_double_unmap_bugchecks_0xda_0x400(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)
    fresh_vm.mm.MmUnmapIoSpace(va, 0x1000)
    with expect_stop(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNKNOWN_IO_MAPPING, va, 1, 0):
        fresh_vm.mm.MmUnmapIoSpace(va, 0x1000)


def test_9_06_unmap_of_a_pool_address_bugchecks_0xda_0x400(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x1000, TAG)
    with expect_stop(SYSTEM_PTE_MISUSE, PTE_MISUSE_UNKNOWN_IO_MAPPING, va, 1, 0):
        fresh_vm.mm.MmUnmapIoSpace(va, 0x1000)


@pytest.mark.parametrize("offset", [0, 4, 0x20, 0xFFF])
def test_9_07_get_physical_address_round_trips_to_the_pa(vm: Vm, offset: int) -> None:
    pa = IO_APIC + offset
    with io_mapping(vm, pa, 0x1800) as va:
        for delta in (0, 1, 0x7FF, 0x17FF):
            assert vm.mm.MmGetPhysicalAddress(va + delta) == pa + delta
            assert vm.qemu.gva2gpa(va + delta) == pa + delta


# --------------------------------------------------------------------------------------------------
# §9 bad input and IRQL


@pytest.mark.parametrize(("pa", "length"), [
    (LOCAL_APIC, 0),
    (LOCAL_APIC, 1 << 40),             # more than the 22000 system PTEs
    (LOCAL_APIC, 0xFFFF_FFFF_FFFF_FFFF),
    (1 << 52, 0x1000),                 # beyond any CPU's physical address width
    (0xFFFF_FFFF_FFFF_F000, 0x1000),
])
def test_9_bad_size_or_address_returns_null(vm: Vm, pa: int, length: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.MmMapIoSpace(pa, length, MM_NON_CACHED) == 0
    assert vm.mm.outstanding() == before


def test_9_mapping_an_unlocked_ram_page_bugchecks_0x1a_0x1233(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x1000, TAG)
    pa = fresh_vm.mm.MmGetPhysicalAddress(va)
    assert pa == fresh_vm.qemu.gva2gpa(va)
    with expect_stop(MEMORY_MANAGEMENT, MM_LOCK_UNUSABLE_PAGE, pa >> 12, 0, 0):
        fresh_vm.mm.MmMapIoSpace(pa, 0x1000, MM_CACHED)


@contextmanager
def locked_pool(vm: Vm, pages: int) -> Iterator[tuple[int, int, list[int]]]:
    """Pool pages locked by IoAllocateMdl + MmProbeAndLockPages: (buffer VA, MDL, the PFNs the host read in the
    MDL, which equal the host's own walk of the buffer). Unlocked and freed when the block ends normally."""
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, pages * 0x1000, TAG)
    assert buf and buf & 0xFFF == 0
    mdl = vm.mm.IoAllocateMdl(buf, pages * 0x1000)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    pfns = list(read_mdl(vm.verify, mdl).pfns)
    assert [p << 12 for p in pfns] == [vm.verify.walk(buf + k * 0x1000).pa for k in range(pages)]
    yield buf, mdl, pfns
    vm.mm.MmUnlockPages(mdl)
    vm.mm.IoFreeMdl(mdl)
    vm.mm.ExFreePoolWithTag(buf, TAG)


@pytest.mark.parametrize("cache_type", sorted(CACHING_MEMORY_TYPE))
def test_9_locked_pool_pages_map_with_every_caching_type(vm: Vm, cache_type: int) -> None:
    """Each locked page mapped through its PA (one with a byte offset): leaves with its PFN, RW, NX, kernel-only and
    the caching type's bits; the data is the pool buffer's both ways, and MmGetPhysicalAddress gives the PA back."""
    require_guest_pat(vm)
    with locked_pool(vm, 2) as (buf, _, pfns):
        for k, pfn in enumerate(pfns):
            offset = 0x10 if k == 0 else 0
            pa, length = (pfn << 12) + offset, 0x1000 - offset
            before = vm.mm.outstanding()
            with io_mapping(vm, pa, length, cache_type) as va:
                assert va & 0xFFF == offset
                assert_device_leaves(vm, va, pa, length, cache=CACHING_MEMORY_TYPE[cache_type])
                assert vm.mm.MmGetPhysicalAddress(va + 0x20) == pa + 0x20 == vm.qemu.gva2gpa(va + 0x20)
                planted = bytes((k * 16 + i) & 0xFF for i in range(16))
                vm.verify.host_write(buf + k * 0x1000 + 0x100, planted)
                assert vm.mm.read_va(va - offset + 0x100, 16) == planted, "the mapping reads the pool page"
                written = bytes(0xFF - b for b in planted)
                vm.mm.write_va(va - offset + 0x200, written)
                assert vm.verify.host_read(buf + k * 0x1000 + 0x200, 16) == written
                assert vm.qemu.xp((pfn << 12) + 0x200, 2) == [int.from_bytes(written[i:i + 8], "little")
                                                               for i in (0, 8)]
            assert vm.mm.outstanding() == before


def test_9_mdl_allocated_pages_count_as_locked(vm: Vm) -> None:
    """[DECISION] pages of MmAllocatePagesForMdlEx are locked by their MDL (as for the MDL mappings, §8.7)."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 0x1000, MM_CACHED, 0)
    pfn = read_mdl(vm.verify, mdl).pfns[0]
    assert pfn != MDL_PFN_END
    with io_mapping(vm, pfn << 12, 0x1000, MM_CACHED) as va:
        assert_device_leaves(vm, va, pfn << 12, 0x1000, cache=MemoryType.WB)
    vm.mm.MmFreePagesFromMdl(mdl)
    vm.mm.ExFreePoolWithTag(mdl, TAG_MDL)


def test_9_ram_page_unlocked_again_bugchecks_0x1a_0x1233(fresh_vm: Vm) -> None:
    """Locked, it maps; after MmUnlockPages the same PA is unlocked RAM again."""
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x1000, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x1000)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    pfn = read_mdl(vm.verify, mdl).pfns[0]
    va = vm.mm.MmMapIoSpace(pfn << 12, 0x1000, MM_CACHED)
    assert va
    vm.verify.assert_mapped(va, 0x1000, pfns=[pfn])
    vm.mm.MmUnmapIoSpace(va, 0x1000)
    vm.verify.assert_unmapped(va, 0x1000)
    vm.mm.MmUnlockPages(mdl)
    with expect_stop(MEMORY_MANAGEMENT, MM_LOCK_UNUSABLE_PAGE, pfn, 0, 0):
        vm.mm.MmMapIoSpace(pfn << 12, 0x1000, MM_CACHED)


def test_9_range_running_from_a_locked_page_into_an_unlocked_one_bugchecks_0x1a_0x1233(fresh_vm: Vm) -> None:
    """Every page of the range must be locked: P2 names the first one that is not."""
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x1000, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, 0x1000)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    pfn = read_mdl(vm.verify, mdl).pfns[0]
    stats = vm.mm.frame_stats()
    assert pfn + 1 <= stats.highest_pfn
    if vm.mm.MmGetVirtualForPhysical((pfn + 1) << 12) == 0:
        pytest.skip(f"frame {pfn + 1:#x} after the locked one is not RAM on this machine")
    with expect_stop(MEMORY_MANAGEMENT, MM_LOCK_UNUSABLE_PAGE, pfn + 1, 0, 0):
        vm.mm.MmMapIoSpace((pfn << 12) + 0xFF0, 0x20, MM_CACHED)


def test_9_map_and_unmap_work_at_dispatch_level(vm: Vm) -> None:
    with vm.mm.at_irql(DISPATCH_LEVEL):
        va = vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)
        version = vm.mm.READ_REGISTER_ULONG(HAL_LOCAL_APIC + LAPIC_VERSION)
        assert vm.mm.READ_REGISTER_ULONG(va + LAPIC_VERSION) == version
        vm.mm.MmUnmapIoSpace(va, 0x1000)
    vm.verify.assert_unmapped(va, 0x1000)


def test_9_map_above_dispatch_bugchecks_0xc4_0x73(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_MAP_IO_SPACE_IRQL, HIGH_LEVEL, LOCAL_APIC, 0x1000):
        fresh_vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)


def test_9_map_ex_above_dispatch_bugchecks_0xc4_0x73_even_with_a_bad_protection(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_MAP_IO_SPACE_IRQL, HIGH_LEVEL, IO_APIC, 0x20):
        fresh_vm.mm.MmMapIoSpaceEx(IO_APIC, 0x20, PAGE_NOACCESS)


def test_9_unmap_above_dispatch_bugchecks_0xc4_0x7b(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmMapIoSpace(LOCAL_APIC, 0x1000, MM_NON_CACHED)
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_UNMAP_IO_SPACE_IRQL, HIGH_LEVEL, va, 0x1000):
        fresh_vm.mm.MmUnmapIoSpace(va, 0x1000)


def test_9_many_mappings_get_distinct_ptes_and_all_unmap(vm: Vm) -> None:
    vas = [vm.mm.MmMapIoSpace(IO_APIC + k * 0x1000, 0x1000, MM_NON_CACHED) for k in range(16)]
    assert all(vas) and len({va >> 12 for va in vas}) == 16
    for k, va in enumerate(vas):
        vm.verify.assert_mapped(va, 0x1000, pfns=[(IO_APIC >> 12) + k], cache=MemoryType.UC)
    for va in vas:
        vm.mm.MmUnmapIoSpace(va, 0x1000)
        vm.verify.assert_unmapped(va, 0x1000)


def test_9_the_257th_live_mapping_returns_null_and_nothing_leaks(vm: Vm) -> None:
    """The live-mapping table holds 256 entries; a full table fails the map cleanly."""
    live = vm.mm.outstanding()["iospace_mappings"]
    vas = []
    try:
        for _ in range(256 - live):
            vas.append(vm.mm.MmMapIoSpace(IO_APIC, 0x10, MM_NON_CACHED))
        assert all(vas)
        before = vm.mm.outstanding()
        assert vm.mm.MmMapIoSpace(IO_APIC, 0x10, MM_NON_CACHED) == 0
        assert vm.mm.outstanding() == before
    finally:
        for va in vas:
            if va:
                vm.mm.MmUnmapIoSpace(va, 0x10)
    vm.verify.assert_unmapped(min(vas), 0x1000)


# --------------------------------------------------------------------------------------------------
# §3 item 6


@pytest.mark.parametrize("offset", [0, 0x20, 0x3F0])
def test_3_06_get_physical_address_of_an_io_mapping_equals_the_pa(vm: Vm, offset: int) -> None:
    pa = LOCAL_APIC + offset
    with io_mapping(vm, pa, 0x10) as va:
        assert vm.mm.MmGetPhysicalAddress(va) == pa
        assert vm.verify.walk(va).pa == pa


# --------------------------------------------------------------------------------------------------
# §5 MmGetVirtualForPhysical


@pytest.mark.parametrize("size", [0x40, 0x1000, 0x3000])
def test_5_round_trip_for_nonpaged_pool(vm: Vm, size: int) -> None:
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, TAG)
    try:
        for offset in sorted({0, 1, size // 2, size - 1}):
            pa = vm.mm.MmGetPhysicalAddress(va + offset)
            assert pa == vm.qemu.gva2gpa(va + offset)
            assert vm.mm.MmGetVirtualForPhysical(pa) == va + offset
    finally:
        vm.mm.ExFreePoolWithTag(va, TAG)


def test_5_kernel_image_page_answers_its_image_va(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    for va in (info.text_start, info.text_start + 0x123, info.data_start + 8):
        pa = vm.mm.MmGetPhysicalAddress(va)
        assert pa and vm.mm.MmGetVirtualForPhysical(pa) == va


def test_5_other_ram_answers_its_physmap_va(vm: Vm) -> None:
    """A page-table frame (the root table) has no owner mapping: its physmap VA translates back."""
    info = vm.mm.kernel_info()
    root = info.cr3 & 0x000F_FFFF_FFFF_F000
    va = vm.mm.MmGetVirtualForPhysical(root + 0x18)
    assert va == info.physmap_base + root + 0x18
    assert vm.qemu.gva2gpa(va) == root + 0x18


def test_5_dxgk_contiguous_object_frames_answer_their_physmap_va(vm: Vm) -> None:
    """[DECISION] a DXGK contiguous object holds PFN_CONTIGUOUS frames with no mapping of its own: the physmap,
    the one system mapping all RAM has, answers (not NULL), and gva2gpa translates it back."""
    created = vm.mm.create_contiguous(3 * 0x1000, CachingType.CACHED)
    assert created.hPhysicalMemoryObject, f"status {created.status:#x}"
    try:
        info = vm.mm.dxgk_object_info(created.hPhysicalMemoryObject)
        physmap = vm.mm.kernel_info().physmap_base
        assert len(info.pfns) == 3
        for k, pfn in enumerate(info.pfns):
            pa = (pfn << 12) + 0x18 * k
            va = vm.mm.MmGetVirtualForPhysical(pa)
            assert va == physmap + pa
            assert vm.qemu.gva2gpa(va) == pa
    finally:
        vm.mm.DxgkCbDestroyPhysicalMemoryObject(created.hPhysicalMemoryObject)


def test_5_mdl_pages_answer_their_physmap_va_even_while_mapped(vm: Vm) -> None:
    """[DECISION] MmAllocatePagesForMdlEx pages: the physmap VA; an MDL's system mapping is a secondary one and
    does not change the answer."""
    mdl = vm.mm.MmAllocatePagesForMdlEx(0, 0xFFFF_FFFF_FFFF, 0, 2 * 0x1000, MM_CACHED, 0)
    pfns = read_mdl(vm.verify, mdl).pfns
    physmap = vm.mm.kernel_info().physmap_base
    answers = [vm.mm.MmGetVirtualForPhysical((pfn << 12) + 0x40) for pfn in pfns]
    assert answers == [physmap + (pfn << 12) + 0x40 for pfn in pfns]
    system = vm.mm.MmGetSystemAddressForMdlSafe(mdl)
    assert system and vm.verify.walk(system).pa == pfns[0] << 12
    assert [vm.mm.MmGetVirtualForPhysical((pfn << 12) + 0x40) for pfn in pfns] == answers
    assert all(vm.qemu.gva2gpa(va) == (pfn << 12) + 0x40 for va, pfn in zip(answers, pfns, strict=True))
    vm.mm.MmUnmapLockedPages(system, mdl)
    vm.mm.MmFreePagesFromMdl(mdl)
    vm.mm.ExFreePoolWithTag(mdl, TAG_MDL)


@pytest.mark.parametrize("pa", [LOCAL_APIC, LOCAL_APIC + 0x30, IO_APIC])
def test_5_io_space_answers_null_even_while_mapped(vm: Vm, pa: int) -> None:
    assert vm.mm.MmGetVirtualForPhysical(pa) == 0
    with io_mapping(vm, pa, 0x10):
        assert vm.mm.MmGetVirtualForPhysical(pa) == 0


def test_5_beyond_ram_answers_null(vm: Vm) -> None:
    highest = vm.mm.frame_stats().highest_pfn
    assert vm.mm.MmGetVirtualForPhysical((highest + 1) << 12) == 0
    assert vm.mm.MmGetVirtualForPhysical(1 << 51) == 0
