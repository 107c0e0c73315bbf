"""Guest stops and QEMU deaths are reported as what they are, promptly, with the evidence."""

import signal

import pytest

from harness.ddi.nt import PAGE_FAULT_IN_NONPAGED_AREA
from harness.errors import BugCheck, InfrastructureError, QemuDiedError
from harness.machine import STATUS_BUGCHECK
from harness.pytest_plugin import VmPool
from harness.vm import Vm

UNMAPPED_SYSTEM_VA = 0xFFFF_F980_0000_0000  # the system PTE region, never mapped at boot


def test_write_to_unmapped_address_bugchecks_0x50_and_next_test_gets_a_fresh_vm(
    fresh_vm: Vm, vm_pool: VmPool
) -> None:
    vm = fresh_vm
    assert vm.qemu.gva2gpa(UNMAPPED_SYSTEM_VA) is None
    info = vm.mm.kernel_info()
    with pytest.raises(BugCheck) as caught:
        vm.mm.write_va(UNMAPPED_SYSTEM_VA + 0x18, b"\x5a")
    record = caught.value.record
    assert record.code == PAGE_FAULT_IN_NONPAGED_AREA
    va, access, rip, kind = record.parameters
    assert va == UNMAPPED_SYSTEM_VA + 0x18
    assert access == 0x2, "P2 of 0x50 is the #PF W bit for a write (Windows 10+ x64)"
    assert info.text_start <= rip < info.text_end
    assert kind in (0x0, 0x2)
    assert (record.vector, record.cr2, record.rip) == (14, va, rip)
    assert record.error_code is not None and record.error_code & 0x2, "a write #PF has W set"
    assert "*** STOP: 0x00000050" in caught.value.console_tail
    assert vm.machine.exit_status == STATUS_BUGCHECK
    assert not vm.alive

    # Later calls on the crashed VM report the same stop instead of hanging.
    with pytest.raises(BugCheck):
        vm.mm.MmGetPhysicalAddress(info.text_start)
    # The pool hands the next test a new VM.
    _, fresh = vm_pool.get(vm.config)
    assert fresh is not vm and fresh.alive and fresh.machine.pid != vm.machine.pid
    assert fresh.mm.MmGetPhysicalAddress(info.text_start) == fresh.qemu.gva2gpa(info.text_start)


def test_sigkilled_qemu_is_an_infrastructure_error_not_a_hang(fresh_vm: Vm) -> None:
    vm = fresh_vm
    vm.machine.kill(signal.SIGKILL)
    with pytest.raises(QemuDiedError) as caught:
        vm.mm.MmGetPhysicalAddress(0xFFFF_F800_0000_0000)
    assert isinstance(caught.value, InfrastructureError)
    assert caught.value.exit_status == -signal.SIGKILL
    assert "killed by signal 9" in str(caught.value)
