"""The agent's mailbox (docs/agent-protocol.md, "Mailbox"): requests and responses in guest RAM.

The host maps the mailbox's pages out of the shared RAM backend file, writes a request there and
rings with one byte on COM2; the agent answers in place and rings back with one byte. Under nested
KVM each UART byte costs a VM exit, and QEMU's UART hands the guest at most 14 bytes per main-loop
turn, so this is what makes a round trip cheap. Without shared RAM (a private backend) the client
keeps to COM2.
"""

from __future__ import annotations

import mmap
import struct

from harness.agent.codec import MAX_REQUEST_BYTES
from harness.errors import ProtocolError
from harness.oracle.memory import MemoryAccessError, RamLayout

MAGIC = 0x58424D4D  # "MMBX"
DOORBELL_REQUEST = b"\x07"
DOORBELL_RESPONSE = 0x06
HEADER_BYTES = 0x1000
REQUEST_AREA = MAX_REQUEST_BYTES  # a COM2 request's bytes; the mailbox's go without the newline
RESPONSE_OFFSET = HEADER_BYTES + REQUEST_AREA

# magic, version, request_capacity, response_capacity, request_sequence, request_length,
# response_limit, response_sequence, response_length: little-endian u32 at offset 0.
_HEADER = struct.Struct("<9I")
_REQUEST_SEQUENCE = 16
_REQUEST_LENGTH = 20
_RESPONSE_LIMIT = 24
_RESPONSE_SEQUENCE = 28
_RESPONSE_LENGTH = 32


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
        if request_capacity >= REQUEST_AREA or not 0 < response_capacity <= 1 << 24:
            raise ProtocolError(f"the mailbox at {physical_address:#x} declares capacities "
                                f"{request_capacity}/{response_capacity}, which its layout cannot hold")
        self._map = self._map_range(ram_fd, layout, RESPONSE_OFFSET + response_capacity)
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

    def _u32(self, offset: int) -> int:
        return int.from_bytes(self._map[offset : offset + 4], "little")

    def _set_u32(self, offset: int, value: int) -> None:
        self._map[offset : offset + 4] = value.to_bytes(4, "little")

    def post(self, request: bytes) -> int:
        """Put one request (its line without the newline) in the mailbox; its sequence number.

        The caller then rings DOORBELL_REQUEST on COM2. A request longer than the capacity is still
        posted (cut to the area, with its real length), so the agent's `oversized` answer can be tested.
        """
        self._sequence = (self._sequence + 1) & 0xFFFF_FFFF
        self._map[HEADER_BYTES : HEADER_BYTES + min(len(request), REQUEST_AREA)] = request[:REQUEST_AREA]
        self._set_u32(_REQUEST_LENGTH, len(request))
        self._set_u32(_RESPONSE_LIMIT, self.response_limit)
        self._set_u32(_REQUEST_SEQUENCE, self._sequence)  # last: the agent reads the rest once this moved
        return self._sequence

    def take(self, sequence: int) -> bytes | None:
        """The response to request `sequence`, or None when the mailbox does not hold it (yet)."""
        if self._u32(_RESPONSE_SEQUENCE) != sequence:
            return None
        length = self._u32(_RESPONSE_LENGTH)
        if length > self.response_capacity:
            raise ProtocolError(f"the agent's mailbox response claims {length} bytes; it holds "
                                f"{self.response_capacity}")
        return bytes(self._map[RESPONSE_OFFSET : RESPONSE_OFFSET + length])

    def close(self) -> None:
        self._map.close()
