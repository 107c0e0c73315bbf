"""DXGK physical-memory-object callbacks (ddi-spec §12, docs/ddi/dxgk.md).

Each method takes the DXGKARGCB_* structure's in fields in declaration order and returns its out
fields (with the NTSTATUS where NT returns one)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from harness.ddi.base import DdiFamily
from harness.ddi.nt import (
    PAGE_READWRITE,
)


class PhysicalMemoryType(enum.IntEnum):
    MDL = 0
    CONTIGUOUS_MEMORY = 1
    SECTION = 2
    IO_SPACE = 3


class AccessMode(enum.IntEnum):
    KERNEL_MODE = 0
    USER_MODE = 1


class CachingType(enum.IntEnum):
    NON_CACHED = 0
    CACHED = 1
    WRITE_COMBINED = 2


HIGHEST_ADDRESS = 0x7FFF_FFFF_FFFF_FFFF  # MAXLONGLONG: PHYSICAL_ADDRESS is signed


@dataclass(frozen=True)
class CreateResult:
    status: int
    hPhysicalMemoryObject: int
    hAdapterMemoryObject: int


@dataclass(frozen=True)
class MapResult:
    status: int
    Offset: int
    Size: int
    pMappedAddress: int


@dataclass(frozen=True)
class OpenResult:
    status: int
    hAdapterMemoryObject: int


@dataclass(frozen=True)
class DxgkObjectInfo:
    type: int
    cache_type: int
    size: int
    pages: int
    views: int
    pfns: tuple[int, ...]


class DxgkDdis(DdiFamily):
    def DxgkCbCreatePhysicalMemoryObject(self, hAdapter: int, Size: int, Type: int, CacheType: int,
                                         *union: int) -> CreateResult:
        """`union`: the members of Type's union arm in order (Mdl: LowAddress, HighAddress, SkipBytes,
        Flags; ContiguousMemory: Lowest, Highest, BoundaryAddressMultiple; Section: DesiredAccess,
        ObjectAttributes, PageProtection, AllocationAttributes; IOSpace: BaseAddress)."""
        if len(union) > 4:
            raise ValueError("the union has at most 4 members")
        args = list(union) + [0] * (4 - len(union))
        v = self._call("DxgkCbCreatePhysicalMemoryObject", hAdapter, Size, Type, CacheType, *args)
        return CreateResult(self._int(v, "status"), self._int(v, "handle"), self._int(v, "adapter_memory_object"))

    def create_mdl(self, size: int, cache: int, low: int = 0, high: int = HIGHEST_ADDRESS, skip: int = 0,
                   flags: int = 0, adapter: int = 0) -> CreateResult:
        return self.DxgkCbCreatePhysicalMemoryObject(adapter, size, PhysicalMemoryType.MDL, cache, low, high, skip,
                                                     flags)

    def create_contiguous(self, size: int, cache: int, lowest: int = 0, highest: int = HIGHEST_ADDRESS,
                          boundary: int = 0, adapter: int = 0) -> CreateResult:
        return self.DxgkCbCreatePhysicalMemoryObject(adapter, size, PhysicalMemoryType.CONTIGUOUS_MEMORY, cache,
                                                     lowest, highest, boundary)

    def create_section(self, size: int, cache: int, protection: int = PAGE_READWRITE,
                       adapter: int = 0) -> CreateResult:
        return self.DxgkCbCreatePhysicalMemoryObject(adapter, size, PhysicalMemoryType.SECTION, cache, 0, 0,
                                                     protection, 0)

    def create_io_space(self, size: int, cache: int, base: int, adapter: int = 0) -> CreateResult:
        return self.DxgkCbCreatePhysicalMemoryObject(adapter, size, PhysicalMemoryType.IO_SPACE, cache, base)

    def DxgkCbMapPhysicalMemory(self, hPhysicalMemoryObject: int, AccessMode: int, Offset: int,
                                Size: int) -> MapResult:
        v = self._call("DxgkCbMapPhysicalMemory", hPhysicalMemoryObject, AccessMode, Offset, Size)
        return MapResult(self._int(v, "status"), self._int(v, "offset"), self._int(v, "size"),
                         self._int(v, "mapped_address"))

    def DxgkCbUnmapPhysicalMemory(self, hPhysicalMemoryObject: int, pBaseAddress: int, Size: int) -> None:
        self._call("DxgkCbUnmapPhysicalMemory", hPhysicalMemoryObject, pBaseAddress, Size)

    def DxgkCbDestroyPhysicalMemoryObject(self, hPhysicalMemoryObject: int, hAdapterMemoryObject: int = 0) -> None:
        self._call("DxgkCbDestroyPhysicalMemoryObject", hPhysicalMemoryObject, hAdapterMemoryObject)

    def DxgkCbOpenPhysicalMemoryObject(self, hPhysicalMemoryObject: int, hAdapter: int) -> OpenResult:
        v = self._call("DxgkCbOpenPhysicalMemoryObject", hPhysicalMemoryObject, hAdapter)
        return OpenResult(self._int(v, "status"), self._int(v, "adapter_memory_object"))

    def DxgkCbClosePhysicalMemoryObject(self, hAdapterMemoryObject: int) -> None:
        self._call("DxgkCbClosePhysicalMemoryObject", hAdapterMemoryObject)

    def dxgk_object_info(self, hPhysicalMemoryObject: int) -> DxgkObjectInfo:
        v = self._call("dxgk_object_info", hPhysicalMemoryObject)
        raw = self._bytes(v, "pfns")
        pfns = tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
        return DxgkObjectInfo(self._int(v, "type"), self._int(v, "cache_type"), self._int(v, "size"),
                              self._int(v, "pages"), self._int(v, "views"), pfns)
