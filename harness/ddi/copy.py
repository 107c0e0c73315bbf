"""MmCopyMemory (ddi-spec §6): the copy lands in a guest target buffer; the host reads it back itself."""

from __future__ import annotations

from dataclasses import dataclass

from harness.ddi.base import DdiFamily

MM_COPY_MEMORY_PHYSICAL = 0x1
MM_COPY_MEMORY_VIRTUAL = 0x2



@dataclass(frozen=True)
class CopyResult:
    """MmCopyMemory's NTSTATUS (as a ULONG) and what it wrote through NumberOfBytesTransferred."""

    status: int
    transferred: int


class CopyDdis(DdiFamily):
    def MmCopyMemory(self, target: int, source: int, number_of_bytes: int, flags: int) -> CopyResult:
        """`source` is the MM_COPY_ADDRESS: a physical address or a VA, as `flags` says."""
        values = self._call("MmCopyMemory", target, source, number_of_bytes, flags)
        return CopyResult(self._int(values, "status"), self._int(values, "transferred"))

    def copy_pte_va(self) -> int:
        """The VA of the PTE MmCopyMemory maps physical sources through (zero between copies)."""
        return self._int(self._call("copy_pte_va"), "va")
