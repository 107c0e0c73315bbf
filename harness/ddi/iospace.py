"""I/O space (ddi-spec §9) and MmGetVirtualForPhysical (§5)."""

from __future__ import annotations

from harness.ddi.base import DdiFamily

# MEMORY_CACHING_TYPE (§1.2)
MM_NON_CACHED = 0
MM_CACHED = 1
MM_WRITE_COMBINED = 2
MM_HARDWARE_COHERENT_CACHED = 3
MM_NON_CACHED_UNORDERED = 4
MM_USWC_CACHED = 5
MM_MAXIMUM_CACHE_TYPE = 6

# Page protections (§1.4)
PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_WRITECOPY = 0x08
PAGE_EXECUTE = 0x10
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
PAGE_GUARD = 0x100
PAGE_NOCACHE = 0x200
PAGE_WRITECOMBINE = 0x400


class IoSpaceDdis(DdiFamily):
    def MmMapIoSpace(self, physical_address: int, number_of_bytes: int, cache_type: int) -> int:
        """The VA of `physical_address` (its byte offset included), or 0 (NULL)."""
        return self._int(self._call("MmMapIoSpace", physical_address, number_of_bytes, cache_type), "va")

    def MmMapIoSpaceEx(self, physical_address: int, number_of_bytes: int, protect: int) -> int:
        return self._int(self._call("MmMapIoSpaceEx", physical_address, number_of_bytes, protect), "va")

    def MmUnmapIoSpace(self, base_address: int, number_of_bytes: int) -> None:
        self._call("MmUnmapIoSpace", base_address, number_of_bytes)

    def READ_REGISTER_ULONG(self, register: int) -> int:
        """One 32-bit load from a device register (byte reads of QEMU's local APIC answer 0)."""
        return self._int(self._call("READ_REGISTER_ULONG", register), "value")

    def WRITE_REGISTER_ULONG(self, register: int, value: int) -> None:
        self._call("WRITE_REGISTER_ULONG", register, value)

    def MmGetVirtualForPhysical(self, physical_address: int) -> int:
        return self._int(self._call("MmGetVirtualForPhysical", physical_address), "va")
