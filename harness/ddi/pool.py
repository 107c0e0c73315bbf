"""Nonpaged pool (ddi-spec §11): ExAllocatePoolWithTag, ExFreePoolWithTag."""

from __future__ import annotations

from harness.ddi.base import DdiFamily, pool_tag

NON_PAGED_POOL = 0
NON_PAGED_POOL_NX = 512


class PoolDdis(DdiFamily):
    def ExAllocatePoolWithTag(self, pool_type: int, number_of_bytes: int, tag: str | int) -> int:
        return self._int(self._call("ExAllocatePoolWithTag", pool_type, number_of_bytes, pool_tag(tag)), "va")

    def ExFreePoolWithTag(self, va: int, tag: str | int) -> None:
        self._call("ExFreePoolWithTag", va, pool_tag(tag))
