"""The processors (docs/smp.md): what a CPU reports of itself, reads that go through its TLB, the TLB
test hooks, and smp_stress, which makes several CPUs call one DDI family at the same moment.

`vm.mm.on_cpu(k)` gives a MemoryManager whose requests run on CPU k (harness.guest). The records
smp_stress returns are checked here, without the guest (`double_handouts`): two allocations held
at the same time must share no VA (so no PTE) and no frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

from harness.ddi.base import PAGE_SIZE, DdiFamily
from harness.errors import ProtocolError

STRESS_FAMILIES = {"pool": 1, "system_ptes": 2, "reserved_mappings": 3}
STRESS_HELD = 4  # allocations each CPU holds at every moment (driver_src/agent/cmd_smp.c HELD)
STRESS_TIMEOUT = 300.0  # seconds: thousands of DDI calls under TCG on a loaded host
POOL_HEADER = 16
RESERVED_HEADER_PAGES = 2
_RECORD = struct.Struct("<6Q")  # held_from, held_until, va, bytes, pfn0, pfn1


@dataclass(frozen=True)
class CpuInfo:
    """What a CPU says of itself (`cpu_info`, run on that CPU)."""

    cpu: int
    apic_id: int
    cpus: int
    online: int
    irql: int
    cr3: int
    cr4: int
    gs_base: int
    stack_base: int
    stack_top: int
    stack_pointer: int


@dataclass(frozen=True)
class NofaultRead:
    """A load through the TLB as it stands (`read_va_nofault`): the bytes before the first fault."""

    data: bytes
    faulted: bool
    fault_vector: int | None = None
    fault_address: int | None = None
    fault_error: int | None = None


@dataclass(frozen=True)
class StressAllocation:
    """One allocation a CPU made during smp_stress, and the stamps between which it certainly held it."""

    family: str
    cpu: int
    held_from: int
    held_until: int | None  # None: still held, until smp_stress_release
    va: int
    size: int
    pfns: tuple[int, ...]  # the frames it owns alone (none for a small pool block, which shares its page)

    @property
    def va_range(self) -> tuple[int, int]:
        """[start, end) of the VA it owns: with the pool header, or the reservation's header PTEs."""
        if self.family == "pool" and self.size < PAGE_SIZE:
            return self.va - POOL_HEADER, self.va + self.size
        if self.family == "reserved_mappings":
            return self.va - RESERVED_HEADER_PAGES * PAGE_SIZE, self.va + self.size
        return self.va, self.va + self.size

    def held_with(self, other: StressAllocation) -> bool:
        """Both were certainly held at one moment."""
        inf = float("inf")
        mine = inf if self.held_until is None else self.held_until
        theirs = inf if other.held_until is None else other.held_until
        return self.held_from < theirs and other.held_from < mine

    def describe(self) -> str:
        until = "still held" if self.held_until is None else f"until {self.held_until}"
        return (f"CPU {self.cpu} {self.family} va {self.va:#x} +{self.size:#x} frames "
                f"{[hex(p) for p in self.pfns]} held from {self.held_from} {until}")


def parse_stress_records(family: str, cpu: int, data: bytes) -> list[StressAllocation]:
    """One CPU's records, as smp_stress answers them (six little-endian u64 each)."""
    if len(data) % _RECORD.size:
        raise ProtocolError(f"smp_stress records of CPU {cpu}: {len(data)} bytes is no whole number of records")
    out = []
    for held_from, held_until, va, size, pfn0, pfn1 in _RECORD.iter_unpack(data):
        if family == "pool" and size < PAGE_SIZE:
            pfns: tuple[int, ...] = ()
        else:
            pfns = tuple(p for p in (pfn0, pfn1) if p)
        out.append(StressAllocation(family, cpu, held_from, held_until or None, va, size, pfns))
    return out


def double_handouts(allocations: Sequence[StressAllocation]) -> list[str]:
    """Every pair held at the same moment that shares VA or a frame, described; empty when none does.

    A sweep in held_from order: only allocations still held when the next one began are compared."""
    problems = []
    active: list[StressAllocation] = []
    for a in sorted(allocations, key=lambda x: x.held_from):
        active = [b for b in active if b.held_with(a)]
        start, end = a.va_range
        for b in active:
            b_start, b_end = b.va_range
            if start < b_end and b_start < end:
                problems.append(f"VA handed out twice: {b.describe()}; {a.describe()}")
            shared = set(a.pfns) & set(b.pfns)
            if shared:
                problems.append(f"frame(s) {[hex(p) for p in sorted(shared)]} handed out twice: "
                                f"{b.describe()}; {a.describe()}")
        active.append(a)
    return problems


@dataclass(frozen=True)
class StressResult:
    family: str
    corrupted: int  # allocations whose marker another writer had overwritten when they were freed
    allocations: tuple[StressAllocation, ...]

    @property
    def held(self) -> list[StressAllocation]:
        return [a for a in self.allocations if a.held_until is None]

    def of_cpu(self, cpu: int) -> list[StressAllocation]:
        return [a for a in self.allocations if a.cpu == cpu]


class SmpDdis(DdiFamily):
    def cpu_info(self) -> CpuInfo:
        values = self._call("cpu_info")
        return CpuInfo(**{f.name: self._int(values, f.name) for f in fields(CpuInfo)})

    def read_va_nofault(self, va: int, length: int) -> NofaultRead:
        """A fault-tolerant load of [va, va+length) on the CPU that runs it, through its TLB: a stale
        translation reads, a missing one ends the read instead of the system."""
        values = self._call("read_va_nofault", va, length)
        faulted = self._bool(values, "faulted")
        data = self._bytes(values, "data")
        if not faulted:
            return NofaultRead(data, False)
        return NofaultRead(data, True, self._int(values, "fault_vector"), self._int(values, "fault_address"),
                           self._int(values, "fault_error"))

    def smp_stress(self, family: str, rounds: int, cpus: Iterable[int]) -> StressResult:
        """The CPUs given call `family`'s DDIs at the same moment, `rounds` rounds of STRESS_HELD
        allocations each; the last round's stay held until smp_stress_release()."""
        if family not in STRESS_FAMILIES:
            raise ValueError(f"family must be one of {', '.join(STRESS_FAMILIES)}, not {family!r}")
        chosen = sorted(set(cpus))
        mask = sum(1 << k for k in chosen)
        values = self._call("smp_stress", STRESS_FAMILIES[family], rounds, mask, timeout=STRESS_TIMEOUT)
        allocations = [a for k in chosen for a in parse_stress_records(family, k, self._bytes(values, f"cpu{k}"))]
        return StressResult(family, self._int(values, "corrupted"), tuple(allocations))

    def smp_stress_release(self) -> int:
        """Frees what the last smp_stress left held; returns how many allocations that was."""
        return self._int(self._call("smp_stress_release"), "released")

    def test_hook_skip_shootdown(self, count: int) -> None:
        """TEST HOOK, not a DDI: the next `count` flushes that need a TLB shootdown skip it (the local
        INVLPG still happens), so the other CPUs keep the stale translation. It exists to prove that
        the shootdown tests can fail."""
        self._call("test_hook_skip_shootdown", count)

    def test_hook_invlpg(self, va: int) -> None:
        """TEST HOOK: INVLPG of `va` on the CPU that runs it (undoes what a skipped shootdown left)."""
        self._call("test_hook_invlpg", va)
