"""The agent's mailbox (docs/agent-protocol.md, "Mailbox"): requests and responses in guest RAM.

The host maps the mailbox's pages out of the shared RAM backend file and writes a request there (one
line, or a batch of lines); the agent, which polls the mailbox while requests flow, answers in place.
Neither side touches COM2 while both poll. An agent that was idle for a while halts and says so in
the header; the host then rings it awake with one byte on COM2. A host that stops spinning says so,
and the agent rings back with one byte when the answers are in. When the host asks for it, the
agent's hello is the mailbox's first answer, published with the magic. Without shared RAM (a
private backend, a remote host) the client keeps to COM2.
"""

from __future__ import annotations

import mmap
import struct

from harness.errors import ProtocolError
from harness.oracle.memory import MemoryAccessError, RamLayout

MAGIC = 0x58424D4D  # "MMBX"
DOORBELL_REQUEST = b"\x07"
DOORBELL_RESPONSE = 0x06
HEADER_BYTES = 0x1000
REQUEST_AREA = 0x10000  # a batch of request lines, each at most MAX_REQUEST_BYTES - 1 bytes
RESPONSE_OFFSET = HEADER_BYTES + REQUEST_AREA

# magic, version, request_capacity, response_capacity, request_sequence, request_length,
# response_limit, response_sequence, response_length, agent_state, host_state, agent_quiet_us: u32
# at offset 0.
_HEADER = struct.Struct("<12I")
_REQUEST_SEQUENCE = 4  # indexes of the u32 words
_REQUEST_LENGTH = 5
_RESPONSE_LIMIT = 6
_RESPONSE_SEQUENCE = 7
_RESPONSE_LENGTH = 8
_AGENT_STATE = 9
_HOST_STATE = 10
_AGENT_QUIET_US = 11

AGENT_HALTED = 1  # agent_state: the agent halted and needs the COM2 doorbell
HOST_POLLING, HOST_WAITING = 0, 1  # host_state: waiting means "ring me when the answers are in"


class Mailbox:
    """The mailbox at `physical_address`, mapped from the RAM backend file laid out as `layout`."""

    def __init__(self, ram_fd: int, layout: RamLayout, physical_address: int, protocol_version: int) -> None:
        self.physical_address = physical_address
        header = self._map_range(ram_fd, layout, HEADER_BYTES)
        try:
            magic, version, request_capacity, response_capacity, sequence, *_ = _HEADER.unpack_from(header)
        finally:
            header.close()
        if magic != MAGIC or version != protocol_version:
            raise ProtocolError(f"no mailbox at {physical_address:#x}: found magic {magic:#x} version {version}, "
                                f"expected {MAGIC:#x} version {protocol_version}")
        if not 0 < request_capacity <= REQUEST_AREA or not 0 < response_capacity <= 1 << 24:
            raise ProtocolError(f"the mailbox at {physical_address:#x} declares capacities "
                                f"{request_capacity}/{response_capacity}, which its layout cannot hold")
        self._map = self._map_range(ram_fd, layout, RESPONSE_OFFSET + response_capacity)
        # The header as u32 words: one indexing per poll, the cheapest read Python has.
        self._words = memoryview(self._map)[:HEADER_BYTES].cast("I")
        self.request_capacity = request_capacity
        self.response_capacity = response_capacity
        self.response_limit = response_capacity  # a test may lower it to make responses spill to COM2
        self._sequence = int(sequence)

    def _map_range(self, ram_fd: int, layout: RamLayout, size: int) -> mmap.mmap:
        try:
            offset = layout.file_offset(self.physical_address, size)
        except MemoryAccessError as exc:
            raise ProtocolError(f"the agent's mailbox [{self.physical_address:#x}, +{size:#x}) is not in RAM: "
                                f"{exc}") from exc
        if offset % mmap.ALLOCATIONGRANULARITY:
            raise ProtocolError(f"the agent's mailbox at {self.physical_address:#x} is not page aligned")
        return mmap.mmap(ram_fd, size, flags=mmap.MAP_SHARED, offset=offset)

    def post(self, request: bytes) -> int:
        """Put a request (one line, or lines separated by newlines) in the mailbox; its sequence number.

        A request longer than the capacity is still posted (cut to the area, with its real length),
        so the agent's `oversized` answer can be tested.
        """
        self._sequence = (self._sequence + 1) & 0xFFFF_FFFF
        self._map[HEADER_BYTES : HEADER_BYTES + min(len(request), REQUEST_AREA)] = request[:REQUEST_AREA]
        words = self._words
        words[_REQUEST_LENGTH] = len(request)
        words[_RESPONSE_LIMIT] = self.response_limit
        words[_REQUEST_SEQUENCE] = self._sequence  # last: the agent reads the rest once this moved
        return self._sequence

    def answered(self, sequence: int) -> bool:
        return self._words[_RESPONSE_SEQUENCE] == sequence

    def take(self, sequence: int) -> bytes | None:
        """The answers to request `sequence` (whole frames, each ending in a newline), or None while
        the agent has not finished it. Answers that did not fit went to COM2 instead."""
        if self._words[_RESPONSE_SEQUENCE] != sequence:
            return None
        length = self._words[_RESPONSE_LENGTH]
        if length > self.response_capacity:
            raise ProtocolError(f"the agent's mailbox response claims {length} bytes; it holds "
                                f"{self.response_capacity}")
        return bytes(self._map[RESPONSE_OFFSET : RESPONSE_OFFSET + length])

    def take_hello(self) -> bytes:
        """The `!hello` frame, newline included, that the agent put in the response area before it
        wrote the magic (the host asked for it there)."""
        length = self._words[_RESPONSE_LENGTH]
        data = bytes(self._map[RESPONSE_OFFSET : RESPONSE_OFFSET + min(length, self.response_capacity)])
        if length > self.response_capacity or data.count(b"\n") != 1 or not data.endswith(b"\n"):
            raise ProtocolError(f"the mailbox at {self.physical_address:#x} holds no single frame as its hello: "
                                f"{length} bytes, {data[:200]!r}")
        return data

    @property
    def agent_halted(self) -> bool:
        return self._words[_AGENT_STATE] == AGENT_HALTED

    def ask_agent_quiet(self, microseconds: int) -> None:
        """Ask the agent to halt after this long without work (0: its own interval, ~0.9 ms); it
        never polls longer than its own."""
        if not 0 <= microseconds <= 0xFFFF_FFFF:
            raise ValueError(f"a quiet interval of {microseconds} us does not fit the mailbox's u32")
        self._words[_AGENT_QUIET_US] = microseconds

    def set_host_waiting(self, waiting: bool) -> None:
        self._words[_HOST_STATE] = HOST_WAITING if waiting else HOST_POLLING

    def close(self) -> None:
        self._words.release()
        self._map.close()
