"""The `mmhil` command as a person uses it (driven through pexpect for the interactive shell)."""

import re
import subprocess
import sys

import pexpect

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
