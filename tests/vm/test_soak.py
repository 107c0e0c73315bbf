"""A short soak on a real kernel: every family allocated and freed, mapped and unmapped, with nothing
outstanding and no frame lost at each checkpoint."""

from pathlib import Path

from harness.fuzz.session import FindingLog, SingleVm
from harness.fuzz.soak import FAMILIES, REFERENCE, Soak
from harness.vm import Vm


def test_a_short_soak_of_every_family_leaks_nothing(vm: Vm, tmp_path: Path) -> None:
    findings = FindingLog(tmp_path / "findings.jsonl")
    soak = Soak(SingleVm(vm), 3, findings, check_every=500, verify_every=5)
    stats = soak.run(2000)
    assert [f.line() for f in findings.findings] == []
    assert stats.calls >= 2000 and stats.reboots == 0
    assert stats.checkpoints >= 4, "a checkpoint every 500 calls and one at the end"
    assert stats.leaks == {} and stats.frames_lost == 0
    assert all(len(stats.times[f]) > 0 for f in (*FAMILIES, REFERENCE)), "every family ran, beside the reference"
    assert stats.verified >= 9 * 2, "each family's mapping was verified three ways on several cycles"
