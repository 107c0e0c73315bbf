"""`mmhil fuzz ddi`: random well-formed DDI call sequences, each outcome checked against harness.fuzz.model.

Calls are drawn from one seeded stream, so `--seed S --count N` replays the same N calls on a fresh
VM. After each call the runner makes the model's checks: every new mapping is walked by the host
(every page: PFNs, RW, U/S, NX, memory type) and translated three ways on sampled pages
(MmGetPhysicalAddress, the host walk, QEMU's gva2gpa); every unmapping is checked by the host walk and
QEMU; MDLs, reservation headers, copies and guard bytes are read by the host from guest RAM; frames
that belong to one object may never show up in another. Every `counts_every` calls `outstanding`
must equal the model's counts. Every `run_length` calls the model frees everything: then `outstanding`
must be all zero, and the free frames must be what they were at the run's start, less exactly the
page tables, kept small-pool pages and PFN-database pages given a frame that the host's own walk
sees added.

A documented bugcheck ends the call that made it: its code and parameters must be the model's, then
the VM is rebooted and the model reset. Anything else unexpected is a finding (seed and call index),
after which the VM is rebooted too, so every finding is independent and replays from its seed.
"""

from __future__ import annotations

import contextlib
import random
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from harness.coredump import stop_expected
from harness.ddi.mdl import MDL_PFN_END, NtRaisedStatus, read_mdl
from harness.ddi.reserved_mapping import size_pte, tag_pte
from harness.errors import AgentError, BugCheck, MmhilError
from harness.fuzz.model import (
    COUNTED,
    PAGE,
    SYSTEM_PTE_BASE,
    SYSTEM_PTE_COUNT,
    TAGS,
    Call,
    CopyCheck,
    DxgkInfoCheck,
    Environment,
    GuardCheck,
    GuardWrite,
    HeaderCheck,
    MapCheck,
    MdlCheck,
    Model,
    PostCheck,
    ReleaseFrames,
    UnmapCheck,
    ZeroCheck,
    tag_key,
)
from harness.fuzz.session import Finding, FindingLog, VmSource, nonzero_outstanding
from harness.oracle.walker import Snapshot
from harness.verify import VerificationError
from harness.vm import Vm

EFER_NXE = 1 << 11


class CheckFailed(Exception):
    """A post-call check found the guest other than the model says."""


PFN_ENTRY_BYTES = 16  # struct pfn_entry (driver_src/mm/frames.c)
SYSTEM_PTE_TABLES = -(-SYSTEM_PTE_COUNT // 512)  # driver_src/mm/syspte.c: TABLES


def environment(vm: Vm) -> Environment:
    info = vm.mm.kernel_info()
    ram_top = max((base + size for base, size, kind in vm.memory_map if kind == 1), default=0)
    database_bytes = (vm.mm.frame_stats().highest_pfn + 1) * PFN_ENTRY_BYTES
    pfn_db = (info.pfn_db_base, info.pfn_db_base + -(-database_bytes // PAGE) * PAGE)
    return Environment(levels=info.levels, pool_base=info.pool_base, pool_end=info.pool_end,
                       text=(info.text_start, info.text_end), nx=bool(info.efer & EFER_NXE), ram_top=ram_top,
                       pfn_db=pfn_db)


def _writable_pages(snap: Snapshot, start: int, end: int) -> int:
    return sum(r.clip(start, end).size // PAGE for r in snap.ranges
               if r.va < end and r.va_end > start and r.attributes.writable)


def _linked_system_pte_tables(vm: Vm) -> int:
    """The system-PTE region's page tables linked so far: the present entries of its page directory,
    whose first SYSTEM_PTE_TABLES entries map the region (it starts on a 1 GiB boundary)."""
    directory = vm.verify.walk(SYSTEM_PTE_BASE).step(2)
    if directory is None:
        return 0
    entries = struct.unpack(f"<{SYSTEM_PTE_TABLES}Q", vm.verify.memory.read(directory.table_pa, 8 * SYSTEM_PTE_TABLES))
    return sum(entry & 1 for entry in entries)


@dataclass
class Ledger:
    """Free frames, and what the host's walk sees that may keep frames after everything is freed:
    page tables, small-pool pages (kept mapped once used), and PFN-database pages that got a frame of
    their own (the database starts as one read-only zero frame, and a page gets its own frame the
    first time an entry in it is written; driver_src/mm/frames.c). The system-PTE region's page
    tables are counted apart: their frames were set aside at boot (driver_src/include/syspte.h), so
    linking one takes no free frame."""

    free: int
    tables: int
    pool_pages: int
    pfn_db_pages: int = 0
    system_pte_tables: int = 0

    @classmethod
    def take(cls, vm: Vm, env: Environment) -> Ledger:
        snap: Snapshot = vm.verify.snapshot()
        pool = sum(r.clip(env.pool_base, env.pool_end).size // PAGE for r in snap.ranges
                   if r.va < env.pool_end and r.va_end > env.pool_base)
        return cls(vm.mm.frame_stats().free, snap.tables_read, pool, _writable_pages(snap, *env.pfn_db),
                   _linked_system_pte_tables(vm))

    def kept_since(self, earlier: Ledger) -> int:
        """Frames kept by design since `earlier`: what the free count may have dropped by."""
        tables = (self.tables - earlier.tables) - (self.system_pte_tables - earlier.system_pte_tables)
        return tables + (self.pool_pages - earlier.pool_pages) + (self.pfn_db_pages - earlier.pfn_db_pages)

    def describe_kept(self, earlier: Ledger) -> str:
        linked = self.system_pte_tables - earlier.system_pte_tables
        tables = self.tables - earlier.tables - linked
        return (f"{tables} page tables (and {linked} system-PTE tables from frames set aside at boot), "
                f"{self.pool_pages - earlier.pool_pages} small-pool pages, "
                f"{self.pfn_db_pages - earlier.pfn_db_pages} PFN-database pages")


@dataclass
class DdiStats:
    calls: Counter[str] = field(default_factory=Counter)  # per family
    documented: Counter[str] = field(default_factory=Counter)  # outcomes as the model said, per family
    stops: Counter[str] = field(default_factory=Counter)  # documented bugchecks seen, by code
    teardown_calls: int = 0
    mappings_verified: int = 0
    translations: int = 0
    unmappings_verified: int = 0
    count_checks: int = 0
    runs: int = 0  # runs that ended with everything freed and nothing outstanding
    reboots: int = 0
    leaks: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


class DdiRunner:
    def __init__(self, session: VmSource, seed: int, findings: FindingLog, *, run_length: int = 200,
                 counts_every: int = 25, stop_rate: float = 0.01, replay: str = "", out: TextIO = sys.stdout) -> None:
        self.session = session
        self.seed = seed
        self.findings = findings
        self.run_length = run_length
        self.counts_every = counts_every
        self.stop_rate = stop_rate
        self.replay = replay  # with {count} for the count that replays up to a call
        self.out = out
        self.stats = DdiStats()
        self.frames: dict[str, set[int]] = {}  # owner -> the frames it holds (as the host saw them)
        self._owner_of: dict[int, str] = {}

    # -- the run ---------------------------------------------------------------------------------

    def run(self, count: int) -> DdiStats:
        started = time.monotonic()
        rng = random.Random(f"mmhil-fuzz-ddi:{self.seed}")
        vm = self.session.vm
        env = environment(vm)
        self.model = Model(env, stop_rate=self.stop_rate)
        self.ledger = Ledger.take(vm, env)
        for index in range(count):
            call = self.model.propose(rng)
            ok = self.execute(index, call)
            if ok and (index + 1) % self.counts_every == 0:
                self.check_counts(index)
            if (index + 1) % self.run_length == 0 or index == count - 1:
                self.teardown(index)
            if (index + 1) % 1000 == 0:
                print(f"  ... {index + 1} calls, {self.stats.runs} runs clean, {self.stats.reboots} reboots, "
                      f"{len(self.findings.findings)} findings", file=self.out, flush=True)
        self.stats.wall_seconds = time.monotonic() - started
        return self.stats

    def _finding(self, kind: str, index: int, call: Call | None, what: str, detail: str = "") -> None:
        shown = f"{call.describe()}: " if call else ""
        self.findings.add(Finding(kind, self.seed, index, shown + what, detail, self.replay.format(count=index + 1),
                                  str(self.session.boot_folder)))

    def _fresh_vm(self) -> Vm:
        """After a bugcheck or a finding: a new VM and a model that starts over."""
        vm = self.session.reboot()
        self.stats.reboots += 1
        self.model.reset()
        self.frames.clear()
        self._owner_of.clear()
        self.ledger = Ledger.take(vm, self.model.env)
        return vm

    def execute(self, index: int, call: Call, teardown: bool = False) -> bool:
        """One call, checked; False when it ended in a reboot (a documented stop or a finding)."""
        vm = self.session.vm
        self.stats.calls[call.family] += 1
        try:
            self._resolve_physical_address(vm, call)
            for check in call.before:
                self.check(vm, check)
            # A call the model lets stop the guest takes no core when it stops: a core is as big as
            # guest RAM (6 GiB on bigmem). A stop with other parameters is still a finding, without one.
            with stop_expected() if call.outcome.stops else contextlib.nullcontext():
                result = self._invoke(vm, call)
        except BugCheck as crash:
            record = crash.record
            if any(s.matches(record.code, record.parameters) for s in call.outcome.stops):
                self.stats.stops[f"{record.code:#x}"] += 1
                self.stats.documented[call.family] += 1
            else:
                self._finding("unexpected bugcheck", index, call, f"expected {call.outcome.describe()}, got "
                              f"{record.stop_line()}", str(crash))
            self._fresh_vm()
            return False
        except (MmhilError, CheckFailed, VerificationError) as exc:
            kind = "agent refused" if isinstance(exc, AgentError) else "death" if isinstance(exc, MmhilError) \
                else "check failed"
            self._finding(kind, index, call, str(exc).splitlines()[0], str(exc))
            self._fresh_vm()
            return False
        if call.outcome.stops:
            self._finding("missing bugcheck", index, call, f"expected {call.outcome.describe()}, the call returned "
                          f"{_show(result)}")
            self._fresh_vm()
            return False
        assert call.outcome.check is not None
        problem = call.outcome.check(result)
        if problem:
            self._finding("wrong outcome", index, call, f"expected {call.outcome.description}: {problem}")
            self._fresh_vm()
            return False
        self.stats.documented[call.family] += 1
        self.model.recent = ()
        try:
            for check in call.commit(result):
                self.check(vm, check)
        except (CheckFailed, VerificationError, MmhilError) as exc:
            self._finding("check failed", index, call, str(exc).splitlines()[0], str(exc))
            self._fresh_vm()
            return False
        return True

    def _invoke(self, vm: Vm, call: Call) -> Any:
        method = getattr(vm.mm, call.ddi)
        args: tuple[Any, ...] = call.args
        if call.ddi == "MmMapLockedPagesSpecifyCache":  # BugCheckOnFailure is a BOOLEAN on the host API
            args = (*args[:4], bool(args[4]), args[5])
        try:
            return method(*args)
        except NtRaisedStatus as raised:
            return raised

    def _resolve_physical_address(self, vm: Vm, call: Call) -> None:
        if not call.pa_source:
            return
        if call.pa_source[0] == "va":
            walk = vm.verify.walk(call.pa_source[1])
            if walk.pa is None:
                raise CheckFailed(f"{call.pa_source[1]:#x} has no translation by the host walk:\n{walk.describe()}")
            pa = walk.pa
        else:
            _, mdl, page, offset = call.pa_source
            pa = read_mdl(vm.verify, mdl).pfns[page] * PAGE + offset
        args = list(call.args)
        args[call.pa_position] = pa
        call.args = tuple(args)
        if call.outcome_for_pa is not None:
            call.outcome = call.outcome_for_pa(pa)

    # -- checks ----------------------------------------------------------------------------------

    def _own(self, owner: str, pfns: list[int]) -> None:
        """Frames `owner` just got: none may belong to another live object."""
        for pfn in pfns:
            other = self._owner_of.get(pfn)
            if other is not None and other != owner:
                raise CheckFailed(f"frame {pfn:#x} of {owner} already belongs to {other}")
        self.frames.setdefault(owner, set()).update(pfns)
        for pfn in pfns:
            self._owner_of[pfn] = owner

    def _release(self, owner: str) -> None:
        for pfn in self.frames.pop(owner, set()):
            self._owner_of.pop(pfn, None)

    def check(self, vm: Vm, check: PostCheck) -> None:
        if isinstance(check, MapCheck):
            self._check_mapping(vm, check)
        elif isinstance(check, UnmapCheck):
            vm.verify.assert_unmapped(check.va, check.length)
            self.stats.unmappings_verified += 1
            if check.release:
                self._release(check.release)
        elif isinstance(check, ReleaseFrames):
            self._release(check.owner)
        elif isinstance(check, MdlCheck):
            self._check_mdl(vm, check)
        elif isinstance(check, GuardWrite):
            if check.data:
                vm.mm.write_va(check.va, check.data)
        elif isinstance(check, GuardCheck):
            if check.data and (seen := vm.verify.host_read(check.va, len(check.data))) != check.data:
                raise CheckFailed(f"guard bytes at {check.va:#x} changed: {check.data.hex()} -> {seen.hex()}")
        elif isinstance(check, ZeroCheck):
            if any(seen := vm.verify.host_read(check.va, check.length)):
                raise CheckFailed(f"a zeroed block at {check.va:#x} holds {seen[:32].hex()}...")
        elif isinstance(check, CopyCheck):
            copied, source = vm.verify.host_read(check.target, check.length), vm.verify.host_read(check.source,
                                                                                                check.length)
            if copied != source:
                bad = next(i for i in range(check.length) if copied[i] != source[i])
                raise CheckFailed(f"the copy at {check.target:#x} differs from its source {check.source:#x} at "
                                  f"+{bad:#x}")
        elif isinstance(check, HeaderCheck):
            self._check_header(vm, check)
        elif isinstance(check, DxgkInfoCheck):
            self._check_dxgk(vm, check)

    def _expected_pfns(self, vm: Vm, check: MapCheck, first_pfn: int | None, pages: int) -> list[int] | None:
        kind = check.pfns[0]
        if kind == "mdl":
            pfns = [p for p in read_mdl(vm.verify, check.pfns[1]).pfns if p != MDL_PFN_END]
            return pfns[:pages]
        if kind == "consecutive":
            start = check.pfns[1] // PAGE if check.pfns[1] is not None else first_pfn
            return None if start is None else [start + i for i in range(pages)]
        if kind == "dxgk":
            info = vm.mm.dxgk_object_info(check.pfns[1])
            return list(info.pfns[check.pfns[2] : check.pfns[2] + pages])
        return None

    def _check_mapping(self, vm: Vm, check: MapCheck) -> None:
        first = check.va & ~(PAGE - 1)
        pages = (check.va + check.length - 1) // PAGE - first // PAGE + 1
        first_walk = vm.verify.walk(first)
        first_pfn = first_walk.pa // PAGE if first_walk.pa is not None else None
        pfns = self._expected_pfns(vm, check, first_pfn, pages)
        walks = vm.verify.assert_mapped(first, pages * PAGE, pfns=pfns, writable=check.writable, user=check.user,
                                        executable=check.executable, cache=check.cache)
        seen = [w.pa // PAGE for w in walks if w.pa is not None]
        for page in sorted({0, pages - 1, pages // 2}):  # three ways: agent, host walk, QEMU
            pa = vm.verify.translate(first + page * PAGE + 0x18)
            self.stats.translations += 1
            if pa is None or pa // PAGE != seen[page]:
                raise CheckFailed(f"page {page} of {first:#x} translates to {pa!r}, its walk to {seen[page]:#x}")
        if check.within is not None:
            low, high = check.within
            outside = [p for p in seen if not low <= p * PAGE < high]
            if outside:
                raise CheckFailed(f"frames {[hex(p) for p in outside]} lie outside [{low:#x}, {high:#x})")
        if check.boundary and seen[0] * PAGE // check.boundary != (seen[-1] * PAGE + PAGE - 1) // check.boundary:
            raise CheckFailed(f"frames {seen[0]:#x}..{seen[-1]:#x} cross a multiple of {check.boundary:#x}")
        if check.owner:
            self._own(check.owner, seen)
        self.stats.mappings_verified += 1

    def _check_mdl(self, vm: Vm, check: MdlCheck) -> None:
        m = read_mdl(vm.verify, check.mdl)
        wrong = []
        if m.mdl_flags != check.flags:
            wrong.append(f"MdlFlags {m.mdl_flags:#x}, expected {check.flags:#x}")
        if (m.byte_count, m.byte_offset) != (check.byte_count, check.byte_offset):
            wrong.append(f"ByteCount/ByteOffset {m.byte_count:#x}/{m.byte_offset:#x}, expected "
                         f"{check.byte_count:#x}/{check.byte_offset:#x}")
        if check.pfns_of and check.pfns_of[0] == "walk":
            _, va, length = check.pfns_of
            first = va & ~(PAGE - 1)
            count = (va + length - 1) // PAGE - first // PAGE + 1
            with vm.verify.stopped() as w:
                walked = [w.walk(first + i * PAGE).pa for i in range(count)]
            if list(m.pfns) != [pa // PAGE if pa is not None else None for pa in walked]:
                wrong.append(f"PFNs {[hex(p) for p in m.pfns]}, the host walk of the buffer gives "
                             f"{[hex(pa // PAGE) if pa is not None else None for pa in walked]}")
        if check.pfns_of and check.pfns_of[0] == "distinct" and (len(set(m.pfns)) != len(m.pfns)
                                                                 or MDL_PFN_END in m.pfns):
            wrong.append(f"PFNs {[hex(p) for p in m.pfns]} are not {m.page_count} distinct frames")
        if wrong:
            raise CheckFailed(f"MDL {check.mdl:#x} as the host reads it: " + "; ".join(wrong))
        if check.zeroed:
            for pfn in m.pfns:
                if any(vm.verify.memory.read(pfn * PAGE, PAGE)):
                    raise CheckFailed(f"frame {pfn:#x} of the new MDL {check.mdl:#x} is not zeroed")
        if check.owner:
            self._own(check.owner, list(m.pfns))

    def _check_header(self, vm: Vm, check: HeaderCheck) -> None:
        with vm.verify.stopped() as w:
            entries = [w.walk(check.va - 2 * PAGE + i * PAGE).entry(1) for i in range(2)]
        wanted = [size_pte(check.pages), tag_pte(check.tag)]
        if entries != wanted:
            raise CheckFailed(f"the header PTEs of the reservation {check.va:#x} are "
                              f"{[hex(e) if e is not None else None for e in entries]}, expected "
                              f"{[hex(e) for e in wanted]}")

    def _check_dxgk(self, vm: Vm, check: DxgkInfoCheck) -> None:
        info = vm.mm.dxgk_object_info(check.handle)
        pages = -(-check.size // PAGE)
        got = (info.type, info.cache_type, info.size, info.pages, info.views)
        wanted = (check.type, check.cache, check.size, pages, check.views)
        if got != wanted:
            raise CheckFailed(f"DXGK object {check.handle:#x}: (type, cache, size, pages, views) {got}, "
                              f"expected {wanted}")
        if check.io_base is not None:
            if list(info.pfns) != [check.io_base // PAGE + i for i in range(pages)]:
                raise CheckFailed(f"the I/O-space object's frames {info.pfns[:4]}... are not its range")
        elif len(set(info.pfns)) != pages:
            raise CheckFailed(f"the object's {pages} frames are not distinct: {info.pfns}")
        if check.owner:
            self._own(check.owner, list(info.pfns))

    # -- counts and the end of a run -------------------------------------------------------------

    def check_counts(self, index: int) -> bool:
        vm = self.session.vm
        self.stats.count_checks += 1
        try:
            actual = vm.mm.outstanding()
        except MmhilError as exc:
            self._finding("death", index, None, f"outstanding: {exc}".splitlines()[0], str(exc))
            self._fresh_vm()
            return False
        expected = self.model.expected_counts()
        keys = [*COUNTED, *(tag_key(t) for t in TAGS)]
        wrong = {k: (actual.get(k, 0), expected[k]) for k in keys if actual.get(k, 0) != expected[k]}
        if wrong:
            shown = ", ".join(f"{k} {a} (model {e})" for k, (a, e) in wrong.items())
            self._finding("leak count", index, None, f"outstanding disagrees with the model: {shown}")
            self._fresh_vm()
            return False
        return True

    def teardown(self, index: int) -> None:
        """Free everything the model holds, then nothing may be outstanding and no frame lost."""
        while (call := self.model.teardown_call()) is not None:
            self.stats.teardown_calls += 1
            if not self.execute(index, call, teardown=True):
                return
        if not self.check_counts(index):
            return
        vm = self.session.vm
        left = nonzero_outstanding(vm.mm.outstanding())
        if left:
            self.stats.leaks.append(f"after call {index}: {left}")
            self._finding("leak", index, None, f"outstanding after everything was freed: {left}")
            self._fresh_vm()
            return
        now = Ledger.take(vm, self.model.env)
        kept = now.kept_since(self.ledger)
        if self.ledger.free - now.free != kept:
            what = (f"free frames {self.ledger.free} -> {now.free}, but the host walk sees only {kept} more frames "
                    f"kept by design ({now.describe_kept(self.ledger)})")
            self.stats.leaks.append(f"after call {index}: {what}")
            self._finding("leak", index, None, what)
            self._fresh_vm()
            return
        self.ledger = now
        self.stats.runs += 1


def _show(result: Any) -> str:
    return f"{result:#x}" if isinstance(result, int) and not isinstance(result, bool) else repr(result)


def report(session: VmSource, seed: int, count: int, stats: DdiStats, findings: int) -> str:
    families = sorted(stats.calls)
    rows = ", ".join(f"{f} {stats.calls[f]:,} ({stats.documented[f]:,} as documented)" for f in families)
    stops = ", ".join(f"{code} x{n}" for code, n in sorted(stats.stops.items())) or "none"
    total = sum(stats.calls.values())
    lines = [
        f"mmhil fuzz ddi: {session.describe()}, seed {seed}, {count:,} calls drawn "
        f"(+{stats.teardown_calls:,} teardown calls)",
        f"calls by family: {rows}",
        f"documented bugchecks seen (VM rebooted after each): {stops}; reboots {stats.reboots}",
        f"mappings verified: {stats.mappings_verified:,} (every page by the host walk; {stats.translations:,} "
        f"three-way translations); unmappings verified: {stats.unmappings_verified:,}",
        f"leak-count checks: {stats.count_checks:,}; runs ended with nothing outstanding and no frame lost: "
        f"{stats.runs}",
        f"leaks: {len(stats.leaks)}" + (f" ({'; '.join(stats.leaks[:3])})" if stats.leaks else ""),
        f"findings: {findings}; {total:,} calls in {stats.wall_seconds:.1f} s "
        f"({total / max(stats.wall_seconds, 1e-9):,.0f} calls/s, checks included)",
    ]
    return "\n".join(lines)
