"""User mode (docs/ddi/usermode.md, ddi-spec §8.7 user mappings, §13): a user address space in the lower
half, ring 3 and back, SMAP and SMEP as the hardware dictates and the stops this kernel raises for them."""

import pytest

from harness.ddi.nt import ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY, PAGE_FAULT_IN_NONPAGED_AREA
from harness.ddi.usermode import USER_PROBE_CODE_VA
from harness.oracle.paging import MemoryType
from harness.testing import expect_stop
from harness.vm import Vm

PAGE_FAULT = 14
PF_ERR_P, PF_ERR_W, PF_ERR_US, PF_ERR_ID = 0x1, 0x2, 0x4, 0x10
PF_TYPE_ACCESS_INCONSISTENT = 0xF
UNMAPPED_USER_VA = 0x0000_0000_7000_0000
PATTERN = 0x0123_4567_89AB_CDEF


def test_user_page_is_mapped_user_rw_nx_with_us_on_every_level(vm: Vm) -> None:
    page = vm.mm.user_page_allocate()
    try:
        assert page.va < 0x0000_8000_0000_0000, "user pages live in the lower half"
        walks = vm.verify.assert_mapped(page.va, 0x1000, pfns=[page.pfn], writable=True, user=True,
                                        executable=False, cache=MemoryType.WB)
        assert walks[0].pa == vm.qemu.gva2gpa(page.va)
    finally:
        vm.mm.user_page_free(page.va)
    vm.verify.assert_unmapped(page.va, 0x1000)


def test_ring3_probe_reads_what_the_host_wrote_and_writes_what_the_host_reads(vm: Vm) -> None:
    page = vm.mm.user_page_allocate()
    try:
        vm.verify.host_write(page.va + 0x18, PATTERN.to_bytes(8, "little"))
        value = int.from_bytes(vm.verify.host_read(page.va + 0x18, 8), "little")
        assert value == PATTERN
        read = vm.mm.user_probe_read(page.va + 0x18)
        assert read.completed and read.value == value
        written = vm.mm.user_probe_write(page.va + 0x40, PATTERN)
        assert written.completed
        assert vm.verify.host_read(page.va + 0x40, 8) == PATTERN.to_bytes(8, "little")
        assert vm.mm.user_probe_read(page.va + 0x40).value == PATTERN
    finally:
        vm.mm.user_page_free(page.va)


def test_ring3_fault_on_an_unmapped_user_va_comes_back_as_a_result(vm: Vm) -> None:
    for op, error in ((0, PF_ERR_US), (1, PF_ERR_US | PF_ERR_W)):
        result = vm.mm.user_probe(UNMAPPED_USER_VA, op, 1)
        assert not result.completed
        assert result.vector == PAGE_FAULT and result.address == UNMAPPED_USER_VA
        assert result.error & (PF_ERR_P | PF_ERR_W | PF_ERR_US) == error
        assert USER_PROBE_CODE_VA <= result.rip < USER_PROBE_CODE_VA + 0x1000
    assert vm.mm.MmIsAddressValid(vm.mm.kernel_info().text_start), "the kernel lives on"


def test_ring3_cannot_touch_kernel_memory(vm: Vm) -> None:
    """Kernel pages have U/S=0: ring 3 takes a protection #PF (P=1), reported, not a stop."""
    text = vm.mm.kernel_info().text_start
    result = vm.mm.user_probe_read(text)
    assert not result.completed and result.vector == PAGE_FAULT and result.address == text
    assert result.error & (PF_ERR_P | PF_ERR_US) == PF_ERR_P | PF_ERR_US


@pytest.mark.requires("smap")
def test_kernel_access_to_a_user_page_with_stac_works(vm: Vm) -> None:
    page = vm.mm.user_page_allocate()
    try:
        vm.mm.user_kernel_access(page.va + 8, True, PATTERN, stac=True)
        assert vm.verify.host_read(page.va + 8, 8) == PATTERN.to_bytes(8, "little")
        assert vm.mm.user_kernel_access(page.va + 8, False, stac=True) == PATTERN
    finally:
        vm.mm.user_page_free(page.va)


@pytest.mark.requires("smap")
@pytest.mark.parametrize("write", [False, True])
def test_kernel_access_to_a_user_page_without_stac_bugchecks_0x50_type_0xf(fresh_vm: Vm, write: bool) -> None:
    """SMAP: a #PF with P=1 on a present user page. [DECISION] 0x50(va, 0 read / 2 write, rip, 0xF)."""
    page = fresh_vm.mm.user_page_allocate()
    info = fresh_vm.mm.kernel_info()
    assert info.cr4 >> 21 & 1, "CR4.SMAP is on"
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, page.va, 2 if write else 0, None,
                     PF_TYPE_ACCESS_INCONSISTENT) as stop:
        fresh_vm.mm.user_kernel_access(page.va, write, 1, stac=False)
    assert (stop.record.error_code or 0) & (PF_ERR_P | PF_ERR_US) == PF_ERR_P, "present page, supervisor access"
    assert info.text_start <= stop.record.parameters[2] < info.text_end


@pytest.mark.requires("smep")
def test_kernel_execution_of_a_user_page_bugchecks_0xfc(fresh_vm: Vm) -> None:
    """SMEP: an instruction fetch #PF on a present user page; NT raises 0xFC(va, PTE, 0, 0)."""
    fresh_vm.mm.user_page_allocate()  # builds the user half and maps the probe
    info = fresh_vm.mm.kernel_info()
    assert info.cr4 >> 20 & 1, "CR4.SMEP is on"
    pte = fresh_vm.verify.leaf_entries(USER_PROBE_CODE_VA, 1)[0][1]
    assert pte & 0x4 and not pte >> 63, "the probe page is user and executable"
    with expect_stop(ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY, USER_PROBE_CODE_VA, pte, 0, 0) as stop:
        fresh_vm.mm.user_kernel_execute(USER_PROBE_CODE_VA)
    assert (stop.record.error_code or 0) & (PF_ERR_P | PF_ERR_ID | PF_ERR_US) == PF_ERR_P | PF_ERR_ID


def test_ring3_access_to_a_non_canonical_address_comes_back_as_gp(vm: Vm) -> None:
    """Non-canonical under 4- and 5-level paging: #GP(0) in ring 3, reported with the probe's RIP."""
    result = vm.mm.user_probe_read(0x8000_0000_0000_0000)
    assert not result.completed and result.vector == 13 and result.error == 0
    assert USER_PROBE_CODE_VA <= result.rip < USER_PROBE_CODE_VA + 0x1000


def test_us_is_set_only_on_the_path_to_the_user_region(vm: Vm) -> None:
    """U/S=1 on every level above a user page, on no top-level entry but the user region's, and nowhere
    on the way to kernel text; the probe's code page is user R X."""
    page = vm.mm.user_page_allocate()
    try:
        user_walk = vm.verify.walk(page.va)
        assert all(step.entry & 0x4 for step in user_walk.steps), user_walk.describe()
        root = user_walk.steps[0].table_pa
        top = vm.qemu.xp(root, 512)
        assert [i for i, entry in enumerate(top) if entry & 0x5 == 0x5] == [0], "only slot 0 is user"
        kernel_walk = vm.verify.walk(vm.mm.kernel_info().text_start)
        assert not any(step.entry & 0x4 for step in kernel_walk.steps), kernel_walk.describe()
        code = vm.verify.leaf_entries(USER_PROBE_CODE_VA, 1)[0][1]
        assert code & 0x7 == 0x5 and not code >> 63, "present, read-only, user, executable"
    finally:
        vm.mm.user_page_free(page.va)
