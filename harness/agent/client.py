"""The host end of the agent channel: requests out, frames in, with timeouts and a transcript.

Frames travel on COM2, or through the mailbox in guest RAM (harness.agent.mailbox) when the VM's RAM
is shared with the host. Through the mailbox, a request (or a batch of them) is posted in RAM and the
host spins on the answer for a bounded time, while the agent polls for requests: a round trip then
crosses no UART and wakes no thread. Each side that stops polling says so in the mailbox's header,
and the other rings it with one byte on COM2. COM2 stays the channel of record: `!bugcheck` always
comes on it, raw sends (tests of bad input) go on it, answers too big for the mailbox come on it,
and a request waits for COM2 to be quiet before it may use the mailbox, so the two can never
interleave inside the agent. `!hello` comes on COM2 too, unless the host asked for it in the mailbox
(hello=mailbox on the kernel's command line): COM2 then carries one doorbell byte instead of ~200.

This layer knows frames, not VMs: it reports what happened on the wire through the exceptions below,
and `harness.vm` turns them into BugCheck, QemuDiedError or GuestTimeout with the VM's context.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

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
from harness.pump import Pump

MAX_FRAME_BYTES = 1 << 20
# How long the host spins on a mailbox answer before it blocks and asks the agent to ring: longer
# than almost every DDI takes, short enough that a slow one does not burn a core. A spin is free only
# on an idle core: where pytest-xdist runs a worker per core, every worker's QEMU shares the cores
# with the other workers, and a spin takes the core another worker's vCPU needs.
SPIN_SECONDS = 0.002
SHARED_CORES_SPIN_SECONDS = 0.0002
# For the same reason, where the cores are shared the agent is asked to halt after this long without
# work instead of its own ~0.9 ms: most gaps between requests are the host's Python, and the agent's
# polling through them takes a core from the other worker. 0 leaves the agent's own interval.
SHARED_CORES_AGENT_QUIET_MICROSECONDS = 50
# While spinning, how many polls of the mailbox between looks at COM2 (a `!bugcheck`, a spilled
# answer) and at whether the agent halted before it saw the request.
POLLS_PER_LOOK = 64
# While blocked, how long one wait on COM2 lasts before the mailbox is looked at again: it bounds
# the cost of a doorbell lost to a race between the two sides' stores.
BLOCKED_RECHECK_SECONDS = 0.001
# How long COM2's bytes may take from QEMU's socket to the pump's pipe once the mailbox has answered:
# a thread's wake-up, generously.
CATCH_UP_SECONDS = 2.0

Request = tuple[str, Sequence[int | bytes]]


def cores_are_shared() -> bool:
    """This process's pytest-xdist run has a worker per core, so every core is some worker's."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return workers >= len(os.sched_getaffinity(0))


def spin_seconds() -> float:
    """The spin for this process: the short one where the cores are shared."""
    return SHARED_CORES_SPIN_SECONDS if cores_are_shared() else SPIN_SECONDS


def agent_quiet_microseconds() -> int:
    """The quiet interval to ask of the agent: the short one where the cores are shared, else 0."""
    return SHARED_CORES_AGENT_QUIET_MICROSECONDS if cores_are_shared() else 0


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
    def __init__(self, sock: socket.socket, pump: Pump, transcript_path: Path) -> None:
        """Requests go out on `sock`; frames come in through `pump`'s pipe, which this owns."""
        self._sock = sock
        self._read_fd = pump.read_fd
        self._caught_up = pump.caught_up
        self._buffer = bytearray()
        self._spin_seconds = spin_seconds()
        self._ids = itertools.cycle(range(1, MAX_ID + 1))
        # Unbuffered and appended with one write per line: the transcript survives a SIGKILL whole.
        self._transcript_fd = os.open(transcript_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.transcript_path = transcript_path
        self.notices: list[Notice] = []
        # Responses that answered no outstanding request: `=?` errors for unreadable lines, and
        # answers to requests whose caller gave up waiting.
        self.unmatched: list[Response] = []
        self.mailbox: Mailbox | None = None
        self.use_mailbox = True  # False keeps requests on COM2 (tests and benchmarks of the serial path)
        self._mailbox_sequence: int | None = None  # the posted mailbox request the agent has not finished
        self._rang = False  # the doorbell went out for that request
        self._mailbox_lines: deque[bytes] = deque()  # answers taken from the mailbox, not yet read
        self._answered_elsewhere: set[int] = set()  # ids posted in the mailbox whose answers may spill to COM2
        self._serial_unanswered = 0  # lines sent on COM2 that no frame has answered yet
        self._serial_line_open = False  # bytes sent on COM2 since its last newline

    def attach_mailbox(self, mailbox: Mailbox) -> None:
        mailbox.ask_agent_quiet(agent_quiet_microseconds())
        self.mailbox = mailbox

    @property
    def mailbox_ready(self) -> bool:
        """A request may go through the mailbox: COM2 and the mailbox both have nothing outstanding."""
        return (self.mailbox is not None and self.use_mailbox and self._mailbox_sequence is None
                and self._serial_unanswered == 0 and not self._serial_line_open)

    def _log(self, direction: str, data: bytes) -> None:
        """One transcript line per frame line in `data`, written at once (a batch is one write)."""
        if self._transcript_fd < 0:
            return
        if not data.isascii():  # bad input under test: keep the transcript readable text
            data = data.decode("ascii", errors="backslashreplace").encode()
        prefix = f"{time.time():.6f} {direction} ".encode()
        lines = data.rstrip(b"\n").split(b"\n")
        os.write(self._transcript_fd, b"".join(
            prefix + (line[:512] + b"..." if len(line) > 512 else line).rstrip() + b"\n" for line in lines))

    # -- reading ----------------------------------------------------------------------------------

    def _read_line(self, deadline: float) -> tuple[bytes, bool]:
        """The next frame's line, and whether it came through the mailbox."""
        while True:
            while self._buffer and self._buffer[0] == DOORBELL_RESPONSE:  # never in a frame: a doorbell
                del self._buffer[:1]
            # COM2 first: what it holds was written before the mailbox answers were taken (see
            # `_settle_mailbox`), and a `!bugcheck` or bad bytes there must not wait behind them.
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line, False
            if self._mailbox_lines:
                return self._mailbox_lines.popleft(), True
            if len(self._buffer) > MAX_FRAME_BYTES:
                raise ProtocolError(f"agent sent more than {MAX_FRAME_BYTES} bytes without a newline")
            if self._mailbox_sequence is not None:
                self._await_mailbox(deadline)
            else:
                self._read_com2(deadline - time.monotonic())

    def _read_com2(self, timeout: float) -> bool:
        """Whatever COM2 has within `timeout` (0: only what is there now) into the buffer."""
        if timeout < 0:
            raise ChannelTimeout("no complete frame from the agent in time")
        readable, _, _ = select.select([self._read_fd], [], [], timeout)
        if not readable:
            return False
        chunk = os.read(self._read_fd, 1 << 16)
        if not chunk:
            raise ChannelClosed("agent channel closed")
        self._buffer += chunk
        return True

    def _await_mailbox(self, deadline: float) -> None:
        """Returns once the posted request is finished or COM2 brought something; spins, then blocks."""
        mailbox = self.mailbox
        sequence = self._mailbox_sequence
        assert mailbox is not None and sequence is not None
        spin_until = min(deadline, time.monotonic() + self._spin_seconds)
        while True:
            for _ in range(POLLS_PER_LOOK):
                if mailbox.answered(sequence):
                    self._settle_mailbox()
                    return
            if self._read_com2(0):
                return
            self._ring_if_halted()
            if time.monotonic() >= spin_until:
                break
        mailbox.set_host_waiting(True)
        try:
            while not mailbox.answered(sequence):
                self._ring_if_halted()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChannelTimeout(f"the agent did not finish mailbox request {sequence} in time")
                if self._read_com2(min(remaining, BLOCKED_RECHECK_SECONDS)) and self._buffer.find(b"\n") >= 0:
                    return
            self._settle_mailbox()
        finally:
            mailbox.set_host_waiting(False)

    def _ring_if_halted(self) -> None:
        """The agent halted before it saw the request: wake it (once per request)."""
        assert self.mailbox is not None
        if not self._rang and self.mailbox.agent_halted:
            self._rang = True
            self._send(DOORBELL_REQUEST, 5.0)

    def _settle_mailbox(self) -> None:
        assert self.mailbox is not None and self._mailbox_sequence is not None
        data = self.mailbox.take(self._mailbox_sequence)
        assert data is not None
        self._mailbox_sequence = None
        if data and not data.endswith(b"\n"):
            raise ProtocolError(f"the mailbox answers do not end with a newline: {data[-200:]!r}")
        if data:
            self._log("< [mailbox]", data)
        self._mailbox_lines.extend(data.split(b"\n")[:-1])
        self._take_com2_sent_before_the_answer()

    def _take_com2_sent_before_the_answer(self) -> None:
        """The guest's UART hands each byte to QEMU's socket before the agent goes on, so whatever the
        agent put on COM2 before it finished the post is in the socket or past it: take it now, or
        it would pass for the next request's traffic (a `!bugcheck`, bad bytes)."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while True:
            caught_up = self._caught_up()  # before the read: what it saw is in the pipe by then
            while self._read_com2(0):
                pass
            if caught_up:
                return
            if time.monotonic() >= deadline:
                raise ChannelTimeout(f"COM2's bytes did not reach the host within {CATCH_UP_SECONDS:g} s "
                                     "of the mailbox answer")
            self._read_com2(0.001)  # the pump is moving bytes: give it a moment

    def read_frame(self, timeout: float) -> Frame:
        line, from_mailbox = self._read_line(time.monotonic() + timeout)
        if not from_mailbox:  # the mailbox's answers were logged as they were taken
            self._log("<", line)
        frame = decode_frame(line)
        if isinstance(frame, Response):
            if from_mailbox or frame.request_id in self._answered_elsewhere:
                self._answered_elsewhere.discard(frame.request_id or 0)
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

    def wait_hello(self, open_mailbox: Callable[[], Mailbox] | None, timeout: float) -> Notice:
        """The agent's `!hello`. Given a way to open the mailbox (the host asked for the hello there),
        it is the mailbox's first answer, announced by one doorbell byte on COM2, and the mailbox is
        then attached. A hello on COM2 is taken too, and any frame before it is read as always: a
        `!bugcheck` during boot raises AgentStopped."""
        if open_mailbox is None:
            return self.wait_notice("hello", timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self._buffer[:1] == bytes((DOORBELL_RESPONSE,)):
                del self._buffer[:1]
                return self._take_mailbox_hello(open_mailbox())
            if not self._buffer:
                self._read_com2(deadline - time.monotonic())
                continue
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(frame, Notice) and frame.kind == "hello":
                return frame
            if isinstance(frame, Response):
                self.unmatched.append(frame)

    def _take_mailbox_hello(self, mailbox: Mailbox) -> Notice:
        data = mailbox.take_hello()
        self._log("< [mailbox]", data)
        frame = decode_frame(data[:-1])
        if not isinstance(frame, Notice) or frame.kind != "hello":
            raise ProtocolError(f"the mailbox's first answer is not a hello: {data[:200]!r}")
        self.notices.append(frame)
        self.attach_mailbox(mailbox)
        return frame

    # -- sending ----------------------------------------------------------------------------------

    def send_raw(self, data: bytes, timeout: float = 30.0) -> None:
        """Put bytes on COM2 as they are (also for tests of the agent's handling of bad input).

        The guest drains its UART one byte at a time, so a large send can take a while: `timeout`
        bounds the whole send.
        """
        self._log(">", data)
        self._serial_unanswered += data.count(b"\n")  # each line gets exactly one answer
        if data:
            self._serial_line_open = not data.endswith(b"\n")
        self._send(data, timeout)

    def post_raw(self, request: bytes, request_id: int | None = None, timeout: float = 30.0) -> None:
        """Put a request in the mailbox as it is: one line without its newline, or several lines.

        `request_id` is the id its answer will carry, if the request has a readable one: an answer too
        big for the mailbox comes on COM2 and is matched by it.
        """
        self._post(request, () if request_id is None else (request_id,))

    def _post(self, request: bytes, request_ids: Sequence[int]) -> None:
        if self.mailbox is None:
            raise ProtocolError("this VM's agent has no mailbox: its RAM is not shared with the host")
        if not self.mailbox_ready:
            raise ProtocolError("a mailbox request needs COM2 and the mailbox quiet: an earlier request "
                                "is still unanswered")
        self._log("> [mailbox]", request)
        self._answered_elsewhere.update(request_ids)
        self._mailbox_sequence = self.mailbox.post(request)
        self._rang = False
        self._ring_if_halted()

    def _send(self, data: bytes, timeout: float) -> None:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise ChannelTimeout(f"the agent did not take {len(data)} bytes within {timeout:g} s") from exc
        except OSError as exc:
            raise ChannelClosed(f"agent channel failed: {exc}") from exc

    # -- requests ---------------------------------------------------------------------------------

    def call(self, command: str, *args: int | bytes, timeout: float, cpu: int | None = None) -> Response:
        """Send one request, through the mailbox when it is ready, and wait for its response (ok or err).
        With `cpu`, the request runs on that CPU."""
        request_id = next(self._ids)
        deadline = time.monotonic() + timeout
        line = encode_request(request_id, command, *args, cpu=cpu)
        if self.mailbox_ready:
            self._post(line[:-1], (request_id,))
        else:
            self.send_raw(line, timeout)
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(frame, Response):
                if frame.request_id == request_id:
                    self._finish_post(deadline)
                    return frame
                self.unmatched.append(frame)

    def call_batch(self, requests: Sequence[Request], timeout: float) -> list[Response]:
        """Send requests in as few round trips as the channel allows and wait for every response.

        Through the mailbox, as many requests go in one post as its request area holds; on COM2 they
        are sent back to back. The agent answers them in order, one at a time, exactly as if each had
        come alone. Responses come back in the order of `requests`.
        """
        deadline = time.monotonic() + timeout
        ids = [next(self._ids) for _ in requests]
        lines = [encode_request(request_id, command, *args)
                 for request_id, (command, args) in zip(ids, requests, strict=True)]
        answers: dict[int, Response] = {}
        start = 0
        while start < len(lines):
            if self.mailbox_ready:
                assert self.mailbox is not None
                end, size = start, 0
                while end < len(lines) and (end == start or size + len(lines[end]) <= self.mailbox.request_capacity):
                    size += len(lines[end])
                    end += 1
                self._post(b"".join(lines[start:end])[:-1], ids[start:end])
            else:
                end = len(lines)
                self.send_raw(b"".join(lines[start:end]), max(0.0, deadline - time.monotonic()))
            self._collect(set(ids[start:end]), answers, deadline)
            self._finish_post(deadline)
            start = end
        return [answers[request_id] for request_id in ids]

    def _finish_post(self, deadline: float) -> None:
        """Every answer came, some on COM2 (too big for the mailbox): the agent marks the post done
        right after the last one; wait for that, so the next request may use the mailbox again."""
        while self._mailbox_sequence is not None:
            self._await_mailbox(deadline)

    def _collect(self, wanted: set[int], answers: dict[int, Response], deadline: float) -> None:
        while wanted:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if isinstance(frame, Response):
                if frame.request_id in wanted:
                    wanted.discard(frame.request_id)
                    answers[frame.request_id] = frame
                else:
                    self.unmatched.append(frame)

    def close(self) -> None:
        """Close what this client owns: the incoming pipe and the transcript (the socket is QEMU's machine's)."""
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        if self.mailbox is not None:
            self.mailbox.close()
            self.mailbox = None
        if self._transcript_fd >= 0:
            os.close(self._transcript_fd)
            self._transcript_fd = -1
