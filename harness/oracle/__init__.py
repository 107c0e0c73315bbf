"""Host-side page-table oracle: guest physical memory, paging constants, a walker that trusts no guest.

The submodules are the API: :mod:`harness.oracle.paging` (constants, :class:`PagingMode`),
:mod:`harness.oracle.memory` (guest physical memory backends and the QEMU RAM layout),
:mod:`harness.oracle.walker` (walk, batch translation, snapshots), :mod:`harness.oracle.synth`
(hand-built page tables for tests and benchmarks), :mod:`harness.oracle.bench`.
"""

from harness.oracle.memory import (
    ArrayBackedMemory,
    BufferMemory,
    MemoryAccessError,
    MonitorMemory,
    PageCache,
    PhysicalMemory,
    RamLayout,
    RamRegion,
    SharedRamMemory,
)
from harness.oracle.paging import MemoryType, PagingMode, PagingModeError
from harness.oracle.walker import (
    Attr,
    Attributes,
    BatchResult,
    MappedRange,
    SelfMapCheck,
    Snapshot,
    SnapshotDiff,
    StopReason,
    Walk,
    WalkStep,
    check_self_map,
    self_map_va,
    snapshot,
    translate,
    translate_many,
    walk,
)

__all__ = [
    "ArrayBackedMemory",
    "Attr",
    "Attributes",
    "BatchResult",
    "BufferMemory",
    "MappedRange",
    "MemoryAccessError",
    "MemoryType",
    "MonitorMemory",
    "PageCache",
    "PagingMode",
    "PagingModeError",
    "PhysicalMemory",
    "RamLayout",
    "RamRegion",
    "SelfMapCheck",
    "SharedRamMemory",
    "Snapshot",
    "SnapshotDiff",
    "StopReason",
    "Walk",
    "WalkStep",
    "check_self_map",
    "self_map_va",
    "snapshot",
    "translate",
    "translate_many",
    "walk",
]
