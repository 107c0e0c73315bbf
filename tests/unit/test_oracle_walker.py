"""Unit tests of the host page-table walker on hand-built tables (no VM)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from harness.oracle.memory import BufferMemory, MemoryAccessError, PhysicalMemory, RamLayout
from harness.oracle.paging import (
    PAT_GUEST,
    PAT_POWER_ON,
    PDE_BASE_4LEVEL,
    PPE_BASE_4LEVEL,
    PTE_A,
    PTE_BASE_4LEVEL,
    PTE_BASE_5LEVEL,
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
    PXE_BASE_4LEVEL,
    PXE_SELFMAP_4LEVEL,
    SELF_MAP_SLOT,
    SIZE_1G,
    SIZE_2M,
    SIZE_4K,
    MemoryType,
    PagingMode,
    PagingModeError,
    self_map_bases,
)
from harness.oracle.synth import PageTableBuilder, synthetic_address_space
from harness.oracle.walker import (
    Attr,
    StopReason,
    check_self_map,
    self_map_va,
    snapshot,
    translate,
    translate_many,
    walk,
)

RAM = 4 << 20
POOL = (1 << 20, 3 << 20)
LEVELS = (4, 5)
KVA = 0xFFFF800000000000  # canonical in both modes
LEAF_RW = PTE_P | PTE_RW


def make(
    levels: int, *, nxe: bool = True, pat: int = PAT_GUEST, **kw: object
) -> tuple[BufferMemory, PageTableBuilder, PagingMode]:
    mem = BufferMemory(RAM)
    b = PageTableBuilder(mem, levels, *POOL)
    mode = PagingMode(levels=levels, nxe=nxe, pat_msr=pat, **kw)  # type: ignore[arg-type]
    return mem, b, mode


class ReadOnlyView:
    """A PhysicalMemory that is not array-backed (forces translate_many's per-VA path)."""

    def __init__(self, inner: PhysicalMemory) -> None:
        self.inner = inner

    def read(self, pa: int, size: int) -> bytes:
        return self.inner.read(pa, size)

    def read_u64(self, pa: int) -> int:
        return self.inner.read_u64(pa)

    def write(self, pa: int, data: bytes) -> None:
        raise MemoryAccessError("read-only")


# --------------------------------------------------------------------------------------------------
# Paging mode


def test_paging_mode_from_registers() -> None:
    cr0 = (1 << 31) | (1 << 16) | 1
    efer = (1 << 8) | (1 << 10) | (1 << 11)
    m = PagingMode.from_registers(cr0, 1 << 5, efer, PAT_GUEST)
    assert (m.levels, m.nxe, m.pat_msr) == (4, True, PAT_GUEST)
    m5 = PagingMode.from_registers(cr0, (1 << 5) | (1 << 12), efer & ~(1 << 11), PAT_POWER_ON)
    assert (m5.levels, m5.nxe) == (5, False)
    assert m5.va_bits == 57 and m.va_bits == 48


@pytest.mark.parametrize(
    ("cr0", "cr4", "efer", "words"),
    [
        (0x1, 0x20, 0x500, "CR0.PG=0"),
        (0x80000001, 0x20, 0x100, "EFER.LMA=0"),
        (0x80000001, 0x0, 0x500, "CR4.PAE=0"),
        (0x80000001, 0x20, 0x0, "EFER.LME=0"),
    ],
)
def test_paging_mode_rejects_non_long_mode(cr0: int, cr4: int, efer: int, words: str) -> None:
    with pytest.raises(PagingModeError, match=words.replace(".", r"\.")):
        PagingMode.from_registers(cr0, cr4, efer, PAT_GUEST)


def test_paging_mode_rejects_reserved_pat_encoding() -> None:
    with pytest.raises(ValueError, match="PA1 = 0x02"):
        PagingMode(levels=4, nxe=True, pat_msr=0x0007010600070206)


# --------------------------------------------------------------------------------------------------
# Leaves at every level


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize(("size", "level"), [(SIZE_4K, 1), (SIZE_2M, 2), (SIZE_1G, 3)])
def test_leaf_at_each_level(levels: int, size: int, level: int) -> None:
    mem, b, mode = make(levels)
    va = KVA + 5 * SIZE_1G
    pa = 7 * SIZE_1G  # frames need not be in RAM
    b.map(va, pa, size=size, flags=LEAF_RW | PTE_G)
    off = size - 8 if size > SIZE_4K else 0x123
    w = walk(mem, b.cr3, va + off, mode)
    assert w.stop is StopReason.LEAF and w.ok
    assert w.level == level
    assert w.page_size == size
    assert w.pa == pa + off
    assert w.page_pa == pa
    assert [s.level for s in w.steps] == list(range(levels, level - 1, -1))
    assert w.steps[-1].entry & PTE_PS == (PTE_PS if level > 1 else 0)
    assert w.attributes is not None and w.attributes.global_ and w.attributes.writable
    assert translate(mem, b.cr3, va + off, mode) == pa + off
    text = w.describe()
    assert "LEAF" in text and f"{pa + off:#x}" in text


@pytest.mark.parametrize("levels", LEVELS)
def test_walk_steps_record_each_entry(levels: int) -> None:
    mem, b, mode = make(levels)
    va = 0x00007F1234567000
    b.map(va, 0x5000, flags=LEAF_RW | PTE_US)
    w = walk(mem, b.cr3, va, mode)
    table = b.cr3
    for step in w.steps:
        assert step.table_pa == table
        assert step.entry == mem.read_u64(step.entry_pa)
        table = step.entry & 0x000FFFFFFFFFF000
    assert w.entries == {s.level: s.entry for s in w.steps}
    assert w.entry(1) == 0x5000 | LEAF_RW | PTE_US
    assert w.step(levels) is w.steps[0]
    assert w.leaf is w.steps[-1]


@pytest.mark.parametrize(("levels", "missing"), [(n, m) for n in LEVELS for m in range(1, n + 1)])
def test_not_present_at_each_level(levels: int, missing: int) -> None:
    mem, b, mode = make(levels)
    va = KVA + 0x12345000
    b.map(va, 0x9000)
    epa = b.entry_pa(va, missing)
    mem.write_u64(epa, mem.read_u64(epa) & ~PTE_P)
    w = walk(mem, b.cr3, va, mode)
    assert w.stop is StopReason.NOT_PRESENT
    assert w.level == missing
    assert w.pa is None and w.attributes is None
    assert len(w.steps) == levels - missing + 1


def test_empty_tables_stop_at_top() -> None:
    mem, b, mode = make(4)
    w = walk(mem, b.cr3, 0x1000, mode)
    assert (w.stop, w.level, len(w.steps)) == (StopReason.NOT_PRESENT, 4, 1)


# --------------------------------------------------------------------------------------------------
# Reserved bits


@pytest.mark.parametrize("levels", LEVELS)
def test_ps_in_top_levels_is_reserved(levels: int) -> None:
    for level in range(4, levels + 1):
        mem, b, mode = make(levels)
        va = KVA
        b.map(va, 0x1000)
        epa = b.entry_pa(va, level)
        mem.write_u64(epa, mem.read_u64(epa) | PTE_PS)
        w = walk(mem, b.cr3, va, mode)
        assert (w.stop, w.level, w.reserved_bits) == (StopReason.RESERVED_BIT, level, PTE_PS), level
        assert "reserved bits" in w.describe()


@pytest.mark.parametrize(("size", "bad_bit"), [(SIZE_2M, 13), (SIZE_2M, 20), (SIZE_1G, 13), (SIZE_1G, 29)])
def test_reserved_address_bits_in_large_leaves(size: int, bad_bit: int) -> None:
    mem, b, mode = make(4)
    va = KVA + SIZE_1G
    epa = b.map(va, 3 * SIZE_1G, size=size)
    mem.write_u64(epa, mem.read_u64(epa) | (1 << bad_bit))
    w = walk(mem, b.cr3, va, mode)
    assert w.stop is StopReason.RESERVED_BIT and w.reserved_bits == 1 << bad_bit


def test_large_pat_bit_12_is_not_reserved() -> None:
    mem, b, mode = make(4)
    b.map(KVA, SIZE_2M, size=SIZE_2M, flags=LEAF_RW | PTE_PAT_LARGE)
    w = walk(mem, b.cr3, KVA + 0x1234, mode)
    assert w.ok and w.pa == SIZE_2M + 0x1234 and w.attributes is not None and w.attributes.pat


def test_nx_is_reserved_without_nxe() -> None:
    mem, b, mode = make(4, nxe=False)
    b.map(KVA, 0x1000, flags=LEAF_RW | PTE_NX)
    w = walk(mem, b.cr3, KVA, mode)
    assert (w.stop, w.level, w.reserved_bits) == (StopReason.RESERVED_BIT, 1, PTE_NX)


def test_address_bits_above_maxphyaddr_are_reserved() -> None:
    mem, b, mode = make(4, maxphyaddr=40)
    b.map(KVA, 1 << 45)
    w = walk(mem, b.cr3, KVA, mode)
    assert w.stop is StopReason.RESERVED_BIT and w.reserved_bits == 1 << 45
    ok = walk(mem, b.cr3, KVA, PagingMode(levels=4, nxe=True))
    assert ok.ok and ok.pa == 1 << 45


def test_1g_page_without_gbpages_is_reserved() -> None:
    mem, b, mode = make(4, gbpages=False)
    b.map(KVA, SIZE_1G, size=SIZE_1G)
    w = walk(mem, b.cr3, KVA, mode)
    assert (w.stop, w.level, w.reserved_bits) == (StopReason.RESERVED_BIT, 3, PTE_PS)


def test_software_bits_are_ignored() -> None:
    mem, b, mode = make(4)
    soft = (0x7F << 52) | (0x7 << 9) | (0xF << 59)
    b.map(KVA, 0x7000, flags=LEAF_RW | soft)
    w = walk(mem, b.cr3, KVA, mode)
    assert w.ok and w.pa == 0x7000
    assert w.attributes is not None and w.attributes.protection_key == 0xF


def test_reserved_bits_ignored_when_not_present() -> None:
    mem, b, mode = make(4)
    epa = b.entry_pa(KVA, 1)
    mem.write_u64(epa, 0xFFFF_FFFF_FFFF_FFFE)  # P=0, everything else set
    w = walk(mem, b.cr3, KVA, mode)
    assert (w.stop, w.level) == (StopReason.NOT_PRESENT, 1)


# --------------------------------------------------------------------------------------------------
# Canonical addresses


@pytest.mark.parametrize(
    ("levels", "va", "canonical"),
    [
        (4, 0x00007FFFFFFFF000, True),
        (4, 0x0000800000000000, False),
        (4, 0xFFFF7FFFFFFFFFFF, False),
        (4, 0xFFFF800000000000, True),
        (4, 0x0100000000000000, False),
        (5, 0x0000800000000000, True),
        (5, 0x00FFFFFFFFFFF000, True),
        (5, 0x0100000000000000, False),
        (5, 0xFEFFFFFFFFFFFFFF, False),
        (5, 0xFF00000000000000, True),
        (5, 0xFFFF800000000000, True),
    ],
)
def test_non_canonical(levels: int, va: int, canonical: bool) -> None:
    mem, b, mode = make(levels)
    w = walk(mem, b.cr3, va, mode)
    if canonical:
        assert w.stop is StopReason.NOT_PRESENT
    else:
        assert (w.stop, w.level, w.steps) == (StopReason.NON_CANONICAL, 0, ())
    r = translate_many(mem, b.cr3, [va], mode)
    assert int(r.stop[0]) == w.stop and int(r.level[0]) == w.level


def test_signed_vas_are_accepted() -> None:
    mem, b, mode = make(4)
    b.map(KVA, 0x3000)
    signed = KVA - (1 << 64)
    assert walk(mem, b.cr3, signed, mode).pa == 0x3000
    r = translate_many(mem, b.cr3, np.array([signed], dtype=np.int64), mode)
    assert int(r.pa[0]) == 0x3000
    r2 = translate_many(mem, b.cr3, [signed, KVA], mode)
    assert r2.pa.tolist() == [0x3000, 0x3000]
    # A list mixing small and huge ints must not go through float64 (numpy's default for it).
    r3 = translate_many(mem, b.cr3, [KVA + 0x123, 5], mode)
    assert int(r3.pa[0]) == 0x3123
    with pytest.raises(TypeError):
        translate_many(mem, b.cr3, np.array([1.0]), mode)


# --------------------------------------------------------------------------------------------------
# Tables outside RAM


def test_table_outside_ram() -> None:
    mem, b, mode = make(4)
    b.map(KVA, 0x1000)
    epa = b.entry_pa(KVA, 2)
    mem.write_u64(epa, (64 << 30) | PTE_P | PTE_RW)  # PT at 64 GiB: no RAM there
    w = walk(mem, b.cr3, KVA, mode)
    assert (w.stop, w.level, w.table_pa) == (StopReason.TABLE_OUTSIDE_RAM, 1, 64 << 30)
    assert "outside guest RAM" in w.describe()
    w2 = walk(mem, 1 << 40, KVA, mode)
    assert (w2.stop, w2.level, w2.steps) == (StopReason.TABLE_OUTSIDE_RAM, 4, ())


# --------------------------------------------------------------------------------------------------
# Accumulation of RW / US / NX over levels


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("leaf_size", [SIZE_4K, SIZE_2M, SIZE_1G])
def test_rw_us_nx_accumulate(levels: int, leaf_size: int) -> None:
    leaf_level = {SIZE_4K: 1, SIZE_2M: 2, SIZE_1G: 3}[leaf_size]
    for level in range(leaf_level, levels + 1):
        for bit in (PTE_RW, PTE_US, PTE_NX):
            mem, b, mode = make(levels)
            va = KVA + 3 * SIZE_1G
            b.map(va, 2 * SIZE_1G, size=leaf_size, flags=PTE_P | PTE_RW | PTE_US)
            epa = b.entry_pa(va, level)
            e = mem.read_u64(epa)
            mem.write_u64(epa, e | PTE_NX if bit == PTE_NX else e & ~bit)
            w = walk(mem, b.cr3, va, mode)
            assert w.ok and w.attributes is not None
            a = w.attributes
            assert a.writable == (bit != PTE_RW), (level, bit)
            assert a.user == (bit != PTE_US), (level, bit)
            assert a.executable == (bit != PTE_NX), (level, bit)


def test_executable_when_nxe_off() -> None:
    mem, b, mode = make(4, nxe=False)
    b.map(KVA, 0x1000)
    w = walk(mem, b.cr3, KVA, mode)
    assert w.attributes is not None and w.attributes.executable


def test_leaf_only_attributes() -> None:
    mem, b, mode = make(4)
    b.map(KVA, 0x1000, flags=PTE_P | PTE_A | PTE_D | PTE_G | (5 << 59))
    # A/D/G set in a non-leaf entry do not leak into the leaf's attributes.
    b.map(KVA + SIZE_4K, 0x2000, flags=PTE_P)
    epa = b.entry_pa(KVA, 2)
    mem.write_u64(epa, mem.read_u64(epa) | PTE_A | PTE_G)
    a = walk(mem, b.cr3, KVA, mode).attributes
    assert a is not None and (a.accessed, a.dirty, a.global_, a.protection_key) == (True, True, True, 5)
    assert not a.writable
    a2 = walk(mem, b.cr3, KVA + SIZE_4K, mode).attributes
    assert a2 is not None and (a2.accessed, a2.dirty, a2.global_, a2.protection_key) == (
        False,
        False,
        False,
        0,
    )
    assert a.label() == "RO S X  G WB  AD PK=5"


# --------------------------------------------------------------------------------------------------
# PAT


GUEST_TYPES = ["WB", "WC", "UC-", "UC", "WB", "WC", "UC-", "UC"]
POWER_ON_TYPES = ["WB", "WT", "UC-", "UC", "WB", "WT", "UC-", "UC"]


@pytest.mark.parametrize(("pat_msr", "expected"), [(PAT_GUEST, GUEST_TYPES), (PAT_POWER_ON, POWER_ON_TYPES)])
@pytest.mark.parametrize("size", [SIZE_4K, SIZE_2M, SIZE_1G])
def test_pat_decoding_every_combination(pat_msr: int, expected: list[str], size: int) -> None:
    mem, b, mode = make(4, pat=pat_msr)
    pat_bit = PTE_PAT_4K if size == SIZE_4K else PTE_PAT_LARGE
    for i, (pat, pcd, pwt) in enumerate(itertools.product((0, 1), repeat=3)):
        va = KVA + i * SIZE_1G
        flags = PTE_P | (PTE_PWT if pwt else 0) | (PTE_PCD if pcd else 0) | (pat_bit if pat else 0)
        b.map(va, i * SIZE_1G, size=size, flags=flags)
        a = walk(mem, b.cr3, va, mode).attributes
        assert a is not None
        assert (a.pwt, a.pcd, a.pat) == (bool(pwt), bool(pcd), bool(pat))
        assert a.memory_type.label == expected[pat << 2 | pcd << 1 | pwt], (pat, pcd, pwt)


def test_pat_every_encoding() -> None:
    msr = 0x0706050401000706  # PA0..7 = 06 07 00 01 04 05 06 07
    mode = PagingMode(levels=4, nxe=True, pat_msr=msr)
    assert [t.label for t in mode.pat_types] == ["WB", "UC-", "UC", "WC", "WT", "WP", "WB", "UC-"]
    assert mode.memory_type(pwt=True, pcd=False, pat=True) is MemoryType.WP


# --------------------------------------------------------------------------------------------------
# Self-map


def test_self_map_constants() -> None:
    assert self_map_bases(4) == {
        1: PTE_BASE_4LEVEL,
        2: PDE_BASE_4LEVEL,
        3: PPE_BASE_4LEVEL,
        4: PXE_BASE_4LEVEL,
    }
    assert self_map_bases(5)[1] == PTE_BASE_5LEVEL == 0xFFED000000000000
    mode4 = PagingMode(levels=4, nxe=True)
    assert self_map_va(PTE_BASE_4LEVEL, 4, mode4) == PXE_SELFMAP_4LEVEL
    assert self_map_va(0xFFFFF80000201000, 1, mode4) == PTE_BASE_4LEVEL + (
        (0xFFFFF80000201000 >> 9) & 0x7FFFFFFFF8
    )


@pytest.mark.parametrize("levels", LEVELS)
def test_self_map_lands_on_tables(levels: int) -> None:
    mem, b, mode = make(levels)
    b.add_self_map()
    vas = [0x10000, 0x00007FFFFFFFE000, KVA, KVA + 0x40201000, 0xFFFFF80000123000]
    for i, va in enumerate(vas):
        b.map(va, 0x100000 * (i + 1))
    b.map(0xFFFFFA8000000000, SIZE_1G, size=SIZE_1G)
    for va in [*vas, 0xFFFFFA8000000000]:
        direct = walk(mem, b.cr3, va, mode)
        assert direct.ok
        for step in direct.steps:
            sva = self_map_va(va, step.level, mode)
            via = walk(mem, b.cr3, sva, mode)
            assert via.ok, (hex(va), step.level, via.describe())
            assert via.pa == step.entry_pa, (hex(va), step.level)
            assert mem.read_u64(via.pa) == step.entry
            assert via.page_size == SIZE_4K
            assert via.attributes is not None and not via.attributes.executable
    top = walk(mem, b.cr3, self_map_va(0, levels, mode), mode)
    assert top.pa == b.cr3
    check = check_self_map(mem, b.cr3, mode)
    assert check.ok and check.entry == b.cr3 | PTE_P | PTE_RW | PTE_NX
    assert check.entry_pa == b.cr3 + 8 * SELF_MAP_SLOT
    assert "points back" in check.describe()


def test_self_map_check_failures() -> None:
    mem, b, mode = make(4)
    c = check_self_map(mem, b.cr3, mode)
    assert not c.ok and c.problem is not None and "not present" in c.problem
    mem.write_u64(b.cr3 + 8 * SELF_MAP_SLOT, 0x5000 | PTE_P | PTE_RW)
    c = check_self_map(mem, b.cr3, mode)
    assert not c.ok and c.problem is not None and "not the top table" in c.problem
    mem.write_u64(b.cr3 + 8 * SELF_MAP_SLOT, b.cr3 | PTE_P | PTE_PS)
    c = check_self_map(mem, b.cr3, mode)
    assert not c.ok and c.problem is not None and "reserved" in c.problem
    assert "broken" in c.describe()


# --------------------------------------------------------------------------------------------------
# Batch path == scalar path


def messy_space(
    levels: int, layout: RamLayout | None = None
) -> tuple[BufferMemory, int, PagingMode, list[int]]:
    """The synthetic space plus anomalies: reserved bits, tables outside RAM, holes."""
    sp = synthetic_address_space(levels, seed=levels)
    # With a layout: the same bytes, seen as RAM regions [0, 16M) and [4G, 4G+16M) stored back to back.
    mem = BufferMemory(layout, sp.memory.buffer) if layout is not None else sp.memory
    b = sp.builder
    special: list[int] = []
    pool = 0xFFFFF8A000000000
    for i, (level, bits) in enumerate([(1, PTE_PS | (1 << 62)), (2, 0), (1, 0)]):
        va = pool + (i * 7 + 3) * SIZE_4K
        special.append(va)
        if bits:
            epa = b.entry_pa(va, level)
            mem.write_u64(epa, mem.read_u64(epa) | bits)
    # Clear one PTE, set a reserved bit in one 2M PDE, send one PDE outside RAM.
    mem.write_u64(b.entry_pa(pool + 5 * SIZE_4K, 1), 0)
    epa = b.entry_pa(0xFFFF800000000000 + 9 * SIZE_2M, 2)
    mem.write_u64(epa, mem.read_u64(epa) | (1 << 16))
    epa = b.entry_pa(pool + 40 * SIZE_2M, 2)
    mem.write_u64(epa, (1 << 44) | PTE_P | PTE_RW)
    special += [pool + 5 * SIZE_4K, 0xFFFF800000000000 + 9 * SIZE_2M + 8, pool + 40 * SIZE_2M + 0x10]
    rng = np.random.default_rng(levels)
    vas = sp.random_vas(6000, seed=levels).tolist()
    vas += rng.integers(0, 2**63, size=1000, dtype=np.uint64).tolist()
    vas += (rng.integers(0, 2**63, size=1000, dtype=np.uint64) | np.uint64(1 << 63)).tolist()
    vas += [0xFFFFF6FB7DBED000 + 8 * k for k in range(0, 512, 7)]  # through the self-map
    vas += [self_map_va(int(v), lvl, sp.mode) for v in vas[:300] for lvl in range(1, levels + 1)]
    vas += special
    return mem, sp.cr3, sp.mode, [int(v) for v in vas]


def assert_batch_matches_scalar(memory: PhysicalMemory, cr3: int, mode: PagingMode, vas: list[int]) -> None:
    r = translate_many(memory, cr3, np.array(vas, dtype=np.uint64), mode, with_attributes=True)
    assert r.attrs is not None
    for i, va in enumerate(vas):
        w = walk(memory, cr3, va, mode)
        got = (int(r.stop[i]), int(r.level[i]), int(r.pa[i]), int(r.attrs[i]))
        want = (int(w.stop), w.level, w.pa or 0, int(w.attributes.flags) if w.attributes else 0)
        assert got == want, f"VA {va:#x}: batch {got} != scalar {want}\n{w.describe()}"


@pytest.mark.parametrize("levels", LEVELS)
def test_batch_equals_scalar(levels: int) -> None:
    mem, cr3, mode, vas = messy_space(levels)
    assert_batch_matches_scalar(mem, cr3, mode, vas)
    stops = set(translate_many(mem, cr3, vas, mode).stop.tolist())
    assert stops == {int(s) for s in StopReason}  # every outcome exercised


@pytest.mark.parametrize("levels", LEVELS)
def test_batch_equals_scalar_multi_region(levels: int) -> None:
    layout = RamLayout([(0, 16 << 20, 0), (4 << 30, 16 << 20, 16 << 20)])
    mem, cr3, mode, vas = messy_space(levels, layout)
    # Make part of the high region reachable: a PT at 4G + 8M mapping 16 pages.
    pool_va = 0xFFFFF8A000000000 + 60 * SIZE_2M
    pt = (4 << 30) + (8 << 20)
    mem.write(pt, bytes(4096))
    for k in range(16):
        mem.write_u64(pt + 8 * k, (0x40000 + k) << 12 | PTE_P | PTE_RW)
    pde = walk(mem, cr3, pool_va, mode).step(2)
    assert pde is not None and pde.entry == 0
    mem.write_u64(pde.entry_pa, pt | PTE_P | PTE_RW)
    vas += [pool_va + k * 0x800 for k in range(40)]
    assert_batch_matches_scalar(mem, cr3, mode, vas)
    r = translate_many(mem, cr3, [pool_va + 0x1234], mode)
    assert int(r.pa[0]) == (0x40001 << 12) | 0x234


@pytest.mark.parametrize("levels", LEVELS)
def test_translate_equals_walk(levels: int) -> None:
    mem, cr3, mode, vas = messy_space(levels)
    for va in vas[::3]:
        assert translate(mem, cr3, va, mode) == walk(mem, cr3, va, mode).pa, hex(va)


def test_batch_fallback_for_non_array_memory() -> None:
    mem, cr3, mode, vas = messy_space(4)
    vas = vas[::13]
    fast = translate_many(mem, cr3, vas, mode, with_attributes=True)
    slow = translate_many(ReadOnlyView(mem), cr3, vas, mode, with_attributes=True)
    assert slow.attrs is not None and fast.attrs is not None
    for a, b in zip(fast, slow, strict=True):
        assert a is not None and b is not None
        assert np.array_equal(a, b)


def test_batch_result_types() -> None:
    mem, b, mode = make(4)
    b.map(KVA, 0x2000, flags=PTE_P | PTE_RW | PTE_PCD | PTE_PWT)
    r = translate_many(mem, b.cr3, [KVA + 8, KVA + SIZE_4K], mode, with_attributes=True)
    assert r.pa.dtype == np.uint64 and r.level.dtype == np.uint8 and r.stop.dtype == np.uint8
    assert r.ok.tolist() == [True, False]
    assert r.attrs is not None
    assert Attr(int(r.attrs[0])) == Attr.WRITABLE | Attr.EXECUTABLE | Attr.PWT | Attr.PCD
    assert translate_many(mem, b.cr3, [], mode).pa.size == 0
    assert translate_many(mem, b.cr3, [KVA], mode).attrs is None


# --------------------------------------------------------------------------------------------------
# Snapshots


def small_space(levels: int = 4) -> tuple[BufferMemory, PageTableBuilder, PagingMode]:
    mem, b, mode = make(levels)
    b.add_self_map()
    b.map_range(0x10000, 0x200000, 8 * SIZE_4K, flags=PTE_P | PTE_RW | PTE_US)  # one run
    b.map(0x10000 + 8 * SIZE_4K, 0x900000, flags=PTE_P | PTE_US)  # RO, elsewhere
    b.map_range(KVA, 0, 4 * SIZE_2M, size=SIZE_2M, flags=PTE_P | PTE_RW | PTE_NX | PTE_G)
    b.map(0xFFFFFA8000000000, SIZE_1G, size=SIZE_1G, flags=PTE_P | PTE_RW | PTE_NX | PTE_PCD | PTE_PWT)
    return mem, b, mode


@pytest.mark.parametrize("levels", LEVELS)
def test_snapshot_ranges(levels: int) -> None:
    mem, b, mode = small_space(levels)
    s = snapshot(mem, b.cr3, mode)
    got = [(r.va, r.pa, r.size, r.leaf_size, r.attributes.label()) for r in s.ranges]
    assert got == [
        (0x10000, 0x200000, 8 * SIZE_4K, SIZE_4K, "RW U X  - WB  --"),
        (0x18000, 0x900000, SIZE_4K, SIZE_4K, "RO U X  - WB  --"),
        (KVA, 0, 4 * SIZE_2M, SIZE_2M, "RW S NX G WB  --"),
        (0xFFFFFA8000000000, SIZE_1G, SIZE_1G, SIZE_1G, "RW S NX - UC  --"),
    ]
    assert s.leaf_count == 8 + 1 + 4 + 1
    assert [rs.slot for rs in s.recursive_slots] == [SELF_MAP_SLOT]
    assert s.recursive_slots[0].va == (PTE_BASE_4LEVEL if levels == 4 else PTE_BASE_5LEVEL)
    assert s.anomalies == ()
    assert s.lookup(0x10000 + 0x1234) is s.ranges[0]
    assert s.translate(KVA + SIZE_2M + 5) == SIZE_2M + 5
    assert s.lookup(0x8000) is None
    assert s.mapped_bytes == 9 * SIZE_4K + 4 * SIZE_2M + SIZE_1G
    text = s.format()
    assert f"{levels}-level" in text and "recursive self-map" in text and "RW S NX G WB" in text
    assert "4 ranges" in text


def test_snapshot_matches_walk_everywhere() -> None:
    sp = synthetic_address_space(4, seed=11)
    s = snapshot(sp.memory, sp.cr3, sp.mode)
    vas = sp.random_vas(3000, seed=5)
    r = translate_many(sp.memory, sp.cr3, vas, sp.mode, with_attributes=True)
    assert r.attrs is not None
    for i, va in enumerate(vas.tolist()):
        rng = s.lookup(va)
        assert rng is not None
        assert s.translate(va) == int(r.pa[i])
        assert int(rng.attributes.flags) == int(r.attrs[i])
    # Nothing else is mapped: every range start walks to its PA.
    for rng in s.ranges[::50]:
        assert walk(sp.memory, sp.cr3, rng.va, sp.mode).pa == rng.pa


def test_snapshot_anomalies() -> None:
    mem, b, mode = small_space()
    epa = b.entry_pa(KVA, 2)
    mem.write_u64(epa, mem.read_u64(epa) | (1 << 14))  # reserved in a 2M leaf
    epa = b.entry_pa(0x10000, 2)
    mem.write_u64(epa, (1 << 40) | PTE_P | PTE_RW)  # PT outside RAM
    epa = b.entry_pa(0xFFFFFA8000000000, 3)
    mem.write_u64(epa, b.cr3 | PTE_P)  # PDPTE pointing back at the PML4: a loop
    s = snapshot(mem, b.cr3, mode)
    problems = sorted(a.problem for a in s.anomalies)
    assert len(problems) == 3
    assert any("reserved bits 0x4000" in p for p in problems)
    assert any("outside RAM" in p for p in problems)
    assert any("loop" in p for p in problems)
    assert [r.va for r in s.ranges] == [KVA + SIZE_2M]
    assert "Anomalies (3)" in s.format()


def test_snapshot_without_self_map() -> None:
    mem, b, mode = make(4)
    s = snapshot(mem, b.cr3, mode)
    assert s.ranges == () and s.recursive_slots == ()
    assert "Self-map: none" in s.format()


def test_snapshot_over_non_array_memory() -> None:
    mem, b, mode = small_space()
    assert snapshot(ReadOnlyView(mem), b.cr3, mode) == snapshot(mem, b.cr3, mode)


def test_snapshot_diff() -> None:
    mem, b, mode = small_space()
    before = snapshot(mem, b.cr3, mode)
    assert not before.diff(before) and before.diff(before).format() == "no mapping changed"

    b.map(0xFFFFF80000000000, 0x5000, flags=PTE_P | PTE_RW | PTE_NX)  # added
    mem.write_u64(b.entry_pa(0x10000 + 2 * SIZE_4K, 1), 0)  # removed
    epa = b.entry_pa(0x10000 + 5 * SIZE_4K, 1)
    mem.write_u64(epa, mem.read_u64(epa) & ~PTE_RW)  # changed attributes
    epa = b.entry_pa(KVA + 3 * SIZE_2M, 2)
    mem.write_u64(epa, (mem.read_u64(epa) & ~0x000FFFFFFFE00000) | (100 * SIZE_2M))  # changed PA
    epa = b.entry_pa(0x10000, 1)
    mem.write_u64(epa, mem.read_u64(epa) | PTE_A | PTE_D)  # ignored by default
    after = snapshot(mem, b.cr3, mode)

    d = before.diff(after)
    assert [(r.va, r.size) for r in d.added] == [(0xFFFFF80000000000, SIZE_4K)]
    assert [(r.va, r.pa, r.size) for r in d.removed] == [(0x12000, 0x202000, SIZE_4K)]
    assert [(o.va, o.size, o.attributes.writable, n.attributes.writable) for o, n in d.changed] == [
        (0x15000, SIZE_4K, True, False),
        (KVA + 3 * SIZE_2M, SIZE_2M, True, True),
    ]
    assert d.changed[1][0].pa == 3 * SIZE_2M and d.changed[1][1].pa == 100 * SIZE_2M
    text = d.format()
    assert "added (1)" in text and "removed (1)" in text and "changed (2)" in text

    strict = before.diff(after, ignore=())
    assert len(strict.changed) == 3 and strict.changed[0][1].attributes.accessed
    with pytest.raises(ValueError, match="unknown attribute"):
        before.diff(after, ignore=("bogus",))

    reverse = after.diff(before)
    assert [r.va for r in reverse.removed] == [0xFFFFF80000000000]
    assert [r.va for r in reverse.added] == [0x12000]


def test_snapshot_diff_split_large_page() -> None:
    mem, b, mode = make(4)
    b.map(KVA, SIZE_2M, size=SIZE_2M, flags=PTE_P | PTE_RW)
    before = snapshot(mem, b.cr3, mode)
    # Replace the 2M page with 512 4K pages mapping the same frames with the same attributes.
    mem.write_u64(b.entry_pa(KVA, 2), 0)
    b.map_range(KVA, SIZE_2M, SIZE_2M, flags=PTE_P | PTE_RW)
    after = snapshot(mem, b.cr3, mode)
    assert len(after.ranges) == 1 and after.ranges[0].leaf_size == SIZE_4K
    d = before.diff(after)
    assert len(d.changed) == 1 and d.changed[0][0].size == SIZE_2M
    assert not before.diff(after, compare_leaf_size=False)


def scattered_space() -> tuple[BufferMemory, PageTableBuilder, PagingMode]:
    """small_space plus 40 pool pages on descending frames (as the guest kernel hands them out)."""
    mem, b, mode = small_space()
    for i in range(40):
        b.map(0xFFFFFA8040000000 + i * SIZE_4K, (0x1F0 - i) * SIZE_4K, flags=PTE_P | PTE_RW | PTE_NX | PTE_G)
    return mem, b, mode


def test_snapshot_groups_merge_scattered_frames_with_equal_attributes() -> None:
    mem, b, mode = scattered_space()
    s = snapshot(mem, b.cr3, mode)
    assert len(s.ranges) == 4 + 40
    groups = s.groups()
    assert [len(g) for g in groups] == [1, 1, 1, 1, 40]  # the RO page after the RW run stays apart
    compact = s.format(compact=True)
    assert "0xfffffa8040000000-0xfffffa8040028000  40 PA runs in 0x1c9000-0x1f1000" in compact
    assert len(compact.splitlines()) == len(s.format().splitlines()) - 39


def test_snapshot_format_is_bounded() -> None:
    mem, b, mode = scattered_space()
    s = snapshot(mem, b.cr3, mode)
    text = s.format(max_ranges=8)
    lines = text.splitlines()
    assert "... 36 ranges not shown ..." in text
    assert lines[4].startswith("0x0000000000010000-")  # the first ranges are shown ...
    assert lines[-2].startswith("0xfffffa8040027000-")  # ... and the last ones
    assert len([ln for ln in lines if ln.startswith("0x")]) == 8
    assert "... 44 ranges not shown" in s.format(max_ranges=0)
    assert s.format(max_ranges=100) == s.format()


def test_snapshot_random_vas_are_mapped_in_every_range() -> None:
    mem, b, mode = scattered_space()
    s = snapshot(mem, b.cr3, mode)
    vas = s.random_vas(2000, seed=1)
    assert vas.dtype == np.uint64 and vas.size == 2000
    assert translate_many(mem, b.cr3, vas, mode).ok.all()
    assert {id(s.lookup(int(v))) for v in vas.tolist()} == {id(r) for r in s.ranges}
    assert snapshot(mem, 0x1000, mode).random_vas(5).size == 0  # nothing mapped
