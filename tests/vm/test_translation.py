"""MmGetPhysicalAddress and MmIsAddressValid against QEMU's own page walker (HMP gva2gpa).

The kernel runs in the higher half on tables it built itself; every answer the agent gives is
compared with a translation QEMU computes from the vCPU's CR3 without the agent's help.
"""

from harness.guest import NON_PAGED_POOL_NX
from harness.vm import Vm

# Non-canonical under 4-level paging, 5-level paging, or both.
NON_CANONICAL = [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000, 0x0100_0000_0000_0000, 0xFEFF_FFFF_FFFF_F000,
                 0x7FFF_0000_0000_0000, 0x8000_0000_0000_0000]


def is_canonical(va: int, width: int) -> bool:
    top = va >> (width - 1)
    return top in (0, (1 << (65 - width)) - 1)


def assert_agent_matches_qemu(vm: Vm, va: int) -> int:
    agent = vm.mm.MmGetPhysicalAddress(va)
    qemu = vm.qemu.gva2gpa(va)
    assert qemu is not None, f"QEMU finds no mapping for {va:#x}, which the kernel says it uses"
    assert agent == qemu, f"MmGetPhysicalAddress({va:#x}) = {agent:#x}, QEMU gva2gpa = {qemu:#x}"
    return agent


def test_kernel_text_data_and_stack_translate_as_qemu_walks_them(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    for va in (info.text_start, info.text_start + 0x123, info.text_end - 1, info.rodata_start,
               info.data_start + 8, info.data_end - 1, info.stack_pointer, info.stack_top - 1):
        pa = assert_agent_matches_qemu(vm, va)
        assert pa != va, f"{va:#x} is identity-mapped; the kernel must run in the higher half"


def test_pool_allocations_translate_as_qemu_walks_them(vm: Vm) -> None:
    for size in (64, 0x1000, 3 * 0x1000):
        va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, "Tst1")
        assert va != 0, f"ExAllocatePoolWithTag of {size} bytes failed"
        try:
            for offset in (0, 1, min(size - 1, 0xFFF), size - 1):
                assert_agent_matches_qemu(vm, va + offset)
        finally:
            vm.mm.ExFreePoolWithTag(va, "Tst1")


def test_large_page_offsets_translate_as_qemu_walks_them(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    assert info.physmap_leaf in (0x200000, 0x40000000)
    offsets = [0, 0x1234, info.physmap_leaf - 8, info.physmap_leaf + 0x5008, info.physmap_size - 0x10]
    for offset in (o for o in offsets if o < info.physmap_size):
        va = info.physmap_base + offset
        assert assert_agent_matches_qemu(vm, va) == offset, "the physmap maps RAM at a fixed offset"


def test_boot_identity_map_is_gone(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    kernel_pa = vm.mm.MmGetPhysicalAddress(info.text_start)
    for va in (kernel_pa, 0x100000, 0x1000):
        assert vm.qemu.gva2gpa(va) is None, f"low VA {va:#x} is still mapped after the switch"
        assert vm.mm.MmGetPhysicalAddress(va) == 0
        assert vm.mm.MmIsAddressValid(va) is False


def test_non_canonical_addresses_give_zero_without_faulting(vm: Vm) -> None:
    width = 48 if vm.config.paging_levels == 4 else 57
    addresses = [va for va in NON_CANONICAL if not is_canonical(va, width)]
    assert len(addresses) >= 3
    for va in addresses:
        assert vm.mm.MmGetPhysicalAddress(va) == 0, f"{va:#x}"
        assert vm.mm.MmIsAddressValid(va) is False, f"{va:#x}"
    assert vm.alive


def test_unmapped_system_addresses_give_zero_and_invalid(vm: Vm) -> None:
    for va in (0xFFFF_F980_0000_0000, 0xFFFF_F900_0000_0000 + 0x1234, 0xFFFF_F6FB_7DBE_C000 - 0x1000_0000):
        assert vm.qemu.gva2gpa(va) is None
        assert vm.mm.MmGetPhysicalAddress(va) == 0
        assert vm.mm.MmIsAddressValid(va) is False


def test_valid_addresses_are_reported_valid(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    for va in (info.text_start, info.data_start, info.stack_pointer, info.physmap_base):
        assert vm.mm.MmIsAddressValid(va) is True


def test_top_level_table_carries_the_nt_self_map(vm: Vm) -> None:
    info = vm.mm.kernel_info()
    regs = vm.qemu.registers()
    top = regs["CR3"] & ~0xFFF & ((1 << 52) - 1)
    entry = vm.qemu.xp(top + 0x1ED * 8, 1)[0]
    assert entry & 1, "self-map entry is not present"
    assert entry & 0x000F_FFFF_FFFF_F000 == top, "slot 0x1ED does not point back to the top-level table"
    expected_base = 0xFFFF_F680_0000_0000 if info.levels == 4 else 0xFFED_0000_0000_0000
    assert info.pte_base == expected_base
    # Through the self-map the top table sees itself: its own VA translates to CR3.
    index_mask = (1 << (9 * info.levels + 3)) - 8
    pxe_self = info.pte_base
    for _ in range(info.levels - 1):
        pxe_self = info.pte_base + ((pxe_self >> 9) & index_mask)
    assert vm.qemu.gva2gpa(pxe_self) == top


def test_paging_mode_matches_the_config(vm: Vm) -> None:
    regs = vm.qemu.registers()
    la57 = bool(regs["CR4"] & (1 << 12))
    assert la57 == (vm.config.paging_levels == 5)
    assert vm.mm.kernel_info().levels == vm.config.paging_levels
    assert vm.hello["paging"] == vm.config.paging_levels
