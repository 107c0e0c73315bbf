"""The system-PTE allocator (ddi-spec §2.3, include/syspte.h) driven through the reserved-mapping DDIs:
fragmentation and coalescing, exhaustion, and its own release checks (0xDA 0x303-0x306).

Every reservation's placement and headers are read by the host from guest RAM; the allocator's counts
come from `outstanding` and are compared against what the host saw.
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from _reserved import (
    PAGE,
    SYSTEM_PTE_BASE,
    SYSTEM_PTE_COUNT,
    free_pages_mdl,
    in_system_pte_region,
    pages_mdl,
    raw_ptes,
)

from harness.ddi.mdl import read_mdl
from harness.ddi.nt import MM_CACHED, SYSTEM_PTE_MISUSE
from harness.ddi.reserved_mapping import size_pte, tag_pte
from harness.errors import AgentError
from harness.oracle.walker import StopReason
from harness.testing import expect_stop
from harness.vm import Vm

TAG = "SPte"
HEADER = 2
RELEASE_MID_ALLOCATION = 0x304
RELEASE_WRONG_COUNT = 0x305
RELEASE_ALREADY_FREE = 0x306
TABLE_SPAN = 512 * PAGE  # the VA one page table of the region maps


def empty_region(vm: Vm) -> None:
    counts = vm.mm.outstanding()
    assert counts["syspte_pages"] == 0 and counts["syspte_allocations"] == 0, (
        f"a fresh kernel holds no system PTEs: {counts}")


def reserve_until_null(vm: Vm, start_pages: int) -> list[tuple[int, int]]:
    """(base, pages) of every reservation made, halving the size on each NULL down to one page."""
    made = []
    pages = start_pages
    while pages >= 1:
        p = vm.mm.MmAllocateMappingAddress(pages * PAGE, TAG)
        if p:
            made.append((p, pages))
        else:
            pages //= 2
    return made


def check_disjoint_and_headed(vm: Vm, made: list[tuple[int, int]]) -> None:
    spans = sorted((p - HEADER * PAGE, p + n * PAGE) for p, n in made)
    for (_, end), (start, _) in pairwise(spans):
        assert end <= start, "reservations overlap"
    for p, n in made:
        assert in_system_pte_region(p - HEADER * PAGE, n + HEADER)
        assert raw_ptes(vm, p - HEADER * PAGE, 2) == [size_pte(n), tag_pte(TAG)]


def page_table_is_linked(vm: Vm, table: int) -> bool:
    """Whether the region's page table `table` exists, from the host's walk of its first page."""
    walk = vm.verify.walk(SYSTEM_PTE_BASE + table * TABLE_SPAN)
    assert walk.stop is StopReason.NOT_PRESENT and walk.level in (1, 2), walk.describe()
    return walk.level == 1


def test_a_reservation_links_the_tables_it_reaches_without_taking_a_frame(fresh_vm: Vm) -> None:
    """[DECISION] include/syspte.h: the region's page tables are set aside at boot and each is linked,
    zeroed, when a reservation first reaches its 2 MiB; it stays linked after the release."""
    vm = fresh_vm
    empty_region(vm)
    last = (SYSTEM_PTE_COUNT - 1) // 512
    assert [page_table_is_linked(vm, t) for t in (0, 1, 2, last)] == [False] * 4, "boot links none"
    free = vm.mm.frame_stats().free
    pages = 512 + 16  # with the header, pages 0-529: tables 0 and 1
    p = vm.mm.MmAllocateMappingAddress(pages * PAGE, TAG)
    assert p == SYSTEM_PTE_BASE + HEADER * PAGE
    assert vm.mm.frame_stats().free == free, "the tables' frames were taken at boot"
    assert [page_table_is_linked(vm, t) for t in (0, 1, 2, last)] == [True, True, False, False]
    assert raw_ptes(vm, p - HEADER * PAGE, 2) == [size_pte(pages), tag_pte(TAG)]
    assert raw_ptes(vm, p, pages) == [0] * pages, "a linked table starts zeroed"
    table_1 = vm.verify.walk(SYSTEM_PTE_BASE + TABLE_SPAN).step(1)
    assert table_1 is not None
    vm.mm.MmFreeMappingAddress(p, TAG)
    again = vm.mm.MmAllocateMappingAddress(pages * PAGE, TAG)
    assert again == p
    kept = vm.verify.walk(SYSTEM_PTE_BASE + TABLE_SPAN).step(1)
    assert kept is not None and kept.table_pa == table_1.table_pa, "the same table, kept"
    assert vm.mm.frame_stats().free == free
    vm.mm.MmFreeMappingAddress(again, TAG)


def test_the_pte_hook_refuses_a_page_whose_table_no_reservation_linked(fresh_vm: Vm) -> None:
    last = SYSTEM_PTE_BASE + (SYSTEM_PTE_COUNT - 1) * PAGE
    with pytest.raises(AgentError) as caught:
        fresh_vm.mm.test_hook_set_pte_no_flush(last, size_pte(1))
    assert caught.value.kind == "bad-argument" and "reserve" in caught.value.message
    assert not page_table_is_linked(fresh_vm, (SYSTEM_PTE_COUNT - 1) // 512), "and links nothing"


def test_fragmentation_then_a_run_that_only_fits_after_coalescing(fresh_vm: Vm) -> None:
    vm = fresh_vm
    empty_region(vm)
    rng = random.Random(2026)
    sizes = [rng.choice((1, 2, 3, 5, 8, 13, 31)) for _ in range(40)]
    window = [vm.mm.MmAllocateMappingAddress(n * PAGE, TAG) for n in sizes]
    for (p, n), nxt in zip(zip(window, sizes, strict=True), window[1:], strict=False):
        assert nxt - HEADER * PAGE == p + n * PAGE, "first fit packs a clean region from its start"
    assert window[0] == SYSTEM_PTE_BASE + HEADER * PAGE
    window_ptes = sum(n + HEADER for n in sizes)
    rest = reserve_until_null(vm, 4096)
    check_disjoint_and_headed(vm, list(zip(window, sizes, strict=True)) + rest)
    assert vm.mm.outstanding()["syspte_pages"] > SYSTEM_PTE_COUNT - HEADER - 1

    order = list(range(len(window)))
    rng.shuffle(order)
    big = window_ptes - HEADER  # pages of one reservation spanning the whole window
    for k, i in enumerate(order):
        vm.mm.MmFreeMappingAddress(window[i], TAG)
        assert raw_ptes(vm, window[i] - HEADER * PAGE, sizes[i] + HEADER) == [0] * (sizes[i] + HEADER)
        for j in order[k + 1:]:  # the neighbours still standing keep their headers
            assert raw_ptes(vm, window[j] - HEADER * PAGE, 2) == [size_pte(sizes[j]), tag_pte(TAG)]
        if k < len(order) - 1:
            assert vm.mm.MmAllocateMappingAddress(big * PAGE, TAG) == 0, "the window is still split"
    whole = vm.mm.MmAllocateMappingAddress(big * PAGE, TAG)
    assert whole == window[0], "the freed pieces coalesced into one run at the window's start"
    assert raw_ptes(vm, whole - HEADER * PAGE, 2) == [size_pte(big), tag_pte(TAG)]
    assert raw_ptes(vm, whole, big) == [0] * big
    vm.mm.MmFreeMappingAddress(whole, TAG)
    for p, _ in rest:
        vm.mm.MmFreeMappingAddress(p, TAG)
    empty_region(vm)


def test_exhaustion_counts_the_free_space_and_recovers(fresh_vm: Vm) -> None:
    vm = fresh_vm
    empty_region(vm)
    made = reserve_until_null(vm, 8192)
    check_disjoint_and_headed(vm, made)
    used = sum(n + HEADER for _, n in made)
    left = SYSTEM_PTE_COUNT - used
    assert 0 <= left < HEADER + 1, f"{left} PTEs left, yet a one-page reservation (3 PTEs) failed"
    counts = vm.mm.outstanding()
    assert counts["syspte_pages"] == used and counts["syspte_allocations"] == len(made)
    assert counts["reserved_mapping_reservations"] == len(made)
    assert vm.mm.MmAllocateMappingAddress(1, TAG) == 0

    # Everything still maps and unmaps with the region full: the largest, the smallest and some between.
    by_size = sorted(made, key=lambda r: r[1])
    chosen = sorted({*by_size[::max(1, len(made) // 6)], by_size[-1]})
    mapped = []
    for p, n in chosen:
        mdl = pages_mdl(vm, min(n, 4))
        assert vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED) == p
        mapped.append((p, mdl))
        vm.verify.assert_mapped(p, min(n, 4) * PAGE, pfns=list(read_mdl(vm.verify, mdl).pfns), writable=True)
    for p, mdl in mapped:
        vm.mm.MmUnmapReservedMapping(p, TAG, mdl)
        vm.verify.assert_unmapped(p, PAGE)
        free_pages_mdl(vm, mdl)

    for p, _ in reversed(made):
        vm.mm.MmFreeMappingAddress(p, TAG)
    empty_region(vm)
    full = SYSTEM_PTE_COUNT - HEADER
    p = vm.mm.MmAllocateMappingAddress(full * PAGE, TAG)
    assert p == SYSTEM_PTE_BASE + HEADER * PAGE
    assert raw_ptes(vm, SYSTEM_PTE_BASE, 2) == [size_pte(full), tag_pte(TAG)]
    assert vm.mm.MmAllocateMappingAddress(1, TAG) == 0
    vm.mm.MmFreeMappingAddress(p, TAG)
    assert vm.mm.MmAllocateMappingAddress((full + 1) * PAGE, TAG) == 0, "one page more than the region holds"
    empty_region(vm)


def test_ordinary_unmap_of_a_reserved_mapping_bugchecks_0xda_0x304(fresh_vm: Vm) -> None:
    """ddi-spec §7.6: MmUnmapLockedPages on an MDL mapped into a reservation must not hand the
    reservation's PTEs back: its release starts inside the reservation's allocation (after the headers)."""
    vm = fresh_vm
    p = vm.mm.MmAllocateMappingAddress(3 * PAGE, TAG)
    mdl = pages_mdl(vm, 2)
    vm.mm.MmMapLockedPagesWithReservedMapping(p, TAG, mdl, MM_CACHED)
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_MID_ALLOCATION, p, 2, 0):
        vm.mm.MmUnmapLockedPages(p, mdl)


# The other release checks sit behind MmFreeMappingAddress's own header checks, so no DDI call reaches
# them; a header forged through the test hook does, and shows they fire instead of corrupting a
# neighbour. 0x303 (range outside the region) stays unreachable: a size header reaching past the region
# is "not a reservation" (0x102) before the allocator is asked.

def test_release_with_a_forged_size_bugchecks_0xda_0x305(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(4 * PAGE, TAG)
    fresh_vm.mm.test_hook_set_pte_no_flush(p - 2 * PAGE, size_pte(7))
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_WRONG_COUNT, p - 2 * PAGE, 7 + HEADER, 4 + HEADER):
        fresh_vm.mm.MmFreeMappingAddress(p, TAG)


def test_release_inside_another_allocation_bugchecks_0xda_0x304(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(6 * PAGE, TAG)
    fresh_vm.mm.test_hook_set_pte_no_flush(p, size_pte(2))
    fresh_vm.mm.test_hook_set_pte_no_flush(p + PAGE, tag_pte(TAG))
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_MID_ALLOCATION, p, 2 + HEADER, 0):
        fresh_vm.mm.MmFreeMappingAddress(p + 2 * PAGE, TAG)


def test_release_of_free_ptes_bugchecks_0xda_0x306(fresh_vm: Vm) -> None:
    p = fresh_vm.mm.MmAllocateMappingAddress(PAGE, TAG)
    free = p + 64 * PAGE  # well past the only reservation of a fresh kernel
    assert raw_ptes(fresh_vm, free - 2 * PAGE, 3) == [0, 0, 0]
    fresh_vm.mm.test_hook_set_pte_no_flush(free - 2 * PAGE, size_pte(1))
    fresh_vm.mm.test_hook_set_pte_no_flush(free - PAGE, tag_pte(TAG))
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_ALREADY_FREE, free - 2 * PAGE, 1 + HEADER, 0):
        fresh_vm.mm.MmFreeMappingAddress(free, TAG)
