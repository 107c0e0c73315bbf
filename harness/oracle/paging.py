"""Every x86-64 paging constant the host side needs, in one place.

Level numbering follows the Intel SDM: level 1 is the page table (PTE), 2 the page directory (PDE),
3 the page-directory-pointer table (PDPTE), 4 the PML4 and 5 the PML5 (LA57 only). A walk starts at
level ``mode.levels`` and goes down.

Sources: Intel SDM Vol. 3A ch. 4 (4-level and 5-level paging, PAT) and the project's
``ddi-spec.md`` §2 (self-map slot 0x1ED, PTE_BASE) and §2.5 (PAT programming of the test kernel).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property
from typing import Final

# --------------------------------------------------------------------------------------------------
# Entry bits (common to every level unless noted)

PTE_P: Final = 1 << 0
PTE_RW: Final = 1 << 1
PTE_US: Final = 1 << 2
PTE_PWT: Final = 1 << 3
PTE_PCD: Final = 1 << 4
PTE_A: Final = 1 << 5
PTE_D: Final = 1 << 6  # leaves only (ignored in non-leaf entries)
PTE_PS: Final = 1 << 7  # PDE/PDPTE: 1 = the entry maps a 2 MiB / 1 GiB page; reserved in PML4E/PML5E
PTE_PAT_4K: Final = 1 << 7  # in a 4 KiB PTE bit 7 is the PAT bit
PTE_PAT_LARGE: Final = 1 << 12  # in a 2 MiB / 1 GiB leaf the PAT bit moves to bit 12
PTE_G: Final = 1 << 8  # leaves only
PTE_NX: Final = 1 << 63  # XD; reserved when EFER.NXE = 0

PKEY_SHIFT: Final = 59
PKEY_MASK: Final = 0xF << PKEY_SHIFT  # bits 59..62 of a leaf (used only when CR4.PKE/PKS = 1)

# Software-available bits (ignored by the CPU): 9..11 and 52..58 (and 59..62 when PKE is off).
PTE_SOFTWARE_LOW_MASK: Final = 0x7 << 9
PTE_SOFTWARE_HIGH_MASK: Final = 0x7F << 52

# --------------------------------------------------------------------------------------------------
# Physical addresses

MAXPHYADDR: Final = 52  # architectural maximum; the default for masks below
PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
ENTRIES_PER_TABLE: Final = 512
INDEX_MASK: Final = 0x1FF
ENTRY_SIZE: Final = 8

SIZE_4K: Final = 1 << 12
SIZE_2M: Final = 1 << 21
SIZE_1G: Final = 1 << 30


def phys_mask(maxphyaddr: int = MAXPHYADDR) -> int:
    """All-ones over the physical address bits below ``maxphyaddr``."""
    if not 32 <= maxphyaddr <= MAXPHYADDR:
        raise ValueError(f"MAXPHYADDR must be 32..52, not {maxphyaddr}")
    return (1 << maxphyaddr) - 1


# Address fields of entries with MAXPHYADDR 52.
ADDR_MASK_4K: Final = ((1 << MAXPHYADDR) - 1) & ~(SIZE_4K - 1)  # 0x000FFFFFFFFFF000, also table pointers
ADDR_MASK_2M: Final = ((1 << MAXPHYADDR) - 1) & ~(SIZE_2M - 1)  # 0x000FFFFFFFE00000
ADDR_MASK_1G: Final = ((1 << MAXPHYADDR) - 1) & ~(SIZE_1G - 1)  # 0x000FFFFFC0000000
PFN_MASK: Final = ADDR_MASK_4K  # a 4 KiB PTE's frame field, unshifted
# Bits that are reserved (must be 0) inside a large leaf's address field: 13..20 for 2 MiB, 13..29 for 1 GiB.
LARGE_2M_RESERVED: Final = (SIZE_2M - 1) & ~(PTE_PAT_LARGE | (SIZE_4K - 1))  # 0x1FE000
LARGE_1G_RESERVED: Final = (SIZE_1G - 1) & ~(PTE_PAT_LARGE | (SIZE_4K - 1))  # 0x3FFFE000

CR3_ADDR_MASK: Final = ADDR_MASK_4K  # bits 12..51; bits 0..11 are PCID or PWT/PCD, bit 63 no-flush


def level_shift(level: int) -> int:
    """Bit position of the VA index used at ``level`` (1 → 12, 2 → 21, 3 → 30, 4 → 39, 5 → 48)."""
    if not 1 <= level <= 5:
        raise ValueError(f"paging level must be 1..5, not {level}")
    return PAGE_SHIFT + 9 * (level - 1)


LEVEL_SHIFTS: Final = {1: 12, 2: 21, 3: 30, 4: 39, 5: 48}
PAGE_SIZE_AT_LEVEL: Final = {1: SIZE_4K, 2: SIZE_2M, 3: SIZE_1G}
LEVEL_NAMES: Final = {1: "PT", 2: "PD", 3: "PDPT", 4: "PML4", 5: "PML5"}
ENTRY_NAMES: Final = {1: "PTE", 2: "PDE", 3: "PDPTE", 4: "PML4E", 5: "PML5E"}


def leaf_addr_mask(level: int, maxphyaddr: int = MAXPHYADDR) -> int:
    """Mask of the page-frame address in a leaf at ``level`` (1, 2 or 3)."""
    size = PAGE_SIZE_AT_LEVEL[level]
    return phys_mask(maxphyaddr) & ~(size - 1)


def index_of(va: int, level: int) -> int:
    """Index of ``va`` into the table at ``level``."""
    return (va >> LEVEL_SHIFTS[level]) & INDEX_MASK


def format_size(size: int) -> str:
    """'4 KiB', '2 MiB', '1.5 GiB', '3 TiB', …"""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.3g} {unit}"
    return f"{size} B"


# --------------------------------------------------------------------------------------------------
# Virtual addresses

U64_MASK: Final = (1 << 64) - 1
VA_BITS_4LEVEL: Final = 48
VA_BITS_5LEVEL: Final = 57


def va_bits(levels: int) -> int:
    if levels == 4:
        return VA_BITS_4LEVEL
    if levels == 5:
        return VA_BITS_5LEVEL
    raise ValueError(f"levels must be 4 or 5, not {levels}")


def sign_extend(value: int, bits: int) -> int:
    """Sign-extend the low ``bits`` of ``value`` to an unsigned 64-bit integer."""
    value &= (1 << bits) - 1
    if value >> (bits - 1):
        value |= U64_MASK & ~((1 << bits) - 1)
    return value


def canonical(va: int, levels: int) -> int:
    """The canonical form of ``va`` (bits above the VA width copy the top implemented bit)."""
    return sign_extend(va, va_bits(levels))


def is_canonical(va: int, levels: int) -> bool:
    va &= U64_MASK
    return canonical(va, levels) == va


def to_u64(value: int) -> int:
    """Accept a signed or unsigned 64-bit value; return it unsigned."""
    if not -(1 << 63) <= value <= U64_MASK:
        raise ValueError(f"{value:#x} does not fit in 64 bits")
    return value & U64_MASK


def to_s64(value: int) -> int:
    """An unsigned 64-bit value as int64 (QMP's ``val`` arguments are int64: a higher-half VA is negative)."""
    value = to_u64(value)
    return value - (1 << 64) if value >> 63 else value


# --------------------------------------------------------------------------------------------------
# Recursive self-map (ddi-spec §2.1)

SELF_MAP_SLOT: Final = 0x1ED
PTE_BASE_4LEVEL: Final = 0xFFFFF68000000000
PDE_BASE_4LEVEL: Final = 0xFFFFF6FB40000000
PPE_BASE_4LEVEL: Final = 0xFFFFF6FB7DA00000
PXE_BASE_4LEVEL: Final = 0xFFFFF6FB7DBED000
PXE_SELFMAP_4LEVEL: Final = 0xFFFFF6FB7DBEDF68
PTE_BASE_5LEVEL: Final = 0xFFED000000000000


def pte_base(levels: int, slot: int = SELF_MAP_SLOT) -> int:
    """PTE_BASE for a recursive slot: signext48(slot << 39) (4-level) or signext57(slot << 48) (5-level)."""
    if not 0 <= slot < ENTRIES_PER_TABLE:
        raise ValueError(f"self-map slot must be 0..511, not {slot:#x}")
    return sign_extend(slot << LEVEL_SHIFTS[levels], va_bits(levels))


def self_map_entry_va(va: int, level: int, levels: int, slot: int = SELF_MAP_SLOT) -> int:
    """The VA at which the guest sees (through the recursive slot) the level-``level`` entry for ``va``.

    Level 1 gives MiAddressToPte(va), level 2 MiAddressToPde(va), …, level ``levels`` the top-level
    entry. Each step is ``PTE_BASE + ((x >> 9) & mask)``, applied ``level`` times.
    """
    if not 1 <= level <= levels:
        raise ValueError(f"level must be 1..{levels}, not {level}")
    base = pte_base(levels, slot)
    mask = (1 << (9 * levels + 3)) - ENTRY_SIZE  # 0x7FFFFFFFF8 (4-level), 0xFFFFFFFFFFFF8 (5-level)
    x = to_u64(va)
    for _ in range(level):
        x = base + ((x >> 9) & mask)
    return x


def self_map_bases(levels: int, slot: int = SELF_MAP_SLOT) -> dict[int, int]:
    """{level: base VA of that level's entries}: level 1 = PTE_BASE, …, ``levels`` = the top table itself."""
    return {level: self_map_entry_va(0, level, levels, slot) for level in range(1, levels + 1)}


# --------------------------------------------------------------------------------------------------
# PAT (SDM "Page Attribute Table"; ddi-spec §2.5)

IA32_PAT_MSR: Final = 0x277
PAT_POWER_ON: Final = 0x0007040600070406  # WB WT UC- UC, repeated
PAT_GUEST: Final = 0x0007010600070106  # the test kernel's value: WB WC UC- UC, repeated


class MemoryType(enum.IntEnum):
    """PAT memory-type encodings (2 and 3 are reserved)."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6
    UC_MINUS = 7

    @property
    def label(self) -> str:
        return "UC-" if self is MemoryType.UC_MINUS else self.name


def pat_index(pwt: bool, pcd: bool, pat: bool) -> int:
    """PAT entry index = PAT<<2 | PCD<<1 | PWT."""
    return (int(pat) << 2) | (int(pcd) << 1) | int(pwt)


def decode_pat_msr(pat_msr: int) -> tuple[MemoryType, ...]:
    """The eight memory types of an IA32_PAT value; ValueError for reserved encodings (they #GP)."""
    if not 0 <= pat_msr <= U64_MASK:
        raise ValueError(f"IA32_PAT {pat_msr:#x} is not a 64-bit value")
    types = []
    for i in range(8):
        byte = (pat_msr >> (8 * i)) & 0xFF
        try:
            types.append(MemoryType(byte))
        except ValueError:
            raise ValueError(
                f"IA32_PAT {pat_msr:#018x}: entry PA{i} = {byte:#04x} is a reserved encoding "
                "(valid: 0 UC, 1 WC, 4 WT, 5 WP, 6 WB, 7 UC-)"
            ) from None
    return tuple(types)


# --------------------------------------------------------------------------------------------------
# Control registers

CR0_PE: Final = 1 << 0
CR0_WP: Final = 1 << 16
CR0_PG: Final = 1 << 31
CR4_PAE: Final = 1 << 5
CR4_LA57: Final = 1 << 12
CR4_PCIDE: Final = 1 << 17
CR4_SMEP: Final = 1 << 20
CR4_SMAP: Final = 1 << 21
CR4_PKE: Final = 1 << 22
CR4_PKS: Final = 1 << 24
EFER_LME: Final = 1 << 8
EFER_LMA: Final = 1 << 10
EFER_NXE: Final = 1 << 11


class PagingModeError(ValueError):
    """The register values do not describe 4-level or 5-level long-mode paging."""


@dataclass(frozen=True)
class PagingMode:
    """What the host needs to know to walk the guest's tables.

    ``maxphyaddr`` and ``gbpages`` default to the architectural maximum and to 1 GiB pages being
    supported; pass the guest CPU's values (CPUID 0x80000008 / 0x80000001) to get exact reserved-bit
    checks for a smaller MAXPHYADDR or a CPU without 1 GiB pages.
    """

    levels: int
    nxe: bool
    pat_msr: int = PAT_GUEST
    maxphyaddr: int = MAXPHYADDR
    gbpages: bool = True

    def __post_init__(self) -> None:
        if self.levels not in (4, 5):
            raise PagingModeError(f"levels must be 4 or 5, not {self.levels!r}")
        phys_mask(self.maxphyaddr)  # validates the range
        decode_pat_msr(self.pat_msr)  # validates every entry

    @classmethod
    def from_registers(
        cls, cr0: int, cr4: int, efer: int, pat: int, *, maxphyaddr: int = MAXPHYADDR, gbpages: bool = True
    ) -> PagingMode:
        """The mode that CR0, CR4, EFER and IA32_PAT describe (from the guest or ``info registers``)."""
        problems = []
        if not cr0 & CR0_PE:
            problems.append("CR0.PE=0 (real mode)")
        if not cr0 & CR0_PG:
            problems.append("CR0.PG=0 (paging is off)")
        if not cr4 & CR4_PAE:
            problems.append("CR4.PAE=0 (not PAE paging)")
        if not efer & EFER_LME:
            problems.append("EFER.LME=0 (long mode not enabled)")
        if not efer & EFER_LMA:
            problems.append("EFER.LMA=0 (long mode not active)")
        if problems:
            raise PagingModeError(
                f"not 4-/5-level long-mode paging (CR0={cr0:#x} CR4={cr4:#x} EFER={efer:#x}): "
                + "; ".join(problems)
            )
        return cls(
            levels=5 if cr4 & CR4_LA57 else 4,
            nxe=bool(efer & EFER_NXE),
            pat_msr=pat,
            maxphyaddr=maxphyaddr,
            gbpages=gbpages,
        )

    @property
    def va_bits(self) -> int:
        return va_bits(self.levels)

    @cached_property
    def phys_mask(self) -> int:
        return phys_mask(self.maxphyaddr)

    @cached_property
    def table_addr_mask(self) -> int:
        """Mask of a non-leaf entry's (and CR3's) table address."""
        return phys_mask(self.maxphyaddr) & ~(SIZE_4K - 1)

    @cached_property
    def pat_types(self) -> tuple[MemoryType, ...]:
        return decode_pat_msr(self.pat_msr)

    def memory_type(self, pwt: bool, pcd: bool, pat: bool) -> MemoryType:
        return self.pat_types[pat_index(pwt, pcd, pat)]

    @property
    def pte_base(self) -> int:
        return pte_base(self.levels)

    def is_canonical(self, va: int) -> bool:
        return is_canonical(va, self.levels)

    @cached_property
    def _always_reserved(self) -> int:
        """Address bits at and above MAXPHYADDR (below 52), plus NX when EFER.NXE = 0."""
        return (((1 << MAXPHYADDR) - 1) & ~self.phys_mask) | (0 if self.nxe else PTE_NX)

    def reserved_bits(self, entry: int, level: int) -> int:
        """The bits of a *present* entry at ``level`` that are reserved (non-zero → #PF with RSVD)."""
        bad = entry & self._always_reserved
        if level >= 4:
            bad |= entry & PTE_PS
        elif level == 3 and entry & PTE_PS:
            bad |= entry & (LARGE_1G_RESERVED if self.gbpages else PTE_PS)
        elif level == 2 and entry & PTE_PS:
            bad |= entry & LARGE_2M_RESERVED
        return bad

    def describe(self) -> str:
        return (
            f"{self.levels}-level, NXE={int(self.nxe)}, PAT={self.pat_msr:#018x}, "
            f"MAXPHYADDR={self.maxphyaddr}{'' if self.gbpages else ', no 1 GiB pages'}"
        )
