"""Reserved mappings (ddi-spec §7): reserve system PTEs once, map locked MDLs into them later.

The reservation's two hidden header PTEs (§7.3, Windows 8+ x64 form) are decoded here so that tests
read them raw from guest memory and compare against these encodings, never against the agent's word.
"""

from __future__ import annotations

from harness.ddi.base import DdiFamily, pool_tag

MM_MAPPING_ADDRESS_DIVISIBLE = 0x1
HEADER_PTES = 2
FIELD_SHIFT = 28

# SYSTEM_PTE_MISUSE (0xDA) P1 of the family (ddi-spec §7.8).
ZERO_MAPPINGS = 0x100
FREE_NOT_OWNER = 0x101
FREE_EMPTY = 0x102
FREE_STILL_MAPPED = 0x103
MAP_NOT_OWNER = 0x104
MAP_INVALID_RANGE = 0x105
MAP_NOT_EMPTY = 0x107
UNMAP_NOT_OWNER = 0x108
UNMAP_EMPTY = 0x109
UNMAP_TOO_MANY = 0x10A
UNMAP_NOT_MAPPED = 0x10B
UNMAP_NOT_ENTIRE = 0x10C


def size_pte(pages: int) -> int:
    """The raw size PTE of an N-page reservation: (N + 2) << 28."""
    return (pages + HEADER_PTES) << FIELD_SHIFT


def tag_pte(tag: str | int) -> int:
    """The raw tag PTE: (Tag | 1) << 28 (bit 0 of the tag is not kept, as on every Windows)."""
    return (pool_tag(tag) | 1) << FIELD_SHIFT


def stored_tag(tag: str | int) -> int:
    """The owner tag the 0xDA bugchecks report: the tag as the tag PTE holds it."""
    return pool_tag(tag) | 1


class ReservedMappingDdis(DdiFamily):
    def MmAllocateMappingAddress(self, number_of_bytes: int, pool_tag_: str | int) -> int:
        return self._int(self._call("MmAllocateMappingAddress", number_of_bytes, pool_tag(pool_tag_)), "va")

    def MmAllocateMappingAddressEx(self, number_of_bytes: int, pool_tag_: str | int, flags: int) -> int:
        values = self._call("MmAllocateMappingAddressEx", number_of_bytes, pool_tag(pool_tag_), flags)
        return self._int(values, "va")

    def MmFreeMappingAddress(self, base_address: int, pool_tag_: str | int) -> None:
        self._call("MmFreeMappingAddress", base_address, pool_tag(pool_tag_))

    def MmMapLockedPagesWithReservedMapping(self, mapping_address: int, pool_tag_: str | int, mdl: int,
                                            cache_type: int) -> int:
        values = self._call("MmMapLockedPagesWithReservedMapping", mapping_address, pool_tag(pool_tag_), mdl,
                            cache_type)
        return self._int(values, "va")

    def MmUnmapReservedMapping(self, base_address: int, pool_tag_: str | int, mdl: int) -> None:
        self._call("MmUnmapReservedMapping", base_address, pool_tag(pool_tag_), mdl)

    def test_hook_set_pte_no_flush(self, va: int, pte: int) -> int:
        """TEST HOOK, not a DDI: writes the raw PTE of a system-PTE-region page WITHOUT INVLPG and
        returns the old value. It exists to prove that the TLB tests can see a stale translation."""
        return self._int(self._call("test_hook_set_pte_no_flush", va, pte), "old_pte")
