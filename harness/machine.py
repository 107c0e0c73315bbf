"""One QEMU process: its command line, launch, and a shutdown that always cleans up.

Lifecycle (modelled on QEMUMachine):

    launch()   QEMU starts paused (-S) on the VM's host (harness.hosts: this machine, or one reached
               over SSH), which hands back QMP, console and agent as local sockets.
    resume()   sends `cont` (its answer is taken later): the channels hold the guest's output until
               the harness reads them.
    shutdown() QMP `quit`, wait, SIGKILL, wait; then close every channel and let the host remove what
               it made for the VM. Safe to call at any time, any number of times. request_quit()
               sends the `quit` ahead, so the caller's own clean-up overlaps QEMU's exit.

Hygiene is the host's part: on this machine QEMU runs under `setpriv --pdeathsig KILL`, its RAM file
is unlinked before it starts and it has no socket files (harness.hosts.local); on a remote host a
small parent kills QEMU and removes its files when the SSH channel ends (harness.hosts.ssh). Every
QEMU runs under `-sandbox` (harness.hosts.base.SANDBOX).
"""

from __future__ import annotations

import atexit
import contextlib
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from harness.config import VmConfig
from harness.errors import HostConnectionLost, InfrastructureError, QemuLaunchError
from harness.hosts.base import SANDBOX, RamFile, ScratchFiles, StartedQemu, VmHost
from harness.hosts.local import RUNTIME_ROOT, SHM_DIR, local_host, sweep_stale_runtime_dirs
from harness.qmp import QmpChannel, QmpReply

QEMU_BINARY = "qemu-system-x86_64"
QBOOT_ROM = "/usr/share/qemu/qboot.rom"
EXIT_PORT = 0xF4
AGENT_UART = (0x2F8, 3)  # iobase, irq
# A bugcheck writes pvpanic before its exit write, and a triple fault asks for a reset: QEMU pauses on
# either instead of ending, so the harness can take a core dump (harness.coredump), then resumes the
# guest (a bugcheck's exit write follows: status 33) or quits. `quit` and signals still end QEMU.
CRASH_ACTIONS = "panic=pause,reboot=shutdown,shutdown=pause"

# isa-debug-exit statuses (docs/agent-protocol.md).
STATUS_POWERED_OFF = 1
STATUS_BUGCHECK = 33
STATUS_FIRMWARE_FAILED = 65

__all__ = [
    "QEMU_BINARY",
    "RUNTIME_ROOT",
    "SHM_DIR",
    "STATUS_BUGCHECK",
    "STATUS_FIRMWARE_FAILED",
    "STATUS_POWERED_OFF",
    "LaunchPlan",
    "QemuMachine",
    "qemu_arguments",
    "sweep_stale_runtime_dirs",
]


@dataclass(frozen=True)
class LaunchPlan:
    """Everything about a launch that is not in the VM config."""

    kernel: Path | None  # None: no guest (the pre-launch probe)
    accelerator: str  # "tcg" or "kvm": already resolved
    artifacts: Path  # per-VM directory for logs; kept after the VM ends
    shared_ram: bool
    gdb_socket: Path | None = None  # start with QEMU's gdbstub listening here
    firmware: Path | None = None  # the -bios ROM for a config whose firmware is "mmhil" (KernelImage.firmware_for)
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def qemu_arguments(config: VmConfig, plan: LaunchPlan, *, qmp: str, console: str, agent: str,
                   ram_path: str | None, hello_in_mailbox: bool = False) -> list[str]:
    """QEMU's arguments, with the three chardev backends given as chardev option strings.
    `hello_in_mailbox`: this process maps guest RAM, and the agent is to say hello in its mailbox."""
    machine = config.machine + (",memory-backend=ram0" if ram_path else "")
    # Several vCPUs under TCG run one thread each (MTTCG), so each has a TLB of its own that runs
    # in parallel with the others': a missed TLB shootdown is then observable (docs/smp.md).
    accel = plan.accelerator + (",thread=multi" if plan.accelerator == "tcg" and config.smp > 1 else "")
    args = [
        "-name", f"mmhil-{config.name},debug-threads=on",
        "-machine", machine,
        "-accel", accel,
        "-cpu", config.cpu,
        "-smp", str(config.smp),
        "-m", f"{config.memory_mib}M",
        "-nodefaults", "-action", CRASH_ACTIONS, "-display", "none", "-S",
        "-sandbox", SANDBOX,
        "-chardev", f"{qmp},id=qmp", "-mon", "chardev=qmp,mode=control",
        "-chardev", f"{console},id=console", "-serial", "chardev:console",
        "-chardev", f"{agent},id=agent",
        "-device", f"isa-serial,chardev=agent,iobase={AGENT_UART[0]:#x},irq={AGENT_UART[1]}",
        "-device", f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=4",
        "-device", "pvpanic",
    ]
    if plan.kernel is not None:
        cmdline = config.full_cmdline() + (" hello=mailbox" if hello_in_mailbox else "")
        args += ["-kernel", str(plan.kernel), "-append", cmdline]
    if config.firmware == "qboot":
        args += ["-bios", QBOOT_ROM]
    elif config.firmware == "mmhil" and plan.firmware is not None:
        args += ["-bios", str(plan.firmware)]
    elif config.firmware == "mmhil" and plan.kernel is not None:
        raise InfrastructureError(f"{config.name}: the config boots the mmhil firmware, but the launch names no "
                                  "image of it (KernelImage.firmware_for)")
    if ram_path:
        args += ["-object",
                 f"memory-backend-file,id=ram0,size={config.memory_mib}M,mem-path={ram_path},share=on"]
    if plan.gdb_socket:
        args += ["-gdb", f"unix:{plan.gdb_socket},server=on,wait=off"]
    return args + list(config.extra_args) + list(plan.extra_args)


_live: set[QemuMachine] = set()
_live_lock = threading.Lock()


def live_machines() -> list[QemuMachine]:
    """Every machine of this process whose shutdown has not finished."""
    with _live_lock:
        return list(_live)


@atexit.register
def _shutdown_leftovers() -> None:
    with _live_lock:
        machines = list(_live)
    for machine in machines:
        machine.shutdown(grace=1.0)


class QemuMachine:
    def __init__(self, config: VmConfig, plan: LaunchPlan, binary: str = QEMU_BINARY,
                 host: VmHost | None = None) -> None:
        self.config = config
        self.plan = plan
        self.binary = binary
        self.host = host or local_host()
        self.name = config.name
        plan.artifacts.mkdir(parents=True, exist_ok=True)
        self.console_log = plan.artifacts / "console.log"
        self.stderr_log = plan.artifacts / "qemu-stderr.log"
        self.qmp_log = plan.artifacts / "qmp.log"
        self.agent_log = plan.artifacts / "agent.log"
        self._started: StartedQemu | None = None
        self._released = False
        self.qmp: QmpChannel | None = None
        self.console_socket: socket.socket | None = None
        self.agent_socket: socket.socket | None = None
        self.args: list[str] = []
        self.launched_at = 0.0
        self._quit: QmpReply | None = None  # a `quit` already sent (request_quit)

    # -- state ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """QEMU's process id on its host."""
        return self._started.process.pid if self._started else None

    @property
    def exit_status(self) -> int | None:
        """None while QEMU runs; its exit status (negative: killed by that signal) once it ended."""
        return self._started.process.poll() if self._started else None

    @property
    def lost(self) -> str | None:
        """Why QEMU's state can no longer be known (the connection to its host dropped), else None."""
        return self._started.process.lost if self._started else None

    @property
    def running(self) -> bool:
        return self._started is not None and self._started.process.poll() is None and self.lost is None

    @property
    def runtime_dir(self) -> PurePath:
        """QEMU's private working directory, on QEMU's host."""
        if self._started is None:
            raise InfrastructureError(f"{self.name}: not launched")
        return self._started.runtime_dir

    @property
    def gdb_socket(self) -> Path | None:
        """Where gdb attaches to QEMU's gdbstub (None without --gdb)."""
        return self._started.gdb_socket if self._started else None

    @property
    def scratch(self) -> ScratchFiles:
        """The runtime directory as a place QEMU writes files for the harness to take (pmemsave)."""
        if self._started is None:
            raise InfrastructureError(f"{self.name}: not launched")
        return self._started.scratch

    @property
    def shared_ram_fd(self) -> int | None:
        """Guest RAM as a descriptor this process can map (QEMU on this machine with shared RAM)."""
        return self._started.ram_fd if self._started else None

    @property
    def shared_ram_path(self) -> Path | None:
        """A path through which this process can open guest RAM (the file itself has no name)."""
        fd = self.shared_ram_fd
        return None if fd is None else Path(f"/proc/self/fd/{fd}")

    @property
    def remote_ram(self) -> RamFile | None:
        """Guest RAM read from afar: the RAM file on a remote host, through SFTP."""
        return self._started.ram_file if self._started else None

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            text = self.stderr_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def command_line(self) -> str:
        return shlex.join([self.binary, *self.args])

    def repro_script(self) -> str:
        """A shell script that starts this VM by hand: console on the terminal, QMP and agent on
        Unix sockets in the current directory, guest RAM private (no /dev/shm file)."""
        args = qemu_arguments(
            self.config, self.plan,
            qmp="socket,path=qmp.sock,server=on,wait=off",
            console="stdio",
            agent="socket,path=agent.sock,server=on,wait=off",
            ram_path=None,
        )
        args = [a for a in args if a != "-S"]
        where = "" if self.host.is_local else f"# It ran on {self.host.name}: run it there, with the kernel.\n"
        return (
            "#!/bin/sh\n"
            f"# Starts VM config '{self.config.name}' ({self.config.source}) as the test run did.\n"
            f"{where}"
            "# Console: this terminal; Ctrl-C ends QEMU.\n"
            "# QMP: ./qmp.sock   agent (docs/agent-protocol.md): ./agent.sock, e.g. `socat - UNIX:agent.sock`\n"
            'cd "$(dirname "$0")" && rm -f qmp.sock agent.sock\n'
            f"exec {shlex.join([self.binary, *args])}\n"
        )

    # -- launch ---------------------------------------------------------------------------------

    def launch(self, timeout: float = 10.0) -> None:
        if self._started is not None:
            raise InfrastructureError(f"{self.name}: already launched")
        self.qmp = QmpChannel(self.name, self.qmp_log)
        with _live_lock:
            _live.add(self)
        self.launched_at = time.monotonic()
        try:
            started = self.host.start_qemu(self.config, self.plan, binary=self.binary, stderr_log=self.stderr_log,
                                           console_log=self.console_log, timeout=timeout)
        except BaseException:
            self.shutdown()
            raise
        self._started = started
        self.args = started.args
        self.console_socket, self.agent_socket = started.console, started.agent
        try:
            self.qmp.connect(started.qmp, timeout)
        except InfrastructureError as exc:
            status = self.wait_exit(2.0)
            stderr_text = self.stderr_tail(200)
            lost = self.lost
            self.shutdown()
            if lost is not None:
                raise HostConnectionLost(f"{self.name}: {lost} while QEMU started") from exc
            reason = "it exited during start-up" if status is not None else f"QMP did not come up: {exc}"
            raise QemuLaunchError(reason, status, self.command_line(), stderr_text) from exc

    def resume(self) -> QmpReply:
        """Send `cont`; the guest runs from QEMU's answer, which the caller takes when it needs it."""
        return self._require_qmp().submit("cont")

    def _require_qmp(self) -> QmpChannel:
        if self.qmp is None:
            raise InfrastructureError(f"{self.name}: not launched")
        return self.qmp

    def wait_exit(self, timeout: float) -> int | None:
        """QEMU's exit status once it has ended by itself, or None if it still runs after `timeout`."""
        if self._started is None:
            return None
        return self._started.process.wait(timeout)

    # -- ending ---------------------------------------------------------------------------------

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send QEMU a signal (tests use it to simulate QEMU dying)."""
        if self.running and self._started is not None:
            self._started.process.send_signal(sig)

    def request_quit(self) -> None:
        """Send `quit` and return at once: shutdown() takes its answer. QEMU takes ~3 ms to exit, time
        the caller can spend closing its own side."""
        if self._quit is None and self.running and self.qmp is not None:
            with contextlib.suppress(InfrastructureError):  # QMP is gone: shutdown() signals instead
                self._quit = self.qmp.submit("quit")

    def shutdown(self, grace: float = 5.0) -> int | None:
        """quit, wait, kill; then release everything. Returns QEMU's exit status."""
        try:
            if self.running and self.qmp is not None:
                try:
                    if self._quit is None:
                        self.qmp.command("quit", timeout=grace)
                    else:
                        self._quit.wait(grace)
                except InfrastructureError:  # QMP is gone (or QEMU with it): only a signal is left
                    self.kill()
                if self.wait_exit(grace) is None:
                    self.kill()
                    self.wait_exit(grace)
            elif self.running:
                self.kill()
                self.wait_exit(grace)
        finally:
            self._release()
        return self.exit_status

    def _release(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
        for sock in (self.console_socket, self.agent_socket):
            if sock is not None and sock.fileno() >= 0:
                with contextlib.suppress(OSError):  # wakes any thread still polling it
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        if self._started is not None and not self._released:
            self._released = True
            if self._started.qmp.fileno() >= 0:
                self._started.qmp.close()
            self._started.release()
        with _live_lock:
            _live.discard(self)
