"""The `mmhil` command as a person uses it (driven through pexpect for the interactive shell)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pexpect
import pytest

from harness.build import BUILD_ID, BUILD_OUTPUTS

MMHIL = [sys.executable, "-m", "harness.cli"]


def test_configs_lists_every_config_and_whether_it_runs_here() -> None:
    out = subprocess.run([*MMHIL, "configs"], capture_output=True, text=True, timeout=120, check=True).stdout
    for name in ("default", "la57", "bigmem", "minimal-cpu", "q35-seabios", "kvm"):
        assert re.search(rf"^{re.escape(name)}\s.*(runnable on (tcg|kvm)|NOT runnable): .+$", out, re.M), out


def test_shell_answers_agent_and_monitor_commands_alike() -> None:
    shell = pexpect.spawn(MMHIL[0], [*MMHIL[1:], "shell", "--vm-config", "default"], encoding="utf-8", timeout=60)
    try:
        shell.expect(r"mmhil:default> ")
        shell.sendline("kernel_info")
        shell.expect(r"text_start=(0x[0-9a-f]+)")
        text = shell.match.group(1)
        shell.expect(r"mmhil:default> ")
        shell.sendline(f"MmGetPhysicalAddress {text}")
        shell.expect(r"pa=(0x[0-9a-f]+)")
        agent_pa = shell.match.group(1)
        shell.expect(r"mmhil:default> ")
        shell.sendline(f".gva2gpa {text}")
        shell.expect(r"pa=(0x[0-9a-f]+)")
        assert shell.match.group(1) == agent_pa
        shell.expect(r"mmhil:default> ")
        shell.sendline("NoSuchDdi 1")
        shell.expect(r"err unknown-command")
        shell.expect(r"mmhil:default> ")
        shell.sendline("ExAllocatePoolWithTag 512 100 'Tst1'")
        shell.expect(r"va=0x[0-9a-f]+")
        shell.expect(r"mmhil:default> ")
        shell.sendline(".quit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0


def test_bench_ddi_prints_each_path_beside_its_references() -> None:
    result = subprocess.run([*MMHIL, "bench", "ddi", "--vm-config", "default", "--calls", "1000"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    rates = {}
    for name in ("agent ping, mailbox", "agent ping, COM2", "MmGetPhysicalAddress", "reserved map\\+unmap, 16 pages",
                 "QEMU gva2gpa", "MmGetPhysicalAddress, 1000 a batch", "reserved map\\+unmap pair, 500 pairs a batch"):
        m = re.search(rf"^{name}.*?\s([\d,]+)\s+([\d.]+) us  IQR", out, re.M)
        assert m, f"no line for {name}:\n{out}"
        rates[name] = int(m.group(1).replace(",", ""))
        assert rates[name] > 0
    assert "back to back (1000 calls in a row a path):" in out, out
    assert "0 MmGetPhysicalAddress answers disagreeing with gva2gpa; 0 maps not returning" in out, out
    bad = subprocess.run([*MMHIL, "bench", "ddi", "--calls", "10"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "at least 1000" in bad.stderr


def test_fuzz_and_soak_commands_print_their_figures_and_find_nothing(tmp_path) -> None:
    runs = {
        "frames": ["fuzz", "frames", "--count", "300", "--seed", "9"],
        "ddi": ["fuzz", "ddi", "--count", "150", "--seed", "9", "--run-length", "75"],
        "soak": ["soak", "--calls", "600", "--seed", "9", "--check-every", "300"],
    }
    for name, arguments in runs.items():
        result = subprocess.run([*MMHIL, *arguments, "--vm-config", "default", "--artifacts", str(tmp_path / name)],
                                capture_output=True, text=True, timeout=600)
        out = result.stdout
        assert result.returncode == 0, f"{name}: {out}{result.stderr}"
        assert re.search(r"^findings: 0 \(", out, re.M), out
        assert (tmp_path / name / "findings.jsonl").read_text() == ""
    frames = subprocess.run([*MMHIL, *runs["frames"], "--vm-config", "default", "--artifacts", str(tmp_path / "f2")],
                            capture_output=True, text=True, timeout=600).stdout
    sent = r"^cases run: 300; frames sent: COM2 [\d,]+ lines, mailbox [\d,]+ requests \([\d,]+ lines\)$"
    assert re.search(sent, frames, re.M), frames
    assert re.search(r"^agent deaths: 0; liveness hellos: 3; boots: 1$", frames, re.M), frames
    assert re.search(r"unexpected replies: 0$", frames, re.M) and re.search(r"^slowest reply: [\d.]+ ms, case \d+",
                                                                            frames, re.M)
    bad = subprocess.run([*MMHIL, "fuzz", "ddi", "--count", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--count" in bad.stderr


def test_bench_matrix_prints_cases_per_second_per_paging_mode_beside_kvm_unit_tests() -> None:
    result = subprocess.run([*MMHIL, "bench", "matrix", "--runs", "3"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "kvm-unit-tests access_test at 7,500 cases/s" in out, out
    for config, levels in (("default", 4), ("la57", 5)):
        row = rf"^{config}\s+{levels}-level\s+tcg\s+([\d,]+)\s+([\d,]+)\s+([\d.]+) s\s+([\d,]+)\s+([\d.]+)x"
        m = re.search(row, out, re.M)
        assert m, f"no line for {config}:\n{out}"
        pruned, unpruned, cases_per_second = (int(m.group(i).replace(",", "")) for i in (1, 2, 4))
        assert 0 < pruned < unpruned and cases_per_second > 0
        assert f"{config} (" in out and "kvm-unit-tests' rate on this config's unpruned matrix" in out
    assert out.count("disagreements with the model over all runs: 0") == 2, out
    bad = subprocess.run([*MMHIL, "bench", "matrix", "--runs", "1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "at least 3" in bad.stderr


def test_bench_boot_splits_each_boot_beside_the_floor() -> None:
    result = subprocess.run([*MMHIL, "bench", "boot", "--vm-config", "default", "--boots", "3", "--phases"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    row = re.search(r"^default\s+tcg\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)  boot IQR", out, re.M)
    assert row, out
    boot, floor, ratio = (float(g) for g in row.groups())
    assert abs(boot / floor - ratio) < 0.01, out
    steps = {m.group(1).strip(): float(m.group(2))
             for m in re.finditer(r"^ {15}(\S.*?)\s+(-?[\d.]+) ms  IQR", out, re.M)}
    for name in ("QEMU start (to QMP)", "firmware (cont to the boot stub)", "guest long_mode", "guest cpu",
                 "guest address_space", "guest pfn_database", "guest memory_manager", "guest hello",
                 "the hello over the mailbox to the host's wait", "shutdown (quit to exit)"):
        assert steps.get(name, 0) > 0, f"no positive step {name!r}:\n{out}"
    # The console's line follows the hello: a boot with a plain command line prints nothing before it.
    assert steps.get("guest console output (within the above)", -1) == 0, out
    # A boot is a QEMU start, its run and its shutdown: no step is longer than the whole.
    assert max(steps.values()) < boot, out
    code = re.search(r"TCG translated \(one more boot, -d in_asm\)\s+([\d,]+) guest instructions in ([\d,]+) "
                     r"blocks: firmware ([\d,]+), kernel ([\d,]+)", out)
    assert code, out
    total, blocks, firmware, kernel = (int(g.replace(",", "")) for g in code.groups())
    assert total == firmware + kernel and 0 < blocks < total and firmware > 0 and kernel > 0, out


def copy_of_this_build(where: Path) -> Path:
    other = where / "other-build"
    other.mkdir()
    for path in BUILD_OUTPUTS:
        shutil.copy(path, other / path.name)
    return other


def test_bench_boot_against_another_build_prints_both_leads_and_their_difference() -> None:
    # QEMU may run as another user (the harness as root): the copy must be where others can read it.
    with tempfile.TemporaryDirectory(prefix="mmhil-against-") as where:
        os.chmod(where, 0o755)
        other = copy_of_this_build(Path(where))
        result = subprocess.run([*MMHIL, "bench", "boot", "--vm-config", "default", "--boots", "3",
                                 "--against", str(other)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    build_id = BUILD_ID.read_text(encoding="ascii").strip()
    assert f"this tree's build ({build_id}) and {other}'s ({build_id})" in out, out
    for name in ("this tree", str(other)):
        row = re.search(rf"^default\s+{re.escape(name)}\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)  (-?[\d.]+) ms, IQR",
                        out, re.M)
        assert row, out
        boot, floor, ratio, lead = (float(g) for g in row.groups())
        # Every lead is a boot less a floor run (> 0), so their median is below the boots' median.
        assert abs(boot / floor - ratio) < 0.01 and floor > 0 and lead < boot, out
    change = re.search(r"'s lead less this tree's: ([-+][\d.]+) ms \(95% bootstrap interval ([-+][\d.]+) to "
                       r"([-+][\d.]+) ms\): (not )?told apart from the noise", out)
    assert change, out
    low, high = float(change.group(2)), float(change.group(3))
    assert low <= float(change.group(1)) <= high, out


def test_bench_boot_against_names_a_missing_build_and_refuses_phases(tmp_path: Path) -> None:
    missing = subprocess.run([*MMHIL, "bench", "boot", "--vm-config", "default", "--against", str(tmp_path)],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and f"no guest kernel build at {tmp_path}/mmhil-kernel.elf" in missing.stderr
    both = subprocess.run([*MMHIL, "bench", "boot", "--phases", "--against", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "--against compares whole lives" in both.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="QEMU runs as the harness's own user unless the harness is root")
def test_a_build_that_qemus_user_cannot_read_is_named_before_qemu_starts(tmp_path: Path) -> None:
    other = copy_of_this_build(tmp_path)  # pytest's directories are 0700: QEMU's user cannot pass through them
    result = subprocess.run([*MMHIL, "bench", "boot", "--vm-config", "default", "--boots", "3",
                             "--against", str(other)], capture_output=True, text=True, timeout=300)
    private = next(p for p in [other, *other.parents] if not p.stat().st_mode & 0o001)
    assert result.returncode != 0, result.stdout
    assert (f"QEMU runs as mmhil-qemu (the harness runs as root, QEMU does not), which cannot reach {other}: "
            f"{private} is mode") in result.stderr, result.stderr


def test_bench_boot_and_suite_refuse_too_few_runs() -> None:
    boot = subprocess.run([*MMHIL, "bench", "boot", "--boots", "2"], capture_output=True, text=True, timeout=120)
    assert boot.returncode == 2 and "--boots must be at least 3" in boot.stderr
    suite = subprocess.run([*MMHIL, "bench", "suite", "--runs", "0"], capture_output=True, text=True, timeout=120)
    assert suite.returncode == 2 and "--runs must be at least 1" in suite.stderr
