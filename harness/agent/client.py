"""The host end of the agent channel (COM2): requests out, frames in, with timeouts and a transcript.

This layer knows frames, not VMs: it reports what happened on the wire through the exceptions below,
and `harness.vm` turns them into BugCheck, QemuDiedError or GuestTimeout with the VM's context.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import time
from pathlib import Path
from typing import TextIO

from harness.agent.codec import (
    MAX_ID,
    Frame,
    Notice,
    Response,
    decode_frame,
    encode_request,
)
from harness.errors import MmhilError, ProtocolError

MAX_FRAME_BYTES = 1 << 20


class ChannelClosed(MmhilError):
    """The agent channel reached end of file: QEMU closed it."""


class ChannelTimeout(MmhilError):
    pass


class AgentStopped(MmhilError):
    """The agent sent `!bugcheck`: the kernel has stopped."""

    def __init__(self, notice: Notice) -> None:
        self.notice = notice
        super().__init__(f"agent reported a bugcheck: {notice.values}")


class AgentClient:
    def __init__(self, sock: socket.socket, read_fd: int, transcript_path: Path) -> None:
        """Requests go out on `sock`; frames come in on `read_fd` (a Pump's pipe), which this owns."""
        self._sock = sock
        self._read_fd = read_fd
        self._buffer = bytearray()
        self._ids = itertools.cycle(range(1, MAX_ID + 1))
        self._transcript: TextIO = transcript_path.open("a", encoding="utf-8")
        self.transcript_path = transcript_path
        self.notices: list[Notice] = []
        # Responses that answered no outstanding request: `=?` errors for unreadable lines, and
        # answers to requests whose caller gave up waiting.
        self.unmatched: list[Response] = []

    def _log(self, direction: str, line: bytes | str) -> None:
        text = line if isinstance(line, str) else line.decode("ascii", errors="backslashreplace")
        if not self._transcript.closed:
            self._transcript.write(f"{time.time():.6f} {direction} {text.rstrip()}\n")
            self._transcript.flush()

    def _read_line(self, deadline: float) -> bytes:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line
            if len(self._buffer) > MAX_FRAME_BYTES:
                raise ProtocolError(f"agent sent more than {MAX_FRAME_BYTES} bytes without a newline")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelTimeout("no complete frame from the agent in time")
            readable, _, _ = select.select([self._read_fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self._read_fd, 1 << 16)
            if not chunk:
                raise ChannelClosed("agent channel closed")
            self._buffer += chunk

    def read_frame(self, timeout: float) -> Frame:
        line = self._read_line(time.monotonic() + timeout)
        self._log("<", line)
        frame = decode_frame(line)
        if isinstance(frame, Notice):
            self.notices.append(frame)
            if frame.kind == "bugcheck":
                raise AgentStopped(frame)
        return frame

    def wait_notice(self, kind: str, timeout: float) -> Notice:
        deadline = time.monotonic() + timeout
        for notice in self.notices:
            if notice.kind == kind:
                return notice
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(frame, Notice) and frame.kind == kind:
                return frame
            if isinstance(frame, Response):
                self.unmatched.append(frame)

    def send_raw(self, data: bytes, timeout: float = 30.0) -> None:
        """Put bytes on the wire as they are (also for tests of the agent's handling of bad input).

        The guest drains its UART one byte at a time, so a large send can take a while: `timeout`
        bounds the whole send.
        """
        self._log(">", data[:512] + (b"..." if len(data) > 512 else b""))
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise ChannelTimeout(f"the agent did not take {len(data)} bytes within {timeout:g} s") from exc
        except OSError as exc:
            raise ChannelClosed(f"agent channel failed: {exc}") from exc

    def call(self, command: str, *args: int | bytes, timeout: float) -> Response:
        """Send one request and wait for its response (ok or err)."""
        request_id = next(self._ids)
        deadline = time.monotonic() + timeout
        self.send_raw(encode_request(request_id, command, *args), timeout)
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(frame, Response):
                if frame.request_id == request_id:
                    return frame
                self.unmatched.append(frame)

    def close(self) -> None:
        """Close what this client owns: the incoming pipe and the transcript (the socket is QEMU's machine's)."""
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        self._transcript.close()
