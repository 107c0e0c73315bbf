"""One QEMU process: its command line, launch, and a shutdown that always cleans up.

Lifecycle (modelled on QEMUMachine):

    launch()   QEMU starts paused (-S). QMP, console and agent each run over a socketpair, so there
               are no socket files and no ports. Guest RAM, when shared, lives in a /dev/shm file that
               is unlinked before QEMU even starts: QEMU opens it through /dev/fd, so nothing can be
               left behind whatever happens to the harness.
    resume()   `cont`, once the harness has attached to every channel.
    shutdown() QMP `quit`, wait, SIGKILL, wait; then close every channel and remove the VM's private
               temp directory. Safe to call at any time, any number of times.

QEMU runs under `setpriv --pdeathsig KILL`, so it dies with the process that launched it even when
that process is SIGKILLed (a killed pytest-xdist worker leaves no orphan).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import VmConfig
from harness.errors import InfrastructureError, QemuLaunchError
from harness.qmp import QmpChannel

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

RUNTIME_ROOT = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / "mmhil-runtime"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything about a launch that is not in the VM config."""

    kernel: Path | None  # None: no guest (the pre-launch probe)
    accelerator: str  # "tcg" or "kvm": already resolved
    artifacts: Path  # per-VM directory for logs; kept after the VM ends
    shared_ram: bool
    gdb_socket: Path | None = None  # start with QEMU's gdbstub listening here
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def qemu_arguments(config: VmConfig, plan: LaunchPlan, *, qmp: str, console: str, agent: str,
                   ram_path: str | None) -> list[str]:
    """QEMU's arguments, with the three chardev backends given as chardev option strings."""
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
        "-chardev", f"{qmp},id=qmp", "-mon", "chardev=qmp,mode=control",
        "-chardev", f"{console},id=console", "-serial", "chardev:console",
        "-chardev", f"{agent},id=agent",
        "-device", f"isa-serial,chardev=agent,iobase={AGENT_UART[0]:#x},irq={AGENT_UART[1]}",
        "-device", f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=4",
        "-device", "pvpanic",
    ]
    if plan.kernel is not None:
        args += ["-kernel", str(plan.kernel), "-append", config.full_cmdline()]
    if config.firmware == "qboot":
        args += ["-bios", QBOOT_ROM]
    if ram_path:
        args += ["-object",
                 f"memory-backend-file,id=ram0,size={config.memory_mib}M,mem-path={ram_path},share=on"]
    if plan.gdb_socket:
        args += ["-gdb", f"unix:{plan.gdb_socket},server=on,wait=off"]
    return args + list(config.extra_args) + list(plan.extra_args)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process its parent has not reaped yet (a dead xdist worker) still answers kill(0).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_stale_runtime_dirs() -> list[Path]:
    """Remove the private dirs of harness processes that died without cleaning up (e.g. SIGKILL)."""
    removed: list[Path] = []
    if not RUNTIME_ROOT.is_dir():
        return removed
    for entry in RUNTIME_ROOT.iterdir():
        owner = entry.name.split("-")[1] if entry.name.startswith("vm-") else ""
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


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
    def __init__(self, config: VmConfig, plan: LaunchPlan, binary: str = QEMU_BINARY) -> None:
        self.config = config
        self.plan = plan
        self.binary = binary
        self.name = config.name
        plan.artifacts.mkdir(parents=True, exist_ok=True)
        self.console_log = plan.artifacts / "console.log"
        self.stderr_log = plan.artifacts / "qemu-stderr.log"
        self.qmp_log = plan.artifacts / "qmp.log"
        self.agent_log = plan.artifacts / "agent.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime_dir: Path | None = None
        self._ram_fd: int | None = None
        self.qmp: QmpChannel | None = None
        self.console_socket: socket.socket | None = None
        self.agent_socket: socket.socket | None = None
        self.args: list[str] = []
        self.launched_at = 0.0

    # -- state ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def exit_status(self) -> int | None:
        """None while QEMU runs; its exit status (negative: killed by that signal) once it ended."""
        return self._process.poll() if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def runtime_dir(self) -> Path:
        if self._runtime_dir is None:
            raise InfrastructureError(f"{self.name}: not launched")
        return self._runtime_dir

    @property
    def shared_ram_fd(self) -> int | None:
        return self._ram_fd

    @property
    def shared_ram_path(self) -> Path | None:
        """A path through which this process can open guest RAM (the file itself has no name)."""
        return None if self._ram_fd is None else Path(f"/proc/self/fd/{self._ram_fd}")

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
        return (
            "#!/bin/sh\n"
            f"# Starts VM config '{self.config.name}' ({self.config.source}) as the test run did.\n"
            "# Console: this terminal; Ctrl-C ends QEMU.\n"
            "# QMP: ./qmp.sock   agent (docs/agent-protocol.md): ./agent.sock, e.g. `socat - UNIX:agent.sock`\n"
            'cd "$(dirname "$0")" && rm -f qmp.sock agent.sock\n'
            f"exec {shlex.join([self.binary, *args])}\n"
        )

    # -- launch ---------------------------------------------------------------------------------

    def _make_runtime_dir(self) -> Path:
        RUNTIME_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
        sweep_stale_runtime_dirs()
        return Path(tempfile.mkdtemp(prefix=f"vm-{os.getpid()}-", dir=RUNTIME_ROOT))

    def _make_ram_file(self) -> int:
        path = SHM_DIR / f"mmhil-{os.getpid()}-{secrets.token_hex(6)}.ram"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # Gone from /dev/shm at once: QEMU reopens it through /dev/fd/N, the host maps the fd.
        os.unlink(path)
        os.ftruncate(fd, self.config.memory_bytes)
        return fd

    def launch(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            raise InfrastructureError(f"{self.name}: already launched")
        self._runtime_dir = self._make_runtime_dir()
        qmp_host, qmp_qemu = socket.socketpair()
        console_host, console_qemu = socket.socketpair()
        agent_host, agent_qemu = socket.socketpair()
        qemu_ends = [qmp_qemu, console_qemu, agent_qemu]
        for serial_end in (console_qemu, agent_qemu):
            # QEMU's UART writes a byte at a time and a Unix socket charges each write a whole
            # buffer's overhead; a large send buffer keeps bursts from hitting EAGAIN.
            serial_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        pass_fds = [s.fileno() for s in qemu_ends]
        ram_path = None
        if self.plan.shared_ram:
            self._ram_fd = self._make_ram_file()
            pass_fds.append(self._ram_fd)
            ram_path = f"/dev/fd/{self._ram_fd}"
        self.args = qemu_arguments(
            self.config, self.plan,
            qmp=f"socket,fd={qmp_qemu.fileno()}",
            console=f"socket,fd={console_qemu.fileno()},logfile={self.console_log},logappend=on",
            agent=f"socket,fd={agent_qemu.fileno()}",
            ram_path=ram_path,
        )
        self.qmp = QmpChannel(self.name, self.qmp_log)
        self.console_socket, self.agent_socket = console_host, agent_host
        with _live_lock:
            _live.add(self)
        try:
            with self.stderr_log.open("ab") as stderr:
                self.launched_at = time.monotonic()
                self._process = subprocess.Popen(
                    ["setpriv", "--pdeathsig", "KILL", "--", self.binary, *self.args],
                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=pass_fds,
                    cwd=self._runtime_dir,
                )
        except OSError as exc:
            self.shutdown()
            raise QemuLaunchError(f"cannot execute {self.binary}: {exc}", None, self.command_line(), "") from exc
        finally:
            for s in qemu_ends:
                s.close()
        try:
            self.qmp.connect(qmp_host, timeout)
        except InfrastructureError as exc:
            status = self.wait_exit(2.0)
            stderr_text = self.stderr_tail(200)
            self.shutdown()
            reason = "it exited during start-up" if status is not None else f"QMP did not come up: {exc}"
            raise QemuLaunchError(reason, status, self.command_line(), stderr_text) from exc

    def resume(self) -> None:
        self._require_qmp().command("cont")

    def _require_qmp(self) -> QmpChannel:
        if self.qmp is None:
            raise InfrastructureError(f"{self.name}: not launched")
        return self.qmp

    def wait_exit(self, timeout: float) -> int | None:
        """QEMU's exit status once it has ended by itself, or None if it still runs after `timeout`."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- ending ---------------------------------------------------------------------------------

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send QEMU a signal (tests use it to simulate QEMU dying)."""
        if self.running and self._process is not None:
            self._process.send_signal(sig)

    def shutdown(self, grace: float = 5.0) -> int | None:
        """quit, wait, kill; then release everything. Returns QEMU's exit status."""
        try:
            if self.running and self.qmp is not None:
                try:
                    self.qmp.command("quit", timeout=grace)
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
        if self._ram_fd is not None:
            os.close(self._ram_fd)
            self._ram_fd = None
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
