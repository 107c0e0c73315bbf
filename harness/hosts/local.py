"""This machine as a VM host: QEMU as a child process, its channels over socketpairs.

- QMP, console and agent each run over a socketpair: no socket files, no ports.
- Guest RAM, when shared, lives in a /dev/shm file that is unlinked before QEMU starts: QEMU opens it
  through /dev/fd, the harness maps the descriptor, and nothing can be left behind.
- QEMU runs under `setpriv --pdeathsig KILL`, so it dies with the process that launched it even when
  that process is SIGKILLed (a killed pytest-xdist worker leaves no orphan).
- When the harness runs as root, QEMU does not: setpriv starts it as the system user `mmhil-qemu`
  (created at first use if `ci/setup` has not), with no new privileges. Everything QEMU must open is
  handed to it so that this works: the RAM file and its runtime directory belong to that user, and
  the console log is passed as an open descriptor (`-add-fd`), so QEMU never reopens an artifact.
- Runtime directories of dead harness processes are swept on the next launch.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import select
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import InfrastructureError, QemuLaunchError
from harness.hosts.base import DirectoryScratch, StartedQemu, VmHost
from harness.hosts.spec import LOCAL, HostSpec

if TYPE_CHECKING:
    from harness.config import VmConfig
    from harness.machine import LaunchPlan

RUNTIME_ROOT = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / "mmhil-runtime"
SHM_DIR = Path("/dev/shm")
QEMU_USER = "mmhil-qemu"
KVM_DEVICE = "/dev/kvm"
CONSOLE_LOG_FDSET = 1


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


# -- who QEMU runs as ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QemuUser:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


_user_lock = threading.Lock()


@cache
def qemu_user() -> QemuUser | None:
    """The unprivileged user QEMU runs as when the harness is root (None: QEMU runs as the harness)."""
    if os.geteuid() != 0:
        return None
    with _user_lock:
        try:
            entry = pwd.getpwnam(QEMU_USER)
        except KeyError:
            _create_qemu_user()
            entry = pwd.getpwnam(QEMU_USER)
    groups = {g.gr_gid for g in grp.getgrall() if QEMU_USER in g.gr_mem} | {entry.pw_gid}
    return QemuUser(QEMU_USER, entry.pw_uid, entry.pw_gid, frozenset(groups))


def _create_qemu_user() -> None:
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin"]
    with contextlib.suppress(KeyError):
        grp.getgrnam("kvm")
        command += ["--groups", "kvm"]
    result = subprocess.run([*command, QEMU_USER], capture_output=True, text=True, timeout=30)
    with contextlib.suppress(KeyError):  # another worker may have created it meanwhile
        pwd.getpwnam(QEMU_USER)
        return
    raise InfrastructureError(f"the harness runs as root, so QEMU runs as the system user {QEMU_USER}, which "
                              f"does not exist and could not be created: {result.stderr.strip()}")


def _name_of(lookup: Callable[[int], str], number: int) -> str:
    try:
        return lookup(number)
    except KeyError:
        return str(number)


def _can_open_read_write(path: str, user: QemuUser) -> tuple[bool, str]:
    try:
        st = os.stat(path)
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    if (st.st_uid == user.uid and mode & 0o600 == 0o600) or (st.st_gid in user.groups and mode & 0o060 == 0o060) \
            or mode & 0o006 == 0o006:
        return True, f"{path} opens read-write for {user.name}"
    owner = _name_of(lambda uid: pwd.getpwuid(uid).pw_name, st.st_uid)
    group = _name_of(lambda gid: grp.getgrgid(gid).gr_name, st.st_gid)
    return False, (f"{path} is {owner}:{group} {mode:04o}, so QEMU's user {user.name} (the harness runs as root, "
                   f"QEMU does not) cannot open it; ci/setup gives it to group kvm with mode 0660")


def _setpriv(user: QemuUser | None) -> list[str]:
    command = ["setpriv", "--pdeathsig", "KILL"]
    if user is not None:
        command += ["--reuid", str(user.uid), "--regid", str(user.gid), "--init-groups", "--no-new-privs"]
    return [*command, "--"]


def _permits(st: os.stat_result, user: QemuUser, access: int) -> bool:
    """Whether `user` has `access` (4 read, 1 search) by the mode bits that apply to it."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & access << 6)
    if st.st_gid in user.groups:
        return bool(st.st_mode & access << 3)
    return bool(st.st_mode & access)


def _check_traversable(path: Path, user: QemuUser, advice: str) -> None:
    for parent in [path, *path.parents]:
        st = parent.stat()
        if not _permits(st, user, 1):
            raise InfrastructureError(f"QEMU runs as {user.name} (the harness runs as root, QEMU does not), which "
                                      f"cannot reach {path}: {parent} is mode {stat.S_IMODE(st.st_mode):04o}. "
                                      f"{advice}")


def _check_readable(path: Path, user: QemuUser) -> None:
    """QEMU opens the kernel and the firmware ROM by name (-kernel, -bios), as its own user."""
    advice = "Put the build where other users may read it (a copy in a private directory is not)"
    _check_traversable(path.parent, user, advice)
    st = path.stat()
    if not _permits(st, user, 4):
        raise InfrastructureError(f"QEMU runs as {user.name} (the harness runs as root, QEMU does not), which "
                                  f"cannot read {path}: it is mode {stat.S_IMODE(st.st_mode):04o}. {advice}")


# -- the process --------------------------------------------------------------------------------


class LocalProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int | None:
        return self._popen.pid

    @property
    def lost(self) -> str | None:
        return None

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float) -> int | None:
        # Popen.wait(timeout) sleeps 0.5, 1, 2, 4 ms... between polls, which puts 2-4 ms on every
        # shutdown; a pidfd becomes readable the moment the process ends.
        if self._popen.poll() is None:
            pidfd = os.pidfd_open(self._popen.pid)
            try:
                watch = select.poll()
                watch.register(pidfd, select.POLLIN)
                watch.poll(max(timeout, 0.0) * 1000)
            finally:
                os.close(pidfd)
        return self._popen.poll()

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(sig)


class LocalHost(VmHost):
    def __init__(self, spec: HostSpec = LOCAL) -> None:
        super().__init__(spec)

    @property
    def is_local(self) -> bool:
        return True

    def qemu_version(self, binary: str) -> str:
        from harness.probe import qemu_version

        return qemu_version(binary)

    def kvm_status(self) -> tuple[bool, str]:
        user = qemu_user()
        if user is not None:
            return _can_open_read_write(KVM_DEVICE, user)
        try:
            fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return False, f"{KVM_DEVICE}: {'absent' if isinstance(exc, FileNotFoundError) else exc.strerror}"
        os.close(fd)
        return True, f"{KVM_DEVICE} opens read-write"

    def core_count(self) -> int:
        return self.spec.cores or os.cpu_count() or 1

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _make_runtime_dir(self, user: QemuUser | None) -> Path:
        RUNTIME_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
        sweep_stale_runtime_dirs()
        path = Path(tempfile.mkdtemp(prefix=f"vm-{os.getpid()}-", dir=RUNTIME_ROOT))
        if user is not None:
            # QEMU's user writes here (pmemsave) and must pass through the root to reach it.
            RUNTIME_ROOT.chmod(0o711)
            os.chown(path, user.uid, user.gid)
            # QEMU opens files here by absolute path (pmemsave): it must reach it.
            _check_traversable(path, user, "Point XDG_RUNTIME_DIR (or TMPDIR) at a directory that others may "
                                           "traverse")
        return path

    def _make_ram_file(self, size: int, user: QemuUser | None) -> int:
        path = SHM_DIR / f"mmhil-{os.getpid()}-{secrets.token_hex(6)}.ram"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # Gone from /dev/shm at once: QEMU reopens it through /dev/fd/N, the host maps the fd.
        os.unlink(path)
        os.ftruncate(fd, size)
        if user is not None:
            os.fchown(fd, user.uid, user.gid)  # the reopen through /dev/fd checks the file's owner
        return fd

    def start_qemu(self, config: VmConfig, plan: LaunchPlan, *, binary: str, stderr_log: Path,
                   console_log: Path, timeout: float) -> StartedQemu:
        from harness.machine import qemu_arguments

        user = qemu_user()
        if user is not None:
            for opened_by_name in (plan.kernel, plan.firmware):
                if opened_by_name is not None:
                    _check_readable(opened_by_name, user)
        runtime_dir = self._make_runtime_dir(user)
        qmp_host, qmp_qemu = socket.socketpair()
        console_host, console_qemu = socket.socketpair()
        agent_host, agent_qemu = socket.socketpair()
        qemu_ends = [qmp_qemu, console_qemu, agent_qemu]
        for serial_end in (console_qemu, agent_qemu):
            # QEMU's UART writes a byte at a time and a Unix socket charges each write a whole
            # buffer's overhead; a large send buffer keeps bursts from hitting EAGAIN.
            serial_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        # QEMU writes the console log through a descriptor it is given, never by reopening the path.
        log_fd = os.open(console_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        ram_fd = self._make_ram_file(config.memory_bytes, user) if plan.shared_ram else None
        pass_fds = [s.fileno() for s in qemu_ends] + [log_fd] + ([ram_fd] if ram_fd is not None else [])
        gdb_link = plan.gdb_socket
        if gdb_link is not None:
            # In the runtime dir, not among the artifacts: QEMU's user may not write there, and a deep
            # artifacts path would pass the 107-byte limit of a Unix socket's name.
            plan = replace(plan, gdb_socket=runtime_dir / "gdb.sock")
        plan = replace(plan, extra_args=("-add-fd", f"fd={log_fd},set={CONSOLE_LOG_FDSET}", *plan.extra_args))
        args = qemu_arguments(
            config, plan,
            qmp=f"socket,fd={qmp_qemu.fileno()}",
            console=f"socket,fd={console_qemu.fileno()},logfile=/dev/fdset/{CONSOLE_LOG_FDSET},logappend=on",
            agent=f"socket,fd={agent_qemu.fileno()}",
            ram_path=None if ram_fd is None else f"/dev/fd/{ram_fd}",
            hello_in_mailbox=ram_fd is not None,
        )

        def release() -> None:
            if ram_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(ram_fd)
            shutil.rmtree(runtime_dir, ignore_errors=True)

        try:
            with stderr_log.open("ab") as stderr:
                popen = subprocess.Popen(
                    [*_setpriv(user), binary, *args],
                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=pass_fds, cwd=runtime_dir,
                )
        except OSError as exc:
            for s in (qmp_host, console_host, agent_host):
                s.close()
            release()
            raise QemuLaunchError(f"cannot execute {binary}: {exc}", None, shlex.join([binary, *args]), "") from exc
        finally:
            for s in qemu_ends:
                s.close()
            os.close(log_fd)
        if gdb_link is not None and plan.gdb_socket is not None:  # the artifacts show where it went
            gdb_link.unlink(missing_ok=True)
            gdb_link.symlink_to(plan.gdb_socket)
        return StartedQemu(
            process=LocalProcess(popen), args=args, qmp=qmp_host, console=console_host, agent=agent_host,
            runtime_dir=runtime_dir, scratch=DirectoryScratch(runtime_dir), release=release,
            ram_fd=ram_fd, gdb_socket=plan.gdb_socket,
        )


_LOCAL = LocalHost()


def local_host() -> LocalHost:
    return _LOCAL


__all__ = ["RUNTIME_ROOT", "SHM_DIR", "LocalHost", "local_host", "qemu_user", "sweep_stale_runtime_dirs"]
