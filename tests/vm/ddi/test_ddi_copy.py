"""MmCopyMemory (ddi-spec §6): physical and virtual sources, failures that never stop the system.

The agent copies into a nonpaged-pool target; the host reads the target back through its own page
walk and compares it with the source as guest RAM holds it. After every physical copy the host
checks that the copy PTE is empty again (PTE zero, gva2gpa unmapped).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.ddi.base import PAGE_SIZE
from harness.ddi.copy import MM_COPY_MEMORY_PHYSICAL, MM_COPY_MEMORY_VIRTUAL
from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.nt import (
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    STATUS_INVALID_ADDRESS,
    STATUS_INVALID_PARAMETER_4,
    STATUS_SUCCESS,
)
from harness.ddi.pool import NON_PAGED_POOL_NX
from harness.testing import expect_stop
from harness.vm import Vm

LOCAL_APIC_PA = 0xFEE0_0000
HAL_VA = 0xFFFF_FFFF_FFC0_0000  # the local APIC's registers, mapped UC (layout.h)
UNMAPPED_SYSTEM_PTE = 0xFFFF_F980_0000_0000 + 0x10_0000 * 0x1000 - 0x1000  # past the 22000 system PTEs
FILL = 0xCC


class Target:
    """A nonpaged-pool buffer MmCopyMemory writes into, prefilled so untouched bytes show."""

    def __init__(self, vm: Vm, size: int) -> None:
        self.vm, self.size = vm, size
        self.va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "CpyT")
        assert self.va != 0
        vm.verify.guest_write(self.va, bytes([FILL]) * size)

    def read(self, length: int | None = None) -> bytes:
        return self.vm.verify.host_read(self.va, self.size if length is None else length)

    def untouched(self) -> bool:
        return self.read() == bytes([FILL]) * self.size

    def free(self) -> None:
        self.vm.mm.ExFreePoolWithTag(self.va, "CpyT")


@pytest.fixture
def target(vm: Vm) -> Iterator[Target]:
    t = Target(vm, 2 * PAGE_SIZE)
    yield t
    t.free()


def assert_copy_pte_empty(vm: Vm) -> None:
    va = vm.mm.copy_pte_va()
    assert va == 0xFFFF_F700_0000_0000, "the copy window is the first page of hyperspace"
    vm.verify.assert_unmapped(va, PAGE_SIZE)
    walk = vm.verify.walk(va)
    assert walk.leaf is None
    assert vm.mm.MmIsAddressValid(va) is False


def pattern(length: int) -> bytes:
    return os.urandom(length)


def test_6_01_physical_full_page(vm: Vm, target: Target) -> None:
    source = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE_SIZE, "CpyS")
    try:
        data = pattern(PAGE_SIZE)
        vm.verify.guest_write(source, data)
        pa = vm.mm.MmGetPhysicalAddress(source)
        assert pa == vm.verify.walk(source).pa
        result = vm.mm.MmCopyMemory(target.va, pa, PAGE_SIZE, MM_COPY_MEMORY_PHYSICAL)
        assert (result.status, result.transferred) == (STATUS_SUCCESS, PAGE_SIZE)
        assert target.read(PAGE_SIZE) == data
        assert target.read()[PAGE_SIZE:] == bytes([FILL]) * PAGE_SIZE, "nothing beyond NumberOfBytes"
        assert_copy_pte_empty(vm)
    finally:
        vm.mm.ExFreePoolWithTag(source, "CpyS")


@pytest.mark.parametrize("offset", [0xF00, 0x1FF0])
def test_6_02_physical_across_a_page_boundary(vm: Vm, target: Target, offset: int) -> None:
    """The kernel image is physically contiguous (loaded at 0x200000): the copy must switch PFNs."""
    text = vm.mm.kernel_info().text_start
    pa = vm.mm.MmGetPhysicalAddress(text)
    assert vm.verify.walk(text + offset + 0x200).pa == pa + offset + 0x200, "the image is contiguous here"
    result = vm.mm.MmCopyMemory(target.va, pa + offset, 0x200, MM_COPY_MEMORY_PHYSICAL)
    assert (result.status, result.transferred) == (STATUS_SUCCESS, 0x200)
    by_qemu = b"".join(v.to_bytes(8, "little") for v in vm.qemu.xp(pa + offset, 0x200 // 8))
    assert target.read(0x200) == by_qemu
    assert_copy_pte_empty(vm)


def test_6_02_physical_of_the_physmap_spanning_several_pages(vm: Vm, target: Target) -> None:
    info = vm.mm.kernel_info()
    pa = 0x100_0000 + 0x7F0  # RAM at 16 MiB, seen through the physmap at a fixed offset
    result = vm.mm.MmCopyMemory(target.va, pa, 0x1810, MM_COPY_MEMORY_PHYSICAL)
    assert (result.status, result.transferred) == (STATUS_SUCCESS, 0x1810)
    assert target.read(0x1810) == vm.verify.host_read(info.physmap_base + pa, 0x1810)
    assert_copy_pte_empty(vm)


@pytest.mark.parametrize("pa", [LOCAL_APIC_PA, LOCAL_APIC_PA + 0x20])
def test_6_03_physical_of_mmio_fails_with_nothing_copied(vm: Vm, target: Target, pa: int) -> None:
    result = vm.mm.MmCopyMemory(target.va, pa, 0x10, MM_COPY_MEMORY_PHYSICAL)
    assert (result.status, result.transferred) == (STATUS_INVALID_ADDRESS, 0)
    assert target.untouched(), "no device register reached the target"
    assert_copy_pte_empty(vm)


def test_6_03_physical_running_from_ram_into_mmio_stops_at_the_boundary(vm: Vm, target: Target) -> None:
    """The last RAM page below a hole: frame_stats' highest PFN is RAM, the page after it is not."""
    highest = vm.mm.frame_stats().highest_pfn
    pa = (highest + 1) * PAGE_SIZE - 0x80
    result = vm.mm.MmCopyMemory(target.va, pa, 0x100, MM_COPY_MEMORY_PHYSICAL)
    assert (result.status, result.transferred) == (STATUS_INVALID_ADDRESS, 0x80)
    assert target.read(0x80) == vm.verify.host_read(vm.mm.kernel_info().physmap_base + pa, 0x80)
    assert target.read()[0x80:] == bytes([FILL]) * (target.size - 0x80)
    assert_copy_pte_empty(vm)


@pytest.mark.parametrize("length", [1, 0x123, PAGE_SIZE, PAGE_SIZE + 0x40])
def test_6_04_virtual_of_a_valid_nonpaged_buffer(vm: Vm, target: Target, length: int) -> None:
    source = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * PAGE_SIZE, "CpyS")
    try:
        data = pattern(2 * PAGE_SIZE)
        vm.verify.guest_write(source, data)
        start = 0x30 if length > PAGE_SIZE else 0
        result = vm.mm.MmCopyMemory(target.va, source + start, length, MM_COPY_MEMORY_VIRTUAL)
        assert (result.status, result.transferred) == (STATUS_SUCCESS, length)
        assert target.read(length) == data[start:start + length]
        assert target.read()[length:] == bytes([FILL]) * (target.size - length)
    finally:
        vm.mm.ExFreePoolWithTag(source, "CpyS")


def test_6_05_virtual_second_page_unmapped_stops_at_the_boundary(vm: Vm, target: Target) -> None:
    """The kernel stack's top page is mapped and the page above it is not (host walk says so)."""
    top = vm.mm.kernel_info().stack_top
    assert vm.verify.walk(top - PAGE_SIZE).pa is not None
    vm.verify.assert_unmapped(top, PAGE_SIZE)
    result = vm.mm.MmCopyMemory(target.va, top - 0x100, 0x200, MM_COPY_MEMORY_VIRTUAL)
    assert (result.status, result.transferred) == (STATUS_INVALID_ADDRESS, 0x100)
    assert target.read()[0x100:] == bytes([FILL]) * (target.size - 0x100)
    assert vm.mm.KeGetCurrentIrql() == 0, "the system runs on"


def test_6_05_virtual_second_page_freed_pool_stops_at_the_boundary(vm: Vm, target: Target) -> None:
    """A big pool block freed leaves its pages unmapped; the first page of it is re-allocated alone."""
    two = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 2 * PAGE_SIZE, "CpyS")
    vm.mm.ExFreePoolWithTag(two, "CpyS")
    one = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, PAGE_SIZE, "CpyS")
    try:
        assert one == two, "first fit hands the first page out again"
        vm.verify.assert_unmapped(one + PAGE_SIZE, PAGE_SIZE)
        data = pattern(PAGE_SIZE)
        vm.verify.guest_write(one, data)
        result = vm.mm.MmCopyMemory(target.va, one + 0x40, PAGE_SIZE, MM_COPY_MEMORY_VIRTUAL)
        assert (result.status, result.transferred) == (STATUS_INVALID_ADDRESS, PAGE_SIZE - 0x40)
        assert target.read(PAGE_SIZE - 0x40) == data[0x40:]
    finally:
        vm.mm.ExFreePoolWithTag(one, "CpyS")


@pytest.mark.parametrize("source", [UNMAPPED_SYSTEM_PTE, 0xFFFF_F980_0000_0000 + 21999 * PAGE_SIZE,
                                    0x1000, 0x0000_8000_0000_0000, 0x8000_0000_0000_0000])
def test_6_06_virtual_of_an_unmapped_or_non_canonical_va_fails_with_nothing_copied(
        vm: Vm, target: Target, source: int) -> None:
    assert vm.verify.walk(source).pa is None
    result = vm.mm.MmCopyMemory(target.va, source, 0x40, MM_COPY_MEMORY_VIRTUAL)
    assert (result.status, result.transferred) == (STATUS_INVALID_ADDRESS, 0)
    assert target.untouched()
    assert vm.mm.KeGetCurrentIrql() == 0, "the system runs on"


def test_6_06_virtual_of_an_io_space_mapping_fails(vm: Vm, target: Target) -> None:
    """The HAL maps the local APIC's registers: a system VA whose PFN is not RAM."""
    assert vm.verify.walk(HAL_VA).pa == LOCAL_APIC_PA
    result = vm.mm.MmCopyMemory(target.va, HAL_VA, 0x10, MM_COPY_MEMORY_VIRTUAL)
    assert (result.status, result.transferred) == (STATUS_INVALID_ADDRESS, 0)
    assert target.untouched()


@pytest.mark.parametrize("flags", [0, 3, 4, 0x8000_0000])
def test_6_07_bad_flags_give_invalid_parameter_4_and_write_nothing(vm: Vm, target: Target, flags: int) -> None:
    text = vm.mm.kernel_info().text_start
    result = vm.mm.MmCopyMemory(target.va, text, 0x40, flags)
    assert (result.status, result.transferred) == (STATUS_INVALID_PARAMETER_4, 0)
    assert target.untouched()


@pytest.mark.parametrize("flags", [MM_COPY_MEMORY_PHYSICAL, MM_COPY_MEMORY_VIRTUAL])
def test_6_zero_bytes_succeed_with_nothing_copied(vm: Vm, target: Target, flags: int) -> None:
    result = vm.mm.MmCopyMemory(target.va, UNMAPPED_SYSTEM_PTE, 0, flags)
    assert (result.status, result.transferred) == (STATUS_SUCCESS, 0)
    assert target.untouched()


def test_6_copies_at_apc_level(vm: Vm, target: Target) -> None:
    text = vm.mm.kernel_info().text_start
    with vm.mm.at_irql(APC_LEVEL):
        result = vm.mm.MmCopyMemory(target.va, vm.mm.MmGetPhysicalAddress(text), 0x80, MM_COPY_MEMORY_PHYSICAL)
        assert vm.mm.KeGetCurrentIrql() == APC_LEVEL, "the copy gives the caller's IRQL back"
    assert (result.status, result.transferred) == (STATUS_SUCCESS, 0x80)
    assert target.read(0x80) == vm.verify.host_read(text, 0x80)


@pytest.mark.parametrize("irql", [DISPATCH_LEVEL, HIGH_LEVEL])
def test_6_above_apc_level_bugchecks_0xc4_0xe5(fresh_vm: Vm, irql: int) -> None:
    text = fresh_vm.mm.kernel_info().text_start
    target = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x100, "CpyT")
    fresh_vm.mm.KeRaiseIrql(irql)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xE5, irql, 0, 0):
        fresh_vm.mm.MmCopyMemory(target, text, 0x10, MM_COPY_MEMORY_VIRTUAL)


def test_6_08_copy_pte_is_empty_after_many_physical_copies(vm: Vm, target: Target) -> None:
    text = vm.mm.kernel_info().text_start
    pa = vm.mm.MmGetPhysicalAddress(text)
    for k in range(8):
        result = vm.mm.MmCopyMemory(target.va, pa + k * 0x1F8, 0x300, MM_COPY_MEMORY_PHYSICAL)
        assert (result.status, result.transferred) == (STATUS_SUCCESS, 0x300)
        assert target.read(0x300) == vm.verify.host_read(text + k * 0x1F8, 0x300)
    assert_copy_pte_empty(vm)
