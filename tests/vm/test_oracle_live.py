"""The host-side oracle against live guests: every translation three ways, both RAM backends, A/D bits,
snapshot diffs, attributes, and failure dumps.

The three sources are the agent's MmGetPhysicalAddress, the host's walk of the tables in guest RAM
(shared RAM backend or QMP), and QEMU's own walker (HMP gva2gpa). gva2gpa costs a monitor round trip
(~1-2.5 ms), so each test keeps its count in the low thousands; the host walker is checked on many more.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from harness.ddi.nt import PAGE_FAULT_IN_NONPAGED_AREA
from harness.guest import NON_PAGED_POOL, NON_PAGED_POOL_NX
from harness.oracle.memory import FOUR_GIB, MemoryAccessError, MonitorMemory, SharedRamMemory
from harness.oracle.paging import SIZE_4K, MemoryType, canonical
from harness.oracle.walker import MappedRange, StopReason, self_map_va
from harness.testing import expect_stop
from harness.verify import VerificationError
from harness.vm import Vm

TAG = "Orcl"
SYSTEM_PTE_BASE = 0xFFFF_F980_0000_0000
PFN_DATABASE_BASE = 0xFFFF_FA80_0000_0000
E820_RAM = 1


def shared_or_skip(vm: Vm) -> SharedRamMemory:
    shared = vm.verify.shared_memory
    if shared is None:
        pytest.skip(f"{vm.name} has no shared RAM backend (QEMU does not run on this host with one)")
    return shared


@contextmanager
def pool(vm: Vm, pool_type: int, size: int, tag: str = TAG) -> Iterator[int]:
    va = vm.mm.ExAllocatePoolWithTag(pool_type, size, tag)
    assert va, f"ExAllocatePoolWithTag({pool_type}, {size:#x}) failed"
    try:
        yield va
    finally:
        if vm.alive:
            vm.mm.ExFreePoolWithTag(va, tag)


def total(ranges: tuple[MappedRange, ...]) -> int:
    return sum(r.size for r in ranges)


def running(vm: Vm) -> bool:
    status = vm.qemu.command("query-status")
    assert isinstance(status, dict)
    return bool(status["running"])


def ram_ranges(vm: Vm) -> list[tuple[int, int]]:
    """Page-aligned RAM ranges of the guest's e820 map."""
    out = []
    for base, size, kind in vm.memory_map:
        start, end = (base + SIZE_4K - 1) & ~(SIZE_4K - 1), (base + size) & ~(SIZE_4K - 1)
        if kind == E820_RAM and end > start:
            out.append((start, end))
    return out


# --------------------------------------------------------------------------------------------------
# Translation three ways


def test_kernel_pool_physmap_and_stack_translate_identically_three_ways(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    with pool(vm, NON_PAGED_POOL_NX, 3 * SIZE_4K) as big, pool(vm, NON_PAGED_POOL_NX, 100) as small:
        mapped = [info.text_start, info.text_end - 1, info.rodata_start + 0x10, info.data_start, info.data_end - 8,
                  info.stack_pointer, info.stack_top - 8, info.pfn_db_base, big, big + 2 * SIZE_4K + 0xFFF, small,
                  small + 99, info.physmap_base, info.physmap_base + 0x12345]
        for va in mapped:
            assert vm.verify.translate(va) is not None, f"{va:#x} should be mapped"
        offsets = (0, 0x12345, info.physmap_leaf + 0x2008, info.physmap_size - 8)
        for offset in (o for o in offsets if o < info.physmap_size):
            assert vm.verify.translate(info.physmap_base + offset) == offset, "physmap + pa maps pa"
    for va in (info.stack_base - SIZE_4K, SYSTEM_PTE_BASE + 0x18, 0x1000):
        assert vm.verify.translate(va) is None, f"{va:#x} should be unmapped"


def test_host_walker_equals_gva2gpa_on_thousands_of_addresses(vm: Vm) -> None:
    verify = vm.verify
    snap = verify.snapshot()
    mode = snap.mode
    rng = np.random.default_rng(7)
    vas = [int(v) for v in snap.random_vas(900, seed=7).tolist()]
    for group in snap.groups():  # the edges of every group of ranges, inside and just outside
        start, end = group[0].va, group[-1].va_end
        vas += [start, start - 8, end - 8, end]
    vas += [self_map_va(va, level, mode) for va in vas[:60] for level in range(1, mode.levels + 1)]
    low_half = [int(v) for v in rng.integers(0, 1 << (mode.va_bits - 1), 450, dtype=np.uint64).tolist()]
    vas += [canonical(v | 1 << (mode.va_bits - 1), mode.levels) for v in low_half[:300]]  # random upper half
    vas += low_half[300:]  # random lower half (nothing is mapped there)
    vas += [v | 1 << 62 for v in low_half[:50]]  # non-canonical under both paging modes
    assert 1000 <= len(vas) <= 2000
    assert verify.cross_check_with_qemu(vas) == len(vas)
    result = verify.translate_many(vas)
    stops = set(result.stop.tolist())
    assert {StopReason.LEAF, StopReason.NOT_PRESENT, StopReason.NON_CANONICAL} <= stops, stops


def test_batch_walker_equals_the_snapshot_on_100k_addresses_over_both_backends(vm: Vm) -> None:
    with vm.verify.stopped() as w:
        snap = w.snapshot()
        vas = snap.random_vas(100_000, seed=3)
        fast = w.translate_many(vas, with_attributes=True)
        assert fast.ok.all(), "every VA the snapshot lists must translate"
        expected = np.array([snap.translate(int(v)) for v in vas[:: 50].tolist()], dtype=np.uint64)
        assert np.array_equal(fast.pa[:: 50], expected)
        slow = w.translate_many(vas, with_attributes=True, backend="monitor")
        assert np.array_equal(fast.pa, slow.pa) and fast.attrs is not None and slow.attrs is not None
        assert np.array_equal(fast.attrs, slow.attrs)
        assert w.monitor.fetches <= snap.tables_read + 8, "the monitor walk reads each table once"


@pytest.mark.requires(memory_gib=6)
def test_pool_pages_above_4gib_translate_three_ways_and_read_identically_through_both_backends(vm: Vm) -> None:
    stats = vm.mm.frame_stats()
    assert stats.above_4g_total > 0 and stats.highest_pfn >= FOUR_GIB >> 12
    info = vm.mm.kernel_info()
    pages = 8
    with pool(vm, NON_PAGED_POOL_NX, pages * SIZE_4K) as va:
        pas = [vm.verify.translate(va + k * SIZE_4K) for k in range(pages)]
        assert all(pa is not None and pa >= FOUR_GIB for pa in pas), [hex(p or 0) for p in pas]
        assert vm.mm.frame_stats().above_4g_in_use >= stats.above_4g_in_use + pages
        data = np.random.default_rng(11).integers(0, 256, pages * SIZE_4K, dtype=np.uint8).tobytes()
        vm.verify.guest_write(va, data)
        layout = vm.verify.layout
        with vm.verify.stopped() as w:
            for k, pa in enumerate(pas):
                assert pa is not None
                chunk = data[k * SIZE_4K : (k + 1) * SIZE_4K]
                assert vm.verify.monitor_memory.read(pa, SIZE_4K) == chunk, f"monitor read at {pa:#x}"
                if w.shared is not None:
                    offset = layout.file_offset(pa, SIZE_4K)
                    assert offset == pa - FOUR_GIB + layout.regions[0].size, "above 4 GiB: after the low part"
                    assert w.shared.read(pa, SIZE_4K) == chunk, f"shared read at {pa:#x}"
                    assert w.shared.array[offset : offset + SIZE_4K].tobytes() == chunk
        # The physmap reaches the same frames above 4 GiB.
        for k in (0, pages - 1):
            pa = pas[k]
            assert pa is not None
            assert vm.verify.translate(info.physmap_base + pa) == pa
            assert vm.verify.guest_read(info.physmap_base + pa, 64) == data[k * SIZE_4K : k * SIZE_4K + 64]


# --------------------------------------------------------------------------------------------------
# Backends


def test_ram_layout_matches_the_guest_memory_map(vm: Vm) -> None:
    layout = vm.verify.layout
    assert vm.verify.layout_problems == []
    assert layout.total_size == vm.config.memory_bytes
    highest = max(end for _, end in ram_ranges(vm))
    # The RAM backend ends where the guest's RAM ends, but firmware may keep the top (SeaBIOS: 128 KiB).
    assert highest <= layout.regions[-1].gpa_end < highest + (1 << 20)
    if vm.config.memory_bytes > 3 << 30:
        assert [r.gpa_start for r in layout.regions] == [0, FOUR_GIB]


def test_monitor_and_shared_backends_read_identical_bytes_including_page_tables(vm: Vm) -> None:
    shared_or_skip(vm)
    info = vm.mm.kernel_info()
    rng = np.random.default_rng(5)
    monitor = vm.verify.monitor_memory
    with vm.verify.stopped() as w:
        assert w.shared is not None
        snap = w.snapshot()
        tables = {w.cr3 & ~0xFFF}
        for va in [*snap.random_vas(200, seed=5).tolist(), info.text_start, info.stack_pointer]:
            tables.update(step.table_pa for step in w.walk(int(va)).steps)
        ranges = [(pa, SIZE_4K) for pa in sorted(tables)]
        for va in (info.text_start, info.data_start, info.stack_pointer & ~0xFFF):
            pa = w.walk(va).pa
            assert pa is not None
            ranges.append((pa, SIZE_4K))
        ram = ram_ranges(vm)
        for start, end in ram:
            ranges += [(start, 512), (end - SIZE_4K, SIZE_4K), (end - 8, 8)]
        for _ in range(60):  # random spans, small (HMP xp) and large (QMP pmemsave), unaligned
            start, end = ram[int(rng.integers(0, len(ram)))]
            size = int(rng.choice([1, 7, 64, 500, 513, 4096, 3 * SIZE_4K + 5]))
            pa = int(rng.integers(start, end - size))
            ranges.append((pa, size))
        for pa, size in ranges:
            assert monitor.read(pa, size) == w.shared.read(pa, size), f"[{pa:#x}, +{size:#x}) differs"
        xp_only = MonitorMemory(vm.qemu, vm.verify.layout, pmemsave=False)  # as for a QEMU on another host
        for pa, size in ranges[:: max(1, len(ranges) // 20)]:
            assert xp_only.read(pa, size) == w.shared.read(pa, size), f"[{pa:#x}, +{size:#x}) differs (xp)"
        outside = vm.verify.layout.regions[-1].gpa_end
        for memory in (monitor, w.shared):
            with pytest.raises(MemoryAccessError):
                memory.read(outside, 8)
    assert len(tables) >= vm.config.paging_levels


# --------------------------------------------------------------------------------------------------
# Content round trips


def test_guest_writes_reach_the_host_and_host_plants_reach_the_guest(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    both = vm.verify.shared_memory is not None or vm.verify.remote_memory is not None  # a writable RAM backend
    with pool(vm, NON_PAGED_POOL_NX, 3 * SIZE_4K) as big, pool(vm, NON_PAGED_POOL, 200) as small:
        for va, length in ((big, SIZE_4K), (big + 0xF80, 0x1100), (small, 200)):  # 0x1100: 3 pages
            directions = vm.verify.round_trip(va, length, seed=va & 0xFFFF)
            assert directions == (("guest->host", "host->guest") if both else ("guest->host",))
        # The same frame seen through the physmap's large leaf.
        pattern = bytes(range(256)) * 2
        vm.verify.guest_write(big + 0x300, pattern)
        pa = vm.verify.translate(big + 0x300)
        assert pa is not None
        assert vm.verify.host_read(info.physmap_base + pa, len(pattern)) == pattern
        assert vm.verify.guest_read(info.physmap_base + pa, len(pattern)) == pattern


# --------------------------------------------------------------------------------------------------
# Accessed and dirty


def test_guest_load_sets_accessed_and_store_sets_dirty(vm: Vm) -> None:
    shared_or_skip(vm)
    with pool(vm, NON_PAGED_POOL_NX, 2 * SIZE_4K) as va:  # page aligned, no header: untouched so far
        load, store = va, va + SIZE_4K
        # The kernel's PTE template presets A and D; clear them before the guest touches the pages
        # (a fresh mapping: no TLB entry can hold them).
        vm.verify.clear_accessed_dirty(va, 2 * SIZE_4K)
        vm.verify.assert_accessed_dirty(va, 2 * SIZE_4K, accessed=False, dirty=False)

        vm.mm.read_va(load, 8)
        vm.verify.assert_accessed_dirty(load, accessed=True, dirty=False)
        vm.verify.assert_accessed_dirty(store, accessed=False, dirty=False)

        vm.mm.write_va(store + 0x10, b"\x5a")
        vm.verify.assert_accessed_dirty(store, accessed=True, dirty=True)

        # A store through a translation first cached by a load must still set D.
        vm.mm.write_va(load + 0x10, b"\x5a")
        vm.verify.assert_accessed_dirty(load, accessed=True, dirty=True)


# --------------------------------------------------------------------------------------------------
# Snapshots and the leak check


def test_multi_page_pool_block_is_mapped_on_alloc_and_leaves_no_mapping_when_freed(vm: Vm) -> None:
    verify = vm.verify
    pages = 3
    before = verify.snapshot()
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, pages * SIZE_4K, TAG)
    assert va and va % SIZE_4K == 0
    try:
        during = before.diff(verify.snapshot())
        assert not during.removed and not during.changed, during.format()
        assert total(during.added) == pages * SIZE_4K, during.format()
        for r in during.added:
            assert va <= r.va and r.va_end <= va + pages * SIZE_4K and r.leaf_size == SIZE_4K
            a = r.attributes
            assert (a.writable, a.user, a.executable) == (True, False, False), r.format_line()
    finally:
        vm.mm.ExFreePoolWithTag(va, TAG)
    after = before.diff(verify.snapshot())
    assert after.empty, after.format()
    verify.assert_unmapped(va, pages * SIZE_4K)


def test_small_pool_blocks_reuse_mapped_pool_pages(vm: Vm) -> None:
    verify = vm.verify
    before = verify.snapshot()
    first = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 64, TAG)
    assert first and first % 16 == 0 and first % SIZE_4K != 0, "small blocks sit behind a 16-byte header"
    page = first & ~(SIZE_4K - 1)
    added = before.diff(verify.snapshot()).added
    # Either a pool page with room was mapped already, or exactly the block's page was mapped now.
    assert total(added) in (0, SIZE_4K)
    assert all(r.va == page for r in added)
    middle = verify.snapshot()
    second = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 64, TAG)
    assert second
    assert middle.diff(verify.snapshot()).empty, "a second small block maps nothing new"
    vm.mm.ExFreePoolWithTag(second, TAG)
    vm.mm.ExFreePoolWithTag(first, TAG)
    # Pages that held small blocks stay in the pool: allowed, nothing else may remain.
    verify.assert_released(before, allow=[(page, SIZE_4K)])


def test_leak_check_fails_on_a_block_left_mapped(vm: Vm) -> None:
    leaked = 0
    with pytest.raises(VerificationError, match="page-table leak"), vm.verify.leak_check():
        leaked = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * SIZE_4K, TAG)
        assert leaked
    vm.mm.ExFreePoolWithTag(leaked, TAG)
    with vm.verify.leak_check(), pool(vm, NON_PAGED_POOL, 5 * SIZE_4K):
        pass


# --------------------------------------------------------------------------------------------------
# Self-map and CPU state


def test_self_map_points_back_and_lands_on_every_entry_of_a_walk(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    check = vm.verify.check_self_map()
    assert check.ok, check.describe()
    with vm.verify.stopped() as w:
        mode = w.mode
        assert check.top_table_pa == w.cr3 & mode.table_addr_mask
        assert info.pte_base == mode.pte_base
        for va in (info.text_start, info.stack_pointer, info.pfn_db_base, info.physmap_base + 0x5000):
            walked = w.walk(va)
            assert walked.ok
            for step in walked.steps:
                through = w.walk(self_map_va(va, step.level, mode))
                assert through.pa == step.entry_pa, f"{va:#x} level {step.level}:\n{through.describe()}"
                assert through.attributes is not None and not through.attributes.user
                assert not through.attributes.executable
        pte_of_text = w.walk(info.text_start).steps[-1].entry_pa
    assert vm.verify.translate(self_map_va(info.text_start, 1, mode)) == pte_of_text


def test_cpu_state_comes_from_qemu_for_every_vcpu_and_the_guest_runs_again(vm: Vm) -> None:
    verify = vm.verify
    cpus = verify.cpu_states()
    assert [c.index for c in cpus] == list(range(vm.config.smp))
    boot = cpus[0]
    assert boot.mode is not None, boot.describe()
    assert boot.mode.levels == vm.config.paging_levels and boot.mode.nxe
    info = vm.mm.kernel_info()
    assert (boot.cr0, boot.cr3, boot.cr4, boot.efer) == (info.cr0, info.cr3, info.cr4, info.efer)
    assert boot.mode.pat_msr == info.pat
    with verify.stopped() as w:
        assert not running(vm)
        with verify.stopped() as inner:
            assert inner is w, "a nested window shares the outer stop"
        assert not running(vm), "the inner window must not resume the guest"
    assert running(vm)
    assert vm.mm.MmIsAddressValid(info.text_start) is True


# --------------------------------------------------------------------------------------------------
# Attributes


def test_kernel_sections_stack_pool_and_physmap_have_their_attributes(vm: Vm) -> None:
    verify = vm.verify
    info = vm.mm.kernel_info()
    with verify.stopped() as w:
        nxe = w.mode.nxe
    if not nxe:
        pytest.skip("EFER.NXE is off: everything is executable")
    text_pages = (info.text_end - info.text_start) // SIZE_4K
    text_pfn = (vm.verify.translate(info.text_start) or 0) >> 12
    verify.assert_mapped(info.text_start, info.text_end - info.text_start, writable=False, executable=True,
                         user=False, cache=MemoryType.WB, pfns=range(text_pfn, text_pfn + text_pages))
    verify.assert_mapped(info.rodata_start, info.rodata_end - info.rodata_start, writable=False,
                         executable=False, user=False, cache=MemoryType.WB)
    verify.assert_mapped(info.data_start, info.data_end - info.data_start, writable=True, executable=False,
                         user=False, cache=MemoryType.WB)
    verify.assert_mapped(info.stack_base, info.stack_top - info.stack_base, writable=True, executable=False,
                         user=False)
    with pool(vm, NON_PAGED_POOL_NX, 2 * SIZE_4K) as nx, pool(vm, NON_PAGED_POOL, 2 * SIZE_4K) as x:
        verify.assert_mapped(nx, 2 * SIZE_4K, writable=True, executable=False, user=False, cache=MemoryType.WB)
        verify.assert_mapped(x, 2 * SIZE_4K, writable=True, executable=True, user=False, cache=MemoryType.WB)
    level = {0x40000000: 3, 0x200000: 2}[info.physmap_leaf]
    offsets = [0, info.physmap_size - 2 * SIZE_4K]
    if info.physmap_size > info.physmap_leaf:
        offsets.append(info.physmap_leaf - SIZE_4K)  # two pages in two leaves
    for offset in offsets:
        walks = verify.assert_mapped(info.physmap_base + offset, 2 * SIZE_4K, writable=True, executable=False,
                                     user=False, cache=MemoryType.WB, pfns=[offset >> 12, (offset >> 12) + 1])
        assert {(wk.level, wk.page_size) for wk in walks} == {(level, info.physmap_leaf)}
    with pytest.raises(VerificationError, match="writable is False, expected True"):
        verify.assert_mapped(info.text_start, SIZE_4K, writable=True)


def test_stack_guard_page_and_system_pte_region_are_unmapped(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    guard = info.stack_base - SIZE_4K
    vm.verify.assert_unmapped(guard, SIZE_4K)
    assert vm.mm.MmIsAddressValid(guard) is False
    vm.verify.assert_unmapped(SYSTEM_PTE_BASE, 16 << 20)
    snap = vm.verify.snapshot()
    inside = [r for r in snap.ranges if r.va < PFN_DATABASE_BASE and r.va_end > SYSTEM_PTE_BASE]
    assert inside == [], "nothing is mapped anywhere in the system PTE region"
    with pytest.raises(VerificationError, match="still mapped"):
        vm.verify.assert_unmapped(guard, 2 * SIZE_4K)  # the first stack page is mapped


# --------------------------------------------------------------------------------------------------
# Failure dumps


def test_page_table_dump_is_readable_and_bounded(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    dump = vm.verify.page_table_dump()
    top = "PML4" if vm.config.paging_levels == 4 else "PML5"
    assert f"Self-map: {top}[0x1ed]" in dump
    assert f"{info.text_start:#018x}-" in dump and f"{info.physmap_base:#018x}-" in dump
    assert len(dump.splitlines()) <= 200 + 10
    short = vm.verify.page_table_dump(max_ranges=3)
    assert "not shown" in short and len(short.splitlines()) <= 3 + 10


def test_page_table_dump_of_a_killed_qemu_is_one_line(fresh_vm: Vm) -> None:
    vm = fresh_vm
    vm.verify.snapshot()
    vm.machine.kill(signal.SIGKILL)
    vm.machine.wait_exit(5.0)
    dump = vm.verify.page_table_dump()
    assert "\n" not in dump and "not running" in dump, dump


def test_page_table_dump_after_a_bugcheck_is_taken_post_mortem(fresh_vm: Vm) -> None:
    vm = fresh_vm
    info = vm.mm.kernel_info()
    vm.verify.snapshot()  # the verifier has seen the paging mode
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, info.stack_base - SIZE_4K):  # the guard page; no core
        vm.mm.read_va(info.stack_base - SIZE_4K, 8)
    dump = vm.verify.page_table_dump()
    if vm.verify.shared_memory is None:
        assert "\n" not in dump and "BugCheck" in dump, dump
    else:
        assert dump.startswith("post mortem") and f"{info.text_start:#018x}-" in dump, dump
