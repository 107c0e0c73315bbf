"""A host-side x86-64 page-table walker over guest physical memory.

- :func:`walk`: one VA, every level's raw entry, why the walk stopped, decoded effective attributes.
- :func:`translate_many`: the same translation for many VAs at once, vectorised with numpy level by
  level, in place over an array-backed memory (:class:`~harness.oracle.memory.SharedRamMemory`,
  :class:`~harness.oracle.memory.BufferMemory`), else through a page cache (one read per table page);
  agrees exactly with :func:`walk`.
- :func:`snapshot`: every present leaf mapping of an address space, coalesced into ranges, with
  :meth:`Snapshot.diff` and a readable :meth:`Snapshot.format` for test reports.
- :func:`check_self_map` / :func:`self_map_va`: the recursive slot (0x1ED) seen from the host.

The walker follows the SDM's rules for the translation itself (present bits, reserved bits, PS,
RW/US AND-ed and NX OR-ed over the levels, the leaf's PWT/PCD/PAT through IA32_PAT). It does not
model access rights of a particular access (CR0.WP, SMEP/SMAP, protection-key rights), MTRRs, or
the A/D updates a real walk makes.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
import numpy.typing as npt

from harness.oracle.memory import ArrayBackedMemory, MemoryAccessError, PageCache, PhysicalMemory
from harness.oracle.paging import (
    ENTRY_NAMES,
    LARGE_1G_RESERVED,
    LARGE_2M_RESERVED,
    LEVEL_NAMES,
    LEVEL_SHIFTS,
    MAXPHYADDR,
    PAGE_SIZE_AT_LEVEL,
    PKEY_SHIFT,
    PTE_A,
    PTE_D,
    PTE_G,
    PTE_NX,
    PTE_P,
    PTE_PAT_4K,
    PTE_PAT_LARGE,
    PTE_PCD,
    PTE_PS,
    PTE_PWT,
    PTE_RW,
    PTE_US,
    SELF_MAP_SLOT,
    MemoryType,
    PagingMode,
    format_size,
    self_map_entry_va,
    sign_extend,
    to_u64,
)

U64Array = npt.NDArray[np.uint64]
U8Array = npt.NDArray[np.uint8]
U16Array = npt.NDArray[np.uint16]


class StopReason(enum.IntEnum):
    """Why a walk ended. The values are the codes used in :class:`BatchResult.stop`."""

    LEAF = 0  # translated
    NOT_PRESENT = 1  # an entry with P=0 (level = that entry's level)
    NON_CANONICAL = 2  # the VA is not canonical for the paging mode (level 0: nothing read)
    RESERVED_BIT = 3  # a present entry with a reserved bit set (#PF with RSVD on hardware)
    TABLE_OUTSIDE_RAM = 4  # a table (CR3 or an entry's pointer) lies outside guest RAM


class Attr(enum.IntFlag):
    """Effective attributes as bit flags (the encoding of :attr:`BatchResult.attrs`)."""

    NONE = 0
    WRITABLE = 1 << 0
    USER = 1 << 1
    EXECUTABLE = 1 << 2
    PWT = 1 << 3
    PCD = 1 << 4
    PAT = 1 << 5
    GLOBAL = 1 << 6
    ACCESSED = 1 << 7
    DIRTY = 1 << 8


@dataclass(frozen=True)
class Attributes:
    """Effective attributes of a translation.

    ``writable``/``user`` are AND-ed over every level, ``executable`` is False when any level has NX
    and EFER.NXE is on; PWT/PCD/PAT/G/A/D and the protection key are the leaf's. ``memory_type`` is
    the PAT entry those bits select (MTRRs are not considered).
    """

    writable: bool
    user: bool
    executable: bool
    pwt: bool
    pcd: bool
    pat: bool
    global_: bool
    accessed: bool
    dirty: bool
    protection_key: int
    memory_type: MemoryType
    present: bool = True

    @property
    def flags(self) -> Attr:
        f = Attr.NONE
        for name, bit in _FLAG_FIELDS:
            if getattr(self, name):
                f |= bit
        return f

    @classmethod
    def from_flags(cls, flags: int, protection_key: int, mode: PagingMode) -> Attributes:
        a = Attr(flags)
        return cls(
            writable=Attr.WRITABLE in a,
            user=Attr.USER in a,
            executable=Attr.EXECUTABLE in a,
            pwt=Attr.PWT in a,
            pcd=Attr.PCD in a,
            pat=Attr.PAT in a,
            global_=Attr.GLOBAL in a,
            accessed=Attr.ACCESSED in a,
            dirty=Attr.DIRTY in a,
            protection_key=protection_key,
            memory_type=mode.memory_type(Attr.PWT in a, Attr.PCD in a, Attr.PAT in a),
        )

    def label(self) -> str:
        """Fixed-width text such as ``RW S NX G WB  AD``: RW/RO, U(ser)/S(upervisor), X/NX, G or -,
        memory type, A or -, D or -, then ``PK=n`` when the protection key is not 0."""
        text = (
            f"{'RW' if self.writable else 'RO'} {'U' if self.user else 'S'} "
            f"{'X ' if self.executable else 'NX'} {'G' if self.global_ else '-'} "
            f"{self.memory_type.label:<3} {'A' if self.accessed else '-'}{'D' if self.dirty else '-'}"
        )
        if self.protection_key:
            text += f" PK={self.protection_key}"
        return text

    def __str__(self) -> str:
        return self.label()


_FLAG_FIELDS: tuple[tuple[str, Attr], ...] = (
    ("writable", Attr.WRITABLE),
    ("user", Attr.USER),
    ("executable", Attr.EXECUTABLE),
    ("pwt", Attr.PWT),
    ("pcd", Attr.PCD),
    ("pat", Attr.PAT),
    ("global_", Attr.GLOBAL),
    ("accessed", Attr.ACCESSED),
    ("dirty", Attr.DIRTY),
)


class WalkStep(NamedTuple):
    """One entry read during a walk."""

    level: int
    table_pa: int
    entry_index: int  # 0..511
    entry: int

    @property
    def entry_pa(self) -> int:
        return self.table_pa + 8 * self.entry_index

    @property
    def name(self) -> str:
        """e.g. ``PML4E[0x1ed]``."""
        return f"{ENTRY_NAMES[self.level]}[{self.entry_index:#05x}]"


@dataclass(frozen=True)
class Walk:
    """The result of :func:`walk`.

    ``level`` is where the walk stopped: the leaf's level for LEAF (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB),
    the offending entry's level for NOT_PRESENT / RESERVED_BIT, the level whose table could not be
    read for TABLE_OUTSIDE_RAM, and 0 for NON_CANONICAL. ``steps`` holds every entry read, top level
    first. ``pa``, ``page_size`` and ``attributes`` are set only for LEAF.
    """

    va: int
    cr3: int
    mode: PagingMode
    stop: StopReason
    level: int
    steps: tuple[WalkStep, ...]
    pa: int | None = None
    page_size: int | None = None
    attributes: Attributes | None = None
    reserved_bits: int = 0  # the offending bits, for RESERVED_BIT
    table_pa: int | None = None  # the unreadable table, for TABLE_OUTSIDE_RAM

    @property
    def ok(self) -> bool:
        return self.stop is StopReason.LEAF

    @property
    def entries(self) -> dict[int, int]:
        """{level: raw entry} for every level read."""
        return {s.level: s.entry for s in self.steps}

    def entry(self, level: int) -> int | None:
        for s in self.steps:
            if s.level == level:
                return s.entry
        return None

    def step(self, level: int) -> WalkStep | None:
        for s in self.steps:
            if s.level == level:
                return s
        return None

    @property
    def leaf(self) -> WalkStep | None:
        return self.steps[-1] if self.ok else None

    @property
    def page_pa(self) -> int | None:
        """Physical base of the page (``pa`` without the offset)."""
        if self.pa is None or self.page_size is None:
            return None
        return self.pa & ~(self.page_size - 1)

    def describe(self) -> str:
        head = f"VA {self.va:#018x} ({self.mode.levels}-level, CR3 {self.cr3:#x}): {self.stop.name}"
        if self.stop is StopReason.LEAF and self.page_size is not None:
            head += f" at level {self.level} ({ENTRY_NAMES[self.level]}), {format_size(self.page_size)} page"
        elif self.stop is StopReason.RESERVED_BIT:
            head += (
                f" at level {self.level} ({ENTRY_NAMES[self.level]}), reserved bits {self.reserved_bits:#x}"
            )
        elif self.stop is StopReason.TABLE_OUTSIDE_RAM:
            head += f": {LEVEL_NAMES[self.level]} table at {self.table_pa or 0:#x} is outside guest RAM"
        elif self.stop is StopReason.NOT_PRESENT:
            head += f" at level {self.level} ({ENTRY_NAMES[self.level]})"
        lines = [head]
        for s in self.steps:
            lines.append(f"  {s.name:<14} @ {s.entry_pa:#014x} = {s.entry:#018x}")
        if self.ok and self.attributes is not None and self.pa is not None:
            lines.append(f"  -> PA {self.pa:#x}  {self.attributes.label()}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Scalar walk


_F_WRITABLE = int(Attr.WRITABLE)
_F_USER = int(Attr.USER)
_F_EXECUTABLE = int(Attr.EXECUTABLE)
_F_PWT = int(Attr.PWT)
_F_PCD = int(Attr.PCD)
_F_PAT = int(Attr.PAT)
_F_GLOBAL = int(Attr.GLOBAL)
_F_ACCESSED = int(Attr.ACCESSED)
_F_DIRTY = int(Attr.DIRTY)


@functools.lru_cache(maxsize=4096)
def _attributes_for(key: int, mode: PagingMode) -> Attributes:
    return Attributes.from_flags(key & 0x1FF, key >> 9, mode)


def _leaf_key(entry: int, level: int, and_bits: int, nx_seen: bool, nxe: bool) -> int:
    """Attr flags of a leaf in bits 0..8, its protection key in bits 9..12."""
    key = (entry >> PKEY_SHIFT & 0xF) << 9
    if and_bits & PTE_RW:
        key |= _F_WRITABLE
    if and_bits & PTE_US:
        key |= _F_USER
    if not (nxe and nx_seen):
        key |= _F_EXECUTABLE
    if entry & PTE_PWT:
        key |= _F_PWT
    if entry & PTE_PCD:
        key |= _F_PCD
    if entry & (PTE_PAT_4K if level == 1 else PTE_PAT_LARGE):
        key |= _F_PAT
    if entry & PTE_G:
        key |= _F_GLOBAL
    if entry & PTE_A:
        key |= _F_ACCESSED
    if entry & PTE_D:
        key |= _F_DIRTY
    return key


def walk(memory: PhysicalMemory, cr3: int, va: int, mode: PagingMode) -> Walk:
    """Walk the tables rooted at ``cr3`` for ``va`` (signed or unsigned 64-bit) in guest physical memory."""
    va = to_u64(va)
    if not mode.is_canonical(va):
        return Walk(va, cr3, mode, StopReason.NON_CANONICAL, 0, ())
    table_mask = mode.table_addr_mask
    table = cr3 & table_mask
    and_bits = PTE_RW | PTE_US
    nx_seen = False
    steps: list[WalkStep] = []
    for level in range(mode.levels, 0, -1):
        index = (va >> LEVEL_SHIFTS[level]) & 0x1FF
        try:
            entry = memory.read_u64(table + 8 * index)
        except MemoryAccessError:
            return Walk(va, cr3, mode, StopReason.TABLE_OUTSIDE_RAM, level, tuple(steps), table_pa=table)
        steps.append(WalkStep(level, table, index, entry))
        if not entry & PTE_P:
            return Walk(va, cr3, mode, StopReason.NOT_PRESENT, level, tuple(steps))
        bad = mode.reserved_bits(entry, level)
        if bad:
            return Walk(va, cr3, mode, StopReason.RESERVED_BIT, level, tuple(steps), reserved_bits=bad)
        and_bits &= entry
        nx_seen = nx_seen or bool(entry & PTE_NX)
        if level == 1 or (level <= 3 and entry & PTE_PS):
            size = PAGE_SIZE_AT_LEVEL[level]
            pa = (entry & mode.phys_mask & ~(size - 1)) | (va & (size - 1))
            return Walk(
                va,
                cr3,
                mode,
                StopReason.LEAF,
                level,
                tuple(steps),
                pa=pa,
                page_size=size,
                attributes=_attributes_for(_leaf_key(entry, level, and_bits, nx_seen, mode.nxe), mode),
            )
        table = entry & table_mask
    raise AssertionError("unreachable: level 1 always ends the walk")


def translate(memory: PhysicalMemory, cr3: int, va: int, mode: PagingMode) -> int | None:
    """The physical address of ``va``, or None when the walk does not reach a leaf.

    Same rules as :func:`walk` without building the record (several times faster per VA).
    """
    va = to_u64(va)
    if not mode.is_canonical(va):
        return None
    table_mask = mode.table_addr_mask
    table = cr3 & table_mask
    read = memory.read_u64
    reserved = mode.reserved_bits
    for level in range(mode.levels, 0, -1):
        try:
            entry = read(table + 8 * ((va >> LEVEL_SHIFTS[level]) & 0x1FF))
        except MemoryAccessError:
            return None
        if not entry & PTE_P or reserved(entry, level):
            return None
        if level == 1 or (level <= 3 and entry & PTE_PS):
            size = PAGE_SIZE_AT_LEVEL[level]
            return (entry & mode.phys_mask & ~(size - 1)) | (va & (size - 1))
        table = entry & table_mask
    raise AssertionError("unreachable: level 1 always ends the walk")


def _classify(entry: U64Array, level: int, mode: PagingMode) -> tuple[U64Array, npt.NDArray[np.bool_]]:
    """For entries at ``level`` (assumed present): (reserved bits per entry, is-leaf per entry)."""
    zero = np.uint64(0)
    ps = np.uint64(PTE_PS)
    mask = ((1 << MAXPHYADDR) - 1) & ~mode.phys_mask
    if not mode.nxe:
        mask |= PTE_NX
    if level >= 4:
        mask |= PTE_PS
    reserved = entry & np.uint64(mask)
    if level in (2, 3):
        is_ps = (entry & ps) != zero
        if level == 3 and not mode.gbpages:
            reserved = reserved | (entry & ps)
        else:
            large = np.uint64(LARGE_1G_RESERVED if level == 3 else LARGE_2M_RESERVED)
            reserved = reserved | np.where(is_ps, entry & large, zero)
        return reserved, is_ps
    return reserved, np.full(entry.shape, level == 1, dtype=np.bool_)


# --------------------------------------------------------------------------------------------------
# Batch walk


class BatchResult(NamedTuple):
    """Per-VA results of :func:`translate_many` (arrays of the input's length).

    ``pa``: uint64 physical address (0 unless ``stop == LEAF``); ``level``: uint8, as
    :attr:`Walk.level`; ``stop``: uint8 :class:`StopReason` codes; ``attrs``: uint16 :class:`Attr`
    flags of the leaf (0 unless LEAF), or None when not requested.
    """

    pa: U64Array
    level: U8Array
    stop: U8Array
    attrs: U16Array | None = None

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.stop == StopReason.LEAF, dtype=np.bool_)


def as_va_array(vas: Iterable[int] | npt.ArrayLike) -> U64Array:
    """VAs as a flat uint64 array. Integer arrays are reinterpreted (int64 → two's complement); any
    other iterable is converted element by element as Python ints (never through float64)."""
    if isinstance(vas, np.ndarray):
        if vas.dtype == np.uint64:
            return vas.reshape(-1)
        if vas.dtype == np.int64:
            return vas.reshape(-1).view(np.uint64)
        if vas.dtype.kind in "iu":
            return vas.reshape(-1).astype(np.int64).view(np.uint64)
        if vas.dtype.kind != "O":
            raise TypeError(f"VAs must be integers, not {vas.dtype}")
        vas = vas.reshape(-1).tolist()
    if isinstance(vas, Iterable):
        return np.fromiter((to_u64(int(v)) for v in cast(Iterable[Any], vas)), dtype=np.uint64)
    raise TypeError(f"VAs must be an array or an iterable of ints, not {type(vas).__name__}")


def translate_many(
    memory: PhysicalMemory,
    cr3: int,
    vas: Sequence[int] | npt.ArrayLike,
    mode: PagingMode,
    *,
    with_attributes: bool = False,
) -> BatchResult:
    """Translate many VAs at once, vectorised with numpy level by level.

    Array-backed memories (shared RAM, buffers) are indexed in place. Any other backend (the monitor) is
    read through a :class:`~harness.oracle.memory.PageCache`, one read per distinct table page (pass a
    PageCache to share it between calls within one stopped window).

    ``vas`` may be a uint64 or int64 numpy array or a sequence of ints (signed or unsigned).
    The result agrees exactly with :func:`walk` for every VA (stop, level, pa, attribute flags).
    """
    va_arr = as_va_array(vas)
    gather: _Gather
    if isinstance(memory, ArrayBackedMemory):
        gather = _ArrayGather(memory)
    else:
        gather = _PageGather(memory if isinstance(memory, PageCache) else PageCache(memory))
    return _translate_vectorised(gather, cr3, va_arr, mode, with_attributes)


class _Gather(Protocol):
    def __call__(self, entry_pa: U64Array) -> tuple[U64Array, npt.NDArray[np.bool_]]:
        """The 8-byte entries at ``entry_pa`` and whether each could be read (0 where not)."""
        ...


class _ArrayGather:
    def __init__(self, memory: ArrayBackedMemory) -> None:
        self.u64 = memory.u64_array()
        self.layout = memory.layout

    def __call__(self, entry_pa: U64Array) -> tuple[U64Array, npt.NDArray[np.bool_]]:
        offs, inside = self.layout.file_offsets(entry_pa)
        return self.u64[(offs >> np.uint64(3)).astype(np.intp)], inside


class _PageGather:
    """Entries through a page cache: each distinct table page is read once (table PAs are page aligned,
    so a page is either wholly readable or not, exactly as :func:`walk`'s per-entry reads see it)."""

    def __init__(self, cache: PageCache) -> None:
        self.cache = cache

    def __call__(self, entry_pa: U64Array) -> tuple[U64Array, npt.NDArray[np.bool_]]:
        pfns, inverse = np.unique(entry_pa >> np.uint64(12), return_inverse=True)
        pfn_list = [int(p) for p in pfns.tolist()]
        self.cache.prefetch(pfn_list)
        pages = np.zeros((len(pfn_list), 512), dtype=np.uint64)
        readable = np.zeros(len(pfn_list), dtype=np.bool_)
        for k, pfn in enumerate(pfn_list):
            try:
                pages[k] = self.cache.page(pfn)
            except MemoryAccessError:
                continue
            readable[k] = True
        inverse = inverse.reshape(-1)
        slot = ((entry_pa >> np.uint64(3)) & np.uint64(511)).astype(np.intp)
        return pages[inverse, slot], readable[inverse]


def _translate_vectorised(
    gather: _Gather, cr3: int, vas: U64Array, mode: PagingMode, with_attributes: bool
) -> BatchResult:
    n = vas.size
    out_pa = np.zeros(n, dtype=np.uint64)
    out_level = np.zeros(n, dtype=np.uint8)
    out_stop = np.zeros(n, dtype=np.uint8)
    out_attrs = np.zeros(n, dtype=np.uint16) if with_attributes else None

    bits = mode.va_bits
    hi = vas >> np.uint64(bits - 1)
    canonical = (hi == np.uint64(0)) | (hi == np.uint64((1 << (65 - bits)) - 1))
    out_stop[~canonical] = StopReason.NON_CANONICAL

    idx = np.flatnonzero(canonical)
    va = vas[idx]
    table_mask = np.uint64(mode.table_addr_mask)
    table = np.full(idx.size, np.uint64(cr3 & mode.table_addr_mask), dtype=np.uint64)
    and_bits = np.full(idx.size, np.uint64(PTE_RW | PTE_US), dtype=np.uint64)
    or_nx = np.zeros(idx.size, dtype=np.uint64)

    zero = np.uint64(0)

    for lvl in range(mode.levels, 0, -1):
        if idx.size == 0:
            break
        shift = np.uint64(LEVEL_SHIFTS[lvl])
        entry_pa = table | (((va >> shift) & np.uint64(0x1FF)) << np.uint64(3))
        entry, inside = gather(entry_pa)

        present = (entry & np.uint64(PTE_P)) != zero
        rsvd_bits, leaf = _classify(entry, lvl, mode)
        reserved = rsvd_bits != zero

        # Classify, in walk()'s order: unreadable table, not present, reserved, leaf, descend.
        outside = ~inside
        not_present = inside & ~present
        bad = inside & present & reserved
        good = inside & present & ~reserved
        is_leaf = good & leaf
        descend = good & ~leaf

        for mask, reason in (
            (outside, StopReason.TABLE_OUTSIDE_RAM),
            (not_present, StopReason.NOT_PRESENT),
            (bad, StopReason.RESERVED_BIT),
        ):
            if mask.any():
                sel = idx[mask]
                out_stop[sel] = reason
                out_level[sel] = lvl

        if is_leaf.any():
            sel = idx[is_leaf]
            e = entry[is_leaf]
            size = PAGE_SIZE_AT_LEVEL[lvl]
            leaf_mask = np.uint64(mode.phys_mask & ~(size - 1))
            out_pa[sel] = (e & leaf_mask) | (va[is_leaf] & np.uint64(size - 1))
            out_level[sel] = lvl
            out_stop[sel] = StopReason.LEAF
            if out_attrs is not None:
                ab = and_bits[is_leaf] & e
                nx = (or_nx[is_leaf] | e) & np.uint64(PTE_NX)
                pat_bit = np.uint64(PTE_PAT_4K if lvl == 1 else PTE_PAT_LARGE)
                flags = np.zeros(sel.size, dtype=np.uint16)
                flags |= np.where((ab & np.uint64(PTE_RW)) != zero, int(Attr.WRITABLE), 0).astype(np.uint16)
                flags |= np.where((ab & np.uint64(PTE_US)) != zero, int(Attr.USER), 0).astype(np.uint16)
                if mode.nxe:
                    flags |= np.where(nx == zero, int(Attr.EXECUTABLE), 0).astype(np.uint16)
                else:
                    flags |= np.uint16(int(Attr.EXECUTABLE))
                for bit, flag in (
                    (PTE_PWT, Attr.PWT),
                    (PTE_PCD, Attr.PCD),
                    (int(pat_bit), Attr.PAT),
                    (PTE_G, Attr.GLOBAL),
                    (PTE_A, Attr.ACCESSED),
                    (PTE_D, Attr.DIRTY),
                ):
                    flags |= np.where((e & np.uint64(bit)) != zero, int(flag), 0).astype(np.uint16)
                out_attrs[sel] = flags

        if not descend.any():
            break
        if not descend.all():
            idx = idx[descend]
            va = va[descend]
            entry = entry[descend]
            and_bits = and_bits[descend]
            or_nx = or_nx[descend]
        and_bits = and_bits & entry
        or_nx = or_nx | (entry & np.uint64(PTE_NX))
        table = entry & table_mask

    return BatchResult(out_pa, out_level, out_stop, out_attrs)


# --------------------------------------------------------------------------------------------------
# Self-map


def self_map_va(va: int, level: int, mode: PagingMode, slot: int = SELF_MAP_SLOT) -> int:
    """The VA through which the guest reads the level-``level`` entry for ``va`` via the recursive slot.

    Walking that VA on the host must land (pa) exactly on ``walk(va).step(level).entry_pa``, provided
    the walk of ``va`` reaches that level and the self-map is intact.
    """
    return self_map_entry_va(va, level, mode.levels, slot)


@dataclass(frozen=True)
class SelfMapCheck:
    """Whether ``top[slot]`` points back to the top-level table (the recursive self-map)."""

    slot: int
    top_table_pa: int
    entry_pa: int
    entry: int | None
    ok: bool
    problem: str | None

    def describe(self) -> str:
        if self.ok and self.entry is not None:
            return (
                f"self-map slot {self.slot:#x}: entry {self.entry:#018x} @ {self.entry_pa:#x} points back "
                f"to the top table {self.top_table_pa:#x}"
            )
        return f"self-map slot {self.slot:#x} is broken: {self.problem}"


def check_self_map(
    memory: PhysicalMemory, cr3: int, mode: PagingMode, slot: int = SELF_MAP_SLOT
) -> SelfMapCheck:
    """Check that the top-level entry ``slot`` is present, has no reserved bits and maps the top table."""
    top = cr3 & mode.table_addr_mask
    entry_pa = top + 8 * slot
    try:
        entry = memory.read_u64(entry_pa)
    except MemoryAccessError as exc:
        return SelfMapCheck(slot, top, entry_pa, None, False, f"top table unreadable: {exc}")
    problem = None
    if not entry & PTE_P:
        problem = f"entry {entry:#018x} is not present"
    elif bad := mode.reserved_bits(entry, mode.levels):
        problem = f"entry {entry:#018x} has reserved bits {bad:#x}"
    elif entry & mode.table_addr_mask != top:
        problem = (
            f"entry {entry:#018x} points to {entry & mode.table_addr_mask:#x}, not the top table {top:#x}"
        )
    return SelfMapCheck(slot, top, entry_pa, entry, problem is None, problem)


# --------------------------------------------------------------------------------------------------
# Snapshots


@dataclass(frozen=True)
class MappedRange:
    """[va, va+size) → [pa, pa+size), made of ``leaf_size`` leaves that share ``attributes``."""

    va: int
    pa: int
    size: int
    leaf_size: int
    attributes: Attributes

    @property
    def va_end(self) -> int:
        return self.va + self.size

    @property
    def pa_end(self) -> int:
        return self.pa + self.size

    @property
    def leaf_count(self) -> int:
        return self.size // self.leaf_size

    def clip(self, start: int, end: int) -> MappedRange:
        """The part of this range inside VA [start, end)."""
        start, end = max(start, self.va), min(end, self.va_end)
        return MappedRange(start, self.pa + (start - self.va), end - start, self.leaf_size, self.attributes)

    def format_line(self) -> str:
        leaf = {4096: "4K", 1 << 21: "2M", 1 << 30: "1G"}.get(self.leaf_size, format_size(self.leaf_size))
        return (
            f"{self.va:#018x}-{self.va_end:#018x}  {self.pa:#015x}-{self.pa_end:#015x}  "
            f"{format_size(self.size):>9}  {leaf:>2}  {self.attributes.label()}"
        )


RANGE_HEADER = f"{'VA [start':<19}{'end)':<20}{'PA [start':<16}{'end)':<17}{'size':>9}  leaf  attributes"


@dataclass(frozen=True)
class RecursiveSlot:
    """A top-level entry that points back at the top table (skipped by the snapshot)."""

    slot: int
    entry_pa: int
    entry: int
    va: int  # first VA of the region the slot covers (PTE_BASE for slot 0x1ED)
    size: int

    def describe(self, levels: int) -> str:
        rw = "RW" if self.entry & PTE_RW else "RO"
        us = "U" if self.entry & PTE_US else "S"
        nx = "NX" if self.entry & PTE_NX else "X"
        return (
            f"{LEVEL_NAMES[levels]}[{self.slot:#x}] @ {self.entry_pa:#x} = {self.entry:#018x} "
            f"-> the top table [{rw} {us} {nx}]: recursive self-map over "
            f"{self.va:#018x}-{self.va + self.size:#018x}"
        )


@dataclass(frozen=True)
class Anomaly:
    """A present entry that maps nothing usable: reserved bits, a table outside RAM, a loop."""

    level: int
    va: int  # first VA the entry covers
    entry_pa: int
    entry: int
    problem: str

    def describe(self) -> str:
        return (
            f"{ENTRY_NAMES[self.level]} for VA {self.va:#018x} @ {self.entry_pa:#x} = {self.entry:#018x}: "
            f"{self.problem}"
        )


@dataclass(frozen=True)
class SnapshotDiff:
    """What changed from an old snapshot to a new one (VA pieces, coalesced)."""

    added: tuple[MappedRange, ...]
    removed: tuple[MappedRange, ...]
    changed: tuple[tuple[MappedRange, MappedRange], ...]  # (old, new) over the same VA range

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @property
    def empty(self) -> bool:
        return not self

    def format(self) -> str:
        if not self:
            return "no mapping changed"
        lines: list[str] = []
        if self.added:
            lines.append(f"added ({len(self.added)}):")
            lines.append("    " + RANGE_HEADER)
            lines += [f"  + {r.format_line()}" for r in self.added]
        if self.removed:
            lines.append(f"removed ({len(self.removed)}):")
            lines.append("    " + RANGE_HEADER)
            lines += [f"  - {r.format_line()}" for r in self.removed]
        if self.changed:
            lines.append(f"changed ({len(self.changed)}):")
            lines.append("    " + RANGE_HEADER)
            for old, new in self.changed:
                lines.append(f"  < {old.format_line()}")
                lines.append(f"  > {new.format_line()}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Snapshot:
    """Every present leaf mapping of an address space, as coalesced ranges sorted by VA."""

    mode: PagingMode
    cr3: int
    ranges: tuple[MappedRange, ...]
    recursive_slots: tuple[RecursiveSlot, ...] = ()
    anomalies: tuple[Anomaly, ...] = ()
    tables_read: int = 0
    leaf_count: int = 0
    table_pas: tuple[int, ...] = field(default=(), compare=False)  # every table read, in walk order
    _starts: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(r.va for r in self.ranges))

    @property
    def mapped_bytes(self) -> int:
        return sum(r.size for r in self.ranges)

    def lookup(self, va: int) -> MappedRange | None:
        """The range that maps ``va``, if any."""
        va = to_u64(va)
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0 and va < self.ranges[i].va_end:
            return self.ranges[i]
        return None

    def translate(self, va: int) -> int | None:
        r = self.lookup(va)
        return None if r is None else r.pa + (to_u64(va) - r.va)

    def diff(
        self,
        other: Snapshot,
        *,
        ignore: Iterable[str] = ("accessed", "dirty"),
        compare_leaf_size: bool = True,
    ) -> SnapshotDiff:
        """Changes from this (old) snapshot to ``other`` (new).

        ``ignore`` names :class:`Attributes` fields left out of the comparison (by default A and D,
        which the CPU sets on its own). Ranges are compared piece by piece over the union of both
        snapshots' boundaries, so differently coalesced but equal mappings compare equal.
        """
        ignored: dict[str, Any] = {name: False for name in ignore}
        for name in ignored:
            if name not in {f.name for f in dataclasses.fields(Attributes)}:
                raise ValueError(f"unknown attribute {name!r}")

        def key(r: MappedRange, at: int) -> tuple[int, Attributes, int]:
            attrs = dataclasses.replace(r.attributes, **ignored) if ignored else r.attributes
            return (r.pa + (at - r.va), attrs, r.leaf_size if compare_leaf_size else 0)

        bounds = sorted({b for r in (*self.ranges, *other.ranges) for b in (r.va, r.va_end)})
        added: list[MappedRange] = []
        removed: list[MappedRange] = []
        changed: list[tuple[MappedRange, MappedRange]] = []
        i = j = 0
        old, new = self.ranges, other.ranges
        for a, b in itertools.pairwise(bounds):
            while i < len(old) and old[i].va_end <= a:
                i += 1
            while j < len(new) and new[j].va_end <= a:
                j += 1
            o = old[i] if i < len(old) and old[i].va <= a else None
            n = new[j] if j < len(new) and new[j].va <= a else None
            if o is None and n is None:
                continue
            if o is None and n is not None:
                added.append(n.clip(a, b))
            elif n is None and o is not None:
                removed.append(o.clip(a, b))
            elif o is not None and n is not None and key(o, a) != key(n, a):
                changed.append((o.clip(a, b), n.clip(a, b)))
        return SnapshotDiff(
            tuple(_coalesce(added)),
            tuple(_coalesce(removed)),
            tuple(_coalesce_pairs(changed)),
        )

    def random_vas(self, n: int, seed: int = 0) -> npt.NDArray[np.uint64]:
        """``n`` mapped VAs: each in a range chosen uniformly (so small ranges are not drowned by the
        physmap), at a uniform 8-byte aligned offset inside it."""
        if not self.ranges:
            return np.zeros(0, dtype=np.uint64)
        rng = np.random.default_rng(seed)
        which = rng.integers(0, len(self.ranges), size=n)
        starts = np.array([r.va for r in self.ranges], dtype=np.uint64)[which]
        sizes = np.array([r.size for r in self.ranges], dtype=np.uint64)[which]
        offsets = (rng.random(n) * sizes.astype(np.float64)).astype(np.uint64) & ~np.uint64(7)
        return np.asarray(starts + np.minimum(offsets, sizes - np.uint64(8)), dtype=np.uint64)

    def groups(self) -> list[tuple[MappedRange, ...]]:
        """Ranges merged where they follow each other in VA with the same leaf size and attributes,
        whatever their PAs (the kernel hands out frames highest first, so pool and PFN-database pages
        are each a range of their own)."""
        out: list[list[MappedRange]] = []
        for r in self.ranges:
            last = out[-1][-1] if out else None
            if last is not None and last.va_end == r.va and last.leaf_size == r.leaf_size \
                    and last.attributes == r.attributes:
                out[-1].append(r)
            else:
                out.append([r])
        return [tuple(g) for g in out]

    def format(self, *, max_ranges: int | None = None, compact: bool = False) -> str:
        """A readable dump sorted by VA, for failing-test reports.

        ``compact`` prints one line per :meth:`groups` entry (PAs then shown as the number of runs and
        their span). ``max_ranges`` bounds the lines of ranges and of anomalies: the first
        ``max_ranges - max_ranges // 4`` and the last ``max_ranges // 4`` are shown, with a line saying how
        many were left out between them.
        """
        m = self.mode
        pat = " ".join(t.label for t in m.pat_types)
        lines = [
            f"Page-table snapshot: {m.levels}-level, CR3={self.cr3:#x}, NXE={int(m.nxe)}, "
            f"IA32_PAT={m.pat_msr:#018x} (PA0..PA7: {pat})",
        ]
        if self.recursive_slots:
            for s in self.recursive_slots:
                lines.append("Self-map: " + s.describe(m.levels))
        else:
            lines.append("Self-map: none (no top-level entry points back at the top table)")
        lines.append(
            "Attributes: RW/RO; U user / S supervisor; X / NX; G global; memory type from PAT; "
            "A accessed, D dirty; PK=n protection key"
        )
        lines.append(RANGE_HEADER)
        rows = [_group_line(g) for g in self.groups()] if compact else [r.format_line() for r in self.ranges]
        lines += _bounded(rows, max_ranges, "ranges")
        lines.append(
            f"{len(self.ranges)} ranges, {self.leaf_count} leaf entries, {format_size(self.mapped_bytes)} "
            f"mapped; {self.tables_read} tables read"
        )
        if self.anomalies:
            lines.append(f"Anomalies ({len(self.anomalies)}):")
            lines += _bounded(["  " + a.describe() for a in self.anomalies], max_ranges, "anomalies")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _group_line(group: Sequence[MappedRange]) -> str:
    if len(group) == 1:
        return group[0].format_line()
    first, last = group[0], group[-1]
    size = sum(r.size for r in group)
    lo, hi = min(r.pa for r in group), max(r.pa_end for r in group)
    pas = f"{len(group)} PA runs in {lo:#x}-{hi:#x}"
    leaf = {4096: "4K", 1 << 21: "2M", 1 << 30: "1G"}.get(first.leaf_size, format_size(first.leaf_size))
    return (
        f"{first.va:#018x}-{last.va_end:#018x}  {pas:<31}  {format_size(size):>9}  {leaf:>2}  "
        f"{first.attributes.label()}"
    )


def _bounded(rows: list[str], limit: int | None, what: str) -> list[str]:
    if limit is None or len(rows) <= limit:
        return rows
    if limit <= 0:
        return [f"... {len(rows)} {what} not shown"]
    tail = limit // 4
    head = limit - tail
    return [*rows[:head], f"... {len(rows) - head - tail} {what} not shown ...", *rows[len(rows) - tail :]]


def _same_run(a: MappedRange, b: MappedRange) -> bool:
    # Addresses first, without the properties: most neighbours fail there, and cheaply.
    return (
        a.va + a.size == b.va
        and a.pa + a.size == b.pa
        and a.leaf_size == b.leaf_size
        and (a.attributes is b.attributes or a.attributes == b.attributes)
    )


def _coalesce(ranges: Iterable[MappedRange]) -> list[MappedRange]:
    out: list[MappedRange] = []
    for r in ranges:
        if out and _same_run(out[-1], r):
            p = out[-1]
            out[-1] = MappedRange(p.va, p.pa, p.size + r.size, p.leaf_size, p.attributes)
        else:
            out.append(r)
    return out


def _coalesce_pairs(
    pairs: Iterable[tuple[MappedRange, MappedRange]],
) -> list[tuple[MappedRange, MappedRange]]:
    out: list[tuple[MappedRange, MappedRange]] = []
    for o, n in pairs:
        if out and _same_run(out[-1][0], o) and _same_run(out[-1][1], n):
            po, pn = out[-1]
            out[-1] = (
                MappedRange(po.va, po.pa, po.size + o.size, po.leaf_size, po.attributes),
                MappedRange(pn.va, pn.pa, pn.size + n.size, pn.leaf_size, pn.attributes),
            )
        else:
            out.append((o, n))
    return out


class _SnapshotBuilder:
    def __init__(
        self, memory: PhysicalMemory, cr3: int, mode: PagingMode, skip_recursive: bool, max_tables: int
    ):
        self.memory = memory
        self.mode = mode
        self.cr3 = cr3
        self.top = cr3 & mode.table_addr_mask
        self.skip_recursive = skip_recursive
        self.max_tables = max_tables
        self.ranges: list[MappedRange] = []
        self.recursive: list[RecursiveSlot] = []
        self.anomalies: list[Anomaly] = []
        self.tables_read = 0
        self.leaf_count = 0
        self.table_pas: list[int] = []
        self._attributes: dict[int, Attributes] = {}
        # Checked once: isinstance() against a runtime Protocol costs more than reading a table.
        self._array = memory if isinstance(memory, ArrayBackedMemory) else None
        self._u64 = self._array.u64_array() if self._array is not None else None

    def read_table(self, pa: int) -> U64Array:
        self.tables_read += 1
        if self.tables_read > self.max_tables:
            raise MemoryAccessError(
                f"snapshot read more than {self.max_tables} tables; the tables are probably malformed"
            )
        if self._u64 is not None and self._array is not None:
            off = self._array.layout.file_offset(pa, 4096)
            table = self._u64[off // 8 : off // 8 + 512]
        else:
            table = np.frombuffer(self.memory.read(pa, 4096), dtype="<u8")
        self.table_pas.append(pa)
        return table

    def attributes(self, key: int) -> Attributes:
        # A dict of its own: the shared lru_cache hashes the PagingMode on every call.
        found = self._attributes.get(key)
        if found is None:
            found = self._attributes[key] = _attributes_for(key, self.mode)
        return found

    def run(self) -> None:
        try:
            table = self.read_table(self.top)
        except MemoryAccessError as exc:
            self.anomalies.append(Anomaly(self.mode.levels, 0, self.top, 0, f"top table unreadable: {exc}"))
            return
        self.visit(table, self.top, self.mode.levels, 0, PTE_RW | PTE_US, False, (self.top,))

    def visit(
        self,
        table: U64Array,
        table_pa: int,
        level: int,
        va_base: int,
        and_bits: int,
        nx_seen: bool,
        ancestors: tuple[int, ...],
    ) -> None:
        mode = self.mode
        shift = LEVEL_SHIFTS[level]
        present_idx = np.flatnonzero(table & np.uint64(PTE_P))
        if present_idx.size == 0:
            return
        top = level == mode.levels
        ents = table[present_idx]
        reserved, leaf = _classify(ents, level, mode)
        bad = reserved != np.uint64(0)
        for i, e, r in zip(
            present_idx[bad].tolist(), ents[bad].tolist(), reserved[bad].tolist(), strict=True
        ):
            va = sign_extend(i << shift, mode.va_bits) if top else va_base | (i << shift)
            self.anomalies.append(Anomaly(level, va, table_pa + 8 * i, e, f"reserved bits {r:#x} set"))
        good_leaf = leaf & ~bad
        if good_leaf.any():
            self.add_leaves(present_idx[good_leaf], table, level, va_base, and_bits, nx_seen)
        inner = ~leaf & ~bad
        for i, e in zip(present_idx[inner].tolist(), ents[inner].tolist(), strict=True):
            va = sign_extend(i << shift, mode.va_bits) if top else va_base | (i << shift)
            entry_pa = table_pa + 8 * i
            child = e & mode.table_addr_mask
            if top and child == self.top and self.skip_recursive:
                self.recursive.append(RecursiveSlot(i, entry_pa, e, va, 1 << shift))
                continue
            if child in ancestors:
                self.anomalies.append(
                    Anomaly(level, va, entry_pa, e, f"points back to the table at {child:#x} above it (loop)")
                )
                continue
            try:
                sub = self.read_table(child)
            except MemoryAccessError:
                self.anomalies.append(
                    Anomaly(
                        level, va, entry_pa, e, f"{LEVEL_NAMES[level - 1]} table at {child:#x} is outside RAM"
                    )
                )
                continue
            self.visit(
                sub, child, level - 1, va, and_bits & e, nx_seen or bool(e & PTE_NX), (*ancestors, child)
            )

    def add_leaves(
        self,
        li: npt.NDArray[np.intp],
        table: U64Array,
        level: int,
        va_base: int,
        and_bits: int,
        nx_seen: bool,
    ) -> None:
        mode = self.mode
        size = PAGE_SIZE_AT_LEVEL[level]
        shift = LEVEL_SHIFTS[level]
        e = table[li]
        zero = np.uint64(0)
        pa = e & np.uint64(mode.phys_mask & ~(size - 1))
        # Attribute key: Attr flags in bits 0..8, protection key above.
        key = np.zeros(li.size, dtype=np.int64)
        if and_bits & PTE_RW:
            key |= np.where((e & np.uint64(PTE_RW)) != zero, int(Attr.WRITABLE), 0)
        if and_bits & PTE_US:
            key |= np.where((e & np.uint64(PTE_US)) != zero, int(Attr.USER), 0)
        if not mode.nxe:
            key |= int(Attr.EXECUTABLE)
        elif not nx_seen:
            key |= np.where((e & np.uint64(PTE_NX)) == zero, int(Attr.EXECUTABLE), 0)
        pat_bit = PTE_PAT_4K if level == 1 else PTE_PAT_LARGE
        for bit, flag in (
            (PTE_PWT, Attr.PWT),
            (PTE_PCD, Attr.PCD),
            (pat_bit, Attr.PAT),
            (PTE_G, Attr.GLOBAL),
            (PTE_A, Attr.ACCESSED),
            (PTE_D, Attr.DIRTY),
        ):
            key |= np.where((e & np.uint64(bit)) != zero, int(flag), 0)
        key |= ((e >> np.uint64(PKEY_SHIFT)) & np.uint64(0xF)).astype(np.int64) << 9
        # Split into runs of consecutive indices, contiguous PAs and equal keys.
        if li.size > 1:
            brk = (np.diff(li) != 1) | (np.diff(pa.astype(np.int64)) != size) | (np.diff(key) != 0)
            starts = np.concatenate(([0], np.flatnonzero(brk) + 1))
        else:
            starts = np.array([0])
        ends = np.append(starts[1:], li.size)
        top = level == mode.levels
        # Python ints out of numpy once, not per run: a PFN database maps thousands of runs.
        first = li[starts].tolist()
        run_pas = pa[starts].tolist()
        run_keys = key[starts].tolist()
        lengths = (ends - starts).tolist()
        attributes = self.attributes
        for i0, run_pa, run_key, count in zip(first, run_pas, run_keys, lengths, strict=True):
            va = sign_extend(i0 << shift, mode.va_bits) if top else va_base | (i0 << shift)
            self.ranges.append(MappedRange(va, run_pa, count * size, size, attributes(run_key)))
        self.leaf_count += int(li.size)


def snapshot(
    memory: PhysicalMemory,
    cr3: int,
    mode: PagingMode,
    *,
    skip_recursive: bool = True,
    max_tables: int = 1 << 20,
) -> Snapshot:
    """Enumerate every present leaf mapping reachable from ``cr3``.

    Top-level entries that point back at the top table (the self-map) are not descended into; they
    are listed in :attr:`Snapshot.recursive_slots`. Present entries with reserved bits, tables
    outside RAM and pointers back to an ancestor table are listed in :attr:`Snapshot.anomalies`
    instead of being mapped. Stop the VM while this runs.
    """
    b = _SnapshotBuilder(memory, cr3, mode, skip_recursive, max_tables)
    b.run()
    ranges = _coalesce(sorted(b.ranges, key=lambda r: r.va))
    return Snapshot(
        mode=mode,
        cr3=cr3,
        ranges=tuple(ranges),
        recursive_slots=tuple(b.recursive),
        anomalies=tuple(sorted(b.anomalies, key=lambda a: (a.va, -a.level))),
        tables_read=b.tables_read,
        leaf_count=b.leaf_count,
        table_pas=tuple(b.table_pas),
    )


__all__ = [
    "Anomaly",
    "Attr",
    "Attributes",
    "BatchResult",
    "MappedRange",
    "RecursiveSlot",
    "SelfMapCheck",
    "Snapshot",
    "SnapshotDiff",
    "StopReason",
    "Walk",
    "WalkStep",
    "as_va_array",
    "check_self_map",
    "self_map_va",
    "snapshot",
    "translate",
    "translate_many",
    "walk",
]
