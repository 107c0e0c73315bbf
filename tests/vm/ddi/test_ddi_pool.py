"""Pool (ddi-spec §11): ExAllocatePoolWithTag, ExAllocatePool2, ExFreePoolWithTag, ExFreePool.

Every block is checked from the host: its pages' leaf PTEs (present, RW, kernel, NX unless the
pool type is executable, write-back), the POOL_HEADER bytes in front of a small block as guest RAM
holds them, and the per-tag byte counts of the `outstanding` command.
"""

from __future__ import annotations

import struct

import pytest

from harness.ddi.base import PAGE_SIZE, pool_tag
from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL
from harness.ddi.nt import (
    BAD_POOL_CALLER,
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    KMODE_EXCEPTION_NOT_HANDLED,
    STATUS_INSUFFICIENT_RESOURCES,
)
from harness.ddi.pool import (
    NON_PAGED_POOL,
    NON_PAGED_POOL_NX,
    PAGED_POOL,
    POOL_FLAG_CACHE_ALIGNED,
    POOL_FLAG_NON_PAGED,
    POOL_FLAG_NON_PAGED_EXECUTE,
    POOL_FLAG_PAGED,
    POOL_FLAG_RAISE_ON_FAILURE,
    POOL_FLAG_RESERVED1,
    POOL_FLAG_SESSION,
    POOL_FLAG_SPECIAL_POOL,
    POOL_FLAG_UNINITIALIZED,
    POOL_FLAG_USE_QUOTA,
)
from harness.oracle.paging import MemoryType
from harness.testing import expect_stop
from harness.vm import Vm

EFER_NXE = 1 << 11
SIZES = [1, 15, 16, 17, 0xFF0, 0x1000, 0x1001, 0x3000]
POOL_UNIT = 16
SMALL_MAX = 254 * POOL_UNIT  # a block is at most 255 units, header included
HEADER_POOL_TYPE = {NON_PAGED_POOL: 1, NON_PAGED_POOL_NX: 2, PAGED_POOL: 3}  # [DECISION] docs/ddi/pool.md


def tag_key(tag: str) -> str:
    return f"pool_tag_{pool_tag(tag):08x}"


def charged(size: int) -> int:
    """What the pool charges a tag: whole 16-byte units below the big-block threshold, else whole pages."""
    if size <= SMALL_MAX:
        return -(-size // POOL_UNIT) * POOL_UNIT
    return -(-size // PAGE_SIZE) * PAGE_SIZE


def check_block(vm: Vm, va: int, size: int, pool_type: int, tag: str) -> None:
    """Alignment, page crossing, MmIsAddressValid, the leaf PTEs and the POOL_HEADER, all from the host."""
    assert va != 0, f"{size} bytes of pool type {pool_type} failed"
    if size < PAGE_SIZE:
        assert va % POOL_UNIT == 0, f"{va:#x}: a block below a page is 16-byte aligned"
        assert va // PAGE_SIZE == (va + size - 1) // PAGE_SIZE, f"[{va:#x}, +{size:#x}) crosses a page"
    else:
        assert va % PAGE_SIZE == 0, f"{va:#x}: a block of a page or more is page aligned"
    for offset in sorted({*range(0, size, PAGE_SIZE), size - 1}):
        assert vm.mm.MmIsAddressValid(va + offset) is True, f"{va + offset:#x}"
    nx_possible = bool(vm.mm.kernel_info().efer & EFER_NXE)
    executable = pool_type == NON_PAGED_POOL or not nx_possible
    vm.verify.assert_mapped(va, size, writable=True, user=False, executable=executable, cache=MemoryType.WB)
    for _, entry in vm.verify.leaf_entries(va, size):
        assert bool(entry >> 63) == (not executable), f"leaf {entry:#x}: NX bit wrong for pool type {pool_type}"
    if size <= SMALL_MAX:
        header = vm.verify.host_read(va - POOL_UNIT, POOL_UNIT)
        _, _, block_size, header_type, header_tag, _ = struct.unpack("<BBBBIQ", header)
        assert block_size == 1 + -(-size // POOL_UNIT), f"header {header.hex()}: block size in 16-byte units"
        assert header_type == HEADER_POOL_TYPE[pool_type], f"header {header.hex()}: pool type"
        assert header_tag == pool_tag(tag), f"header {header.hex()}: tag"


@pytest.mark.parametrize("pool_type", [NON_PAGED_POOL_NX, NON_PAGED_POOL, PAGED_POOL])
def test_11_01_sizes_are_aligned_never_cross_a_page_and_are_valid(vm: Vm, pool_type: int) -> None:
    before = vm.mm.outstanding()
    blocks = []
    try:
        for size in SIZES:
            va = vm.mm.ExAllocatePoolWithTag(pool_type, size, "Szs1")
            blocks.append(va)
            check_block(vm, va, size, pool_type, "Szs1")
            assert vm.mm.outstanding()[tag_key("Szs1")] == before.get(tag_key("Szs1"), 0) + sum(
                charged(s) for s in SIZES[: len(blocks)]), "per-tag accounting"
    finally:
        for va in blocks:
            vm.mm.ExFreePoolWithTag(va, "Szs1")
    after = vm.mm.outstanding()
    assert after.get(tag_key("Szs1"), 0) == before.get(tag_key("Szs1"), 0)
    assert after["pool_bytes"] == before["pool_bytes"]
    for va, size in zip(blocks, SIZES, strict=True):
        if size >= PAGE_SIZE:
            vm.verify.assert_unmapped(va, size)


def test_11_01_accounting_is_per_tag(vm: Vm) -> None:
    before = vm.mm.outstanding()
    a = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 100, "TgA1")
    b = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, 0x2000, "TgB1")
    try:
        now = vm.mm.outstanding()
        assert now[tag_key("TgA1")] == before.get(tag_key("TgA1"), 0) + charged(100)
        assert now[tag_key("TgB1")] == before.get(tag_key("TgB1"), 0) + 0x2000
        assert now["pool_bytes"] == before["pool_bytes"] + charged(100) + 0x2000
    finally:
        vm.mm.ExFreePoolWithTag(a, "TgA1")
        now = vm.mm.outstanding()
        assert now.get(tag_key("TgA1"), 0) == before.get(tag_key("TgA1"), 0)
        assert now[tag_key("TgB1")] == before.get(tag_key("TgB1"), 0) + 0x2000, "freeing A credits only A"
        vm.mm.ExFreePool(b)


@pytest.mark.parametrize("size", [64, 0x2000])
def test_11_02_pool2_returns_zeroed_memory(vm: Vm, size: int) -> None:
    """The same first-fit block comes back, filled with 0xCC while it was free: Pool2 zeroes it."""
    first = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "Zro1")
    vm.verify.guest_write(first, b"\xcc" * size)
    vm.mm.ExFreePoolWithTag(first, "Zro1")
    if size < PAGE_SIZE:
        assert vm.verify.host_read(first, size) == b"\xcc" * size, "a freed small block keeps its bytes"
    va = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, size, "Zro1")
    try:
        assert va == first, "first fit hands the freed block out again"
        check_block(vm, va, size, NON_PAGED_POOL_NX, "Zro1")
        assert vm.verify.host_read(va, size) == bytes(size)
    finally:
        vm.mm.ExFreePool(va)


def test_11_02_pool2_uninitialized_leaves_old_contents(vm: Vm) -> None:
    first = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 64, "Uni1")
    vm.verify.guest_write(first, b"\xcc" * 64)
    vm.mm.ExFreePoolWithTag(first, "Uni1")
    va = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_UNINITIALIZED, 64, "Uni1")
    try:
        assert va == first
        assert vm.verify.host_read(va, 64) == b"\xcc" * 64, "POOL_FLAG_UNINITIALIZED skips the zeroing"
    finally:
        vm.mm.ExFreePool(va)


@pytest.mark.parametrize(("flags", "pool_type"), [(POOL_FLAG_NON_PAGED, NON_PAGED_POOL_NX),
                                                  (POOL_FLAG_NON_PAGED_EXECUTE, NON_PAGED_POOL),
                                                  (POOL_FLAG_PAGED, PAGED_POOL),
                                                  (POOL_FLAG_NON_PAGED | POOL_FLAG_SPECIAL_POOL, NON_PAGED_POOL_NX)])
def test_11_02_pool2_flags_choose_the_pool(vm: Vm, flags: int, pool_type: int) -> None:
    for size in (48, 0x1800):
        va = vm.mm.ExAllocatePool2(flags, size, "Flg1")
        try:
            check_block(vm, va, size, pool_type, "Flg1")
        finally:
            vm.mm.ExFreePoolWithTag(va, "Flg1")


def test_11_02_pool2_cache_aligned_is_page_aligned(vm: Vm) -> None:
    va = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_CACHE_ALIGNED, 40, "Cal1")
    try:
        assert va != 0 and va % PAGE_SIZE == 0
        vm.verify.assert_mapped(va, 40, writable=True)
    finally:
        vm.mm.ExFreePool(va)


def test_11_03_pool2_tag_zero_gives_null(vm: Vm) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, 64, 0) == 0
    assert vm.mm.outstanding() == before


@pytest.mark.parametrize("flags", [0, POOL_FLAG_PAGED | POOL_FLAG_NON_PAGED,
                                   POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE,
                                   POOL_FLAG_UNINITIALIZED, POOL_FLAG_NON_PAGED | POOL_FLAG_RESERVED1,
                                   POOL_FLAG_NON_PAGED | POOL_FLAG_USE_QUOTA, POOL_FLAG_NON_PAGED | POOL_FLAG_SESSION,
                                   POOL_FLAG_NON_PAGED | 0x8000_0000])
def test_11_04_pool2_invalid_flags_give_null(vm: Vm, flags: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.ExAllocatePool2(flags, 64, "Bad1") == 0, f"flags {flags:#x}"
    assert vm.mm.outstanding() == before


def test_11_04_unknown_optional_flags_are_ignored(vm: Vm) -> None:
    va = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED | 0x8000_0000_0000_0000, 64, "Opt1")
    assert va != 0
    vm.mm.ExFreePool(va)


@pytest.mark.parametrize("size", [0x10_0000_0000, 0xFFFF_FFFF_FFFF_F000])
def test_11_huge_sizes_give_null(vm: Vm, size: int) -> None:
    before = vm.mm.outstanding()
    assert vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "Hug1") == 0
    assert vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, size, "Hug1") == 0
    assert vm.mm.outstanding() == before


def test_11_unknown_pool_type_gives_null(vm: Vm) -> None:
    for pool_type in (2, 3, 4, 7, 513):
        assert vm.mm.ExAllocatePoolWithTag(pool_type, 64, "Typ1") == 0, f"type {pool_type}"


def test_11_raise_on_failure_raises_insufficient_resources(fresh_vm: Vm) -> None:
    info = fresh_vm.mm.kernel_info()
    with expect_stop(KMODE_EXCEPTION_NOT_HANDLED, STATUS_INSUFFICIENT_RESOURCES) as stop:
        fresh_vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_RAISE_ON_FAILURE, 0x10_0000_0000, "Rai1")
    assert info.text_start <= stop.record.parameters[1] < info.text_end, "P2 is the caller"


@pytest.mark.parametrize("size", [48, 0x2000])
def test_11_05_wrong_tag_free_bugchecks_0xc2_0x0a(fresh_vm: Vm, size: int) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "Own1")
    with expect_stop(BAD_POOL_CALLER, 0x0A, va, pool_tag("Own1"), pool_tag("Oth1")):
        fresh_vm.mm.ExFreePoolWithTag(va, "Oth1")


@pytest.mark.parametrize("size", [48, 0x2000])
def test_11_06_exfreepool_frees_whatever_the_tag(vm: Vm, size: int) -> None:
    before = vm.mm.outstanding()
    for tag in ("Any1", "Zz9~"):
        va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, tag)
        assert va != 0
        vm.mm.ExFreePool(va)
        assert vm.mm.outstanding().get(tag_key(tag), 0) == before.get(tag_key(tag), 0)
        if size >= PAGE_SIZE:
            vm.verify.assert_unmapped(va, size)


def test_11_06_exfreepoolwithtag_tag_zero_skips_the_check(vm: Vm) -> None:
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 32, "Tz01")
    vm.mm.ExFreePoolWithTag(va, 0)


def test_11_07_double_free_of_a_small_block_bugchecks_0xc2_0x07(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 48, "Dbl1")
    fresh_vm.mm.ExFreePoolWithTag(va, "Dbl1")
    header = int.from_bytes(fresh_vm.verify.host_read(va - POOL_UNIT, 8), "little")
    with expect_stop(BAD_POOL_CALLER, 0x07, 0, header, va):
        fresh_vm.mm.ExFreePoolWithTag(va, "Dbl1")


def test_11_07_double_free_of_a_big_block_bugchecks_0xc2_0x07(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x2000, "Dbl2")
    fresh_vm.mm.ExFreePool(va)
    fresh_vm.verify.assert_unmapped(va, 0x2000)
    with expect_stop(BAD_POOL_CALLER, 0x07, 0, 0, va):
        fresh_vm.mm.ExFreePool(va)


def test_11_08_paged_allocation_at_dispatch_bugchecks_0xc2_0x08(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(BAD_POOL_CALLER, 0x08, DISPATCH_LEVEL, PAGED_POOL, 64):
        fresh_vm.mm.ExAllocatePoolWithTag(PAGED_POOL, 64, "Irq1")


def test_11_08_paged_pool2_at_dispatch_bugchecks_0xc2_0x08(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(BAD_POOL_CALLER, 0x08, DISPATCH_LEVEL, PAGED_POOL, 0x3000):
        fresh_vm.mm.ExAllocatePool2(POOL_FLAG_PAGED, 0x3000, "Irq2")


def test_11_08_nonpaged_allocation_at_high_level_bugchecks_0xc2_0x08(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(BAD_POOL_CALLER, 0x08, HIGH_LEVEL, NON_PAGED_POOL_NX, 32):
        fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 32, "Irq3")


def test_11_08_allowed_irqls_allocate_and_free(vm: Vm) -> None:
    with vm.mm.at_irql(DISPATCH_LEVEL):
        va = vm.mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, 100, "Irq4")
        assert va != 0
        vm.mm.ExFreePoolWithTag(va, "Irq4")
    with vm.mm.at_irql(APC_LEVEL):
        va = vm.mm.ExAllocatePoolWithTag(PAGED_POOL, 100, "Irq4")
        assert va != 0
        vm.mm.ExFreePoolWithTag(va, "Irq4")


@pytest.mark.parametrize("size", [48, 0x2000])
def test_11_09_nonpaged_free_at_high_level_bugchecks_0xc2_0x09(fresh_vm: Vm, size: int) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "Irq5")
    fresh_vm.mm.KeRaiseIrql(HIGH_LEVEL)
    with expect_stop(BAD_POOL_CALLER, 0x09, HIGH_LEVEL, NON_PAGED_POOL, va):
        fresh_vm.mm.ExFreePoolWithTag(va, "Irq5")


def test_11_09_paged_free_at_dispatch_bugchecks_0xc2_0x09(fresh_vm: Vm) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(PAGED_POOL, 48, "Irq6")
    fresh_vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(BAD_POOL_CALLER, 0x09, DISPATCH_LEVEL, PAGED_POOL, va):
        fresh_vm.mm.ExFreePool(va)


@pytest.mark.parametrize("pool_type", [NON_PAGED_POOL_NX, PAGED_POOL])
def test_11_zero_bytes_is_a_verifier_violation(fresh_vm: Vm, pool_type: int) -> None:
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x00, 0, pool_type, 0):
        fresh_vm.mm.ExAllocatePoolWithTag(pool_type, 0, "Zer1")


@pytest.mark.parametrize(("tag", "subcode"), [(0, 0x9B), ("BIG", 0x9C)])
def test_11_reserved_tags_bugcheck_0xc2(fresh_vm: Vm, tag: str | int, subcode: int) -> None:
    info = fresh_vm.mm.kernel_info()
    with expect_stop(BAD_POOL_CALLER, subcode, NON_PAGED_POOL_NX, 80) as stop:
        fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 80, tag)
    assert info.text_start <= stop.record.parameters[3] < info.text_end, "P4 is the caller"


def test_11_tag_without_letters_or_digits_bugchecks_0xc2_0x9d(fresh_vm: Vm) -> None:
    with expect_stop(BAD_POOL_CALLER, 0x9D, pool_tag("!-+ "), NON_PAGED_POOL_NX):
        fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 80, "!-+ ")


def test_11_free_of_a_user_address_bugchecks_0xc2_0x40(fresh_vm: Vm) -> None:
    system_start = 0xFFFF_8000_0000_0000 if fresh_vm.config.paging_levels == 4 else 0xFF00_0000_0000_0000
    with expect_stop(BAD_POOL_CALLER, 0x40, 0x1000, system_start, 0):
        fresh_vm.mm.ExFreePool(0x1000)


def test_11_free_outside_every_pool_bugchecks_0xc2_0x42(fresh_vm: Vm) -> None:
    text = fresh_vm.mm.kernel_info().text_start
    with expect_stop(BAD_POOL_CALLER, 0x42, text + 0x40, 0, 0):
        fresh_vm.mm.ExFreePool(text + 0x40)


@pytest.mark.parametrize("offset", [0x10, 0x8, 0x1000])
def test_11_free_inside_a_block_bugchecks_0xc2_0x46(fresh_vm: Vm, offset: int) -> None:
    va = fresh_vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 0x2000 if offset == 0x1000 else 0x100, "Mid1")
    with expect_stop(BAD_POOL_CALLER, 0x46, va + offset, 0, 0):
        fresh_vm.mm.ExFreePool(va + offset)
