"""The permission matrix: its unpruned space, how it is pruned, and the pruned cases themselves.

The unpruned space, per paging mode (4 or 5 levels) and per CPU (only what the CPU has):

- the shape of the chain: its leaf is a PTE (4 KiB), a PDE with PS=1 (2 MiB) or a PDPTE with PS=1
  (1 GiB; on a CPU without 1 GiB pages PS=1 there is a reserved bit to the SDM);
- in every table entry above the leaf: P, R/W, U/S, XD, A, the reserved bit at MAXPHYADDR (when it is
  below 52) and, in a PML4E or PML5E, PS (reserved);
- in the leaf: P, R/W, U/S, XD, A, D, the MAXPHYADDR bit and, in a large leaf, bit 13 (reserved);
- the access: read, write or instruction fetch; CPL 0 or 3; CR0.WP; CR4.SMEP and CR4.SMAP (when the
  CPU has them); RFLAGS.AC; EFER.NXE (when the CPU has NX).

Pruning maps every case of that space to one representative (:func:`canonical`); two cases share a
representative only when the model predicts the same fault, error code and A/D writes for both
(tests/unit/test_access_model.py checks it). The rules, in the order they apply:

1. The walk ends at the first entry that is not present or sets a reserved bit: the entries below it
   are never read, so the chain stops there.
2. A not-present entry is always the same entry: P=0 with R/W, U/S, XD, PS and the MAXPHYADDR bit
   set and A=D=0, which shows that none of its other bits is looked at and that it is not written.
3. An entry with reserved bits keeps one of them (the first QEMU checks); its rights are all refused
   (R/W=0, U/S=0, XD=1 where XD is not reserved), which shows that a reserved bit decides before rights.
4. Above an entry that stops the walk, rights do not matter: per right, "some entry above refuses it"
   becomes "every entry above refuses it", and "none does" stays.
5. For a walk that reaches its leaf, a right the access does not depend on (R/W for reads and fetches
   and for supervisor writes with CR0.WP=0; XD for data accesses; U/S for supervisor accesses that
   neither SMAP nor SMEP governs) is set to its refusing value at every level (read-only, XD=1,
   user), which shows that it does not matter. A right the access does depend on is refused at the
   lowest level that refuses it, or nowhere: the model only needs "some level refuses", and one
   level per case still catches a walker that ignores a level.
6. Controls an access does not depend on are cleared: CR0.WP except for supervisor writes, CR4.SMAP
   except for supervisor data accesses, RFLAGS.AC except with SMAP, CR4.SMEP except for fetches. A
   walk that stops (rule 1) depends only on the access, the CPL, EFER.NXE and, for a fetch with
   EFER.NXE=0, on CR4.SMEP (the I/D bit of the error code).
7. An A or D bit the walker does not write is cleared (so that a wrong write shows); one it writes
   is kept preset or clear, both being cases.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Final

from harness.matrix.model import (
    QEMU_TCG,
    Access,
    Case,
    Controls,
    Cpu,
    Entry,
    Expect,
    Outcome,
    Platform,
    Quirk,
    Reserved,
    predict,
    reserved_causes,
)

KVM_UNIT_TESTS_CASES_PER_SECOND: Final = 7500  # qemu-facts.md: access_test under TCG
KVM_UNIT_TESTS_CASES_PER_MODE: Final = 1_900_000  # its own matrix, without PKU


def controls_space(cpu: Cpu) -> list[Controls]:
    """Every combination of the access and the control bits this CPU can have."""
    features = [False, True]
    return [
        Controls(access, cpl, wp, smep, smap, ac, nxe)
        for access in Access
        for cpl in (0, 3)
        for wp in features
        for smep in (features if cpu.smep else [False])
        for smap in (features if cpu.smap else [False])
        for ac in features
        for nxe in (features if cpu.nx else [False])
    ]


def leaf_levels(cpu: Cpu, platform: Platform) -> tuple[int, ...]:
    """The levels a leaf can be at: 1 GiB leaves need pdpe1gb, or a walker that ignores CPUID."""
    return (1, 2, 3) if cpu.pdpe1gb or platform.has(Quirk.PS_1G_WITHOUT_PDPE1GB) else (1, 2)


def unpruned_count(levels: int, cpu: Cpu) -> int:
    """The size of the unpruned space (module docstring) for one paging mode."""
    phys = 2 if cpu.reserved_phys_bit is not None else 1
    total = 0
    for leaf in (1, 2, 3):
        tables = 1
        for level in range(levels, leaf, -1):
            tables *= 2**5 * phys * (2 if level >= 4 else 1)  # P RW US XD A, MAXPHYADDR bit, PS (reserved)
        leaf_entry = 2**6 * phys * (2 if leaf >= 2 else 1)  # P RW US XD A D, MAXPHYADDR bit, bit 13
        total += tables * leaf_entry
    return total * len(controls_space(cpu))


# --------------------------------------------------------------------------------------------------
# Canonical forms


def canonical_controls(controls: Controls, outcome: Outcome) -> Controls:
    """Rule 6: the controls the access depends on, the others cleared."""
    c = controls
    if outcome in (Outcome.NOT_PRESENT, Outcome.RESERVED):
        return Controls(c.access, c.cpl, nxe=c.nxe, smep=c.smep and c.access is Access.FETCH and not c.nxe)
    supervisor = c.cpl == 0
    smap = c.smap and supervisor and c.data
    return Controls(
        c.access,
        c.cpl,
        wp=c.wp and supervisor and c.access is Access.WRITE,
        smep=c.smep and c.access is Access.FETCH,
        smap=smap,
        ac=c.ac and smap,
        nxe=c.nxe,
    )


def relevant_rights(c: Controls) -> tuple[bool, bool, bool]:
    """Rule 5: whether a walk that reaches its leaf depends on R/W, U/S and XD."""
    write = c.access is Access.WRITE
    fetch = c.access is Access.FETCH
    rw = write and (c.cpl == 3 or c.wp)
    us = c.cpl == 3 or (c.data and c.smap) or (fetch and c.smep)
    xd = fetch and c.nxe
    return rw, us, xd


def not_present_entry(level: int, cpu: Cpu) -> Entry:
    """Rule 2."""
    return Entry(present=False, writable=True, user=True, no_execute=True, page_size=level >= 2,
                 reserved_phys=cpu.reserved_phys_bit is not None)


def reserved_entry(cause: Reserved, level: int, page_size: bool, c: Controls) -> Entry:
    """Rule 3: one reserved bit, every right refused. ``page_size`` matters only for PHYS and XD at levels
    2 and 3, where the entry may be a table or a leaf."""
    if cause in (Reserved.PS_TOP, Reserved.PS_1G_UNSUPPORTED, Reserved.LARGE):
        page_size = True
    return Entry(present=True, writable=False, user=False, no_execute=cause is Reserved.XD or c.nxe,
                 page_size=page_size, reserved_phys=cause is Reserved.PHYS, reserved_large=cause is Reserved.LARGE)


def tables_above_stop(tables: tuple[Entry, ...], c: Controls) -> list[Entry]:
    """Rule 4: per right, refused by every table above the stop, or by none."""
    rw = any(not t.writable for t in tables)
    us = any(not t.user for t in tables)
    xd = c.nxe and any(t.no_execute for t in tables)
    return [Entry(writable=not rw, user=not us, no_execute=xd) for _ in tables]


def _refusals(refused: list[bool], relevant: bool, irrelevant: bool) -> list[bool]:
    if not relevant:
        return [irrelevant] * len(refused)
    lowest = max((i for i, r in enumerate(refused) if r), default=None)
    return [i == lowest for i in range(len(refused))]


def leaf_walk_entries(levels: int, rw: list[bool], us: list[bool], xd: list[bool]) -> list[Entry]:
    """Entries of a walk that reaches its leaf, from per-entry refusals of R/W, U/S and XD."""
    count = len(rw)
    leaf_level = levels - count + 1
    return [Entry(writable=not rw[i], user=not us[i], no_execute=xd[i], page_size=i == count - 1 and leaf_level >= 2)
            for i in range(count)]


def with_accessed_dirty(case: Case, accessed: tuple[bool, ...], dirty: bool, cpu: Cpu, platform: Platform) -> Case:
    """Rule 7: each entry's A (and the last entry's D) as given where the walker writes it, clear elsewhere."""
    p = predict(case, cpu, platform)
    last = len(case.entries) - 1
    entries = tuple(
        Entry(e.present, e.writable, e.user, e.no_execute, accessed[i] and p.accessed[i] is not Expect.UNCHANGED,
              i == last and dirty and p.dirty[i] is not Expect.UNCHANGED, e.page_size, e.reserved_phys,
              e.reserved_large)
        for i, e in enumerate(case.entries))
    return Case(case.levels, entries, case.controls)


def canonical(case: Case, cpu: Cpu, platform: Platform = QEMU_TCG) -> Case:
    """The representative of the case's class (rules 1 to 7)."""
    p = predict(case, cpu, platform)
    stop = p.index
    c = canonical_controls(case.controls, p.outcome)
    last = case.entries[stop]
    level = case.level(stop)
    if p.outcome is Outcome.NOT_PRESENT:
        entries = [*tables_above_stop(case.entries[:stop], c), not_present_entry(level, cpu)]
    elif p.outcome is Outcome.RESERVED:
        causes = reserved_causes(last, level, case.controls, cpu, platform) or [Reserved.LARGE]
        keep_ps = last.page_size and level in leaf_levels(cpu, platform) and level >= 2
        entries = [*tables_above_stop(case.entries[:stop], c), reserved_entry(causes[0], level, keep_ps, c)]
    else:
        rw_rel, us_rel, xd_rel = relevant_rights(c)
        head = case.entries[: stop + 1]
        entries = leaf_walk_entries(
            case.levels,
            _refusals([not e.writable for e in head], rw_rel, True),
            _refusals([not e.user for e in head], us_rel, False),
            _refusals([e.no_execute and c.nxe for e in head], xd_rel, c.nxe),
        )
    skeleton = Case(case.levels, tuple(entries), c)
    accessed = tuple(e.accessed for e in case.entries[: stop + 1])
    return with_accessed_dirty(skeleton, accessed, last.dirty, cpu, platform)


# --------------------------------------------------------------------------------------------------
# The pruned matrix


def _accessed_dirty_variants(skeleton: Case, cpu: Cpu, platform: Platform) -> Iterator[Case]:
    """Rule 7's variants of a skeleton whose A and D bits are clear."""
    p = predict(skeleton, cpu, platform)
    last = len(skeleton.entries) - 1
    accessed = [(False, True) if expect is not Expect.UNCHANGED else (False,) for expect in p.accessed]
    dirty = (False, True) if p.dirty[last] is not Expect.UNCHANGED else (False,)
    for a in itertools.product(*accessed):
        for d in dirty:
            yield with_accessed_dirty(skeleton, a, d, cpu, platform)


def _stop_tables(count: int, c: Controls) -> Iterator[list[Entry]]:
    for rw, us, xd in itertools.product((False, True), (False, True), (False, True) if c.nxe else (False,)):
        yield [Entry(writable=not rw, user=not us, no_execute=xd) for _ in range(count)]


def _reserved_stops(levels: int, level: int, c: Controls, cpu: Cpu, platform: Platform) -> Iterator[Entry]:
    leaf_capable = level >= 2 and level in leaf_levels(cpu, platform)
    forms = (False, True) if leaf_capable else (False,)
    if cpu.reserved_phys_bit is not None:
        for ps in forms:
            yield reserved_entry(Reserved.PHYS, level, ps, c)
    if level >= 4:
        yield reserved_entry(Reserved.PS_TOP, level, True, c)
    if not c.nxe:
        for ps in forms:
            yield reserved_entry(Reserved.XD, level, ps, c)
    if level == 3 and not leaf_capable:
        yield reserved_entry(Reserved.PS_1G_UNSUPPORTED, level, True, c)
    if leaf_capable:
        yield reserved_entry(Reserved.LARGE, level, True, c)


@functools.cache
def pruned_cases(levels: int, cpu: Cpu, platform: Platform = QEMU_TCG) -> tuple[Case, ...]:
    """Every representative of the unpruned space, each once, sorted by controls (computed once)."""
    space = controls_space(cpu)
    stop_controls = sorted({canonical_controls(c, Outcome.NOT_PRESENT) for c in space}, key=_order)
    leaf_controls = sorted({canonical_controls(c, Outcome.ALLOWED) for c in space}, key=_order)
    cases: list[Case] = []
    for c in stop_controls:
        for stop in range(levels):
            level = levels - stop
            for tables in _stop_tables(stop, c) if stop else [[]]:
                lasts = [not_present_entry(level, cpu), *_reserved_stops(levels, level, c, cpu, platform)]
                for last in lasts:
                    cases.extend(_accessed_dirty_variants(Case(levels, (*tables, last), c), cpu, platform))
    for c in leaf_controls:
        rw_rel, us_rel, xd_rel = relevant_rights(c)
        for leaf in leaf_levels(cpu, platform):
            count = levels - leaf + 1
            for rw, us, xd in itertools.product(_patterns(count, rw_rel, True), _patterns(count, us_rel, False),
                                                _patterns(count, xd_rel, c.nxe)):
                skeleton = Case(levels, tuple(leaf_walk_entries(levels, rw, us, xd)), c)
                cases.extend(_accessed_dirty_variants(skeleton, cpu, platform))
    return tuple(sorted(cases, key=lambda case: _order(case.controls)))


def _patterns(count: int, relevant: bool, irrelevant: bool) -> list[list[bool]]:
    """Rule 5's refusal patterns: nowhere or at one level (relevant), everywhere or nowhere (irrelevant)."""
    if not relevant:
        return [[irrelevant] * count]
    return [[False] * count] + [[i == lowest for i in range(count)] for lowest in range(count)]


def _order(c: Controls) -> tuple[int, ...]:
    """Cases sorted so that the guest rewrites CR0, CR4 and EFER as rarely as possible."""
    return int(c.nxe), int(c.smep), int(c.smap), int(c.wp), c.cpl, int(c.ac), int(c.access)
