"""The page-table diff around every VM test: what the test mapped, unmapped or changed, as the host
walks the guest's tables in shared RAM (no agent, no monitor).

The `vm` and `fresh_vm` fixtures take the tables before and after each test. A failing test's report
shows the diff. A passing test that leaves a change in a region it must restore fails at teardown,
like a leak, and its VM is discarded.

Which regions a passing test must leave as it found them (docs/faults.md):

    may change      nonpaged pool    pages holding small blocks stay mapped once used (pool growth)
                    ring-3 probe     the probe's code and stack, mapped at the first user-mode call
                    PFN database     a page still mapping the database's shared zero frame read-only
                                     gets a frame of its own at its first write (mm/frames.c), and
                                     keeps it: that change alone
    must restore    everything else: user views, physmap, hyperspace (the copy window), kernel image
                    and stack, system PTEs, PFN database, HAL, and any address outside these regions

The recursive self-map is not walked (its "mappings" are the tables themselves), and accessed/dirty
bits are ignored: the CPU sets them on its own.

Cost: there are thousands of VM tests, so the usual check is not a walk. A walk records which pages
hold the tables; the next check gathers exactly those pages from shared RAM in one numpy index (A
and D masked) and compares them with what the walk saw. Equal contents mean an equal tree, since a
new table can only be reached through an entry of a known one. Only when they differ does the check
walk again and diff. Checks run between requests, when the agent is idle and nothing in the guest
writes page tables, so the guest is not stopped for them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from harness.oracle.memory import MemoryAccessError, SharedRamMemory
from harness.oracle.paging import PTE_A, PTE_D, PagingMode
from harness.oracle.walker import RANGE_HEADER, MappedRange, Snapshot, SnapshotDiff, snapshot

if TYPE_CHECKING:
    from harness.vm import Vm

# include/layout.h and include/usermode.h
USER_REGION_BASE = 0x0000_0000_1000_0000
USER_VIEW_BASE = 0x0000_0000_1020_0000
USER_REGION_END = 0x0000_0000_1040_0000
HYPERSPACE_BASE = 0xFFFF_F700_0000_0000
LOADER_MAPPINGS_BASE = 0xFFFF_F800_0000_0000
SYSTEM_PTE_BASE = 0xFFFF_F980_0000_0000
PFN_DATABASE_BASE = 0xFFFF_FA80_0000_0000
HAL_BASE = 0xFFFF_FFFF_FFC0_0000
TOP = 1 << 64

_AD_MASK = np.uint64(~(PTE_A | PTE_D) & 0xFFFF_FFFF_FFFF_FFFF)
REPORT_LINES = 40  # per kind of change in a report; the rest is counted


@dataclass(frozen=True)
class Region:
    name: str
    start: int
    end: int
    must_restore: bool

    def contains(self, va: int) -> bool:
        return self.start <= va < self.end


def kernel_regions(pool_base: int, pool_end: int, physmap_base: int, physmap_size: int) -> tuple[Region, ...]:
    """The kernel's regions, sorted by address (the pool's place depends on the PFN database's size)."""
    regions = [
        Region("ring-3 probe", USER_REGION_BASE, USER_VIEW_BASE, must_restore=False),
        Region("user views", USER_VIEW_BASE, USER_REGION_END, must_restore=True),
        Region("physmap", physmap_base, physmap_base + physmap_size, must_restore=True),
        Region("hyperspace", HYPERSPACE_BASE, LOADER_MAPPINGS_BASE, must_restore=True),
        Region("kernel image and stack", LOADER_MAPPINGS_BASE, SYSTEM_PTE_BASE, must_restore=True),
        Region("system PTEs", SYSTEM_PTE_BASE, PFN_DATABASE_BASE, must_restore=True),
        Region("PFN database", PFN_DATABASE_BASE, pool_base, must_restore=True),
        Region("nonpaged pool", pool_base, pool_end, must_restore=False),
        Region("HAL", HAL_BASE, TOP, must_restore=True),
    ]
    return tuple(sorted(regions, key=lambda r: r.start))


OUTSIDE = Region("outside every region", 0, TOP, must_restore=True)
PFN_DATABASE_FILLED = Region("PFN database, zero frame to its own frame", PFN_DATABASE_BASE, PFN_DATABASE_BASE,
                             must_restore=False)


def shared_zero_frame(snap: Snapshot, regions: tuple[Region, ...]) -> int | None:
    """The frame the lazy PFN database maps read-only at every page not written yet, if it maps one at
    more than a page (so a private frame is never taken for it)."""
    database = next((r for r in regions if r.name == "PFN database"), None)
    if database is None:
        return None
    counts = Counter(r.pa for r in snap.ranges
                     if database.contains(r.va) and r.size == 4096 and not r.attributes.writable)
    found = counts.most_common(1)
    return found[0][0] if found and found[0][1] > 1 else None


def _lazy_fill(region: Region, old: MappedRange, zero_frame: int | None) -> bool:
    """A database page leaving the shared zero frame for its own: what its first write does."""
    return (zero_frame is not None and region.name == "PFN database" and not old.attributes.writable
            and old.pa == zero_frame and old.size == 4096)


def _split(ranges: Iterable[MappedRange], regions: tuple[Region, ...]) -> Iterator[tuple[Region, MappedRange]]:
    """Each range cut at region boundaries, with the region of each piece (OUTSIDE between regions)."""
    for r in ranges:
        start = r.va
        while start < r.va_end:
            region = next((g for g in regions if g.contains(start)), None)
            if region is None:
                following = [g.start for g in regions if g.start > start]
                end = min([r.va_end, *following])
                region = OUTSIDE
            else:
                end = min(r.va_end, region.end)
            yield region, r.clip(start, end)
            start = end


@dataclass(frozen=True)
class Change:
    kind: str  # "added", "removed", "changed"
    region: Region
    old: MappedRange | None
    new: MappedRange | None

    @property
    def range(self) -> MappedRange:
        found = self.new or self.old
        assert found is not None
        return found


@dataclass(frozen=True)
class PageTableChanges:
    """What a test changed in the page tables, each change with its region."""

    changes: tuple[Change, ...]

    @classmethod
    def of(cls, diff: SnapshotDiff, regions: tuple[Region, ...], zero_frame: int | None = None) -> PageTableChanges:
        """`zero_frame`: the PFN database's shared zero frame in the old tables (`shared_zero_frame`)."""
        found: list[Change] = []
        for region, piece in _split(diff.added, regions):
            found.append(Change("added", region, None, piece))
        for region, piece in _split(diff.removed, regions):
            found.append(Change("removed", region, piece, None))
        for old, new in diff.changed:
            for region, piece in _split([new], regions):
                before = old.clip(piece.va, piece.va_end)
                found.append(Change("changed", PFN_DATABASE_FILLED if _lazy_fill(region, before, zero_frame)
                                    else region, before, piece))
        return cls(tuple(sorted(found, key=lambda c: c.range.va)))

    @property
    def left_behind(self) -> tuple[Change, ...]:
        """The changes a passing test may not leave: those in must-restore regions."""
        return tuple(c for c in self.changes if c.region.must_restore)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def format(self, changes: Iterable[Change] | None = None) -> str:
        """Compact: one line per coalesced run, `+` added, `-` removed, `<`/`>` old and new."""
        shown = list(self.changes if changes is None else changes)
        if not shown:
            return "no mapping changed"
        lines = ["    " + RANGE_HEADER]
        for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "<>")):
            of_kind = [c for c in shown if c.kind == kind]
            for c in of_kind[:REPORT_LINES]:
                where = f"   [{c.region.name}{'' if c.region.must_restore else ', may change'}]"
                if kind == "changed" and c.old is not None and c.new is not None:
                    lines.append(f"  < {c.old.format_line()}{where}")
                    lines.append(f"  > {c.new.format_line()}")
                else:
                    lines.append(f"  {mark} {c.range.format_line()}{where}")
            if len(of_kind) > REPORT_LINES:
                lines.append(f"  ... {len(of_kind) - REPORT_LINES} more {kind} runs")
        counts = ", ".join(f"{sum(1 for c in shown if c.kind == k)} {k}" for k in ("added", "removed", "changed"))
        return f"{counts} (runs of leaves; A/D bits ignored):\n" + "\n".join(lines)


def _diff(old: Snapshot, new: Snapshot) -> SnapshotDiff:
    """`old.diff(new)` over only the ranges the two do not share: a range in both maps the same way in
    both and overlaps nothing else of either, so leaving it out changes nothing, and the PFN database
    alone is thousands of ranges. (Attributes are compared by identity here: the walker shares equal
    ones, and two equal ones that are not shared only cost the full comparison.)"""
    def key(r: MappedRange) -> tuple[int, int, int, int, int]:
        return (r.va, r.pa, r.size, r.leaf_size, id(r.attributes))

    old_keys = {key(r) for r in old.ranges}
    new_keys = {key(r) for r in new.ranges}
    only_old = tuple(r for r in old.ranges if key(r) not in new_keys)
    only_new = tuple(r for r in new.ranges if key(r) not in old_keys)
    return Snapshot(old.mode, old.cr3, only_old).diff(Snapshot(new.mode, new.cr3, only_new))


@dataclass
class _Walked:
    """A walk of the tables, and the table pages it read, gathered masked for the quick check."""

    snapshot: Snapshot
    index: npt.NDArray[np.intp]
    contents: npt.NDArray[np.uint64]


@dataclass
class PageTableGuard:
    """One VM's page tables as the host last walked them; `start()` before a test, `changes()` after."""

    memory: SharedRamMemory
    cr3: int
    mode: PagingMode
    regions: tuple[Region, ...]
    walks: int = 0
    quick_checks: int = 0
    _last: _Walked | None = field(default=None, repr=False)
    _baseline: Snapshot | None = field(default=None, repr=False)

    @classmethod
    def attach(cls, vm: Vm) -> PageTableGuard | str:
        """A guard for a booted VM, or why there can be none (no shared RAM: walks over the monitor
        would cost a second per test)."""
        verifier = vm.verify
        if verifier.shared_memory is None:
            return f"no page-table diff: {vm.name}'s RAM is not shared with the host"
        info = vm.mm.kernel_info()
        cpu = verifier.cpu_states()[0]
        if cpu.mode is None:
            return f"no page-table diff: vCPU 0 is not in long-mode paging ({cpu.problem})"
        regions = kernel_regions(info.pool_base, info.pool_end, info.physmap_base, info.physmap_size)
        return cls(verifier.shared_memory, cpu.cr3, cpu.mode, regions)

    def _walk(self) -> _Walked:
        snap = snapshot(self.memory, self.cr3, self.mode)
        layout = self.memory.layout
        rows = np.array([layout.file_offset(pa, 4096) // 8 for pa in snap.table_pas], dtype=np.intp)
        index = (rows[:, None] + np.arange(512, dtype=np.intp)[None, :]).reshape(-1)
        self.walks += 1
        return _Walked(snap, index, self._gather(index))

    def _gather(self, index: npt.NDArray[np.intp]) -> npt.NDArray[np.uint64]:
        return np.asarray(self.memory.u64_array()[index] & _AD_MASK, dtype=np.uint64)

    def current(self) -> Snapshot:
        """The tables now: the last walk if no table page changed since, else a new walk."""
        last = self._last
        if last is not None:
            self.quick_checks += 1
            if np.array_equal(self._gather(last.index), last.contents):
                return last.snapshot
        self._last = self._walk()
        return self._last.snapshot

    def start(self) -> None:
        self._baseline = self.current()

    def changes(self) -> PageTableChanges:
        """What changed since `start()`."""
        if self._baseline is None:
            raise RuntimeError("PageTableGuard.changes() before start()")
        now = self.current()
        if now is self._baseline:
            return PageTableChanges(())
        return PageTableChanges.of(_diff(self._baseline, now), self.regions,
                                   shared_zero_frame(self._baseline, self.regions))

    def changes_or_reason(self) -> PageTableChanges | str:
        """`changes()`, or why the tables could not be read (for reports, which must not fail)."""
        try:
            return self.changes()
        except (MemoryAccessError, RuntimeError, ValueError) as exc:
            return f"page-table diff unavailable: {type(exc).__name__}: {exc}"


__all__ = [
    "OUTSIDE",
    "PFN_DATABASE_FILLED",
    "Change",
    "PageTableChanges",
    "PageTableGuard",
    "Region",
    "kernel_regions",
    "shared_zero_frame",
]
