"""The remote end of an SSH VM host: shipped by SFTP (content-hashed) and run with the host's python3.

It needs nothing but the standard library, QEMU and setpriv on the remote host. Modes:

    serve           one VM. Reads a JSON launch spec from stdin, makes a private runtime directory and
                    (for shared RAM) an unlinked /dev/shm file, and starts QEMU under
                    `setpriv --pdeathsig KILL`, so QEMU dies if this parent dies. It reports on stdout,
                    one JSON object a line: {"ready": ...} once QEMU's sockets exist, {"exit": status}
                    when QEMU ends. QEMU's stdout and stderr go to this process's stderr. On stdin it
                    takes {"signal": N}, answered by {"signalled": N} once kill(2) returned (or QEMU
                    had already ended), so the harness knows the signal is in. EOF on stdin (the
                    channel was closed, or the connection dropped) kills QEMU, and every file this
                    parent made goes with it.
    relay PATH      joins stdin/stdout to the Unix socket PATH (one of QEMU's chardevs), until either
                    side ends: this is how QMP, console and agent cross the SSH connection without
                    opening a port. It says `connected` on stderr once it is.
    sweep           removes runtime directories whose parent process is gone (it was SIGKILLed).
    info            prints {"cpus": N, "kvm": [usable, reason]} for `mmhil hosts` and fan-out.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SOCKETS = ("qmp", "console", "agent")
RUNTIME_PLACEHOLDER = "@RUNTIME@"
RAM_FD_PLACEHOLDER = "@RAMFD@"
CONNECTED = b"connected\n"


def runtime_root() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"mmhil-remote-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path) -> list[str]:
    removed = []
    if root.is_dir():
        for entry in root.iterdir():
            owner = entry.name.split("-")[1] if entry.name.startswith("vm-") else ""
            if owner.isdigit() and not _alive(int(owner)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


def _say(message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the channel may be gone; EOF on stdin tells us so
        os.write(1, (json.dumps(message) + "\n").encode())


def _read_line(buffer: bytearray, deadline: float) -> bytes | None:
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([0], [], [], remaining)[0]:
            return None
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _make_ram_file(size: int) -> int:
    path = Path("/dev/shm") / f"mmhil-{os.getpid()}-{secrets.token_hex(6)}.ram"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)  # no name survives, whatever happens to this process
    os.ftruncate(fd, size)
    return fd


def serve() -> int:
    buffer = bytearray()
    line = _read_line(buffer, time.monotonic() + 30)
    if line is None:
        return 2
    spec = json.loads(line)
    root = runtime_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    sweep(root)
    runtime = Path(tempfile.mkdtemp(prefix=f"vm-{os.getpid()}-", dir=root))
    ram_fd = _make_ram_file(int(spec["ram_bytes"])) if spec.get("ram_bytes") else None
    qemu: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        argv = [a.replace(RUNTIME_PLACEHOLDER, str(runtime)).replace(RAM_FD_PLACEHOLDER, str(ram_fd))
                for a in spec["argv"]]
        try:
            qemu = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *argv], stdin=subprocess.DEVNULL,
                                    stdout=2, stderr=2, cwd=runtime, pass_fds=[ram_fd] if ram_fd is not None else [])
        except OSError as exc:
            _say({"error": f"cannot execute {argv[0]}: {exc}"})
            return 1
        deadline = time.monotonic() + float(spec.get("ready_timeout", 10))
        while not all((runtime / f"{name}.sock").exists() for name in SOCKETS):
            if qemu.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        if qemu.poll() is None:
            ram = None if ram_fd is None else f"/proc/{os.getpid()}/fd/{ram_fd}"
            _say({"ready": True, "pid": qemu.pid, "runtime": str(runtime), "ram": ram, "ram_fd": ram_fd})
        reported = False
        while True:
            if not reported and qemu.poll() is not None:
                shutil.rmtree(runtime, ignore_errors=True)  # the RAM stays readable until EOF (post mortem)
                _say({"exit": qemu.returncode})
                reported = True
            if not select.select([0], [], [], 0.05)[0]:
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                return 0  # the channel is gone: QEMU and every file go with it (finally)
            buffer += chunk
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                command = json.loads(line)
                if "signal" in command:
                    if qemu.poll() is None:
                        qemu.send_signal(int(command["signal"]))
                    _say({"signalled": int(command["signal"])})
    finally:
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        shutil.rmtree(runtime, ignore_errors=True)
        if ram_fd is not None:
            os.close(ram_fd)


def relay(path: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    # QEMU drops serial output while no client is connected: the harness resumes the guest only
    # once every relay has said this (on stderr, so the stream itself stays QEMU's).
    os.write(2, CONNECTED)
    while True:
        readable, _, _ = select.select([0, sock.fileno()], [], [])
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                return 0
            sock.sendall(data)
        if sock.fileno() in readable:
            data = sock.recv(65536)
            if not data:
                return 0
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]


def info() -> int:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as exc:
        kvm = [False, f"/dev/kvm: {'absent' if isinstance(exc, FileNotFoundError) else exc.strerror}"]
    else:
        os.close(fd)
        kvm = [True, "/dev/kvm opens read-write"]
    print(json.dumps({"cpus": os.cpu_count() or 1, "kvm": kvm, "root": str(runtime_root())}))
    return 0


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "serve":
        return serve()
    if mode == "relay" and len(argv) == 3:
        return relay(argv[2])
    if mode == "sweep":
        print(json.dumps(sweep(runtime_root())))
        return 0
    if mode == "info":
        return info()
    print("usage: remote_parent.py serve | relay PATH | sweep | info", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
