"""Physically contiguous memory (ddi-spec §10)."""

from __future__ import annotations

from harness.ddi.base import DdiFamily

NO_LIMIT = 0xFFFF_FFFF_FFFF_FFFF  # MAXULONG64: "any address" for HighestAcceptableAddress
MM_ANY_NODE_OK = 0x8000_0000


class ContiguousDdis(DdiFamily):
    def MmAllocateContiguousMemory(self, number_of_bytes: int, highest_acceptable_address: int) -> int:
        return self._int(self._call("MmAllocateContiguousMemory", number_of_bytes, highest_acceptable_address), "va")

    def MmAllocateContiguousMemorySpecifyCache(self, number_of_bytes: int, lowest_acceptable_address: int,
                                               highest_acceptable_address: int, boundary_address_multiple: int,
                                               cache_type: int) -> int:
        values = self._call("MmAllocateContiguousMemorySpecifyCache", number_of_bytes, lowest_acceptable_address,
                            highest_acceptable_address, boundary_address_multiple, cache_type)
        return self._int(values, "va")

    def MmAllocateContiguousMemorySpecifyCacheNode(self, number_of_bytes: int, lowest_acceptable_address: int,
                                                   highest_acceptable_address: int, boundary_address_multiple: int,
                                                   cache_type: int, preferred_node: int) -> int:
        values = self._call("MmAllocateContiguousMemorySpecifyCacheNode", number_of_bytes, lowest_acceptable_address,
                            highest_acceptable_address, boundary_address_multiple, cache_type, preferred_node)
        return self._int(values, "va")

    def MmFreeContiguousMemory(self, base_address: int) -> None:
        self._call("MmFreeContiguousMemory", base_address)

    def MmFreeContiguousMemorySpecifyCache(self, base_address: int, number_of_bytes: int, cache_type: int) -> None:
        self._call("MmFreeContiguousMemorySpecifyCache", base_address, number_of_bytes, cache_type)
