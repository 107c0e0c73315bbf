"""The guest as typed Python calls: `vm.mm.MmGetPhysicalAddress(va) -> int`.

MemoryManager gathers the DDI families of `harness.ddi` and the agent's own commands (kernel_info,
frame_stats, outstanding, raw reads and writes). Each method is one agent request.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

from harness.agent.codec import Value
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
from harness.ddi.smp import SmpDdis
from harness.ddi.usermode import UserModeDdis

__all__ = ["NON_PAGED_POOL", "NON_PAGED_POOL_NX", "FrameStats", "KernelInfo", "MemoryManager", "SmpTransport",
           "Transport", "pool_tag"]


class SmpTransport(Transport, Protocol):
    """A transport that can run a request on a given CPU (a Vm)."""

    def request(self, command: str, *args: int | bytes, timeout: float | None = None,
                cpu: int | None = None) -> dict[str, Value]: ...


class OnCpu:
    """Every request through it runs on one CPU (`cpu=<K>` in the protocol)."""

    def __init__(self, transport: SmpTransport, cpu: int) -> None:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0:
            raise ValueError(f"a CPU index is an integer from 0, not {cpu!r}")
        self._transport = transport
        self.cpu = cpu
        self.name = f"{transport.name} CPU {cpu}"

    def request(self, command: str, *args: int | bytes, timeout: float | None = None,
                cpu: int | None = None) -> dict[str, Value]:
        if cpu is not None and cpu != self.cpu:
            raise ValueError(f"{self.name}: a request for CPU {cpu} through the view of CPU {self.cpu}")
        return self._transport.request(command, *args, timeout=timeout, cpu=self.cpu)


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

    def quiet_ticks(self) -> int:
        """The TSC ticks without work after which the agent halts, as it applies them now."""
        return self._int(self._call("quiet_ticks"), "quiet_ticks")

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
                    ContiguousDdis, UserModeDdis, DxgkDdis, SmpDdis):
    """Every DDI family; requests run on the BSP, or for a view from on_cpu(k), on CPU k."""

    def __init__(self, transport: SmpTransport, cpu: int | None = None) -> None:
        super().__init__(transport if cpu is None else OnCpu(transport, cpu))
        self._smp = transport
        self.cpu = cpu

    def on_cpu(self, cpu: int) -> MemoryManager:
        """The same DDIs, run on CPU `cpu` (0 is the BSP; `vm.vcpus` says how many there are)."""
        return MemoryManager(self._smp, cpu)

    def batch(self, timeout: float | None = None) -> Batch:
        """Calls made on the returned object inside `with` go to the agent together when the block
        ends, in as few round trips as the channel allows; each returns a Deferred (harness.ddi.batch).
        Batches run on the BSP."""
        transport = self._t
        if self.cpu is not None:
            raise TypeError(f"batches run on the BSP: on_cpu({self.cpu}).batch() is not supported")
        if not isinstance(transport, BatchTransport):
            raise TypeError(f"{transport.name}: this transport cannot send batches")
        return Batch(self, transport, timeout)
