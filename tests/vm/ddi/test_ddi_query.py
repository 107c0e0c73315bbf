"""MmGetPhysicalAddress (ddi-spec §3) and MmIsAddressValid (§4): the Tests items that
tests/vm/test_translation.py does not cover, each answer compared with the host's own walk.

Covered with the DDIs they need: §3 item 6 by test_3_06_* in test_ddi_iospace.py (MmMapIoSpace), §4 item 2 by
test_7_9_20_and_4_2_* in test_ddi_reserved_mapping.py (reserved mappings).
"""

from __future__ import annotations

import pytest

from harness.ddi.base import PAGE_SIZE
from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.nt import DRIVER_VERIFIER_DETECTED_VIOLATION
from harness.ddi.pool import NON_PAGED_POOL, NON_PAGED_POOL_NX, POOL_FLAG_NON_PAGED
from harness.testing import expect_stop
from harness.vm import Vm

SYSTEM_PTE_BASE = 0xFFFF_F980_0000_0000
SYSTEM_PTE_COUNT = 22000
PFN_DATABASE_BASE = 0xFFFF_FA80_0000_0000
LOADER_MAPPINGS_BASE = 0xFFFF_F800_0000_0000
HAL_BASE = 0xFFFF_FFFF_FFC0_0000
MASK64 = (1 << 64) - 1


def host_pa(vm: Vm, va: int) -> int:
    """The host walk's PA of va, or 0 (MmGetPhysicalAddress's answer for no translation)."""
    walk = vm.verify.walk(va)
    return walk.pa if walk.pa is not None else 0


def assert_translates_as_host(vm: Vm, va: int) -> None:
    walk = vm.verify.walk(va)
    assert walk.pa is not None, f"{va:#x} is not mapped:\n{walk.describe()}"
    assert vm.mm.MmGetPhysicalAddress(va) == walk.pa, f"{va:#x}:\n{walk.describe()}"
    assert vm.mm.MmIsAddressValid(va) is True, f"{va:#x}"


@pytest.mark.parametrize("pages", [1, 3])
@pytest.mark.parametrize("pool_type", [NON_PAGED_POOL_NX, NON_PAGED_POOL])
def test_3_01_pool_offsets_translate_as_the_host_walks_them(vm: Vm, pages: int, pool_type: int) -> None:
    va = vm.mm.ExAllocatePoolWithTag(pool_type, pages * PAGE_SIZE, "Qry1")
    assert va != 0
    try:
        for offset in (0, 1, 0xFFF, 0x1010, pages * PAGE_SIZE - 1):
            if offset < pages * PAGE_SIZE:
                assert_translates_as_host(vm, va + offset)
    finally:
        vm.mm.ExFreePoolWithTag(va, "Qry1")


def test_3_01_small_block_offsets_translate_as_the_host_walks_them(vm: Vm) -> None:
    va = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, 0x90, "Qry2")
    try:
        for offset in (0, 1, 0x4F, 0x8F):
            assert_translates_as_host(vm, va + offset)
        assert vm.mm.MmGetPhysicalAddress(va + 0x8F) - vm.mm.MmGetPhysicalAddress(va) == 0x8F
    finally:
        vm.mm.ExFreePool(va)


def test_3_02_large_leaf_offsets_translate_as_the_host_walks_them(vm: Vm) -> None:
    """The physmap's leaves are 1 GiB (2 MiB without pdpe1gb): every offset inside one leaf, up to
    0x1FFFFF or 0x3FFFFFFF, comes from the leaf's base plus the offset."""
    info = vm.mm.kernel_info()
    first = vm.verify.walk(info.physmap_base)
    assert first.pa is not None and first.page_size == info.physmap_leaf in (0x20_0000, 0x4000_0000)
    leaf = info.physmap_leaf
    offsets = [0, 1, 0xFFF, 0x1000, 0x1F_FFFF, 0x20_0000, leaf // 2 + 0x123, leaf - 8, leaf - 1]
    for offset in offsets:
        walk = vm.verify.walk(info.physmap_base + offset)
        assert walk.page_size == leaf and walk.pa == first.pa + offset, "one leaf spans the offsets"
        assert vm.mm.MmGetPhysicalAddress(info.physmap_base + offset) == walk.pa, f"offset {offset:#x}"
        assert vm.mm.MmIsAddressValid(info.physmap_base + offset) is True, f"offset {offset:#x}"


def test_3_03_freed_and_never_reserved_vas_give_zero(vm: Vm) -> None:
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * PAGE_SIZE, "Qry3")
    assert vm.mm.MmGetPhysicalAddress(va + 0x1234) == host_pa(vm, va + 0x1234) != 0
    vm.mm.ExFreePoolWithTag(va, "Qry3")
    for gone in (va, va + 0x1234, va + 2 * PAGE_SIZE - 1):
        assert vm.verify.walk(gone).pa is None
        assert vm.mm.MmGetPhysicalAddress(gone) == 0
        assert vm.mm.MmIsAddressValid(gone) is False
    for k in (SYSTEM_PTE_COUNT - 1, 0x10_0000 - 1):  # system PTEs never handed out
        never = SYSTEM_PTE_BASE + k * PAGE_SIZE + 0x10
        assert vm.verify.walk(never).pa is None
        assert vm.mm.MmGetPhysicalAddress(never) == 0
        assert vm.mm.MmIsAddressValid(never) is False
    assert vm.mm.KeGetCurrentIrql() == 0, "the system runs on"


@pytest.mark.parametrize("va", [0x0000_8000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000,
                                0xFF7F_FFFF_FFFF_F000, 0xFFFF_7FFF_FFFF_FFFF])
def test_3_04_non_canonical_vas_give_zero_without_a_fault(vm: Vm, va: int) -> None:
    width = 48 if vm.config.paging_levels == 4 else 57
    if va >> (width - 1) in (0, (1 << (65 - width)) - 1):
        pytest.skip(f"{va:#x} is canonical with {vm.config.paging_levels}-level paging")
    assert vm.mm.MmGetPhysicalAddress(va) == 0
    assert vm.mm.MmIsAddressValid(va) is False
    assert vm.mm.KeGetCurrentIrql() == 0, "no #GP: the system runs on"


@pytest.mark.parametrize("irql", [APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL])
def test_3_05_mmgetphysicaladdress_works_at_raised_irql(vm: Vm, irql: int) -> None:
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x40, "Qry5")
    info = vm.mm.kernel_info()
    expected = {v: host_pa(vm, v) for v in (va, va + 0x3F, info.text_start, info.physmap_base + 0x5008)}
    try:
        with vm.mm.at_irql(irql):
            for v, pa in expected.items():
                assert vm.mm.MmGetPhysicalAddress(v) == pa != 0, f"{v:#x} at IRQL {irql}"
            assert vm.mm.MmGetPhysicalAddress(SYSTEM_PTE_BASE + 0x10_0000 * PAGE_SIZE - PAGE_SIZE) == 0
            assert vm.mm.KeGetCurrentIrql() == irql
    finally:
        vm.mm.ExFreePoolWithTag(va, "Qry5")


@pytest.mark.parametrize("irql", [APC_LEVEL, DISPATCH_LEVEL])
def test_4_mmisaddressvalid_works_up_to_dispatch(vm: Vm, irql: int) -> None:
    info = vm.mm.kernel_info()
    with vm.mm.at_irql(irql):
        assert vm.mm.MmIsAddressValid(info.text_start) is True
        assert vm.mm.MmIsAddressValid(SYSTEM_PTE_BASE + 0x10_0000 * PAGE_SIZE - PAGE_SIZE) is False


def test_4_mmisaddressvalid_above_dispatch_bugchecks_0xc4_0xe5(fresh_vm: Vm) -> None:
    text = fresh_vm.mm.kernel_info().text_start
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xE5, HIGH_LEVEL, 0, 0):
        fresh_vm.mm.MmIsAddressValid(text)


@pytest.mark.parametrize("size", [0x40, 0x1000, 0x5000])
def test_4_01_pool_vas_are_valid(vm: Vm, size: int) -> None:
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "Qry6")
    try:
        for offset in range(0, size, PAGE_SIZE):
            assert vm.mm.MmIsAddressValid(va + offset) is True
        assert vm.mm.MmIsAddressValid(va + size - 1) is True
    finally:
        vm.mm.ExFreePoolWithTag(va, "Qry6")


def test_4_03_vas_inside_a_large_leaf_are_valid(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    leaf = info.physmap_leaf
    for offset in (o for o in (0x8, 0x1F_F000, leaf - PAGE_SIZE, leaf + 0x1_0008) if o < info.physmap_size):
        walk = vm.verify.walk(info.physmap_base + offset)
        assert walk.page_size == leaf, f"{offset:#x} lies in a {leaf:#x} leaf"
        assert vm.mm.MmIsAddressValid(info.physmap_base + offset) is True


def boundaries(vm: Vm) -> list[int]:
    """Where the address space changes what it holds: region edges, the canonical hole, the top."""
    info = vm.mm.kernel_info()
    top_user = (1 << (47 if info.levels == 4 else 56))
    return [0, top_user, (MASK64 << (47 if info.levels == 4 else 56)) & MASK64,
            info.physmap_base, info.physmap_base + info.physmap_size, info.pte_base, LOADER_MAPPINGS_BASE,
            info.text_start, info.text_end, info.rodata_end, info.data_end, info.stack_base, info.stack_top,
            SYSTEM_PTE_BASE, SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE_SIZE, PFN_DATABASE_BASE, info.pfn_db_base,
            info.pool_base, info.pool_end, HAL_BASE, HAL_BASE + PAGE_SIZE, MASK64 + 1]


def test_4_04_sweep_around_region_boundaries_matches_the_host_walk_bit_for_bit(vm: Vm) -> None:
    vas = sorted({(b + delta) & MASK64 for b in boundaries(vm)
                  for delta in (-2 * PAGE_SIZE, -PAGE_SIZE, -8, -1, 0, 1, 0x7FF, PAGE_SIZE, 2 * PAGE_SIZE + 0x10)})
    result = vm.verify.translate_many(vas)
    host = {va: (bool(ok), int(pa) if ok else 0)
            for va, ok, pa in zip(vas, result.ok.tolist(), result.pa.tolist(), strict=True)}
    agent = {va: (vm.mm.MmIsAddressValid(va), vm.mm.MmGetPhysicalAddress(va)) for va in vas}
    wrong = {hex(va): (agent[va], host[va]) for va in vas if agent[va] != host[va]}
    assert not wrong, f"agent (valid, pa) vs host walk: {wrong}"
    assert sum(valid for valid, _ in host.values()) >= 20, "the sweep meets mapped pages"
    assert sum(not valid for valid, _ in host.values()) >= 20, "the sweep meets unmapped pages"
    assert vm.verify.cross_check_with_qemu(vas) == len(vas)
