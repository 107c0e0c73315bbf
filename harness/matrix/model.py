"""The host's own model of x86-64 page permissions, and where QEMU 7.2's TCG departs from it.

Sources: Intel SDM Vol. 3A §4.5 (4- and 5-level paging, reserved bits), §4.6 (access rights), §4.7
(page-fault error code), §4.8 (accessed and dirty flags). The model walks one case's chain of
entries the way the SDM describes and predicts three things: whether the access faults, the #PF
error code, and what happens to each entry's A and D bits.

Where the SDM leaves a behaviour open, the model names the point (:class:`Choice`) and a
:class:`Platform` says which way it goes; a platform that does not say accepts either. Where QEMU
departs from the SDM, the departure is a named :class:`Quirk` that a platform switches on; the
model never masks a difference silently. ``QEMU_TCG`` is QEMU 7.2's TCG walker
(target/i386/tcg/sysemu/excp_helper.c, ``mmu_translate``), read for what it does on a walk that
faults; ``SDM`` is the manual alone.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from harness.oracle.paging import ENTRY_NAMES, MAXPHYADDR

LEVEL_SIZE_NAMES: Final = {1: "4 KiB", 2: "2 MiB", 3: "1 GiB"}
LARGE_RESERVED_BIT: Final = 13  # inside a 2 MiB or 1 GiB leaf's address field, below its base: reserved

# #PF error code bits (SDM §4.7)
PF_P: Final = 1 << 0
PF_W: Final = 1 << 1
PF_U: Final = 1 << 2
PF_RSVD: Final = 1 << 3
PF_ID: Final = 1 << 4


class Access(enum.IntEnum):
    READ = 0
    WRITE = 1
    FETCH = 2

    @property
    def word(self) -> str:
        return ("read", "write", "instruction fetch")[self]


@dataclass(frozen=True, slots=True)
class Entry:
    """One paging-structure entry on a case's path, as the bits the case chooses.

    ``page_size`` is the PS bit (bit 7) of a level-2 to level-5 entry. ``reserved_phys`` sets the
    lowest physical-address bit at or above MAXPHYADDR; ``reserved_large`` sets bit 13 of a 2 MiB or
    1 GiB leaf. ``dirty`` is meaningful in leaves only (the CPU ignores bit 6 of a table entry).
    """

    present: bool = True
    writable: bool = True
    user: bool = True
    no_execute: bool = False
    accessed: bool = False
    dirty: bool = False
    page_size: bool = False
    reserved_phys: bool = False
    reserved_large: bool = False


@dataclass(frozen=True, slots=True)
class Controls:
    """What the CPU and the access are: the access type, CPL, CR0.WP, CR4.SMEP/SMAP, RFLAGS.AC, EFER.NXE."""

    access: Access
    cpl: int = 0
    wp: bool = False
    smep: bool = False
    smap: bool = False
    ac: bool = False
    nxe: bool = True

    @property
    def data(self) -> bool:
        return self.access is not Access.FETCH

    def describe(self) -> str:
        return (f"{self.access.word} at CPL {self.cpl}; CR0.WP={int(self.wp)} CR4.SMEP={int(self.smep)} "
                f"CR4.SMAP={int(self.smap)} RFLAGS.AC={int(self.ac)} EFER.NXE={int(self.nxe)}")


@dataclass(frozen=True, slots=True)
class Case:
    """One access through one chain of entries: ``entries[0]`` is at level ``levels`` (the PML4E or
    PML5E), ``entries[i]`` at level ``levels - i``. The chain ends where the walk ends (a leaf, or
    the entry that stops it); a case taken from the unpruned space may carry entries below that."""

    levels: int
    entries: tuple[Entry, ...]
    controls: Controls

    def level(self, index: int) -> int:
        return self.levels - index


@dataclass(frozen=True)
class Cpu:
    """What the vCPU offers, as QEMU reports it (not the guest)."""

    maxphyaddr: int = 40
    pdpe1gb: bool = True
    nx: bool = True
    smep: bool = True
    smap: bool = True

    @property
    def reserved_phys_bit(self) -> int | None:
        """The physical-address bit a ``reserved_phys`` entry sets, or None when MAXPHYADDR is 52."""
        return self.maxphyaddr if self.maxphyaddr < MAXPHYADDR else None

    def describe(self) -> str:
        have = [name for name, on in (("NX", self.nx), ("SMEP", self.smep), ("SMAP", self.smap),
                                      ("1 GiB pages", self.pdpe1gb)) if on]
        missing = [name for name, on in (("NX", self.nx), ("SMEP", self.smep), ("SMAP", self.smap),
                                         ("1 GiB pages", self.pdpe1gb)) if not on]
        text = f"MAXPHYADDR {self.maxphyaddr}; has {', '.join(have) or 'none of NX, SMEP, SMAP, 1 GiB pages'}"
        return text + (f"; lacks {', '.join(missing)}" if missing else "")


class Quirk(enum.Enum):
    """A place where QEMU 7.2's TCG walker departs from the SDM."""

    RSVD_FAULT_WITHOUT_P = "reserved-bit #PF without P"
    """SDM §4.7: RSVD can be 1 only when P is 1 (reserved bits are checked in present entries only).
    TCG's ``do_fault_rsvd`` starts the error code from PG_ERROR_RSVD_MASK alone, so a reserved-bit
    fault reports 0x8 (plus W/U/I-D) where the SDM says 0x9."""

    PS_1G_WITHOUT_PDPE1GB = "1 GiB page without pdpe1gb"
    """SDM §4.5: PS in a PDPTE is reserved when CPUID.80000001H:EDX.Page1GB is 0. TCG's walker
    maps a 1 GiB page whenever PS is set in a PDPTE, whatever CPUID says."""


class Choice(enum.Enum):
    """A point the SDM leaves open. §4.8 sets A "whenever the processor uses a paging-structure entry
    as part of linear-address translation" but does not say which entries count as used when the
    access ends in a fault."""

    TABLES_ACCESSED_ON_FAULT = "A of the table entries above a fault"
    """Table entries (not leaves) the walk passed before it faulted, lower down or on the access rights."""
    RESERVED_ENTRY_ACCESSED = "A of an entry with a reserved bit"
    """The entry whose reserved bit (above MAXPHYADDR, PS in a PML4E/PML5E, XD without NXE) stopped the walk."""
    FAULTING_4K_LEAF_ACCESSED = "A of a 4 KiB leaf the access faults on"
    FAULTING_2M_LEAF_ACCESSED = "A of a 2 MiB leaf the access faults on"
    FAULTING_1G_LEAF_ACCESSED = "A of a 1 GiB leaf the access faults on"
    """A leaf whose access rights refuse the access, or whose bits 13..20 / 13..29 are set."""


FAULTING_LEAF_CHOICE: Final = {1: Choice.FAULTING_4K_LEAF_ACCESSED, 2: Choice.FAULTING_2M_LEAF_ACCESSED,
                               3: Choice.FAULTING_1G_LEAF_ACCESSED}


@dataclass(frozen=True)
class Platform:
    """An implementation of the SDM: which quirks it has and which way it takes each choice (a choice
    it does not make accepts either behaviour)."""

    name: str
    quirks: frozenset[Quirk] = frozenset()
    choices: frozenset[tuple[Choice, bool]] = frozenset()

    def has(self, quirk: Quirk) -> bool:
        return quirk in self.quirks

    def choice(self, choice: Choice) -> bool | None:
        return self._choices.get(choice)

    @functools.cached_property
    def _choices(self) -> dict[Choice, bool]:
        return dict(self.choices)

    @classmethod
    def make(cls, name: str, quirks: Iterable[Quirk] = (), choices: Mapping[Choice, bool] | None = None) -> Platform:
        return cls(name, frozenset(quirks), frozenset((choices or {}).items()))


SDM: Final = Platform.make("the Intel SDM")
QEMU_TCG: Final = Platform.make(
    "QEMU 7.2 TCG",
    Quirk,
    {
        # mmu_translate sets A in each table entry as soon as it has checked P and the reserved bits,
        # before it reads the next level: a fault further down leaves the tables above accessed.
        Choice.TABLES_ACCESSED_ON_FAULT: True,
        # ... but it checks P and the reserved bits before it sets A.
        Choice.RESERVED_ENTRY_ACCESSED: False,
        # A 4 KiB or 2 MiB leaf gets A (and D) only once the access is allowed ...
        Choice.FAULTING_4K_LEAF_ACCESSED: False,
        Choice.FAULTING_2M_LEAF_ACCESSED: False,
        # ... but a PDPTE gets A before the walker looks at its PS bit: a 1 GiB leaf is accessed
        # even when its bits 13..29 or its access rights then make the access fault.
        Choice.FAULTING_1G_LEAF_ACCESSED: True,
    },
)


class Expect(enum.Enum):
    """What an access does to one A or D bit."""

    SET = "set"  # 1 afterwards
    UNCHANGED = "unchanged"  # as before
    EITHER = "either"  # the SDM leaves it open and the platform does not say: 1 or unchanged


def _choice(platform: Platform, choice: Choice) -> Expect:
    value = platform.choice(choice)
    if value is None:
        return Expect.EITHER
    return Expect.SET if value else Expect.UNCHANGED


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    NOT_PRESENT = "not present"  # the walk met an entry with P=0
    RESERVED = "reserved bit"  # the walk met an entry with a reserved bit set
    PROTECTION = "access rights"  # the walk reached a leaf whose combined rights refuse the access

    @property
    def faults(self) -> bool:
        return self is not Outcome.ALLOWED


@dataclass(frozen=True)
class Prediction:
    outcome: Outcome
    error_code: int  # the #PF error code; 0 when the access is allowed
    index: int  # the entry where the walk ended: the leaf, or the entry that stopped it
    reason: str  # in words, with the SDM rule that decided
    accessed: tuple[Expect, ...]  # one per entry of the case (entries past ``index`` are never touched)
    dirty: tuple[Expect, ...]
    quirks: tuple[Quirk, ...] = ()  # the quirks that changed this prediction

    @property
    def faults(self) -> bool:
        return self.outcome.faults


class CaseError(ValueError):
    """A case that no entry encoding can express (a bit the level does not have, a feature the CPU lacks)."""


class Reserved(enum.Enum):
    """The reserved bits a case can set, in the order QEMU checks them in a present entry."""

    PHYS = "a physical-address bit at or above MAXPHYADDR"
    PS_TOP = "PS in a PML4E or PML5E"
    XD = "XD with EFER.NXE=0"
    PS_1G_UNSUPPORTED = "PS in a PDPTE on a CPU without 1 GiB pages"
    LARGE = "bit 13 of a 2 MiB or 1 GiB leaf"
    """Checked only once the entry is known to be a leaf, after the others."""


def reserved_causes(entry: Entry, level: int, controls: Controls, cpu: Cpu, platform: Platform) -> list[Reserved]:
    """The reserved bits set in a present entry that stop the walk before its A bit is set, in the
    order QEMU checks them. The bits of a large leaf's address field are not among them: they are
    checked once the entry is known to be a leaf (:func:`predict`)."""
    causes = []
    if entry.reserved_phys:
        if cpu.reserved_phys_bit is None:
            raise CaseError("a reserved physical-address bit needs MAXPHYADDR below 52")
        causes.append(Reserved.PHYS)
    if level >= 4 and entry.page_size:
        causes.append(Reserved.PS_TOP)
    if entry.no_execute and not controls.nxe:
        causes.append(Reserved.XD)
    if level == 3 and entry.page_size and not cpu.pdpe1gb and not platform.has(Quirk.PS_1G_WITHOUT_PDPE1GB):
        causes.append(Reserved.PS_1G_UNSUPPORTED)
    return causes


def describe_reserved(cause: Reserved, level: int, cpu: Cpu) -> str:
    if cause is Reserved.PHYS:
        return f"bit {cpu.reserved_phys_bit} (at or above MAXPHYADDR {cpu.maxphyaddr})"
    if cause is Reserved.PS_TOP:
        return f"PS in a {ENTRY_NAMES[level]}"
    if cause is Reserved.LARGE:
        return f"bit {LARGE_RESERVED_BIT} of a {LEVEL_SIZE_NAMES[level]} leaf"
    return str(cause.value)


def is_leaf(entry: Entry, level: int, cpu: Cpu, platform: Platform) -> bool:
    if level == 1:
        return True
    if level == 2:
        return entry.page_size
    if level == 3:
        return entry.page_size and (cpu.pdpe1gb or platform.has(Quirk.PS_1G_WITHOUT_PDPE1GB))
    return False


def access_refusal(controls: Controls, user: bool, writable: bool, executable: bool) -> str | None:
    """SDM §4.6: why the combined rights of a translation refuse the access, or None."""
    c = controls
    if c.cpl == 3:
        if not user:
            return "a user-mode access to a supervisor-mode address"
        if c.access is Access.WRITE and not writable:
            return "a user-mode write to a read-only address"
        if c.access is Access.FETCH and not executable:
            return "a user-mode fetch from an execute-disable address"
        return None
    if c.data and user and c.smap and not c.ac:
        return "a supervisor-mode data access to a user-mode address with CR4.SMAP=1 and RFLAGS.AC=0"
    if c.access is Access.WRITE and not writable and c.wp:
        return "a supervisor-mode write to a read-only address with CR0.WP=1"
    if c.access is Access.FETCH and user and c.smep:
        return "a supervisor-mode fetch from a user-mode address with CR4.SMEP=1"
    if c.access is Access.FETCH and not executable:
        return "a supervisor-mode fetch from an execute-disable address"
    return None


def _error_code(outcome: Outcome, controls: Controls, platform: Platform) -> tuple[int, tuple[Quirk, ...]]:
    """SDM §4.7, then the platform's quirks."""
    c = controls
    code = PF_P if outcome in (Outcome.PROTECTION, Outcome.RESERVED) else 0
    if outcome is Outcome.RESERVED:
        code |= PF_RSVD
    if c.access is Access.WRITE:
        code |= PF_W
    if c.cpl == 3:
        code |= PF_U
    if c.access is Access.FETCH and (c.smep or c.nxe):
        code |= PF_ID
    if outcome is Outcome.RESERVED and platform.has(Quirk.RSVD_FAULT_WITHOUT_P):
        return code & ~PF_P, (Quirk.RSVD_FAULT_WITHOUT_P,)
    return code, ()


def predict(case: Case, cpu: Cpu, platform: Platform = QEMU_TCG) -> Prediction:
    """Walk the case's entries from the top and predict what the access does."""
    c = case.controls
    count = len(case.entries)
    accessed = [Expect.UNCHANGED] * count
    dirty = [Expect.UNCHANGED] * count
    user, writable, executable = True, True, True
    quirks: list[Quirk] = []

    def end(outcome: Outcome, index: int, reason: str) -> Prediction:
        tables = Expect.SET if outcome is Outcome.ALLOWED else _choice(platform, Choice.TABLES_ACCESSED_ON_FAULT)
        for i in range(index):
            accessed[i] = tables
        code, applied = _error_code(outcome, c, platform) if outcome.faults else (0, ())
        return Prediction(outcome, code, index, reason, tuple(accessed), tuple(dirty), tuple(quirks) + applied)

    for i, entry in enumerate(case.entries):
        level = case.level(i)
        name = ENTRY_NAMES[level]
        if not entry.present:
            return end(Outcome.NOT_PRESENT, i, f"the {name} is not present")
        causes = reserved_causes(entry, level, c, cpu, platform)
        if causes:
            accessed[i] = _choice(platform, Choice.RESERVED_ENTRY_ACCESSED)
            words = " and ".join(describe_reserved(cause, level, cpu) for cause in causes)
            return end(Outcome.RESERVED, i, f"the {name} sets reserved {words}")
        user, writable = user and entry.user, writable and entry.writable
        executable = executable and not (entry.no_execute and c.nxe)
        if not is_leaf(entry, level, cpu, platform):
            if entry.reserved_large:
                raise CaseError(f"bit {LARGE_RESERVED_BIT} of a {name} that points to a table is an address bit")
            continue
        if level == 3 and not cpu.pdpe1gb:
            quirks.append(Quirk.PS_1G_WITHOUT_PDPE1GB)
        size = LEVEL_SIZE_NAMES[level]
        if entry.reserved_large:
            if level == 1:
                raise CaseError(f"bit {LARGE_RESERVED_BIT} of a PTE is an address bit")
            accessed[i] = _choice(platform, FAULTING_LEAF_CHOICE[level])
            return end(Outcome.RESERVED, i, f"the {name} sets reserved {describe_reserved(Reserved.LARGE, level, cpu)}")
        refusal = access_refusal(c, user, writable, executable)
        if refusal:
            accessed[i] = _choice(platform, FAULTING_LEAF_CHOICE[level])
            return end(Outcome.PROTECTION, i, f"{refusal} (through a {size} leaf)")
        accessed[i] = Expect.SET
        if c.access is Access.WRITE:
            dirty[i] = Expect.SET
        return end(Outcome.ALLOWED, i, f"the {size} leaf allows the {c.access.word}")
    raise CaseError("the chain ends in a present table entry: the walk would read a table the case does not build")


# --------------------------------------------------------------------------------------------------
# What a case observably does, for comparing cases (pruning) and for describing them


def bit_write(expect: Expect, initial: bool) -> str:
    """What the walker writes to one bit: ``written`` (0 -> 1), ``none`` or ``either`` (may write)."""
    if initial or expect is Expect.UNCHANGED:
        return "none"
    return "written" if expect is Expect.SET else "either"


def observable(case: Case, prediction: Prediction) -> tuple[object, ...]:
    """Everything a run of the case can show: fault or not, the error code, and what the walker writes
    to the A and D bits of each entry on the walk's path. Two cases with equal observables are the
    same test as far as the model can tell (harness.matrix.cases prunes on this)."""
    writes = tuple((bit_write(prediction.accessed[i], entry.accessed), bit_write(prediction.dirty[i], entry.dirty))
                   for i, entry in enumerate(case.entries[: prediction.index + 1]))
    return prediction.outcome.faults, prediction.error_code, prediction.index, writes


def describe_entry(entry: Entry, level: int, cpu: Cpu) -> str:
    """Every bit of an entry, in words."""
    words = ["present" if entry.present else "NOT present",
             "writable" if entry.writable else "read-only",
             "user" if entry.user else "supervisor",
             "execute-disable (XD=1)" if entry.no_execute else "XD=0",
             "accessed" if entry.accessed else "not accessed"]
    if level <= 3 or entry.dirty:
        words.append("dirty" if entry.dirty else "not dirty")
    if level >= 2:
        words.append("PS=1" if entry.page_size else "PS=0")
    if entry.reserved_phys:
        words.append(f"reserved bit {cpu.reserved_phys_bit} set")
    if entry.reserved_large:
        words.append(f"reserved bit {LARGE_RESERVED_BIT} set")
    return ", ".join(words)


def describe_case(case: Case, cpu: Cpu) -> str:
    lines = [f"{case.levels}-level paging, {case.controls.describe()}"]
    for i, entry in enumerate(case.entries):
        level = case.level(i)
        lines.append(f"  {ENTRY_NAMES[level]:6} {describe_entry(entry, level, cpu)}")
    return "\n".join(lines)


def describe_error_code(code: int) -> str:
    bits = [name for bit, name in ((PF_P, "P"), (PF_W, "W"), (PF_U, "U/S"), (PF_RSVD, "RSVD"), (PF_ID, "I/D"))
            if code & bit]
    return f"{code:#x} ({' '.join(bits) or 'no bits'})"


def describe_prediction(case: Case, prediction: Prediction, platform: Platform) -> str:
    p = prediction
    head = (f"#PF, error code {describe_error_code(p.error_code)}" if p.faults else "no fault")
    lines = [f"{head}: {p.reason}"]
    for quirk in p.quirks:
        lines.append(f"  (quirk of {platform.name}: {quirk.value})")
    for i in range(p.index + 1):
        name = ENTRY_NAMES[case.level(i)]
        lines.append(f"  {name:6} A {p.accessed[i].value}, D {p.dirty[i].value}")
    return "\n".join(lines)
