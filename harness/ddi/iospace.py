"""I/O space (ddi-spec §9) and MmGetVirtualForPhysical (§5)."""

from __future__ import annotations

from harness.ddi.base import DdiFamily

# MEMORY_CACHING_TYPE (§1.2)

# Page protections (§1.4)


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
