"""The DDI fuzzer on a real kernel: a seeded run of a few hundred calls whose every outcome is a
documented one, with documented bugchecks among them, ending with nothing outstanding; and proof
that a wrong outcome, a missing bugcheck and a leak are findings with their seed and call index."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.config import VmConfig
from harness.fuzz.ddi_run import DdiRunner
from harness.fuzz.model import Call, Outcome, returns, stop
from harness.fuzz.session import FindingLog
from harness.guest import NON_PAGED_POOL_NX, pool_tag
from harness.pytest_plugin import VmPool
from harness.vm import Vm

FAMILIES = {"pool", "mdl", "reserved", "iospace", "contiguous", "copy", "dxgk", "irql"}


class PoolVms:
    """The test's VMs come from the plugin's pool: a reboot is a fresh VM of the same config."""

    def __init__(self, pool: VmPool, config: VmConfig) -> None:
        self._pool, self._config = pool, config
        self.boots = 1

    @property
    def vm(self) -> Vm:
        return self._pool.get(self._config)[1]

    @property
    def boot_folder(self) -> Path:
        return self.vm.artifacts

    def reboot(self) -> Vm:
        self._pool.discard(self._config.name)
        self.boots += 1
        return self.vm

    def describe(self) -> str:
        return self._config.name


@pytest.fixture
def pool_vms(vm_pool: VmPool, vm_config: VmConfig) -> Iterator[PoolVms]:
    vm_pool.discard(vm_config.name)  # this test reboots on purpose: start it on a fresh VM
    source = PoolVms(vm_pool, vm_config)
    yield source
    vm_pool.discard(vm_config.name)


def test_a_seeded_ddi_run_has_only_documented_outcomes_and_leaves_nothing(pool_vms: PoolVms, tmp_path: Path) -> None:
    findings = FindingLog(tmp_path / "findings.jsonl")
    runner = DdiRunner(pool_vms, 5, findings, run_length=100, counts_every=20, stop_rate=0.03)
    stats = runner.run(400)
    assert [f.line() for f in findings.findings] == []
    assert set(stats.calls) == FAMILIES, stats.calls
    assert sum(stats.documented.values()) == sum(stats.calls.values()), "every outcome was a documented one"
    assert sum(stats.stops.values()) >= 2, f"documented bugchecks were drawn and seen: {stats.stops}"
    assert stats.reboots == sum(stats.stops.values())
    assert stats.runs == 4, "each run of 100 calls ended with nothing outstanding and no frame lost"
    assert stats.mappings_verified > 50 and stats.unmappings_verified > 20 and stats.leaks == []


def test_a_wrong_outcome_a_missing_bugcheck_and_a_leak_are_findings_with_seed_and_index(
        pool_vms: PoolVms, tmp_path: Path) -> None:
    findings = FindingLog(tmp_path / "findings.jsonl")
    runner = DdiRunner(pool_vms, 77, findings, replay="mmhil fuzz ddi --seed 77 --count {count}")
    runner.run(1)  # sets up the model and the ledger on a fresh VM
    tag = pool_tag("Kfz1")
    null_expected = Call("pool", "ExAllocatePoolWithTag", (NON_PAGED_POOL_NX, 64, tag),
                         returns("NULL (planted: wrong)", lambda va: "" if va == 0 else f"got {va:#x}"))
    assert not runner.execute(41, null_expected)
    stop_expected = Call("irql", "KeGetCurrentIrql", (), Outcome("", stops=(stop(0xA, 0, 0, 0, 0, "planted"),)))
    assert not runner.execute(42, stop_expected)
    leak = Call("pool", "ExAllocatePoolWithTag", (NON_PAGED_POOL_NX, 64, tag),
                returns("a block the model is not told about", lambda va: "" if va else "NULL"))
    assert runner.execute(43, leak)
    assert not runner.check_counts(43)
    kinds = [(f.kind, f.index, f.replay) for f in findings.findings]
    assert kinds == [("wrong outcome", 41, "mmhil fuzz ddi --seed 77 --count 42"),
                     ("missing bugcheck", 42, "mmhil fuzz ddi --seed 77 --count 43"),
                     ("leak count", 43, "mmhil fuzz ddi --seed 77 --count 44")]
    assert "pool_tag_" in findings.findings[2].what
    assert runner.stats.reboots == 3, "after each finding the VM is rebooted and the model reset"
    assert findings.path.read_text().count("\n") == 3
