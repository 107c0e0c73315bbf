"""The host end of the agent channel: requests out, frames in, with timeouts and a transcript.

Frames travel on COM2, or through the mailbox in guest RAM (harness.agent.mailbox) when the VM's RAM
is shared with the host: a request is posted there and rung with one byte on COM2, and the answer
comes back the same way. COM2 stays the channel of record: `!hello` and `!bugcheck` always come on
it, raw sends (tests of bad input) go on it, and a request waits for COM2 to be quiet before it may
use the mailbox, so the two can never interleave inside the agent.

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
from harness.agent.mailbox import DOORBELL_REQUEST, DOORBELL_RESPONSE, Mailbox
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
        self.mailbox: Mailbox | None = None
        self.use_mailbox = True  # False keeps requests on COM2 (tests and benchmarks of the serial path)
        self._mailbox_waiting: tuple[int, int | None] | None = None  # (sequence, request id) unanswered
        self._serial_unanswered = 0  # lines sent on COM2 that no frame has answered yet
        self._serial_line_open = False  # bytes sent on COM2 since its last newline

    def attach_mailbox(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    @property
    def mailbox_ready(self) -> bool:
        """A request may go through the mailbox: COM2 and the mailbox both have nothing outstanding."""
        return (self.mailbox is not None and self.use_mailbox and self._mailbox_waiting is None
                and self._serial_unanswered == 0 and not self._serial_line_open)

    def _log(self, direction: str, line: bytes | str) -> None:
        text = line if isinstance(line, str) else line.decode("ascii", errors="backslashreplace")
        if not self._transcript.closed:
            self._transcript.write(f"{time.time():.6f} {direction} {text.rstrip()}\n")
            self._transcript.flush()

    def _read_line(self, deadline: float) -> tuple[bytes, bool]:
        """The next frame's line, and whether it came through the mailbox."""
        while True:
            if self._buffer[:1] == bytes([DOORBELL_RESPONSE]):  # frames never hold it: always a doorbell
                del self._buffer[:1]
                return self._take_mailbox_response(), True
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line, False
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

    def _take_mailbox_response(self) -> bytes:
        if self.mailbox is None or self._mailbox_waiting is None:
            raise ProtocolError("the agent rang the mailbox doorbell, but no mailbox request is outstanding")
        sequence, _ = self._mailbox_waiting
        data = self.mailbox.take(sequence)
        if data is None:
            raise ProtocolError(f"the agent rang the mailbox doorbell, but the mailbox holds no answer to "
                                f"request {sequence}")
        self._mailbox_waiting = None
        if not data.endswith(b"\n") or b"\n" in data[:-1]:
            raise ProtocolError(f"the mailbox response is not one frame line: {data[:200]!r}")
        return data[:-1]

    def read_frame(self, timeout: float) -> Frame:
        line, from_mailbox = self._read_line(time.monotonic() + timeout)
        self._log("< [mailbox]" if from_mailbox else "<", line)
        frame = decode_frame(line)
        if isinstance(frame, Response) and not from_mailbox:
            if self._mailbox_waiting is not None and frame.request_id == self._mailbox_waiting[1]:
                self._mailbox_waiting = None  # the answer outgrew the mailbox and came on COM2
            else:
                self._serial_unanswered = max(0, self._serial_unanswered - 1)
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
        self._serial_unanswered += data.count(b"\n")  # each line gets exactly one answer
        if data:
            self._serial_line_open = not data.endswith(b"\n")
        self._send(data, timeout)

    def post_raw(self, request: bytes, request_id: int | None = None, timeout: float = 30.0) -> None:
        """Put a request in the mailbox as it is (its line without the newline) and ring the agent.

        `request_id` is the id the answer will carry, if the request has a readable one.
        """
        if self.mailbox is None:
            raise ProtocolError("this VM's agent has no mailbox: its RAM is not shared with the host")
        if not self.mailbox_ready:
            raise ProtocolError("a mailbox request needs COM2 and the mailbox quiet: an earlier request "
                                "is still unanswered")
        self._log("> [mailbox]", request[:512] + (b"..." if len(request) > 512 else b""))
        self._mailbox_waiting = (self.mailbox.post(request), request_id)
        self._send(DOORBELL_REQUEST, timeout)

    def _send(self, data: bytes, timeout: float) -> None:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise ChannelTimeout(f"the agent did not take {len(data)} bytes within {timeout:g} s") from exc
        except OSError as exc:
            raise ChannelClosed(f"agent channel failed: {exc}") from exc

    def call(self, command: str, *args: int | bytes, timeout: float, cpu: int | None = None) -> Response:
        """Send one request, through the mailbox when it is ready, and wait for its response (ok or err).
        With `cpu`, the request runs on that CPU."""
        request_id = next(self._ids)
        deadline = time.monotonic() + timeout
        line = encode_request(request_id, command, *args, cpu=cpu)
        if self.mailbox_ready:
            self.post_raw(line[:-1], request_id, timeout)
        else:
            self.send_raw(line, timeout)
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
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None
        self._transcript.close()
