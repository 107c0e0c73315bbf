"""Pool (ddi-spec §11): ExAllocatePoolWithTag, ExAllocatePool2, ExFreePoolWithTag, ExFreePool."""

from __future__ import annotations

from harness.ddi.base import DdiFamily, pool_tag

NON_PAGED_POOL = 0
PAGED_POOL = 1
NON_PAGED_POOL_NX = 512

POOL_FLAG_USE_QUOTA = 0x1
POOL_FLAG_UNINITIALIZED = 0x2
POOL_FLAG_SESSION = 0x4
POOL_FLAG_CACHE_ALIGNED = 0x8
POOL_FLAG_RESERVED1 = 0x10
POOL_FLAG_RAISE_ON_FAILURE = 0x20
POOL_FLAG_NON_PAGED = 0x40
POOL_FLAG_NON_PAGED_EXECUTE = 0x80
POOL_FLAG_PAGED = 0x100
POOL_FLAG_SPECIAL_POOL = 0x1_0000_0000


class PoolDdis(DdiFamily):
    def ExAllocatePoolWithTag(self, pool_type: int, number_of_bytes: int, tag: str | int) -> int:
        return self._int(self._call("ExAllocatePoolWithTag", pool_type, number_of_bytes, pool_tag(tag)), "va")

    def ExAllocatePool2(self, flags: int, number_of_bytes: int, tag: str | int) -> int:
        return self._int(self._call("ExAllocatePool2", flags, number_of_bytes, pool_tag(tag)), "va")

    def ExFreePoolWithTag(self, va: int, tag: str | int) -> None:
        self._call("ExFreePoolWithTag", va, pool_tag(tag))

    def ExFreePool(self, va: int) -> None:
        self._call("ExFreePool", va)
