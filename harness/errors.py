"""The exceptions mmhil raises, arranged by whose fault a failure is.

    MmhilError
    ├── ConfigError            a VM configuration file is wrong (names file and field)
    ├── BuildError             the guest kernel did not build
    ├── InfrastructureError    the harness or QEMU failed, not the code under test
    │   ├── QemuLaunchError    QEMU refused to start (exit code, command line, stderr)
    │   ├── QemuDiedError      QEMU went away while the VM was in use
    │   ├── ProtocolError      the agent sent something that is not a protocol frame
    │   ├── UnsupportedConfig  this host cannot run the config (a skip, with QEMU's reason)
    │   └── HostConnectionLost the SSH connection to a VM host dropped while a VM ran there
    ├── HostError              a VM host cannot be used (names the host and why)
    │   ├── HostUnreachable    no SSH connection could be made (its configs are skipped)
    │   ├── HostKeyError       the host's key is unknown or differs from known_hosts (nothing launched)
    │   └── HostAuthError      the host refused our key (names user, host and key source)
    ├── GuestTimeout           a wait on the guest ran out of time
    ├── GuestCrash             the guest stopped
    │   ├── BugCheck           ... with an NT STOP code
    │   └── GuestReset         ... by resetting (triple fault)
    └── AgentError             the agent answered a request with an error

Every message is meant to be read on its own in a test report: it names the VM and says what was
seen, and where there is more (console, QEMU's stderr) it includes the tail and the log path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AgentError",
    "BugCheck",
    "BugCheckRecord",
    "BuildError",
    "ConfigError",
    "GuestCrash",
    "GuestReset",
    "GuestTimeout",
    "HostAuthError",
    "HostConnectionLost",
    "HostError",
    "HostKeyError",
    "HostUnreachable",
    "InfrastructureError",
    "MmhilError",
    "ProtocolError",
    "QemuDiedError",
    "QemuLaunchError",
    "UnsupportedConfig",
]


class MmhilError(Exception):
    """Base class of every error mmhil raises on purpose."""


class ConfigError(MmhilError):
    def __init__(self, source: Path | str, field: str | None, problem: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = f"{self.source}: field '{field}'" if field else self.source
        super().__init__(f"{where}: {problem}")


class BuildError(MmhilError):
    pass


class InfrastructureError(MmhilError):
    """Not a verdict on the code under test: the test could not be carried out."""


class QemuLaunchError(InfrastructureError):
    def __init__(self, reason: str, exit_code: int | None, command_line: str, stderr: str) -> None:
        self.exit_code = exit_code
        self.command_line = command_line
        self.stderr = stderr
        super().__init__(
            f"QEMU failed to start: {reason} (exit code {exit_code})\n"
            f"command line: {command_line}\n"
            f"QEMU stderr:\n{stderr.rstrip() or '(empty)'}"
        )


class QemuDiedError(InfrastructureError):
    def __init__(self, vm: str, exit_status: int | None, stderr_tail: str, console_tail: str) -> None:
        self.vm = vm
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        self.console_tail = console_tail
        status = "still exiting" if exit_status is None else _describe_status(exit_status)
        super().__init__(
            f"{vm}: QEMU went away while the VM was in use ({status})\n"
            f"QEMU stderr tail:\n{stderr_tail.rstrip() or '(empty)'}\n"
            f"console tail:\n{console_tail.rstrip() or '(empty)'}"
        )


class FirmwareError(InfrastructureError):
    """The mmhil firmware (driver_src/firmware) stopped the VM before the kernel ran: its line on the
    console names what it lacked."""

    def __init__(self, vm: str, reason: str, console_tail: str) -> None:
        self.vm = vm
        self.reason = reason
        self.console_tail = console_tail
        super().__init__(f"{vm}: the mmhil firmware could not boot the kernel: {reason}\n"
                         f"console tail:\n{console_tail.rstrip() or '(empty)'}")


class ProtocolError(InfrastructureError):
    pass


class UnsupportedConfig(InfrastructureError):
    """This host cannot run a VM configuration; tests on it are skipped with this reason."""


class HostConnectionLost(InfrastructureError):
    """The connection to the host a VM ran on dropped: its QEMU died with it (retried once as INFRA)."""


class HostError(MmhilError):
    """A VM host cannot be used at all; the message names the host and the reason."""

    def __init__(self, host: str, problem: str) -> None:
        self.host = host
        self.problem = problem
        super().__init__(f"VM host {host}: {problem}")


class HostUnreachable(HostError):
    pass


class HostKeyError(HostError):
    pass


class HostAuthError(HostError):
    pass


class GuestTimeout(MmhilError):
    def __init__(self, vm: str, what: str, seconds: float, console_tail: str, log: Path | None) -> None:
        self.vm = vm
        self.what = what
        self.seconds = seconds
        super().__init__(
            f"{vm}: timed out after {seconds:g} s waiting for {what}\n"
            f"console tail:\n{console_tail.rstrip() or '(empty)'}"
            + (f"\nfull console log: {log}" if log else "")
        )


class GuestCrash(MmhilError):
    pass


@dataclass(frozen=True)
class BugCheckRecord:
    """What the kernel reported when it stopped: KeBugCheckEx's five values plus CPU state."""

    code: int
    parameters: tuple[int, int, int, int]
    name: str
    rip: int
    cr3: int
    vector: int | None = None
    error_code: int | None = None
    cr2: int | None = None
    cpu: int | None = None  # the CPU that stopped (None: the record did not say)

    def stop_line(self) -> str:
        params = ",".join(f"0x{p:016X}" for p in self.parameters)
        return f"*** STOP: 0x{self.code:08X} ({params}) {self.name}"


class BugCheck(GuestCrash):
    def __init__(self, vm: str, record: BugCheckRecord, console_tail: str, log: Path | None) -> None:
        self.vm = vm
        self.record = record
        self.console_tail = console_tail
        trap = ""
        if record.vector is not None:
            trap = f" vector=0x{record.vector:x} error=0x{record.error_code or 0:x} cr2=0x{record.cr2 or 0:x}"
        cpu = "" if record.cpu is None else f" cpu={record.cpu}"
        super().__init__(
            f"{vm}: guest bugcheck\n{record.stop_line()}\n"
            f"rip=0x{record.rip:x} cr3=0x{record.cr3:x}{cpu}{trap}\n"
            f"console tail:\n{console_tail.rstrip() or '(empty)'}"
            + (f"\nfull console log: {log}" if log else "")
        )

    @property
    def code(self) -> int:
        return self.record.code

    @property
    def parameters(self) -> tuple[int, int, int, int]:
        return self.record.parameters


class GuestReset(GuestCrash):
    def __init__(self, vm: str, detail: str, console_tail: str) -> None:
        self.vm = vm
        super().__init__(
            f"{vm}: the guest reset ({detail}); a triple fault looks like this\n"
            f"console tail:\n{console_tail.rstrip() or '(empty)'}"
        )


class AgentError(MmhilError):
    def __init__(self, vm: str, request: str, kind: str, message: str) -> None:
        self.vm = vm
        self.request = request
        self.kind = kind
        self.message = message
        super().__init__(f"{vm}: agent refused {request!r}: {kind}: {message}")


def _describe_status(status: int) -> str:
    if status < 0:
        return f"killed by signal {-status}"
    return f"exit status {status}"
