"""The guest's DDIs as typed Python calls under their NT names: `vm.mm.MmGetPhysicalAddress(va) -> int`.

Each method is one agent request. A guest stop raises BugCheck, an agent refusal AgentError; the
return values are the NT return values (a PHYSICAL_ADDRESS as an int, a BOOLEAN as a bool, a PVOID
as an int with 0 for NULL).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

from harness.agent.codec import Value
from harness.errors import ProtocolError

NON_PAGED_POOL = 0
NON_PAGED_POOL_NX = 512


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


def _int(values: dict[str, Value], key: str, vm: str) -> int:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{vm}: expected integer '{key}' in the agent's answer, got {values!r}")
    return value


def _bool(values: dict[str, Value], key: str, vm: str) -> bool:
    value = values.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"{vm}: expected boolean '{key}' in the agent's answer, got {values!r}")
    return value


@dataclass(frozen=True)
class KernelInfo:
    """Where the kernel put things, and the control registers it runs with (the agent's own view)."""

    levels: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    pat: int
    text_start: int
    text_end: int
    rodata_start: int
    rodata_end: int
    data_start: int
    data_end: int
    stack_base: int
    stack_top: int
    stack_pointer: int
    physmap_base: int
    physmap_size: int
    physmap_leaf: int
    pool_base: int
    pool_end: int
    pfn_db_base: int
    pte_base: int


@dataclass(frozen=True)
class FrameStats:
    total: int
    free: int
    highest_pfn: int
    above_4g_total: int
    above_4g_in_use: int


class MemoryManager:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def _call(self, command: str, *args: int | bytes) -> dict[str, Value]:
        return self._t.request(command, *args)

    # -- the agent's own commands ---------------------------------------------------------------

    def kernel_info(self) -> KernelInfo:
        values = self._call("kernel_info")
        return KernelInfo(**{f.name: _int(values, f.name, self._t.name) for f in fields(KernelInfo)})

    def frame_stats(self) -> FrameStats:
        values = self._call("frame_stats")
        return FrameStats(**{f.name: _int(values, f.name, self._t.name) for f in fields(FrameStats)})

    def read_va(self, va: int, length: int) -> bytes:
        data = self._call("read_va", va, length).get("data")
        if not isinstance(data, bytes) or len(data) != length:
            raise ProtocolError(f"{self._t.name}: read_va returned {data!r} for {length} bytes")
        return data

    def write_va(self, va: int, data: bytes) -> int:
        return _int(self._call("write_va", va, data), "written", self._t.name)

    # -- NT DDIs --------------------------------------------------------------------------------

    def MmGetPhysicalAddress(self, va: int) -> int:
        return _int(self._call("MmGetPhysicalAddress", va), "pa", self._t.name)

    def MmIsAddressValid(self, va: int) -> bool:
        return _bool(self._call("MmIsAddressValid", va), "valid", self._t.name)

    def ExAllocatePoolWithTag(self, pool_type: int, number_of_bytes: int, tag: str | int) -> int:
        return _int(self._call("ExAllocatePoolWithTag", pool_type, number_of_bytes, pool_tag(tag)), "va",
                    self._t.name)

    def ExFreePoolWithTag(self, va: int, tag: str | int) -> None:
        self._call("ExFreePoolWithTag", va, pool_tag(tag))
