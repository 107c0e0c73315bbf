"""What every DDI family shares: the transport, answer decoding, and NT's scalar encodings."""

from __future__ import annotations

from typing import Protocol

from harness.agent.codec import Value
from harness.errors import ProtocolError

ULONG_MAX = 0xFFFF_FFFF
PAGE_SIZE = 0x1000


class Transport(Protocol):
    name: str

    def request(self, command: str, *args: int | bytes, timeout: float | None = None) -> dict[str, Value]: ...


def pool_tag(tag: str | int) -> int:
    """A pool tag as the ULONG NT stores: "Tag1" means the bytes T,a,g,1 in memory (shown as Tag1)."""
    if isinstance(tag, int):
        return tag
    raw = tag.encode("ascii")
    if not 1 <= len(raw) <= 4 or any(not 0x20 <= b <= 0x7E for b in raw):
        raise ValueError(f"pool tag {tag!r} must be 1 to 4 printable ASCII characters")
    return int.from_bytes(raw.ljust(4, b" "), "little")


class DdiFamily:
    """Base of the family mixins: `_call` one agent command, and typed readers of its answer."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def _call(self, command: str, *args: int | bytes, timeout: float | None = None) -> dict[str, Value]:
        return self._t.request(command, *args, timeout=timeout)

    def _int(self, values: dict[str, Value], key: str) -> int:
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{self._t.name}: expected integer '{key}' in the agent's answer, got {values!r}")
        return value

    def _bool(self, values: dict[str, Value], key: str) -> bool:
        value = values.get(key)
        if not isinstance(value, bool):
            raise ProtocolError(f"{self._t.name}: expected boolean '{key}' in the agent's answer, got {values!r}")
        return value

    def _bytes(self, values: dict[str, Value], key: str, length: int | None = None) -> bytes:
        value = values.get(key)
        if not isinstance(value, bytes) or (length is not None and len(value) != length):
            expected = f"{length} bytes" if length is not None else "bytes"
            raise ProtocolError(f"{self._t.name}: expected {expected} '{key}' in the agent's answer, got {values!r}")
        return value
