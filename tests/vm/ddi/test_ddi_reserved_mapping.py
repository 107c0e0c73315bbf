"""Reserved mappings (ddi-spec §7.9, §4 item 2): header PTEs, map/unmap, every NULL and bugcheck.

The host reads every PTE itself from guest RAM (`raw_ptes`, `vm.verify`); the agent's answers are only
the DDIs' return values.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from _reserved import PAGE, free_pages_mdl, in_system_pte_region, pages_mdl, raw_ptes

from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.mdl import (
    IO_WRITE_ACCESS,
    MDL_MAPPED_TO_SYSTEM_VA,
    MDL_PAGES_LOCKED,
    MDL_PARTIAL,
    MDL_PARTIAL_HAS_BEEN_MAPPED,
    MDL_SOURCE_IS_NONPAGED_POOL,
    Mdl,
    read_mdl,
)
from harness.ddi.nt import (
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    KERNEL_MODE,
    MM_CACHED,
    MM_NON_CACHED,
    MM_WRITE_COMBINED,
    PAGE_FAULT_IN_NONPAGED_AREA,
    SYSTEM_PTE_MISUSE,
    VERIFIER_API_WRONG_IRQL,
)
from harness.ddi.reserved_mapping import (
    FREE_EMPTY,
    FREE_NOT_OWNER,
    FREE_STILL_MAPPED,
    MAP_INVALID_RANGE,
    MAP_NOT_EMPTY,
    MAP_NOT_OWNER,
    MM_MAPPING_ADDRESS_DIVISIBLE,
    UNMAP_EMPTY,
    UNMAP_NOT_ENTIRE,
    UNMAP_NOT_MAPPED,
    UNMAP_NOT_OWNER,
    UNMAP_TOO_MANY,
    ZERO_MAPPINGS,
    size_pte,
    stored_tag,
    tag_pte,
)
from harness.guest import NON_PAGED_POOL_NX, pool_tag
from harness.oracle.paging import MemoryType
from harness.testing import expect_stop
from harness.vm import Vm

TAG = "MRmK"  # 0x4B6D524D, the tag of the spec's examples (odd: Tag | 1 == Tag)
OTHER = "Othr"
PTE_PWT, PTE_PCD, PTE_PAT = 1 << 3, 1 << 4, 1 << 7


def pte_va(vm: Vm, va: int) -> int:
    """The self-map VA of va's PTE (NT's MiAddressToPte), from the kernel's PTE_BASE."""
    info = vm.mm.kernel_info()
    return info.pte_base + ((va >> 9) & ((1 << (9 * info.levels + 3)) - 8))


def headers(vm: Vm, base: int) -> list[int]:
    return raw_ptes(vm, base - 2 * PAGE, 2)


def test_7_9_01_header_layout(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(10 * PAGE, TAG)
    try:
        assert p % PAGE == 0 and in_system_pte_region(p - 2 * PAGE, 12), f"{p:#x}"
        assert headers(vm, p) == [12 << 28, (pool_tag(TAG) | 1) << 28]
        assert raw_ptes(vm, p, 10) == [0] * 10
        vm.verify.assert_unmapped(p - 2 * PAGE, 12 * PAGE)
    finally:
        vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_02_one_byte_reserves_one_page(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(1, TAG)
    assert headers(vm, p) == [3 << 28, tag_pte(TAG)]
    assert raw_ptes(vm, p, 1) == [0]
    vm.mm.MmFreeMappingAddress(p, TAG)


@pytest.mark.parametrize("size", [PAGE + 1, 7 * PAGE - 1, 7 * PAGE])
def test_7_9_02_sizes_round_up_to_pages(vm: Vm, size: int) -> None:
    p = vm.mm.MmAllocateMappingAddress(size, TAG)
    assert headers(vm, p)[0] == size_pte(-(-size // PAGE))
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_03_tag_zero_returns_null_and_tag_one_works(vm: Vm) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.MmAllocateMappingAddress(PAGE, 0) == 0
    assert vm.mm.MmAllocateMappingAddress(0, 0) == 0, "tag 0 is tested before the size (ReactOS order)"
    assert vm.mm.outstanding() == before
    p = vm.mm.MmAllocateMappingAddress(1, 1)
    assert headers(vm, p) == [3 << 28, 1 << 28]
    vm.mm.MmFreeMappingAddress(p, 1)


def test_7_9_03_ex_flags(vm: Vm) -> None:
    """[DECISION] Flags 0 and MM_MAPPING_ADDRESS_DIVISIBLE reserve as the plain call; other bits give NULL."""
    for flags in (0, MM_MAPPING_ADDRESS_DIVISIBLE):
        p = vm.mm.MmAllocateMappingAddressEx(3 * PAGE, TAG, flags)
        assert headers(vm, p) == [size_pte(3), tag_pte(TAG)]
        vm.mm.MmFreeMappingAddress(p, TAG)
    for flags in (0x2, 0x80000000, 0x3):
        assert vm.mm.MmAllocateMappingAddressEx(3 * PAGE, TAG, flags) == 0
    assert vm.mm.MmAllocateMappingAddressEx(PAGE, 0, 0) == 0


def test_huge_size_returns_null(vm: Vm) -> None:
    """More pages than the whole region (and sizes whose page count overflows nothing) give NULL."""
    before = vm.mm.outstanding()
    for size in (22000 * PAGE, 1 << 40, (1 << 64) - 1):
        assert vm.mm.MmAllocateMappingAddress(size, TAG) == 0
    assert vm.mm.outstanding() == before


def test_7_9_04_zero_bytes_bugchecks_0xda_0x100(fresh_vm: Vm) -> None:
    info = fresh_vm.mm.kernel_info()
    with expect_stop(SYSTEM_PTE_MISUSE, ZERO_MAPPINGS, 0, pool_tag(TAG), None) as stop:
        fresh_vm.mm.MmAllocateMappingAddress(0, TAG)
    assert info.text_start <= stop.record.parameters[3] < info.text_end, "P4 is a return address in kernel text"


def test_7_9_12_wrong_tag_on_free_bugchecks_0xda_0x101(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    with expect_stop(SYSTEM_PTE_MISUSE, FREE_NOT_OWNER, p, pool_tag(OTHER), stored_tag(TAG)):
        fresh_vm.mm.MmFreeMappingAddress(p, OTHER)


def test_7_9_16_double_free_bugchecks_0xda_0x101_owner_0(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    fresh_vm.mm.MmFreeMappingAddress(p, TAG)
    with expect_stop(SYSTEM_PTE_MISUSE, FREE_NOT_OWNER, p, pool_tag(TAG), 0):
        fresh_vm.mm.MmFreeMappingAddress(p, TAG)


def test_free_of_a_pool_address_bugchecks_0xda_0x101(fresh_vm: Vm) -> None:
    """A VA that never was a reservation (nonpaged pool, whose preceding PTEs are valid mappings)."""
    va = fresh_vm.mm.ExAllocatePoolWithTag(512, 3 * PAGE, TAG)
    with expect_stop(SYSTEM_PTE_MISUSE, FREE_NOT_OWNER, va + PAGE, pool_tag(TAG), 0):
        fresh_vm.mm.MmFreeMappingAddress(va + PAGE, TAG)


def test_7_9_17_free_with_base_plus_4_clears_all_ptes(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(5 * PAGE, TAG)
    assert headers(vm, p) == [size_pte(5), tag_pte(TAG)]
    vm.mm.MmFreeMappingAddress(p + 4, TAG)
    assert raw_ptes(vm, p - 2 * PAGE, 7) == [0] * 7


def test_tags_differing_only_in_bit_0_are_the_same_owner(vm: Vm) -> None:
    """[DECISION §7.3] the tag PTE keeps Tag | 1, so 'Tag0' and its bit-0 twin free each other's range."""
    even = pool_tag("Tag0") & ~1
    p = vm.mm.MmAllocateMappingAddress(PAGE, even)
    assert headers(vm, p)[1] == (even | 1) << 28
    vm.mm.MmFreeMappingAddress(p, even | 1)


@pytest.mark.parametrize("irql", [DISPATCH_LEVEL])
def test_7_9_18_allocate_above_apc_bugchecks_0xc4_0xe5(fresh_vm: Vm, irql: int) -> None:
    fresh_vm.mm.KeRaiseIrql(irql)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, irql, 0, 0):
        fresh_vm.mm.MmAllocateMappingAddress(PAGE, TAG)


def test_7_9_18_free_above_apc_bugchecks_0xc4_0xe5(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    fresh_vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, DISPATCH_LEVEL, 0, 0):
        fresh_vm.mm.MmFreeMappingAddress(p, TAG)


def test_allocate_and_free_at_apc_level(vm: Vm) -> None:
    with vm.mm.at_irql(APC_LEVEL):
        p = vm.mm.MmAllocateMappingAddress(PAGE, TAG)
        assert p
        vm.mm.MmFreeMappingAddress(p, TAG)


def test_touching_an_unmapped_reserved_page_bugchecks_0x50(fresh_vm: Vm) -> None:
    """Data and header pages alike fault: P2 0 for a read, 2 for a write; P4 0 (the leaf PTE is not valid)."""
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    with expect_stop(0x50, p + PAGE + 8, 0, None, 0):
        fresh_vm.mm.read_va(p + PAGE + 8, 1)


def test_touching_a_header_page_bugchecks_0x50(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    with expect_stop(0x50, p - PAGE, 2, None, 0):
        fresh_vm.mm.write_va(p - PAGE, b"\x01")


def test_reservation_count_is_reported_outstanding(vm: Vm) -> None:
    before = vm.mm.outstanding()["reserved_mapping_reservations"]
    p = vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    assert vm.mm.outstanding()["reserved_mapping_reservations"] == before + 1
    vm.mm.MmFreeMappingAddress(p, TAG)
    assert vm.mm.outstanding()["reserved_mapping_reservations"] == before


# -- mapping (§7.6, §7.7) -------------------------------------------------------------------------

def mapped_ok(vm: Vm, p: int, mdl: int, reserved_pages: int, cache: MemoryType = MemoryType.WB) -> Mdl:
    """The host's view after a map: every MDL page at reservation page i with PFN[i], RW, NX, kernel,
    the expected memory type; the rest of the reservation and the headers as they were."""
    m = read_mdl(vm.verify, mdl)
    vm.verify.assert_mapped(p, m.page_count * PAGE, pfns=list(m.pfns), writable=True, user=False,
                            executable=False, cache=cache)
    rest = reserved_pages - m.page_count
    assert raw_ptes(vm, p + m.page_count * PAGE, rest) == [0] * rest
    assert headers(vm, p) == [size_pte(reserved_pages), tag_pte(TAG)]
    return m


def unmapped_ok(vm: Vm, p: int, reserved_pages: int) -> None:
    assert raw_ptes(vm, p, reserved_pages) == [0] * reserved_pages
    assert headers(vm, p) == [size_pte(reserved_pages), tag_pte(TAG)]
    vm.verify.assert_unmapped(p, reserved_pages * PAGE)


def test_7_9_05_map_one_page(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(10 * PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED) == p
    m = mapped_ok(vm, p, mdl, 10)
    assert m.mdl_flags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_PAGES_LOCKED) == MDL_MAPPED_TO_SYSTEM_VA | MDL_PAGES_LOCKED
    assert m.mapped_system_va == p
    assert vm.mm.outstanding()["reserved_mapping_mapped_pages"] >= 1
    value = b"resvmap\x5a"
    vm.mm.write_va(p + 0x40, value)
    assert vm.mm.read_va(p + 0x40, len(value)) == value
    assert vm.qemu.xp(m.pfns[0] * PAGE + 0x40, 1) == [int.from_bytes(value, "little")], "the frame holds it"
    vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_06_unmap_clears_ptes_and_flag(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(10 * PAGE, TAG)
    mdl = pages_mdl(vm, 3)
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    mapped_ok(vm, p, mdl, 10)
    vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    unmapped_ok(vm, p, 10)
    m = read_mdl(vm.verify, mdl)
    assert not m.mdl_flags & MDL_MAPPED_TO_SYSTEM_VA
    assert m.mdl_flags & MDL_PAGES_LOCKED
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_06_read_after_unmap_bugchecks_0x50_not_stale_data(fresh_vm: Vm) -> None:
    vm = fresh_vm
    p = vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    vm.mm.write_va(p, b"\xa5" * 8)
    assert vm.mm.read_va(p, 8) == b"\xa5" * 8  # the translation is in the TLB now
    vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, p, 0, None, 0):
        vm.mm.read_va(p, 8)


def test_7_9_07_unaligned_mapping_address_returns_the_reservation_start(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(4 * PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p + 4, TAG, mdl, MM_CACHED) == p
    m = mapped_ok(vm, p, mdl, 4)
    assert m.mapped_system_va == p
    vm.mm.MmUnmapReservedMapping(p + 4, TAG, mdl)
    unmapped_ok(vm, p, 4)
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_08_byte_offset_is_in_the_return_but_not_in_mapped_system_va(vm: Vm) -> None:
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf + 0x123, 0x100)
    vm.mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS)
    p = vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED) == p + 0x123
    m = mapped_ok(vm, p, mdl, 2)
    assert m.pfns[0] == vm.mm.MmGetPhysicalAddress(buf) >> 12
    assert m.mapped_system_va == p
    assert vm.mm.MmGetSystemAddressForMdlSafe(mdl) == p, "the documented asymmetry"
    vm.mm.write_va(buf + 0x123, b"offset!")
    assert vm.mm.read_va(p + 0x123, 7) == b"offset!", "the reserved VA sees the buffer"
    vm.mm.MmUnmapReservedMapping(p + 0x123, TAG, mdl)
    unmapped_ok(vm, p, 2)
    vm.mm.MmUnlockPages(mdl)
    vm.mm.IoFreeMdl(mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)
    vm.mm.ExFreePoolWithTag(buf, TAG)


@pytest.mark.parametrize("n", [1, 5, 16])
def test_7_9_09_full_fits_and_one_more_page_returns_null(vm: Vm, n: int) -> None:
    p = vm.mm.MmAllocateMappingAddress(n * PAGE, TAG)
    full, over = pages_mdl(vm, n), pages_mdl(vm, n + 1)
    flags_before = read_mdl(vm.verify, over).mdl_flags
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, over, MM_CACHED) == 0
    assert raw_ptes(vm, p, n) == [0] * n
    assert read_mdl(vm.verify, over).mdl_flags == flags_before
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, full, MM_CACHED) == p
    mapped_ok(vm, p, full, n)
    vm.mm.MmUnmapReservedMapping(p, TAG, full)
    unmapped_ok(vm, p, n)
    free_pages_mdl(vm, full)
    free_pages_mdl(vm, over)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_10_non_contiguous_pfns_land_in_mdl_order(vm: Vm) -> None:
    """The host shuffles the MDL's PFN array (same frames, so freeing stays correct) so that no two
    neighbours are adjacent frames; page i of the reservation must map PFN[i] whatever the order."""
    n = 6
    mdl = pages_mdl(vm, n)
    m = read_mdl(vm.verify, mdl)
    shuffled = [m.pfns[i] for i in (0, 3, 1, 4, 2, 5)]
    vm.mm.write_va(m.pfn_array, b"".join(pfn.to_bytes(8, "little") for pfn in shuffled))
    reordered = read_mdl(vm.verify, mdl).pfns
    assert list(reordered) == shuffled
    if all(abs(b - a) == 1 for a, b in pairwise(m.pfns)):
        assert all(abs(b - a) != 1 for a, b in pairwise(reordered)), "no neighbours are adjacent"
    p = vm.mm.MmAllocateMappingAddress(n * PAGE, TAG)
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    mapped_ok(vm, p, mdl, n)
    for i, pfn in enumerate(reordered):
        assert vm.mm.MmGetPhysicalAddress(p + i * PAGE + 8) == pfn * PAGE + 8
    vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


@pytest.mark.parametrize(("cache_type", "memory_type", "bits"), [
    (MM_CACHED, MemoryType.WB, 0),
    (MM_NON_CACHED, MemoryType.UC, PTE_PWT | PTE_PCD),
    (MM_WRITE_COMBINED, MemoryType.WC, PTE_PWT),
])
def test_7_9_11_cache_type(vm: Vm, cache_type: int, memory_type: MemoryType, bits: int) -> None:
    p = vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(vm, 2)
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, cache_type)
    mapped_ok(vm, p, mdl, 2, cache=memory_type)
    for pte in raw_ptes(vm, p, 2):
        assert pte & (PTE_PWT | PTE_PCD | PTE_PAT) == bits
    vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    unmapped_ok(vm, p, 2)
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_unknown_cache_type_returns_null(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, 6) == 0
    assert raw_ptes(vm, p, 1) == [0]
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_12_wrong_tag_on_map_bugchecks_0xda_0x104(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(fresh_vm, 1)
    with expect_stop(SYSTEM_PTE_MISUSE, MAP_NOT_OWNER, p, pool_tag(OTHER), stored_tag(TAG)):
        fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, OTHER, mdl, MM_CACHED)


def test_7_9_12_wrong_tag_on_unmap_bugchecks_0xda_0x108(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(fresh_vm, 1)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, UNMAP_NOT_OWNER, p, pool_tag(OTHER), stored_tag(TAG)):
        fresh_vm.mm.MmUnmapReservedMapping(p, OTHER, mdl)


def test_7_9_13_map_on_a_pool_address_bugchecks_0xda_0x104_tag_first(fresh_vm: Vm) -> None:
    """The tag is checked before the size, so a non-reservation reports 0x104 (owner 0), not 0x105."""
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 4 * PAGE, TAG)
    mdl = pages_mdl(fresh_vm, 1)
    with expect_stop(SYSTEM_PTE_MISUSE, MAP_NOT_OWNER, va + 2 * PAGE, pool_tag(TAG), 0):
        fresh_vm.mm.MmMapLockedPagesWithReservedMapping(va + 2 * PAGE, TAG, mdl, MM_CACHED)


def test_7_9_14_free_while_mapped_bugchecks_0xda_0x103(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(7 * PAGE, TAG)
    mdl = pages_mdl(fresh_vm, 2)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, FREE_STILL_MAPPED, pte_va(fresh_vm, p), pool_tag(TAG), 7):
        fresh_vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_15_map_same_mdl_twice_bugchecks_0xc4_0xb2(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(fresh_vm, 1)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    flags = read_mdl(fresh_vm.verify, mdl).mdl_flags
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB2, mdl, flags, MDL_MAPPED_TO_SYSTEM_VA):
        fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)


def test_7_9_15_map_a_second_mdl_into_a_mapped_range_bugchecks_0xda_0x107(fresh_vm: Vm) -> None:
    vm = fresh_vm
    p = vm.mm.MmAllocateMappingAddress(4 * PAGE, TAG)
    first, second = pages_mdl(vm, 1), pages_mdl(vm, 3)
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, first, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, MAP_NOT_EMPTY, p, pte_va(vm, p), pte_va(vm, p + 2 * PAGE)):
        vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, second, MM_CACHED)


def test_map_of_an_unlocked_mdl_bugchecks_0xc4_0xb3(fresh_vm: Vm) -> None:
    buf = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = fresh_vm.mm.IoAllocateMdl(buf, PAGE)
    p = fresh_vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    flags = read_mdl(fresh_vm.verify, mdl).mdl_flags
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB3, mdl, flags, MDL_PAGES_LOCKED | MDL_PARTIAL):
        fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)


def test_map_of_a_nonpaged_pool_mdl_bugchecks_0xc4_0xb2(fresh_vm: Vm) -> None:
    buf = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = fresh_vm.mm.IoAllocateMdl(buf, PAGE)
    fresh_vm.mm.MmBuildMdlForNonPagedPool(mdl)
    p = fresh_vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    flags = read_mdl(fresh_vm.verify, mdl).mdl_flags
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB2, mdl, flags, MDL_SOURCE_IS_NONPAGED_POOL):
        fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)


def test_unmap_more_pages_than_reserved_bugchecks_0xda_0x10a(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    small, big = pages_mdl(fresh_vm, 2), pages_mdl(fresh_vm, 3)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, small, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, UNMAP_TOO_MANY, p, 2, 3):
        fresh_vm.mm.MmUnmapReservedMapping(p, TAG, big)


def test_unmap_of_an_unmapped_portion_bugchecks_0xda_0x10b(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(4 * PAGE, TAG)
    small, big = pages_mdl(fresh_vm, 1), pages_mdl(fresh_vm, 3)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, small, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, UNMAP_NOT_MAPPED, p, pool_tag(TAG), 3):
        fresh_vm.mm.MmUnmapReservedMapping(p, TAG, big)


def test_unmap_of_less_than_mapped_bugchecks_0xda_0x10c(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(4 * PAGE, TAG)
    big, small = pages_mdl(fresh_vm, 3), pages_mdl(fresh_vm, 1)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, big, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, UNMAP_NOT_ENTIRE, p, pool_tag(TAG), 1):
        fresh_vm.mm.MmUnmapReservedMapping(p, TAG, small)


def test_unmap_with_an_mdl_never_mapped_bugchecks_0xda_0x06(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mapped, other = pages_mdl(fresh_vm, 1), pages_mdl(fresh_vm, 1)
    fresh_vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mapped, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, 0x06, other, p, 1):
        fresh_vm.mm.MmUnmapReservedMapping(p, TAG, other)


@pytest.mark.parametrize("call", ["map", "unmap", "free"])
def test_a_header_with_an_invalid_size_bugchecks_0x105_0x109_0x102(fresh_vm: Vm, call: str) -> None:
    """The size PTE is forged through the test hook (no DDI misuse can produce a matching tag with a
    bad size): each call reports its 'apparently empty / invalid range' code with P4 a return address."""
    vm = fresh_vm
    p = vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    vm.mm.test_hook_set_pte_no_flush(p - 2 * PAGE, 2 << 28)
    code = {"map": MAP_INVALID_RANGE, "unmap": UNMAP_EMPTY, "free": FREE_EMPTY}[call]
    info = vm.mm.kernel_info()
    with expect_stop(SYSTEM_PTE_MISUSE, code, p, pool_tag(TAG)) as stop:
        if call == "map":
            vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
        elif call == "unmap":
            vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
        else:
            vm.mm.MmFreeMappingAddress(p, TAG)
    assert info.text_start <= stop.record.parameters[3] < info.text_end


def test_7_9_18_map_and_unmap_at_dispatch_level(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(3 * PAGE, TAG)
    mdl = pages_mdl(vm, 3)
    with vm.mm.at_irql(DISPATCH_LEVEL):
        assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED) == p
        mapped_ok(vm, p, mdl, 3)
        vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    unmapped_ok(vm, p, 3)
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


@pytest.mark.parametrize("call", ["map", "unmap"])
def test_map_or_unmap_above_dispatch_bugchecks_0xc4_0xe5(fresh_vm: Vm, call: str) -> None:
    vm = fresh_vm
    p = vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    if call == "unmap":
        vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, HIGH_LEVEL, 0, 0):
        if call == "map":
            vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
        else:
            vm.mm.MmUnmapReservedMapping(p, TAG, mdl)


def test_7_9_19_forward_progress_with_system_ptes_exhausted(fresh_vm: Vm) -> None:
    vm = fresh_vm
    n = 4
    p = vm.mm.MmAllocateMappingAddress(n * PAGE, TAG)
    mdl = pages_mdl(vm, n)
    filler = []
    pages = 4096
    while pages:
        q = vm.mm.MmAllocateMappingAddress(pages * PAGE, TAG)
        if q:
            filler.append(q)
        else:
            pages //= 2
    assert vm.mm.MmAllocateMappingAddress(1, TAG) == 0, "no system PTE is left"
    pfns = list(read_mdl(vm.verify, mdl).pfns)
    for i in range(1000):
        assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED) == p, f"map {i} failed"
        if i % 250 == 0:
            vm.verify.assert_mapped(p, n * PAGE, pfns=pfns)
        vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    unmapped_ok(vm, p, n)
    for q in filler:
        vm.mm.MmFreeMappingAddress(q, TAG)
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_7_9_20_and_4_2_is_address_valid_and_physical_address_follow_the_mapping(vm: Vm) -> None:
    p = vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    mdl = pages_mdl(vm, 1)
    assert vm.mm.MmIsAddressValid(p) is False
    assert vm.mm.MmIsAddressValid(p - PAGE) is False, "a header page is not valid either"
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    pfn = read_mdl(vm.verify, mdl).pfns[0]
    assert vm.mm.MmIsAddressValid(p) is True
    assert vm.mm.MmIsAddressValid(p + PAGE) is False
    assert vm.mm.MmGetPhysicalAddress(p + 0x10) == (pfn << 12) + 0x10 == vm.qemu.gva2gpa(p + 0x10)
    vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
    assert vm.mm.MmIsAddressValid(p) is False
    assert vm.mm.MmGetPhysicalAddress(p + 0x10) == 0
    free_pages_mdl(vm, mdl)
    vm.mm.MmFreeMappingAddress(p, TAG)


def test_partial_mdl_maps_and_is_flagged_partial_has_been_mapped(vm: Vm) -> None:
    """A partial MDL (IoBuildPartialMdl) is mappable without MDL_PAGES_LOCKED of its own (§7.6 step 6);
    mapping sets MDL_PARTIAL_HAS_BEEN_MAPPED and unmapping clears it again (step 10, §7.7 step 7)."""
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 3 * PAGE, TAG)
    source = vm.mm.IoAllocateMdl(buf, 3 * PAGE)
    vm.mm.MmProbeAndLockPages(source, KERNEL_MODE, IO_WRITE_ACCESS)
    target = vm.mm.IoAllocateMdl(buf + PAGE + 0x10, PAGE)
    vm.mm.IoBuildPartialMdl(source, target, buf + PAGE + 0x10, PAGE)
    partial = read_mdl(vm.verify, target)
    assert partial.mdl_flags & MDL_PARTIAL and partial.page_count == 2
    assert list(partial.pfns) == list(read_mdl(vm.verify, source).pfns[1:3])
    p = vm.mm.MmAllocateMappingAddress(2 * PAGE, TAG)
    assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, target, MM_CACHED) == p + 0x10
    m = mapped_ok(vm, p, target, 2)
    assert m.mdl_flags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED) == (
        MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED)
    vm.mm.MmUnmapReservedMapping(p, TAG, target)
    unmapped_ok(vm, p, 2)
    assert not read_mdl(vm.verify, target).mdl_flags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED)
    vm.mm.MmFreeMappingAddress(p, TAG)
    vm.mm.IoFreeMdl(target)
    vm.mm.MmUnlockPages(source)
    vm.mm.IoFreeMdl(source)
    vm.mm.ExFreePoolWithTag(buf, TAG)


def test_map_of_a_page_that_is_not_locked_bugchecks_0xc4_0x85(fresh_vm: Vm) -> None:
    """An MDL that claims MDL_PAGES_LOCKED (flag and PFN written by the host) over a pool page nobody
    locked: the page check the MDL family's mappings make applies here too."""
    vm = fresh_vm
    buf = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE, TAG)
    mdl = vm.mm.IoAllocateMdl(buf, PAGE)
    pfn = vm.mm.MmGetPhysicalAddress(buf) >> 12
    m = read_mdl(vm.verify, mdl)
    vm.mm.write_va(mdl + 0x0A, (m.mdl_flags | MDL_PAGES_LOCKED).to_bytes(2, "little"))
    vm.mm.write_va(m.pfn_array, pfn.to_bytes(8, "little"))
    p = vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x85, mdl, 1, pfn):
        vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
