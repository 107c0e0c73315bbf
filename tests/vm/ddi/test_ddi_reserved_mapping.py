"""Reserved mappings (ddi-spec §7.9, §4 item 2): header PTEs, map/unmap, every NULL and bugcheck.

The host reads every PTE itself from guest RAM (`raw_ptes`, `vm.verify`); the agent's answers are only
the DDIs' return values.
"""

from __future__ import annotations

import pytest

from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL
from harness.ddi.reserved_mapping import (
    FREE_NOT_OWNER,
    FREE_STILL_MAPPED,
    MM_MAPPING_ADDRESS_DIVISIBLE,
    SYSTEM_PTE_MISUSE,
    ZERO_MAPPINGS,
    size_pte,
    stored_tag,
    tag_pte,
)
from harness.guest import pool_tag
from harness.testing import expect_stop
from harness.vm import Vm
from _reserved import PAGE, in_system_pte_region, raw_ptes

TAG = "MRmK"  # 0x4B6D524D, the tag of the spec's examples (odd: Tag | 1 == Tag)
OTHER = "Othr"
DRIVER_VERIFIER_DETECTED_VIOLATION = 0xC4
VERIFIER_API_WRONG_IRQL = 0xE5


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
