"""The guest console (COM1), read through pexpect, with bad patterns checked on every wait.

QEMU itself copies every console byte into the VM's console log (the chardev's `logfile`), so the
log is complete even when no test is waiting on the console and even if the harness dies. The bytes
reach pexpect through a Pump (harness.pump), so an idle console never stalls the guest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pexpect
from pexpect import fdpexpect

from harness.errors import MmhilError

BOOT_COMPLETE = r"mmhil: \d+ MiB of RAM; agent ready"

# Seen on any wait, each of these ends it: the guest has stopped or started over.
BAD_PATTERNS: dict[str, str] = {
    "bugcheck": r"\*\*\* STOP: 0x[0-9A-Fa-f]{8} \([^)]*\)",
    "double fault": r"\*\*\* DOUBLE FAULT",
}


class ConsoleBadPattern(MmhilError):
    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        super().__init__(f"console showed {name}: {text}")


class ConsoleClosed(MmhilError):
    """The console reached end of file: QEMU closed it, so QEMU is gone or going."""


class ConsoleTimeout(MmhilError):
    pass


@dataclass(frozen=True)
class Match:
    text: str
    groups: tuple[str | None, ...]


class Console:
    def __init__(self, read_fd: int, log_path: Path) -> None:
        """`read_fd` carries the console's bytes (a Pump's pipe); pexpect owns and closes it."""
        self.log_path = log_path
        self._spawn = fdpexpect.fdspawn(read_fd, encoding="utf-8", codec_errors="replace", use_poll=True)
        self._bad = dict(BAD_PATTERNS)

    def forbid(self, name: str, pattern: str) -> None:
        """Add a bad pattern, e.g. the boot banner once boot is over (seeing it again means a reset)."""
        self._bad[name] = pattern

    def expect(self, pattern: str, timeout: float) -> Match:
        """Wait for a regular expression on the console; a bad pattern, EOF or timeout raises."""
        names = list(self._bad)
        choices: list[object] = [re.compile(pattern)]
        choices += [re.compile(self._bad[n]) for n in names]
        choices += [pexpect.EOF, pexpect.TIMEOUT]
        index = self._spawn.expect(choices, timeout=timeout)
        if index == 0:
            match = self._spawn.match
            return Match(match.group(0), match.groups())
        if index <= len(names):
            raise ConsoleBadPattern(names[index - 1], self._spawn.match.group(0))
        if choices[index] is pexpect.EOF:
            raise ConsoleClosed("console closed")
        raise ConsoleTimeout(f"no {pattern!r} on the console within {timeout:g} s")

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self._spawn.close()
