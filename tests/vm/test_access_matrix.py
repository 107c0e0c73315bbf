"""The page-permission matrix (docs/access-matrix.md) on real QEMU: every pruned case built by the guest
in its own chain of entries, accessed once, and checked three ways: the host's model of the SDM (with
QEMU 7.2 TCG's named quirks), the fault the guest saw, and the entries' A/D bits read from guest RAM.

The model's choices and quirks are TCG's, so the matrix runs on TCG configs only. A config whose CPU
lacks SMEP, SMAP or 1 GiB pages runs the part of the matrix its CPU can express, and says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import pytest

from harness.errors import AgentError
from harness.matrix.cases import pruned_cases, unpruned_count
from harness.matrix.codec import CONTROL_SMEP, encode_case
from harness.matrix.model import (
    QEMU_TCG,
    SDM,
    Access,
    Case,
    Controls,
    Cpu,
    Entry,
    Expect,
    Outcome,
    Prediction,
    Quirk,
    predict,
)
from harness.matrix.runner import AccessProbe, qemu_cpu, run_matrix
from harness.vm import Vm

pytestmark = pytest.mark.requires(accelerator="tcg")

_DESCRIPTOR_REGISTER = re.compile(r"^(GDT|IDT)=\s*([0-9a-f]+) ([0-9a-f]+)", re.MULTILINE)


def _cpu(vm: Vm) -> Cpu:
    return qemu_cpu(vm)


def test_full_pruned_matrix_agrees_with_the_model(vm: Vm, record_property: Callable[[str, object], None]) -> None:
    cpu = _cpu(vm)
    levels = vm.config.paging_levels
    cases = pruned_cases(levels, cpu)
    run = run_matrix(vm, cases, cpu)
    record_property("mmhil.access_matrix", f"{run.summary()}; unpruned {unpruned_count(levels, cpu):,}")
    print(run.summary())  # what the CPU restricted the matrix to, in the captured output
    assert run.cases == len(cases) > 1000
    assert not run.disagreements, run.report(vm.artifacts / "access-matrix-disagreements.txt")


def test_matrix_on_a_cpu_without_smep_smap_or_1g_pages_leaves_them_out(vm: Vm) -> None:
    cpu = _cpu(vm)
    cases = pruned_cases(vm.config.paging_levels, cpu)
    assert any(c.controls.smep for c in cases) == cpu.smep
    assert any(c.controls.smap for c in cases) == cpu.smap
    one_g_leaves = [c for c in cases if len(c.entries) == vm.config.paging_levels - 2
                    and c.entries[-1].present and c.entries[-1].page_size]
    assert one_g_leaves, "PS in a PDPTE is always tried: a 1 GiB leaf, or without pdpe1gb TCG's quirk"
    quirk = [Quirk.PS_1G_WITHOUT_PDPE1GB in predict(c, cpu).quirks for c in one_g_leaves]
    assert any(quirk) == (not cpu.pdpe1gb)


def test_sdm_without_qemus_quirks_disagrees_exactly_on_the_quirk_cases(vm: Vm) -> None:
    """The named quirks are real: the plain SDM model disagrees with TCG on every case whose QEMU
    prediction names a quirk (reserved-bit error codes without P; 1 GiB pages without pdpe1gb), and on
    no other case, where the SDM's open choices accept what TCG does."""
    cpu = _cpu(vm)
    cases = pruned_cases(vm.config.paging_levels, cpu)
    quirky = {c for c in cases if predict(c, cpu, QEMU_TCG).quirks}
    plain = [c for c in cases if c not in quirky][::7]
    run = run_matrix(vm, [*quirky, *plain], cpu, platform=SDM)
    assert {d.case for d in run.disagreements} == quirky
    for d in run.disagreements:
        quirks = predict(d.case, cpu, QEMU_TCG).quirks
        if Quirk.RSVD_FAULT_WITHOUT_P in quirks:
            assert d.kinds == ("error code",) and d.observation.error_code == d.prediction.error_code & ~1
        else:  # the SDM: a reserved bit; TCG: a 1 GiB page, whose access may then succeed (and set D) or fault
            assert Quirk.PS_1G_WITHOUT_PDPE1GB in quirks and set(d.kinds) <= {"outcome", "error code", "D bit"}


def _ignores_cr0_wp(cpu: Cpu, case: Case) -> Prediction:
    """A deliberately wrong rule: supervisor writes to read-only pages always succeed."""
    return predict(replace(case, controls=replace(case.controls, wp=False)), cpu)


def test_a_wrong_model_rule_is_reported_case_by_case_with_case_prediction_observation_and_entries(vm: Vm) -> None:
    cpu = _cpu(vm)
    cases = [c for c in pruned_cases(vm.config.paging_levels, cpu)
             if c.controls.cpl == 0 and c.controls.access is Access.WRITE and c.controls.wp][:600]
    wp_decides = {c for c in cases if predict(c, cpu).outcome is not _ignores_cr0_wp(cpu, c).outcome}
    assert wp_decides, "the sample must hold supervisor writes that CR0.WP refuses"
    run = run_matrix(vm, cases, cpu, predictor=partial(_ignores_cr0_wp, cpu))
    assert {d.case for d in run.disagreements} == wp_decides  # every one, not just the first
    report = run.report()
    first = run.disagreements[0].describe()
    for part in ("case: ", "CR0.WP=1", "read-only", "predicted (QEMU 7.2 TCG): no fault", "observed: #PF from ring 0",
                 "error code 0x3", "built 0x", "read 0x", "outcome: predicted no fault"):
        assert part in first, f"{part!r} missing from the report:\n{first}"
    assert f"{len(wp_decides)} disagreeing" in report


def test_a_corrupted_expectation_of_the_dirty_bit_is_caught_in_guest_ram(vm: Vm) -> None:
    cpu = _cpu(vm)
    writes = [c for c in pruned_cases(vm.config.paging_levels, cpu)
              if c.controls.access is Access.WRITE and predict(c, cpu).outcome is Outcome.ALLOWED
              and not c.entries[-1].dirty][:50]

    def dirty_unchanged(case: Case) -> Prediction:
        p = predict(case, cpu)
        return replace(p, dirty=(Expect.UNCHANGED,) * len(p.dirty))

    run = run_matrix(vm, writes, cpu, predictor=dirty_unchanged)
    assert len(run.disagreements) == len(writes)
    for d in run.disagreements:
        assert d.kinds == ("D bit",)
        leaf = d.entries[-1]
        assert leaf.read & 0x40 and not leaf.built & 0x40  # set in RAM, by the CPU's walker


def _descriptor_registers(vm: Vm) -> dict[str, tuple[int, int]]:
    text = vm.qemu.hmp("info registers")
    return {name: (int(base, 16), int(limit, 16)) for name, base, limit in _DESCRIPTOR_REGISTER.findall(text)}


def test_a_batch_restores_every_register_it_changes(vm: Vm) -> None:
    """CR0.WP, CR4.SMEP/SMAP/PGE, EFER.NXE, CR3, the GDT and the IDT are the kernel's again after a
    batch that changed them (QEMU's registers, read with the guest idle)."""
    cpu = _cpu(vm)
    before, tables_before = vm.qemu.registers(), _descriptor_registers(vm)
    cases = pruned_cases(vm.config.paging_levels, cpu)
    varied = [c for c in cases if not c.controls.nxe and c.controls.cpl == 3][:5] + \
             [c for c in cases if c.controls.wp and c.controls.smap and c.controls.ac][:5]
    assert run_matrix(vm, varied, cpu).disagreements == []
    after, tables_after = vm.qemu.registers(), _descriptor_registers(vm)
    for register in ("CR0", "CR3", "CR4", "EFER"):
        assert after[register] == before[register], f"{register} {before[register]:#x} -> {after[register]:#x}"
    assert tables_after == tables_before
    text = vm.mm.kernel_info().text_start
    assert vm.verify.translate(text) is not None, "the kernel's own tables still translate"


def test_release_gives_back_every_frame(vm: Vm) -> None:
    free = vm.mm.frame_stats().free
    probe = AccessProbe(vm)
    _, values = probe.setup()
    held = values["frames"]
    assert isinstance(held, int) and held > 0
    assert vm.mm.frame_stats().free == free - held
    assert vm.mm.outstanding()["access_probe_frames"] == held
    probe.release()
    assert vm.mm.frame_stats().free == free
    assert vm.mm.outstanding()["access_probe_frames"] == 0


def _refusal(vm: Vm, batch: bytes) -> str:
    with pytest.raises(AgentError) as caught:
        vm.request("access_probe_batch", batch)
    assert caught.value.kind == "bad-argument"
    return caught.value.message


def test_malformed_batches_are_refused_with_the_reason_and_change_nothing(vm: Vm) -> None:
    cpu = _cpu(vm)
    levels = vm.config.paging_levels
    good = pruned_cases(levels, cpu)[0]
    assert "not set up" in _refusal(vm, encode_case(good))
    probe = AccessProbe(vm)
    with probe.session() as layout:
        pte = Case(levels, (*(Entry(),) * (levels - 1), Entry(reserved_large=True)), Controls(Access.READ))
        assert "bit 13 is reserved only in a PDE or PDPTE with PS=1" in _refusal(vm, encode_case(pte))
        assert "case 1: the batch ends inside a case" in _refusal(vm, encode_case(good) + bytes((0x00, 2, 1)))
        assert "no such access" in _refusal(vm, bytes((0x03, 1, 0, 0)))
        assert "a chain holds 1 entry to one per paging level" in _refusal(vm, bytes((0x00, levels + 1)))
        assert "bits outside the encoding" in _refusal(vm, bytes((0x00, 1, 0x08, 0)))  # PWT
        too_many = encode_case(good) * (layout.batch_size + 1)
        assert f"case {layout.batch_size}: more cases than the probe space has slots" in _refusal(vm, too_many)
        if not cpu.smep:
            assert "CR4.SMEP on a CPU without SMEP" in _refusal(vm, bytes((CONTROL_SMEP, 1, 0, 0)))
        assert run_matrix(vm, [good], cpu).disagreements == []
