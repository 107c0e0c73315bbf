"""QEMU's own view of the guest, through QMP and HMP: answers the agent did not compute.

`gva2gpa` walks the page tables in guest RAM from the vCPU's CR3 (qemu-facts.md), `xp` reads guest
physical memory, `info registers` is the only source of CR0/CR3/CR4/EFER.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import InfrastructureError
from harness.hosts.base import ScratchFiles
from harness.qmp import QmpChannel

_GPA = re.compile(r"gpa:\s*(0x[0-9a-fA-F]+|0)\b")
_XP_LINE = re.compile(r"^[0-9a-fA-F]+:((?:\s+0x[0-9a-fA-F]+)+)\s*$")
_REGISTER = re.compile(r"\b(CR0|CR2|CR3|CR4|EFER|RIP|RSP)=([0-9a-fA-F]+)")

_XP_UNITS = {1: "b", 2: "h", 4: "w", 8: "g"}


def parse_gva2gpa(text: str) -> int | None:
    """HMP gva2gpa's answer: the guest-physical address, or None for `Unmapped`."""
    match = _GPA.search(text)
    if match:
        return int(match.group(1), 16)
    if "Unmapped" in text:
        return None
    raise InfrastructureError(f"unexpected gva2gpa output: {text!r}")


class QemuMonitor:
    def __init__(self, qmp: QmpChannel, scratch: ScratchFiles) -> None:
        self._qmp = qmp
        self.scratch = scratch  # where QEMU writes files for the harness (on QEMU's host)

    @property
    def scratch_dir(self) -> Path:
        return Path(self.scratch.directory)

    def hmp(self, command_line: str, timeout: float = 10.0, cpu: int = 0) -> str:
        """One HMP command on one vCPU (QMP's cpu-index: an HMP `cpu N` does not outlive its command)."""
        return self._qmp.hmp(command_line, timeout, cpu)

    def command(self, name: str, **arguments: object) -> object:
        return self._qmp.command(name, arguments)

    def gva2gpa(self, va: int, cpu: int = 0) -> int | None:
        """QEMU's translation of `va` on `cpu`, or None where QEMU reports it unmapped."""
        return parse_gva2gpa(self.hmp(f"gva2gpa {va:#x}", cpu=cpu))

    def xp(self, pa: int, count: int, unit: int = 8) -> list[int]:
        """`count` little-endian values of `unit` bytes at guest-physical `pa`."""
        if unit not in _XP_UNITS:
            raise ValueError(f"xp unit must be 1, 2, 4 or 8 bytes, not {unit}")
        output = self.hmp(f"xp /{count}{_XP_UNITS[unit]}x {pa:#x}")
        values = [int(v, 16) for line in output.splitlines() if (m := _XP_LINE.match(line.strip()))
                  for v in m.group(1).split()]
        if len(values) != count:
            raise InfrastructureError(f"xp at {pa:#x} gave {len(values)} values, wanted {count}: {output!r}")
        return values

    def registers(self, cpu: int = 0) -> dict[str, int]:
        """CR0, CR2, CR3, CR4, EFER, RIP and RSP of one vCPU, from HMP `info registers`."""
        output = self.hmp("info registers", cpu=cpu)
        found = {name: int(value, 16) for name, value in _REGISTER.findall(output)}
        missing = {"CR0", "CR3", "CR4", "EFER"} - found.keys()
        if missing:
            raise InfrastructureError(f"info registers lacks {sorted(missing)}: {output[:500]!r}")
        return found

    def task_priority(self, cpu: int = 0) -> int:
        """The local APIC's TPR, from HMP `info lapic`: CR8 (the IRQL on x64) is TPR bits 7:4."""
        output = self.hmp("info lapic", cpu=cpu)
        match = re.search(r"\bTPR 0x([0-9a-f]+)", output)
        if match is None:
            raise InfrastructureError(f"info lapic shows no TPR: {output[:500]!r}")
        return int(match.group(1), 16)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Freeze the vCPUs for a consistent multi-step read, then let them run again."""
        self.command("stop")
        try:
            yield
        finally:
            self.command("cont")
