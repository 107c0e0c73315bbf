"""Keeps QEMU's serial output flowing whether or not anybody is reading it yet.

QEMU's UART model hands every byte to its chardev as a separate write, and a Unix socket charges
each one a whole buffer's overhead: after only ~280 unread bytes QEMU stops transmitting and the
guest spins on a full UART, so an idle reader (a test between waits, a large request still being
sent) would stall the guest. A Pump thread therefore drains the socket at all times into a pipe
(1 MiB where the kernel allows), holding any excess in memory, and the readers (pexpect for the
console, the agent client) read the pipe. EOF on the socket becomes EOF on the pipe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import termios
import threading

PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Pump:
    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self.read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # an unprivileged limit below 1 MiB only means a smaller pipe
            fcntl.fcntl(self._write_fd, _F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(self._write_fd, False)
        self._pending = bytearray()  # taken from the socket, not yet in the pipe
        self._lock = threading.Lock()  # holds `_pending` and the socket's queue still together
        self._thread = threading.Thread(target=self._run, name=f"pump-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = self._pending
        socket_open = True
        while socket_open or pending:
            poller = select.poll()
            if socket_open:
                try:
                    poller.register(self._sock, select.POLLIN)
                except (ValueError, OSError):  # closed by its owner after close() stopped waiting for us
                    socket_open = False
                    continue
            if pending:
                poller.register(self._write_fd, select.POLLOUT)
            ready = {fd for fd, _ in poller.poll()}
            with self._lock:
                if self._sock.fileno() in ready:
                    try:
                        data = self._sock.recv(1 << 16)
                    except OSError:
                        data = b""
                    socket_open = bool(data)
                    pending += data
                if self._write_fd in ready or pending:
                    try:
                        del pending[: os.write(self._write_fd, pending[: 1 << 16])]
                    except BlockingIOError:
                        pass
                    except OSError:  # the reader is gone: nobody wants the rest
                        pending.clear()
        os.close(self._write_fd)

    def caught_up(self) -> bool:
        """Everything the socket has received so far is in the pipe (or the socket is gone)."""
        with self._lock:
            if self._pending:
                return False
            try:
                unread = fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
            except (OSError, ValueError):
                return True
            count: int = struct.unpack("i", unread)[0]
            return count == 0

    def close(self) -> None:
        """Stop draining: the socket is shut down (its owner closes it), the thread ends, readers see EOF."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5.0)
