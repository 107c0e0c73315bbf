"""What a VM host is to the rest of the harness: a place that runs one QEMU process per VM, hands back
its three channels as local sockets, and lets the harness read the files QEMU writes there.

`harness.machine.QemuMachine` owns the lifecycle (QMP handshake, quit, kill, release); a host only
knows how to start the process, reach its sockets and move files. Two kinds exist:
`harness.hosts.local.LocalHost` (this machine) and `harness.hosts.ssh.SshHost` (over paramiko).
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Protocol

from harness.hosts.spec import HostSpec
from harness.oracle.memory import DirectoryScratch, ScratchFiles

if TYPE_CHECKING:
    from harness.config import VmConfig
    from harness.machine import LaunchPlan

# Every QEMU mmhil starts runs under seccomp: no obsolete system calls, no setuid/setgid, no
# fork/exec, no scheduler or priority changes. QEMU 7.2 needs none of them for what mmhil asks of it.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


class QemuProcess(Protocol):
    """The QEMU process of one VM, wherever it runs."""

    @property
    def pid(self) -> int | None:
        """Its process id on its own host."""
        ...

    @property
    def lost(self) -> str | None:
        """Why its state can no longer be known (the connection to its host dropped), else None."""
        ...

    def poll(self) -> int | None:
        """Its exit status once it ended (negative: killed by that signal), else None."""
        ...

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` for it to end; its exit status, or None if it still runs."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send it `sig`; returns once the signal has been delivered on its host."""
        ...


class RamFile(Protocol):
    """Guest RAM's backend file on a host that does not share memory with this one: random access."""

    def read_at(self, offset: int, size: int) -> bytes: ...

    def read_many_at(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """Many reads, all sent before the first answer is awaited."""
        ...

    def write_at(self, offset: int, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass
class StartedQemu:
    """What a host hands back once QEMU runs (paused): the process, the harness's ends of QMP, the
    console and the agent, and what the harness may read of QEMU's files."""

    process: QemuProcess
    args: list[str]  # QEMU's arguments as they were run
    qmp: socket.socket
    console: socket.socket
    agent: socket.socket
    runtime_dir: PurePath  # QEMU's working directory, on its host
    scratch: ScratchFiles
    release: Callable[[], None]  # frees what the host holds for this VM; called once QEMU ended
    ram_fd: int | None = None  # guest RAM mapped by this process (local hosts)
    ram_file: RamFile | None = None  # guest RAM readable from afar (remote hosts)
    gdb_socket: Path | None = None  # where gdb attaches, when QEMU was started with its gdbstub


class VmHost(ABC):
    """A machine that runs VMs."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    @abstractmethod
    def is_local(self) -> bool: ...

    @abstractmethod
    def start_qemu(self, config: VmConfig, plan: LaunchPlan, *, binary: str, stderr_log: Path,
                   console_log: Path, timeout: float) -> StartedQemu:
        """Start QEMU paused for `config` and `plan`; raise QemuLaunchError or a HostError."""

    @abstractmethod
    def qemu_version(self, binary: str) -> str: ...

    @abstractmethod
    def kvm_status(self) -> tuple[bool, str]:
        """Whether QEMU on this host can open /dev/kvm, and why (not)."""

    @abstractmethod
    def core_count(self) -> int:
        """How many VMs this host can keep busy at once: the spec's `cores`, else its CPU count."""

    @abstractmethod
    def check(self) -> None:
        """Raise a HostError if the host cannot be used now (local: never)."""

    @abstractmethod
    def close(self) -> None:
        """Drop any connection to the host (its VMs must be shut down first)."""


__all__ = ["SANDBOX", "DirectoryScratch", "QemuProcess", "RamFile", "ScratchFiles", "StartedQemu", "VmHost"]
