"""A VM host reached over SSH, through paramiko and nothing else.

- **Connection.** One per host and process (a pytest worker), made when first needed and made again
  when it dropped. Host keys are checked against known_hosts: an unknown key is refused unless the
  spec says `trust=first-use`, and a key that differs from a recorded one is always refused, before
  anything runs there. Keys come from a named key file, or from the SSH agent and ~/.ssh/id_*.
- **Files.** The remote parent (harness/hosts/remote_parent.py) and the kernel are sent by SFTP to
  ~/.cache/mmhil/ under their content hash, so each is sent once; pmemsave files and guest RAM are
  read back by SFTP.
- **One VM.** The remote parent runs on an exec channel (argv quoted with shlex.join). It makes the
  runtime directory and an unlinked RAM file, starts QEMU under `setpriv --pdeathsig KILL`, reports
  on its stdout and forwards QEMU's stderr on its own. When its channel ends for any reason (closed,
  or the connection dropped) it kills QEMU and removes every file it made.
- **Channels.** QEMU's QMP, console and agent chardevs listen on Unix sockets in that runtime
  directory; each is reached by an exec channel running the parent's `relay`, whose stdio is joined
  to the socket. No TCP port is opened on the remote host. On this side each channel is bridged to a
  local socketpair, so QMP, console and agent code is the same as for a local VM; the console bytes
  are also written to the VM's console log as they arrive.
- **Failures.** Every SSH wait has a timeout. A dropped connection shows as `QemuProcess.lost`, and
  the VM layer turns it into HostConnectionLost (INFRA, retried once on a fresh VM and connection).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import select
import shlex
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import paramiko

from harness.errors import (
    HostAuthError,
    HostConnectionLost,
    HostError,
    HostKeyError,
    HostUnreachable,
    InfrastructureError,
    QemuLaunchError,
)
from harness.hosts import remote_parent
from harness.hosts.base import StartedQemu, VmHost
from harness.hosts.spec import HostSpec

if TYPE_CHECKING:
    from harness.config import VmConfig
    from harness.machine import LaunchPlan

CONNECT_TIMEOUT = 10.0  # TCP connect, SSH banner, authentication: each
CHANNEL_TIMEOUT = 10.0  # opening a channel, a request on it, a short command
SEND_TIMEOUT = 30.0  # one write into a channel whose window stays full
KEEPALIVE = 5  # seconds between keepalives: a silent dead peer is noticed within a few of them
CACHE_DIR = PurePosixPath(".cache/mmhil")  # relative to the remote user's home (SFTP and exec start there)
PARENT_SOURCE = Path(remote_parent.__file__)


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        known = self.spec.known_hosts_file
        raise HostKeyError(self.spec.name, f"its host key ({_fingerprint(key)}) is not in {known}; nothing was "
                           f"launched. Record it (ssh-keyscan -p {self.spec.port} {self.spec.hostname} >> {known}) "
                           "or add `#trust=first-use` to the host")


class _RecordFirstUse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        path = self.spec.known_hosts_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with path.open("a", encoding="ascii") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _Link:
    """The live part of one remote VM: its parent's channel and the three bridged sockets.

    One thread moves bytes both ways between the paramiko channels and the local socketpairs, reads
    the parent's reports and copies QEMU's stderr into the VM's log.
    """

    def __init__(self, host: SshHost, control: paramiko.Channel, stderr_log: Path) -> None:
        self.host = host
        self.control = control
        self._stderr = stderr_log.open("ab")
        self._reports = bytearray()
        self._streams: list[tuple[paramiko.Channel, socket.socket, Any]] = []
        self._lock = threading.Lock()
        self.ready: dict[str, Any] | None = None
        self.error: str | None = None
        self.exit_status: int | None = None
        self.signals_acknowledged = 0
        self.lost: str | None = None
        self.changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"ssh-{host.spec.hostname}", daemon=True)
        self._thread.start()

    def bridge(self, channel: paramiko.Channel, tee: Path | None = None) -> socket.socket:
        """A local socket joined to `channel`; bytes from the channel are also appended to `tee`."""
        harness_end, bridge_end = socket.socketpair()
        bridge_end.setblocking(False)
        with self._lock:
            self._streams.append((channel, bridge_end, tee.open("ab") if tee else None))
        return harness_end

    def _run(self) -> None:
        try:
            while not self._closing:
                with self._lock:
                    streams = list(self._streams)
                watched: list[int] = [self.control.fileno()]
                for channel, local, _ in streams:
                    if local.fileno() >= 0:
                        watched += [channel.fileno(), local.fileno()]
                readable = set(select.select(watched, [], [], 0.5)[0])
                self._pump_control()
                for stream in streams:
                    self._pump(stream, readable)
                if not self.host.transport_active() and self.lost is None and self.exit_status is None:
                    self._set_lost(f"the SSH connection to {self.host.name} dropped")
        except Exception as exc:  # a bridge that dies must say why, or the VM looks alive forever
            self._set_lost(f"the bridge to {self.host.name} failed: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                for channel, local, tee in self._streams:
                    channel.close()
                    local.close()
                    if tee:
                        tee.close()
            self._stderr.close()

    def _pump_control(self) -> None:
        control = self.control
        while control.recv_stderr_ready():
            self._stderr.write(control.recv_stderr(65536))
            self._stderr.flush()
        while control.recv_ready():
            self._reports += control.recv(65536)
            while b"\n" in self._reports:
                line, _, rest = bytes(self._reports).partition(b"\n")
                self._reports[:] = rest
                self._report(json.loads(line))
        ended = (control.eof_received or control.closed) and not control.recv_ready()
        if ended and not self._closing and self.exit_status is None and self.lost is None:
            # paramiko closes the channels before it marks the transport dead: give it a moment.
            deadline = time.monotonic() + 2.0
            while self.host.transport_active() and time.monotonic() < deadline:
                time.sleep(0.02)
            why = "dropped" if not self.host.transport_active() else "ended without reporting QEMU's exit"
            self._set_lost(f"the SSH connection to {self.host.name} {why}")

    def _report(self, message: dict[str, Any]) -> None:
        with self.changed:
            if "ready" in message:
                self.ready = message
            if "error" in message:
                self.error = str(message["error"])
            if "exit" in message:
                self.exit_status = int(message["exit"])
            if "signalled" in message:
                self.signals_acknowledged += 1
            self.changed.notify_all()

    def _set_lost(self, why: str) -> None:
        with self.changed:
            if self.lost is None and self.exit_status is None:
                self.lost = why
            self.changed.notify_all()

    def _pump(self, stream: tuple[paramiko.Channel, socket.socket, Any], readable: set[int]) -> None:
        channel, local, tee = stream
        if local.fileno() < 0:
            return
        while channel.recv_ready():
            data = channel.recv(65536)
            if tee:
                tee.write(data)
                tee.flush()
            local.setblocking(True)
            local.settimeout(SEND_TIMEOUT)
            with contextlib.suppress(OSError):  # the harness closed its end: nobody wants the rest
                local.sendall(data)
            local.setblocking(False)
        if (channel.eof_received or channel.closed) and not channel.recv_ready():
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_RDWR)
            local.close()
            return
        if local.fileno() in readable:
            try:
                data = local.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                channel.close()
                local.close()
                return
            try:
                channel.sendall(data)
            except (OSError, EOFError, paramiko.SSHException):
                local.close()  # the harness sees EOF; the link notices the dropped connection

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.control.sendall((json.dumps(message) + "\n").encode())

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return bool(self.changed.wait_for(predicate, timeout))

    def close(self) -> None:
        """Close every channel: the remote parent sees EOF, kills QEMU if it still runs, removes its files."""
        self._closing = True
        self.control.close()
        self._thread.join(5.0)


class RemoteProcess:
    def __init__(self, link: _Link, pid: int) -> None:
        self._link = link
        self._pid = pid

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def lost(self) -> str | None:
        return self._link.lost

    def poll(self) -> int | None:
        return self._link.exit_status

    def wait(self, timeout: float) -> int | None:
        self._link.wait(lambda: self._link.exit_status is not None or self._link.lost is not None, timeout)
        return self._link.exit_status

    def send_signal(self, sig: int) -> None:
        """Returns once the remote parent has sent it, as kill(2) does locally: a test that kills QEMU
        and then calls the agent must never find QEMU still answering."""
        link = self._link
        with link.changed:
            before = link.signals_acknowledged
        link.send({"signal": int(sig)})
        if not link.wait(lambda: link.signals_acknowledged > before or link.lost is not None, CHANNEL_TIMEOUT):
            raise HostError(link.host.name, f"the remote parent did not acknowledge signal {sig} "
                                            f"within {CHANNEL_TIMEOUT:.0f} s")


class SftpRamFile:
    """The remote QEMU's RAM file, opened by SFTP (read-write) through the parent's descriptor in /proc.

    Plain reads and writes use one handle for the VM's life. Each pipelined read (`readv`) gets a
    handle of its own, closed after it: paramiko's prefetch state (a helper thread still sending while
    answers arrive, answers kept by offset) must never outlive the call, or a later read could be
    served bytes from an earlier stopped window."""

    def __init__(self, sftp: paramiko.SFTPClient, path: str) -> None:
        self._sftp = sftp
        self._path = path
        self._file = sftp.open(path, "r+b")
        self._lock = threading.Lock()

    def read_at(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._file.seek(offset)
            return bytes(self._file.read(size))

    def read_many_at(self, spans: list[tuple[int, int]]) -> list[bytes]:
        if not spans:
            return []
        with self._lock, self._sftp.open(self._path, "rb") as once:
            return [bytes(chunk) for chunk in once.readv(spans)]

    def write_at(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._file.seek(offset)
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self._file.close()


class SftpScratch:
    def __init__(self, host: SshHost, directory: PurePosixPath) -> None:
        self._host = host
        self._directory = directory

    @property
    def directory(self) -> PurePosixPath:
        return self._directory

    def take(self, name: str) -> bytes:
        sftp = self._host.sftp()
        path = str(self._directory / name)
        try:
            with sftp.open(path, "rb") as f:
                f.prefetch()
                return bytes(f.read())
        except (EOFError, paramiko.SSHException) as exc:
            raise OSError(f"SFTP read of {path} on {self._host.name} failed: {exc}") from exc
        finally:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                sftp.remove(path)


class SshHost(VmHost):
    def __init__(self, spec: HostSpec) -> None:
        super().__init__(spec)
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._uploaded: dict[str, str] = {}  # content hash -> remote path, for this connection
        self._cache = CACHE_DIR
        self._info: dict[str, Any] | None = None
        self._versions: dict[str, str] = {}

    @property
    def is_local(self) -> bool:
        return False

    # -- connection -----------------------------------------------------------------------------

    def transport_active(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    def _connect(self) -> None:
        spec = self.spec
        client = paramiko.SSHClient()
        known = spec.known_hosts_file
        if known.is_file():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_RecordFirstUse(spec) if spec.trust == "first-use" else _RefuseUnknown(spec))
        key = None
        if spec.key_file is not None:
            try:
                key = paramiko.PKey.from_path(spec.key_file)
            except (OSError, paramiko.SSHException) as exc:
                client.close()
                raise HostAuthError(spec.name, f"cannot use key file {spec.key_file} for user {spec.user}: "
                                    f"{exc}") from exc
        try:
            client.connect(
                spec.hostname, port=spec.port, username=spec.user, pkey=key,
                allow_agent=spec.key_file is None, look_for_keys=spec.key_file is None,
                timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT,
                channel_timeout=CHANNEL_TIMEOUT,
            )
        except HostError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(spec.name, f"its host key ({_fingerprint(exc.key)}) differs from the one {known} "
                               f"records ({_fingerprint(exc.expected_key)}); nothing was launched") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise HostAuthError(spec.name, f"{spec.hostname}:{spec.port} refused user {spec.user} with "
                                f"{spec.key_source}: {exc}") from exc
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            client.close()
            why = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
            raise HostUnreachable(spec.name, f"cannot connect to {spec.hostname}:{spec.port}: {why}") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise HostUnreachable(spec.name, f"cannot connect to {spec.hostname}:{spec.port}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE)
        self._client = client
        self._uploaded = {}
        try:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(SEND_TIMEOUT)
            self._cache = PurePosixPath(self._sftp.normalize(".")) / CACHE_DIR
            for directory in (self._cache.parent, self._cache):
                if not self._exists(str(directory)):
                    self._sftp.mkdir(str(directory), 0o700)
            self._run([*self._parent_command(), "sweep"])
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._drop()
            raise HostUnreachable(spec.name, f"connected, but could not prepare {CACHE_DIR}: {exc}") from exc

    def _exists(self, path: str) -> bool:
        assert self._sftp is not None
        try:
            self._sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def _drop(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None
        self._info = None

    def check(self) -> None:
        """Connect if not connected (again, after a drop); HostError if that fails."""
        with self._lock:
            if not self.transport_active():
                self._drop()
                self._connect()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def sftp(self) -> paramiko.SFTPClient:
        self.check()
        assert self._sftp is not None
        return self._sftp

    def _transport(self) -> paramiko.Transport:
        self.check()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def _open_exec(self, argv: list[str]) -> paramiko.Channel:
        """An exec channel running `argv` (quoted with shlex.join), opened and started within timeouts."""
        try:
            channel = self._transport().open_session(timeout=CHANNEL_TIMEOUT)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostConnectionLost(f"{self.name}: cannot open an SSH channel: {exc}") from exc
        # paramiko waits for the exec reply without a limit: closing the channel ends that wait.
        watchdog = threading.Timer(CHANNEL_TIMEOUT, channel.close)
        watchdog.start()
        try:
            channel.exec_command(shlex.join(argv))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostConnectionLost(f"{self.name}: the server did not run {argv[0]}: {exc}") from exc
        finally:
            watchdog.cancel()
        channel.settimeout(SEND_TIMEOUT)
        return channel

    def _run(self, argv: list[str], timeout: float = CHANNEL_TIMEOUT) -> str:
        """Run a short command; its stdout. InfrastructureError if it fails or outlasts `timeout`."""
        channel = self._open_exec(argv)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            while not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"{self.name}: {shlex.join(argv)} took longer than {timeout:g} s")
                select.select([channel.fileno()], [], [], 0.2)
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
            status = channel.recv_exit_status()
        finally:
            channel.close()
        if status != 0:
            raise InfrastructureError(f"{self.name}: {shlex.join(argv)} exited {status}: "
                                      f"{err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    # -- files ----------------------------------------------------------------------------------

    def upload(self, local: Path) -> str:
        """Send a file once per content: its path on the host, under ~/.cache/mmhil/<sha256>-<name>."""
        data = local.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            sftp = self.sftp()
            remote = self._uploaded.get(digest)
            if remote is not None:
                return remote
            remote = str(self._cache / f"{digest[:32]}-{local.name}")
            try:
                if not self._exists(remote) or sftp.stat(remote).st_size != len(data):
                    partial = f"{remote}.partial-{secrets.token_hex(4)}"
                    with sftp.open(partial, "wb") as f:
                        f.set_pipelined(True)
                        f.write(data)
                    sftp.posix_rename(partial, remote)  # complete or absent, never half there
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise HostConnectionLost(f"{self.name}: sending {local} failed: {exc}") from exc
            self._uploaded[digest] = remote
            return remote

    def _parent_command(self) -> list[str]:
        return ["python3", self.upload(PARENT_SOURCE)]

    # -- facts ----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with self._lock:
            if self._info is None:
                self._info = dict(json.loads(self._run([*self._parent_command(), "info"])))
            return self._info

    def qemu_version(self, binary: str) -> str:
        with self._lock:
            if binary not in self._versions:
                out = self._run([binary, "--version"])
                match = re.search(r"version (\S+)", out)
                self._versions[binary] = match.group(1) if match else out.strip()
            return self._versions[binary]

    def kvm_status(self) -> tuple[bool, str]:
        usable, reason = self.info()["kvm"]
        return bool(usable), str(reason)

    def core_count(self) -> int:
        return self.spec.cores or int(self.info()["cpus"])

    def runtime_root(self) -> PurePosixPath:
        return PurePosixPath(str(self.info()["root"]))

    # -- one VM ---------------------------------------------------------------------------------

    def _wait_connected(self, relay: paramiko.Channel, name: str, timeout: float) -> None:
        """Until the relay has reached QEMU's socket: serial bytes sent before that would be lost."""
        said = bytearray()
        deadline = time.monotonic() + timeout
        while not said.endswith(remote_parent.CONNECTED):
            if relay.exit_status_ready() and not relay.recv_stderr_ready():
                raise InfrastructureError(f"{self.name}: the relay to QEMU's {name} socket ended: {bytes(said)!r}")
            if time.monotonic() > deadline:
                raise InfrastructureError(f"{self.name}: the relay to QEMU's {name} socket did not connect "
                                          f"within {timeout:g} s")
            select.select([relay.fileno()], [], [], 0.1)
            while relay.recv_stderr_ready():
                said += relay.recv_stderr(64)

    def start_qemu(self, config: VmConfig, plan: LaunchPlan, *, binary: str, stderr_log: Path,
                   console_log: Path, timeout: float) -> StartedQemu:
        from harness.machine import qemu_arguments

        if plan.gdb_socket is not None:
            raise InfrastructureError(f"{self.name}: --gdb needs QEMU on this machine (its socket would be remote)")
        runtime = remote_parent.RUNTIME_PLACEHOLDER
        # Paths over there.
        kernel = Path(self.upload(plan.kernel)) if plan.kernel is not None else None
        firmware = Path(self.upload(plan.firmware)) if plan.firmware is not None else None
        args = qemu_arguments(
            config, replace(plan, kernel=kernel, firmware=firmware),
            qmp=f"socket,path={runtime}/qmp.sock,server=on,wait=off",
            console=f"socket,path={runtime}/console.sock,server=on,wait=off",
            agent=f"socket,path={runtime}/agent.sock,server=on,wait=off",
            ram_path=f"/dev/fd/{remote_parent.RAM_FD_PLACEHOLDER}" if plan.shared_ram else None,
        )
        control = self._open_exec([*self._parent_command(), "serve"])
        link = _Link(self, control, stderr_log)
        spec = {"argv": [binary, *args], "ram_bytes": config.memory_bytes if plan.shared_ram else 0,
                "ready_timeout": timeout}
        link.send(spec)
        link.wait(lambda: link.ready is not None or link.exit_status is not None or link.error is not None
                  or link.lost is not None, timeout + CHANNEL_TIMEOUT)
        ready = link.ready
        shown = shlex.join([binary, *args])
        if ready is None:
            link.close()
            if link.lost is not None:
                raise HostConnectionLost(f"{config.name}: {link.lost} while QEMU started on it")
            stderr_text = "\n".join(stderr_log.read_text(errors="replace").splitlines()[-200:])
            reason = link.error or ("it exited during start-up" if link.exit_status is not None
                                    else f"its sockets did not appear within {timeout:g} s")
            raise QemuLaunchError(f"{reason} (on {self.name})", link.exit_status, shown, stderr_text)
        runtime_dir = PurePosixPath(str(ready["runtime"]))
        ram_fd = str(ready["ram_fd"])
        shown_args = [a.replace(runtime, str(runtime_dir)).replace(remote_parent.RAM_FD_PLACEHOLDER, ram_fd)
                      for a in args]
        try:
            relays = [self._open_exec([*self._parent_command(), "relay", str(runtime_dir / f"{n}.sock")])
                      for n in remote_parent.SOCKETS]
            for name, relay in zip(remote_parent.SOCKETS, relays, strict=True):
                self._wait_connected(relay, name, timeout)
            sockets = [link.bridge(relay, console_log if name == "console" else None)
                       for name, relay in zip(remote_parent.SOCKETS, relays, strict=True)]
            ram_file = SftpRamFile(self.sftp(), str(ready["ram"])) if ready.get("ram") else None
        except (HostError, InfrastructureError, OSError, EOFError, paramiko.SSHException) as exc:
            link.close()
            raise HostConnectionLost(f"{config.name}: could not reach QEMU's sockets on {self.name}: {exc}") from exc

        def release() -> None:
            if ram_file is not None:
                ram_file.close()
            link.close()

        return StartedQemu(
            process=RemoteProcess(link, int(ready["pid"])), args=shown_args,
            qmp=sockets[0], console=sockets[1], agent=sockets[2],
            runtime_dir=runtime_dir, scratch=SftpScratch(self, runtime_dir), release=release, ram_file=ram_file,
        )
