"""Unit tests of the page-table guard's diff by region (hand-built snapshots, no VM)."""

from __future__ import annotations

from harness.oracle.paging import MemoryType, PagingMode
from harness.oracle.walker import Attributes, MappedRange, Snapshot
from harness.pagetable_guard import (
    OUTSIDE,
    PFN_DATABASE_BASE,
    PFN_DATABASE_FILLED,
    SYSTEM_PTE_BASE,
    PageTableChanges,
    _diff,
    kernel_regions,
    shared_zero_frame,
)

MODE = PagingMode(levels=4, nxe=True)
POOL_BASE = PFN_DATABASE_BASE + (64 << 20)
POOL_END = POOL_BASE + (64 << 20)
PHYSMAP = 0xFFFF_8800_0000_0000
REGIONS = kernel_regions(POOL_BASE, POOL_END, PHYSMAP, 1 << 30)
ZERO_FRAME = 0x7000


def attributes(writable: bool) -> Attributes:
    return Attributes(writable=writable, user=False, executable=False, pwt=False, pcd=False, pat=False,
                      global_=True, accessed=True, dirty=writable, protection_key=0, memory_type=MemoryType.WB)


def page(va: int, pa: int, writable: bool = True) -> MappedRange:
    return MappedRange(va, pa, 4096, 4096, attributes(writable))


def snap(*ranges: MappedRange) -> Snapshot:
    return Snapshot(MODE, 0x1000, tuple(sorted(ranges, key=lambda r: r.va)))


def changes(old: Snapshot, new: Snapshot) -> PageTableChanges:
    return PageTableChanges.of(_diff(old, new), REGIONS, shared_zero_frame(old, REGIONS))


def database(pages: int, private: dict[int, int]) -> list[MappedRange]:
    """A lazy PFN database: each page maps the zero frame read-only unless it has a frame of its own."""
    return [page(PFN_DATABASE_BASE + i * 4096, private[i]) if i in private
            else page(PFN_DATABASE_BASE + i * 4096, ZERO_FRAME, writable=False) for i in range(pages)]


def test_regions_are_sorted_and_the_pool_follows_the_pfn_database() -> None:
    starts = [r.start for r in REGIONS]
    assert starts == sorted(starts)
    names = [r.name for r in REGIONS]
    assert names.index("PFN database") + 1 == names.index("nonpaged pool")
    assert not next(r for r in REGIONS if r.name == "nonpaged pool").must_restore


def test_a_system_pte_left_mapped_is_left_behind() -> None:
    old = snap(*database(4, {0: 0x20000}))
    new = snap(*database(4, {0: 0x20000}), page(SYSTEM_PTE_BASE + 0x5000, 0x9000))
    found = changes(old, new)
    assert [(c.kind, c.region.name) for c in found.left_behind] == [("added", "system PTEs")]
    assert "system PTEs" in found.format(found.left_behind)


def test_the_pfn_database_leaving_the_zero_frame_is_not_a_leak_but_is_shown() -> None:
    old = snap(*database(4, {0: 0x20000}))
    new = snap(*database(4, {0: 0x20000, 2: 0x31000}))
    found = changes(old, new)
    assert [(c.kind, c.region) for c in found.changes] == [("changed", PFN_DATABASE_FILLED)]
    assert found.left_behind == ()
    assert "may change" in found.format()


def test_a_database_page_remapped_between_private_frames_is_left_behind() -> None:
    old = snap(*database(4, {0: 0x20000, 1: 0x21000}))
    new = snap(*database(4, {0: 0x20000, 1: 0x44000}))
    assert [c.region.name for c in changes(old, new).left_behind] == ["PFN database"]


def test_a_database_page_unmapped_is_left_behind() -> None:
    old = snap(*database(4, {}))
    new = snap(*database(3, {}))
    assert [(c.kind, c.region.name) for c in changes(old, new).left_behind] == [("removed", "PFN database")]


def test_no_zero_frame_is_guessed_from_a_single_read_only_page() -> None:
    assert shared_zero_frame(snap(page(PFN_DATABASE_BASE, ZERO_FRAME, writable=False)), REGIONS) is None
    assert shared_zero_frame(snap(*database(3, {})), REGIONS) == ZERO_FRAME


def test_a_mapping_between_regions_is_outside_and_must_be_restored() -> None:
    stray = 0xFFFF_8000_0000_0000
    found = changes(snap(), snap(page(stray, 0x5000)))
    assert [c.region for c in found.left_behind] == [OUTSIDE]


def test_pool_growth_may_change() -> None:
    found = changes(snap(), snap(page(POOL_BASE + 0x3000, 0x5000)))
    assert found and found.left_behind == ()
