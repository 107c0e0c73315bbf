"""The guest console (COM1), read through pexpect, with bad patterns checked on every wait.

QEMU itself copies every console byte into the VM's console log (the chardev's `logfile`), so the
log is complete even when no test is waiting on the console and even if the harness dies. The bytes
reach pexpect through a Pump (harness.pump), so an idle console never stalls the guest.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
from pexpect import fdpexpect

from harness.errors import MmhilError

BOOT_COMPLETE = r"mmhil: build \w+, \d-level paging, \d+ MiB of RAM; agent ready"

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
        self._allowed: dict[str, int] = {}  # appearances of a bad pattern that still end no wait

    def forbid(self, name: str, pattern: str, allowed: int = 0) -> None:
        """Add a bad pattern, which ends any wait from its (allowed + 1)-th appearance on: the boot
        banner, allowed once, means a reset the second time, whether or not a wait saw the first."""
        self._bad[name] = pattern
        self._allowed[name] = allowed

    def expect(self, pattern: str, timeout: float) -> Match:
        """Wait for a regular expression on the console; a bad pattern, EOF or timeout raises."""
        deadline = time.monotonic() + timeout
        names = list(self._bad)
        choices: list[object] = [re.compile(pattern)]
        choices += [re.compile(self._bad[n]) for n in names]
        choices += [pexpect.EOF, pexpect.TIMEOUT]
        while True:
            index = self._spawn.expect(choices, timeout=max(0.0, deadline - time.monotonic()))
            if index == 0:
                match = self._spawn.match
                return Match(match.group(0), match.groups())
            if index > len(names):
                break
            name = names[index - 1]
            if not self._allowed.get(name):
                raise ConsoleBadPattern(name, self._spawn.match.group(0))
            self._allowed[name] -= 1
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
