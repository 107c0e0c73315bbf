"""`mmhil soak`: allocate/free and map/unmap of every family, over and over, with leak counts.

One cycle runs each family's round once, in a seeded random order, each round freeing what it made:
pool (ExAllocatePoolWithTag / ExAllocatePool2 and their frees), MDLs over pool (allocate, lock, map,
unmap, unlock, free), MDL pages (MmAllocatePagesForMdlEx, system address, unmap, free), reserved
mappings, I/O space, contiguous memory, DXGK objects (create, map, unmap, destroy), MmCopyMemory and
the IRQL; and the agent's no-op `ping`, the reference every figure is printed beside. At every
checkpoint (`--check-every` calls, and at the end) nothing may be outstanding, and the free frames
must be those of the start less exactly the page tables, kept small-pool pages and PFN-database
pages given a frame that the host's own walk sees added (harness.fuzz.ddi_run.Ledger). Every
`--verify-every` cycles each family's mapping is also verified three ways. Every call is timed on the
host; the report gives per family the median per-call time as calls/s, with its spread.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

from harness.bench import Sample
from harness.ddi.contiguous import NO_LIMIT
from harness.ddi.copy import MM_COPY_MEMORY_PHYSICAL, MM_COPY_MEMORY_VIRTUAL
from harness.ddi.dxgk import CachingType
from harness.ddi.irql import DISPATCH_LEVEL, PASSIVE_LEVEL
from harness.ddi.mdl import IO_WRITE_ACCESS, NORMAL_PAGE_PRIORITY
from harness.ddi.nt import KERNEL_MODE, MM_CACHED, MM_NON_CACHED, STATUS_SUCCESS
from harness.ddi.pool import NON_PAGED_POOL_NX, POOL_FLAG_NON_PAGED
from harness.errors import MmhilError
from harness.fuzz.ddi_run import Ledger, environment
from harness.fuzz.model import HIGHEST_PHYSICAL, LOCAL_APIC, PAGE, Environment
from harness.fuzz.session import Finding, FindingLog, VmSource, nonzero_outstanding
from harness.verify import VerificationError
from harness.vm import Vm

TAG = "Soak"
FAMILIES = ("pool", "mdl", "mdl pages", "reserved", "iospace", "contiguous", "dxgk", "copy", "irql")
REFERENCE = "agent ping (no-op)"


class SoakProblem(Exception):
    pass


@dataclass
class SoakStats:
    calls: int = 0
    cycles: int = 0
    times: dict[str, list[float]] = field(default_factory=lambda: {f: [] for f in (*FAMILIES, REFERENCE)})
    checkpoints: int = 0
    verified: int = 0
    reboots: int = 0
    leaks: dict[str, int] = field(default_factory=dict)
    frames_lost: int = 0
    wall_seconds: float = 0.0


class Soak:
    def __init__(self, session: VmSource, seed: int, findings: FindingLog, *, check_every: int = 5000,
                 verify_every: int = 100, out: TextIO = sys.stdout) -> None:
        self.session = session
        self.seed = seed
        self.findings = findings
        self.check_every = check_every
        self.verify_every = verify_every
        self.out = out
        self.stats = SoakStats()
        self.ledger = Ledger(0, 0, 0)

    def _timed(self, family: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = call()
        self.stats.times[family].append(time.perf_counter() - start)
        self.stats.calls += family != REFERENCE
        return result

    # -- one round per family --------------------------------------------------------------------

    def _round(self, vm: Vm, family: str, rng: random.Random, verify: bool) -> None:
        mm, t = vm.mm, partial(self._timed, family)

        def need(value: int | None, what: str) -> int:
            if not value:
                raise SoakProblem(f"{family}: {what} returned NULL")
            return value

        def three_ways(va: int, pages: int) -> None:
            if verify:
                for page in {0, pages - 1}:
                    if vm.verify.translate(va + page * PAGE) is None:
                        raise SoakProblem(f"{family}: {va + page * PAGE:#x} does not translate")
                self.stats.verified += 1

        if family == "pool":
            size = rng.choice((rng.randint(1, 0xFE0), rng.randint(0xFE1, 3 * PAGE)))
            if rng.random() < 0.5:
                va = need(t(lambda: mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, size, TAG)), "ExAllocatePoolWithTag")
                three_ways(va & ~(PAGE - 1), 1)
                t(lambda: mm.ExFreePoolWithTag(va, TAG))
            else:
                va = need(t(lambda: mm.ExAllocatePool2(POOL_FLAG_NON_PAGED, size, TAG)), "ExAllocatePool2")
                three_ways(va & ~(PAGE - 1), 1)
                t(lambda: mm.ExFreePool(va))
        elif family == "mdl":
            pages = rng.randint(1, 4)
            buf = need(t(lambda: mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, pages * PAGE, TAG)), "pool buffer")
            mdl = need(t(lambda: mm.IoAllocateMdl(buf, pages * PAGE)), "IoAllocateMdl")
            t(lambda: mm.MmProbeAndLockPages(mdl, KERNEL_MODE, IO_WRITE_ACCESS))
            va = need(t(lambda: mm.MmMapLockedPagesSpecifyCache(mdl, KERNEL_MODE, MM_CACHED, 0, False,
                                                                NORMAL_PAGE_PRIORITY)), "MmMapLockedPagesSpecifyCache")
            three_ways(va, pages)
            t(lambda: mm.MmUnmapLockedPages(va, mdl))
            t(lambda: mm.MmUnlockPages(mdl))
            t(lambda: mm.IoFreeMdl(mdl))
            t(lambda: mm.ExFreePoolWithTag(buf, TAG))
        elif family == "mdl pages":
            pages = rng.randint(1, 8)
            mdl = need(t(lambda: mm.MmAllocatePagesForMdlEx(0, HIGHEST_PHYSICAL, 0, pages * PAGE)),
                       "MmAllocatePagesForMdlEx")
            va = need(t(lambda: mm.MmGetSystemAddressForMdlSafe(mdl)), "MmGetSystemAddressForMdlSafe")
            three_ways(va, pages)
            t(lambda: mm.MmUnmapLockedPages(va, mdl))
            t(lambda: mm.MmFreePagesFromMdl(mdl))
            t(lambda: mm.IoFreeMdl(mdl))
        elif family == "reserved":
            pages = rng.randint(1, 16)
            mdl = need(t(lambda: mm.MmAllocatePagesForMdlEx(0, HIGHEST_PHYSICAL, 0, pages * PAGE)),
                       "MmAllocatePagesForMdlEx")
            reservation = need(t(lambda: mm.MmAllocateMappingAddress(pages * PAGE, TAG)), "MmAllocateMappingAddress")
            for _ in range(rng.randint(1, 3)):
                va = t(lambda: mm.MmMapLockedPagesWithReservedMapping(reservation, TAG, mdl, MM_CACHED))
                if va != reservation:
                    raise SoakProblem(f"reserved map returned {va!r}, not the reservation {reservation:#x}")
                three_ways(reservation, pages)
                t(lambda: mm.MmUnmapReservedMapping(reservation, TAG, mdl))
            t(lambda: mm.MmFreeMappingAddress(reservation, TAG))
            t(lambda: mm.MmFreePagesFromMdl(mdl))
            t(lambda: mm.IoFreeMdl(mdl))
        elif family == "iospace":
            nbytes = rng.randint(1, 3 * PAGE)
            va = need(t(lambda: mm.MmMapIoSpace(LOCAL_APIC, nbytes, MM_NON_CACHED)), "MmMapIoSpace")
            three_ways(va, 1)
            t(lambda: mm.MmUnmapIoSpace(va, nbytes))
        elif family == "contiguous":
            nbytes = rng.randint(1, 8) * PAGE
            va = need(t(lambda: mm.MmAllocateContiguousMemory(nbytes, NO_LIMIT)), "MmAllocateContiguousMemory")
            three_ways(va, nbytes // PAGE)
            t(lambda: mm.MmFreeContiguousMemory(va))
        elif family == "dxgk":
            size = rng.randint(1, 8) * PAGE
            kind = rng.choice(("mdl", "contiguous"))
            created = t(lambda: (mm.create_mdl if kind == "mdl" else mm.create_contiguous)(size, CachingType.CACHED)
                        .hPhysicalMemoryObject)
            handle = need(created, "DxgkCbCreatePhysicalMemoryObject")
            view = t(lambda: mm.DxgkCbMapPhysicalMemory(handle, KERNEL_MODE, 0, size))
            if view.status != STATUS_SUCCESS:
                raise SoakProblem(f"DxgkCbMapPhysicalMemory: status {view.status:#x}")
            three_ways(view.pMappedAddress, size // PAGE)
            t(lambda: mm.DxgkCbUnmapPhysicalMemory(handle, view.pMappedAddress, view.Size))
            t(lambda: mm.DxgkCbDestroyPhysicalMemoryObject(handle))
        elif family == "copy":
            nbytes = rng.randint(1, 2 * PAGE)
            target = need(t(lambda: mm.ExAllocatePoolWithTag(NON_PAGED_POOL_NX, nbytes, TAG)), "copy target")
            source = self.env.text[0] + rng.randrange(0x1000)
            flags = rng.choice((MM_COPY_MEMORY_VIRTUAL, MM_COPY_MEMORY_PHYSICAL))
            if flags == MM_COPY_MEMORY_PHYSICAL:
                source, nbytes = vm.qemu.gva2gpa(source) or 0, min(nbytes, PAGE - source % PAGE)
            result = t(lambda: mm.MmCopyMemory(target, source, nbytes, flags))
            if (result.status, result.transferred) != (STATUS_SUCCESS, nbytes):
                raise SoakProblem(f"MmCopyMemory: {result}, expected success and {nbytes} bytes")
            t(lambda: mm.ExFreePoolWithTag(target, TAG))
        elif family == "irql":
            old = t(lambda: mm.KeRaiseIrql(DISPATCH_LEVEL))
            if old != PASSIVE_LEVEL:
                raise SoakProblem(f"KeRaiseIrql returned {old}, not PASSIVE_LEVEL")
            t(lambda: mm.KeLowerIrql(PASSIVE_LEVEL))

    # -- the run ---------------------------------------------------------------------------------

    def _finding(self, kind: str, what: str, detail: str = "") -> None:
        self.findings.add(Finding(kind, self.seed, self.stats.calls, what, detail, "",
                                  str(self.session.boot_folder)))

    def checkpoint(self, vm: Vm) -> bool:
        """Nothing outstanding, and no frame lost since the last checkpoint."""
        self.stats.checkpoints += 1
        left = nonzero_outstanding(vm.mm.outstanding())
        now = Ledger.take(vm, self.env)
        lost = self.ledger.free - now.free - now.kept_since(self.ledger)
        self.stats.leaks, self.stats.frames_lost = left, self.stats.frames_lost + lost
        problems = ([f"outstanding {left}"] if left else []) + ([f"{lost} frames lost"] if lost else [])
        if problems:
            self._finding("leak", f"after {self.stats.calls} calls: " + "; ".join(problems))
        self.ledger = now
        return not problems

    def run(self, calls: int) -> SoakStats:
        started = time.monotonic()
        rng = random.Random(f"mmhil-soak:{self.seed}")
        vm = self.session.vm
        self.env: Environment = environment(vm)
        self.ledger = Ledger.take(vm, self.env)
        next_check = self.check_every
        while self.stats.calls < calls:
            vm = self.session.vm
            verify = self.stats.cycles % self.verify_every == 0
            families = list(FAMILIES)
            rng.shuffle(families)
            try:
                for family in families:
                    self._timed(REFERENCE, partial(vm.request, "ping"))
                    self._round(vm, family, rng, verify)
                self.stats.cycles += 1
                if self.stats.calls >= next_check or self.stats.calls >= calls:
                    next_check += self.check_every
                    if not self.checkpoint(vm):
                        break
            except (MmhilError, SoakProblem, VerificationError) as exc:
                self._finding("death" if isinstance(exc, MmhilError) else "wrong result", str(exc).splitlines()[0],
                              str(exc))
                self.session.reboot()
                self.stats.reboots += 1
                self.ledger = Ledger.take(self.session.vm, self.env)
            if self.stats.cycles % 500 == 0:
                print(f"  ... {self.stats.calls} calls, {self.stats.cycles} cycles", file=self.out, flush=True)
        self.stats.wall_seconds = time.monotonic() - started
        return self.stats


def report(session: VmSource, seed: int, stats: SoakStats) -> str:
    reference = Sample(tuple(stats.times[REFERENCE]))
    lines = [
        f"mmhil soak: {session.describe()}, seed {seed}: {stats.calls:,} DDI calls in {stats.cycles:,} cycles, "
        f"{stats.wall_seconds:.1f} s ({stats.calls / max(stats.wall_seconds, 1e-9):,.0f} calls/s overall, "
        f"pings and checks included)",
        "host wall time per call; calls/s from the median; the reference is the agent's no-op measured in the "
        "same run",
        f"{'family':22} {'calls':>8} {'calls/s':>9} {'median':>9}  {'x ping':>7}  spread per call",
    ]
    for family in (REFERENCE, *FAMILIES):
        times = stats.times[family]
        if not times:
            continue
        sample = Sample(tuple(times))
        lines.append(f"{family:22} {len(times):>8,} {1 / sample.median:>9,.0f} {sample.median * 1e6:>6.1f} us  "
                     f"{sample.median / reference.median:>6.2f}x  {sample.spread('us')}")
    leaks = ", ".join(f"{k}={v}" for k, v in stats.leaks.items()) or "none"
    lines += [
        f"checkpoints: {stats.checkpoints}; mappings verified three ways: {stats.verified}; reboots: {stats.reboots}",
        f"leaked at the end: pool bytes {stats.leaks.get('pool_bytes', 0)}, system PTEs "
        f"{stats.leaks.get('syspte_pages', 0)}, PFNs (frames lost) {stats.frames_lost}, MDLs "
        f"{stats.leaks.get('mdl_allocated', 0)}; anything outstanding: {leaks}",
    ]
    return "\n".join(lines)
