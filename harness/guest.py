"""The guest as typed Python calls: `vm.mm.MmGetPhysicalAddress(va) -> int`.

MemoryManager gathers the DDI families of `harness.ddi` and the agent's own commands (kernel_info,
frame_stats, outstanding, raw reads and writes). Each method is one agent request.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from harness.ddi.base import DdiFamily, Transport, pool_tag
from harness.ddi.batch import Batch, BatchTransport
from harness.ddi.contiguous import ContiguousDdis
from harness.ddi.copy import CopyDdis
from harness.ddi.dxgk import DxgkDdis
from harness.ddi.iospace import IoSpaceDdis
from harness.ddi.irql import IrqlDdis
from harness.ddi.mdl import MdlDdis
from harness.ddi.pool import NON_PAGED_POOL, NON_PAGED_POOL_NX, PoolDdis
from harness.ddi.reserved_mapping import ReservedMappingDdis
from harness.ddi.usermode import UserModeDdis

__all__ = ["NON_PAGED_POOL", "NON_PAGED_POOL_NX", "FrameStats", "KernelInfo", "MemoryManager", "Transport",
           "pool_tag"]


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


class AgentCommands(DdiFamily):
    """The agent's own commands and the query DDIs that predate the families."""

    def kernel_info(self) -> KernelInfo:
        values = self._call("kernel_info")
        return KernelInfo(**{f.name: self._int(values, f.name) for f in fields(KernelInfo)})

    def frame_stats(self) -> FrameStats:
        values = self._call("frame_stats")
        return FrameStats(**{f.name: self._int(values, f.name) for f in fields(FrameStats)})

    def outstanding(self) -> dict[str, int]:
        """What the kernel has handed out and not taken back, per kind (pool bytes per tag, system
        PTEs, MDLs, locked pages, ...), plus the current IRQL: the input of per-test leak checks."""
        values = self._call("outstanding")
        return {key: self._int(values, key) for key in values}

    def read_va(self, va: int, length: int) -> bytes:
        return self._bytes(self._call("read_va", va, length), "data", length)

    def write_va(self, va: int, data: bytes) -> int:
        return self._int(self._call("write_va", va, data), "written")

    def MmGetPhysicalAddress(self, va: int) -> int:
        return self._int(self._call("MmGetPhysicalAddress", va), "pa")

    def MmIsAddressValid(self, va: int) -> bool:
        return self._bool(self._call("MmIsAddressValid", va), "valid")


class MemoryManager(AgentCommands, IrqlDdis, PoolDdis, CopyDdis, MdlDdis, ReservedMappingDdis, IoSpaceDdis,
                    ContiguousDdis, UserModeDdis, DxgkDdis):
    def batch(self, timeout: float | None = None) -> Batch:
        """Calls made on the returned object inside `with` go to the agent together when the block
        ends, in as few round trips as the channel allows; each returns a Deferred (harness.ddi.batch)."""
        transport = self._t
        if not isinstance(transport, BatchTransport):
            raise TypeError(f"{transport.name}: this transport cannot send batches")
        return Batch(self, transport, timeout)
