"""MDLs (ddi-spec §1.6-§1.8, §8): the DDIs, the x64 MDL as the host reads it, and NT's MDL constants.

`read_mdl(vm.verify, mdl)` reads an MDL out of guest memory through the host's own page walk, never
through the agent, so tests compare every field with what the agent claims.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from harness.ddi.base import PAGE_SIZE, DdiFamily
from harness.ddi.nt import (
    MM_CACHED,
    STATUS_SUCCESS,
)

MDL_HEADER_SIZE = 0x30
MDL_PFN_END = 0xFFFF_FFFF_FFFF_FFFF  # ReactOS's LIST_HEAD: the PFN array ends early
TAG_MDL = "MDL "

MDL_MAPPED_TO_SYSTEM_VA = 0x0001
MDL_PAGES_LOCKED = 0x0002
MDL_SOURCE_IS_NONPAGED_POOL = 0x0004
MDL_ALLOCATED_FIXED_SIZE = 0x0008
MDL_PARTIAL = 0x0010
MDL_PARTIAL_HAS_BEEN_MAPPED = 0x0020
MDL_IO_PAGE_READ = 0x0040
MDL_WRITE_OPERATION = 0x0080
MDL_PARENT_MAPPED_SYSTEM_VA = 0x0100
MDL_FREE_EXTRA_PTES = 0x0200
MDL_DESCRIBES_AWE = 0x0400
MDL_IO_SPACE = 0x0800
MDL_NETWORK_HEADER = 0x1000
MDL_MAPPING_CAN_FAIL = 0x2000
MDL_ALLOCATED_MUST_SUCCEED = 0x4000
MDL_INTERNAL = 0x8000


IO_READ_ACCESS = 0
IO_WRITE_ACCESS = 1
IO_MODIFY_ACCESS = 2


LOW_PAGE_PRIORITY = 0
NORMAL_PAGE_PRIORITY = 16
HIGH_PAGE_PRIORITY = 32
MDL_MAPPING_NO_WRITE = 0x8000_0000
MDL_MAPPING_NO_EXECUTE = 0x4000_0000

MM_DONT_ZERO_ALLOCATION = 0x001
MM_ALLOCATE_FROM_LOCAL_NODE_ONLY = 0x002
MM_ALLOCATE_FULLY_REQUIRED = 0x004
MM_ALLOCATE_NO_WAIT = 0x008
MM_ALLOCATE_PREFER_CONTIGUOUS = 0x010
MM_ALLOCATE_REQUIRE_CONTIGUOUS_CHUNKS = 0x020
MM_ALLOCATE_FAST_LARGE_PAGES = 0x040
MM_ALLOCATE_AND_HOT_REMOVE = 0x100

STATUS_ACCESS_VIOLATION = 0xC000_0005

_HEADER = struct.Struct("<QhhHHQQQII")
assert _HEADER.size == MDL_HEADER_SIZE


def span_pages(va: int, length: int) -> int:
    """ADDRESS_AND_SIZE_TO_SPAN_PAGES (§1.8)."""
    return ((va & (PAGE_SIZE - 1)) + length + PAGE_SIZE - 1) // PAGE_SIZE


def size_of_mdl(va: int, length: int) -> int:
    """MmSizeOfMdl (§8.2)."""
    return MDL_HEADER_SIZE + 8 * span_pages(va, length)


class NtRaisedStatus(Exception):
    """The exception an NT routine raised (the agent reports it as the key `raised`: the kernel has no SEH)."""

    def __init__(self, routine: str, status: int) -> None:
        self.routine = routine
        self.status = status
        super().__init__(f"{routine} raised status {status:#010x}")


@dataclass(frozen=True)
class Mdl:
    """An x64 MDL (§1.6) as bytes in guest memory say, with its PFN array."""

    address: int
    next: int
    size: int
    mdl_flags: int
    allocation_processor_number: int
    reserved: int
    process: int
    mapped_system_va: int
    start_va: int
    byte_count: int
    byte_offset: int
    pfns: tuple[int, ...]

    @classmethod
    def from_bytes(cls, address: int, data: bytes) -> Mdl:
        """Parses a header and as many PFNs as `data` holds after it (at most the span of the MDL)."""
        (next_, size, flags, processor, reserved, process, mapped, start, count, offset) = _HEADER.unpack_from(data)
        pages = min(span_pages(start + offset, count), (len(data) - MDL_HEADER_SIZE) // 8)
        pfns = struct.unpack_from(f"<{pages}Q", data, MDL_HEADER_SIZE)
        return cls(address, next_, size & 0xFFFF, flags & 0xFFFF, processor, reserved, process, mapped, start,
                   count, offset, pfns)

    @property
    def virtual_address(self) -> int:
        """MmGetMdlVirtualAddress."""
        return self.start_va + self.byte_offset

    @property
    def page_count(self) -> int:
        return span_pages(self.virtual_address, self.byte_count)

    @property
    def pfn_array(self) -> int:
        """MmGetMdlPfnArray: the guest address of the PFN array."""
        return self.address + MDL_HEADER_SIZE


class HostReader(Protocol):
    def host_read(self, va: int, length: int, *, backend: str | None = None) -> bytes: ...


def read_mdl(verify: HostReader, mdl: int) -> Mdl:
    """The MDL at `mdl` as guest RAM holds it, read by the host through its own page walk."""
    header = Mdl.from_bytes(mdl, verify.host_read(mdl, MDL_HEADER_SIZE))
    return Mdl.from_bytes(mdl, verify.host_read(mdl, MDL_HEADER_SIZE + 8 * header.page_count))


class MdlDdis(DdiFamily):
    def IoAllocateMdl(self, virtual_address: int, length: int, secondary_buffer: bool = False,
                      charge_quota: bool = False, irp: int = 0) -> int:
        return self._int(self._call("IoAllocateMdl", virtual_address, length, int(secondary_buffer),
                                    int(charge_quota), irp), "mdl")

    def IoFreeMdl(self, mdl: int) -> None:
        self._call("IoFreeMdl", mdl)

    def MmInitializeMdl(self, mdl: int, base_va: int, length: int) -> None:
        self._call("MmInitializeMdl", mdl, base_va, length)

    def MmSizeOfMdl(self, base: int, length: int) -> int:
        return self._int(self._call("MmSizeOfMdl", base, length), "size")

    def MmGetMdlPfnArray(self, mdl: int) -> int:
        return self._int(self._call("MmGetMdlPfnArray", mdl), "pfn_array")

    def MmBuildMdlForNonPagedPool(self, mdl: int) -> None:
        self._call("MmBuildMdlForNonPagedPool", mdl)

    def MmProbeAndLockPages(self, mdl: int, access_mode: int, operation: int) -> None:
        """Raises NtRaisedStatus where NT raises an exception (e.g. STATUS_ACCESS_VIOLATION)."""
        raised = self._int(self._call("MmProbeAndLockPages", mdl, access_mode, operation), "raised")
        if raised != STATUS_SUCCESS:
            raise NtRaisedStatus("MmProbeAndLockPages", raised)

    def MmUnlockPages(self, mdl: int) -> None:
        self._call("MmUnlockPages", mdl)

    def MmAllocatePagesForMdlEx(self, low_address: int, high_address: int, skip_bytes: int, total_bytes: int,
                                cache_type: int = MM_CACHED, flags: int = 0) -> int:
        return self._int(self._call("MmAllocatePagesForMdlEx", low_address, high_address, skip_bytes, total_bytes,
                                    cache_type & 0xFFFF_FFFF, flags), "mdl")

    def MmAllocatePagesForMdl(self, low_address: int, high_address: int, skip_bytes: int, total_bytes: int) -> int:
        return self._int(self._call("MmAllocatePagesForMdl", low_address, high_address, skip_bytes, total_bytes),
                         "mdl")

    def MmFreePagesFromMdl(self, mdl: int) -> None:
        self._call("MmFreePagesFromMdl", mdl)

    def MmMapLockedPagesSpecifyCache(self, mdl: int, access_mode: int, cache_type: int, requested_address: int = 0,
                                     bug_check_on_failure: bool = False,
                                     priority: int = NORMAL_PAGE_PRIORITY) -> int:
        """The mapped VA or 0; raises NtRaisedStatus where NT raises (UserMode failures, docs/ddi/mdl.md)."""
        values = self._call("MmMapLockedPagesSpecifyCache", mdl, access_mode, cache_type & 0xFFFF_FFFF,
                            requested_address, int(bug_check_on_failure), priority)
        raised = self._int(values, "raised")
        if raised != STATUS_SUCCESS:
            raise NtRaisedStatus("MmMapLockedPagesSpecifyCache", raised)
        return self._int(values, "va")

    def MmMapLockedPages(self, mdl: int, access_mode: int) -> int:
        """Obsolete; the always-on verifier stops every call with 0xC4(0x81, Mdl, MdlFlags, 0)."""
        return self._int(self._call("MmMapLockedPages", mdl, access_mode), "va")

    def MmUnmapLockedPages(self, base_address: int, mdl: int) -> None:
        self._call("MmUnmapLockedPages", base_address, mdl)

    def MmGetSystemAddressForMdlSafe(self, mdl: int, priority: int = NORMAL_PAGE_PRIORITY) -> int:
        return self._int(self._call("MmGetSystemAddressForMdlSafe", mdl, priority), "va")

    def IoBuildPartialMdl(self, source_mdl: int, target_mdl: int, virtual_address: int, length: int) -> None:
        self._call("IoBuildPartialMdl", source_mdl, target_mdl, virtual_address, length)

    def MmPrepareMdlForReuse(self, mdl: int) -> None:
        self._call("MmPrepareMdlForReuse", mdl)
