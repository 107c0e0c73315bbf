"""DXGK physical-memory objects (ddi-spec §12): Create / Map / Unmap / Destroy / Open / Close.

Every view is checked leaf by leaf from the host (PFN, RW, U/S, NX, memory type from PCD/PWT/PAT), every
unmap with assert_unmapped. Subcodes 0xC4(0x1000) and 0xC4(0x1001) are this test kernel's own
(ddi-spec §12.4 [DECISION]); Windows' codes for these cases are undocumented."""

from collections.abc import Iterator

import pytest

from harness.ddi.dxgk import HIGHEST_ADDRESS, AccessMode, CachingType, PhysicalMemoryType
from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL
from harness.ddi.nt import (
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    PAGE_READONLY,
    PAGE_READWRITE,
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS,
    SYSTEM_PTE_MISUSE,
    VERIFIER_API_WRONG_IRQL,
)
from harness.oracle.paging import MemoryType
from harness.testing import expect_stop
from harness.vm import Vm

PAGE = 0x1000
KERNEL, USER = AccessMode.KERNEL_MODE, AccessMode.USER_MODE
DXGK_INVALID_HANDLE = 0x1000
DXGK_LIVE_MAPPINGS = 0x1001
RELEASE_NOT_RESERVED = 0x303
ADAPTER = 0xADA0_0000_0001
OTHER_ADAPTER = 0xADA0_0000_0002
IO_BASE = 0xFEB0_0000  # a hole in every config's physical map: wrapped, never allocated
MEMORY_TYPE = {CachingType.NON_CACHED: MemoryType.UC, CachingType.CACHED: MemoryType.WB,
               CachingType.WRITE_COMBINED: MemoryType.WC}
SYSTEM_PTE_BASE = 0xFFFF_F980_0000_0000
USER_HALF_END = 0x0000_8000_0000_0000


def _create(vm: Vm, kind: PhysicalMemoryType, size: int, cache: CachingType, adapter: int = 0) -> int:
    if kind == PhysicalMemoryType.MDL:
        result = vm.mm.create_mdl(size, cache, adapter=adapter)
    elif kind == PhysicalMemoryType.CONTIGUOUS_MEMORY:
        result = vm.mm.create_contiguous(size, cache, adapter=adapter)
    elif kind == PhysicalMemoryType.SECTION:
        result = vm.mm.create_section(size, cache, adapter=adapter)
    else:
        result = vm.mm.create_io_space(size, cache, IO_BASE, adapter=adapter)
    assert result.status == STATUS_SUCCESS, f"{result.status:#x}"
    assert result.hPhysicalMemoryObject != 0
    assert (result.hAdapterMemoryObject != 0) == (adapter != 0), "an adapter object only with hAdapter"
    return result.hPhysicalMemoryObject


@pytest.fixture
def contiguous_3(vm: Vm) -> Iterator[int]:
    handle = _create(vm, PhysicalMemoryType.CONTIGUOUS_MEMORY, 3 * PAGE, CachingType.NON_CACHED)
    yield handle
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


def _check_view(vm: Vm, handle: int, va: int, size: int, first_page: int, *, user: bool = False,
                writable: bool = True) -> None:
    info = vm.mm.dxgk_object_info(handle)
    pages = size // PAGE
    vm.verify.assert_mapped(va, size, pfns=list(info.pfns[first_page : first_page + pages]), writable=writable,
                            user=user, executable=False, cache=MEMORY_TYPE[CachingType(info.cache_type)])
    if user:
        assert va + size <= USER_HALF_END
    else:
        assert va >= SYSTEM_PTE_BASE, "kernel views come from the system PTEs"
    for page in range(pages):
        assert vm.qemu.gva2gpa(va + page * PAGE) == info.pfns[first_page + page] * PAGE


def _assert_unmapped(vm: Vm, va: int, size: int) -> None:
    """After Unmap: each leaf PTE is zero (not merely non-present) and neither walk translates the range."""
    for page in range(va, va + size, PAGE):
        wk = vm.verify.walk(page)
        assert wk.level == 1 and wk.steps[-1].entry == 0, wk.describe()
    vm.verify.assert_unmapped(va, size)


def test_12_4_01_contiguous_non_cached_map_rounds_offset_and_size(vm: Vm, contiguous_3: int) -> None:
    info = vm.mm.dxgk_object_info(contiguous_3)
    assert info.pages == 3 and info.pfns == tuple(range(info.pfns[0], info.pfns[0] + 3)), "physically contiguous"
    m = vm.mm.DxgkCbMapPhysicalMemory(contiguous_3, KERNEL, 0x1234, 0x100)
    assert m.status == STATUS_SUCCESS
    assert m.pMappedAddress % PAGE == 0 and m.Offset == 0x234 and m.Size == 0x1000
    entries = vm.verify.leaf_entries(m.pMappedAddress, 1)
    assert len(entries) == 1 and entries[0][1] >> 12 & 0xFF_FFFF_FFFF == info.pfns[1], "1 PTE: object page 1"
    assert entries[0][1] & 0x18 == 0x18, "PCD=PWT=1"
    _check_view(vm, contiguous_3, m.pMappedAddress, m.Size, 1)
    vm.mm.DxgkCbUnmapPhysicalMemory(contiguous_3, m.pMappedAddress, m.Size)
    _assert_unmapped(vm, m.pMappedAddress, m.Size)


def test_12_4_02_range_across_a_page_boundary_maps_two_pages(vm: Vm, contiguous_3: int) -> None:
    m = vm.mm.DxgkCbMapPhysicalMemory(contiguous_3, KERNEL, 0xFF0, 0x20)
    assert m.status == STATUS_SUCCESS and m.Size == 0x2000 and m.Offset == 0xFF0
    _check_view(vm, contiguous_3, m.pMappedAddress, m.Size, 0)
    vm.mm.DxgkCbUnmapPhysicalMemory(contiguous_3, m.pMappedAddress, m.Size)
    _assert_unmapped(vm, m.pMappedAddress, m.Size)


def test_12_4_03_two_views_of_one_object_are_coherent(vm: Vm, contiguous_3: int) -> None:
    a = vm.mm.DxgkCbMapPhysicalMemory(contiguous_3, KERNEL, 0x1234, 0x100)
    b = vm.mm.DxgkCbMapPhysicalMemory(contiguous_3, KERNEL, 0x1000, 0x2000)
    assert a.status == b.status == STATUS_SUCCESS and a.pMappedAddress != b.pMappedAddress
    data = bytes(range(1, 65))
    vm.verify.guest_write(a.pMappedAddress + a.Offset, data)
    assert vm.verify.guest_read(b.pMappedAddress + b.Offset + 0x234, len(data)) == data
    pa = vm.mm.dxgk_object_info(contiguous_3).pfns[1] * PAGE + 0x234
    assert b"".join(q.to_bytes(8, "little") for q in vm.qemu.xp(pa, 8)) == data, "host reads guest RAM"
    for m in (a, b):
        vm.mm.DxgkCbUnmapPhysicalMemory(contiguous_3, m.pMappedAddress, m.Size)
        _assert_unmapped(vm, m.pMappedAddress, m.Size)


def test_12_4_04_unmap_zeroes_the_ptes(vm: Vm, contiguous_3: int) -> None:
    m = vm.mm.DxgkCbMapPhysicalMemory(contiguous_3, KERNEL, 0, 3 * PAGE)
    _check_view(vm, contiguous_3, m.pMappedAddress, 3 * PAGE, 0)
    vm.mm.DxgkCbUnmapPhysicalMemory(contiguous_3, m.pMappedAddress, m.Size)
    _assert_unmapped(vm, m.pMappedAddress, 3 * PAGE)
    assert vm.mm.dxgk_object_info(contiguous_3).views == 0


def test_12_4_04_unmap_with_the_input_size_bugchecks_0xda_0x303(fresh_vm: Vm) -> None:
    handle = _create(fresh_vm, PhysicalMemoryType.CONTIGUOUS_MEMORY, 3 * PAGE, CachingType.NON_CACHED)
    m = fresh_vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0x1234, 0x100)
    assert m.Size != 0x100
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_NOT_RESERVED, m.pMappedAddress, 0x100 >> 12, 0):
        fresh_vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, 0x100)


def test_12_4_05_io_space_at_an_unaligned_base_fails(vm: Vm) -> None:
    result = vm.mm.create_io_space(PAGE, CachingType.NON_CACHED, IO_BASE + 0x10)
    assert result.status == STATUS_INVALID_PARAMETER and result.hPhysicalMemoryObject == 0


def test_12_4_05_io_space_maps_its_frames_in_kernel_mode_only(vm: Vm) -> None:
    handle = _create(vm, PhysicalMemoryType.IO_SPACE, 2 * PAGE, CachingType.NON_CACHED)
    try:
        assert vm.mm.dxgk_object_info(handle).pfns == (IO_BASE >> 12, (IO_BASE >> 12) + 1)
        user = vm.mm.DxgkCbMapPhysicalMemory(handle, USER, 0, PAGE)
        assert user.status == STATUS_INVALID_PARAMETER
        m = vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0x800, 0x1000)
        assert m.status == STATUS_SUCCESS and m.Offset == 0x800 and m.Size == 0x2000
        _check_view(vm, handle, m.pMappedAddress, m.Size, 0)
        vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
        _assert_unmapped(vm, m.pMappedAddress, m.Size)
    finally:
        vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


def test_12_4_06_section_non_cached_fails(vm: Vm) -> None:
    result = vm.mm.create_section(PAGE, CachingType.NON_CACHED)
    assert result.status == STATUS_INVALID_PARAMETER and result.hPhysicalMemoryObject == 0


@pytest.mark.parametrize("protection", [0, 0x01, 0x20, PAGE_READWRITE | 0x200, PAGE_READWRITE | 0x400])
def test_12_4_06_section_protection_other_than_the_four_or_with_cache_bits_fails(vm: Vm, protection: int) -> None:
    assert vm.mm.create_section(PAGE, CachingType.CACHED, protection).status == STATUS_INVALID_PARAMETER


def test_12_4_07_open_on_an_object_created_with_an_adapter_fails(vm: Vm) -> None:
    created = vm.mm.create_mdl(PAGE, CachingType.CACHED, adapter=ADAPTER)
    assert created.status == STATUS_SUCCESS and created.hAdapterMemoryObject
    assert vm.mm.DxgkCbOpenPhysicalMemoryObject(created.hPhysicalMemoryObject, OTHER_ADAPTER).status \
        == STATUS_INVALID_PARAMETER
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(created.hPhysicalMemoryObject, created.hAdapterMemoryObject)


def test_12_4_07_open_twice_fails_and_close_reopens(vm: Vm) -> None:
    handle = _create(vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    first = vm.mm.DxgkCbOpenPhysicalMemoryObject(handle, ADAPTER)
    assert first.status == STATUS_SUCCESS and first.hAdapterMemoryObject
    second = vm.mm.DxgkCbOpenPhysicalMemoryObject(handle, OTHER_ADAPTER)
    assert second.status == STATUS_INVALID_PARAMETER
    vm.mm.DxgkCbClosePhysicalMemoryObject(first.hAdapterMemoryObject)
    again = vm.mm.DxgkCbOpenPhysicalMemoryObject(handle, OTHER_ADAPTER)
    assert again.status == STATUS_SUCCESS
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle, again.hAdapterMemoryObject)


def test_12_4_08_destroy_with_a_live_view_bugchecks_0xc4_0x1001(fresh_vm: Vm) -> None:
    handle = _create(fresh_vm, PhysicalMemoryType.MDL, 2 * PAGE, CachingType.CACHED)
    fresh_vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, PAGE)
    fresh_vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, PAGE, PAGE)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, DXGK_LIVE_MAPPINGS, handle, 0, 2):
        fresh_vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


@pytest.mark.parametrize("call", ["create", "map", "unmap", "destroy", "open", "close"])
def test_12_4_09_call_at_dispatch_level_bugchecks_0xc4_0xe5(fresh_vm: Vm, call: str) -> None:
    mm = fresh_vm.mm
    handle = _create(fresh_vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    m = mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, PAGE)
    opened = mm.DxgkCbOpenPhysicalMemoryObject(handle, ADAPTER)
    mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, DISPATCH_LEVEL, 0, 0):
        if call == "create":
            mm.create_mdl(PAGE, CachingType.CACHED)
        elif call == "map":
            mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, PAGE)
        elif call == "unmap":
            mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
        elif call == "destroy":
            mm.DxgkCbDestroyPhysicalMemoryObject(handle)
        elif call == "open":
            mm.DxgkCbOpenPhysicalMemoryObject(handle, ADAPTER)
        else:
            mm.DxgkCbClosePhysicalMemoryObject(opened.hAdapterMemoryObject)


def test_12_irql_apc_level_is_accepted(vm: Vm) -> None:
    with vm.mm.at_irql(APC_LEVEL):
        handle = _create(vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
        m = vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, PAGE)
        assert m.status == STATUS_SUCCESS
        vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
        vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


@pytest.mark.parametrize("kind", [PhysicalMemoryType.MDL, PhysicalMemoryType.CONTIGUOUS_MEMORY,
                                  PhysicalMemoryType.SECTION])
@pytest.mark.parametrize("cache", [CachingType.NON_CACHED, CachingType.CACHED, CachingType.WRITE_COMBINED])
def test_12_4_kernel_views_carry_the_object_cache_type_and_pfns(vm: Vm, kind: PhysicalMemoryType,
                                                                 cache: CachingType) -> None:
    if kind == PhysicalMemoryType.SECTION and cache == CachingType.NON_CACHED:
        pytest.skip("SECTION + NON_CACHED is refused (test_12_4_06)")
    handle = _create(vm, kind, 4 * PAGE + 5, cache)
    try:
        info = vm.mm.dxgk_object_info(handle)
        assert info.pages == 5 and len(set(info.pfns)) == 5 and info.type == kind and info.cache_type == cache
        assert vm.qemu.xp(info.pfns[4] * PAGE, 512) == [0] * 512, "fresh pages are zeroed"
        m = vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, 4 * PAGE + 5)
        assert m.status == STATUS_SUCCESS and m.Offset == 0 and m.Size == 5 * PAGE
        _check_view(vm, handle, m.pMappedAddress, m.Size, 0)
        vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
        _assert_unmapped(vm, m.pMappedAddress, m.Size)
    finally:
        vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


@pytest.mark.parametrize("kind", [PhysicalMemoryType.MDL, PhysicalMemoryType.CONTIGUOUS_MEMORY,
                                  PhysicalMemoryType.SECTION])
def test_12_4_user_views_are_user_rw_nx_and_the_ring3_probe_reads_and_writes_them(
        vm: Vm, kind: PhysicalMemoryType) -> None:
    cache = CachingType.WRITE_COMBINED
    handle = _create(vm, kind, 3 * PAGE, cache)
    try:
        m = vm.mm.DxgkCbMapPhysicalMemory(handle, USER, 0x1FF8, 0x10)
        assert m.status == STATUS_SUCCESS and m.Offset == 0xFF8 and m.Size == 2 * PAGE
        _check_view(vm, handle, m.pMappedAddress, m.Size, 1, user=True)
        info = vm.mm.dxgk_object_info(handle)
        data_va, data_pa = m.pMappedAddress + m.Offset, info.pfns[1] * PAGE + 0xFF8
        written = vm.mm.user_probe_write(data_va, 0x1122_3344_5566_7788)
        assert written.completed
        assert vm.qemu.xp(data_pa, 1) == [0x1122_3344_5566_7788], "ring 3's write is in the object's page"
        second = info.pfns[2] * PAGE
        assert vm.qemu.xp(second, 1) == [0]
        vm.verify.host_write(m.pMappedAddress + PAGE, (0xCAFE).to_bytes(8, "little"))
        read = vm.mm.user_probe_read(m.pMappedAddress + PAGE)
        assert read.completed and read.value == 0xCAFE == vm.qemu.xp(second, 1)[0]
        vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
        _assert_unmapped(vm, m.pMappedAddress, m.Size)
        after = vm.mm.user_probe_read(data_va)
        assert not after.completed and after.vector == 14 and after.address == data_va, "ring 3 faults, reported"
    finally:
        vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


def test_12_4_read_only_section_maps_read_only_and_ring3_writes_fault(vm: Vm) -> None:
    handle = vm.mm.create_section(PAGE, CachingType.CACHED, PAGE_READONLY).hPhysicalMemoryObject
    try:
        k = vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, PAGE)
        u = vm.mm.DxgkCbMapPhysicalMemory(handle, USER, 0, PAGE)
        _check_view(vm, handle, k.pMappedAddress, PAGE, 0, writable=False)
        _check_view(vm, handle, u.pMappedAddress, PAGE, 0, user=True, writable=False)
        assert vm.mm.user_probe_read(u.pMappedAddress).completed
        write = vm.mm.user_probe_write(u.pMappedAddress, 1)
        assert not write.completed and write.vector == 14 and write.error & 0x7 == 0x7, "P, W, U/S"
        for m in (k, u):
            vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
    finally:
        vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


def test_12_4_contiguous_honours_its_address_limits(vm: Vm) -> None:
    result = vm.mm.create_contiguous(2 * PAGE, CachingType.CACHED, lowest=0x100_0000, highest=0x1FF_FFFF,
                                     boundary=0x2000)
    assert result.status == STATUS_SUCCESS
    pfns = vm.mm.dxgk_object_info(result.hPhysicalMemoryObject).pfns
    assert pfns[0] >= 0x1000 and pfns[1] <= 0x1FFF and pfns[0] % 2 == 0, "within limits, not crossing 8 KiB"
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(result.hPhysicalMemoryObject)


def test_12_4_mdl_honours_its_address_limits(vm: Vm) -> None:
    result = vm.mm.create_mdl(3 * PAGE, CachingType.CACHED, low=0x100_0000, high=0x17F_FFFF)
    assert result.status == STATUS_SUCCESS
    pfns = vm.mm.dxgk_object_info(result.hPhysicalMemoryObject).pfns
    assert all(0x1000 <= pfn <= 0x17FF for pfn in pfns)
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(result.hPhysicalMemoryObject)


@pytest.mark.parametrize(("size", "kind", "cache", "status"), [
    (0, PhysicalMemoryType.MDL, CachingType.CACHED, STATUS_INVALID_PARAMETER),
    (PAGE, 4, CachingType.CACHED, STATUS_INVALID_PARAMETER),
    (PAGE, PhysicalMemoryType.MDL, 3, STATUS_INVALID_PARAMETER),
    (1 << 62, PhysicalMemoryType.MDL, CachingType.CACHED, STATUS_INSUFFICIENT_RESOURCES),
    (1 << 62, PhysicalMemoryType.CONTIGUOUS_MEMORY, CachingType.CACHED, STATUS_INSUFFICIENT_RESOURCES),
    (0xFFFF_FFFF_FFFF_FFFF, PhysicalMemoryType.MDL, CachingType.CACHED, STATUS_INVALID_PARAMETER),
])
def test_12_4_create_refuses_bad_input(vm: Vm, size: int, kind: int, cache: int, status: int) -> None:
    result = vm.mm.DxgkCbCreatePhysicalMemoryObject(0, size, kind, cache, 0, HIGHEST_ADDRESS)
    assert result.status == status and result.hPhysicalMemoryObject == 0


def test_12_4_mdl_outside_ram_fails_all_or_nothing(vm: Vm) -> None:
    free = vm.mm.frame_stats().free
    result = vm.mm.create_mdl(PAGE * 4, CachingType.CACHED, low=1 << 50, high=(1 << 51) - 1)
    assert result.status == STATUS_INSUFFICIENT_RESOURCES
    assert vm.mm.frame_stats().free == free, "no frame kept from a failed create"


@pytest.mark.parametrize(("access", "offset", "size"), [
    (2, 0, PAGE),
    (KERNEL, 0, 0),
    (KERNEL, 0, 3 * PAGE + 1),
    (KERNEL, 3 * PAGE, 1),
    (KERNEL, 0x10, 0xFFFF_FFFF_FFFF_FFF8),
])
def test_12_4_map_refuses_bad_input(vm: Vm, contiguous_3: int, access: int, offset: int, size: int) -> None:
    m = vm.mm.DxgkCbMapPhysicalMemory(contiguous_3, access, offset, size)
    assert m.status == STATUS_INVALID_PARAMETER and m.pMappedAddress == 0
    assert vm.mm.dxgk_object_info(contiguous_3).views == 0


def test_12_4_map_with_a_stale_or_foreign_handle_is_status_invalid_handle(vm: Vm) -> None:
    handle = _create(vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)
    for bad in (handle, 0, vm.mm.kernel_info().data_start):
        assert vm.mm.DxgkCbMapPhysicalMemory(bad, KERNEL, 0, PAGE).status == STATUS_INVALID_HANDLE
        assert vm.mm.DxgkCbOpenPhysicalMemoryObject(bad, ADAPTER).status == STATUS_INVALID_HANDLE


def test_12_4_destroy_twice_bugchecks_0xc4_0x1000(fresh_vm: Vm) -> None:
    handle = _create(fresh_vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    fresh_vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, DXGK_INVALID_HANDLE, handle, 0, 0):
        fresh_vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


def test_12_4_unmap_with_a_stale_handle_bugchecks_0xc4_0x1000(fresh_vm: Vm) -> None:
    handle = _create(fresh_vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    fresh_vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, DXGK_INVALID_HANDLE, handle, 0, 0):
        fresh_vm.mm.DxgkCbUnmapPhysicalMemory(handle, SYSTEM_PTE_BASE, PAGE)


def test_12_4_close_of_an_unopened_adapter_object_bugchecks_0xc4_0x1000(fresh_vm: Vm) -> None:
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, DXGK_INVALID_HANDLE, 0x1234, 0, 0):
        fresh_vm.mm.DxgkCbClosePhysicalMemoryObject(0x1234)


def test_12_4_unmap_twice_bugchecks_0xda_0x303(fresh_vm: Vm) -> None:
    handle = _create(fresh_vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    m = fresh_vm.mm.DxgkCbMapPhysicalMemory(handle, KERNEL, 0, PAGE)
    fresh_vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_NOT_RESERVED, m.pMappedAddress, 1, 0):
        fresh_vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)


def test_12_4_unmap_through_another_object_bugchecks_0xda_0x303(fresh_vm: Vm) -> None:
    a = _create(fresh_vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    b = _create(fresh_vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    m = fresh_vm.mm.DxgkCbMapPhysicalMemory(a, KERNEL, 0, PAGE)
    with expect_stop(SYSTEM_PTE_MISUSE, RELEASE_NOT_RESERVED, m.pMappedAddress, 1, 0):
        fresh_vm.mm.DxgkCbUnmapPhysicalMemory(b, m.pMappedAddress, m.Size)


def _create_map_unmap_destroy(vm: Vm) -> tuple[int, dict[str, int], dict[str, int]]:
    handle = _create(vm, PhysicalMemoryType.MDL, 8 * PAGE, CachingType.CACHED)
    m = vm.mm.DxgkCbMapPhysicalMemory(handle, USER, 0, PAGE)
    during = vm.mm.outstanding()
    vm.mm.DxgkCbUnmapPhysicalMemory(handle, m.pMappedAddress, m.Size)
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)
    return handle, during, vm.mm.outstanding()


def test_12_4_destroy_frees_the_frames_and_leak_counts_return(vm: Vm) -> None:
    _create_map_unmap_destroy(vm)  # the pool's first page and the user half's tables stay: warm them up
    before = vm.mm.frame_stats().free
    handle, during, after = _create_map_unmap_destroy(vm)
    assert during["dxgk_objects"] == after["dxgk_objects"] + 1
    assert during["dxgk_mappings"] == after["dxgk_mappings"] + 1
    assert vm.mm.frame_stats().free == before, "the object's 8 frames came back"
    with pytest.raises(Exception, match="no live DXGK object"):
        vm.mm.dxgk_object_info(handle)


def test_12_4_mdl_passes_its_flags_to_mm_allocate_pages_for_mdl_ex(vm: Vm) -> None:
    """Mdl.Flags reach MmAllocatePagesForMdlEx: REQUIRE_CONTIGUOUS_CHUNKS (0x20) with no SkipBytes gives
    one physically contiguous run; a flag it does not know fails the create."""
    result = vm.mm.create_mdl(6 * PAGE, CachingType.CACHED, flags=0x20)
    assert result.status == STATUS_SUCCESS
    pfns = vm.mm.dxgk_object_info(result.hPhysicalMemoryObject).pfns
    assert pfns == tuple(range(pfns[0], pfns[0] + 6))
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(result.hPhysicalMemoryObject)
    assert vm.mm.create_mdl(PAGE, CachingType.CACHED, flags=0x8000_0000).status == STATUS_INSUFFICIENT_RESOURCES


@pytest.mark.parametrize(("base", "size"), [(IO_BASE, 1 << 52), (1 << 52, PAGE), (0xFFFF_FFFF_FFFF_F000, PAGE)])
def test_12_4_io_space_beyond_the_physical_address_width_fails(vm: Vm, base: int, size: int) -> None:
    result = vm.mm.create_io_space(size, CachingType.NON_CACHED, base)
    assert result.status == STATUS_INVALID_PARAMETER and result.hPhysicalMemoryObject == 0


def test_12_4_open_without_an_adapter_fails(vm: Vm) -> None:
    handle = _create(vm, PhysicalMemoryType.MDL, PAGE, CachingType.CACHED)
    assert vm.mm.DxgkCbOpenPhysicalMemoryObject(handle, 0).status == STATUS_INVALID_PARAMETER
    vm.mm.DxgkCbDestroyPhysicalMemoryObject(handle)


def test_12_4_destroy_with_a_foreign_adapter_object_bugchecks_0xc4_0x1000(fresh_vm: Vm) -> None:
    a = fresh_vm.mm.create_mdl(PAGE, CachingType.CACHED, adapter=ADAPTER)
    b = fresh_vm.mm.create_mdl(PAGE, CachingType.CACHED, adapter=OTHER_ADAPTER)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, DXGK_INVALID_HANDLE, b.hAdapterMemoryObject, 0, 0):
        fresh_vm.mm.DxgkCbDestroyPhysicalMemoryObject(a.hPhysicalMemoryObject, b.hAdapterMemoryObject)
