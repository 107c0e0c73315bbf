"""SMP guests (docs/smp.md): every CPU the config asks for comes up on the kernel's one set of tables
with stacks of its own, answers the requests sent to it (`cpu=K`), keeps its own IRQL, and a stop on
any CPU names that CPU and freezes the others first. What a CPU says of itself is checked against
QEMU's view of its vCPU, found by APIC ID."""

from __future__ import annotations

from itertools import pairwise

import pytest

from harness.agent.codec import Response
from harness.ddi.irql import DISPATCH_LEVEL, HIGH_LEVEL, PASSIVE_LEVEL
from harness.ddi.nt import DRIVER_VERIFIER_DETECTED_VIOLATION, PAGE_FAULT_IN_NONPAGED_AREA, VERIFIER_API_WRONG_IRQL
from harness.ddi.smp import CpuInfo
from harness.testing import expect_stop
from harness.verify import CpuState
from harness.vm import Vm

PAGE = 0x1000
UNMAPPED_SYSTEM_PTE = 0xFFFF_F980_0000_0000 + 0x10_0000 * 0x1000 - 0x1000  # past the 22000 system PTEs
CR0_CD_NW = 0x6000_0000


def cpu_infos(vm: Vm) -> list[CpuInfo]:
    return [vm.mm.on_cpu(k).cpu_info() for k in range(vm.vcpus)]


def qemu_cpu_index_by_apic_id(vm: Vm) -> dict[int, int]:
    """QEMU's vCPUs by the APIC ID it gave each (QOM property apic-id), as QEMU numbers them."""
    cpus = vm.qemu.command("query-cpus-fast")
    assert isinstance(cpus, list)
    found = {}
    for c in cpus:
        apic_id = vm.qemu.command("qom-get", path=c["qom-path"], property="apic-id")
        assert isinstance(apic_id, int), apic_id
        found[apic_id] = int(c["cpu-index"])
    return found


def vcpu_state_of(vm: Vm, info: CpuInfo, states: tuple[CpuState, ...]) -> CpuState:
    index = qemu_cpu_index_by_apic_id(vm)[info.apic_id]
    return next(s for s in states if s.index == index)


def test_every_cpu_comes_up_and_reports_its_own_apic_id_stack_and_per_cpu_data(vm: Vm) -> None:
    assert vm.vcpus == vm.config.smp
    infos = cpu_infos(vm)
    assert [i.cpu for i in infos] == list(range(vm.vcpus)), "each request ran on the CPU it named"
    assert all(i.cpus == vm.vcpus and i.online == (1 << vm.vcpus) - 1 for i in infos)
    assert sorted(i.apic_id for i in infos) == sorted(qemu_cpu_index_by_apic_id(vm)), \
        "every vCPU QEMU has answered once, with its own APIC ID"
    assert len({i.gs_base for i in infos}) == vm.vcpus, "per-CPU data of its own (GS base)"
    by_base = sorted(infos, key=lambda i: i.stack_base)
    for below, above in pairwise(by_base):
        assert below.stack_top < above.stack_base, "kernel stacks do not overlap"
    for i in infos:
        assert i.stack_base <= i.stack_pointer < i.stack_top, f"CPU {i.cpu} runs on its own stack"
        vm.verify.assert_mapped(i.stack_base, i.stack_top - i.stack_base, writable=True, executable=False)
        vm.verify.assert_unmapped(i.stack_base - PAGE, PAGE)  # the guard page below each stack


def test_what_each_cpu_reports_is_what_qemu_shows_for_its_vcpu(vm: Vm) -> None:
    states = vm.verify.cpu_states()  # the window itself checks that every vCPU runs on one CR3
    bsp = states[0]
    for k in range(vm.vcpus):
        mm = vm.mm.on_cpu(k)
        info, kernel = mm.cpu_info(), mm.kernel_info()
        state = vcpu_state_of(vm, info, states)
        assert (state.cr0, state.cr3, state.cr4, state.efer) == (kernel.cr0, kernel.cr3, kernel.cr4, kernel.efer)
        assert (state.cr3, state.cr4) == (info.cr3, info.cr4)
        assert state.mode is not None and state.mode.levels == vm.config.paging_levels
        assert (state.cr0, state.cr4, state.efer) == (bsp.cr0, bsp.cr4, bsp.efer), \
            f"CPU {k} is set up as the BSP is (CR4 and EFER features, caches on)"
        assert not state.cr0 & CR0_CD_NW
        assert kernel.pat == vm.mm.kernel_info().pat


@pytest.mark.requires(smp=2)
def test_irql_is_per_cpu_raising_it_on_cpu_1_leaves_cpu_0_at_passive(vm: Vm) -> None:
    cpu1 = vm.mm.on_cpu(1)
    qemu = qemu_cpu_index_by_apic_id(vm)
    q0, q1 = qemu[vm.mm.cpu_info().apic_id], qemu[cpu1.cpu_info().apic_id]
    assert cpu1.KeRaiseIrql(DISPATCH_LEVEL) == PASSIVE_LEVEL
    assert cpu1.KeGetCurrentIrql() == DISPATCH_LEVEL
    assert vm.mm.KeGetCurrentIrql() == PASSIVE_LEVEL
    assert vm.qemu.task_priority(q1) >> 4 == DISPATCH_LEVEL, "CPU 1's CR8, as QEMU's TPR of its vCPU"
    assert vm.qemu.task_priority(q0) >> 4 == PASSIVE_LEVEL
    outstanding = vm.mm.outstanding()
    assert (outstanding["irql"], outstanding["irql_cpu1"]) == (PASSIVE_LEVEL, DISPATCH_LEVEL)
    reservation = vm.mm.MmAllocateMappingAddress(PAGE, "Irq1")
    assert reservation, "CPU 0 at PASSIVE may call an APC_LEVEL DDI while CPU 1 is at DISPATCH"
    vm.mm.MmFreeMappingAddress(reservation, "Irq1")
    cpu1.KeLowerIrql(PASSIVE_LEVEL)
    assert vm.mm.outstanding()["irql_cpu1"] == PASSIVE_LEVEL


@pytest.mark.requires(smp=2)
def test_a_ddi_on_cpu_1_is_checked_against_cpu_1s_irql(fresh_vm: Vm) -> None:
    cpu1 = fresh_vm.mm.on_cpu(1)
    cpu1.KeRaiseIrql(DISPATCH_LEVEL)
    with expect_stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, DISPATCH_LEVEL) as stop:
        cpu1.MmAllocateMappingAddress(PAGE, "Irq3")
    assert stop.record.cpu == 1


@pytest.mark.requires(smp=2)
def test_an_ap_at_high_level_still_serves_its_requests(vm: Vm) -> None:
    """The wake-up IPI is masked at HIGH_LEVEL: the AP polls for work instead of halting."""
    last = vm.mm.on_cpu(vm.vcpus - 1)
    va = vm.mm.kernel_info().text_start
    with last.at_irql(HIGH_LEVEL):
        for _ in range(5):
            assert last.KeGetCurrentIrql() == HIGH_LEVEL
            assert last.MmGetPhysicalAddress(va) == vm.qemu.gva2gpa(va)
    assert last.KeGetCurrentIrql() == PASSIVE_LEVEL


def bad_cpu_requests(vm: Vm) -> dict[bytes, tuple[int | None, str]]:
    return {
        f"1 cpu={vm.vcpus} hello".encode(): (1, "bad-argument"),  # one past the last online CPU
        b"2 cpu=0x10 hello": (2, "bad-argument"),
        b"3 cpu=true hello": (3, "bad-argument"),  # a value, but not an integer
        b"4 cpu=99 NoSuchDdi": (4, "unknown-command"),  # the command decides first
        b"5 cpu= hello": (5, "malformed"),
        b"6 cpu=1x hello": (6, "malformed"),
        b"7 cpu=0": (7, "malformed"),  # no command
        b"8 hello cpu=0": (8, "malformed"),  # only right after the id
    }


def test_a_cpu_token_that_names_no_online_cpu_is_refused_on_both_channels(vm: Vm) -> None:
    cases = bad_cpu_requests(vm)
    for line, (request_id, kind) in cases.items():
        vm.agent.send_raw(line + b"\n")
        frame = vm.agent.read_frame(vm.timeout)
        assert isinstance(frame, Response) and (frame.request_id, frame.error_kind) == (request_id, kind), \
            f"{line!r} on COM2: {frame}"
    if vm.agent.mailbox is not None:
        for line, (request_id, kind) in cases.items():
            vm.agent.post_raw(line, request_id)
            frame = vm.agent.read_frame(vm.timeout)
            assert isinstance(frame, Response) and (frame.request_id, frame.error_kind) == (request_id, kind), \
                f"{line!r} in the mailbox: {frame}"
    assert vm.mm.on_cpu(vm.vcpus - 1).cpu_info().cpu == vm.vcpus - 1


def test_a_bugcheck_on_the_bsp_names_cpu_0(fresh_vm: Vm) -> None:
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, UNMAPPED_SYSTEM_PTE) as stop:
        fresh_vm.mm.read_va(UNMAPPED_SYSTEM_PTE, 1)
    assert stop.record.cpu == 0


@pytest.mark.requires(smp=2)
def test_a_bugcheck_on_an_ap_names_it_and_freezes_every_other_cpu_before_the_record(fresh_vm: Vm) -> None:
    last = fresh_vm.vcpus - 1
    info = fresh_vm.mm.kernel_info()
    with expect_stop(PAGE_FAULT_IN_NONPAGED_AREA, UNMAPPED_SYSTEM_PTE, 0) as stop:
        fresh_vm.mm.on_cpu(last).read_va(UNMAPPED_SYSTEM_PTE, 1)
    assert stop.record.cpu == last and info.text_start <= stop.record.rip < info.text_end
    console = fresh_vm.machine.console_log.read_text(errors="replace")
    others = fresh_vm.vcpus - 1
    assert f"CPU {last} stopped the others first: {others} of {others} froze (NMI)" in console
    assert f"cpu {last}" in console.split("*** STOP")[-1], "the STOP screen names the CPU"
