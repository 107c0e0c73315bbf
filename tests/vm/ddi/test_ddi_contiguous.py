"""Physically contiguous memory (ddi-spec §10).

The host proves each allocation from the page tables: consecutive PFNs inside [lowest, highest],
not crossing the boundary multiple, RW, NX, kernel-only, with the caching type's PAT entry; and
after every free the PTEs are gone (host walk and gva2gpa) and the frames are free again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.ddi.contiguous import MM_ANY_NODE_OK, NO_LIMIT
from harness.ddi.irql import DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.nt import (
    BAD_POOL_CALLER,
    CACHING_MEMORY_TYPE,
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    MEMORY_TYPE_PTE_BITS,
    MM_CACHED,
    MM_MAXIMUM_CACHE_TYPE,
    MM_NON_CACHED,
    VERIFIER_API_WRONG_IRQL,
)
from harness.guest import NON_PAGED_POOL_NX
from harness.oracle.paging import PAT_GUEST, PTE_PAT_4K, PTE_PCD, PTE_PWT, MemoryType
from harness.testing import expect_stop
from harness.vm import Vm

POOL_BAD_CONTIGUOUS_FREE = 0x60
VERIFIER_RULE_IRQL_MM_DISPATCH = 0x0002001A
EFER_NXE = 1 << 11
SIXTEEN_MIB = 0xFF_FFFF
TAG = "Cont"



def pages_of(size: int) -> int:
    return (size + 0xFFF) >> 12


def assert_contiguous(vm: Vm, va: int, size: int, *, lowest: int = 0, highest: int = NO_LIMIT,
                      boundary: int = 0, cache: MemoryType = MemoryType.WB) -> int:
    """The host's view of an allocation; returns its first PFN."""
    assert va and va & 0xFFF == 0, f"contiguous memory must be page aligned, got {va:#x}"
    pages = pages_of(size)
    first = vm.verify.walk(va).pa
    assert first is not None
    first_pfn = first >> 12
    check_cache = cache if vm.mm.kernel_info().pat == PAT_GUEST else None
    vm.verify.assert_mapped(va, pages * 0x1000, pfns=[first_pfn + k for k in range(pages)], writable=True,
                            user=False, executable=not vm.mm.kernel_info().efer & EFER_NXE, cache=check_cache)
    for _, entry in vm.verify.leaf_entries(va, pages * 0x1000):
        assert entry & (PTE_PWT | PTE_PCD | PTE_PAT_4K) == MEMORY_TYPE_PTE_BITS[cache], f"leaf {entry:#x}: §2.5 bits"
    last = first + pages * 0x1000 - 1
    assert lowest <= first and last <= highest, f"[{first:#x}, {last:#x}] outside [{lowest:#x}, {highest:#x}]"
    if boundary:
        assert first // boundary == last // boundary, f"[{first:#x}, {last:#x}] crosses a {boundary:#x} multiple"
    return first_pfn


@contextmanager
def contiguous(vm: Vm, size: int, lowest: int = 0, highest: int = NO_LIMIT, boundary: int = 0,
               cache_type: int = MM_CACHED) -> Iterator[int]:
    """MmAllocateContiguousMemorySpecifyCache, then MmFreeContiguousMemory with the host proving the
    range unmapped."""
    va = vm.mm.MmAllocateContiguousMemorySpecifyCache(size, lowest, highest, boundary, cache_type)
    assert va, f"MmAllocateContiguousMemorySpecifyCache({size:#x}, {lowest:#x}, {highest:#x}, {boundary:#x}) failed"
    yield va
    if vm.alive:
        vm.mm.MmFreeContiguousMemory(va)
        vm.verify.assert_unmapped(va, pages_of(size) * 0x1000)


# --------------------------------------------------------------------------------------------------
# §10 Tests


def test_10_01_three_pages_below_16_mib_are_consecutive_and_page_aligned(vm: Vm) -> None:
    va = vm.mm.MmAllocateContiguousMemory(0x3000, SIXTEEN_MIB)
    try:
        first_pfn = assert_contiguous(vm, va, 0x3000, highest=SIXTEEN_MIB)
        assert first_pfn + 2 < 0x1000
        assert vm.mm.outstanding()["contiguous_pages"] >= 3
    finally:
        vm.mm.MmFreeContiguousMemory(va)
    vm.verify.assert_unmapped(va, 0x3000)


@pytest.mark.parametrize(("size", "boundary"), [(0x2000, 0x2000), (0x3000, 0x4000), (0x5000, 0x10000),
                                                (0x1000, 0x1000)])
def test_10_02_boundary_multiple_is_never_crossed(vm: Vm, size: int, boundary: int) -> None:
    # Several at once, so the allocator has to skip runs that would cross.
    vas = []
    try:
        for _ in range(4):
            va = vm.mm.MmAllocateContiguousMemorySpecifyCache(size, 0, NO_LIMIT, boundary, MM_CACHED)
            vas.append(va)
            first_pfn = assert_contiguous(vm, va, size, boundary=boundary)
            if size == boundary:
                assert first_pfn % (boundary >> 12) == 0
    finally:
        for va in vas:
            if va:
                vm.mm.MmFreeContiguousMemory(va)
    for va in vas:
        vm.verify.assert_unmapped(va, pages_of(size) * 0x1000)


def test_10_03_lowest_and_highest_bound_the_frames(vm: Vm) -> None:
    with contiguous(vm, 0x3000, 0x80_0000, SIXTEEN_MIB) as va:
        first_pfn = assert_contiguous(vm, va, 0x3000, lowest=0x80_0000, highest=SIXTEEN_MIB)
        assert first_pfn >= 0x800 and first_pfn + 2 <= 0xFFF


def test_10_03_a_window_exactly_the_size_gives_exactly_those_frames(vm: Vm) -> None:
    with contiguous(vm, 0x2000, 0x80_0000, SIXTEEN_MIB) as probe:  # find two free frames, then free them
        low = vm.verify.walk(probe).pa
        assert low is not None
    va = vm.mm.MmAllocateContiguousMemorySpecifyCache(0x2000, low, low + 0x1FFF, 0, MM_CACHED)
    try:
        assert assert_contiguous(vm, va, 0x2000, lowest=low, highest=low + 0x1FFF) == low >> 12
    finally:
        vm.mm.MmFreeContiguousMemory(va)


@pytest.mark.parametrize(("size", "lowest", "highest", "boundary", "cache_type"), [
    pytest.param(0x1000, 0x100_0000, 0xFF_FFFF, 0, MM_CACHED, id="lowest-above-highest"),
    pytest.param(0, 0, NO_LIMIT, 0, MM_CACHED, id="zero-bytes"),
    pytest.param(1 << 40, 0, NO_LIMIT, 0, MM_CACHED, id="huge"),
    pytest.param(0x1000, 0, NO_LIMIT, 0x3000, MM_CACHED, id="boundary-not-power-of-two"),
    pytest.param(0x1000, 0, NO_LIMIT, 0x800, MM_CACHED, id="boundary-below-a-page"),
    pytest.param(0x3000, 0, NO_LIMIT, 0x2000, MM_CACHED, id="larger-than-boundary"),
    pytest.param(0x1000, 0, 0xF_FFFF, 0, MM_CACHED, id="below-1-mib-is-firmware"),
    pytest.param(0x2000, 0x80_0000, 0x80_0FFF, 0, MM_CACHED, id="window-smaller-than-size"),
    pytest.param(0x1000, 0, NO_LIMIT, 0, MM_MAXIMUM_CACHE_TYPE, id="cache-type-6"),
    pytest.param(0x1000, 0, NO_LIMIT, 0, 0xFFFF_FFFF, id="mm-not-mapped"),
])
def test_10_04_unsatisfiable_requests_return_null(vm: Vm, size: int, lowest: int, highest: int, boundary: int,
                                                  cache_type: int) -> None:
    before, free = vm.mm.outstanding(), vm.mm.frame_stats().free
    assert vm.mm.MmAllocateContiguousMemorySpecifyCache(size, lowest, highest, boundary, cache_type) == 0
    assert vm.mm.outstanding() == before
    assert vm.mm.frame_stats().free == free


def test_10_04_more_than_ram_returns_null(vm: Vm) -> None:
    total = vm.mm.frame_stats().total
    assert vm.mm.MmAllocateContiguousMemory((total + 1) << 12, NO_LIMIT) == 0


@pytest.mark.parametrize("cache_type", sorted(CACHING_MEMORY_TYPE))
def test_10_05_caching_type_sets_the_pat_bits_on_every_pte(vm: Vm, cache_type: int) -> None:
    if vm.mm.kernel_info().pat != PAT_GUEST:
        pytest.skip(f"{vm.name}: no PAT, so the caching type cannot be checked against IA32_PAT")
    with contiguous(vm, 0x4000, cache_type=cache_type) as va:
        assert_contiguous(vm, va, 0x4000, cache=CACHING_MEMORY_TYPE[cache_type])
        # The memory works through the new mapping: what the agent writes, the host reads back.
        pattern = bytes(range(256)) * 2
        vm.mm.write_va(va + 0x3E00, pattern)
        assert vm.verify.host_read(va + 0x3E00, len(pattern)) == pattern


@pytest.mark.parametrize("offset", [0x10, 0x1000, 0xFFF])
def test_10_06_free_inside_the_allocation_bugchecks_0xc2_0x60(fresh_vm: Vm, offset: int) -> None:
    va = fresh_vm.mm.MmAllocateContiguousMemorySpecifyCache(0x2000, 0, NO_LIMIT, 0, MM_CACHED)
    with expect_stop(BAD_POOL_CALLER, POOL_BAD_CONTIGUOUS_FREE, va + offset, 0, 0):
        fresh_vm.mm.MmFreeContiguousMemory(va + offset)


def test_10_06_double_free_bugchecks_0xc2_0x60(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmAllocateContiguousMemory(0x1000, NO_LIMIT)
    fresh_vm.mm.MmFreeContiguousMemory(va)
    with expect_stop(BAD_POOL_CALLER, POOL_BAD_CONTIGUOUS_FREE, va, 0, 0):
        fresh_vm.mm.MmFreeContiguousMemory(va)


def test_10_06_free_of_pool_memory_bugchecks_0xc2_0x60(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x2000, TAG)
    with expect_stop(BAD_POOL_CALLER, POOL_BAD_CONTIGUOUS_FREE, va, 0, 0):
        fresh_vm.mm.MmFreeContiguousMemory(va)


def test_10_06_free_of_null_bugchecks_0xc2_0x60(fresh_vm: Vm) -> None:
    with expect_stop(BAD_POOL_CALLER, POOL_BAD_CONTIGUOUS_FREE, 0, 0, 0):
        fresh_vm.mm.MmFreeContiguousMemory(0)


def test_10_07_free_unmaps_and_the_frames_are_free_again(vm: Vm) -> None:
    free_before = vm.mm.frame_stats().free
    va = vm.mm.MmAllocateContiguousMemorySpecifyCache(0x5000, 0, NO_LIMIT, 0, MM_NON_CACHED)
    first_pfn = assert_contiguous(vm, va, 0x5000, cache=MemoryType.UC)
    assert vm.mm.frame_stats().free == free_before - 5
    vm.mm.MmFreeContiguousMemorySpecifyCache(va, 0x5000, MM_NON_CACHED)
    vm.verify.assert_unmapped(va, 0x5000)
    assert vm.mm.frame_stats().free == free_before
    # The very frames can be had again.
    low = first_pfn << 12
    again = vm.mm.MmAllocateContiguousMemorySpecifyCache(0x5000, low, low + 0x4FFF, 0, MM_CACHED)
    try:
        assert assert_contiguous(vm, again, 0x5000, lowest=low, highest=low + 0x4FFF) == first_pfn
    finally:
        vm.mm.MmFreeContiguousMemory(again)
    vm.verify.assert_unmapped(again, 0x5000)


def test_10_07_frames_of_a_freed_run_are_handed_out_again_once_each(vm: Vm) -> None:
    """Single frames (here: pool pages) come from the freed ones first, then are carved from frames
    unused since boot; a run the contiguous allocator took from among those must come back, never twice."""
    run_pages, blocks = 8, 48
    va = vm.mm.MmAllocateContiguousMemorySpecifyCache(run_pages * 0x1000, 0, NO_LIMIT, 0, MM_CACHED)
    run = set(range(first := assert_contiguous(vm, va, run_pages * 0x1000), first + run_pages))
    vm.mm.MmFreeContiguousMemory(va)
    allocations: list[int] = []
    try:
        for _ in range(blocks):
            allocations.append(vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x1000, TAG))
            assert allocations[-1], "ExAllocatePoolWithTag(0x1000) failed"
        pages = {page for block in allocations for page in (block >> 12, (block + 0xFFF) >> 12)}
        pfn_of = {page: vm.verify.walk(page << 12).pa for page in pages}
        assert None not in pfn_of.values(), f"unmapped pool pages: {pfn_of}"
        pfns = [pa >> 12 for pa in pfn_of.values() if pa is not None]
        assert len(set(pfns)) == len(pages), f"one frame behind two pool pages: {sorted(pfns)}"
        assert run & set(pfns), f"none of the freed run {sorted(run)} was handed out before fresh frames"
    finally:
        for block in filter(None, allocations):
            vm.mm.ExFreePoolWithTag(block, TAG)


@pytest.mark.parametrize("size", [0x1000, 0x3000, 0x10000])
def test_10_08_get_physical_address_is_linear_over_the_allocation(vm: Vm, size: int) -> None:
    with contiguous(vm, size, highest=SIXTEEN_MIB) as va:
        pa0 = vm.mm.MmGetPhysicalAddress(va)
        assert pa0 == vm.verify.walk(va).pa
        for k in range(pages_of(size)):
            for offset in (0, 0x7F8):
                assert vm.mm.MmGetPhysicalAddress(va + k * 0x1000 + offset) == pa0 + k * 0x1000 + offset
        assert vm.qemu.gva2gpa(va + size - 1) == pa0 + size - 1


@pytest.mark.parametrize("node", [MM_ANY_NODE_OK, 0])
def test_10_node_variant_allocates_on_the_one_node(vm: Vm, node: int) -> None:
    va = vm.mm.MmAllocateContiguousMemorySpecifyCacheNode(0x3000, 0, SIXTEEN_MIB, 0x4000, MM_CACHED, node)
    try:
        assert_contiguous(vm, va, 0x3000, highest=SIXTEEN_MIB, boundary=0x4000)
    finally:
        vm.mm.MmFreeContiguousMemory(va)
    vm.verify.assert_unmapped(va, 0x3000)


@pytest.mark.parametrize("node", [1, 63, 0x7FFF_FFFF])
def test_10_node_variant_on_a_missing_node_returns_null(vm: Vm, node: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.MmAllocateContiguousMemorySpecifyCacheNode(0x1000, 0, NO_LIMIT, 0, MM_CACHED, node) == 0
    assert vm.mm.outstanding() == before


# --------------------------------------------------------------------------------------------------
# §10 IRQL, §5 round trip


def test_10_allocate_and_free_at_dispatch_level(vm: Vm) -> None:
    with vm.mm.at_irql(DISPATCH_LEVEL):
        va = vm.mm.MmAllocateContiguousMemory(0x2000, NO_LIMIT)
        assert va
        vm.mm.MmFreeContiguousMemory(va)
    vm.verify.assert_unmapped(va, 0x2000)


def test_10_allocate_above_dispatch_bugchecks_0xc4_0xe5(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, HIGH_LEVEL, 0, 0):
        fresh_vm.mm.MmAllocateContiguousMemory(0x1000, NO_LIMIT)


def test_10_free_above_dispatch_bugchecks_0xc4_irql_mm_dispatch(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.MmAllocateContiguousMemory(0x1000, NO_LIMIT)
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_RULE_IRQL_MM_DISPATCH, None, HIGH_LEVEL, 0) as stop:
        fresh_vm.mm.MmFreeContiguousMemory(va)
    assert stop.record.parameters[1], "P2 points to the rule's text"


def test_5_round_trip_for_contiguous_memory(vm: Vm) -> None:
    with contiguous(vm, 0x4000) as va:
        for offset in (0, 0x10, 0x1FFF, 0x3FFF):
            pa = vm.mm.MmGetPhysicalAddress(va + offset)
            assert pa == vm.qemu.gva2gpa(va + offset)
            assert vm.mm.MmGetVirtualForPhysical(pa) == va + offset
