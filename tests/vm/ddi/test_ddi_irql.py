"""IRQL on CR8 (ddi-spec §1.1, §13, §14.8): raising, lowering, and the stops NT raises for misuse."""

import pytest

from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, PASSIVE_LEVEL
from harness.ddi.nt import IRQL_NOT_GREATER_OR_EQUAL, IRQL_NOT_LESS_OR_EQUAL
from harness.guest import NON_PAGED_POOL_NX
from harness.testing import expect_stop
from harness.vm import Vm

UNMAPPED_SYSTEM_PTE = 0xFFFF_F980_0000_0000 + 0x10_0000 * 0x1000 - 0x1000  # past the 22000 system PTEs


def test_irql_starts_at_passive_and_round_trips_through_every_level(vm: Vm) -> None:
    assert vm.mm.KeGetCurrentIrql() == PASSIVE_LEVEL
    for level in (APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL):
        assert vm.mm.KeRaiseIrql(level) == PASSIVE_LEVEL
        assert vm.mm.KeGetCurrentIrql() == level
        assert vm.qemu.task_priority() >> 4 == level, "IRQL is CR8, which is TPR bits 7:4"
        vm.mm.KeLowerIrql(PASSIVE_LEVEL)
        assert vm.mm.KeGetCurrentIrql() == PASSIVE_LEVEL


def test_agent_serves_requests_at_high_level(vm: Vm) -> None:
    """COM2's interrupt arrives as ExtINT, which CR8 does not mask: the agent halts and wakes at any IRQL."""
    va = vm.mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, 64, "Irql")
    with vm.mm.at_irql(HIGH_LEVEL):
        for _ in range(20):
            assert vm.mm.MmGetPhysicalAddress(va) == vm.qemu.gva2gpa(va)
    vm.mm.ExFreePoolWithTag(va, "Irql")


def test_raising_below_the_current_irql_bugchecks_0x9(fresh_vm: Vm) -> None:
    fresh_vm.mm.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(IRQL_NOT_GREATER_OR_EQUAL, DISPATCH_LEVEL, APC_LEVEL, 0, 0):
        fresh_vm.mm.KeRaiseIrql(APC_LEVEL)


def test_lowering_above_the_current_irql_bugchecks_0xa(fresh_vm: Vm) -> None:
    with expect_stop(IRQL_NOT_LESS_OR_EQUAL, DISPATCH_LEVEL, PASSIVE_LEVEL, 0, 0):
        fresh_vm.mm.KeLowerIrql(DISPATCH_LEVEL)


@pytest.mark.parametrize("irql", [DISPATCH_LEVEL, HIGH_LEVEL])
def test_touching_an_unmapped_va_at_dispatch_or_above_bugchecks_0xa(fresh_vm: Vm, irql: int) -> None:
    info = fresh_vm.mm.kernel_info()
    fresh_vm.mm.KeRaiseIrql(irql)
    with expect_stop(IRQL_NOT_LESS_OR_EQUAL, UNMAPPED_SYSTEM_PTE + 8, irql, 0x1) as stop:
        fresh_vm.mm.write_va(UNMAPPED_SYSTEM_PTE + 8, b"\x01")
    assert info.text_start <= stop.record.parameters[3] < info.text_end, "P4 is the faulting RIP"
